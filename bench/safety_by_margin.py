"""Is a prompt's safety to skip explained by the full model's confidence in its answer? For every prompt of a
finished safety search: the full model's answer margin (best minus second-best option score, choice formats), its
share of safe single skips, and, cross-validated over prompts, the per-layer safety loss of the per-layer prior
against a per-layer logistic model of the log margin (one number per prompt). A large gain says the per-prompt
signal the routers must learn is mostly one scalar, the answer's confidence; on the cloze format the routers cannot
see it, because the options they would compare are not in the routed prompt.

  python bench/safety_by_margin.py --model-dir resources/models/smollm2-135m-instruct \\
      --results results --model smollm2-135m-instruct
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from drllm.core.executor import PathExecutor
from drllm.core.models import load_model
from drllm.search.prompts import PromptEncoding, encode_prompt_row, read_prompts
from drllm.search.shards import read_shard


def cross_entropy(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def cross_validated_losses(safety: np.ndarray, log_margin: np.ndarray, folds: int = 5, seed: int = 0):
    """(prior loss, margin model loss) on held-out prompts, `folds`-fold over prompts."""
    from sklearn.linear_model import LogisticRegression

    fold = np.random.default_rng(seed).permutation(len(safety)) % folds
    prior, margin = np.zeros_like(safety), np.zeros_like(safety)
    features = log_margin[:, None]
    for f in range(folds):
        train, test = fold != f, fold == f
        for layer in range(safety.shape[1]):
            y = safety[train, layer]
            prior[test, layer] = y.mean()
            if y.min() == y.max():  # one class in this fold: the prior is all a model could say
                margin[test, layer] = y.mean()
                continue
            model = LogisticRegression().fit(features[train], y)
            margin[test, layer] = model.predict_proba(features[test])[:, 1]
    return cross_entropy(prior, safety), cross_entropy(margin, safety)


def margin_report(margin: np.ndarray, safety: np.ndarray, folds: int = 5) -> list[str]:
    """The lines RESULTS.md quotes, from each prompt's answer margin [N] and per-layer safety [N, L]: Spearman
    correlation of the margin with the share of safe single skips, that share by margin quintile, and the
    cross-validated per-layer losses of the prior and of the logistic model of the log margin."""
    from scipy.stats import spearmanr

    share = safety.mean(axis=1)
    lines = [f"Spearman correlation of the answer margin with the share of safe single skips: "
             f"{spearmanr(margin, share).statistic:.3f}",
             "", "| margin quintile | margin range | safe single skips (share) | prompts |", "|---|---|---|---|"]
    edges = np.quantile(margin, np.linspace(0, 1, 6))
    quintile = np.clip(np.searchsorted(edges, margin, side="right") - 1, 0, 4)
    for q in range(5):
        chosen = quintile == q
        lines.append(f"| {q + 1} | {edges[q]:.3f} - {edges[q + 1]:.3f} | {share[chosen].mean():.3f} | "
                     f"{chosen.sum()} |")
    prior, by_margin = cross_validated_losses(safety, np.log(margin + 1e-3), folds)
    lines += ["", f"{folds}-fold over prompts, per-layer safety loss (cross-entropy): per-layer prior {prior:.4f}, "
              f"per-layer logistic on the log margin {by_margin:.4f}: gain over the prior "
              f"{100 * (1 - by_margin / prior):.1f}%"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--results", default="results", help="the results tree of a finished safety search")
    parser.add_argument("--model", required=True, help="the model's name (its directory under the results tree)")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)

    search_dir = Path(args.results) / "search" / args.model
    shards = [row for path in sorted(glob.glob(str(search_dir / "*" / "shard-*.parquet"))) for row in read_shard(path)]
    if not shards or any(row["layer_safety"] is None for row in shards):
        parser.error(f"{search_dir}: no shards with layer_safety (a safety-labeler search) found")
    prompts = {(row["task"], row["id"]): row for path in sorted((Path(args.results) / "prompts" / args.model)
                                                                .glob("*.parquet")) for row in read_prompts(path)}
    encoding = PromptEncoding.from_dict({key: json.loads(shards[0]["search_config"])[key]
                                         for key in ("formats", "chat_template")})
    model, tokenizer, _ = load_model(args.model_dir)
    executor = PathExecutor(model)
    started = time.perf_counter()
    margins, safety = [], []
    for shard_row in shards:
        row = prompts[(shard_row["task"], shard_row["prompt_id"])]
        answer_format, encoded = encode_prompt_row(row, tokenizer, encoding.formats, encoding.chat_template)
        with torch.inference_mode():
            outcome, _ = answer_format.evaluate(executor, encoded, None)
        if outcome.scores is None:
            parser.error(f"task {row['task']!r}: format {row['format']!r} has no option scores (choice formats only)")
        best, second = sorted(outcome.scores, reverse=True)[:2]
        margins.append(best - second)
        safety.append([float(s) for s in shard_row["layer_safety"]])
    margin, safety = np.array(margins), np.array(safety)
    print(f"# {datetime.date.today()} {platform.machine()} {torch.get_num_threads()} threads; {len(margin)} prompts "
          f"from {search_dir}; full-model margins in {time.perf_counter() - started:.0f}s")
    print("\n".join(margin_report(margin, safety, args.folds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
