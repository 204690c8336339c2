"""The training stage's settings: every key of the config's `train:` block (`TrainConfig`), built and checked once
(drllm.core.settings); recorded in router_config.json's `training`."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from drllm.core.plugins import split_blocks
from drllm.core.settings import check_fields, from_block, setting
from drllm.routing.decision import CLASSES
from drllm.training.features import CACHE_DTYPES
from drllm.routing.kinds import ROUTER_KINDS
from drllm.routing.threshold import threshold_setting

CLASS_WEIGHT_MODES = ("none", "effective", "fixed")
SELECT_EPOCH = ("val_macro_f1", "val_loss", "last")
TARGETS = ("path", "safety")


@dataclass
class TrainConfig:
    """Every training knob: the paper's values (docs/method.md#training) except class_weights (paper: "effective"),
    the warm-up (paper: warmup_steps 500) and select_epoch (paper silent; "last" keeps the paper's plain run),
    whose paper settings suit ~4,000 samples but not a few hundred; config/paper.yaml sets the paper's."""

    lr: float = setting(1e-3, "number", low=0, low_open=True)
    weight_decay: float = setting(0.01, "number", low=0)
    # absolute warm-up (paper 500), capped at half the total steps
    warmup_steps: int | None = setting(None, "int", low=0, nullable=True)
    # warm-up as a share of the total steps; null to use warmup_steps
    warmup_fraction: float | None = setting(0.05, "number", low=0, high=1, high_open=True, nullable=True)
    epochs: int = setting(25, "int", low=1)
    batch_size: int = setting(16, "int", low=1)            # samples per micro-batch
    grad_accumulation: int = setting(1, "int", low=1)      # effective batch = batch_size * grad_accumulation (paper 16)
    gamma: float = setting(2.0, "number", low=0)           # focal loss
    # "none" (uniform), "effective" (paper, uses beta) or "fixed" (fixed_weights)
    class_weights: str = setting("none", "str", choices=CLASS_WEIGHT_MODES)
    beta: float = setting(0.999, "number", low=0, high=1, high_open=True)  # effective-number class weights
    fixed_weights: list[float] | None = None  # [skip, execute, repeat] for class_weights "fixed"
    # which epoch's routers are kept
    select_epoch: str = setting("val_macro_f1", "str", choices=SELECT_EPOCH)
    windows: int = setting(8, "int", low=1)
    hidden: int = setting(128, "int", low=1)
    val_fraction: float = setting(0.1, "number", low=0, high=1, high_open=True)
    seed: int = setting(0, "int", low=0)                   # router init and shuffling
    cache_dtype: str = setting("float32", "str", choices=tuple(CACHE_DTYPES))  # bfloat16 halves the feature cache
    cache_batch_size: int = setting(8, "int", low=1)       # prompts per teacher-forced forward when building features
    max_grad_norm: float | None = setting(None, "number", low=0, low_open=True, nullable=True)
    # train on window features standardised per (layer, dim) with the training cache's statistics, folded into each
    # router's first layer afterwards (exact)
    standardize: bool = setting(False, "bool")
    # target safety: start every router at its layer's training safe rate (output weights 0, biases = the prior's
    # log-probabilities), so training moves away from the per-layer prior only where the prompt features pay for it
    prior_init: bool = setting(False, "bool")
    # path (the label path's counts, focal loss: paper) | safety (per-layer safety)
    target: str = setting("path", "str", choices=TARGETS)
    # features along the label path (paper) | default: along the full path, where the safety targets were measured
    # and where routing starts at inference
    teacher_force: str = setting("label", "str", choices=("label", "default"))
    # target safety: the routers' default decision, skip when P(skip) >= threshold; null: matched after training
    # (drllm.training.training.matched_threshold), the tau at which the routers skip on the validation prompts as
    # many blocks as those prompts' labels jointly kept skipped. A fixed 0.5 is one block's chance of being safe
    # alone: most blocks pass it, and the demo's router skipped 28 of 30 layers
    threshold: float | None = threshold_setting(None, nullable=True)
    pool_exclude_first: bool = setting(False, "bool")  # pooling leaves each prompt's first token (a constant state) out
    router_kind: str = setting("mlp", "str")  # what a router is (drllm.routing.kinds; a plugin's kind by name)
    # the kind's own settings, config block train.<router_kind> (e.g. train.confidence.read_layer)
    # (not a schema key of its own: the schema knows each kind's block by the kind's name)
    kind_settings: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "train")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise ValueError(f"train: warmup_steps ({self.warmup_steps}) and warmup_fraction "
                             f"({self.warmup_fraction}) are both set; set one and the other to null "
                             "(warmup_fraction defaults to 0.05)")
        if self.warmup_steps is None and self.warmup_fraction is None:
            raise ValueError("train: warmup_steps and warmup_fraction are both null; set one of them")
        if self.class_weights == "fixed":
            weights = self.fixed_weights
            if (not isinstance(weights, (list, tuple)) or len(weights) != len(CLASSES)
                    or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
                           for w in weights) or sum(weights) <= 0):
                raise ValueError(f"train.fixed_weights must be {len(CLASSES)} numbers >= 0 "
                                 f"[{', '.join(CLASSES)}] with a positive sum when class_weights is 'fixed', "
                                 f"got {weights!r}")
            self.fixed_weights = [float(w) for w in weights]
        elif self.fixed_weights is not None:
            # silently ignoring them would train with other weights than the config shows
            raise ValueError(f"train.fixed_weights is set but class_weights is {self.class_weights!r}; "
                             "set class_weights to 'fixed' or fixed_weights to null")
        if self.prior_init and self.target != "safety":
            raise ValueError("train.prior_init needs target safety (it starts from the per-layer safe rate)")
        kind = ROUTER_KINDS.get(self.router_kind)  # unknown: names train.router_kind and the known kinds
        if not isinstance(self.kind_settings, dict):
            raise ValueError(f"train.{self.router_kind} must be a mapping, got {self.kind_settings!r}")
        kind.settings_from(self.kind_settings, self.router_kind)  # checked now, in the block's own wording
        for name, method in (("standardize", "fold_standardization"), ("prior_init", "init_at_prior")):
            if getattr(self, name) and not kind.supports(method):  # refused now, not after the epochs
                raise ValueError(f"train.{name} needs the router kind to provide {method}, and "
                                 f"{self.router_kind!r} does not; turn it off: `train: {{{name}: false}}` in your "
                                 "config (config/config.yaml turns it on)")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accumulation

    @classmethod
    def from_dict(cls, block: dict[str, Any] | None) -> "TrainConfig":
        """The train block; `train.<kind>` beside the keys is that router kind's settings (as the other tables'
        entry blocks are split off, drllm.core.plugins.split_blocks)."""
        own = [f.name for f in dataclasses.fields(cls) if f.name != "kind_settings"]
        block, kinds = split_blocks(dict(block or {}), own, ROUTER_KINDS, "train")
        kind = block.get("router_kind", "mlp")
        other = next((name for name in kinds if name != kind), None)
        if other is not None:
            raise ValueError(f"train.{other}: settings of router kind {other!r}, but train.router_kind is {kind!r}")
        return from_block(cls, {**block, "kind_settings": kinds.get(kind, {})}, "train")

    def to_dict(self) -> dict[str, Any]:
        block = dataclasses.asdict(self)
        if block["router_kind"] == "mlp":  # as RouterConfig.to_dict: router_config.json's `training` predates kinds
            del block["router_kind"]       # (absent == mlp), and mlp routers' files stay byte-identical
        settings = block.pop("kind_settings")
        if settings:
            block[self.router_kind] = settings
        return block
