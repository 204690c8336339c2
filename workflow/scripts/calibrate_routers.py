"""Calibrate trained routers: choose their operating point on held-out validation prompts
(drllm.calibration.calibration).

Each calibration set is a seeded sample of a benchmark split, with every prompt the search used removed (so the
routers never saw them), routed at each point of the grid (the knob p; the threshold tau for routers with the
threshold decision) and scored in its answer format. The chosen point (the largest mean saving whose score on
every set stays within max_drop of the base model's) is written with the whole curve to --out (JSON), which
evaluation's `router@calibrated` method reads. With `certify` set, the point certified by Learn-then-Test on the
pooled per-prompt losses (drllm.calibration.certify) is written too, as `certified`, read by `router@certified`.
The stage itself is drllm.calibration.calibration_stage.run_calibration; this script parses the command line.

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
import sys

from drllm.core.cli import json_argument, named_paths, run_script
from drllm.calibration.calibration_stage import CalibrationRequest, run_calibration



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

    def body() -> None:
        config = json_argument(args.config_json, "--config-json")
        run_calibration(CalibrationRequest(args.model_dir, args.routers, named_paths(args.data, "--data"), config, args.out,
                                           prompts=tuple(args.prompts), device=args.device, dtype=args.dtype,
                                           progress=not args.no_progress))

    return run_script("calibrate_routers", body)


if __name__ == "__main__":
    sys.exit(main())
