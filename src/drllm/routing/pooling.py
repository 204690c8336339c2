"""Windowed mean pooling (docs/method.md#routers): what router l sees of the hidden states entering block l.

W_eff = min(W, T) for a prompt of T real tokens; window size T // W_eff; the remainder tokens at the end are dropped
(the authors' code); each window is averaged. `masked_window_mean` is the logit vote over the valid windows.
"""
from __future__ import annotations

import torch


def window_assignment(mask: torch.Tensor | None, batch: int, length: int, windows: int = 8,
                      device: torch.device | str | None = None,
                      exclude_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooling as a matrix: (assign [B, W_max, T] float32, window_mask [B, W_max] bool).

    exclude_first: leave each row's first real token out of the pooling (when the row has 2+ real tokens). Under
    causal attention the first position's state is the same for every prompt that starts with the same token (BOS
    or the chat template's first token): a constant window with a norm ~20-50x the others' at middle layers of
    SmolLM2 (issue 19), which saturates fresh routers and carries no information about the prompt.

    assign[b, w, t] = 1 / size_b where real token t of row b falls in window w, else 0, so that
    `assign @ hidden` gives the window means (see `window_mean_pool`). It depends only on the mask, so one matrix
    serves every layer of a forward pass.
    """
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if mask is None:
        real = torch.ones((batch, length), dtype=torch.bool, device=device)
    else:
        if tuple(mask.shape) != (batch, length):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden {(batch, length)}")
        real = mask.to(device=device).bool()
    if exclude_first:
        first = real.long().cumsum(-1) == 1
        real = real & ~(first & (real.sum(-1, keepdim=True) > 1))
    counts = real.sum(-1)  # [B]
    counts_cpu = counts.tolist()  # one host sync per call
    if 0 in counts_cpu:
        raise ValueError(f"row(s) {[i for i, n in enumerate(counts_cpu) if n == 0]} have no real tokens to pool")
    w_max = min(windows, max(counts_cpu))
    w_eff = counts.clamp(max=windows)  # [B]
    size = counts // w_eff  # [B], >= 1
    rank = real.long().cumsum(-1) - 1  # [B, T] rank of each real token among its row's real tokens
    window = torch.div(rank, size[:, None], rounding_mode="floor")
    used = real & (window < w_eff[:, None])  # the remainder at the end falls outside the last window
    window = torch.where(used, window, torch.zeros_like(window))
    assign = torch.zeros((batch, w_max, length), dtype=torch.float32, device=real.device)
    assign.scatter_(1, window[:, None, :], (used.float() / size[:, None].float())[:, None, :])
    window_mask = torch.arange(w_max, device=real.device)[None, :] < w_eff[:, None]
    return assign, window_mask


def window_mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None,
                     windows: int = 8, exclude_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Window means of each row's real tokens.

    hidden: [B, T, d]; mask: [B, T] (1 = real prompt token, 0 = padding; left, right or both sides) or None
    (all tokens real). For a row with n real tokens: W_eff = min(windows, n), window size n // W_eff, window w
    averages the real tokens ranked w*size .. (w+1)*size-1 (in sequence order); the last n - W_eff*size real
    tokens are dropped.

    Returns (means [B, W_max, d] float32, window_mask [B, W_max] bool) with W_max = max W_eff over rows; a row
    with fewer windows has zeros and False in the unused slots. Pooling is done in float32 whatever the input.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [batch, tokens, dim], got shape {tuple(hidden.shape)}")
    assign, window_mask = window_assignment(mask, hidden.shape[0], hidden.shape[1], windows, hidden.device,
                                            exclude_first)
    return torch.bmm(assign, hidden.float()), window_mask


def masked_window_mean(window_logits: torch.Tensor, window_mask: torch.Tensor | None) -> torch.Tensor:
    """Average [..., W, 3] logits over the valid windows ([..., W] mask, broadcastable)."""
    if window_mask is None:
        return window_logits.mean(-2)
    weights = window_mask.to(window_logits.dtype)
    while weights.dim() < window_logits.dim() - 1:
        weights = weights.unsqueeze(-2)  # [B, W] -> [B, 1, W] for a [B, L, W, 3] input
    weights = weights.expand(window_logits.shape[:-1])
    total = weights.sum(-1, keepdim=True)
    if bool((total == 0).any()):
        raise ValueError("a row has no valid window (window_mask all False)")
    return (window_logits * weights[..., None]).sum(-2) / total
