"""The `confidence` router kind: the paper's MLP router, plus, for every block at or after a read layer R, the
model's own confidence read at R in the same forward pass (docs/method.md#the-confidence-router).

A prompt's safety to skip follows the full model's confidence in its answer (RESULTS.md, studies 3c and 4), and
window means of the residual stream do not carry it (the routers beat the per-layer prior by 0.6% of its loss).
This kind gives the routers of blocks >= R three numbers read from the prompt's last real token:
* the lens margin: the residual stream entering block R through the final norm and the rows of the LM head of a
  small token set (`lens`, fixed at training: every token among the top `lens_top_k` of the full-vocabulary lens
  at R on some training prompt), softmax over that set, top-1 minus top-2 probability (CALM's softmax confidence,
  cheaply normalised);
* the lens top-1 probability;
* saturation: the cosine between the states entering blocks R and R-1 (CALM's state propagation).

Router l computes logits = mlp_l(window means) + A_l @ read (A_l: 3 x 3, zero at initialisation, so training
starts from the plain MLP router; zero for l < R, where the read is not yet made). The read is of the state the
routed forward reaches at R: on the full path when blocks < R execute, as in training (`teacher_force:
default`). Its cost, |lens| x d multiply-accumulates on one position, is counted as block-equivalents in every
evaluation row (`read_cost`).

The lens rows and the final norm's scale live in the routers' file (layer R's router: `lens`, `lens_eps`,
`lens_softcap`), so the routers run without a second copy of the model: `prepare` copies them from the frozen
model before training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from drllm.core.settings import check_fields, setting
from drllm.routing.kinds.base import ROUTER_KINDS
from drllm.routing.kinds.mlp import MLPKind, Router
from drllm.routing.pooling import masked_window_mean, window_assignment
from drllm.routing.router_config import RouterConfig

READ_FEATURES = ("margin", "top1", "saturation")


@dataclass(frozen=True)
class ConfidenceSettings:
    """train.confidence: where the read is made and how large its token set is."""

    read_layer: int = setting(12, "int", low=1)    # R: the read takes the state entering block R (blocks 0..R-1 ran)
    lens_top_k: int = setting(8, "int", low=1)     # each training prompt adds its top-k lens tokens at R to the set

    def __post_init__(self) -> None:
        check_fields(self, "train.confidence")


class ConfidenceRouter(Router):
    """An MLP router plus a linear map of the read (3 features -> 3 logits, zero at initialisation). Layer R's
    router also holds the lens: `lens` [K, d] (LM-head rows times the final norm's scale), `lens_eps`,
    `lens_softcap` (0: none)."""

    def __init__(self, hidden_size: int, hidden: int, generator: torch.Generator | None, holds_lens: bool):
        super().__init__(hidden_size, hidden, generator)
        self.read = nn.Linear(len(READ_FEATURES), 3, bias=False)
        nn.init.zeros_(self.read.weight)
        self.holds_lens = holds_lens
        if holds_lens:
            self.register_buffer("lens", torch.zeros(0, hidden_size))
            self.register_buffer("lens_eps", torch.tensor(1e-5))
            self.register_buffer("lens_softcap", torch.tensor(0.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "lens"
        if self.holds_lens and key in state_dict:  # the token set's size is fixed by training: take the file's
            self.lens = torch.empty_like(state_dict[key], device=self.lens.device, dtype=self.lens.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, window_means: torch.Tensor, window_mask: torch.Tensor | None = None,
                read: torch.Tensor | None = None) -> torch.Tensor:
        logits = masked_window_mean(self.window_logits(window_means), window_mask)
        return logits if read is None else logits + self.read(read.to(logits.dtype))


def read_features(lens_router: ConfidenceRouter, entering: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """[B, 3] (margin, top-1, saturation) from the last token's states entering block R and block R-1 ([B, d])."""
    if lens_router.lens.shape[0] < 2:
        raise ValueError("the confidence router's lens has fewer than 2 tokens: train the routers (the train stage "
                         "fills it from the model) or load them from their file")
    entering, before = entering.float(), before.float()
    normed = entering * torch.rsqrt(entering.pow(2).mean(-1, keepdim=True) + lens_router.lens_eps)
    logits = normed @ lens_router.lens.float().T
    cap = float(lens_router.lens_softcap)
    if cap > 0:
        logits = torch.tanh(logits / cap) * cap
    top = torch.softmax(logits, dim=-1).topk(2, dim=-1).values
    saturation = F.cosine_similarity(entering, before, dim=-1)
    return torch.stack([top[:, 0] - top[:, 1], top[:, 0], saturation], dim=-1)


class ConfidenceKind(MLPKind):
    """The MLP router with the read added at blocks >= R (standardisation folding and the prior initialisation
    are the MLP's: the read's weights start and stay out of both)."""

    name = "confidence"
    settings = ConfidenceSettings
    reads_last_token = True

    def read_layer(self, config: RouterConfig) -> int:
        read_layer = self.parse_settings(config).read_layer
        if read_layer >= config.num_layers:
            raise ValueError(f"train.confidence.read_layer must be < the model's {config.num_layers} layers, "
                             f"got {read_layer}")
        return read_layer

    def describe(self, config: RouterConfig) -> str:
        return (f"{super().describe(config)}; from block {self.read_layer(config)} on, plus the model's confidence "
                "read there (router kind `confidence`)")

    def build(self, config: RouterConfig, generator: torch.Generator | None) -> ConfidenceRouter:
        return ConfidenceRouter(config.hidden_size, config.hidden, generator, holds_lens=False)

    def build_stack(self, config: RouterConfig, generator: torch.Generator | None) -> nn.ModuleList:
        read_layer = self.read_layer(config)
        return nn.ModuleList([ConfidenceRouter(config.hidden_size, config.hidden, generator, layer == read_layer)
                              for layer in range(config.num_layers)])

    def forward(self, routers: nn.ModuleList, window_means: torch.Tensor, window_mask: torch.Tensor | None,
                last_states: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().forward(routers, window_means, window_mask)  # the MLP part, three batched matmuls
        read_layer = next(layer for layer, router in enumerate(routers) if router.holds_lens)
        read = read_features(routers[read_layer], last_states[:, read_layer], last_states[:, read_layer - 1])
        weights = torch.stack([router.read.weight for router in routers[read_layer:]])  # [L - R, 3, 3]
        after = torch.einsum("bf,lcf->blc", read.to(weights.dtype), weights)
        return torch.cat([logits[:, :read_layer], logits[:, read_layer:] + after], dim=1)

    def pack(self, routers: nn.ModuleList, config: RouterConfig) -> "ConfidenceSteps":
        return ConfidenceSteps(routers, config.windows, config.pool_exclude_first, self.read_layer(config))

    @torch.no_grad()
    def prepare(self, routers: nn.ModuleList, config: RouterConfig, executor, cache) -> None:
        """The lens from the frozen model: every token among some training prompt's top `lens_top_k` of the
        full-vocabulary lens at R, its LM-head row times the final norm's scale."""
        settings, read_layer = self.parse_settings(config), self.read_layer(config)
        norm = executor.decoder.norm
        if "rmsnorm" not in type(norm).__name__.lower():
            raise ValueError(f"router kind confidence: the model's final norm is {type(norm).__name__}; the lens "
                             "folds an RMS norm's scale into the LM-head rows")
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        probe = torch.ones(1, config.hidden_size, device=executor.device, dtype=executor.lm_head.weight.dtype)
        scale = norm(probe)[0].float() * (1.0 + eps) ** 0.5  # g (or 1 + w): the norm of a unit-rms vector
        weight = executor.lm_head.weight
        states = cache.last_states[:, read_layer].float()
        tokens = set()
        for start in range(0, states.shape[0], 256):
            chunk = states[start:start + 256].to(weight.device)
            normed = chunk * torch.rsqrt(chunk.pow(2).mean(-1, keepdim=True) + eps) * scale.to(chunk.device)
            top = (normed.to(weight.dtype) @ weight.T).topk(settings.lens_top_k, dim=-1).indices
            tokens.update(top.flatten().tolist())
        index = torch.tensor(sorted(tokens), dtype=torch.long, device=weight.device)
        holder = routers[read_layer]
        device = holder.fc1.weight.device
        holder.lens = (weight[index].float() * scale[None, :].to(weight.device)).to(device)
        holder.lens_eps = torch.tensor(eps, device=device)
        holder.lens_softcap = torch.tensor(float(executor.softcap or 0.0), device=device)

    def read_cost(self, routers: nn.ModuleList, config: RouterConfig, executor, tokens: int) -> float:
        from drllm.routing.confidence import read_cost_blocks

        return read_cost_blocks(executor, 1, int(routers[self.read_layer(config)].lens.shape[0]), tokens)


class ConfidenceSteps:
    """The inference step: window pooling as the MLP's, the last real token's states kept at R-1 and R."""

    def __init__(self, routers: nn.ModuleList, windows: int, exclude_first: bool, read_layer: int):
        self.routers, self.windows, self.exclude_first, self.read_layer = routers, windows, exclude_first, read_layer

    def prompt(self, mask: torch.Tensor | None, batch: int, length: int,
               device: torch.device | str | None = None) -> "ConfidencePrompt":
        assign, window_mask = window_assignment(mask, batch, length, self.windows, device, self.exclude_first)
        if mask is None:
            last = torch.full((batch,), length - 1, dtype=torch.long, device=assign.device)
        else:  # the last real token, whichever side the padding is on
            positions = torch.arange(length, device=assign.device)
            last = (mask.to(assign.device).bool() * (positions + 1)).argmax(-1)
        return ConfidencePrompt(self, assign, window_mask, last)


class ConfidencePrompt:
    def __init__(self, steps: ConfidenceSteps, assign: torch.Tensor, window_mask: torch.Tensor, last: torch.Tensor):
        self.steps, self.assign, self.window_mask, self.last = steps, assign, window_mask, last
        self.rows = torch.arange(assign.shape[0], device=assign.device)
        self.before = self.read = None

    def logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        steps = self.steps
        if layer == steps.read_layer - 1:
            self.before = hidden[self.rows, self.last]
        elif layer == steps.read_layer:
            if self.before is None:
                raise ValueError(f"the confidence read at layer {layer} needs block {layer - 1}'s step first: "
                                 "call logits for every layer in order")
            self.read = read_features(steps.routers[layer], hidden[self.rows, self.last], self.before)
        read = self.read if layer >= steps.read_layer else None
        return steps.routers[layer](torch.bmm(self.assign, hidden.float()), self.window_mask, read)


CONFIDENCE = ROUTER_KINDS.register(ConfidenceKind())
