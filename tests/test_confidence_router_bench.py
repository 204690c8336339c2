"""Study 4c's driver (bench/confidence_router.py): each arm's train block, and the report on constructed cells whose
numbers are worked out by hand."""
from __future__ import annotations

import json
import sys

import polars as pl
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import confidence_router as study  # noqa: E402


def test_arms_differ_only_in_their_kind():
    shared = {"target": "safety", "epochs": 3, "router_kind": "mlp", "confidence": {"read_layer": 3}}
    assert study.arm_settings("mlp", shared) == {"target": "safety", "epochs": 3}
    assert study.arm_settings("confidence@8", shared) == {"target": "safety", "epochs": 3,
                                                          "router_kind": "confidence", "confidence": {"read_layer": 8}}
    with pytest.raises(SystemExit, match="expected mlp or confidence@<R>, got 'linear'"):
        study.arm_settings("linear", shared)


def cell(path, predictions, scores, lengths, reads=None):
    pl.DataFrame({"example_id": [f"e{i}" for i in range(len(predictions))], "prediction": predictions,
                  "score": scores, "num_layers": [30] * len(predictions), "path_length": lengths,
                  "read_blocks": reads or [None] * len(predictions)}).write_parquet(path)


def test_report_nets_the_read_and_pairs_the_agreement(tmp_path, capsys):
    routers, cells = tmp_path / "routers" / "confidence@12", tmp_path / "eval" / "arc_easy"
    routers.mkdir(parents=True)
    cells.mkdir(parents=True)
    (routers / "train_summary.json").write_text(json.dumps({"prior_val_loss": 0.5, "selected": {"val_loss": 0.4}}))
    cell(cells / "base.parquet", ["a", "b", "c", "d"], [1.0, 0.0, 1.0, 0.0], [30] * 4)
    cell(cells / "router-confidence@12.parquet", ["a", "b", "c", "x"], [1.0, 0.0, 1.0, 0.0], [28, 28, 26, 30],
         [0.5] * 4)
    cell(cells / "safest-confidence@12.parquet", ["a", "x", "x", "x"], [1.0, 0.0, 0.0, 0.0], [28] * 4)
    study.main(["report", "--out", str(tmp_path), "--arms", "confidence@12", "--benchmarks", "arc_easy:4"])
    row = capsys.readouterr().out.splitlines()[-1]
    # saved: (2 + 2 + 4 + 0) / 4 - 0.5 = 1.5; agreement 3/4 vs 1/4; accuracy -0 vs -25 points; prior gain 20%
    assert row.startswith("| confidence@12 | 0.5000 / 0.4000 | +20.0% | arc_easy (n = 4) | 1.50 / 2.00 | "
                          "0.750 / 0.250 | +50.0 (")
    assert row.endswith("| +0.0 / -25.0 |")


def test_report_pools_the_benchmarks(tmp_path, capsys):
    routers = tmp_path / "routers" / "mlp"
    routers.mkdir(parents=True)
    (routers / "train_summary.json").write_text(json.dumps({"prior_val_loss": 0.5, "selected": {"val_loss": 0.5}}))
    for bench, router_predictions in (("arc_easy", ["a", "b"]), ("arc_challenge", ["x", "x"])):
        cells = tmp_path / "eval" / bench
        cells.mkdir(parents=True)
        cell(cells / "base.parquet", ["a", "b"], [1.0, 0.0], [30] * 2)
        cell(cells / "router-mlp.parquet", router_predictions, [1.0, 0.0] if bench == "arc_easy" else [0.0, 0.0],
             [26, 28])
        cell(cells / "safest-mlp.parquet", ["a", "x"], [1.0, 0.0], [27] * 2)
    study.main(["report", "--out", str(tmp_path), "--arms", "mlp", "--benchmarks", "arc_easy:2,arc_challenge:2"])
    rows = capsys.readouterr().out.splitlines()[-3:]
    assert [row.split(" | ")[3] for row in rows] == ["arc_easy (n = 2)", "arc_challenge (n = 2)", "all (n = 4)"]
    # over the 4 items: saved 3 / 3; agreement 2/4 vs 2/4, per-item gains 0, +1, -1, 0; accuracy -25 vs 0 points
    fields = rows[-1].strip("| ").split(" | ")
    assert fields[4:6] == ["3.00 / 3.00", "0.500 / 0.500"] and fields[6].startswith("+0.0 (-")
    assert fields[7] == "-25.0 / +0.0"
