"""The calibration stage's settings: the keys of the config's `calibrate:` block (plus the evaluation's formats and
chat template, which the rules pass along), built and checked once (drllm.core.settings)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from drllm.core.blocks import check_keys
from drllm.core.settings import check_fields, setting
from drllm.data.entries import EvalEntry
from drllm.calibration.calibration import BASE_KNOB
from drllm.calibration.certify import CertifyConfig
from drllm.routing.threshold import check_threshold


@dataclass(frozen=True)
class CalibrationConfig:
    """The `calibrate:` block as the stage receives it (rules/train.smk), built and validated once by `from_dict`."""

    # largest score drop vs base allowed on any set (0.005 = 0.5 points)
    max_drop: float = setting(0.005, "number", low=0, high=1, high_open=True)
    knobs: tuple[float, ...] = (-0.5, -0.45, -0.4, -0.35, -0.3, -0.25, -0.2, -0.15, -0.1, -0.05, 0.0)
    seed: int = setting(0, "int")
    sets: tuple[EvalEntry, ...] = ()  # calibrate.sets by name; eval.formats' options for each format folded in
    chat_template: bool | None = setting(None, "bool", nullable=True)  # None: the model's own (chat_template_for)
    thresholds: tuple[float, ...] = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)  # threshold routers' grid of tau
    certify: CertifyConfig | None = None   # Learn-then-Test settings of router@certified; None = not certified

    def __post_init__(self) -> None:
        check_fields(self, "calibrate")
        knobs = tuple(self.knobs or ())
        if not knobs:
            raise ValueError("calibrate.knobs must list at least one knob p")
        for p in knobs:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not -1.0 <= p <= 1.0:
                raise ValueError(f"calibrate.knobs: every p must be a number in [-1, 1], got {p!r}")
        object.__setattr__(self, "knobs", tuple(sorted({float(p) for p in knobs} | {BASE_KNOB})))
        thresholds = tuple(self.thresholds or ())
        if not thresholds:
            raise ValueError("calibrate.thresholds must list at least one threshold tau")
        taus = {check_threshold(tau, "calibrate.thresholds: every tau") for tau in thresholds}
        object.__setattr__(self, "thresholds", tuple(sorted(taus, reverse=True)))

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None) -> "CalibrationConfig":
        """max_drop, knobs, seed, sets {name: {benchmark, split, format, samples, levels, options}} (at least one
        when given), and the evaluation's formats and chat_template."""
        block = dict(block or {})
        known = {"max_drop", "knobs", "seed", "sets", "formats", "chat_template", "thresholds", "certify"}
        check_keys("calibrate", block, known)
        formats = block.pop("formats", None) or {}
        if not isinstance(formats, Mapping):
            raise ValueError(f"calibrate: formats must be a mapping of format options, got {formats!r}")
        if "sets" in block:
            sets_block = block.pop("sets")
            if not isinstance(sets_block, Mapping) or not sets_block:
                raise ValueError("calibrate.sets must name at least one calibration set")
            block["sets"] = tuple(EvalEntry.from_config(name, spec, formats, section="calibrate.sets")
                                  for name, spec in sorted(sets_block.items()))
        if block.get("certify") is not None:
            block["certify"] = CertifyConfig.from_dict(block["certify"])
        return cls(**block)
