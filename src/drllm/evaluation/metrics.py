"""Per-example metrics and confidence intervals for the evaluation stage (pure functions, no torch).

* SQuAD answer metrics -- `normalize_answer`, `exact_match`, `token_f1`, `max_over_golds`: the official
  SQuAD v2.0 evaluation script (which adds empty-answer handling to v1.1's definitions).
* GSM8K -- `gsm8k_strict`, `gsm8k_equal`: lm-eval-harness's gsm8k task, "strict-match" filter and its
  exact_match settings.
* Intervals -- `wilson_interval` (binomial proportion), `bootstrap_interval` (percentile bootstrap of the mean),
  `paired_bootstrap_delta` (the same on per-example differences of two methods on the same examples).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Callable, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------------
# SQuAD
# --------------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's official normalisation: lowercase, drop ASCII punctuation, drop the articles a/an/the,
    collapse whitespace (evaluate-v2.0.py `normalize_answer`, same steps in the same order)."""
    text = "".join(ch for ch in (text or "").lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0 (SQuAD v2.0 `compute_exact`)."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised tokens' bag overlap (SQuAD v2.0 `compute_f1`).

    When either side normalises to no tokens, the F1 is 1.0 if both do, else 0.0 (v2's rule for
    unanswerable questions: an empty prediction is the correct abstention).
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """The best `metric(prediction, gold)` over the gold answers (SQuAD scores against every annotator).

    No gold answers means an unanswerable question (SQuAD v2): scored against the single gold "" as the
    official script does, so only an empty prediction (an abstention) scores 1.
    """
    golds = [g for g in golds if normalize_answer(g)] or [""]  # v2 drops golds that normalise to nothing
    return max(metric(prediction, gold) for gold in golds)


# --------------------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------------------

_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
# lm-eval gsm8k exact_match `regexes_to_ignore`, applied in this order to prediction and reference alike
_GSM8K_IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def gsm8k_normalize(text: str) -> str:
    """An answer as lm-eval's gsm8k exact_match compares it: commas, `$`, anything up to a "#### " and one
    trailing "." removed (its `regexes_to_ignore`), lowercased; surrounding whitespace stripped too."""
    text = text.strip()
    for pattern in _GSM8K_IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def gsm8k_strict(text: str | None) -> str | None:
    """The normalised number after the first "#### " in `text` (lm-eval gsm8k "strict-match": regex
    ``#### (\\-?[0-9\\.\\,]+)``, first match); None when there is none (lm-eval's "[invalid]")."""
    match = _GSM8K_STRICT.search(text or "")
    return None if match is None else gsm8k_normalize(match.group(1))


def gsm8k_equal(prediction: str | None, gold: str | None) -> bool:
    """Whether two GSM8K answers are equal after `gsm8k_normalize` ("1,000" == "1000." == "$1000").
    None or an answer that normalises to nothing is never equal."""
    if prediction is None or gold is None:
        return False
    pred, ref = gsm8k_normalize(prediction), gsm8k_normalize(gold)
    return bool(ref) and pred == ref


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
