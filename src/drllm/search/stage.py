"""The search stage for one shard of a task's prompts, from files to the written shard: `prepare_shard` checks
a `ShardRequest` (its errors are bad input), `search_shard` runs it. workflow/scripts/search.py parses the command
line into a ShardRequest; rules/search.smk gives one per shard.

Prompt i of the prompt set belongs to shard i mod num_shards. Finished prompts are checkpointed as they come
(<out>.progress.jsonl), so a killed job resumes where it stopped; an interrupt or a failed Ray cluster stops the
shard with them kept (`SearchInterrupted`, `RayClusterError`, their messages say where).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm

from drllm.core.models import read_manifest
from drllm.core.provenance import stage_provenance
from drllm.formats.answers import FORMATS
from drllm.search.prompts import read_prompts
from drllm.search.shards import Checkpoint, seed_check_ids, write_shard
from drllm.search.settings import SearchSettings
from drllm.search.workers import RayClusterError, run_ray, run_serial

BACKENDS = ("serial", "ray")


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the shard; the message says how many finished prompts the checkpoint keeps."""


@dataclass(frozen=True)
class ShardRequest:
    """One shard to search, as the rule gives it."""

    model_dir: str                 # materialised model (resources/models/<name>)
    prompts: str                   # prompt set Parquet from the prompts stage
    out: str                       # shard Parquet to write
    settings: dict = field(default_factory=dict)  # the search settings as given (SearchSettings; the provenance's)
    shard: int = 0
    num_shards: int = 1
    backend: str = "serial"        # BACKENDS
    workers: int = 1               # Ray workers, one model replica each
    cpus: int = 1                  # CPUs of this job (Ray gets exactly these)
    gpus: int = 0                  # GPUs of this job (Ray gets exactly these)
    ray_address: str = ""          # join this Ray cluster instead of starting one
    max_retries: int = 2           # times one prompt is searched again after its Ray worker died
    batch_prompts: int = 1         # prompts a worker searches in lockstep
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class PreparedShard:
    """A checked request: the settings built once, the shard's prompt rows, the provenance its file will carry."""

    request: ShardRequest
    settings: SearchSettings
    rows: list[dict]
    provenance: dict


def log_flushed(message: str) -> None:
    print(message, flush=True)  # a log file tailed during a long search shows each prompt as it finishes


def prepare_shard(request: ShardRequest) -> PreparedShard:
    """Check the request, settings and prompt set before any model is loaded; raises ValueError / ArtifactError
    naming what is wrong."""
    if request.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {request.backend!r}")
    if not 0 <= request.shard < request.num_shards:
        raise ValueError(f"--shard {request.shard} is outside 0..{request.num_shards - 1}")
    if request.workers < 1:
        raise ValueError("--workers must be >= 1")
    if request.batch_prompts < 1:
        raise ValueError(f"--batch-prompts must be >= 1, got {request.batch_prompts}")
    if request.max_retries < 0:
        raise ValueError(f"--max-retries must be >= 0, got {request.max_retries}")
    manifest = read_manifest(request.model_dir)
    settings = SearchSettings.from_dict(request.settings, manifest)
    provenance = stage_provenance("search", request.settings, manifest, graders=["drllm"])
    prompts = read_prompts(request.prompts)
    rows = [row for row in prompts if row["prompt_index"] % request.num_shards == request.shard]
    unknown = sorted({row["format"] for row in prompts} - set(FORMATS))
    if unknown:
        raise ValueError(f"prompt set {request.prompts}: unknown answer format(s) {unknown}; "
                         f"known: {sorted(FORMATS)}")
    return PreparedShard(request, settings, rows, provenance)


def search_shard(prepared: PreparedShard, log: Callable[[str], None] = log_flushed) -> str:
    """Search the shard's prompts not yet in its checkpoint, then write the shard and drop the checkpoint; returns
    the closing line. Raises SearchInterrupted (Ctrl-C) or RayClusterError (past max_retries, the cluster lost)
    with the checkpoint kept and named."""
    request, settings, rows = prepared.request, prepared.settings, prepared.rows
    task = rows[0]["task"] if rows else "?"
    fingerprint = {"settings": settings.to_json(), "prompts": [(r["id"], r["format"]) for r in rows]}
    checkpoint = Checkpoint(request.out + ".progress.jsonl", fingerprint)
    checked = seed_check_ids(rows, settings.seed_check)
    todo = [{**row, "seed_check": row["id"] in checked} for row in rows if row["id"] not in checkpoint.rows]
    label = f"{task} shard {request.shard}/{request.num_shards}"
    log(f"[{label}] {len(rows)} prompts, {len(rows) - len(todo)} already done (checkpoint), "
        f"backend {request.backend}, {request.workers} worker(s), {request.batch_prompts} prompt(s) in lockstep")
    if request.backend == "serial":
        results = run_serial(todo, request.model_dir, settings, request.device, request.dtype, threads=request.cpus,
                             batch_prompts=request.batch_prompts)
    else:
        results = run_ray(todo, request.model_dir, settings, request.device, request.dtype, workers=request.workers,
                          cpus=request.cpus, gpus=request.gpus, address=request.ray_address or None,
                          max_retries=request.max_retries, batch_prompts=request.batch_prompts)
    started = time.perf_counter()
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=label, unit="prompt",
               disable=not sys.stderr.isatty())
    try:
        for done, result in enumerate(results, start=1):
            checkpoint.add(result)
            bar.update(1)
            rate = done / (time.perf_counter() - started)
            eta = (len(todo) - done) / rate if rate else float("inf")
            log(f"[{label}] {len(checkpoint.rows)}/{len(rows)} prompts, {rate:.3f} prompts/s, ETA {eta:.0f}s, "
                f"last: {result['prompt_id']} default_correct={result['default_correct']} "
                f"saved={result['layers_saved']} evaluations={result['evaluations']}")
    except KeyboardInterrupt:
        bar.close()
        checkpoint.close()
        raise SearchInterrupted(f"[{label}] interrupted: {len(checkpoint.rows)} finished prompts kept in "
                                f"{checkpoint.path}; rerun the same command to resume") from None
    except RayClusterError as exc:
        bar.close()
        checkpoint.close()
        raise RayClusterError(f"{exc}\n[{label}] {len(checkpoint.rows)} finished prompts kept in {checkpoint.path}; "
                              "rerun the same command to resume") from exc
    bar.close()
    write_shard(request.out, [checkpoint.rows[row["id"]] for row in rows], prepared.provenance)
    checkpoint.close(remove=True)
    kept = sum(checkpoint.rows[row["id"]]["kept"] for row in rows)
    return f"[{label}] wrote {len(rows)} prompts ({kept} kept) -> {request.out}"
