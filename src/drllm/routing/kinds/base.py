"""The router kind contract (`RouterKind`, the packed inference step's protocols, the default module steps) and
the lookup table of kinds (`ROUTER_KINDS`), filled by drllm.routing.kinds.mlp and by plugins. The package,
drllm.routing.kinds, is what callers import: it registers the built-in kind."""
from __future__ import annotations

import json
from typing import Protocol

import torch
from torch import nn

from drllm.core.plugins import Table, entry_settings
from drllm.routing.pooling import window_assignment
from drllm.routing.router_config import RouterConfig


class PromptStep(Protocol):
    """A packed step bound to one batch of prompts."""

    def logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Router `layer` on the hidden states [B, T, d] entering its block -> logits [B, 3]."""


class PackedStep(Protocol):
    """A stack's routers prepared for inference (rebuilt by RouterStack.packed when a parameter changes)."""

    def prompt(self, mask: torch.Tensor | None, batch: int, length: int,
               device: torch.device | str | None = None) -> PromptStep:
        """Bind one batch: mask [B, T] of real prompt tokens (None: all real); built once for all its blocks."""


class RouterKind:
    """The contract of a router kind. `build` is required. `forward` and `pack` default to running each layer's
    module (right for any kind, not fast: override them for speed, the equality test holds them to `build`'s
    module). `fold_standardization` and `init_at_prior` edit parameters by name, so a kind has to provide them
    for `train.standardize` / `train.prior_init` (TrainConfig refuses those settings otherwise).

    Optional, for kinds that read more than window means (drllm.routing.kinds.confidence):
    * `settings`: a settings dataclass (drllm.core.settings) for the kind's own keys, config block `train.<kind>`,
      kept in RouterConfig.kind_settings (`parse_settings`);
    * `reads_last_token`: the training forward also gets `last_states` [B, L, d], the residual stream at each
      prompt's last real token entering every block (the feature cache keeps them); the inference step takes them
      from the hidden states it is given;
    * `build_stack`: the stack's modules, when the blocks' routers are not all alike;
    * `prepare`: what the routers take from the frozen model before training (the train stage calls it);
    * `read_cost`: what the routing pass costs beyond the blocks, in block-equivalents (counted in every cell).

    `name` (a class attribute) is the name the table registers it under and `train.router_kind` chooses."""

    name: str = ""
    settings: type | None = None
    reads_last_token: bool = False

    def parse_settings(self, config: RouterConfig):
        """The kind's settings object from config.kind_settings (None for a kind without settings)."""
        return self.settings_from(config.kind_settings, config.kind)

    def settings_from(self, block, name: str):
        """The kind's settings from its config block `train.<name>` (None, or refused, for a kind without)."""
        return entry_settings(self.settings, block, f"train.{name}", f"router kind {name!r}")

    def describe(self, config: RouterConfig) -> str:
        """What one block's router is, in a few words, for the model card (drllm.training.card). Default: the kind
        by name, with its own settings."""
        settings = f", settings {json.dumps(config.kind_settings, sort_keys=True)}" if config.kind_settings else ""
        return f"router kind `{self.name}`{settings}"

    def build_stack(self, config: RouterConfig, generator: torch.Generator | None) -> nn.ModuleList:
        """Every block's router, in order (default: `build` once per block)."""
        return nn.ModuleList([self.build(config, generator) for _ in range(config.num_layers)])

    def prepare(self, routers: nn.ModuleList, config: RouterConfig, executor, cache) -> None:
        """Before training: set what the routers take from the frozen model (`executor`, a PathExecutor) and the
        training feature cache. Default: nothing."""

    def read_cost(self, routers: nn.ModuleList, config: RouterConfig, executor, tokens: int) -> float:
        """The routing pass's cost beyond the routers' own matmuls on a prompt of `tokens` tokens, in
        block-equivalents (default 0: window-mean routers read nothing else)."""
        return 0.0

    def build(self, config: RouterConfig, generator: torch.Generator | None) -> nn.Module:
        """One block's router: a module whose forward maps window means [B, W, d] (float32) and a window mask
        [B, W] (bool, or None: all valid) to logits [B, 3] (skip, execute, repeat). Its parameters are saved as
        `routers.<layer>.<name>`. generator: the seeded initialisation's random draws (None: torch's global RNG)."""
        raise NotImplementedError(f"{type(self).__name__}.build")

    def forward(self, routers: nn.ModuleList, window_means: torch.Tensor,
                window_mask: torch.Tensor | None, last_states: torch.Tensor | None = None) -> torch.Tensor:
        """Training forward of every layer: window_means [B, L, W, d], window_mask [B, W] or [B, L, W] (or None)
        -> logits [B, L, 3] (last_states: see `reads_last_token`). Default: each layer's module on its slice."""
        per_layer = window_mask is not None and window_mask.dim() == 3
        return torch.stack([router(window_means[:, layer], window_mask[:, layer] if per_layer else window_mask)
                            for layer, router in enumerate(routers)], 1)

    def pack(self, routers: nn.ModuleList, config: RouterConfig) -> PackedStep:
        """The inference step for these routers (see PackedStep). Default: pool, then each layer's module."""
        return ModuleSteps(routers, config.windows, config.pool_exclude_first)

    def fold_standardization(self, routers: nn.ModuleList, mean: torch.Tensor, std: torch.Tensor) -> None:
        """train.standardize: change routers trained on (x - mean[l]) / std[l] ([L, d] each) to take raw x."""
        raise NotImplementedError(f"{type(self).__name__}.fold_standardization")

    def init_at_prior(self, routers: nn.ModuleList, log_probs: torch.Tensor) -> None:
        """train.prior_init: make router l output log_probs[l] ([L, 3]) whatever its input."""
        raise NotImplementedError(f"{type(self).__name__}.init_at_prior")

    def supports(self, method: str) -> bool:
        """Whether this kind provides an optional method (`fold_standardization`, `init_at_prior`, `read_cost`)."""
        return getattr(type(self), method) is not getattr(RouterKind, method)


class ModuleSteps:
    """The default inference step: the pooling matrix built once per batch, then each block's module."""

    def __init__(self, routers: nn.ModuleList, windows: int, exclude_first: bool):
        self.routers, self.windows, self.exclude_first = routers, windows, exclude_first

    def prompt(self, mask: torch.Tensor | None, batch: int, length: int,
               device: torch.device | str | None = None) -> "ModulePrompt":
        assign, window_mask = window_assignment(mask, batch, length, self.windows, device, self.exclude_first)
        return ModulePrompt(self.routers, assign, window_mask)


class ModulePrompt:
    def __init__(self, routers: nn.ModuleList, assign: torch.Tensor, window_mask: torch.Tensor):
        self.routers, self.assign, self.window_mask = routers, assign, window_mask

    def logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        # as window_mean_pool pools: float32 means of the real tokens
        return self.routers[layer](torch.bmm(self.assign, hidden.float()), self.window_mask)


ROUTER_KINDS: Table[RouterKind] = Table("router kind", "train.router_kind")
