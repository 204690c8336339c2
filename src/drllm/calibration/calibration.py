"""Calibrated, budget-aware routing (beyond the paper): pick the control knob p on held-out prompts.

Trained routers are often over-confident: a router that puts probability ~1 on skip where its labels were noisy
costs accuracy. The knob p of App. C (drllm.routing.decision.apply_knob) trades savings for safety: on (-0.5, 0.5) a block
deviates from execute only when the router's margin over execute exceeds t/(1-t), t = p + 0.5. Calibration routes
held-out validation prompts (never searched, never trained on) at every p of a grid, scores them with the same
answer formats as evaluation, and keeps the p with the largest mean saving whose score on EVERY calibration set
stays within `max_drop` of the base model's on the same prompts (paired). p = 0.5 is the base model itself (drop
0), so a choice always exists; when the routers help nowhere, calibration says so by choosing 0.5.

Routers with the threshold decision (trained on per-layer safety) are swept over the threshold tau instead of
the knob (`thresholds`; higher tau = fewer skips); the base model (p = 0.5) stays the fallback on either axis.

Certified operating point (`certify`, drllm.calibration.certify): the per-prompt losses of every point, pooled over
the calibration sets, go to Learn-then-Test; `router@certified` routes at the most aggressive point whose risk
(drop in agreement with the base model, or in accuracy) is certified <= epsilon with probability >= 1 - delta.

Plain data: `calibration_curve` rows (one per set x point) and `choose_operating_point` (a pure function of the
curve) are separate, so the choice is testable on a constructed curve.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from drllm.core.artifacts import ArtifactError, read_json
from drllm.data.entries import EvalEntry
from drllm.calibration.certify import CertifyConfig, certify, upper_bound
from drllm.routing.threshold import check_threshold

BASE_KNOB = 0.5  # p = 0.5 executes every block: the base model
KNOB, THRESHOLD = "knob", "threshold"  # the two axes of operating points
CALIBRATED = "calibrated"  # the calibration file's chosen point (its `knob`, `threshold`): router@calibrated
CERTIFIED = "certified"    # its `certified` object's point: router@certified


@dataclass(frozen=True)
class CurvePoint:
    """One calibration set routed at one operating point, paired with the base model on the same prompts.
    `knob` is the point's value on its `axis`: the knob p, or the threshold tau (base: knob 0.5)."""

    set: str
    knob: float
    n: int
    score: float          # mean metric along the routed paths
    base_score: float     # mean metric along the default path
    mean_layers: float    # mean executed path length
    num_layers: int
    axis: str = KNOB
    agreement: float = 1.0  # share of prompts whose answer equals the base model's

    @property
    def drop(self) -> float:
        return self.base_score - self.score

    @property
    def saving(self) -> float:
        return self.num_layers - self.mean_layers


def choose_operating_point(curve: Sequence[CurvePoint], max_drop: float) -> tuple[float, list[str]]:
    """The point with the largest saving (averaged over examples of every set) whose drop is <= max_drop on
    every set; ties -> the more conservative one (larger p, larger tau; the base model first). Returns
    ((axis, value), reasons for each rejected point)."""
    by_point: dict[tuple[str, float], list[CurvePoint]] = {}
    for point in curve:
        by_point.setdefault((point.axis, point.knob), []).append(point)
    if not by_point:
        raise ValueError("empty calibration curve")
    sets = {point.set for point in curve}
    best, best_saving, notes = None, -math.inf, []
    # conservative first: the base model, then larger values on each axis (ties keep the earlier)
    order = sorted(by_point, key=lambda key: (key != (KNOB, BASE_KNOB), -key[1]))
    for key in order:
        points = by_point[key]
        name = point_name(*key)
        if {p.set for p in points} != sets:
            raise ValueError(f"calibration curve: {name} misses sets {sorted(sets - {p.set for p in points})}")
        worst = max(points, key=lambda p: p.drop)
        if worst.drop > max_drop + 1e-12:
            notes.append(f"{name}: {worst.set} drops {100 * worst.drop:.2f} points (> {100 * max_drop:.2f})")
            continue
        saving = sum(p.saving * p.n for p in points) / sum(p.n for p in points)
        if saving > best_saving + 1e-12:
            best, best_saving = key, saving
    if best is None:
        raise ValueError(f"no point keeps every set within max_drop {max_drop}; include p = {BASE_KNOB} in the grid")
    return best, notes


def point_name(axis: str, value: float) -> str:
    return f"p={value:g}" if axis == KNOB else f"tau={value:g}"


def point_record(axis: str, value: float) -> dict:
    """The operating point as calibration.json and evaluation read it: {knob, threshold}, one of them null."""
    return {"knob": value if axis == KNOB else None, "threshold": value if axis == THRESHOLD else None}


def read_calibration(path, which: str = CALIBRATED) -> tuple[float | None, float | None]:
    """The operating point (knob p, threshold tau) of router@calibrated (the calibration JSON's `knob` and
    `threshold`) or router@certified (its `certified` object's); one of the two is null, or tau is null and p is
    0.5 when the point is the base model."""
    if not path:
        raise ValueError(f"method 'router@{which}' needs --calibration (results/routers/<model>/calibration.json)")
    value = read_json(path, "router calibration file")
    if not isinstance(value, dict):
        raise ArtifactError(f"router calibration file {path} must hold a JSON object with a 'knob', "
                            f"got {type(value).__name__}")
    if which == CERTIFIED:
        value = value.get("certified")
        if not isinstance(value, dict):
            raise ArtifactError(f"router calibration file {path} has no 'certified' object: calibrate with "
                                "calibrate.certify set (drllm.calibration.certify)")
    knob, threshold = value.get("knob"), value.get("threshold")
    if knob is not None and (isinstance(knob, bool) or not isinstance(knob, (int, float)) or not -1.0 <= knob <= 1.0):
        raise ArtifactError(f"router calibration file {path}: 'knob' must be a number in [-1, 1], got {knob!r}")
    if threshold is not None:
        threshold = check_threshold(threshold, f"router calibration file {path}: 'threshold'", ArtifactError)
    if (knob is None) == (threshold is None):
        raise ArtifactError(f"router calibration file {path}: exactly one of 'knob' and 'threshold' must be set "
                            f"({which}), got knob {knob!r}, threshold {threshold!r}")
    return (None if knob is None else float(knob)), (None if threshold is None else float(threshold))


@dataclass
class PointLosses:
    """Per-prompt results of one operating point, pooled over the calibration sets in set order."""

    disagreement: list[float]   # 1 when the routed answer differs from the base model's
    accuracy_drop: list[float]  # base score - routed score (0/1 metrics: -1, 0 or 1)
    saved: list[float]          # layers saved per prompt (num_layers - path length)

    def losses(self, kind: str) -> list[float]:
        return self.disagreement if kind == "disagreement" else self.accuracy_drop


def certify_point(points: dict[tuple[str, float], PointLosses], config: CertifyConfig) -> dict:
    """Learn-then-Test over the swept points (the base model excluded: it is the fallback), most conservative
    first; the certified point as calibration.json records it, with the certificate and its bound."""
    order = sorted((key for key in points if key != (KNOB, BASE_KNOB)), key=lambda key: -key[1])
    if len({axis for axis, _ in order}) > 1:
        raise ValueError(f"certification sweeps one axis, got points {order}")
    sequence = [(value, points[(axis, value)].losses(config.loss), float(np.mean(points[(axis, value)].saved)))
                for axis, value in order]
    certificate = certify(sequence, config)
    chosen = (order[0][0], float(certificate.parameter)) if certificate.certified else (KNOB, BASE_KNOB)
    losses = points[chosen].losses(config.loss) if chosen in points else None
    return {**point_record(*chosen), "point": point_name(*chosen), "certified": certificate.certified,
            "mean_layers_saved": float(np.mean(points[chosen].saved)) if chosen in points else 0.0,
            "risk_bound": upper_bound(losses, config) if losses is not None and certificate.certified else 0.0,
            "certificate": certificate.to_dict(), "epsilon_auto": config.epsilon is None}


CERTIFIED_FIELDS = ("certified", "point", "mean_layers_saved", "risk_bound", "certificate")
CERTIFICATE_FIELDS = ("certified", "loss", "epsilon", "delta", "method", "n", "reason")


def read_certified(path) -> dict | None:
    """The calibration file's `certified` object (None without one), with every field the report and the release
    card read (`certified_summary`): a file that routes router@certified but lacks them fails here, named."""
    value = read_json(path, "router calibration file")
    certified = value.get("certified") if isinstance(value, dict) else None
    if certified is None:
        return None
    read_calibration(path, CERTIFIED)
    certificate = certified.get("certificate")
    missing = [key for key in CERTIFIED_FIELDS if key not in certified]
    if isinstance(certificate, dict):
        missing += [f"certificate.{key}" for key in CERTIFICATE_FIELDS if key not in certificate]
    elif "certificate" not in missing:
        missing.append("certificate as an object")
    if missing:
        raise ArtifactError(f"router calibration file {path}: the 'certified' object lacks {missing} "
                            "(calibrate_routers.py with calibrate.certify set writes them)")
    return certified


def certified_summary(certified: dict) -> str:
    """One line on calibration.json's `certified` object: the point and its guarantee, or why it saves nothing."""
    return certificate_line("router@certified", certified, f"routes at {certified['point']}")


def certificate_line(method: str, certified: dict, operating: str) -> str:
    """One line on a certified point (`operating`: what the method does there) and its guarantee, or why it is
    the base model."""
    cert = certified["certificate"]
    what = "accuracy drop" if cert["loss"] == "accuracy_drop" else "disagreement with the base model"
    if not certified["certified"]:
        return f"`{method}` is the base model (saves no layers): {cert['reason']}" + epsilon_note(certified)
    return (f"`{method}` {operating}: {what} <= {100 * cert['epsilon']:g} points with probability >= "
            f"{1 - cert['delta']:g} (Learn-then-Test, {cert['method']} p-value, n = {cert['n']} calibration "
            f"prompts; upper bound on its risk {100 * certified['risk_bound']:.2f} points); it saved "
            f"{certified['mean_layers_saved']:.2f} layers per calibration prompt." + epsilon_note(certified))


def epsilon_note(certified: dict) -> str:
    """What a certificate's epsilon was when the config left it null: the smallest its sample size supports."""
    if not certified.get("epsilon_auto"):
        return ""
    cert = certified["certificate"]
    if cert["min_samples"] is not None and cert["n"] < cert["min_samples"]:
        return (f" (epsilon null: not even {100 * cert['epsilon']:g} points, the largest of the grid, can be "
                f"certified with n = {cert['n']} calibration prompts)")
    return (f" (epsilon = {100 * cert['epsilon']:g} points: the smallest of calibrate.certify's grid that "
            f"n = {cert['n']} calibration prompts can certify)")


def curve_point(set_name: str, knob: float, scores: Sequence[float], base_scores: Sequence[float],
                lengths: Sequence[int], num_layers: int, axis: str = KNOB,
                agree: Sequence[bool] | None = None) -> CurvePoint:
    if not len(scores) == len(base_scores) == len(lengths) or not scores:
        raise ValueError(f"calibration set {set_name!r}: need equal, non-empty score and length lists")
    agreement = 1.0 if agree is None else float(np.mean(agree))
    return CurvePoint(set_name, float(knob), len(scores), float(np.mean(scores)), float(np.mean(base_scores)),
                      float(np.mean(lengths)), num_layers, axis, agreement)


def same_answer(outcome, base) -> bool:
    """Whether a routed outcome gives the base model's answer (the option for choice formats, else the text)."""
    if outcome.choice is not None or base.choice is not None:
        return outcome.choice == base.choice
    return (outcome.prediction or "").strip() == (base.prediction or "").strip()


def operating_points(routers, knobs: Sequence[float], thresholds: Sequence[float]) -> list[tuple[str, float]]:
    """The points a calibration sweeps: the base model, then the knob grid (argmax routers) or the threshold
    grid (threshold routers)."""
    if routers.config.decision.get("rule") == "threshold":
        return [(KNOB, BASE_KNOB)] + [(THRESHOLD, float(t)) for t in thresholds]
    return [(KNOB, BASE_KNOB)] + [(KNOB, float(p)) for p in knobs if p != BASE_KNOB]


def calibration_curve(executor, tokenizer, routers, sets: Sequence[tuple[EvalEntry, list]],
                      points: Sequence[tuple[str, float]], chat_template: bool = True,
                      progress: bool = True) -> tuple[list[CurvePoint], dict[tuple[str, float], PointLosses]]:
    """Route every calibration example at every operating point and score it; base scores come from the default
    path. Returns the curve and, per point, the per-prompt losses pooled over the sets (for certification).

    `sets`: (set, examples) pairs. Prompts are routed in batches (RoutedModel.route_ids) and each example is then
    evaluated along its routed path by its answer format, exactly as an evaluation cell would.
    """
    from tqdm import tqdm

    from drllm.routing.inference import RoutedModel
    from drllm.routing.decision import Decision
    from drllm.formats.answers import get_format

    curve: list[CurvePoint] = []
    pooled = {point: PointLosses([], [], []) for point in points}
    default = executor.default_path()
    for calibration_set, examples in sets:
        answer_format = get_format(calibration_set.format, **calibration_set.options)
        encoded = [answer_format.encode(ex, tokenizer, chat_template=chat_template) for ex in examples]
        outcomes: dict[tuple[int, ...], Any] = {}

        def outcome(item, path):
            key = (id(item), *path)
            if key not in outcomes:
                outcomes[key] = answer_format.evaluate(executor, item, path)[0]
            return outcomes[key]

        base = [outcome(item, default) for item in encoded]
        reads = [routers.kind.read_cost(routers.routers, routers.config, executor, len(item.prompt_ids))
                 for item in encoded]
        bar = tqdm(points, desc=f"calibrate {calibration_set.name}", unit="point", disable=not progress)
        for axis, value in bar:
            if (axis, value) == (KNOB, BASE_KNOB):
                paths = [default] * len(encoded)
            elif axis == KNOB:
                paths = RoutedModel(executor, routers, value, tokenizer).route_ids([e.prompt_ids for e in encoded])
            else:
                decision = Decision.from_dict(routers.config.decision).with_threshold(value)
                paths = RoutedModel(executor, routers, None, tokenizer, decision=decision).route_ids(
                    [e.prompt_ids for e in encoded])
            routed = [outcome(item, path) for item, path in zip(encoded, paths)]
            agree = [same_answer(o, b) for o, b in zip(routed, base)]
            curve.append(curve_point(calibration_set.name, value, [o.score for o in routed], [b.score for b in base],
                                     [len(p) for p in paths], executor.num_layers, axis, agree))
            losses = pooled[(axis, value)]
            losses.disagreement.extend(0.0 if same else 1.0 for same in agree)
            losses.accuracy_drop.extend(b.score - o.score for o, b in zip(routed, base))
            if (axis, value) == (KNOB, BASE_KNOB):  # the base point runs no router, so reads nothing
                losses.saved.extend(0.0 for _ in paths)
            else:  # net of what the routers' read costs (router_kind confidence; 0 for window-mean routers)
                losses.saved.extend(executor.num_layers - len(p) - read for p, read in zip(paths, reads))
    return curve, pooled


def curve_records(curve: Sequence[CurvePoint]) -> list[dict]:
    return [{**asdict(point), "drop": point.drop, "saving": point.saving} for point in curve]
