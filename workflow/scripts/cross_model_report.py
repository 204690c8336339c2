"""Cross-model report: the paper's Tables 3 and 4 across models (accuracy change with 95% paired intervals and
layers saved per benchmark, in-domain and out-of-domain averages), from each model's report summary.parquet.

Writes to --out-dir (drllm.evaluation.cross_model.write_cross_model_report):

  cross_model.md        one row per model x method (base first), a column per benchmark and per domain average
  cross_model.parquet   one row per model x method x benchmark plus the averages (CROSS_MODEL_SCHEMA)
  cross_model.png       accuracy change vs layers saved, one colour per model

Example:
  python workflow/scripts/cross_model_report.py \\
      --summary smollm2-135m=results/report/smollm2-135m-instruct/summary.parquet \\
      --summary qwen2.5-0.5b=results/report/qwen2.5-0.5b-instruct/summary.parquet \\
      --in-domain-json '["arc_easy", "arc_challenge"]' --out-dir results/report/cross_model
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import run_script
from drllm.core.provenance import stage_provenance
from drllm.evaluation.cross_model import DEFAULT_METHODS, load_summaries, write_cross_model_report
from drllm.evaluation.summary import parse_in_domain


def parse_summary(text: str) -> tuple[str, str]:
    """--summary MODEL=PATH."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path:
        raise ValueError(f"--summary expects MODEL=PATH, got {text!r}")
    return name.strip(), path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--summary", action="append", required=True, metavar="MODEL=PATH",
                        help="a model's report summary.parquet under the name the table shows (repeat per model; "
                             "rows follow this order)")
    parser.add_argument("--in-domain-json", default="null",
                        help="JSON list of the benchmarks the routers were trained on; null = every benchmark")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"methods to report besides base (default: {DEFAULT_METHODS[0]}, and "
                             f"{DEFAULT_METHODS[1]} where a summary has it)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)

    def body() -> None:
        entries = [parse_summary(text) for text in args.summary]
        in_domain = parse_in_domain(args.in_domain_json)
        summaries = load_summaries(entries)  # first: a bad file is named as a report summary
        # names and choices only (paths differ per machine); the summaries' own provenance is merged from the files
        provenance = stage_provenance("cross_model_report", {"models": list(summaries), "in_domain": in_domain,
                                                             "methods": args.methods},
                                      inputs=[path for _, path in entries])
        paths = write_cross_model_report(summaries, args.out_dir, in_domain=in_domain, methods=args.methods,
                                         provenance=provenance, sources=dict(entries))
        print(f"cross_model_report: {len(entries)} model(s) -> {paths['markdown']}, {paths['table'].name}, "
              f"{paths['figure'].name}")

    return run_script("cross_model_report", body)


if __name__ == "__main__":
    sys.exit(main())
