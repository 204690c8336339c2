"""Calibrate trained routers: choose their operating point on held-out validation prompts (drllm.routing.calibration).

Each calibration set is a seeded sample of a benchmark split, with every prompt the search used removed (so the
routers never saw them), routed at each point of the grid (the knob p; the threshold tau for routers with the
threshold decision) and scored in its answer format. The chosen point (the largest mean saving whose score on
every set stays within max_drop of the base model's) is written with the whole curve to --out (JSON), which
evaluation's `router@calibrated` method reads. With `certify` set, the point certified by Learn-then-Test on the
pooled per-prompt losses (drllm.routing.certify) is written too, as `certified`, read by `router@certified`.

Example:
  python workflow/scripts/calibrate_routers.py --model-dir resources/models/smollm2-135m-instruct \\
      --routers results/routers/smollm2-135m-instruct \\
      --data arc_easy=resources/data/arc_easy/validation.parquet --prompts results/prompts/smollm2-135m-instruct/arc_easy.parquet \\
      --config-json '{"max_drop": 0.005, "sets": {"arc_easy": {"benchmark": "arc_easy", "split": "validation",
                      "format": "cloze", "samples": 200}}}' \\
      --out results/routers/smollm2-135m-instruct/calibration.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from drllm.core.artifacts import ArtifactError, write_json
from drllm.data.entries import sample_examples
from drllm.data.examples import read_examples
from drllm.routing.calibration import (CalibrationConfig, calibration_curve, certify_point, choose_operating_point,
                                       curve_records, operating_points, point_name, point_record)
from drllm.core.executor import PathExecutor
from drllm.core.models import chat_template_for, load_model, read_manifest
from drllm.routing.router import RouterStack
from drllm.search.shards import read_prompts

EPSILON_SWEEP = (0.005, 0.01, 0.02, 0.03, 0.05)  # calibration.json `certified.by_epsilon`: the same test at these


def parse_config(text: str) -> CalibrationConfig:
    try:
        block = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config-json is not valid JSON: {exc}") from exc
    if not isinstance(block, dict):
        raise ValueError("--config-json must be a JSON object")
    if not block.get("sets"):
        raise ValueError("calibrate.sets must name at least one calibration set")
    return CalibrationConfig.from_dict(block)


def parse_data(items: list[str]) -> dict[str, str]:
    data = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--data takes SET=PATH pairs, got {item!r}")
        data[name] = path
    return data


def held_out(examples: list, benchmark: str, split: str, prompt_rows: list[dict]) -> list:
    """The examples no search prompt of the same benchmark split used."""
    searched = {row["id"] for row in prompt_rows if row["benchmark"] == benchmark and row["split"] == split}
    return [ex for ex in examples if ex.id not in searched]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="materialised model (resources/models/<name>)")
    parser.add_argument("--routers", required=True, help="trained router directory")
    parser.add_argument("--data", nargs="+", required=True, help="SET=records.parquet for every calibration set")
    parser.add_argument("--prompts", nargs="*", default=[], help="search prompt sets (their prompts are excluded)")
    parser.add_argument("--config-json", required=True,
                        help="max_drop, knobs, seed, sets {name: {benchmark, split, format, samples, levels, "
                             "options}}, formats, chat_template")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, help="calibration JSON (written atomically)")
    args = parser.parse_args(argv)
    try:
        config = parse_config(args.config_json)
        data = parse_data(args.data)
        missing = sorted({s.name for s in config.sets} - set(data))
        if missing:
            raise ValueError(f"--data has no records file for calibration set(s) {missing}")
        manifest = read_manifest(args.model_dir)
        chat_template = chat_template_for(config.chat_template, manifest)
        routers = RouterStack.for_model(args.routers, manifest)
        prompt_rows = [row for path in args.prompts for row in read_prompts(path)]
        chosen_sets = []
        for calibration_set in config.sets:
            examples = held_out(read_examples(data[calibration_set.name]), calibration_set.benchmark,
                                calibration_set.split, prompt_rows)
            if not examples:
                raise ArtifactError(f"calibration set {calibration_set.name!r}: every record of "
                                    f"{data[calibration_set.name]} was used by the search; nothing is held out")
            chosen_sets.append((calibration_set, sample_examples(examples, calibration_set, config.seed)))
        model, tokenizer, _ = load_model(args.model_dir, device=args.device, dtype=args.dtype)
        executor = PathExecutor(model)
        points = operating_points(routers, config.knobs, config.thresholds)
        curve, losses = calibration_curve(executor, tokenizer, routers, chosen_sets, points, chat_template,
                                          progress=not args.no_progress)
        (axis, value), notes = choose_operating_point(curve, config.max_drop)
        certified = certify_point(losses, config.certify) if config.certify is not None else None
        if certified is not None:  # what the same losses certify at other epsilons (no further evaluation)
            certified["by_epsilon"] = [
                {"epsilon": epsilon, **{key: point[key] for key in ("point", "certified", "mean_layers_saved",
                                                                    "risk_bound")}}
                for epsilon in EPSILON_SWEEP
                for point in [certify_point(losses, dataclasses.replace(config.certify, epsilon=epsilon))]]
    except (ArtifactError, ValueError) as exc:
        print(f"calibrate_routers: error: {exc}", file=sys.stderr)
        return 2
    chosen = [p for p in curve if (p.axis, p.knob) == (axis, value)]
    saving = sum(p.saving * p.n for p in chosen) / sum(p.n for p in chosen)
    result = {**point_record(axis, value), "max_drop": config.max_drop, "mean_layers_saved": saving,
              "num_layers": executor.num_layers, "model": manifest["name"],
              "sets": {s.name: {"benchmark": s.benchmark, "split": s.split, "format": s.format,
                                "examples": [ex.id for ex in examples]} for s, examples in chosen_sets},
              "chosen": curve_records(chosen), "curve": curve_records(curve), "rejected": notes,
              "rule": "largest mean saving whose score on every set is within max_drop of the base model "
                      "(paired, same prompts); ties -> the more conservative point",
              "certified": certified}
    write_json(args.out, result)
    for point in curve:
        mark = " <- chosen" if (point.axis, point.knob) == (axis, value) else ""
        print(f"calibrate: {point.set} {point_name(point.axis, point.knob)}: score {point.score:.4f} (base "
              f"{point.base_score:.4f}, drop {100 * point.drop:+.2f} pts, agreement {point.agreement:.3f}), "
              f"layers {point.mean_layers:.2f}/{point.num_layers}{mark}")
    print(f"calibrate: chose {point_name(axis, value)}, saving {saving:.2f} layers per example -> {args.out}")
    if certified is not None:
        print(f"calibrate: certified {certified['point']} ({certified['certificate']['reason']}), saving "
              f"{certified['mean_layers_saved']:.2f} layers per example")
        for row in certified["by_epsilon"]:
            print(f"calibrate: at epsilon {row['epsilon']:g}: {row['point']} "
                  f"({'certified' if row['certified'] else 'nothing certified'}), saving "
                  f"{row['mean_layers_saved']:.2f} layers, risk bound {row['risk_bound']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
