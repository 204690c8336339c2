"""Multiple-choice scoring: the context once (ChoiceBatch.context_once) vs every option's full row, side by side.

For each benchmark, the same items are scored along the default path both ways, interleaved per item so drift
hits both sides alike; prints seconds per item, the ratio, how many items the executor runs context-once (its
rule: only when that at least halves the tokens), and the largest log-likelihood difference between the two.

  python bench/scoring.py --items 40
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import time

import torch

from drllm.data.registry import load_benchmark
from drllm.core.executor import PathExecutor
from drllm.core.models import load_model
from drllm.formats.answers import get_format

SETS = [("arc_easy", "test"), ("arc_challenge", "test"), ("mmlu", "test"), ("gpqa", "test"), ("piqa", "validation")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, manifest = load_model(args.model_dir, device="cpu", dtype="float32")
    executor = PathExecutor(model)
    cloze = get_format("cloze", normalize="chars")
    print(f"# {manifest['name']} fp32 CPU, {platform.node()} ({args.threads} threads), torch {torch.__version__}, "
          f"{datetime.date.today()}; {args.items} items each, default path")
    print("| benchmark | full rows s/item | context once s/item | speed-up | items run context-once | "
          "max |logprob diff| |")
    print("|---|---|---|---|---|---|")
    for benchmark, split in SETS:
        items = [cloze.encode(example, tokenizer) for example in load_benchmark(benchmark, split)[:args.items]]
        seconds = {"full": 0.0, "once": 0.0}
        worst = 0.0
        for item in items[:2]:  # warm-up
            executor.score(item.batch)
        for item in items:
            results = {}
            for name, batch in (("full", dataclasses.replace(item.batch, shared_context=0)), ("once", item.batch)):
                started = time.perf_counter()
                results[name], _ = executor.score(batch)
                seconds[name] += time.perf_counter() - started
            worst = max(worst, *(abs(a.logprob - b.logprob) for a, b in zip(results["full"], results["once"])))
        once = sum(item.batch.context_once for item in items)
        print(f"| {benchmark} | {seconds['full'] / len(items):.3f} | {seconds['once'] / len(items):.3f} | "
              f"{seconds['full'] / seconds['once']:.2f}x | {once}/{len(items)} | {worst:.1e} |")


if __name__ == "__main__":
    main()
