"""The training stage's figures: loss and validation curves per epoch (the kept epoch marked) and the share of
skip / execute / repeat labels per layer."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from drllm.core.figures import pyplot, save_figure
from drllm.routing.decision import CLASSES


def plot_curves(path: Path, epochs: list[dict]) -> None:
    plt = pyplot()
    xs = [row["epoch"] for row in epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(xs, [row["train_loss"] for row in epochs], marker="o", label="train")
    if any(row["val_loss"] is not None for row in epochs):
        left.plot(xs, [_nan(row["val_loss"]) for row in epochs], marker="o", label="validation")
    left.set(xlabel="epoch", ylabel="focal loss", title="loss")
    series = [("val_macro_f1", "macro-F1"), ("val_layer_accuracy", "per-layer accuracy"),
              ("val_recall_skip", "recall skip"), ("val_recall_execute", "recall execute"),
              ("val_recall_repeat", "recall repeat")]
    for key, label in series:
        values = [_nan(row[key]) for row in epochs]
        if not all(math.isnan(v) for v in values):
            right.plot(xs, values, marker=".", label=label)
    right.set(xlabel="epoch", ylim=(-0.02, 1.02), title="validation")
    from matplotlib.ticker import MaxNLocator

    selected = [row["epoch"] for row in epochs if row.get("selected")]
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        for epoch in selected:  # the epoch whose routers were saved
            axis.axvline(epoch, color="black", linestyle="--", linewidth=0.8, label=f"kept (epoch {epoch})")
    left.legend()
    if len(right.lines) > len(selected):
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=right.transAxes)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_label_distribution(path: Path, labels: list[list[int]], title: str) -> None:
    plt = pyplot()
    table = torch.tensor(labels, dtype=torch.long)  # [N, L]
    shares = [(table == c).float().mean(0).numpy() for c in range(len(CLASSES))]
    layers = range(table.shape[1])
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * table.shape[1] + 2), 4))
    bottom = 0
    for share, name, color in zip(shares, CLASSES, ("tab:red", "tab:gray", "tab:blue")):
        ax.bar(layers, share, bottom=bottom, label=name, color=color)
        bottom = bottom + share
    ax.set(xlabel="layer", ylabel="share of samples", ylim=(0, 1), xlim=(-0.6, table.shape[1] - 0.4), title=title)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _nan(value):
    return float("nan") if value is None else value
