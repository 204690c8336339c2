"""Search stage: length-aware MCTS over layer paths for one shard of a task's prompts.

Prompt i of the prompt set belongs to shard i mod num_shards. Finished prompts are checkpointed as they come
(<out>.progress.jsonl), so a killed job resumes where it stopped; Ctrl-C stops cleanly with them kept.
With Ray, a lost worker (preemption, OOM kill) is replaced and its prompt searched again, up to --max-retries
times per prompt. With the setting seed_check N, the shard's first N prompts (by prompt index) are searched again
with a second seed; that label is the row's labels_check (the summary's label agreement across seeds).

Example:
  python workflow/scripts/search.py --model-dir resources/models/smollm2-135m-instruct \\
      --prompts results/prompts/smollm2-135m-instruct/arc_easy.parquet --shard 0 --num-shards 2 \\
      --settings-json '{"mcts": {"simulations": 50}, "seed": 0}' --backend ray --workers 2 --cpus 2 \\
      --out results/search/smollm2-135m-instruct/arc_easy/shard-0.parquet
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from tqdm import tqdm

from drllm.core.artifacts import ArtifactError
from drllm.core.models import read_manifest
from drllm.core.provenance import stage_provenance
from drllm.search.shards import Checkpoint, read_prompts, seed_check_ids, write_shard
from drllm.formats.answers import FORMATS
from drllm.search.workers import RayClusterError, SearchSettings, run_ray, run_serial

BACKENDS = ("serial", "ray")


def parse_settings(text: str, manifest: dict) -> SearchSettings:
    block = json.loads(text)
    if not isinstance(block, dict):
        raise ValueError("--settings-json must be a JSON object")
    return SearchSettings.from_dict(block, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="materialised model (resources/models/<name>)")
    parser.add_argument("--prompts", required=True, help="prompt set Parquet from the prompts stage")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--settings-json", default="{}",
                        help="search settings: mcts (MCTS parameters), reward (binary|robust and its margins), seed, "
                             "seed_check (prompts per shard searched again with a second seed), chat_template, "
                             "prefix_cache, formats")
    parser.add_argument("--backend", choices=BACKENDS, default="serial")
    parser.add_argument("--workers", type=int, default=1, help="Ray workers, one model replica each")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of this job (Ray gets exactly these)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of this job (Ray gets exactly these)")
    parser.add_argument("--ray-address", default="", help="join this Ray cluster instead of starting one")
    parser.add_argument("--max-retries", type=int, default=2,
                        help="times one prompt is searched again after its Ray worker died (a new worker replaces it)")
    parser.add_argument("--batch-prompts", type=int, default=1,
                        help="prompts a worker searches in lockstep, each round's paths evaluated in one batch: "
                             "cloze paths scored, generation formats' answers decoded together (same results; on a "
                             "2-core CPU cloze gains nothing, letter 1.65x at 8; meant for GPUs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", required=True, help="shard Parquet to write")
    args = parser.parse_args(argv)

    try:
        if not 0 <= args.shard < args.num_shards:
            raise ValueError(f"--shard {args.shard} is outside 0..{args.num_shards - 1}")
        if args.workers < 1:
            raise ValueError("--workers must be >= 1")
        if args.batch_prompts < 1:
            raise ValueError(f"--batch-prompts must be >= 1, got {args.batch_prompts}")
        if args.max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {args.max_retries}")
        manifest = read_manifest(args.model_dir)
        settings = parse_settings(args.settings_json, manifest)
        provenance = stage_provenance("search", json.loads(args.settings_json), manifest, graders=["drllm"])
        prompts = read_prompts(args.prompts)
        rows = [row for row in prompts if row["prompt_index"] % args.num_shards == args.shard]
        unknown = sorted({row["format"] for row in prompts} - set(FORMATS))
        if unknown:
            raise ValueError(f"prompt set {args.prompts}: unknown answer format(s) {unknown}; "
                             f"known: {sorted(FORMATS)}")
    except (ArtifactError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"search: error: {exc}", file=sys.stderr)
        return 2

    task = rows[0]["task"] if rows else "?"
    fingerprint = {"settings": settings.to_json(), "prompts": [(r["id"], r["format"]) for r in rows]}
    checkpoint = Checkpoint(args.out + ".progress.jsonl", fingerprint)
    checked = seed_check_ids(rows, settings.seed_check)
    todo = [{**row, "seed_check": row["id"] in checked} for row in rows if row["id"] not in checkpoint.rows]
    label = f"{task} shard {args.shard}/{args.num_shards}"
    print(f"[{label}] {len(rows)} prompts, {len(rows) - len(todo)} already done (checkpoint), "
          f"backend {args.backend}, {args.workers} worker(s), {args.batch_prompts} prompt(s) in lockstep", flush=True)
    if args.backend == "serial":
        results = run_serial(todo, args.model_dir, settings, args.device, args.dtype, threads=args.cpus,
                             batch_prompts=args.batch_prompts)
    else:
        results = run_ray(todo, args.model_dir, settings, args.device, args.dtype, workers=args.workers,
                          cpus=args.cpus, gpus=args.gpus, address=args.ray_address or None,
                          max_retries=args.max_retries, batch_prompts=args.batch_prompts)
    started = time.perf_counter()
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=label, unit="prompt",
               disable=not sys.stderr.isatty())
    try:
        for done, result in enumerate(results, start=1):
            checkpoint.add(result)
            bar.update(1)
            rate = done / (time.perf_counter() - started)
            eta = (len(todo) - done) / rate if rate else float("inf")
            print(f"[{label}] {len(checkpoint.rows)}/{len(rows)} prompts, {rate:.3f} prompts/s, ETA {eta:.0f}s, "
                  f"last: {result['prompt_id']} default_correct={result['default_correct']} "
                  f"saved={result['layers_saved']} evaluations={result['evaluations']}", flush=True)
    except KeyboardInterrupt:
        bar.close()
        checkpoint.close()
        print(f"[{label}] interrupted: {len(checkpoint.rows)} finished prompts kept in {checkpoint.path}; "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    except RayClusterError as exc:
        bar.close()
        checkpoint.close()
        print(f"search: error: {exc}\n[{label}] {len(checkpoint.rows)} finished prompts kept in {checkpoint.path}; "
              "rerun the same command to resume", file=sys.stderr)
        return 1
    bar.close()
    write_shard(args.out, [checkpoint.rows[row["id"]] for row in rows], provenance)
    checkpoint.close(remove=True)
    kept = sum(checkpoint.rows[row["id"]]["kept"] for row in rows)
    print(f"[{label}] wrote {len(rows)} prompts ({kept} kept) -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
