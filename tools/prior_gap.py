"""How much trained safety routers beat the per-layer prior: the validation loss of the prior (each layer's safe rate
on the training prompts, clipped as training's prior init clips it) against the routers' best validation loss,
on the same validation prompts (the training split, re-derived from the train settings).

    python tools/prior_gap.py results/routers/<model>

Reads samples.parquet, metrics.parquet and train_summary.json from the router directory (safety targets only); the
train stage records the same figure as `prior_val_loss` in train_summary.json since 2026-12-03.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from drllm.training.samples import read_samples, split_samples
from drllm.training.training import prior_validation_loss, read_metrics, selected_row


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
    prior = prior_validation_loss([s.safety for s in train], [s.safety for s in val])
    best = selected_row(read_metrics(directory / "metrics.parquet"))
    print(json.dumps({"train_prompts": len(train), "val_prompts": len(val), "prior_val_loss": round(prior, 4),
                      "router_val_loss": round(best["val_loss"], 4), "epoch": best["epoch"],
                      "gain_over_prior": round(1 - best["val_loss"] / prior, 4) if math.isfinite(prior) else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
