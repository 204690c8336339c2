"""Report: Tables 3 and 4 (score ± 95% CI, Δ vs base, executed layers), routing plots, Markdown, from eval cells.

Reads the evaluation cells (one Parquet per benchmark x method, drllm.evaluation.cells.EVAL_SCHEMA) and the list of
skipped benchmarks, and writes to --out-dir (drllm.evaluation.report.build_report):

  report.md                 Table 3 / Table 4 equivalents, routing consensus, skipped benchmarks, data sources
  summary.parquet           one row per benchmark x method (drllm.evaluation.summary.REPORT_SUMMARY_SCHEMA)
  frontier.parquet          accuracy-vs-layers frontier points, per benchmark and averaged (FRONTIER_SCHEMA)
  accuracy_vs_layers.png, frontier.png (panels for the --in-domain-json benchmarks and the mean),
  layer_actions.png, routing_consensus.png

Example:
  python workflow/scripts/report.py --cells results/eval/smollm2-135m-instruct/*/*.parquet \\
      --skipped-json '[{"benchmark": "mmlu", "reason": "no data source"}]' --in-domain-json '["arc_easy"]' \\
      --out-dir results/report/smollm2-135m-instruct
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.artifacts import ArtifactError, read_json
from drllm.core.cli import json_argument, run_script
from drllm.core.provenance import stage_provenance
from drllm.evaluation.report import build_report, validate_skipped
from drllm.evaluation.summary import parse_in_domain
from drllm.calibration.calibration import read_certified


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--cells", nargs="+", required=True, help="evaluation cell Parquet files")
    parser.add_argument("--skipped-json", default="[]",
                        help='JSON list (or file) of {"benchmark": ..., "reason": ...} for benchmarks not evaluated')
    parser.add_argument("--in-domain-json", default="null",
                        help="JSON list of the benchmarks the routers were trained on (frontier panels); "
                             "null = every benchmark")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--calibration", default="",
                        help="routers' calibration.json: its certified operating point is reported (router@certified)")
    parser.add_argument("--allocation", default="",
                        help="allocation.json: its certified budget is reported (sure@certified)")
    args = parser.parse_args(argv)

    def body() -> None:
        skipped = validate_skipped(json_argument(args.skipped_json, "--skipped-json", list, file=True))
        in_domain = parse_in_domain(args.in_domain_json)
        provenance = stage_provenance("report", {"skipped": skipped, "in_domain": in_domain, "seed": args.seed},
                                      inputs=args.cells)
        certified = None
        if args.calibration:
            certified = read_certified(args.calibration)
            if certified is None:
                raise ArtifactError(f"{args.calibration} has no certified point (calibrate.certify is not set)")
        allocation = read_json(args.allocation, "allocation file") if args.allocation else None
        paths = build_report(args.cells, skipped, args.out_dir, seed=args.seed, in_domain=in_domain,
                             provenance=provenance, certified=certified, allocation=allocation)
        import polars as pl

        summary = pl.read_parquet(paths["summary"])
        print(f"report: {summary['benchmark'].n_unique()} benchmark(s) x {summary['method'].n_unique()} method(s) "
              f"({summary.height} cells), {len(skipped)} skipped -> {paths['report']}")

    return run_script("report", body)


if __name__ == "__main__":
    sys.exit(main())
