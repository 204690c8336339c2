"""Can the routers predict their labels? Training variants side by side, cross-validated by prompt, in one run.

Reads the training samples of a finished search (results/train/<model>/samples.parquet) and the materialised
model, builds the teacher-forced feature cache once, then trains each variant on K-1 folds and scores the held-out
fold (folds by a seeded hash of the prompt id), so every sample is scored once by routers that never saw it. Beside
the variants: "always execute" (the default path) and "per-layer majority" (a router that ignores the prompt).

Per variant: held-out per-layer accuracy, macro-F1, skip precision and recall (of the decisions that deviate from
execute, how many the labels share), deviations per prompt, and how often a predicted skip lands where the label
executes (the decisions that cost accuracy downstream). A router that cannot beat "always execute" here has no
prompt-dependent signal to route on. The epoch is chosen on the held-out fold itself (as the pipeline chooses it
on its validation split): an optimistic estimate, so a variant that still loses to "always execute" loses.

  python bench/router_fit.py --model-dir resources/models/smollm2-135m-instruct \\
      --samples results/train/smollm2-135m-instruct/samples.parquet --folds 5
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import platform
import time

import torch

from drllm.core.executor import PathExecutor
from drllm.core.models import load_model
from drllm.routing.decision import CLASSES
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.training.features import build_feature_cache
from drllm.training.samples import read_samples
from drllm.training.train_settings import TrainConfig
from drllm.training.training import classification_metrics, label_counts, train_routers

EXECUTE = CLASSES.index("execute")
SKIP = CLASSES.index("skip")
# Pipeline defaults (config/config.yaml train block) and one change each.
VARIANTS = {
    "default (h128, wd 0.01, uniform)": {},
    "paper weights (effective, beta 0.999)": {"class_weights": "effective"},
    "small router (h16)": {"hidden": 16},
    "strong decay (wd 0.1)": {"weight_decay": 0.1},
    "slow (lr 1e-4)": {"lr": 1e-4},
    "no focal (gamma 0)": {"gamma": 0.0},
}


def folds_of(prompt_ids: list[str], folds: int, seed: int) -> list[int]:
    ranked = sorted(set(prompt_ids), key=lambda pid: (hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest(), pid))
    fold = {pid: rank % folds for rank, pid in enumerate(ranked)}
    return [fold[pid] for pid in prompt_ids]


def decision_stats(predictions: torch.Tensor, labels: torch.Tensor) -> dict:
    """predictions, labels [N, L] class ids."""
    deviate = predictions != EXECUTE
    skip = predictions == SKIP
    label_skip = labels == SKIP
    logits = torch.nn.functional.one_hot(predictions, len(CLASSES)).float()
    metrics = classification_metrics(logits, labels)
    return {
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "skip_precision": float((skip & label_skip).sum() / skip.sum()) if skip.any() else float("nan"),
        "skip_recall": float((skip & label_skip).sum() / label_skip.sum()) if label_skip.any() else float("nan"),
        "deviations": float(deviate.sum(1).float().mean()),
        "skip_on_execute": float((skip & (labels == EXECUTE)).sum(1).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--samples", required=True, help="samples.parquet of the router_samples stage")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    samples = read_samples(args.samples)
    model, _, manifest = load_model(args.model_dir, device="cpu", dtype="float32")
    executor = PathExecutor(model)
    started = time.perf_counter()
    cache = build_feature_cache(executor, samples, windows=8)
    cache_seconds = time.perf_counter() - started
    labels = cache.labels
    fold = torch.tensor(folds_of([s.prompt_id for s in samples], args.folds, args.seed))
    print(f"# router fit: {manifest['name']}, {len(samples)} samples, {args.folds}-fold CV by prompt; "
          f"{platform.node()} ({torch.get_num_threads()} threads), {datetime.date.today()}; "
          f"feature cache {cache_seconds:.0f}s")
    counts = label_counts(labels)
    print("labels: " + ", ".join(f"{name} {100 * c / sum(counts):.1f}%" for name, c in zip(CLASSES, counts)))

    rows = {"always execute": decision_stats(torch.full_like(labels, EXECUTE), labels)}
    majority = torch.empty_like(labels)
    for k in range(args.folds):
        train = labels[fold != k]
        per_layer = torch.stack([torch.bincount(train[:, layer], minlength=len(CLASSES)).argmax()
                                 for layer in range(labels.shape[1])])
        majority[fold == k] = per_layer
    rows["per-layer majority"] = decision_stats(majority, labels)

    for name, overrides in VARIANTS.items():
        predictions = torch.empty_like(labels)
        epochs_kept = []
        started = time.perf_counter()
        for k in range(args.folds):
            config = TrainConfig.from_dict({"epochs": args.epochs, "seed": args.seed, **overrides})
            train_idx = torch.nonzero(fold != k).flatten().tolist()
            val_idx = torch.nonzero(fold == k).flatten().tolist()
            train_cache, val_cache = cache.subset(train_idx), cache.subset(val_idx)
            stack = RouterStack(RouterConfig(base_model=manifest["name"], num_layers=executor.num_layers,
                                             hidden_size=executor.config.hidden_size, windows=config.windows,
                                             hidden=config.hidden, label_counts=label_counts(train_cache.labels)),
                                seed=config.seed)
            history = train_routers(stack, train_cache, config, val_cache)
            epochs_kept.append(history.selected_epoch)
            with torch.no_grad():
                logits = stack(val_cache.means, val_cache.window_mask)
            predictions[torch.tensor(val_idx)] = logits.argmax(-1)
        row = decision_stats(predictions, labels)
        row["epochs"] = "/".join(map(str, epochs_kept))
        row["seconds"] = time.perf_counter() - started
        rows[name] = row

    print()
    print("| routers | held-out accuracy | macro-F1 | skip precision | skip recall | deviations / prompt | "
          "skips where label executes / prompt | epochs kept |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['accuracy']:.4f} | {row['macro_f1']:.3f} | {row['skip_precision']:.3f} | "
              f"{row['skip_recall']:.3f} | {row['deviations']:.2f} | {row['skip_on_execute']:.2f} | "
              f"{row.get('epochs', '')} |")


if __name__ == "__main__":
    main()
