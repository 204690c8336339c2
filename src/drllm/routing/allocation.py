"""Skips spent where the answer is sure: a per-prompt skip budget that grows with the early confidence read.

The decision rule (beyond the paper). Read the model's confidence at layer R (drllm.routing.confidence), then skip
the `budget(margin)` safest blocks at or after R, safest by the per-layer rate at which skipping the block alone kept
the full model's answer (the safety sweep's `layer_safety`). The budget is monotone in the margin: the more confident
share of prompts (`share`) gets K = round(mean_budget / share) skips, the rest none, with the margin threshold set so
that the mean budget over the fitting prompts equals `mean_budget`:

    budget(m) = K  if m >= threshold  else 0,     threshold = the margin above which a `share` of fitting prompts lie.

A two-level split already takes most of the way to splitting by the full model's own margin (issue 30's feasibility
run: agreement with the full model 0.906 at a mean of 2 skips, against 0.825 for the 2 safest blocks on every prompt).

The thresholds are fitted on prompts other than those that certify the point (the search's prompts), so the family
of points, ordered by mean budget, is fixed before Learn-then-Test sees the calibration losses.

Plain data, pure functions: `fit_threshold`, `budget_for`, `allocation_path` and `allocation_family`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from drllm.core.paths import LayerPath


@dataclass(frozen=True)
class AllocationPoint:
    """One point of the family: the mean budget asked for, the skips a confident prompt gets, and the margin
    threshold that makes the fitting prompts' mean budget equal `mean_budget`."""

    mean_budget: float
    max_skips: int
    threshold: float

    def budget(self, margin: float) -> int:
        return budget_for(margin, self.threshold, self.max_skips)

    def to_dict(self) -> dict:
        return {"mean_budget": self.mean_budget, "max_skips": self.max_skips,
                "threshold": None if math.isinf(self.threshold) else self.threshold}


def skips_for(mean_budget: float, share: float, available: int) -> int:
    """K, the skips a confident prompt gets: round(mean_budget / share), at most `available` blocks."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    if mean_budget < 0:
        raise ValueError(f"mean budget must be >= 0, got {mean_budget!r}")
    skips = int(round(mean_budget / share))
    if skips > available:
        raise ValueError(f"a mean budget of {mean_budget:g} skips at share {share:g} needs {skips} blocks at or after "
                         f"the read layer, but only {available} are there")
    return skips


def fit_threshold(margins: Sequence[float], mean_budget: float, max_skips: int) -> float:
    """The margin threshold at which `max_skips` skips for prompts at or above it give `mean_budget` on average
    over `margins`: the confident count is round(n * mean_budget / max_skips); the threshold is that prompt's
    margin (ties at it all get the skips, so the mean can exceed the budget by the tie's size). +inf when no prompt
    gets skips."""
    values = np.sort(np.asarray(margins, dtype=np.float64))[::-1]
    if values.size == 0:
        raise ValueError("fit_threshold needs at least one fitting margin")
    if np.any(np.isnan(values)):
        raise ValueError("fit_threshold: margins must be numbers (+inf: a prompt with a single option), got NaN")
    if max_skips == 0 or mean_budget == 0:
        return math.inf
    confident = int(round(values.size * mean_budget / max_skips))
    if confident <= 0:
        return math.inf
    return float(values[min(confident, values.size) - 1])


def budget_for(margin: float, threshold: float, max_skips: int) -> int:
    return max_skips if margin >= threshold else 0


def safe_order(layer_safety: Sequence[float], read_layer: int) -> list[int]:
    """Blocks at or after the read layer, safest first (ties: the earlier block, as `safest@k` ranks them)."""
    return sorted(range(read_layer, len(layer_safety)), key=lambda layer: (-layer_safety[layer], layer))


def allocation_path(num_layers: int, order: Sequence[int], skips: int) -> LayerPath:
    """The full path without the first `skips` blocks of `order`."""
    dropped = set(order[:skips])
    return LayerPath(tuple(layer for layer in range(num_layers) if layer not in dropped), num_layers)


def allocation_family(fit_margins: Sequence[float], mean_budgets: Sequence[float], share: float,
                      available: int) -> list[AllocationPoint]:
    """The points for each mean budget, most conservative first (the order Learn-then-Test walks)."""
    points = []
    for mean_budget in sorted(set(float(b) for b in mean_budgets)):
        skips = skips_for(mean_budget, share, available)
        points.append(AllocationPoint(mean_budget, skips, fit_threshold(fit_margins, mean_budget, skips)))
    return points
