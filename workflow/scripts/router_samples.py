"""Router-training samples from the search: every kept prompt's tokens (as the search encoded them) and labels.

Example:
  python workflow/scripts/router_samples.py --model-dir resources/models/smollm2-135m-instruct \\
      --prompts results/prompts/smollm2-135m-instruct/*.parquet --shards results/search/smollm2-135m-instruct/*/shard-*.parquet \\
      --settings-json '{"formats": {"cloze": {"normalize": "chars"}}, "chat_template": true}' \\
      --out results/routers/smollm2-135m-instruct/samples.parquet
"""
from __future__ import annotations

import argparse
import sys

from transformers import AutoTokenizer

from drllm.core.artifacts import ArtifactError
from drllm.core.cli import json_argument, run_script
from drllm.core.models import chat_template_for, read_manifest
from drllm.core.provenance import stage_provenance
from drllm.search.prompts import PromptEncoding, read_prompts
from drllm.search.shards import read_shard
from drllm.training.samples import samples_from_search, write_samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", nargs="+", required=True, help="prompt sets of the searched tasks")
    parser.add_argument("--shards", nargs="+", required=True, help="search shards of this model")
    parser.add_argument("--settings-json", default="{}", help="the search's formats and chat_template")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    def body() -> None:
        manifest = read_manifest(args.model_dir)
        settings = json_argument(args.settings_json, "--settings-json")
        encoding = PromptEncoding.from_dict(settings)
        results = [row for path in args.shards for row in read_shard(path, manifest["name"], manifest["num_layers"])]
        prompts = [row for path in args.prompts for row in read_prompts(path)]
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        samples = samples_from_search(results, prompts, tokenizer, encoding.formats,
                                      chat_template_for(encoding.chat_template, manifest))
        if not samples:
            raise ArtifactError(f"no kept prompts in {len(results)} search results: nothing to train on "
                                "(search more prompts, or a model that answers some of them)")
        # the shards are listed as inputs: their grader labelled these samples
        write_samples(args.out, samples, stage_provenance("router_samples", settings, manifest, inputs=args.shards))
        print(f"{len(samples)} training samples from {len(results)} searched prompts -> {args.out}")

    return run_script("router_samples", body)


if __name__ == "__main__":
    sys.exit(main())
