"""An operating point with a statistical guarantee: Learn-then-Test over a monotone family of routing points.

What is guaranteed. Routers expose a family of operating points (a threshold on each block's skip probability, the
knob p of App. C, ...), ordered from most conservative to most aggressive before any data are seen. On n calibration
prompts every point j gets per-prompt losses; its risk R_j is the expected loss on a new prompt from the same
distribution. `certify` returns a point lambda_hat such that

    P_calibration( R(lambda_hat) <= epsilon ) >= 1 - delta,

or the base model (no skips, risk 0) when no point can be certified. The probability is over the draw of the
calibration sample: the guarantee is marginal over that draw (one in 1/delta calibration samples may certify a point
whose risk exceeds epsilon), not conditional on the prompts one later routes, and it holds for the population the
calibration prompts were drawn from, nothing else.

Assumption. The calibration prompts are i.i.d. draws from the distribution of the prompts the point will be used on
(equivalently: calibration and future prompts exchangeable, the calibration set a uniformly random sample of a pool
much larger than n, so that drawing without replacement is as good as i.i.d.). A benchmark split is not a random sample of "prompts users send"; the guarantee is about the
split. The order of the points must not depend on the calibration losses.

Method: Learn-then-Test (Angelopoulos, Bates, Candès, Jordan, Lei 2021, "Learn then Test: Calibrating predictive
algorithms to achieve risk control", arXiv 2110.01052) with fixed-sequence testing. For j = 1, 2, ... test
H0_j: R_j > epsilon with a valid p-value p_j (P(p_j <= u) <= u under H0_j); reject while p_j <= delta and stop at the
first failure. Fixed-sequence testing controls the family-wise error rate at delta whatever the true risk curve is
(monotone or not), so every rejected point has risk <= epsilon simultaneously with probability >= 1 - delta and any
choice among them is covered; we take the rejected point with the most mean layers saved (ties: the later one), which
for a curve ordered by aggressiveness is the last rejected one.

Losses and p-values (each losses sequence is mapped to x in [0, 1] and H0: R > epsilon becomes H0: E[x] >= m):
- `disagreement`: loss 1 when the routed answer differs from the full model's, else 0; x = loss, m = epsilon.
  `binomial` (default): p = P(Binomial(n, epsilon) <= k), k = number of disagreements; exact for 0/1 losses.
- `accuracy_drop`: loss = base correct - routed correct in {-1, 0, 1} (any value in [-1, 1] is accepted, e.g. a score
  difference); the risk is the expected accuracy drop; x = (loss + 1) / 2, m = (epsilon + 1) / 2.
  `wsr` (default): the Waudby-Smith–Ramdas betting test (Waudby-Smith, Ramdas 2020, "Estimating means of bounded
  random variables by betting", arXiv 2010.09686; in the form Bates et al. 2021, "Distribution-free, risk-controlling
  prediction sets", use for risk control). With predictable plug-in quantities
      mu_t = (1/2 + sum_{i<=t} x_i) / (t + 1),   s2_t = (1/4 + sum_{i<=t} (x_i - mu_i)^2) / (t + 1),   s2_0 = 1/4,
      nu_t = min(1, sqrt(2 log(1/delta) / (n s2_{t-1}))),
  the capital of a gambler who bets that x falls BELOW m (evidence that the risk is small) is
      K_t = prod_{i<=t} (1 - nu_i (x_i - m)) = prod_{i<=t} (1 + nu_i (m - x_i)),
  a nonnegative supermartingale under H0: E[x] >= m (each factor has conditional mean 1 + nu_i (m - E[x]) <= 1 and
  is >= 1 - nu_i (1 - m) >= m > 0). Ville's inequality gives P(max_t K_t >= 1/delta) <= delta, so
  p = min(1, 1 / max_{t<=n} K_t) is valid. The bets adapt to the variance of the losses: with most losses 0 (the
  routed answer keeps the base one's correctness) the test needs far fewer prompts than Hoeffding's. Two safeguards
  that only raise p (so validity is kept): p = 1 when the sample mean is >= m (a lucky stretch never rejects a null
  the point estimate does not contradict), and the losses are put in a seeded random order (`order_seed`, the same
  permutation for every point) before betting, so a calibration file sorted by benchmark or difficulty cannot tilt the
  capital process (with order_seed = None the given order is used and must not depend on the losses).
  `hb`: the Hoeffding–Bentkus p-value of LTT (their Prop. 3 on x):
      p = min( exp(-n h(min(xbar, m), m)),  e * P(Binomial(n, m) <= ceil(n xbar)) ),
      h(a, b) = a log(a/b) + (1 - a) log((1 - a)/(1 - b)).
  It ignores the variance, so on accuracy drops (x near 1/2) it needs ~epsilon^-2 prompts; it is the textbook
  alternative, selectable by name.

`upper_bound` inverts the same test: the smallest epsilon' whose null is rejected at level delta, a (1 - delta) upper
confidence bound on one point's risk (for a single, fixed point; not a simultaneous bound over a selected one).
`min_samples` is the smallest n at which even a sample with zero loss on every prompt (disagreement 0; accuracy_drop 0,
"the routed model answers every prompt as well as the base") could be certified; `certify` refuses below it. A sample
in which routing fixes many base errors (accuracy_drop -1) could pass with fewer prompts; the refusal deliberately does
not rely on such net gains.

Everything here is a pure function of plain data (mctx/numpy style); numpy only, binomial tails in pure Python.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from drllm.core.settings import check_fields, from_block, setting

LOSSES = ("disagreement", "accuracy_drop")
P_VALUES = ("wsr", "hb", "binomial")
DEFAULT_P_VALUE = {"disagreement": "binomial", "accuracy_drop": "wsr"}
MAX_SAMPLES = 10**9       # min_samples searches up to this many prompts
MAX_WSR_SAMPLES = 10**7   # ... and up to this many for wsr, whose best case is an O(n) array (epsilon >~ 5e-7)
EPSILON_GRID = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)  # epsilon: null picks from these


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


@dataclass(frozen=True)
class CertifyConfig:
    """The target: risk <= epsilon with probability >= 1 - delta, for a loss and the p-value that tests it."""

    # null: the smallest value of EPSILON_GRID the calibration size supports (`supported_epsilon`), chosen before
    # any loss is seen (it depends on n only), so the guarantee is unchanged
    epsilon: float | None = setting(kind="number", low=0, high=1, low_open=True, high_open=True, nullable=True)
    delta: float = setting(kind="number", low=0, high=1, low_open=True, high_open=True)
    loss: str = setting("accuracy_drop", "str", choices=LOSSES)
    # None: binomial for disagreement, wsr for accuracy_drop
    p_value: str | None = setting(None, "str", choices=P_VALUES, nullable=True)
    # wsr only: seed of the random order the losses are bet on; None = the given order
    order_seed: int | None = setting(0, "int", nullable=True)

    def __post_init__(self) -> None:
        check_fields(self, "calibrate.certify")
        method = DEFAULT_P_VALUE[self.loss] if self.p_value is None else self.p_value
        if method == "binomial" and self.loss != "disagreement":
            raise ValueError(f"certify.p_value 'binomial' is exact only for 0/1 losses (loss 'disagreement'), "
                             f"not for loss {self.loss!r}; use 'wsr' or 'hb'")
        object.__setattr__(self, "p_value", method)

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> "CertifyConfig":
        block = dict(block or {})
        missing = sorted({"epsilon", "delta"} - set(block))
        if missing:
            raise ValueError(f"calibrate.certify: missing key(s) {missing}")
        return from_block(cls, block, "calibrate.certify")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# p-values on x in [0, 1], testing H0: E[x] >= m

def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), in pure Python: the pmf at k from log-gamma, then the shorter tail summed by the
    ratio recurrence until the terms vanish (O(sqrt(n)) terms in practice)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_pmf = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
               + k * math.log(p) + (n - k) * math.log1p(-p))
    odds = (1.0 - p) / p
    if k <= n * p:  # lower tail: sum pmf(k), pmf(k-1), ... (decreasing away from the mode)
        terms, term, j = [1.0], 1.0, k
        while j > 0:
            term *= j / (n - j + 1) * odds
            terms.append(term)
            if term < 1e-18 * terms[0]:
                break
            j -= 1
        return min(1.0, math.exp(log_pmf) * math.fsum(terms))
    # upper tail: 1 - sum pmf(k+1), pmf(k+2), ... (k > n p: decreasing away from the mode too)
    terms, term, j = [], 1.0, k
    while j < n:
        term *= (n - j) / (j + 1) / odds
        terms.append(term)
        if term < 1e-18 * terms[0]:
            break
        j += 1
    return max(0.0, 1.0 - math.exp(log_pmf) * math.fsum(terms))


def _h1(a: float, b: float) -> float:
    """Bernoulli KL divergence h(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))."""
    out = 0.0
    if a > 0.0:
        out += a * math.log(a / b) if b > 0.0 else math.inf
    if a < 1.0:
        out += (1.0 - a) * math.log((1.0 - a) / (1.0 - b)) if b < 1.0 else math.inf
    return out


def _hb_p(n: int, total: float, m: float) -> float:
    """Hoeffding–Bentkus p-value for H0: E[x] >= m from n and sum(x)."""
    if m <= 0.0:
        return 1.0
    xbar = min(1.0, max(0.0, total / n))
    hoeffding = math.exp(-n * _h1(min(xbar, m), m)) if m < 1.0 else (1.0 if xbar >= 1.0 else 0.0)
    bentkus = math.e * binom_cdf(math.ceil(total), n, m)
    return float(min(1.0, hoeffding, bentkus))


def _wsr_p(x: np.ndarray, m: float, delta: float) -> float:
    """Waudby-Smith–Ramdas betting p-value for H0: E[x] >= m (formula in the module docstring)."""
    n = len(x)
    if m <= 0.0 or float(np.mean(x)) >= m:
        return 1.0
    t = np.arange(1, n + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(x)) / (t + 1.0)
    s2 = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1.0)
    s2_prev = np.concatenate(([0.25], s2[:-1]))
    nu = np.minimum(1.0, np.sqrt(2.0 * math.log(1.0 / delta) / (n * s2_prev)))
    with np.errstate(divide="ignore"):
        log_capital = np.cumsum(np.log1p(nu * (m - x)))
    best = float(np.max(log_capital))
    return 1.0 if best <= 0.0 else float(min(1.0, math.exp(-best)))


def _unit(losses: Sequence[float], loss: str) -> np.ndarray:
    """Validate one point's losses and map them to x in [0, 1]."""
    values = np.asarray(losses, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("certify: a point has no losses (n = 0)")
    if not np.all(np.isfinite(values)):
        raise ValueError("certify: losses must be finite numbers")
    low = 0.0 if loss == "disagreement" else -1.0
    if values.min() < low or values.max() > 1.0:
        raise ValueError(f"certify: {loss} losses must lie in [{low:g}, 1], got values in "
                         f"[{values.min():g}, {values.max():g}]")
    return values if loss == "disagreement" else (values + 1.0) / 2.0


def _null_mean(epsilon: float, loss: str) -> float:
    return epsilon if loss == "disagreement" else (epsilon + 1.0) / 2.0


def _order(x: np.ndarray, seed: int | None) -> np.ndarray:
    return x if seed is None else x[np.random.default_rng(seed).permutation(len(x))]


def _p_unit(x: np.ndarray, m: float, config: CertifyConfig) -> float:
    """p-value for H0: E[x] >= m; x already mapped and (for wsr) ordered."""
    if config.p_value == "binomial":
        k = int(round(float(x.sum())))
        return binom_cdf(k, len(x), m)
    if config.p_value == "hb":
        return _hb_p(len(x), math.fsum(x.tolist()), m)
    return _wsr_p(x, m, config.delta)


def _prepare(losses: Sequence[float], config: CertifyConfig) -> np.ndarray:
    x = _unit(losses, config.loss)
    if config.p_value == "binomial" and not np.all((x == 0.0) | (x == 1.0)):
        raise ValueError("certify: the binomial p-value needs 0/1 disagreement losses; use 'wsr' or 'hb' for "
                         "fractional ones")
    return _order(x, config.order_seed) if config.p_value == "wsr" else x


def p_value(losses: Sequence[float], config: CertifyConfig) -> float:
    """Valid p-value for H0: risk > config.epsilon from one point's per-prompt losses (P(p <= u) <= u under H0)."""
    return _p_unit(_prepare(losses, config), _null_mean(config.epsilon, config.loss), config)


def upper_bound(losses: Sequence[float], config: CertifyConfig, tol: float = 1e-7) -> float:
    """(1 - delta) upper confidence bound on one fixed point's risk: the smallest epsilon' whose null H0: risk >
    epsilon' the same test rejects at config.delta (bisection; p decreases in epsilon'). Never below the empirical
    risk; 1.0 when even risk 1 cannot be excluded. For binomial it is the Clopper-Pearson upper bound."""
    x = _prepare(losses, config)
    low_risk = 0.0 if config.loss == "disagreement" else -1.0

    def rejected(risk: float) -> bool:
        return _p_unit(x, _null_mean(risk, config.loss), config) <= config.delta

    if not rejected(1.0):
        return 1.0
    lo, hi = low_risk, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if rejected(mid) else (mid, hi)
    empirical = float(np.mean(x)) if config.loss == "disagreement" else 2.0 * float(np.mean(x)) - 1.0
    return float(max(hi, empirical))


# ----------------------------------------------------------------------------------------------------------------
# sample size

def _best_case_p(n: int, config: CertifyConfig) -> float:
    """p-value of n prompts with zero loss each (disagreement 0; accuracy_drop 0, i.e. x = 1/2)."""
    m = _null_mean(config.epsilon, config.loss)
    c = 0.0 if config.loss == "disagreement" else 0.5
    if config.p_value == "binomial":
        return math.exp(n * math.log1p(-config.epsilon))
    if config.p_value == "hb":
        return _hb_p(n, c * n, m)
    return _wsr_p(np.full(n, c), m, config.delta)


def _sample_cap(config: CertifyConfig) -> int:
    return min(MAX_SAMPLES, MAX_WSR_SAMPLES) if config.p_value == "wsr" else MAX_SAMPLES


def supported_epsilon(config: CertifyConfig, n: int) -> CertifyConfig:
    """`config` itself when it names epsilon; otherwise with the smallest epsilon of EPSILON_GRID that n prompts can
    certify (min_samples <= n), or the grid's largest when none can (certify then refuses, saying so)."""
    if config.epsilon is not None:
        return config
    for epsilon in EPSILON_GRID:
        candidate = dataclasses.replace(config, epsilon=epsilon)
        if min_samples(candidate) <= n:
            return candidate
    return dataclasses.replace(config, epsilon=EPSILON_GRID[-1])


@functools.lru_cache(maxsize=256)
def min_samples(config: CertifyConfig) -> int:
    """Smallest n at which n prompts with zero loss each could be certified (p <= delta); below it `certify` refuses.

    disagreement + binomial: the smallest n with (1 - epsilon)^n <= delta. Otherwise the chosen p-value of the
    all-zero sample, searched by doubling and bisection within each parity class (the Bentkus term's ceil(n/2) makes
    odd and even n two monotone sequences), and for wsr checked downward over a short window. Raises ValueError
    past MAX_SAMPLES prompts (MAX_WSR_SAMPLES for wsr). Cached per config (hb at epsilon = 0.01 evaluates ~100 binomial tails of n ~ 3e4)."""
    if config.p_value == "binomial":
        n = max(1, math.ceil(math.log(config.delta) / math.log1p(-config.epsilon)))
        while n > 1 and _best_case_p(n - 1, config) <= config.delta:   # guard the float ceil
            n -= 1
        while _best_case_p(n, config) > config.delta:
            n += 1
        return n

    def passes(n: int) -> bool:
        return _best_case_p(n, config) <= config.delta

    cap = _sample_cap(config)

    found = []
    for parity in (0, 1):
        def at(i: int) -> int:   # the i-th n of this parity class (i >= 1): 2, 4, 6, ... or 1, 3, 5, ...
            return 2 * i - parity
        hi = 1
        while not passes(at(hi)):
            hi *= 2
            if at(hi) > 2 * cap:
                break
        else:
            lo = hi // 2   # passes(at(lo)) is False (or lo = 0)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if passes(at(mid)) else (mid, hi)
            found.append(at(hi))
    if not found or min(found) > cap:
        raise ValueError(f"min_samples: epsilon = {config.epsilon:g} at delta = {config.delta:g} with p-value "
                         f"{config.p_value!r} needs more than {cap:,} calibration prompts")
    n = min(found)
    if config.p_value == "wsr":   # its bets shrink with n (nu ~ 1/sqrt(n)): not proven monotone, so look below
        for smaller in range(n - 1, max(0, n - 64), -1):
            if passes(smaller):
                n = smaller
    return n


# ----------------------------------------------------------------------------------------------------------------
# certification

@dataclass(frozen=True)
class PointResult:
    """One candidate point as tested: its empirical risk, p-value, and whether its null was tested and rejected."""

    parameter: float
    risk: float
    p_value: float
    tested: bool     # False: after the first failure (fixed sequence) or refused; p_value is shown, not used
    rejected: bool   # H0: risk > epsilon rejected at delta (risk <= epsilon certified)
    mean_layers_saved: float


@dataclass(frozen=True)
class Certificate:
    """The outcome of `certify`; parameter None = the fallback, the base model (no skips, risk 0)."""

    certified: bool
    parameter: float | None
    epsilon: float
    delta: float
    loss: str
    method: str                    # the p-value: wsr, hb or binomial
    n: int
    min_samples: int | None        # None: more than MAX_SAMPLES
    empirical_risk: float          # at the chosen point (0.0 for the fallback)
    p_value: float | None          # at the chosen point (None for the fallback)
    mean_layers_saved: float       # at the chosen point (0.0 for the fallback)
    points: tuple[PointResult, ...]
    reason: str

    def to_dict(self) -> dict:
        out = asdict(self)
        out["points"] = [asdict(point) for point in self.points]
        return out


def _risk(losses: np.ndarray) -> float:
    return float(np.mean(losses))


def certify(points: Sequence[tuple[float, Sequence[float], float]], config: CertifyConfig) -> Certificate:
    """Learn-then-Test with fixed-sequence testing over `points` = [(parameter, per-prompt losses, mean layers
    saved)], ordered from most conservative to most aggressive, all on the same n calibration prompts (same order).

    Refuses (fallback) when n < min_samples(config); otherwise walks the sequence while p <= delta, stops at the first
    failure, and returns the rejected point with the most mean layers saved (ties: the later one), or the fallback
    when the first point already fails."""
    if not points:
        raise ValueError("certify: no candidate points")
    parsed = []
    for index, point in enumerate(points):
        if len(point) != 3:
            raise ValueError(f"certify: point {index} must be (parameter, losses, mean_layers_saved), got {point!r}")
        parameter, losses, saved = point
        if not _is_number(parameter) or not math.isfinite(float(parameter)):
            raise ValueError(f"certify: point {index} has a non-numeric parameter {parameter!r}")
        if not _is_number(saved) or not math.isfinite(float(saved)):
            raise ValueError(f"certify: point {index} (parameter {parameter!r}) has mean_layers_saved {saved!r}")
        values = np.asarray(losses, dtype=np.float64).reshape(-1)
        parsed.append((float(parameter), values, float(saved)))
    sizes = sorted({len(values) for _, values, _ in parsed})
    if len(sizes) > 1:
        detail = ", ".join(f"{parameter:g}: {len(values)}" for parameter, values, _ in parsed)
        raise ValueError(f"certify: every point must be scored on the same calibration prompts, got different n "
                         f"({detail})")
    n = sizes[0]
    if n == 0:
        raise ValueError("certify: the points have no losses (n = 0)")
    config = supported_epsilon(config, n)
    table = [(parameter, values, saved, p_value(values, config)) for parameter, values, saved in parsed]

    try:
        needed: int | None = min_samples(config)
    except ValueError:
        needed = None
    common = dict(epsilon=config.epsilon, delta=config.delta, loss=config.loss, method=config.p_value, n=n,
                  min_samples=needed)

    def results(rejected_upto: int, tested_upto: int) -> tuple[PointResult, ...]:
        return tuple(PointResult(parameter, _risk(values), p, j < tested_upto, j < rejected_upto, saved)
                     for j, (parameter, values, saved, p) in enumerate(table))

    def fallback(reason: str, rows: tuple[PointResult, ...]) -> Certificate:
        return Certificate(False, None, empirical_risk=0.0, p_value=None, mean_layers_saved=0.0, points=rows,
                           reason=reason, **common)

    if needed is None or n < needed:
        need = f">= {needed}" if needed is not None else f"> {_sample_cap(config):,}"
        return fallback(f"refused: n = {n} calibration prompts cannot certify epsilon = {config.epsilon:g} at "
                        f"delta = {config.delta:g} (needs {need})", results(0, 0))

    rejected = 0
    while rejected < len(table) and table[rejected][3] <= config.delta:
        rejected += 1
    tested = min(len(table), rejected + 1)
    rows = results(rejected, tested)
    if rejected == 0:
        first = table[0]
        return fallback(f"no point passed: the most conservative point (parameter {first[0]:g}) has p = "
                        f"{first[3]:.3g} > delta = {config.delta:g}; the base model is kept", rows)
    chosen = max(range(rejected), key=lambda j: (table[j][2], j))
    parameter, values, saved, p = table[chosen]
    if rejected == len(table):
        stop = f"all {len(table)} points passed"
    else:
        stop = (f"{rejected} of {len(table)} points passed; stopped at parameter {table[rejected][0]:g} "
                f"(p = {table[rejected][3]:.3g} > delta)")
    reason = (f"certified parameter {parameter:g}: risk <= {config.epsilon:g} with probability >= "
              f"{1 - config.delta:g} over the calibration draw (empirical {_risk(values):.4g}, p = {p:.3g}, "
              f"{saved:.3g} layers saved); {stop}")
    return Certificate(True, parameter, empirical_risk=_risk(values), p_value=p, mean_layers_saved=saved,
                       points=rows, reason=reason, **common)
