"""Search stage measurements on the real model, side by side in one run.

  1. prefix reuse vs none: layer applications per simulation and evaluations/s (same seeds, same paths)
  2. Ray with 2 workers vs 1: wall time for the same prompts
  3. MCTS vs the authors' chain at an equal evaluation budget: share of prompts given a shorter correct path,
     share of wrong defaults fixed
  4. memory per Ray worker: resident vs unique (shared weights are counted once)

  python bench/search.py --prompts 8 --simulations 50
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import torch

from drllm.data.registry import load_benchmark
from drllm.core.models import read_manifest
from drllm.search.prompts import select_prompts
from drllm.search.settings import SearchSettings
from drllm.search.workers import SearchWorker, run_ray


def prompt_rows(benchmark: str, split: str, answer_format: str, count: int, seed: int) -> list[dict]:
    records = [example.to_dict() for example in load_benchmark(benchmark, split)]
    return select_prompts(records, benchmark, answer_format, count, seed)


def settings_for(manifest: dict, simulations: int, mode: str = "branching", prefix_cache: int = 8,
                 early_stop: bool = True, max_evaluations: int | None = None) -> SearchSettings:
    return SearchSettings(model=manifest["name"], num_layers=manifest["num_layers"],
                          labelers={"mcts": {"simulations": simulations, "mode": mode, "early_stop": early_stop,
                                             "max_evaluations": max_evaluations}},
                          prefix_cache=prefix_cache, formats={"cloze": {"normalize": "chars"}})


def serial(worker: SearchWorker, rows: list[dict]) -> tuple[list[dict], float]:
    started = time.perf_counter()
    results = [worker.run(row) for row in rows]
    return results, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--benchmark", default="arc_easy")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--format", default="cloze")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = read_manifest(args.model_dir)
    rows = prompt_rows(args.benchmark, args.split, args.format, args.prompts, args.seed)
    cpus = torch.get_num_threads()
    print(f"# bench/search.py  {datetime.date.today()}  {platform.node()}  {platform.machine()}  {cpus} threads")
    print(f"# {manifest['name']}; {len(rows)} {args.benchmark}/{args.split} prompts, {args.format}; "
          f"{args.simulations} simulations; no early stop for 1 and 3 (equal budgets)")

    # 1. prefix reuse vs none: early stop off so both sides evaluate the same number of paths
    reuse = SearchWorker(args.model_dir, settings_for(manifest, args.simulations, early_stop=False), device="cpu")
    plain = SearchWorker(args.model_dir, settings_for(manifest, args.simulations, early_stop=False,
                                                       prefix_cache=0), device="cpu")
    with_reuse, t_reuse = serial(reuse, rows)
    without, t_plain = serial(plain, rows)
    assert [r["evaluated"] for r in with_reuse] == [r["evaluated"] for r in without], "reuse changed the search"
    sims = sum(r["simulations"] for r in with_reuse)
    evals = sum(r["evaluations"] for r in with_reuse)
    apps_reuse = sum(r["layer_applications"] for r in with_reuse)
    apps_plain = sum(r["layer_applications"] for r in without)
    print("\n| prefix reuse | layer applications / simulation | evaluations / s | wall (s) |\n|---|---|---|---|")
    print(f"| off | {apps_plain / sims:.1f} | {evals / t_plain:.2f} | {t_plain:.1f} |")
    print(f"| on | {apps_reuse / sims:.1f} | {evals / t_reuse:.2f} | {t_reuse:.1f} |")
    print(f"| ratio off/on | {apps_plain / apps_reuse:.2f}x fewer | {t_plain / t_reuse:.2f}x faster | |")

    # 2. Ray: 1 vs 2 workers on the same prompts (default settings, early stop on)
    settings = settings_for(manifest, args.simulations)
    timings, memory = {}, []
    for workers in (1, 2):
        started = time.perf_counter()
        report = memory if workers == 2 else None
        results = sorted(run_ray(rows, args.model_dir, settings, "cpu", "float32", workers=workers, cpus=2,
                                 memory_report=report), key=lambda r: r["prompt_index"])
        timings[workers] = time.perf_counter() - started
        if workers == 1:
            reference = [r["evaluated"] for r in results]
        else:
            assert [r["evaluated"] for r in results] == reference, "worker count changed the results"
    print("\n| Ray workers | wall incl. start (s) | speed-up |\n|---|---|---|")
    for workers, seconds in timings.items():
        print(f"| {workers} | {seconds:.1f} | {timings[1] / seconds:.2f}x |")
    print("\n| Ray worker (2 workers) | RSS MiB | unique MiB |\n|---|---|---|")
    for index, mem in enumerate(memory):
        print(f"| {index} | {mem['rss_mib']:.0f} | {mem['uss_mib']:.0f} |")

    # 3. MCTS vs chain at an equal budget of real evaluations (the chain revisits known paths)
    print(f"\n| mode ({args.simulations} evaluations each) | prompts with a shorter correct path | wrong defaults "
          "fixed | mean layers saved (kept) | mean evaluations | max fan-out |\n|---|---|---|---|---|---|")
    for mode in ("branching", "chain"):
        worker = SearchWorker(args.model_dir, settings_for(manifest, 20 * args.simulations, mode=mode,
                                                            early_stop=False, max_evaluations=args.simulations),
                              device="cpu")
        results, _ = serial(worker, rows)
        shorter = sum(1 for r in results if r["kept"] and r["layers_saved"] > 0)
        wrong = [r for r in results if not r["default_correct"]]
        fixed = sum(r["kept"] for r in wrong)
        kept = [r for r in results if r["kept"]]
        saved = sum(r["layers_saved"] for r in kept) / max(1, len(kept))
        evaluations = sum(r["evaluations"] for r in results) / len(results)
        print(f"| {mode} | {shorter}/{len(results)} | {fixed}/{len(wrong)} | {saved:.2f} | {evaluations:.1f} | "
              f"{max(r['max_fanout'] for r in results)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
