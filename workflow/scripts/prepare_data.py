"""Write one benchmark split as a uniform examples Parquet file (see drllm.data.registry).

    python workflow/scripts/prepare_data.py --benchmark dart --split train --levels 1,2 --limit 400 \
        --out results/data/dart/train.parquet
    python workflow/scripts/prepare_data.py --benchmark arc_easy --split train \
        --hub-json '{"path": "allenai/ai2_arc", "name": "ARC-Easy", "split": "train"}' --out arc_easy.parquet
    python workflow/scripts/prepare_data.py --benchmark my_mc --split test --out my_mc_test.parquet \
        --data-json '{"kind": "multiple_choice", "source": {"path": "data/my_mc.jsonl"},
                      "fields": {"question": "q", "choices": "options", "answer": "gold"},
                      "partition": {"train": 0.5, "test": 0.5}}'

--data-json is a config `data.<name>` block (the pipeline passes it without `splits`): one with a `kind` declares
its own benchmark (drllm.data.declared), any other configures a built-in (`hub`, as --hub-json).
Prints one summary line on success; on a data or argument problem prints the reason on stderr and exits 2.
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.artifacts import ArtifactError
from drllm.core.cli import json_argument, run_script
from drllm.data.examples import describe_examples, write_examples
from drllm.data.registry import BENCHMARKS, load_benchmark
from drllm.data.declared import KINDS, is_config_declared, load_custom
from drllm.core.provenance import stage_provenance


def parse_levels(text: str | None) -> list[int] | None:
    """'1,2,5' -> [1, 2, 5]; '' or None -> None."""
    if text is None or not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ArtifactError(f"--levels must be a comma list of integers 1-5, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True,
                        help=f"a built-in ({', '.join(BENCHMARKS)}) or a name declared by --data-json")
    parser.add_argument("--split", required=True, help="split name (offline splits depend on the benchmark)")
    parser.add_argument("--hub-json", default="", help="built-ins: hub config as a JSON object; empty = offline data")
    parser.add_argument("--data-json", default="",
                        help=f"the config's data.<benchmark> block as a JSON object; with `kind` "
                             f"({' | '.join(KINDS)}) it declares the benchmark (source, fields, partition)")
    parser.add_argument("--levels", default="", help="dart only: comma list of levels, e.g. 1,2,3")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N examples")
    parser.add_argument("--out", required=True, help="output .parquet path (written atomically)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        # '', null and {} all mean "not given"
        hub = json_argument(args.hub_json, "--hub-json", null=True) or None
        levels = parse_levels(args.levels)
        block = json_argument(args.data_json, "--data-json", null=True) or None
        if is_config_declared(block):
            if hub or levels:
                raise ArtifactError(f"data.{args.benchmark} declares its own benchmark: --hub-json and --levels "
                                    "do not apply (its source and fields are in --data-json)")
            examples = load_custom(args.benchmark, args.split, block, limit=args.limit)
        else:
            hub = hub or (block or {}).get("hub") or None
            examples = load_benchmark(args.benchmark, args.split, hub=hub, levels=levels, limit=args.limit)
        if not examples:
            raise ArtifactError(f"{args.benchmark}/{args.split}: no examples selected (levels/limit too strict?)")
        config = {"benchmark": args.benchmark, "split": args.split, "data": block, "hub": hub, "levels": levels,
                  "limit": args.limit}
        write_examples(args.out, examples, stage_provenance("prepare_data", config))
        print(f"prepare_data: wrote {describe_examples(examples)} -> {args.out}")

    return run_script("prepare_data", body)


if __name__ == "__main__":
    sys.exit(main())
