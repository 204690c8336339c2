"""Confidence intervals for the evaluation stage (pure functions, no torch): `wilson_interval` (binomial
proportion), `bootstrap_interval` (percentile bootstrap of the mean), `paired_bootstrap_delta` (the same on
per-example differences of two methods on the same examples). The per-example answer metrics (SQuAD F1/EM, GSM8K
strict match) grade answers, so they live with the other graders in drllm.formats.grading.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001):
    (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). (nan, nan) when n == 0."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes!r}")
    if n == 0:
        return math.nan, math.nan
    p, z2 = successes / n, z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def _values(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite numbers (no nan/inf)")
    return array


def _check_bootstrap(resamples: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def bootstrap_interval(values: Sequence[float], seed: int, resamples: int = 1000,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani 1993, ch. 13): `resamples` resamples
    of len(values) drawn with replacement by `numpy.random.default_rng(seed)`, then the (1-level)/2 and
    (1+level)/2 percentiles of their means. Same seed, same interval. (nan, nan) for no values."""
    _check_bootstrap(resamples, level)
    array = _values(values, "values")
    if array.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // array.size)  # resample in chunks: memory stays bounded on full test sets
    means = np.concatenate([array[rng.integers(0, array.size, size=(min(chunk, resamples - start), array.size))]
                            .mean(axis=1) for start in range(0, resamples, chunk)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap_delta(a: Sequence[float], b: Sequence[float], seed: int, resamples: int = 1000,
                           level: float = 0.95) -> tuple[float, float, float]:
    """(mean of a - b, low, high) for per-example scores of two methods on the same examples: the paired
    bootstrap (Koehn 2004) resamples examples, keeping each example's pair together, i.e. the percentile
    `bootstrap_interval` of the differences. (nan, nan, nan) for no examples."""
    first, second = _values(a, "a"), _values(b, "b")
    if first.shape != second.shape:
        raise ValueError(f"paired scores need equal lengths, got {first.size} and {second.size}")
    delta = first - second
    low, high = bootstrap_interval(delta, seed, resamples=resamples, level=level)
    return (float(delta.mean()) if delta.size else math.nan), low, high
