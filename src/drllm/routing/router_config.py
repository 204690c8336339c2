"""What a router stack was built for and how it was trained: `RouterConfig`, saved as router_config.json next to
the weights (drllm.routing.router). Its own module so that the router kinds (drllm.routing.kinds), which build
routers from it, and the stack, which goes through the kinds, do not import each other."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from drllm.core.blocks import check_keys
from drllm.routing.decision import CLASSES, Decision

FORMAT_VERSION = 1


@dataclass
class RouterConfig:
    """What a router stack was built for and how it was trained (saved as router_config.json)."""

    base_model: str
    num_layers: int
    hidden_size: int
    windows: int = 8
    hidden: int = 128
    label_counts: list[int] | None = None  # training labels per class (skip, execute, repeat)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    base_model_revision: str | None = None  # the base model's revision and weights hash (drllm.core.models manifest):
    base_model_sha256: str | None = None    # loading checks them when both sides know them
    pool_exclude_first: bool = False        # pooling leaves each prompt's first token out (window_assignment)
    decision: dict[str, Any] = field(default_factory=lambda: {"rule": "argmax"})  # how probabilities become actions
    kind: str = "mlp"                       # the router kind (drllm.routing.kinds), train.router_kind
    kind_settings: dict[str, Any] = field(default_factory=dict)  # the kind's own settings (train.<kind>)

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "windows", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"router config: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.base_model, str) or not self.base_model:
            raise ValueError(f"router config: base_model must be a non-empty string, got {self.base_model!r}")
        for name in ("base_model_revision", "base_model_sha256"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"router config: {name} must be a string or null, got {getattr(self, name)!r}")
        if not isinstance(self.pool_exclude_first, bool):
            raise ValueError(f"router config: pool_exclude_first must be true or false, got {self.pool_exclude_first!r}")
        self.decision = Decision.from_dict(self.decision).to_dict()
        if not isinstance(self.kind, str) or not self.kind.isidentifier():
            raise ValueError(f"router config: kind must be a router kind's name, got {self.kind!r}")
        if not isinstance(self.kind_settings, dict):
            raise ValueError(f"router config: kind_settings must be a mapping, got {self.kind_settings!r}")
        if self.label_counts is not None:
            if len(self.label_counts) != len(CLASSES):
                raise ValueError(f"router config: label_counts needs {len(CLASSES)} entries, got {self.label_counts}")
            self.label_counts = [int(c) for c in self.label_counts]

    def to_dict(self) -> dict[str, Any]:
        block = dataclasses.asdict(self)
        if block["kind"] == "mlp":  # files written before kinds existed are mlp files: absent == mlp both ways, and
            del block["kind"]       # mlp routers' router_config.json stays byte-identical to theirs
        if not block["kind_settings"]:  # likewise for kinds without settings
            del block["kind_settings"]
        return block

    @classmethod
    def from_dict(cls, block: dict[str, Any]) -> "RouterConfig":
        if not isinstance(block, dict):
            raise ValueError(f"router config must be a mapping, got {type(block).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        check_keys("router config", block, known)
        missing = sorted({"base_model", "num_layers", "hidden_size"} - set(block))
        if missing:
            raise ValueError(f"router config: missing key(s) {missing}")
        return cls(**block)
