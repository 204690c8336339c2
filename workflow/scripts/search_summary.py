"""Search summary: the paper's Table 2 per task (kept samples, visited paths, forward passes, W->C share, mean
layers saved, label distribution) from every shard of one model; printed and written as Parquet + Markdown.
Beside it, `layer_safety.parquet`: per block, the share of swept prompts on which skipping it alone kept the
answer (safety labeler shards; none otherwise), in the block influence table's schema with influence = 1 - that
share, so the `safest@k` baseline removes the k blocks most often safe (drllm.evaluation.baselines). Also the label
agreement across seeds on the seed-checked prompts (search.seed_check).

Example:
  python workflow/scripts/search_summary.py --manifest resources/models/smollm2-135m-instruct/drllm_model.json \\
      --shards results/search/smollm2-135m-instruct/*/shard-*.parquet \\
      --out results/search/smollm2-135m-instruct/summary.parquet
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drllm.core.artifacts import ArtifactError, read_json, write_text
from drllm.core.cli import run_script
from drllm.core.provenance import stage_provenance
from drllm.evaluation.baselines import influence_rows, write_influence
from drllm.search.shards import read_shard
from drllm.search.summary import format_summary, summarize_search, write_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="drllm_model.json of the model every shard must come from")
    parser.add_argument("--shards", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="summary Parquet; a .md table is written beside it")
    args = parser.parse_args(argv)

    def body() -> None:
        manifest = read_json(args.manifest, "model manifest")
        model = manifest["name"]
        rows = [row for path in args.shards for row in read_shard(path, model, manifest["num_layers"])]
        if not rows:
            raise ArtifactError(f"the shards {args.shards} hold no prompts")
        summary = summarize_search(rows)
        # the stage takes no config; every shard's provenance is listed (one entry when they all agree)
        provenance = stage_provenance("search_summary", {}, manifest, inputs=args.shards)
        write_summary(args.out, summary, provenance)
        swept = [row["layer_safety"] for row in rows if row.get("layer_safety") is not None]
        unsafe = [1.0 - sum(values[layer] for values in swept) / len(swept)
                  for layer in range(manifest["num_layers"])] if swept else []
        write_influence(Path(args.out).with_name("layer_safety.parquet"),
                        influence_rows(model, unsafe, len(swept), 0) if swept else [], provenance)
        table = format_summary(summary)
        write_text(Path(args.out).with_suffix(".md"), f"# Search summary: {model}\n\n{table}\n")
        print(table)

    return run_script("search_summary", body)


if __name__ == "__main__":
    sys.exit(main())
