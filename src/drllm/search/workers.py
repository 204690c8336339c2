"""Search workers: one model replica each, searching prompts one at a time; serial and Ray backends.

Results never depend on the backend or the number of workers: each prompt's search is seeded from
(config seed, task, prompt id) and a worker holds no state between prompts.

Ray: the driver reads the safetensors weights once as numpy arrays and puts them in the object store; every
actor maps them zero-copy into its model (frozen weights are never written), so N workers hold one copy of the
weights. `ray_address` joins an existing cluster (e.g. one started inside a SLURM allocation); otherwise a local
Ray starts with exactly the job's CPUs and GPUs. A worker that dies (preempted node, OOM kill) is replaced and its
prompt searched again, a bounded number of times (`max_retries`).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from drllm.core.plugins import PLUGINS_ENV, plugin_modules
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.core.seeds import derived_seed, text_digest
from drllm.search.labelers import LABELERS, LabelResult
from drllm.search.mcts import run_searches
from drllm.search.prompts import encode_prompt_row
from drllm.search.rewards import PathRewarder, RewardConfig, rewards_together
from drllm.search.settings import SearchSettings


def search_prompt(executor: PathExecutor, tokenizer, row: dict, settings: SearchSettings) -> dict:
    """Label one prompt row; returns one shard row (see drllm.search.shards.SHARD_SCHEMA)."""
    return search_prompts(executor, tokenizer, [row], settings)[0]


def search_prompts(executor: PathExecutor, tokenizer, rows: list[dict], settings: SearchSettings) -> list[dict]:
    """Search several prompts in lockstep: each round, the next path of every unfinished search is evaluated in
    one batch (`drllm.search.rewards.rewards_together`: multiple-choice prompts scored as one mixed-path batch,
    generation prompts decoded as one). Each prompt's
    search is seeded on its own, so the rows equal searching the prompts one at a time (timing aside).
    `wall_seconds` shares the batch's time evenly among its prompts.

    Rows marked `seed_check: true` (search.py marks the first `settings.seed_check` of a shard) are searched a
    second time with the seed derived from (seed + 1, task, id) and the same rewarder, so paths the first search
    evaluated cost nothing; that label is the row's `labels_check` (an unseeded labeler's label, e.g. the safety
    sweep's, is repeated without a second run). The row's cost columns count the first search only."""
    started = time.perf_counter()
    reward = settings.reward_config()
    labeler, options = LABELERS.get(settings.labeler), settings.labeler_settings()
    prompts = []
    for row in rows:
        answer_format, encoded = encode_prompt_row(row, tokenizer, settings.formats, settings.chat_template)
        rewarder = PathRewarder(executor, answer_format, encoded, cache_size=settings.prefix_cache,
                                reuse_prefix=settings.prefix_cache > 0, reward=reward)
        prompts.append((row, encoded, rewarder, derived_seed(settings.seed, row["task"], row["id"])))
    def start(item):  # one labelling run of (rewarder, seed)
        rewarder, seed = item
        return labeler.start(executor.num_layers, options, rewarder, seed if labeler.seeded else None)

    results = run_searches(lambda batch: rewards_together([(prompts[index][2], path) for index, path in batch]),
                           [start((rewarder, seed)) for _, _, rewarder, seed in prompts])
    for result in results:
        if not isinstance(result, LabelResult):
            raise TypeError(f"search.labeler {settings.labeler!r} returned {type(result).__name__}, not a "
                            "drllm.search.labelers.LabelResult")
    stats = [dataclasses.replace(rewarder.stats) for _, _, rewarder, _ in prompts]  # before the seed check
    if labeler.seeded:
        checks = seed_check_labels(start, [
            (rewarder, derived_seed(settings.seed + 1, row["task"], row["id"])) if row.get("seed_check") else None
            for row, _, rewarder, _ in prompts])
    else:  # a second run would see the same rewards (the rewarder keeps them) and return the same label
        checks = [result.best_path if row.get("seed_check") else None for (row, *_), result in zip(prompts, results)]
    seconds = (time.perf_counter() - started) / max(1, len(rows))
    return [_shard_row(executor, settings, row, encoded, rewarder, result, seed, reward, seconds, stat, check)
            for (row, encoded, rewarder, seed), result, stat, check in zip(prompts, results, stats, checks)]


def seed_check_labels(second, items: list) -> list:
    """The label (LayerPath or None) of a second search per item (rewarder, seed), in lockstep; None items stay
    None; `second(item)` starts that search (a labeler's coroutine, e.g. mcts.search_steps with the item's
    seed). The rewarders keep their evaluated paths, so only paths new to the second search cost an evaluation."""
    todo = [index for index, item in enumerate(items) if item is not None]
    results = run_searches(
        lambda batch: rewards_together([(items[todo[index]][0], path) for index, path in batch]),
        [second(items[index]) for index in todo])
    labels: list = [None] * len(items)
    for index, result in zip(todo, results):
        labels[index] = result.best_path
    return labels


def _shard_row(executor: PathExecutor, settings: SearchSettings, row: dict, encoded, rewarder: PathRewarder,
               result: LabelResult, seed: int, reward: RewardConfig, seconds: float, stats, check) -> dict:
    """One shard row; `stats`: the rewarder's counts after the first search; `check`: the seed check's label."""
    # the built-in labelers evaluate the default path first; a plugin's that did not gets it evaluated here
    default = rewarder.outcome(LayerPath.default(executor.num_layers))
    best = result.best_path
    default_correct = result.default_correct
    if reward.entry.gold_free:  # every default agrees with itself: record the graded answer instead
        default_correct = bool(default.correct)
    return {
        "prompt_id": row["id"], "prompt_index": row["prompt_index"], "task": row["task"],
        "benchmark": row["benchmark"], "subset": row["subset"], "level": row["level"],
        "prompt_hash": text_digest(encoded.prompt_text),
        "model": settings.model, "num_layers": executor.num_layers,
        "default_correct": default_correct, "kept": best is not None,
        "best_path": list(best) if best is not None else None,
        "labels": best.counts() if best is not None else None,
        "labels_check": check.counts() if check is not None else None,
        "best_length": len(best) if best is not None else None,
        "layers_saved": executor.num_layers - len(best) if best is not None else None,
        "wrong_to_correct": result.wrong_to_correct,
        "prediction_default": default.prediction,
        "prediction_best": rewarder.outcomes[tuple(best)].prediction if best is not None else None,
        "simulations": result.simulations, "evaluations": stats.evaluations,
        "forward_passes": stats.forward_passes,
        "layer_applications": stats.layer_applications,
        "layer_applications_full": stats.layer_applications_full,
        "evaluated": [{"path": str(path), "reward": reward} for path, reward in result.evaluated],
        "max_fanout": result.max_fanout, "max_depth": result.max_depth,
        "reward": reward.describe(),
        "labeler": settings.labeler,
        "layer_safety": result.layer_safety,
        "wall_seconds": seconds, "seed": seed,
        "search_config": settings.to_json(),
    }


class SearchWorker:
    """Holds one model replica; `run(row)` searches one prompt."""

    def __init__(self, model_dir: str, settings: SearchSettings, device: str = "cpu", dtype: str = "auto",
                 threads: int = 0, shared_weights: dict | None = None):
        from drllm.core.models import load_model

        if threads:
            torch.set_num_threads(threads)
        if shared_weights is None:
            model, tokenizer, _ = load_model(model_dir, device=device, dtype=dtype)
        else:
            model, tokenizer = _model_from_shared(model_dir, shared_weights, device, dtype)
        self.executor = PathExecutor(model)
        self.tokenizer = tokenizer
        self.settings = settings

    def run(self, row: dict) -> dict:
        return search_prompt(self.executor, self.tokenizer, row, self.settings)

    def run_many(self, rows: list[dict]) -> list[dict]:
        """Search `rows` in lockstep (one batched evaluation per round); same rows as `run` on each."""
        return search_prompts(self.executor, self.tokenizer, rows, self.settings)

    def location(self) -> str:
        """Where this worker runs (process and host), for logs; answering also tells the driver the model is loaded."""
        return f"pid {os.getpid()} on {socket.gethostname()}"

    def memory(self) -> dict:
        """Resident and unique (not shared) memory of this process, in MiB."""
        import psutil

        info = psutil.Process().memory_full_info()
        return {"rss_mib": info.rss / 2**20, "uss_mib": info.uss / 2**20}


def shared_weight_arrays(model_dir: str) -> dict:
    """The model's weights as numpy arrays, to be put once in Ray's object store."""
    from safetensors.numpy import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def _model_from_shared(model_dir: str, arrays: dict, device: str, dtype: str):
    """Build the model without initialising weights, then point its parameters at the shared arrays."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    from drllm.core.models import resolve_device, resolve_dtype

    config = AutoConfig.from_pretrained(model_dir)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with warnings.catch_warnings():  # the arrays are read-only views of the object store; weights stay frozen
        warnings.simplefilter("ignore", UserWarning)
        tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    if config.get_text_config().tie_word_embeddings:  # safetensors stores one of two tied tensors
        for target, source in (getattr(model, "_tied_weights_keys", None) or {}).items():
            if source not in tensors and target in tensors:
                tensors[source] = tensors[target]
            elif target not in tensors and source in tensors:
                tensors[target] = tensors[source]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"shared weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    torch_device = resolve_device(device)
    model.to(device=torch_device, dtype=resolve_dtype(dtype, torch_device)).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(model_dir)


def batches(rows: list[dict], width: int) -> list[list[dict]]:
    """Consecutive groups of `width` prompts, searched in lockstep."""
    if width < 1:
        raise ValueError(f"batch_prompts must be >= 1, got {width}")
    return [rows[start:start + width] for start in range(0, len(rows), width)]


def run_serial(rows: list[dict], model_dir: str, settings: SearchSettings, device: str, dtype: str,
               threads: int = 0, batch_prompts: int = 1) -> Iterator[dict]:
    worker = SearchWorker(model_dir, settings, device=device, dtype=dtype, threads=threads)
    for batch in batches(rows, batch_prompts):
        yield from worker.run_many(batch)


class RayClusterError(RuntimeError):
    """The search cannot go on on Ray: the cluster cannot be joined, or workers keep dying."""


class WorkerLostError(RayClusterError):
    """A prompt's Ray worker died more often than `max_retries` allows (or could not start at all)."""


def join_cluster(address: str, setting: str = "search.ray_address", who: str = "the search jobs") -> None:
    """Connect this process to the running Ray cluster at `address` (RayClusterError naming `setting` if not)."""
    import ray
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, AuthenticationError) as exc:
        # Ray 2.60: `ray start` turns token authentication on by itself when ~/.ray/auth_token exists, while a
        # process given an explicit address never does; a mismatch only shows as a failed connection.
        raise RayClusterError(
            f"cannot join the Ray cluster at {address} ({setting}): {exc}. Is it running and reachable? "
            "If it uses token authentication (`ray start` turns it on when ~/.ray/auth_token exists), set "
            f"RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN if this machine lacks that file, for {who}") from exc


def _log(message: str) -> None:
    print(f"search workers: {message}", file=sys.stderr, flush=True)


def run_ray(rows: list[dict], model_dir: str, settings: SearchSettings, device: str, dtype: str, workers: int,
            cpus: int, gpus: int = 0, address: str | None = None, memory_report: list | None = None,
            max_retries: int = 2, batch_prompts: int = 1) -> Iterator[dict]:
    """Search `rows` on `workers` Ray actors, `batch_prompts` prompts per call searched in lockstep; yields
    results as they finish (order varies, content does not).

    A worker that dies (killed, OOM, node preempted) is replaced by a new actor and its prompts are searched again,
    at most `max_retries` times per prompt; results are unchanged since each prompt's search is seeded on its own.
    """
    import ray
    from ray.exceptions import RayActorError, WorkerCrashedError

    if not rows:
        return
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            join_cluster(address)
        else:  # a short temp dir: AF_UNIX socket paths are limited to 107 bytes
            ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                     _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    actors: list = []
    try:
        weights = ray.put(shared_weight_arrays(model_dir))
        threads = max(1, cpus // workers)
        options = {"num_cpus": threads, "num_gpus": (gpus / workers) if gpus else 0}
        if plugin_modules():  # workers import the same plugins (on a cluster they must be installed there too)
            options["runtime_env"] = {"env_vars": {PLUGINS_ENV: os.environ[PLUGINS_ENV]}}
        actor_class = ray.remote(**options)(SearchWorker)

        # pending: future -> (actor, batch); batch None marks a `location` call, which answers once the model is loaded
        pending: dict = {}
        queue, retries, lost_loading = batches(rows, batch_prompts), {}, 0

        def start_actor() -> None:
            actor = actor_class.remote(model_dir, settings, device, dtype, threads, weights)
            actors.append(actor)
            pending[actor.location.remote()] = (actor, None)

        for _ in range(workers):
            start_actor()
        while pending and (queue or any(batch is not None for _, batch in pending.values())):
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, batch = pending.pop(done[0])
            try:
                value = ray.get(done[0])
            except (RayActorError, WorkerCrashedError) as exc:
                if getattr(exc, "actor_init_failed", False):  # an error in SearchWorker.__init__: not transient
                    raise WorkerLostError(f"a Ray search worker failed to load the model: {exc}") from exc
                actors.remove(actor)
                ray.kill(actor)
                if batch is None:
                    lost_loading += 1
                    if lost_loading > max_retries * workers:
                        raise WorkerLostError(f"{lost_loading} Ray search workers died while loading the model "
                                              f"(allowed: max_retries {max_retries} x {workers} workers)") from exc
                    _log(f"lost a worker while it loaded the model ({type(exc).__name__}); starting a replacement")
                else:
                    prompts = ("prompt " if len(batch) == 1 else "prompts ") + ", ".join(row["id"] for row in batch)
                    key = batch[0]["id"]
                    retries[key] = retries.get(key, 0) + 1
                    if retries[key] > max_retries:
                        raise WorkerLostError(
                            f"{prompts}: the Ray search worker died {retries[key]} time(s); "
                            f"max_retries={max_retries} (search.max_retries); last error: {type(exc).__name__}: "
                            f"{exc}") from exc
                    _log(f"lost the worker searching {prompts} ({type(exc).__name__}); starting a "
                         f"replacement, retry {retries[key]}/{max_retries}")
                    queue.insert(0, batch)
                start_actor()
                continue
            if queue:  # the next prompts go out before these results are handed on
                next_batch = queue.pop(0)
                pending[actor.run_many.remote(next_batch)] = (actor, next_batch)
            if batch is None:
                _log(f"worker ready ({value})")
            else:
                yield from value
        if memory_report is not None:
            memory_report.extend(ray.get([actor.memory.remote() for actor in actors]))
    finally:
        if started_here:
            ray.shutdown()
