"""Prompts stage: draw a search task's prompt set from the prepared benchmark records.

Example:
  python workflow/scripts/select_prompts.py --records resources/data/arc_easy/validation.parquet \\
      --task arc_easy --format cloze --samples 16 --seed 0 --out results/prompts/smollm2-135m-instruct/arc_easy.parquet
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import run_script
from drllm.data.examples import read_examples
from drllm.core.provenance import stage_provenance
from drllm.search.prompts import select_prompts, write_prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", required=True, help="benchmark records Parquet from the assets stage")
    parser.add_argument("--task", required=True, help="search task name (e.g. arc_easy, dart_3)")
    parser.add_argument("--format", required=True, help="answer format: letter, cloze or boxed")
    parser.add_argument("--samples", type=int, required=True, help="prompts to draw (all if fewer exist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", default="", help="comma-separated levels to keep (DART), empty = all")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    def body() -> None:
        levels = [int(x) for x in args.levels.split(",") if x.strip()]
        records = [example.to_dict() for example in read_examples(args.records)]
        rows = select_prompts(records, args.task, args.format, args.samples, args.seed, levels or None)
        config = {"task": args.task, "format": args.format, "samples": args.samples, "seed": args.seed,
                  "levels": levels}
        write_prompts(args.out, rows, stage_provenance("select_prompts", config))
        print(f"{args.task}: {len(rows)} prompts from {len(records)} records -> {args.out}")

    return run_script("select_prompts", body)


if __name__ == "__main__":
    sys.exit(main())
