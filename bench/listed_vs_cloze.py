"""The options in the routed context: `listed` (lettered options in the context) against `cloze`, on the same items.

Per item, the full model's answer in each format (accuracy, and how often the two pick the same option), and how
well the early confidence read at each read layer ranks with the final answer margin in each format (Spearman).

    python bench/listed_vs_cloze.py --items 300
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def compare(records: list[dict], read_layers) -> dict:
    """Accuracy per format, the share of items whose two formats pick the same option, and per format and read
    layer the Spearman correlation of the read margin with the final margin."""
    from scipy.stats import spearmanr

    result = {"n": len(records), "same_choice": float(np.mean([r["cloze"]["choice"] == r["listed"]["choice"]
                                                               for r in records]))}
    for name in ("cloze", "listed"):
        result[f"{name}_accuracy"] = float(np.mean([r[name]["correct"] for r in records]))
        finals = [r[name]["margin"] for r in records]
        for layer in read_layers:
            reads = [r[name]["reads"][str(layer)] for r in records]
            result[f"{name}_spearman_R{layer}"] = float(spearmanr(reads, finals).statistic)
    return result


def measure(items: int, model_dir: str, read_layers) -> list[dict]:
    import torch

    from drllm.core.executor import PathExecutor
    from drllm.core.models import load_model
    from drllm.data.registry import load_benchmark
    from drllm.formats.answers import get_format
    from drllm.routing.confidence import prefix_state, read_confidence
    from drllm.search.rewards import choice_margin

    torch.set_num_threads(2)
    model, tokenizer, _ = load_model(model_dir, device="cpu", dtype="float32")
    executor = PathExecutor(model)
    rng = np.random.default_rng(2)
    pairs = []
    for name, share in (("arc_easy", 2), ("arc_challenge", 1)):
        examples = load_benchmark(name, "test_eval")
        count = items * share // 3
        pairs += [examples[i] for i in sorted(rng.permutation(len(examples))[:count])]
    records = []
    for example in pairs:
        record = {"id": example.id}
        for name in ("cloze", "listed"):
            fmt = get_format(name)
            encoded = fmt.encode(example, tokenizer)
            state = prefix_state(executor, encoded, max(read_layers))
            reads = {str(layer): read_confidence(executor, fmt, encoded, layer, state=state).margin
                     for layer in read_layers}
            outcome, _ = fmt.evaluate(executor, encoded, None)
            record[name] = {"choice": outcome.choice, "correct": bool(outcome.correct),
                            "margin": choice_margin(outcome.scores, outcome.choice), "reads": reads}
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300, help="ARC test_eval items (two thirds Easy)")
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--read-layers", default="8,12")
    args = parser.parse_args(argv)
    read_layers = [int(layer) for layer in args.read_layers.split(",")]
    print(json.dumps(compare(measure(args.items, args.model_dir, read_layers), read_layers), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
