"""Calibrated routing: the operating point on a constructed curve, and the stage on the real model."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

from drllm.calibration.calibration import (BASE_KNOB, CurvePoint, PointLosses, certify_point, choose_operating_point)
from drllm.calibration.calibration_settings import CalibrationConfig
from drllm.calibration.certify import CertifyConfig


def curve(table):
    """table: {knob: {set: (score, base, mean_layers, n)}} -> CurvePoints of a 30-layer model."""
    return [CurvePoint(name, knob, n, score, base, layers, 30)
            for knob, sets in table.items() for name, (score, base, layers, n) in sets.items()]


def test_picks_the_largest_saving_within_max_drop_on_every_set():
    points = curve({
        -0.5: {"a": (0.40, 0.50, 20.0, 100), "b": (0.30, 0.35, 22.0, 100)},   # drops 10 / 5 points
        -0.3: {"a": (0.497, 0.50, 26.0, 100), "b": (0.35, 0.35, 27.0, 100)},  # drops 0.3 / 0: saving 3.5
        -0.1: {"a": (0.50, 0.50, 28.0, 100), "b": (0.36, 0.35, 29.0, 100)},   # saving 1.5
        0.5: {"a": (0.50, 0.50, 30.0, 100), "b": (0.35, 0.35, 30.0, 100)},
    })
    (axis, knob), notes = choose_operating_point(points, max_drop=0.005)
    assert (axis, knob) == ("knob", -0.3)
    assert len(notes) == 1 and notes[0].startswith("p=-0.5: a drops 10.00 points")
    # a looser budget takes the bigger saving; a budget of 0 refuses the 0.3-point drop
    assert choose_operating_point(points, max_drop=0.11)[0][1] == -0.5
    assert choose_operating_point(points, max_drop=0.0)[0][1] == -0.1


def test_one_set_over_budget_vetoes_a_knob_and_savings_weigh_by_examples():
    points = curve({
        -0.4: {"a": (0.50, 0.50, 24.0, 10), "b": (0.20, 0.35, 24.0, 10)},    # b drops 15 points
        -0.2: {"a": (0.50, 0.50, 26.0, 300), "b": (0.35, 0.35, 29.0, 10)},   # saving (4*300+1*10)/310
        0.0: {"a": (0.50, 0.50, 29.0, 300), "b": (0.35, 0.35, 20.0, 10)},    # saving (1*300+10*10)/310
        0.5: {"a": (0.50, 0.50, 30.0, 300), "b": (0.35, 0.35, 30.0, 10)},
    })
    assert choose_operating_point(points, max_drop=0.01)[0][1] == -0.2


def test_the_base_model_is_chosen_when_routing_helps_nowhere_and_ties_go_to_the_larger_p():
    points = curve({-0.3: {"a": (0.2, 0.5, 25.0, 50)}, 0.0: {"a": (0.5, 0.5, 30.0, 50)},
                    0.5: {"a": (0.5, 0.5, 30.0, 50)}})
    assert choose_operating_point(points, max_drop=0.005)[0] == ("knob", BASE_KNOB)
    with pytest.raises(ValueError, match="misses sets"):
        choose_operating_point(curve({0.0: {"a": (0.5, 0.5, 30.0, 5)}, 0.5: {"b": (0.5, 0.5, 30.0, 5)}}), 0.01)


def test_certified_point_is_the_last_threshold_that_passes_and_falls_back_to_base():
    n = 600
    def losses(flips):  # `flips` prompts lose a correct answer, the rest keep theirs
        return PointLosses([0.0] * (n - flips) + [1.0] * flips, [0.0] * (n - flips) + [1.0] * flips,
                           [float(30 - 28)] * n)
    points = {("knob", BASE_KNOB): PointLosses([0.0] * n, [0.0] * n, [0.0] * n),
              ("threshold", 0.95): losses(0), ("threshold", 0.9): losses(1), ("threshold", 0.8): losses(40)}
    config = CertifyConfig.from_dict({"epsilon": 0.02, "delta": 0.1, "loss": "disagreement"})
    chosen = certify_point(points, config)
    assert chosen["certified"] and (chosen["knob"], chosen["threshold"]) == (None, 0.9)
    assert chosen["point"] == "tau=0.9" and chosen["mean_layers_saved"] == 2.0
    assert 1 / n <= chosen["risk_bound"] <= 0.02
    assert [row["rejected"] for row in chosen["certificate"]["points"]] == [True, True, False]
    strict = CertifyConfig.from_dict({"epsilon": 0.001, "delta": 0.1, "loss": "disagreement"})
    fallback = certify_point(points, strict)
    assert not fallback["certified"] and (fallback["knob"], fallback["threshold"]) == (BASE_KNOB, None)


def test_config_validation_names_the_field():
    assert BASE_KNOB in CalibrationConfig(knobs=(-0.3,)).knobs
    with pytest.raises(ValueError, match="max_drop"):
        CalibrationConfig(max_drop=-0.1)
    with pytest.raises(ValueError, match="knobs"):
        CalibrationConfig(knobs=(2.0,))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['budget'\]"):
        CalibrationConfig.from_dict({"budget": 1})
    with pytest.raises(ValueError, match=r"calibrate.sets.x.format"):
        CalibrationConfig.from_dict({"sets": {"x": {"benchmark": "arc_easy", "split": "validation"}}})
    with pytest.raises(ValueError, match=r"calibrate.sets.x: unknown key\(s\) \['lm_eval'\]"):
        CalibrationConfig.from_dict({"sets": {"x": {"lm_eval": {"task": "hellaswag", "metric": "acc"}}}})


@pytest.mark.slow
def test_calibration_stage_on_the_real_model(smollm2_dir, tmp_path, capsys):
    """Constructed routers for SmolLM2 (saturated skip at one layer) calibrate on held-out ARC items: the chosen
    knob is on the grid, the base point drops nothing, p = 0 ties go to execute, searched prompts are excluded."""
    import importlib

    import torch

    from drllm.data.examples import write_examples
    from drllm.data.registry import load_benchmark
    from drllm.core.models import read_manifest
    from drllm.routing.router import RouterStack
    from drllm.routing.router_config import RouterConfig
    from drllm.search.prompts import select_prompts, write_prompts

    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    calibrate = importlib.import_module("calibrate_routers")
    manifest = read_manifest(smollm2_dir)
    stack = RouterStack(RouterConfig(base_model=manifest["name"], num_layers=manifest["num_layers"],
                                     hidden_size=manifest["hidden_size"]), seed=0)
    with torch.no_grad():  # routers that execute everywhere but always skip layer 3: only the knob can stop it
        for layer in range(stack.num_layers):
            stack[layer].fc2.weight.zero_()
            stack[layer].fc2.bias.copy_(torch.tensor([-9.0, 9.0, -9.0]))
        stack[3].fc2.bias.copy_(torch.tensor([30.0, 0.0, -30.0]))
    stack.save_pretrained(tmp_path / "routers")
    examples = load_benchmark("arc_easy", "validation")[:12]
    write_examples(tmp_path / "records.parquet", examples)
    prompts = select_prompts([{**ex.__dict__} for ex in examples], "arc_easy", "cloze", 4, seed=0)
    write_prompts(tmp_path / "prompts.parquet", prompts)
    out = tmp_path / "calibration.json"
    config = {"max_drop": 0.0, "knobs": [-0.5, 0.0], "certify": {"epsilon": 0.01, "delta": 0.1},
              "sets": {"arc_easy": {"benchmark": "arc_easy", "split": "validation", "format": "cloze",
                                    "samples": 6}}}
    code = calibrate.main(["--model-dir", str(smollm2_dir), "--routers", str(tmp_path / "routers"),
                           "--data", f"arc_easy={tmp_path / 'records.parquet'}",
                           "--prompts", str(tmp_path / "prompts.parquet"), "--config-json", json.dumps(config),
                           "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["knob"] in (-0.5, 0.0, 0.5)
    searched = {row["id"] for row in prompts}
    assert len(result["sets"]["arc_easy"]["examples"]) == 6
    assert not searched & set(result["sets"]["arc_easy"]["examples"])
    points = {point["knob"]: point for point in result["curve"]}
    assert points[0.5]["drop"] == 0.0 and points[0.5]["mean_layers"] == 30
    assert points[-0.5]["mean_layers"] == 29          # the plain router skips layer 3
    assert points[0.0]["mean_layers"] == 30           # at p = 0 the tie goes to execute
    # 6 calibration prompts cannot certify a 1-point risk: router@certified is the base model, saying why
    certified = result["certified"]
    assert not certified["certified"] and (certified["knob"], certified["threshold"]) == (0.5, None)
    assert "refused" in certified["certificate"]["reason"] and certified["mean_layers_saved"] == 0.0
    # routers with the threshold decision are swept over tau: skip layer 3 only where P(skip) >= tau
    threshold_stack = RouterStack(RouterConfig(**{**stack.config.to_dict(),
                                                  "decision": {"rule": "threshold", "threshold": 0.5}}))
    threshold_stack.load_state_dict(stack.state_dict())
    threshold_stack.save_pretrained(tmp_path / "threshold")
    config = {**config, "thresholds": [0.9, 0.5]}
    code = calibrate.main(["--model-dir", str(smollm2_dir), "--routers", str(tmp_path / "threshold"),
                           "--data", f"arc_easy={tmp_path / 'records.parquet'}",
                           "--prompts", str(tmp_path / "prompts.parquet"), "--config-json", json.dumps(config),
                           "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    taus = {point["knob"]: point for point in result["curve"] if point["axis"] == "threshold"}
    assert sorted(taus) == [0.5, 0.9] and all(point["mean_layers"] == 29 for point in taus.values())
    # a missing records file fails naming the set
    code = calibrate.main(["--model-dir", str(smollm2_dir), "--routers", str(tmp_path / "routers"),
                           "--data", f"other={tmp_path / 'records.parquet'}", "--config-json", json.dumps(config),
                           "--out", str(tmp_path / "x.json")])
    assert code == 2 and "calibration set(s) ['arc_easy']" in capsys.readouterr().err
