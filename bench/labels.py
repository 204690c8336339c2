"""Label ablation on the real model: search modes x rewards on the same prompts, side by side in one run.

For each of the paper's literal expansion (no widening), progressive widening (our default) and the authors'
non-branching chain, each with the binary (paper) and the robust reward (drllm.search.rewards), on the same prompts and
seeds: kept share, mean layers saved by the labels, W->C share, the skip/execute/repeat mix, evaluations per
prompt, and how many labels the other reward would reject ("lucky" labels: correct under binary but not under
robust; the label-noise hypothesis of issue 10). Paper: 1.82 layers saved, W->C ~30%, 3.5/95.4/1.1%.

  python bench/labels.py --prompts 16 --simulations 50 --max-evaluations 20
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch

from drllm.data.registry import load_benchmark
from drllm.core.executor import PathExecutor
from drllm.core.models import load_model
from drllm.search.rewards import PathRewarder, RewardConfig
from drllm.search.mcts import MCTSConfig, run_search
from drllm.core.seeds import derived_seed
from drllm.formats.answers import get_format

MODES = {"literal (no widening)": {"widening": None}, "widening 0.5": {"widening": 0.5},
         "chain (authors)": {"mode": "chain"}}


def label_stats(results: list[tuple[object, object, object]], num_layers: int, other: RewardConfig) -> dict:
    kept = [(result, rewarder) for result, rewarder, _ in results if result.best_path is not None]
    counts = [c for result, _ in kept for c in result.best_path.counts()]
    total = max(1, len(counts))
    lucky = sum(not other.correct(rewarder.outcome(result.best_path), rewarder.encoded, rewarder.reference())
                for result, rewarder in kept)
    return {"prompts": len(results), "kept": len(kept),
            "saved": sum(num_layers - len(r.best_path) for r, _ in kept) / max(1, len(kept)),
            "w2c": sum(r.wrong_to_correct for r, _ in kept) / max(1, len(kept)),
            "mix": tuple(100 * counts.count(c) / total for c in (0, 1, 2)),
            "evaluations": sum(r.evaluations for r, _, _ in results) / max(1, len(results)),
            "rejected_by_other": lucky / max(1, len(kept)),
            "seconds": sum(s for _, _, s in results) / max(1, len(results))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--benchmark", default="arc_easy")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--offset", type=int, default=400, help="first record used (the study searches the first ones)")
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--max-evaluations", type=int, default=20)
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--epsilon", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, tokenizer, manifest = load_model(args.model_dir)
    executor = PathExecutor(model)
    answer_format = get_format("cloze", normalize="chars")
    examples = load_benchmark(args.benchmark, args.split)[args.offset:args.offset + args.prompts]
    encoded = [answer_format.encode(example, tokenizer) for example in examples]
    rewards = {"binary": RewardConfig(kind="binary"),
               "robust": RewardConfig(kind="robust", margin=args.margin, epsilon=args.epsilon)}
    print(f"# bench/labels.py  {datetime.date.today()}  {platform.node()}  {platform.machine()}  "
          f"{torch.get_num_threads()} threads")
    print(f"# {manifest['name']}; {len(encoded)} {args.benchmark}/{args.split} prompts (records {args.offset}..), "
          f"cloze; {args.simulations} simulations, max {args.max_evaluations} evaluations; robust margin "
          f"{args.margin}, epsilon {args.epsilon}")
    print("| search | reward | kept | mean layers saved | W->C share | skip/exec/repeat % | evaluations/prompt | "
          "labels the other reward rejects | s/prompt |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, overrides in MODES.items():
        config = MCTSConfig.from_dict({"simulations": args.simulations, "max_evaluations": args.max_evaluations,
                                       **overrides})
        for name, reward in rewards.items():
            other = rewards["robust" if name == "binary" else "binary"]
            results = []
            for example, item in zip(examples, encoded):
                started = time.perf_counter()
                rewarder = PathRewarder(executor, answer_format, item, reward=reward)
                result = run_search(rewarder, executor.num_layers, config,
                                    derived_seed(args.seed, "labels", example.id))
                results.append((result, rewarder, time.perf_counter() - started))
            s = label_stats(results, executor.num_layers, other)
            print(f"| {mode} | {name} | {s['kept']}/{s['prompts']} | {s['saved']:.2f} | {s['w2c']:.2f} | "
                  f"{s['mix'][0]:.1f}/{s['mix'][1]:.1f}/{s['mix'][2]:.1f} | {s['evaluations']:.1f} | "
                  f"{100 * s['rejected_by_other']:.0f}% | {s['seconds']:.1f} |", flush=True)
    print("| paper (4,000 samples) | binary | | 1.82 | ~0.30 | 3.5/95.4/1.1 | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
