"""Static baseline calibration: ShortGPT block influence of every layer on the search's prompts.

BI_l = 1 - mean cosine(hidden entering block l, hidden leaving it) over the calibration prompts' tokens along the
full path (drllm.evaluation.baselines). The static evaluation method removes the lowest-influence blocks.

Example:
  python workflow/scripts/block_influence.py --model-dir resources/models/smollm2-135m-instruct \\
      --prompts results/prompts/smollm2-135m-instruct/*.parquet --settings-json '{"chat_template": true}' \\
      --out results/eval/smollm2-135m-instruct/block_influence.parquet
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import json_argument, run_script
from drllm.core.executor import PathExecutor
from drllm.core.models import chat_template_for, load_model
from drllm.core.provenance import stage_provenance
from drllm.evaluation.baselines import block_influence, influence_rows, write_influence
from drllm.search.prompts import PromptEncoding, encode_prompt_row, read_prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", nargs="+", required=True, help="prompt sets (the prompts stage's Parquet)")
    parser.add_argument("--settings-json", default="{}", help="formats (per-format options) and chat_template")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    def body() -> None:
        settings = json_argument(args.settings_json, "--settings-json")
        encoding = PromptEncoding.from_dict(settings)
        model, tokenizer, manifest = load_model(args.model_dir, device=args.device, dtype=args.dtype)
        chat_template = chat_template_for(encoding.chat_template, manifest)
        prompts = []
        for path in args.prompts:
            for row in read_prompts(path):
                _, encoded = encode_prompt_row(row, tokenizer, encoding.formats, chat_template)
                prompts.append(encoded.prompt_ids)
        influence, tokens = block_influence(PathExecutor(model), prompts)
        write_influence(args.out, influence_rows(manifest["name"], influence, len(prompts), tokens),
                        stage_provenance("block_influence", settings, manifest))
        order = sorted(range(len(influence)), key=lambda layer: influence[layer])
        print(f"block_influence: {len(prompts)} prompts, {tokens} tokens; least influential layers first: "
              f"{order[:8]} -> {args.out}")

    return run_script("block_influence", body)


if __name__ == "__main__":
    sys.exit(main())
