"""Fit, calibrate and certify the confidence allocation (drllm.evaluation.allocation_stage): a per-prompt skip budget
that grows with the model's confidence read at layer R, spent on the safest blocks at or after R.

The read is fitted on the search's prompts (each mean budget's margin threshold), the calibration sets of the
`calibrate:` block run at every mean budget, and Learn-then-Test certifies the largest budget whose risk stays
within calibrate.certify's epsilon. Evaluation's `sure@<b>` and `sure@certified` read the JSON written to --out.

Example:
  python workflow/scripts/allocate.py --model-dir resources/models/smollm2-135m-instruct \\
      --safety results/search/smollm2-135m-instruct/layer_safety.parquet \\
      --prompts results/prompts/smollm2-135m-instruct/arc_easy.parquet \\
      --data arc_easy=resources/data/arc_easy/validation.parquet \\
      --config-json '{"read_layer": 12}' \\
      --calibrate-json '{"sets": {"arc_easy": {"benchmark": "arc_easy", "split": "validation", "format": "cloze",
                         "samples": 200}}, "certify": {"epsilon": 0.01, "delta": 0.1}}' \\
      --out results/routers/smollm2-135m-instruct/allocation.json
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import json_argument, named_paths, run_script
from drllm.evaluation.allocation_stage import AllocationRequest, run_allocation



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model-dir", required=True, help="materialised model (resources/models/<name>)")
    parser.add_argument("--safety", required=True, help="the search's layer_safety.parquet (the block order)")
    parser.add_argument("--prompts", nargs="+", required=True, help="search prompt sets: the read is fitted on them")
    parser.add_argument("--data", nargs="+", required=True, help="SET=records.parquet for every calibration set")
    parser.add_argument("--config-json", default="{}", help="the allocate: block (read_layer, lens, share, budgets)")
    parser.add_argument("--calibrate-json", required=True,
                        help="the calibrate: block (sets, seed, certify) with formats and chat_template")
    parser.add_argument("--encoding-json", default="{}", help="the search's formats and chat_template")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", required=True, help="allocation JSON (written atomically)")
    args = parser.parse_args(argv)

    def body() -> None:
        run_allocation(AllocationRequest(
            args.model_dir, args.safety, tuple(args.prompts), named_paths(args.data, "--data"),
            json_argument(args.config_json, "--config-json"), json_argument(args.calibrate_json, "--calibrate-json"),
            json_argument(args.encoding_json, "--encoding-json"), args.out, args.device, args.dtype))

    return run_script("allocate", body)


if __name__ == "__main__":
    sys.exit(main())
