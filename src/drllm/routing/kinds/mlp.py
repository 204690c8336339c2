"""The `mlp` router kind (the paper's, docs/method.md#routers): Linear(d -> h) -> GELU(tanh) -> Linear(h -> 3) on
each window mean, Xavier-uniform weights, zero biases (h = 128), logits averaged over the windows (logit voting).

Three forms of the same function, held equal by tests/test_router_kinds.py: `Router` (one block, the reference),
`MLPKind.forward` (every layer in three batched matmuls: the training hot path) and `PackedRouters` (block by
block at inference, on packed weights).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from drllm.routing.decision import CLASSES
from drllm.routing.kinds.base import ROUTER_KINDS, RouterKind
from drllm.routing.pooling import masked_window_mean, window_assignment
from drllm.routing.router_config import RouterConfig


def router_parameter_count(num_layers: int, hidden_size: int, hidden: int = 128) -> int:
    """L * (d*h + h + h*3 + 3): the paper's formula (11.0M for Llama-3.2-3B, 16.8M for Llama-3.1-8B)."""
    return num_layers * (hidden_size * hidden + hidden + hidden * 3 + 3)


class Router(nn.Module):
    """Linear(d -> h) -> GELU(tanh) -> Linear(h -> 3), applied per window mean, logits averaged over windows."""

    def __init__(self, hidden_size: int, hidden: int = 128, generator: torch.Generator | None = None):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, len(CLASSES))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for linear in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)

    def window_logits(self, window_means: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(window_means.to(self.fc1.weight.dtype))))

    def forward(self, window_means: torch.Tensor, window_mask: torch.Tensor | None = None) -> torch.Tensor:
        """window_means [B, W, d], window_mask [B, W] bool or None -> logits [B, 3] (logit voting)."""
        return masked_window_mean(self.window_logits(window_means), window_mask)


class MLPKind(RouterKind):
    """The paper's router: one `Router` per block (saved as routers.<layer>.fc1 / .fc2)."""

    name = "mlp"

    def build(self, config: RouterConfig, generator: torch.Generator | None) -> Router:
        return Router(config.hidden_size, config.hidden, generator)

    def describe(self, config: RouterConfig) -> str:
        return (f"window mean pooling over {config.windows} windows, MLP d -> {config.hidden} -> 3: skip / execute / "
                "repeat")

    def forward(self, routers: nn.ModuleList, window_means: torch.Tensor,
                window_mask: torch.Tensor | None) -> torch.Tensor:
        """The routers' weights stacked, so the whole stack is three batched matmuls (the training hot path); equal
        to calling each router on its layer's slice."""
        w1 = torch.stack([r.fc1.weight for r in routers])  # [L, h, d]
        b1 = torch.stack([r.fc1.bias for r in routers])  # [L, h]
        w2 = torch.stack([r.fc2.weight for r in routers])  # [L, 3, h]
        b2 = torch.stack([r.fc2.bias for r in routers])  # [L, 3]
        x = window_means.to(w1.dtype)
        hidden = torch.einsum("blwd,lhd->blwh", x, w1) + b1[None, :, None, :]
        hidden = F.gelu(hidden, approximate="tanh")
        logits = torch.einsum("blwh,lch->blwc", hidden, w2) + b2[None, :, None, :]
        return masked_window_mean(logits, window_mask)

    def pack(self, routers: nn.ModuleList, config: RouterConfig) -> "PackedRouters":
        return PackedRouters(routers, config.windows, config.pool_exclude_first)

    def fold_standardization(self, routers: nn.ModuleList, mean: torch.Tensor, std: torch.Tensor) -> None:
        """fc1(x') with x' = (x - m) / s equals fc1'(x) with W' = W / s and b' = b - W (m / s) (float32 rounding
        aside), so inference needs no extra step."""
        with torch.no_grad():
            for layer, router in enumerate(routers):
                m, s = mean[layer].to(router.fc1.weight), std[layer].to(router.fc1.weight)
                router.fc1.bias.sub_(router.fc1.weight @ (m / s))
                router.fc1.weight.div_(s[None, :])

    def init_at_prior(self, routers: nn.ModuleList, log_probs: torch.Tensor) -> None:
        """fc2 weights 0, biases log_probs[l]; fc1 keeps its initialisation (so gradients reach it)."""
        with torch.no_grad():
            for layer, router in enumerate(routers):
                router.fc2.weight.zero_()
                router.fc2.bias.copy_(log_probs[layer])


MLP = ROUTER_KINDS.register(MLPKind())


class PackedRouters:
    """The MLP routers' weights packed for inference: what the routing pass runs at every block.

    Router.forward on the window means is ~9 small tensor ops per block, each dispatch-bound at this size on a CPU.
    Packed, one block's router is 4: the pooling matmul, the first layer with its bias (addmm on a pre-transposed,
    contiguous weight), GELU, and one addmm that does the window vote and the output layer with its bias together
    (the vote is linear and comes before the linear output layer, so vote-then-fc2 = one matmul with the output
    weight tiled over the windows and divided by their count). The logits equal Router.forward's up to float32
    rounding (sums taken in another order); `prompt` builds what depends only on the prompt's mask once.
    """

    def __init__(self, routers: nn.ModuleList, windows: int, exclude_first: bool):
        self.windows, self.exclude_first = windows, exclude_first
        with torch.no_grad():
            self.w1t = torch.stack([r.fc1.weight.t() for r in routers]).contiguous()  # [L, d, h]
            self.b1 = torch.stack([r.fc1.bias for r in routers])  # [L, h]
            self.w2t = torch.stack([r.fc2.weight.t() for r in routers]).contiguous()  # [L, h, 3]
            self.b2 = torch.stack([r.fc2.bias for r in routers])  # [L, 3]
        self.dtype = self.w1t.dtype
        self._tiled: dict[int, torch.Tensor] = {}

    def tiled_output(self, windows: int) -> torch.Tensor:
        """[L, windows*h, 3]: fc2's weight, transposed, repeated per window and divided by the window count, so
        that (flattened per-window hidden [B, windows*h]) @ it = fc2 applied to the windows' mean."""
        tiled = self._tiled.get(windows)
        if tiled is None:
            tiled = self._tiled[windows] = (self.w2t / windows).repeat(1, windows, 1)
        return tiled

    def prompt(self, mask: torch.Tensor | None, batch: int, length: int,
               device: torch.device | str | None = None) -> "PromptRouting":
        """The per-prompt part (pooling matrix, window vote), built once for all blocks of one forward pass."""
        assign, window_mask = window_assignment(mask, batch, length, self.windows, device, self.exclude_first)
        return PromptRouting(self, assign, window_mask)


class PromptRouting:
    """`PackedRouters` bound to one batch of prompts: logits(layer, hidden entering it) -> [B, 3]."""

    def __init__(self, packed: PackedRouters, assign: torch.Tensor, window_mask: torch.Tensor):
        self.packed, self.assign = packed, assign
        batch, windows, length = assign.shape
        hidden_size, hidden = packed.w1t.shape[1:]
        self.batch, self.windows = batch, windows
        # Pooling is linear: (P H) W1^T = P (H W1^T). Pool first unless the first layer on every token costs less
        # (only for prompts of a few tokens: d > h); either way in float32, as window_mean_pool pools.
        pool_first = windows * hidden_size * (length + hidden) <= length * hidden * (hidden_size + windows)
        self.pool_first = pool_first or packed.dtype != torch.float32
        if bool(window_mask.all()):  # every row votes over the same windows: one matmul with fc2 tiled
            self.vote, self.tiled = None, packed.tiled_output(windows)
        else:  # rows with fewer windows than others: vote weights per row, then fc2
            self.vote = (window_mask.float() / window_mask.sum(-1, keepdim=True))[:, None, :].to(packed.dtype)
            self.tiled = None

    def logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Router `layer` on the hidden states [B, T, d] entering its block -> logits [B, 3] (logit voting)."""
        packed, batch, windows = self.packed, self.batch, self.windows
        if hidden.dtype != torch.float32:
            hidden = hidden.float()
        if self.pool_first:
            pooled = torch.bmm(self.assign, hidden).view(batch * windows, -1)
            if pooled.dtype != packed.dtype:
                pooled = pooled.to(packed.dtype)
            z = torch.addmm(packed.b1[layer], pooled, packed.w1t[layer])
        else:  # P (H W1^T + b1) = P H W1^T + b1 on each valid window (its weights sum to 1); invalid ones get no vote
            per_token = torch.addmm(packed.b1[layer], hidden.reshape(-1, hidden.shape[-1]), packed.w1t[layer])
            z = torch.bmm(self.assign, per_token.view(batch, -1, per_token.shape[-1])).view(batch * windows, -1)
        z = F.gelu(z, approximate="tanh")
        if self.tiled is not None:
            return torch.addmm(packed.b2[layer], z.view(batch, -1), self.tiled[layer])
        voted = torch.bmm(self.vote, z.view(batch, windows, -1)).view(batch, -1)
        return torch.addmm(packed.b2[layer], voted, packed.w2t[layer])
