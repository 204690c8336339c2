"""Certified operating points (Learn-then-Test): p-values, sample sizes, bounds and the fixed sequence, on constructed
loss curves; validity of every p-value by simulation at the null boundary."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from drllm.calibration.certify import (Certificate, CertifyConfig, binom_cdf, certify, min_samples, p_value,
                                   upper_bound)


def disagreements(n, k):
    """n 0/1 losses with exactly k ones, spread evenly (no lucky prefix)."""
    losses = np.zeros(n)
    losses[np.linspace(0, n - 1, k).round().astype(int)] = 1.0 if k else 0.0
    assert losses.sum() == k
    return losses.tolist()


def drops(n, worse, better, seed=0):
    """n accuracy-drop losses: `worse` prompts +1 (base right, routed wrong), `better` -1, the rest 0; shuffled."""
    losses = np.array([1.0] * worse + [-1.0] * better + [0.0] * (n - worse - better))
    return np.random.default_rng(seed).permutation(losses).tolist()


# ---------------------------------------------------------------------------------------------------- config

def test_config_defaults_round_trip_and_validation_names_the_field():
    assert CertifyConfig(0.05, 0.1).p_value == "wsr"
    assert CertifyConfig(0.05, 0.1, "disagreement").p_value == "binomial"
    config = CertifyConfig.from_dict({"epsilon": 0.02, "delta": 0.05, "loss": "accuracy_drop", "p_value": "hb"})
    assert CertifyConfig.from_dict(config.to_dict()) == config
    assert config.to_dict() == {"epsilon": 0.02, "delta": 0.05, "loss": "accuracy_drop", "p_value": "hb",
                                "order_seed": 0}
    for block, field in [({"epsilon": 0.0, "delta": 0.1}, "certify.epsilon"),
                         ({"epsilon": 1.0, "delta": 0.1}, "certify.epsilon"),
                         ({"epsilon": True, "delta": 0.1}, "certify.epsilon"),
                         ({"epsilon": 0.1, "delta": 1.5}, "certify.delta"),
                         ({"epsilon": 0.1, "delta": 0.1, "loss": "f1"}, "certify.loss"),
                         ({"epsilon": 0.1, "delta": 0.1, "p_value": "bonferroni"}, "certify.p_value"),
                         ({"epsilon": 0.1, "delta": 0.1, "p_value": "binomial"}, "certify.p_value 'binomial'"),
                         ({"epsilon": 0.1, "delta": 0.1, "order_seed": 1.5}, "certify.order_seed"),
                         ({"epsilon": 0.1, "delta": 0.1, "alpha": 0.1}, "unknown key(s) ['alpha']"),
                         ({"epsilon": 0.1}, "missing key(s) ['delta']")]:
        with pytest.raises(ValueError, match=None) as error:
            CertifyConfig.from_dict(block)
        assert field in str(error.value), (block, str(error.value))


# ---------------------------------------------------------------------------------------------------- p-values

def test_binomial_p_value_equals_the_hand_computed_tail():
    # n = 10, k = 1 disagreement, epsilon = 0.2: P(Bin(10, 0.2) <= 1) = 0.8^10 + 10 * 0.2 * 0.8^9
    config = CertifyConfig(0.2, 0.1, "disagreement")
    assert p_value([0] * 9 + [1], config) == pytest.approx(0.8 ** 10 + 10 * 0.2 * 0.8 ** 9, rel=1e-12)
    assert p_value([0] * 9 + [1], config) == pytest.approx(0.3758096384, abs=1e-10)
    assert p_value([0] * 10, config) == pytest.approx(0.8 ** 10, rel=1e-12)
    with pytest.raises(ValueError, match="0/1 disagreement losses"):
        p_value([0.5] * 10, config)
    with pytest.raises(ValueError, match=r"disagreement losses must lie in \[0, 1\]"):
        p_value([-1, 0, 1], config)


def test_binom_cdf_matches_scipy_over_both_tails_and_large_n():
    from scipy import stats
    for n, k, p in [(200, 3, 0.01), (1000, 500, 0.5), (50, 40, 0.3), (100000, 900, 0.01), (10, 0, 0.2),
                    (30, 29, 0.9), (7, 3, 0.999), (10**7, 49_500, 0.005), (64, 64, 0.3), (64, -1, 0.3)]:
        # log-gamma differences of ~1e8 limit the relative accuracy at n = 1e7 to ~1e-8
        assert binom_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-7, abs=1e-15), (n, k, p)


@pytest.mark.parametrize("loss, method, probs", [
    ("accuracy_drop", "wsr", {1: 0.15, -1: 0.10}),   # risk 0.05 = epsilon, mostly zeros
    ("accuracy_drop", "wsr", {1: 0.525, -1: 0.475}),  # risk 0.05 = epsilon, maximal variance
    ("accuracy_drop", "hb", {1: 0.15, -1: 0.10}),
    ("disagreement", "binomial", {1: 0.05}),
    ("disagreement", "wsr", {1: 0.05}),
])
def test_p_values_are_valid_at_the_null_boundary(loss, method, probs):
    """2,000 datasets of 200 prompts whose true risk is exactly epsilon: P(p <= u) <= u + 3 standard errors."""
    epsilon, runs, n = 0.05, 2000, 200
    rng = np.random.default_rng(12345)
    values = np.array(list(probs) + [0])
    weights = np.array(list(probs.values()) + [1 - sum(probs.values())])
    assert float(values @ weights) == pytest.approx(epsilon)
    ps = {delta: [] for delta in (0.05, 0.1, 0.2)}
    for _ in range(runs):
        losses = rng.choice(values, size=n, p=weights)
        for delta in ps:   # WSR's bets depend on delta: the test at level delta is the one that must be valid
            ps[delta].append(p_value(losses, CertifyConfig(epsilon, delta, loss, method)))
    for delta, found in ps.items():
        rate = float(np.mean(np.asarray(found) <= delta))
        assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / runs), (delta, rate)


@pytest.mark.parametrize("loss, method", [("accuracy_drop", "wsr"), ("disagreement", "binomial"),
                                          ("disagreement", "wsr")])
def test_p_values_have_power_when_the_risk_is_well_below_epsilon(loss, method):
    rng = np.random.default_rng(7)
    config = CertifyConfig(0.1, 0.1, loss, method)
    values, weights = ([1, -1, 0], [0.02, 0.02, 0.96]) if loss == "accuracy_drop" else ([1, 0], [0.01, 0.99])
    rejected = [p_value(rng.choice(values, size=400, p=weights), config) <= 0.1 for _ in range(200)]
    assert np.mean(rejected) > 0.95


def test_hb_ignores_variance_so_wsr_is_far_stricter_on_accuracy_drops():
    losses = drops(1000, 60, 60)
    wsr, hb = CertifyConfig(0.05, 0.1), CertifyConfig(0.05, 0.1, p_value="hb")
    assert p_value(losses, wsr) < 0.001 < 0.1 < p_value(losses, hb)


# ---------------------------------------------------------------------------------------------------- sample size

def test_min_samples_disagreement_is_the_smallest_n_with_zero_loss_tail_below_delta():
    config = CertifyConfig(0.01, 0.1, "disagreement")
    n = min_samples(config)
    assert n == math.ceil(math.log(0.1) / math.log(0.99)) == 230
    assert 0.99 ** n <= 0.1 < 0.99 ** (n - 1)
    assert min_samples(CertifyConfig(0.01, 0.1, "disagreement", "hb")) == 230   # Hoeffding = (1 - eps)^n here


@pytest.mark.parametrize("loss, method", [("accuracy_drop", "wsr"), ("accuracy_drop", "hb"),
                                          ("disagreement", "wsr")])
def test_min_samples_is_the_first_n_at_which_zero_losses_pass(loss, method):
    config = CertifyConfig(0.05, 0.1, loss, method)
    n = min_samples(config)
    zero = 0.0
    assert p_value([zero] * n, config) <= 0.1
    for smaller in range(1, n):   # brute force: no smaller sample passes
        assert p_value([zero] * smaller, config) > 0.1, smaller
    assert min_samples(CertifyConfig(0.01, 0.1, loss, method)) > n   # a tighter epsilon needs more prompts


def test_min_samples_refuses_absurd_epsilon(monkeypatch):
    import drllm.calibration.certify as module

    monkeypatch.setattr(module, "MAX_SAMPLES", 10**5)
    config = CertifyConfig(1e-3, 0.1, p_value="hb", order_seed=99)   # hb needs ~3.2 million prompts here
    with pytest.raises(ValueError, match="needs more than 100,000 calibration prompts"):
        min_samples(config)
    cert = certify([(0.9, [0] * 500, 1.0)], config)
    assert not cert.certified and cert.min_samples is None and cert.reason.endswith("(needs > 100,000)")
    monkeypatch.setattr(module, "MAX_WSR_SAMPLES", 10**4)   # wsr's own cap (its best case is an O(n) array)
    with pytest.raises(ValueError, match="needs more than 10,000 calibration prompts"):
        min_samples(CertifyConfig(1e-4, 0.1, order_seed=99))   # needs ~47,000


# ---------------------------------------------------------------------------------------------------- certify

def test_rising_risk_curve_certifies_the_last_point_under_epsilon():
    n = 2000
    rates = [0.0, 0.005, 0.01, 0.03, 0.08, 0.2]   # disagreement rises with aggressiveness
    points = [(tau, disagreements(n, round(rate * n)), saved)
              for tau, rate, saved in zip([0.99, 0.9, 0.8, 0.7, 0.6, 0.5], rates, [0, 0.5, 1, 2, 3, 5])]
    cert = certify(points, CertifyConfig(0.05, 0.1, "disagreement"))
    assert cert.certified and cert.parameter == 0.7
    assert cert.empirical_risk == pytest.approx(0.03) and cert.mean_layers_saved == 2
    assert cert.p_value == pytest.approx(binom_cdf(60, n, 0.05))
    assert [row.rejected for row in cert.points] == [True, True, True, True, False, False]
    assert [row.tested for row in cert.points] == [True, True, True, True, True, False]
    assert cert.reason.startswith("certified parameter 0.7: risk <= 0.05 with probability >= 0.9")
    assert "4 of 6 points passed; stopped at parameter 0.6" in cert.reason
    # the certificate agrees with the bound: the chosen point's upper bound is below epsilon, the next one's not
    assert upper_bound(points[3][1], CertifyConfig(0.05, 0.1, "disagreement")) <= 0.05
    assert upper_bound(points[4][1], CertifyConfig(0.05, 0.1, "disagreement")) > 0.05


def test_rising_accuracy_drop_curve_with_wsr_and_hb():
    n = 1000
    curve = [(0.5, drops(n, 0, 0), 0.0), (0.0, drops(n, 30, 30), 1.0), (-0.2, drops(n, 40, 20), 2.0),
             (-0.4, drops(n, 90, 20), 4.0)]   # risk 0, 0, 0.02, 0.07
    cert = certify(curve, CertifyConfig(0.05, 0.1))
    assert cert.certified and cert.parameter == -0.2 and cert.empirical_risk == pytest.approx(0.02)
    assert [row.rejected for row in cert.points] == [True, True, True, False]
    # Hoeffding-Bentkus cannot certify 5 points at n = 1000 even with no flips at all: it refuses
    hb = certify(curve, CertifyConfig(0.05, 0.1, p_value="hb"))
    assert not hb.certified and hb.parameter is None
    assert hb.reason.startswith("refused: n = 1000 calibration prompts cannot certify epsilon = 0.05")


def test_zero_losses_with_too_few_prompts_refuse_with_the_sample_size_needed():
    points = [(0.9, [0] * 120, 0.5), (0.8, [0] * 120, 1.5)]
    cert = certify(points, CertifyConfig(0.01, 0.1, "disagreement"))
    assert not cert.certified and cert.parameter is None and cert.min_samples == 230
    assert cert.reason == ("refused: n = 120 calibration prompts cannot certify epsilon = 0.01 at delta = 0.1 "
                           "(needs >= 230)")
    assert not any(row.tested or row.rejected for row in cert.points)
    assert cert.empirical_risk == 0.0 and cert.p_value is None and cert.mean_layers_saved == 0.0
    # 230 prompts without a single disagreement are enough
    enough = certify([(0.9, [0] * 230, 0.5), (0.8, [0] * 230, 1.5)], CertifyConfig(0.01, 0.1, "disagreement"))
    assert enough.certified and enough.parameter == 0.8 and "all 2 points passed" in enough.reason


def test_non_monotone_curve_stops_at_the_first_failure():
    n = 1000
    points = [(0.9, disagreements(n, 0), 1.0), (0.8, disagreements(n, 100), 2.0),   # 10% > epsilon: fails
              (0.7, disagreements(n, 0), 3.0), (0.6, disagreements(n, 0), 4.0)]     # would pass, never tested
    cert = certify(points, CertifyConfig(0.05, 0.1, "disagreement"))
    assert cert.certified and cert.parameter == 0.9
    assert [row.tested for row in cert.points] == [True, True, False, False]
    assert [row.rejected for row in cert.points] == [True, False, False, False]
    assert cert.points[2].p_value <= 0.1   # shown but not used: testing it would break the family-wise guarantee
    assert "1 of 4 points passed; stopped at parameter 0.8" in cert.reason


def test_first_point_failing_falls_back_to_the_base_model():
    points = [(0.9, disagreements(500, 40), 1.0), (0.8, disagreements(500, 0), 2.0)]
    cert = certify(points, CertifyConfig(0.05, 0.1, "disagreement"))
    assert not cert.certified and cert.parameter is None and cert.mean_layers_saved == 0.0
    p = binom_cdf(40, 500, 0.05)
    assert cert.reason == (f"no point passed: the most conservative point (parameter 0.9) has p = {p:.3g} > "
                           f"delta = 0.1; the base model is kept")


def test_the_rejected_point_saving_most_layers_wins():
    n = 1000
    points = [(0.9, disagreements(n, 0), 1.0), (0.8, disagreements(n, 5), 3.0), (0.7, disagreements(n, 10), 2.0),
              (0.6, disagreements(n, 200), 6.0)]
    cert = certify(points, CertifyConfig(0.05, 0.1, "disagreement"))
    assert cert.parameter == 0.8 and cert.mean_layers_saved == 3.0   # 0.7 passed too but saves less


def test_points_must_share_n_and_be_well_formed():
    config = CertifyConfig(0.05, 0.1, "disagreement")
    with pytest.raises(ValueError, match=r"same calibration prompts, got different n \(0.9: 300, 0.8: 299\)"):
        certify([(0.9, [0] * 300, 1.0), (0.8, [0] * 299, 2.0)], config)
    with pytest.raises(ValueError, match="no candidate points"):
        certify([], config)
    with pytest.raises(ValueError, match="mean_layers_saved"):
        certify([(0.9, [0] * 300, float("nan"))], config)
    with pytest.raises(ValueError, match=r"accuracy_drop losses must lie in \[-1, 1\]"):
        certify([(0.9, [2] * 300, 1.0)], CertifyConfig(0.05, 0.1))


def test_certificate_is_json_safe():
    cert = certify([(0.9, disagreements(500, 2), 1.0), (0.8, disagreements(500, 60), 2.0)],
                   CertifyConfig(0.05, 0.1, "disagreement"))
    record = json.loads(json.dumps(cert.to_dict(), allow_nan=False))
    assert record["certified"] is True and record["parameter"] == 0.9 and record["method"] == "binomial"
    assert record["n"] == 500 and len(record["points"]) == 2 and record["points"][1]["rejected"] is False
    assert isinstance(cert, Certificate)


# ---------------------------------------------------------------------------------------------------- bounds

def test_binomial_upper_bound_is_clopper_pearson():
    from scipy import stats
    config = CertifyConfig(0.05, 0.1, "disagreement")
    for n, k in [(100, 0), (100, 7), (1000, 30), (50, 50)]:
        expected = 1.0 if k == n else stats.beta.ppf(0.9, k + 1, n - k)
        assert upper_bound(disagreements(n, k), config) == pytest.approx(expected, abs=1e-6), (n, k)


@pytest.mark.parametrize("config, make", [
    (CertifyConfig(0.05, 0.1, "disagreement"), lambda n: disagreements(n, n // 50)),
    (CertifyConfig(0.05, 0.1, "disagreement", "wsr"), lambda n: disagreements(n, n // 50)),
    (CertifyConfig(0.05, 0.1), lambda n: drops(n, 3 * n // 50, 2 * n // 50)),
    (CertifyConfig(0.05, 0.1, p_value="hb"), lambda n: drops(n, 3 * n // 50, 2 * n // 50)),
])
def test_upper_bound_covers_the_empirical_risk_and_shrinks_with_n(config, make):
    """WSR's bound depends on the order the losses are bet on (a lucky early stretch can reject): its median over
    order seeds shrinks with n; the binomial and HB bounds are order-free and shrink outright."""
    seeds = range(7) if config.p_value == "wsr" else [0]
    bounds = []
    for n in (250, 1000, 4000):
        losses = make(n)
        found = []
        for seed in seeds:
            seeded = CertifyConfig(config.epsilon, config.delta, config.loss, config.p_value, order_seed=seed)
            bound = upper_bound(losses, seeded)
            assert bound >= float(np.mean(losses)) - 1e-12   # empirical risk 0.02 for both losses
            # consistent with the test: epsilon' just above the bound is rejected
            above = CertifyConfig(bound + 1e-6, config.delta, config.loss, config.p_value, order_seed=seed)
            assert p_value(losses, above) <= config.delta
            found.append(bound)
        bounds.append(float(np.median(found)))
    assert bounds[0] > bounds[1] > bounds[2]


def test_a_null_epsilon_is_the_smallest_the_sample_size_supports():
    from drllm.calibration.certify import EPSILON_GRID, supported_epsilon

    auto = CertifyConfig(epsilon=None, delta=0.1)
    for n in (74, 300, 470, 5000):
        chosen = supported_epsilon(auto, n).epsilon
        assert min_samples(CertifyConfig(epsilon=chosen, delta=0.1)) <= n
        smaller = [e for e in EPSILON_GRID if e < chosen]
        assert all(min_samples(CertifyConfig(epsilon=e, delta=0.1)) > n for e in smaller)
    assert supported_epsilon(auto, 74).epsilon == 0.075 and supported_epsilon(auto, 470).epsilon == 0.01
    # certify resolves it before testing: zero losses on 100 prompts certify at 5 points, not at the 1 point
    # 100 prompts cannot support
    certificate = certify([(0.9, [0.0] * 100, 1.0)], auto)
    assert certificate.certified and certificate.epsilon == 0.05
    assert supported_epsilon(CertifyConfig(epsilon=0.01, delta=0.1), 5).epsilon == 0.01  # a named one stays
