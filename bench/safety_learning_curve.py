"""Do more labelled prompts teach safety routers anything the per-layer prior does not know? A learning curve in
one run: the feature cache is built once (along the full path, as `train.teacher_force: default` trains), the
validation prompts are fixed (the pipeline's split), and routers are trained on nested shares of the training
prompts with the config's train settings. Per share: the prior's validation loss (each layer's safe rate on those
training prompts), the routers' best validation loss, and the gain over the prior. Routers that route by the
prompt rather than by the layer show a gain that grows with the data.

  python bench/safety_learning_curve.py --model-dir resources/models/smollm2-135m-instruct \\
      --samples results/routers/smollm2-135m-instruct/samples.parquet --configfile config/study3.yaml
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import time
from typing import Iterator

import torch
import yaml

from drllm.core.executor import PathExecutor
from drllm.core.models import load_model, read_manifest
from drllm.routing.decision import Decision
from drllm.training.features import build_feature_cache
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.training.samples import read_samples, split_samples
from drllm.training.train_settings import TrainConfig
from drllm.training.training import prior_validation_loss, selected_row, train_routers


def train_block(configfiles: list[str]) -> dict:
    """config/config.yaml's train block with each given file's train block over it (key by key, as Snakemake)."""
    block: dict = {}
    for path in ["config/config.yaml", *configfiles]:
        block.update((yaml.safe_load(open(path)) or {}).get("train") or {})
    return block


def feature_caches(executor, train: list, val: list, config: TrainConfig):
    """The training and validation feature caches, both along the full path (teacher_force default: where the
    safety targets were measured and where routing starts), built once for every share."""
    num_layers = len(train[0].labels)
    full = [dataclasses.replace(s, labels=[1] * num_layers) for s in [*train, *val]]
    return tuple(build_feature_cache(executor, part, config.windows, config.cache_batch_size, config.cache_dtype,
                                     exclude_first=config.pool_exclude_first)
                 for part in (full[:len(train)], full[len(train):]))


def curve_rows(cache, val_cache, train: list, val: list, manifest: dict, config: TrainConfig,
               shares: list[float]) -> Iterator[dict]:
    """Per share of the training prompts (nested: a seeded order, each share its first prompts, at least 2): the
    prior's validation loss, the routers' best (selected epoch) validation loss, the gain and that epoch."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    for share in shares:
        chosen = sorted(order[:max(2, round(share * len(train)))])
        prior = prior_validation_loss([train[i].safety for i in chosen], [s.safety for s in val])
        stack = RouterStack(RouterConfig(base_model=manifest["name"], num_layers=cache.num_layers,
                                         hidden_size=int(manifest["hidden_size"]), windows=config.windows,
                                         hidden=config.hidden, training=config.to_dict(),
                                         pool_exclude_first=config.pool_exclude_first,
                                         decision=Decision("threshold", 0.5 if config.threshold is None else config.threshold).to_dict(),
                                         kind=config.router_kind), seed=config.seed)
        best = selected_row(train_routers(stack, cache.subset(chosen), config, val_cache).epochs)
        yield {"prompts": len(chosen), "chosen": chosen, "prior": prior, "val_loss": best["val_loss"],
               "gain": 1 - best["val_loss"] / prior, "epoch": best["epoch"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--samples", required=True, help="the router samples (safety targets) of a finished search")
    parser.add_argument("--configfile", nargs="*", default=[], help="config overlays whose train block applies")
    parser.add_argument("--shares", default="0.25,0.5,1.0", help="shares of the training prompts, nested")
    args = parser.parse_args(argv)

    config = TrainConfig.from_dict(train_block(args.configfile))
    if config.target != "safety":
        parser.error("the train settings must use target: safety")
    samples = read_samples(args.samples)
    train, val = split_samples(samples, config.val_fraction, config.seed)
    model, _, _ = load_model(args.model_dir)
    manifest = read_manifest(args.model_dir)
    executor = PathExecutor(model)
    started = time.perf_counter()
    caches = feature_caches(executor, train, val, config)
    print(f"# {datetime.date.today()} {platform.machine()} {torch.get_num_threads()} threads; {len(train)} train / "
          f"{len(val)} validation prompts; feature cache in {time.perf_counter() - started:.0f}s")
    print("| training prompts | prior val loss | routers val loss | gain over prior | epoch |")
    print("|---|---|---|---|---|")
    for row in curve_rows(*caches, train, val, manifest, config, [float(x) for x in args.shares.split(",")]):
        print(f"| {row['prompts']} | {row['prior']:.4f} | {row['val_loss']:.4f} | {row['gain']:+.2%} | "
              f"{row['epoch']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
