"""Search stage: length-aware MCTS over layer paths for one shard of a task's prompts.

Prompt i of the prompt set belongs to shard i mod num_shards. Finished prompts are checkpointed as they come
(<out>.progress.jsonl), so a killed job resumes where it stopped; Ctrl-C stops cleanly with them kept.
With Ray, a lost worker (preemption, OOM kill) is replaced and its prompt searched again, up to --max-retries
times per prompt. With the setting seed_check N, the shard's first N prompts (by prompt index) are searched again
with a second seed; that label is the row's labels_check (the summary's label agreement across seeds).
The stage itself is drllm.search.stage (prepare_shard, search_shard); this script parses the command line.

Example:
  python workflow/scripts/search.py --model-dir resources/models/smollm2-135m-instruct \\
      --prompts results/prompts/smollm2-135m-instruct/arc_easy.parquet --shard 0 --num-shards 2 \\
      --settings-json '{"mcts": {"simulations": 50}, "seed": 0}' --backend ray --workers 2 --cpus 2 \\
      --out results/search/smollm2-135m-instruct/arc_easy/shard-0.parquet
"""
from __future__ import annotations

import argparse
import sys

from drllm.core.cli import EXPECTED_ERRORS, fail, json_argument
from drllm.search.stage import BACKENDS, SearchInterrupted, ShardRequest, prepare_shard, search_shard
from drllm.search.workers import RayClusterError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="materialised model (resources/models/<name>)")
    parser.add_argument("--prompts", required=True, help="prompt set Parquet from the prompts stage")
    parser.add_argument("--shard", type=int, default=ShardRequest.shard)
    parser.add_argument("--num-shards", type=int, default=ShardRequest.num_shards)
    parser.add_argument("--settings-json", default="{}",
                        help="search settings: mcts (MCTS parameters), reward (binary|robust and its margins), seed, "
                             "seed_check (prompts per shard searched again with a second seed), chat_template, "
                             "prefix_cache, formats")
    parser.add_argument("--backend", choices=BACKENDS, default=ShardRequest.backend)
    parser.add_argument("--workers", type=int, default=ShardRequest.workers, help="Ray workers, one model replica each")
    parser.add_argument("--cpus", type=int, default=ShardRequest.cpus, help="CPUs of this job (Ray gets exactly these)")
    parser.add_argument("--gpus", type=int, default=ShardRequest.gpus, help="GPUs of this job (Ray gets exactly these)")
    parser.add_argument("--ray-address", default=ShardRequest.ray_address,
                        help="join this Ray cluster instead of starting one")
    parser.add_argument("--max-retries", type=int, default=ShardRequest.max_retries,
                        help="times one prompt is searched again after its Ray worker died (a new worker replaces it)")
    parser.add_argument("--batch-prompts", type=int, default=ShardRequest.batch_prompts,
                        help="prompts a worker searches in lockstep, each round's paths evaluated in one batch: "
                             "cloze paths scored, generation formats' answers decoded together (same results; "
                             "meant for GPUs)")
    parser.add_argument("--device", default=ShardRequest.device)
    parser.add_argument("--dtype", default=ShardRequest.dtype)
    parser.add_argument("--out", required=True, help="shard Parquet to write")
    args = parser.parse_args(argv)

    try:
        prepared = prepare_shard(ShardRequest(
            args.model_dir, args.prompts, args.out, json_argument(args.settings_json, "--settings-json"),
            shard=args.shard, num_shards=args.num_shards, backend=args.backend, workers=args.workers, cpus=args.cpus,
            gpus=args.gpus, ray_address=args.ray_address, max_retries=args.max_retries,
            batch_prompts=args.batch_prompts, device=args.device, dtype=args.dtype))
    except EXPECTED_ERRORS as exc:  # bad input; an error during the search itself keeps its traceback
        return fail("search", exc)
    try:
        print(search_shard(prepared), flush=True)
    except SearchInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except RayClusterError as exc:
        return fail("search", exc, code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
