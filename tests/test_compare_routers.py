"""tools/compare_routers.py: arms pooled over their calibration sets and read off at equal layers saved."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import compare_routers  # noqa: E402


def calibration(points, examples=("a", "b")):
    """points: (axis, knob, [(set, n, saving, drop, agreement), ...])."""
    curve = [{"axis": axis, "knob": knob, "set": name, "n": n, "saving": saving, "drop": drop, "agreement": agree}
             for axis, knob, rows in points for name, n, saving, drop, agree in rows]
    return {"curve": curve, "sets": {"arc": {"examples": list(examples)}}}


ARM = calibration([("knob", 0.5, [("easy", 300, 0.0, 0.0, 1.0), ("hard", 100, 0.0, 0.0, 1.0)]),
                   ("threshold", 0.9, [("easy", 300, 1.0, 0.01, 0.9), ("hard", 100, 2.0, 0.03, 0.8)]),
                   ("threshold", 0.8, [("easy", 300, 3.0, 0.02, 0.7), ("hard", 100, 3.0, 0.06, 0.7)])])


def test_pooled_curve_weights_sets_by_size_and_sorts_by_saving():
    curve = compare_routers.pooled_curve(ARM)
    assert [(p["axis"], p["knob"], p["n"]) for p in curve] == [("knob", 0.5, 400), ("threshold", 0.9, 400),
                                                                ("threshold", 0.8, 400)]
    assert curve[1]["saving"] == pytest.approx(1.25) and curve[1]["drop"] == pytest.approx(0.015)
    assert curve[1]["agreement"] == pytest.approx(0.875)


def test_at_saving_interpolates_between_neighbours_and_refuses_outside():
    curve = compare_routers.pooled_curve(ARM)
    assert compare_routers.at_saving(curve, 0.0) == {"drop": 0.0, "agreement": 1.0}
    middle = compare_routers.at_saving(curve, 2.125)  # halfway between 1.25 and 3.0 layers saved
    assert middle["drop"] == pytest.approx((0.015 + 0.03) / 2) and middle["agreement"] == pytest.approx(0.7875)
    assert compare_routers.at_saving(curve, 3.0)["drop"] == pytest.approx(0.03)
    assert compare_routers.at_saving(curve, 3.5) is None


def test_cli_prints_both_tables_and_refuses_other_prompts(tmp_path, capsys):
    same, other = tmp_path / "same.json", tmp_path / "other.json"
    same.write_text(json.dumps(ARM))
    other.write_text(json.dumps(calibration([("knob", 0.5, [("easy", 3, 0.0, 0.0, 1.0)])], examples=("c",))))
    figure = tmp_path / "compare.png"
    assert compare_routers.main([f"x={same}", f"y={same}", "--savings", "2.125", "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "| x | tau=0.9 | 1.25 | +1.50 | 0.875 |" in out and "| 2.125 | +2.25 / 0.787 | +2.25 / 0.787 |" in out
    assert figure.stat().st_size > 5000
    assert compare_routers.main([f"x={same}", f"y={other}"]) == 2
    assert "y was calibrated on other prompts than x" in capsys.readouterr().err
    assert compare_routers.main([f"x={tmp_path / 'missing.json'}"]) == 2
    with pytest.raises(SystemExit):
        compare_routers.main(["no-label"])
