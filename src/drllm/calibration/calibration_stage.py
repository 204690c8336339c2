"""The calibration stage, from files to the written calibration JSON: `run_calibration(CalibrationRequest)`.
workflow/scripts/calibrate_routers.py parses the command line into a CalibrationRequest; rules/train.smk gives one
per model.

Each calibration set is a seeded sample of a benchmark split with every prompt the search used removed, routed at
each point of the grid and scored in its answer format (drllm.calibration.calibration). The chosen point and the whole
curve go to the output file, which evaluation's `router@calibrated` reads; with `certify` set, the Learn-then-Test
point too, as `certified` (`router@certified`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from drllm.core.artifacts import ArtifactError, write_json
from drllm.core.executor import PathExecutor
from drllm.core.models import chat_template_for, load_model, read_manifest
from drllm.data.entries import sample_examples
from drllm.data.examples import read_examples
from drllm.calibration.calibration import (calibration_curve, certify_point, choose_operating_point, curve_records,
                                       operating_points, point_name, point_record)
from drllm.calibration.calibration_settings import CalibrationConfig
from drllm.routing.router import RouterStack
from drllm.search.prompts import read_prompts

EPSILON_SWEEP = (0.005, 0.01, 0.02, 0.03, 0.05)  # calibration.json `certified.by_epsilon`: the same test at these
RULE = ("largest mean saving whose score on every set is within max_drop of the base model (paired, same prompts); "
        "ties -> the more conservative point")


@dataclass(frozen=True)
class CalibrationRequest:
    """One calibration, as the rule gives it."""

    model_dir: str                 # materialised model (resources/models/<name>)
    routers: str                   # trained router directory
    data: dict[str, str]           # calibration set name -> its benchmark records Parquet
    config: dict                   # the calibrate: block (max_drop, knobs, seed, sets, formats, chat_template...)
    out: str                       # calibration JSON (written atomically)
    prompts: tuple[str, ...] = ()  # search prompt sets: their prompts are held out
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True


def calibration_config(block: dict) -> CalibrationConfig:
    """The calibrate: block, which must name at least one calibration set."""
    if not block.get("sets"):
        raise ValueError("calibrate.sets must name at least one calibration set")
    return CalibrationConfig.from_dict(block)


def held_out(examples: list, benchmark: str, split: str, prompt_rows: list[dict]) -> list:
    """The examples no search prompt of the same benchmark split used."""
    searched = {row["id"] for row in prompt_rows if row["benchmark"] == benchmark and row["split"] == split}
    return [ex for ex in examples if ex.id not in searched]


def run_calibration(request: CalibrationRequest, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Calibrate, write the calibration JSON, then log the curve, the chosen and the certified point; returns
    what was written. Raises ValueError / ArtifactError naming what is wrong."""
    config = calibration_config(request.config)
    data = request.data
    missing = sorted({s.name for s in config.sets} - set(data))
    if missing:
        raise ValueError(f"--data has no records file for calibration set(s) {missing}")
    manifest = read_manifest(request.model_dir)
    chat_template = chat_template_for(config.chat_template, manifest)
    routers = RouterStack.for_model(request.routers, manifest)
    prompt_rows = [row for path in request.prompts for row in read_prompts(path)]
    chosen_sets = []
    for calibration_set in config.sets:
        examples = held_out(read_examples(data[calibration_set.name]), calibration_set.benchmark,
                            calibration_set.split, prompt_rows)
        if not examples:
            raise ArtifactError(f"calibration set {calibration_set.name!r}: every record of "
                                f"{data[calibration_set.name]} was used by the search; nothing is held out")
        chosen_sets.append((calibration_set, sample_examples(examples, calibration_set, config.seed)))
    model, tokenizer, _ = load_model(request.model_dir, device=request.device, dtype=request.dtype)
    executor = PathExecutor(model)
    points = operating_points(routers, config.knobs, config.thresholds)
    curve, losses = calibration_curve(executor, tokenizer, routers, chosen_sets, points, chat_template,
                                      progress=request.progress)
    (axis, value), notes = choose_operating_point(curve, config.max_drop)
    certified = certify_point(losses, config.certify) if config.certify is not None else None
    if certified is not None:  # what the same losses certify at other epsilons (no further evaluation)
        certified["by_epsilon"] = [
            {"epsilon": epsilon, **{key: point[key] for key in ("point", "certified", "mean_layers_saved",
                                                                "risk_bound")}}
            for epsilon in EPSILON_SWEEP
            for point in [certify_point(losses, dataclasses.replace(config.certify, epsilon=epsilon))]]

    chosen = [p for p in curve if (p.axis, p.knob) == (axis, value)]
    saving = sum(p.saving * p.n for p in chosen) / sum(p.n for p in chosen)
    result = {**point_record(axis, value), "max_drop": config.max_drop, "mean_layers_saved": saving,
              "num_layers": executor.num_layers, "model": manifest["name"],
              "sets": {s.name: {"benchmark": s.benchmark, "split": s.split, "format": s.format,
                                "examples": [ex.id for ex in examples]} for s, examples in chosen_sets},
              "chosen": curve_records(chosen), "curve": curve_records(curve), "rejected": notes,
              "rule": RULE, "certified": certified}
    write_json(request.out, result)
    for point in curve:
        mark = " <- chosen" if (point.axis, point.knob) == (axis, value) else ""
        log(f"calibrate: {point.set} {point_name(point.axis, point.knob)}: score {point.score:.4f} (base "
            f"{point.base_score:.4f}, drop {100 * point.drop:+.2f} pts, agreement {point.agreement:.3f}), "
            f"layers {point.mean_layers:.2f}/{point.num_layers}{mark}")
    log(f"calibrate: chose {point_name(axis, value)}, saving {saving:.2f} layers per example -> {request.out}")
    if certified is not None:
        log(f"calibrate: certified {certified['point']} ({certified['certificate']['reason']}), saving "
            f"{certified['mean_layers_saved']:.2f} layers per example")
        for row in certified["by_epsilon"]:
            log(f"calibrate: at epsilon {row['epsilon']:g}: {row['point']} "
                f"({'certified' if row['certified'] else 'nothing certified'}), saving "
                f"{row['mean_layers_saved']:.2f} layers, risk bound {row['risk_bound']:.4f}")
    return result
