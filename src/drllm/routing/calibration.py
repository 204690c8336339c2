"""Calibrated, budget-aware routing (beyond the paper): pick the control knob p on held-out prompts.

Trained routers are often over-confident: a router that puts probability ~1 on skip where its labels were noisy
costs accuracy. The knob p of App. C (drllm.routing.router.apply_knob) trades savings for safety: on (-0.5, 0.5) a block
deviates from execute only when the router's margin over execute exceeds t/(1-t), t = p + 0.5. Calibration routes
held-out validation prompts (never searched, never trained on) at every p of a grid, scores them with the same
answer formats as evaluation, and keeps the p with the largest mean saving whose score on EVERY calibration set
stays within `max_drop` of the base model's on the same prompts (paired). p = 0.5 is the base model itself (drop
0), so a choice always exists; when the routers help nowhere, calibration says so by choosing 0.5.

Plain data: `calibration_curve` rows (one per set x knob) and `choose_operating_point` (a pure function of the
curve) are separate, so the choice is testable on a constructed curve.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from drllm.evaluation.cells import EvalEntry

BASE_KNOB = 0.5  # p = 0.5 executes every block: the base model


@dataclass(frozen=True)
class CalibrationConfig:
    """The `calibrate:` block as the stage receives it (rules/train.smk), built and validated once by `from_dict`."""

    max_drop: float = 0.005           # largest score drop vs base allowed on any set (0.005 = 0.5 points)
    knobs: tuple[float, ...] = (-0.5, -0.45, -0.4, -0.35, -0.3, -0.25, -0.2, -0.15, -0.1, -0.05, 0.0)
    seed: int = 0
    sets: tuple[EvalEntry, ...] = ()  # calibrate.sets by name; eval.formats' options for each format folded in
    chat_template: bool | None = None      # None: the model's own (drllm.core.models.chat_template_for)

    def __post_init__(self) -> None:
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) \
                or not 0.0 <= self.max_drop < 1.0:
            raise ValueError(f"calibrate.max_drop must be a number in [0, 1), got {self.max_drop!r}")
        knobs = tuple(self.knobs or ())
        if not knobs:
            raise ValueError("calibrate.knobs must list at least one knob p")
        for p in knobs:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not -1.0 <= p <= 1.0:
                raise ValueError(f"calibrate.knobs: every p must be a number in [-1, 1], got {p!r}")
        object.__setattr__(self, "knobs", tuple(sorted({float(p) for p in knobs} | {BASE_KNOB})))
        object.__setattr__(self, "max_drop", float(self.max_drop))

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None) -> "CalibrationConfig":
        """max_drop, knobs, seed, sets {name: {benchmark, split, format, samples, levels, options}} (at least one
        when given), and the evaluation's formats and chat_template."""
        block = dict(block or {})
        known = {"max_drop", "knobs", "seed", "sets", "formats", "chat_template"}
        unknown = sorted(set(block) - known)
        if unknown:
            raise ValueError(f"calibrate: unknown key(s) {unknown}; expected some of {sorted(known)}")
        formats = block.pop("formats", None) or {}
        if not isinstance(formats, Mapping):
            raise ValueError(f"calibrate: formats must be a mapping of format options, got {formats!r}")
        if "sets" in block:
            sets_block = block.pop("sets")
            if not isinstance(sets_block, Mapping) or not sets_block:
                raise ValueError("calibrate.sets must name at least one calibration set")
            block["sets"] = tuple(EvalEntry.from_config(name, spec, formats, section="calibrate.sets")
                                  for name, spec in sorted(sets_block.items()))
        chat_template = block.get("chat_template")
        if chat_template is not None and not isinstance(chat_template, bool):
            raise ValueError(f"calibrate: chat_template must be true, false or null, got {chat_template!r}")
        return cls(**block)


@dataclass(frozen=True)
class CurvePoint:
    """One calibration set routed at one knob, paired with the base model on the same prompts."""

    set: str
    knob: float
    n: int
    score: float          # mean metric along the routed paths
    base_score: float     # mean metric along the default path
    mean_layers: float    # mean executed path length
    num_layers: int

    @property
    def drop(self) -> float:
        return self.base_score - self.score

    @property
    def saving(self) -> float:
        return self.num_layers - self.mean_layers


def choose_operating_point(curve: Sequence[CurvePoint], max_drop: float) -> tuple[float, list[str]]:
    """The knob with the largest saving (averaged over examples of every set) whose drop is <= max_drop on
    every set; ties -> the larger p (closer to the base model). Returns (knob, reasons for each rejected p)."""
    by_knob: dict[float, list[CurvePoint]] = {}
    for point in curve:
        by_knob.setdefault(point.knob, []).append(point)
    if not by_knob:
        raise ValueError("empty calibration curve")
    sets = {point.set for point in curve}
    best, best_saving, notes = None, -math.inf, []
    for knob in sorted(by_knob):
        points = by_knob[knob]
        if {p.set for p in points} != sets:
            raise ValueError(f"calibration curve: knob {knob:g} misses sets {sorted(sets - {p.set for p in points})}")
        worst = max(points, key=lambda p: p.drop)
        if worst.drop > max_drop + 1e-12:
            notes.append(f"p={knob:g}: {worst.set} drops {100 * worst.drop:.2f} points (> {100 * max_drop:.2f})")
            continue
        saving = sum(p.saving * p.n for p in points) / sum(p.n for p in points)
        if saving > best_saving + 1e-12 or (abs(saving - best_saving) <= 1e-12 and knob > best):
            best, best_saving = knob, saving
    if best is None:
        raise ValueError(f"no knob keeps every set within max_drop {max_drop}; include p = {BASE_KNOB} in the grid")
    return best, notes


def curve_point(set_name: str, knob: float, scores: Sequence[float], base_scores: Sequence[float],
                lengths: Sequence[int], num_layers: int) -> CurvePoint:
    if not len(scores) == len(base_scores) == len(lengths) or not scores:
        raise ValueError(f"calibration set {set_name!r}: need equal, non-empty score and length lists")
    return CurvePoint(set_name, float(knob), len(scores), float(np.mean(scores)), float(np.mean(base_scores)),
                      float(np.mean(lengths)), num_layers)


def calibration_curve(executor, tokenizer, routers, sets: Sequence[tuple[EvalEntry, list]], knobs: Sequence[float],
                      chat_template: bool = True, progress: bool = True) -> list[CurvePoint]:
    """Route every calibration example at every knob and score it; base scores come from the default path.

    `sets`: (set, examples) pairs. Prompts are routed in batches (RoutedModel.route_ids) and each example is then
    evaluated along its routed path by its answer format, exactly as an evaluation cell would.
    """
    from tqdm import tqdm

    from drllm.routing.inference import RoutedModel
    from drllm.formats.answers import get_format

    curve: list[CurvePoint] = []
    default = executor.default_path()
    for calibration_set, examples in sets:
        answer_format = get_format(calibration_set.format, **calibration_set.options)
        encoded = [answer_format.encode(ex, tokenizer, chat_template=chat_template) for ex in examples]
        outcomes: dict[tuple[int, ...], Any] = {}

        def score(item, path) -> float:
            key = (id(item), *path)
            if key not in outcomes:
                outcomes[key] = answer_format.evaluate(executor, item, path)[0].score
            return outcomes[key]

        base = [score(item, default) for item in encoded]
        bar = tqdm(knobs, desc=f"calibrate {calibration_set.name}", unit="knob", disable=not progress)
        for knob in bar:
            if knob == BASE_KNOB:
                paths = [default] * len(encoded)
            else:
                paths = RoutedModel(executor, routers, knob, tokenizer).route_ids([e.prompt_ids for e in encoded])
            scores = [score(item, path) for item, path in zip(encoded, paths)]
            curve.append(curve_point(calibration_set.name, knob, scores, base, [len(p) for p in paths],
                                     executor.num_layers))
    return curve


def curve_records(curve: Sequence[CurvePoint]) -> list[dict]:
    return [{**asdict(point), "drop": point.drop, "saving": point.saving} for point in curve]
