"""Every bench/ script imports and parses its arguments (`make bench` runs them; a moved module must fail here), and
the scripts behind RESULTS.md's figures compute known answers on small constructed inputs."""
from __future__ import annotations

import importlib.util
import math
import re
import runpy
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO

SCRIPTS = sorted((REPO / "bench").glob("*.py"))


def test_bench_has_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.name for path in SCRIPTS])
def test_bench_script_help_runs(script, monkeypatch, capsys):
    """In process (torch is imported once for all): `--help` runs every import, then argparse exits 0."""
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code in (0, None) and "usage:" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------
# The computations behind RESULTS.md's figures, on small inputs whose answers are known by hand
# --------------------------------------------------------------------------------------------------------

def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_safety_by_margin_report_on_known_prompts():
    """Ten prompts with margins 1..10, prompt i safe to skip at its first i of 10 layers: the share rises with the
    margin (Spearman 1), two prompts per quintile, and the margin, which orders every layer's safety, beats the
    per-layer prior."""
    bench = bench_module("safety_by_margin")
    margin = np.arange(1.0, 11.0)
    safety = np.array([[float(layer < i) for layer in range(10)] for i in range(10)])
    lines = bench.margin_report(margin, safety, folds=5)
    assert lines[0].endswith("safe single skips: 1.000")
    # np.quantile's linear edges at 0, 1.8, 3.6, 5.4, 7.2, 9 of the sorted positions
    assert lines[4:9] == ["| 1 | 1.000 - 2.800 | 0.050 | 2 |", "| 2 | 2.800 - 4.600 | 0.250 | 2 |",
                          "| 3 | 4.600 - 6.400 | 0.450 | 2 |", "| 4 | 6.400 - 8.200 | 0.650 | 2 |",
                          "| 5 | 8.200 - 10.000 | 0.850 | 2 |"]
    prior, by_margin, gain = map(float, re.search(r"prior ([\d.]+), .* margin ([\d.]+): gain over the prior "
                                                  r"(-?[\d.]+)%", lines[-1]).groups())
    assert by_margin < prior and gain == pytest.approx(100 * (1 - by_margin / prior), abs=0.1)


def test_safety_by_margin_prior_loss_leave_one_out():
    """One layer safe on prompts 1-2 of 4, one prompt per fold: the held-out prompt's prior is the other three's
    safe rate, 1/3 for a safe prompt and 2/3 for an unsafe one, so its loss is log 3 on every prompt."""
    bench = bench_module("safety_by_margin")
    safety = np.array([[1.0], [1.0], [0.0], [0.0]])
    prior, by_margin = bench.cross_validated_losses(safety, np.array([2.0, 2.0, -2.0, -2.0]), folds=4)
    assert prior == pytest.approx(math.log(3), abs=1e-12)
    assert by_margin < prior  # the margin separates the two classes


def test_safety_learning_curve_rows_on_a_tiny_model():
    """Every training prompt has the same safety [0.75, 0.25, 0.5, 0.5], so each share's prior is that vector;
    on validation targets [1, 0, 1, 0] and [1, 0, 0, 1] its loss is (log 4/3 + log 2) / 2. Routers started at the
    prior (train.prior_init) with a negligible learning rate stay there: their loss is the prior's plus the floor
    the repeat class keeps, log(1 + 0.001)."""
    from conftest import random_prompts, tiny_model
    from drllm.core.executor import PathExecutor
    from drllm.training.samples import TrainingSample
    from drllm.training.train_settings import TrainConfig

    bench = bench_module("safety_learning_curve")
    ids = random_prompts(lengths=(5, 9, 12, 7, 9, 3, 6, 8, 10, 4))
    train = [TrainingSample(f"t{i}", ids[i], [1, 1, 1, 1], [0.75, 0.25, 0.5, 0.5]) for i in range(8)]
    val = [TrainingSample("v0", ids[8], [1, 1, 1, 1], [1.0, 0.0, 1.0, 0.0]),
           TrainingSample("v1", ids[9], [1, 1, 1, 1], [1.0, 0.0, 0.0, 1.0])]
    config = TrainConfig(target="safety", prior_init=True, teacher_force="default", lr=1e-9, epochs=2,
                         batch_size=4, windows=2, hidden=8, select_epoch="val_loss")
    caches = bench.feature_caches(PathExecutor(tiny_model()), train, val, config)
    rows = list(bench.curve_rows(*caches, train, val, {"name": "tiny", "hidden_size": 64}, config,
                                 [0.25, 0.5, 1.0]))
    assert [row["prompts"] for row in rows] == [2, 4, 8]
    assert set(rows[0]["chosen"]) < set(rows[1]["chosen"]) < set(rows[2]["chosen"]) == set(range(8))  # nested
    prior = (math.log(4 / 3) + math.log(2)) / 2
    for row in rows:
        assert row["prior"] == pytest.approx(prior, abs=1e-12)
        assert row["val_loss"] == pytest.approx(prior + math.log(1.001), abs=1e-5)
        assert row["gain"] == pytest.approx(-math.log(1.001) / prior, abs=1e-4)


def test_label_stats_on_known_searches():
    """Three searched prompts: two kept (paths [0, 1, 1, 1] and [1, 0, 2, 1] of 4 layers, one wrong-to-correct,
    one the other reward rejects) and one without a label."""
    from drllm.core.paths import LayerPath

    bench = bench_module("labels")
    other = SimpleNamespace(correct=lambda outcome, encoded, reference: outcome)

    def searched(counts, w2c, evaluations, other_accepts, seconds):
        result = SimpleNamespace(best_path=None if counts is None else LayerPath.from_counts(counts),
                                 wrong_to_correct=w2c, evaluations=evaluations)
        rewarder = SimpleNamespace(outcome=lambda path: other_accepts, encoded=None, reference=lambda: None)
        return result, rewarder, seconds

    results = [searched([0, 1, 1, 1], True, 10, True, 1.0), searched([1, 0, 2, 1], False, 20, False, 2.0),
               searched(None, False, 30, False, 3.0)]
    assert bench.label_stats(results, 4, other) == {
        "prompts": 3, "kept": 2, "saved": 0.5, "w2c": 0.5, "mix": (25.0, 62.5, 12.5), "evaluations": 20.0,
        "rejected_by_other": 0.5, "seconds": 2.0}
