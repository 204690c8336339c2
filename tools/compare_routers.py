"""Routers trained differently (other labels, targets or settings), compared at equal layers saved on the same
calibration prompts: each router directory's calibration.json curve pooled over its sets, then read off at the
same savings by linear interpolation between neighbouring operating points.

    python tools/compare_routers.py paper=results/labelers-paper/routers/<model>/calibration.json \
        safety=results/routers/<model>/calibration.json --savings 0.5 1 2 --figure compare.png

Prints two Markdown tables: each arm's pooled curve (layers saved, accuracy drop and agreement with the base model
at every operating point), and the arms at the requested savings. The arms must have been calibrated on the same
prompts (checked: every set's example ids must match), or the comparison is refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def pooled_curve(calibration: dict) -> list[dict]:
    """One row per operating point: saving, drop and agreement averaged over the sets, weighted by their sizes;
    sorted by saving (ties: the smaller drop first)."""
    points: dict[tuple, list[dict]] = {}
    for row in calibration["curve"]:
        points.setdefault((row["axis"], row["knob"]), []).append(row)
    curve = []
    for (axis, knob), rows in points.items():
        n = sum(r["n"] for r in rows)
        curve.append({"axis": axis, "knob": knob, "n": n,
                      **{key: sum(r[key] * r["n"] for r in rows) / n for key in ("saving", "drop", "agreement")}})
    return sorted(curve, key=lambda p: (p["saving"], p["drop"]))


def at_saving(curve: list[dict], saving: float) -> dict | None:
    """Drop and agreement at `saving` layers, interpolated linearly between the two neighbouring points of the
    curve (the upper envelope is not taken: the curve as measured); None outside the measured savings."""
    for low, high in zip(curve, curve[1:]):
        if low["saving"] <= saving <= high["saving"]:
            span = high["saving"] - low["saving"]
            share = 0.0 if span == 0 else (saving - low["saving"]) / span
            return {key: low[key] + share * (high[key] - low[key]) for key in ("drop", "agreement")}
    if curve and curve[-1]["saving"] == saving:
        return {key: curve[-1][key] for key in ("drop", "agreement")}
    return None


def same_prompts(calibrations: dict[str, dict]) -> str | None:
    """None when every arm was calibrated on the same sets and example ids, else what differs."""
    (first, reference), *others = calibrations.items()
    want = {name: block["examples"] for name, block in reference["sets"].items()}
    for label, calibration in others:
        have = {name: block["examples"] for name, block in calibration["sets"].items()}
        if have != want:
            return f"{label} was calibrated on other prompts than {first} (sets {sorted(have)} vs {sorted(want)})"
    return None


def point_label(point: dict) -> str:
    from drllm.calibration.calibration import BASE_KNOB, KNOB, point_name

    return "base" if (point["axis"], point["knob"]) == (KNOB, BASE_KNOB) else point_name(point["axis"], point["knob"])


def tables(curves: dict[str, list[dict]], savings: list[float]) -> str:
    out = ["| arm | point | layers saved | accuracy drop (points) | agreement with base |", "|---|---|---|---|---|"]
    for label, curve in curves.items():
        out += [f"| {label} | {point_label(p)} | {p['saving']:.2f} | {100 * p['drop']:+.2f} | {p['agreement']:.3f} |"
                for p in curve]
    out += ["", "| layers saved | " + " | ".join(f"{label}: drop / agreement" for label in curves) + " |",
            "|---" * (1 + len(curves)) + "|"]
    for saving in savings:
        cells = []
        for curve in curves.values():
            value = at_saving(curve, saving)
            cells.append("outside the curve" if value is None
                         else f"{100 * value['drop']:+.2f} / {value['agreement']:.3f}")
        out.append(f"| {saving:g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(curves: dict[str, list[dict]], path: Path, max_saving: float | None = None) -> None:
    from drllm.core.figures import pyplot, save_figure

    plt = pyplot()
    fig, (drop_ax, agree_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for label, curve in curves.items():
        curve = [p for p in curve if max_saving is None or p["saving"] <= max_saving]
        x = [p["saving"] for p in curve]
        drop_ax.plot(x, [100 * p["drop"] for p in curve], marker="o", label=label)
        agree_ax.plot(x, [p["agreement"] for p in curve], marker="o", label=label)
    drop_ax.set(xlabel="mean layers saved per prompt", ylabel="accuracy drop vs base (points)",
                title="accuracy drop (pooled calibration sets)")
    agree_ax.set(xlabel="mean layers saved per prompt", ylabel="share of answers equal to the base model's",
                 title="agreement with the base model")
    for ax in (drop_ax, agree_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arms", nargs="+", metavar="LABEL=CALIBRATION_JSON",
                        help="an arm's name and its routers' calibration.json")
    parser.add_argument("--savings", type=float, nargs="*", default=[0.5, 1.0, 2.0, 3.0],
                        help="layers saved at which the arms are read off (default: 0.5 1 2 3)")
    parser.add_argument("--figure", type=Path, help="also draw drop and agreement against layers saved (PNG)")
    parser.add_argument("--max-saving", type=float, help="the figure leaves out points saving more layers than this")
    args = parser.parse_args(argv)
    calibrations = {}
    for arm in args.arms:
        label, sep, path = arm.partition("=")
        if not sep or not label or not path:
            parser.error(f"an arm must be LABEL=CALIBRATION_JSON, got {arm!r}")
        try:
            calibrations[label] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"compare_routers: error: {path}: cannot read a calibration file ({error})", file=sys.stderr)
            return 2
    differs = same_prompts(calibrations)
    if differs:
        print(f"compare_routers: error: {differs}", file=sys.stderr)
        return 2
    curves = {label: pooled_curve(calibration) for label, calibration in calibrations.items()}
    print(tables(curves, args.savings))
    if args.figure:
        plot(curves, args.figure, args.max_saving)
    return 0


if __name__ == "__main__":
    sys.exit(main())
