"""How much trained safety routers beat the per-layer prior: the validation loss of the prior (each layer's safe rate
on the training prompts, clipped as training's prior init clips it) against the routers' best validation loss,
on the same validation prompts (the training split, re-derived from the train settings).

    python tools/prior_gap.py results/routers/<model>

Reads samples.parquet, metrics.parquet and train_summary.json from the router directory (safety targets only).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from drllm.routing.samples import read_samples, split_samples
from drllm.routing.training import read_metrics, selected_row


def prior_validation_loss(train, val, floor: float = 1e-3) -> float:
    """Soft cross-entropy of predicting every layer's training safe rate on the validation prompts."""
    rate = torch.tensor([s.safety for s in train], dtype=torch.float64).mean(0).clamp(floor, 1 - floor)
    target = torch.tensor([s.safety for s in val], dtype=torch.float64)
    return float(-(target * rate.log() + (1 - target) * (1 - rate).log()).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("router_dir", help="a trained router directory (results/routers/<model>)")
    args = parser.parse_args(argv)
    directory = Path(args.router_dir)
    config = json.loads((directory / "train_summary.json").read_text())["config"]
    if config.get("target") != "safety":
        print(f"{directory}: routers trained on {config.get('target')!r} targets, not safety", file=sys.stderr)
        return 2
    samples = read_samples(directory / "samples.parquet")
    train, val = split_samples(samples, config["val_fraction"], config["seed"])
    prior = prior_validation_loss(train, val)
    best = selected_row(read_metrics(directory / "metrics.parquet"))
    print(json.dumps({"train_prompts": len(train), "val_prompts": len(val), "prior_val_loss": round(prior, 4),
                      "router_val_loss": round(best["val_loss"], 4), "epoch": best["epoch"],
                      "gain_over_prior": round(1 - best["val_loss"] / prior, 4) if math.isfinite(prior) else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
