"""The report's figures (PNG, written atomically): accuracy vs layers, the accuracy/compute frontier, the routers'
per-layer actions and their consensus. A figure whose data is missing becomes a captioned placeholder, so a
missing method never breaks the report's declared outputs."""
from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np

from drllm.core.figures import placeholder_figure, pyplot, save_figure
from drllm.evaluation.methods import (METHODS, PLAIN_ROUTER_KNOB, frontier_line, method_sort_key, order_methods,
                                      sweep_param)
from drllm.evaluation.summary import ACTIONS, MEAN_BENCHMARK, layer_action_shares, n_label, routing_consensus


# --------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------

def sweep_curves(summary: list[dict]) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """Each swept line of the summary (router@p, router@t, static@k, a plugin's...): line -> benchmark ->
    [(parameter, mean executed layers, score %)] in order of the parameter. A plain router-grammar name joins its
    kind's @p line at PLAIN_ROUTER_KNOB (the knob that leaves its probabilities as they are) when that line exists;
    every other cell without a swept parameter (base, file points, matched budgets) is no line's point."""
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in summary:
        line = frontier_line(r["method"])
        if line is not None:
            curves[line][r["benchmark"]].append((sweep_param(r["method"]), r["mean_path_length"], 100 * r["score"]))
    for r in summary:
        line = f"{r['method']}@p"
        if line in curves and r["method"] in METHODS and METHODS.get(r["method"]).param == "router":
            curves[line][r["benchmark"]].append((PLAIN_ROUTER_KNOB, r["mean_path_length"], 100 * r["score"]))
    return {line: {b: sorted(points) for b, points in sorted(by_benchmark.items())}
            for line, by_benchmark in sorted(curves.items())}


def plot_accuracy_vs_layers(summary: list[dict], path) -> list[str]:
    """Mean score vs mean executed layers: one style per method, per-benchmark points, big per-method average,
    and each swept line (`sweep_curves`) joined in order of its parameter, per benchmark and on average.
    Returns the legend's labels."""
    title = "Accuracy vs executed layers"
    if not summary:
        placeholder_figure(path, title, "no evaluation results")
        return []
    plt = pyplot()
    methods = order_methods(r["method"] for r in summary)
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    markers = "osD^vP*Xph<>"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    method_colour = {}
    for i, m in enumerate(methods):
        rows = [r for r in summary if r["method"] == m]
        style = dict(color=colours(i % colours.N), marker=markers[i % len(markers)])
        method_colour[m] = style["color"]
        ax.scatter([r["mean_path_length"] for r in rows], [100 * r["score"] for r in rows], s=30, alpha=0.6,
                   **style)
        ax.scatter(np.mean([r["mean_path_length"] for r in rows]), 100 * np.mean([r["score"] for r in rows]),
                   s=170, edgecolors="black", linewidths=1.2, label=f"{m} (avg of {len(rows)})", **style)
    for line, by_benchmark in sweep_curves(summary).items():
        # the colour of its first point: the plain router's on the knob line it joins
        on_line = [m for m in methods if frontier_line(m) == line or f"{m}@p" == line]
        colour = method_colour[min(on_line, key=method_sort_key)]
        points_by_param = defaultdict(list)
        for points in by_benchmark.values():
            ax.plot([p[1] for p in points], [p[2] for p in points], color=colour, lw=0.8, alpha=0.4)
            for param, x, y in points:
                points_by_param[param].append((x, y))
        params = sorted(points_by_param)
        ax.plot([np.mean([x for x, _ in points_by_param[p]]) for p in params],
                [np.mean([y for _, y in points_by_param[p]]) for p in params],
                color=colour, lw=2, ls="--", label=f"{line} curve (avg over benchmarks)")
    # name each benchmark once, beside its first method's point
    for b in sorted({r["benchmark"] for r in summary}):
        first = min((r for r in summary if r["benchmark"] == b), key=lambda r: method_sort_key(r["method"]))
        ax.annotate(b, (first["mean_path_length"], 100 * first["score"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=8, alpha=0.8)
    ax.set(xlabel="mean executed layers per example", ylabel="mean score (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
    return ax.get_legend_handles_labels()[1]


LINE_STYLES = {"router@p": dict(color="tab:blue", marker="o", ls="-"),
               "router@t": dict(color="tab:cyan", marker="o", ls="-"),
               "static@k": dict(color="tab:orange", marker="s", ls="--"),
               "safest@k": dict(color="tab:brown", marker="s", ls="-."),
               "random@k": dict(color="tab:grey", marker="^", ls=":")}
POINT_STYLES = {"base": dict(color="black", marker="*", ms=12), "router": dict(color="tab:blue", marker="D", ms=8),
                "router@calibrated": dict(color="tab:purple", marker="P", ms=10),
                "router@certified": dict(color="tab:red", marker="P", ms=10),
                "oracle": dict(color="tab:green", marker="X", ms=10)}
# Drawn apart: a ceiling far above the other methods (the oracle searches each item with its gold answer) would
# squash every other point into a sliver; it sits at the panel's top edge with its score written beside it.
APART = ("oracle",)
OTHER_STYLES = [dict(color=c, marker=m) for c, m in zip(("tab:pink", "tab:olive", "darkcyan", "indigo"), "vhp<")]


def frontier_ylim(points: list[dict], pad: float = 0.08) -> tuple[float, float] | None:
    """Score-axis limits (%) of one panel from its points' intervals, leaving out the methods drawn apart; None
    when only those are there."""
    kept = [p for p in points if p["method"] not in APART]
    if not kept:
        return None
    low = 100 * min(min(p["ci_low"], p["score"]) for p in kept)
    high = 100 * max(max(p["ci_high"], p["score"]) for p in kept)
    margin = max(pad * (high - low), 1.0)
    return max(0.0, low - margin), min(100.0, high + margin)


def plot_frontier(points: list[dict], path) -> list[str]:
    """Score vs mean executed layers, one panel per in-domain benchmark and one for the mean over benchmarks:
    each swept method (router@p, router@t, static@k, safest@k, random@k, a plugin's) as a line sorted by layers,
    base / router / router@calibrated / router@certified / oracle as markers, 95% intervals as vertical error bars.
    The oracle is drawn apart (`APART`) when it lies above the others. Returns the legend's labels."""
    title = "Accuracy vs layers frontier"
    panels = sorted({p["benchmark"] for p in points if p["in_domain"] and p["benchmark"] != MEAN_BENCHMARK})
    panels += [MEAN_BENCHMARK] if points else []
    if not points:
        placeholder_figure(path, title, "no frontier methods evaluated")
        return []
    plt = pyplot()
    columns = min(3, len(panels))
    rows_ = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(2 + 4.8 * columns, 0.6 + 3.8 * rows_), squeeze=False,
                             layout="constrained")
    lines = sorted({p["line"] for p in points if p["line"]}, key=lambda line: (line not in LINE_STYLES, line))
    markers = order_methods(p["method"] for p in points if not p["line"])
    extra = itertools.cycle(OTHER_STYLES)
    styles = {line: LINE_STYLES.get(line) or dict(next(extra), ls="-") for line in lines}
    styles.update({m: POINT_STYLES.get(m) or dict(next(extra), ms=8) for m in markers})
    legend = {}
    for ax, benchmark in zip(axes.flat, panels):
        here = [p for p in points if p["benchmark"] == benchmark]
        limits = frontier_ylim(here)

        def draw(group, **style):
            y = np.array([p["score"] for p in group])
            yerr = np.array([y - [p["ci_low"] for p in group], [p["ci_high"] for p in group] - y])
            ax.errorbar([p["mean_layers"] for p in group], 100 * y, yerr=100 * np.maximum(yerr, 0), capsize=3,
                        elinewidth=0.8, **style)

        for line in lines:
            group = sorted((p for p in here if p["line"] == line), key=lambda p: (p["mean_layers"], p["param"]))
            if group:
                draw(group, label=line, ms=5, lw=1.4, **styles[line])
        for method in markers:
            group = [p for p in here if p["method"] == method]
            if method in APART and limits is not None:
                for point in (p for p in group if 100 * p["score"] > limits[1]):
                    ax.plot([point["mean_layers"]], [limits[1]], ls="none", clip_on=False, mec="black", mew=0.6,
                            label=f"{method} (above, score written)", **styles[method])
                    ax.annotate(f"{method} {100 * point['score']:.1f}%", (point["mean_layers"], limits[1]),
                                xytext=(-4, -12), textcoords="offset points", ha="right", fontsize=7)
                group = [p for p in group if 100 * p["score"] <= limits[1]]
            if group:
                draw(group, label=method, ls="none", mec="black", mew=0.6, **styles[method])
        if limits is not None:
            ax.set_ylim(*limits)
        name = benchmark
        if benchmark == MEAN_BENCHMARK:  # a method averages the benchmarks that have it
            name = f"mean over {n_label([p['benchmarks'] for p in here])} benchmark(s)"
        ax.set(title=name, xlabel="mean executed layers per example", ylabel="score (%)")
        ax.grid(alpha=0.3)
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))  # one legend for every panel
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)
    return list(legend)


def plot_layer_actions(rows: list[dict], path, method: str = "router") -> None:
    """Three heatmaps (skip / execute / repeat): share of examples per benchmark (row) and layer (column)."""
    title = f"Per-layer actions ({method})"
    shares = layer_action_shares(rows, method)
    if not shares:
        return placeholder_figure(path, title, f"no {method} results")
    plt = pyplot()
    benchmarks = list(shares)
    width = max(s.shape[1] for s in shares.values())
    grid = np.full((len(ACTIONS), len(benchmarks), width), np.nan)
    for i, b in enumerate(benchmarks):
        grid[:, i, :shares[b].shape[1]] = shares[b]
    fig, axes = plt.subplots(1, len(ACTIONS), sharey=True, layout="constrained",
                             figsize=(min(18, 3 + 0.25 * width * len(ACTIONS)), 1.6 + 0.4 * len(benchmarks)))
    for ax, action, panel in zip(axes, ACTIONS, grid):
        image = ax.imshow(panel, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set(title=action, xlabel="layer")
        ax.set_yticks(range(len(benchmarks)), benchmarks)
    fig.colorbar(image, ax=list(axes), label="share of examples")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_routing_consensus(rows: list[dict], path, method: str = "router") -> None:
    """Per layer, the share of examples taking that layer's majority action; one line per benchmark."""
    title = f"Routing consensus per layer ({method})"
    consensus = routing_consensus(rows, method)
    if not consensus:
        return placeholder_figure(path, title, f"no {method} results")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c in consensus:
        ax.plot(range(len(c["majority_share"])), c["majority_share"], marker=".", label=c["benchmark"])
    ax.set(xlabel="layer", ylabel="share taking the majority action", ylim=(0, 1.02), title=title)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)
