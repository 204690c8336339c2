"""Report stage: the paper's Tables 3 and 4 from evaluation cells, with 95% intervals, plots and Markdown.

Input: evaluation cells (one Parquet per benchmark x method, drllm.evaluation.cells.EVAL_SCHEMA) and the list of
skipped benchmarks. Output (build_report): report.md, summary.parquet (REPORT_SUMMARY_SCHEMA), frontier.parquet
(FRONTIER_SCHEMA: the accuracy-vs-layers frontier's points) and four PNGs.
Every number is computed from the cells; the bootstrap is seeded so the report is deterministic.
"""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from drllm.core.artifacts import ArtifactError, atomic_path, write_parquet, write_text
from drllm.evaluation.cells import read_cell
from drllm.evaluation.metrics import bootstrap_interval, wilson_interval

Z95 = 1.959963984540054          # two-sided 95% normal quantile
RESAMPLES = 2000                 # bootstrap resamples per interval
PLAIN_ROUTER_KNOB = -0.5         # drllm.routing.router.apply_knob(probs, -0.5) == probs: the plain router on the knob curve
ACTIONS = ("skip", "execute", "repeat")
FIGURES = ("accuracy_vs_layers", "frontier", "layer_actions", "routing_consensus")
MEAN_BENCHMARK = "(mean)"        # the frontier's across-benchmark rows (config names cannot hold parentheses)
SWEEPS = ("router", "static", "random")          # <kind>@<param> methods drawn as lines on the frontier
FRONTIER_POINTS = ("base", "router", "router@calibrated", "oracle")  # drawn as single markers

# One row per benchmark x method. Scores are fractions (0..1); the Markdown shows them in percent.
REPORT_SUMMARY_SCHEMA = pa.schema([
    pa.field("benchmark", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("knob", pa.float64()),                          # control knob p of router@p, else null
    pa.field("model", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("n", pa.int64(), nullable=False),
    pa.field("score", pa.float64(), nullable=False),         # mean score
    pa.field("ci_low", pa.float64(), nullable=False),        # 95% interval of the mean score
    pa.field("ci_high", pa.float64(), nullable=False),
    pa.field("ci_method", pa.string(), nullable=False),      # wilson (binary scores) | bootstrap
    pa.field("n_paired", pa.int64()),                        # examples shared with the base cell; null if no base
    pa.field("delta_vs_base", pa.float64()),                 # mean paired score difference to base
    pa.field("delta_ci_low", pa.float64()),                  # 95% paired bootstrap interval of that difference
    pa.field("delta_ci_high", pa.float64()),
    pa.field("num_layers", pa.int64(), nullable=False),      # L
    pa.field("mean_path_length", pa.float64(), nullable=False),  # executed blocks per example
    pa.field("mean_layers_saved", pa.float64(), nullable=False),  # L - path_length, averaged
    pa.field("mean_layer_applications", pa.float64(), nullable=False),
    pa.field("layer_applications_vs_base", pa.float64()),    # summed over shared examples, method / base
    pa.field("skip_share", pa.float64(), nullable=False),    # over all layers of all examples
    pa.field("execute_share", pa.float64(), nullable=False),
    pa.field("repeat_share", pa.float64(), nullable=False),
    pa.field("seconds_per_example", pa.float64(), nullable=False),
])

# The accuracy-vs-layers frontier (frontier.parquet, frontier.png): one row per benchmark x plotted method, plus
# one per method for MEAN_BENCHMARK, the unweighted mean over the benchmarks that have that method. Scores are
# fractions; the mean's interval combines the benchmarks' 95% intervals as independent normal errors (one
# benchmark: its own interval).
FRONTIER_SCHEMA = pa.schema([
    pa.field("benchmark", pa.string(), nullable=False),      # evaluation entry, or "(mean)"
    pa.field("method", pa.string(), nullable=False),         # router@p, static@k, random@k, or a FRONTIER_POINTS one
    pa.field("line", pa.string()),                           # router@p | static@k | random@k; null = single marker
    pa.field("param", pa.float64()),                         # p of router@p, k of static@k / random@k, else null
    pa.field("in_domain", pa.bool_(), nullable=False),       # benchmark drawn from the search tasks' benchmarks
    pa.field("mean_layers", pa.float64(), nullable=False),   # mean executed layers per example (path length)
    pa.field("score", pa.float64(), nullable=False),
    pa.field("ci_low", pa.float64(), nullable=False),        # 95% interval of the score
    pa.field("ci_high", pa.float64(), nullable=False),
    pa.field("n", pa.int64(), nullable=False),               # examples (summed over benchmarks for the mean)
    pa.field("benchmarks", pa.int64(), nullable=False),      # benchmarks averaged (1 for a benchmark's row)
])


def _is_binary(values) -> bool:
    return all(v in (0.0, 1.0) for v in values)


# --------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------

def method_knob(method: str, knob: float | None = None) -> float | None:
    """The knob p of "router@<p>" (from the name, else the cell's knob column); None for other methods."""
    if not method.startswith("router@"):
        return None
    try:
        return float(method.split("@", 1)[1])
    except ValueError:
        return knob


def sweep_param(method: str) -> float | None:
    """The swept parameter of router@<p> (p) and static@<k> / random@<k> (k); None otherwise."""
    kind, at, param = method.partition("@")
    if not at or kind not in SWEEPS:
        return None
    try:
        return float(param)
    except ValueError:  # router@calibrated: not a point of the knob sweep
        return None


def method_sort_key(method: str) -> tuple:
    """base, router, router@calibrated, router@p by p, static, static@k by k, random, random@k by k, oracle,
    then anything else by name."""
    fixed = {"base": 0, "router": 1, "router@calibrated": 2, "static": 4, "random": 6, "oracle": 8}
    if method in fixed:
        return (fixed[method], 0.0, method)
    param = sweep_param(method)
    sweeps = {"router": 3, "static": 5, "random": 7}
    if param is not None:
        return (sweeps[method.split("@")[0]], param, method)
    return (9, 0.0, method)


def order_methods(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=method_sort_key)


# --------------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------------

def _group(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["benchmark"], row["method"])].append(row)
    for cell in groups.values():  # a fixed example order keeps the seeded bootstrap independent of input order
        cell.sort(key=lambda r: (r["example_index"], r["example_id"]))
    return groups


def _joined(values) -> str:
    return ", ".join(sorted({str(v) for v in values if v is not None}))


def summarize_cells(rows: list[dict], seed: int = 0, resamples: int = RESAMPLES) -> list[dict]:
    """One REPORT_SUMMARY_SCHEMA row per benchmark x method found in `rows` (EVAL_SCHEMA rows of any cells)."""
    groups = _group(rows)
    summary = []
    for (benchmark, method), cell in sorted(groups.items(), key=lambda kv: (kv[0][0], method_sort_key(kv[0][1]))):
        scores = np.array([r["score"] for r in cell], dtype=np.float64)
        if _is_binary(scores):
            ci, ci_method = wilson_interval(int(scores.sum()), int(scores.size), Z95), "wilson"
        else:
            ci, ci_method = bootstrap_interval(scores, seed, resamples), "bootstrap"
        counts = np.concatenate([np.asarray(r["counts"], dtype=np.int64) for r in cell])
        paths = np.array([r["path_length"] for r in cell], dtype=np.float64)
        layers = np.array([r["num_layers"] for r in cell], dtype=np.float64)
        applications = np.array([r["layer_applications"] for r in cell], dtype=np.float64)
        knob = next((r["knob"] for r in cell if r["knob"] is not None), None)
        row = {
            "benchmark": benchmark, "method": method,
            "knob": method_knob(method, knob) if method.startswith("router@") else knob,
            "model": _joined(r["model"] for r in cell), "metric": _joined(r["metric"] for r in cell),
            "source": _joined(r["source"] for r in cell), "n": len(cell),
            "score": float(scores.mean()), "ci_low": ci[0], "ci_high": ci[1], "ci_method": ci_method,
            "num_layers": int(layers.max()),
            "mean_path_length": float(paths.mean()), "mean_layers_saved": float((layers - paths).mean()),
            "mean_layer_applications": float(applications.mean()),
            **{f"{name}_share": float((counts == c).mean()) if counts.size else 0.0
               for c, name in enumerate(ACTIONS)},
            "seconds_per_example": float(np.mean([r["seconds"] for r in cell])),
        }
        row.update(_versus_base(cell, groups.get((benchmark, "base")), seed, resamples))
        summary.append(row)
    return summary


def _versus_base(cell: list[dict], base: list[dict] | None, seed: int, resamples: int) -> dict:
    """Paired comparison on the example_ids this cell shares with the base cell (nulls without one)."""
    empty = {"n_paired": None, "delta_vs_base": None, "delta_ci_low": None, "delta_ci_high": None,
             "layer_applications_vs_base": None}
    if base is None:
        return empty
    by_id = {r["example_id"]: r for r in base}
    pairs = [(r, by_id[r["example_id"]]) for r in cell if r["example_id"] in by_id]
    if not pairs:
        return {**empty, "n_paired": 0}
    diffs = np.array([r["score"] - b["score"] for r, b in pairs])
    low, high = bootstrap_interval(diffs, seed, resamples)
    base_apps = sum(b["layer_applications"] for _, b in pairs)
    return {"n_paired": len(pairs), "delta_vs_base": float(diffs.mean()), "delta_ci_low": low,
            "delta_ci_high": high,
            "layer_applications_vs_base": sum(r["layer_applications"] for r, _ in pairs) / base_apps
            if base_apps else None}


# --------------------------------------------------------------------------------------------------------
# Accuracy-vs-layers frontier
# --------------------------------------------------------------------------------------------------------

def frontier_line(method: str) -> str | None:
    """The frontier line a method belongs to (router@p, static@k, random@k), None for a single marker."""
    if sweep_param(method) is None:
        return None
    return {"router": "router@p", "static": "static@k", "random": "random@k"}[method.split("@")[0]]


def frontier_points(summary: list[dict], in_domain: Iterable[str] | None = None) -> list[dict]:
    """FRONTIER_SCHEMA rows from summary rows: the swept methods and FRONTIER_POINTS, per benchmark and averaged.

    `in_domain` names the benchmarks the routers were trained on (None: unknown, every benchmark counts as such).
    """
    chosen = [r for r in summary if frontier_line(r["method"]) is not None or r["method"] in FRONTIER_POINTS]
    domain = None if in_domain is None else set(in_domain)
    points = [{"benchmark": r["benchmark"], "method": r["method"], "line": frontier_line(r["method"]),
               "param": sweep_param(r["method"]), "in_domain": domain is None or r["benchmark"] in domain,
               "mean_layers": r["mean_path_length"], "score": r["score"], "ci_low": r["ci_low"],
               "ci_high": r["ci_high"], "n": r["n"], "benchmarks": 1} for r in chosen]
    by_method: dict[str, list[dict]] = defaultdict(list)
    for point in points:
        by_method[point["method"]].append(point)
    for method in order_methods(by_method):
        rows = by_method[method]
        score = float(np.mean([r["score"] for r in rows]))
        if len(rows) == 1:  # one benchmark: its own (possibly asymmetric) interval
            low, high = rows[0]["ci_low"], rows[0]["ci_high"]
        else:  # independent benchmarks: se of the mean = sqrt(sum se_b^2) / B, se_b from each 95% half-width
            se = math.sqrt(sum(((r["ci_high"] - r["ci_low"]) / (2 * Z95)) ** 2 for r in rows)) / len(rows)
            low, high = max(0.0, score - Z95 * se), min(1.0, score + Z95 * se)
        points.append({"benchmark": MEAN_BENCHMARK, "method": method, "line": frontier_line(method),
                       "param": sweep_param(method), "in_domain": all(r["in_domain"] for r in rows),
                       "mean_layers": float(np.mean([r["mean_layers"] for r in rows])), "score": score,
                       "ci_low": low, "ci_high": high, "n": sum(r["n"] for r in rows), "benchmarks": len(rows)})
    benchmark_order = {b: i for i, b in enumerate(sorted({p["benchmark"] for p in points} - {MEAN_BENCHMARK}))}
    return sorted(points, key=lambda p: (benchmark_order.get(p["benchmark"], len(benchmark_order)),
                                         method_sort_key(p["method"])))


# --------------------------------------------------------------------------------------------------------
# Routing statistics for the router method
# --------------------------------------------------------------------------------------------------------

def _counts_matrix(cell: list[dict]) -> np.ndarray:
    """[examples, layers] actions, padded with -1 where an example has fewer layers."""
    width = max(len(r["counts"]) for r in cell)
    matrix = np.full((len(cell), width), -1, dtype=np.int64)
    for i, r in enumerate(cell):
        matrix[i, :len(r["counts"])] = r["counts"]
    return matrix


def layer_action_shares(rows: list[dict], method: str = "router") -> dict[str, np.ndarray]:
    """benchmark -> [3, L] share of examples taking skip / execute / repeat at each layer."""
    shares = {}
    for (benchmark, m), cell in sorted(_group(rows).items()):
        if m == method:
            matrix = _counts_matrix(cell)
            valid = np.maximum((matrix >= 0).sum(axis=0), 1)
            shares[benchmark] = np.stack([(matrix == c).sum(axis=0) / valid for c in range(len(ACTIONS))])
    return shares


def routing_consensus(rows: list[dict], method: str = "router") -> list[dict]:
    """Per benchmark: distinct routed paths, share on the most common one, per-layer majority-action share."""
    result = []
    for (benchmark, m), cell in sorted(_group(rows).items()):
        if m != method:
            continue
        paths = Counter(tuple(r["counts"]) for r in cell)
        shares = layer_action_shares(cell, method)[benchmark]
        result.append({"benchmark": benchmark, "n": len(cell), "distinct_paths": len(paths),
                       "top_path_share": paths.most_common(1)[0][1] / len(cell),
                       "majority_share": shares.max(axis=0)})
    return result


# --------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _n_label(ns: list[int]) -> str:
    return str(ns[0]) if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"


def _score_cell(row: dict) -> str:
    text = f"{_pct(row['score'])} ±{_pct((row['ci_high'] - row['ci_low']) / 2)}"
    if row["method"] != "base" and row["delta_vs_base"] is not None:
        # '*' when the paired 95% interval excludes zero
        significant = row["delta_ci_low"] > 0 or row["delta_ci_high"] < 0
        text += f" (Δ {100 * row['delta_vs_base']:+.1f}{'*' if significant else ''})"
    return text


def _layers_cell(row: dict) -> str:
    ratio = row["layer_applications_vs_base"]
    text = f"{row['mean_path_length']:.1f}"
    return text + (f" ({ratio:.2f}×)" if ratio is not None and row["method"] != "base" else "")


def _average(values: list[float], total: int, fmt) -> str:
    if not values:
        return "–"
    text = fmt(float(np.mean(values)))
    return text if len(values) == total else f"{text} ({len(values)}/{total})"


def scores_by_level(rows: list[dict]) -> list[dict]:
    """Mean score per benchmark x level x method, for benchmarks with two or more levels."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("level") is not None:
            groups[row["benchmark"], row["level"], row["method"]].append(row["score"])
    multi = {b for b in {k[0] for k in groups} if len({k[1] for k in groups if k[0] == b}) > 1}
    return [{"benchmark": b, "level": level, "method": m, "n": len(v), "score": float(np.mean(v))}
            for (b, level, m), v in sorted(groups.items()) if b in multi]


def _sources(rows: list[dict]) -> dict[str, list[str]]:
    sources: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        sources[row["benchmark"]].append(row["source"])
    return sources


def describe_sources(sources: Iterable[str]) -> str:
    """Distinct data sources of a benchmark; many files under one package are summarised by their common part."""
    distinct = sorted(set(sources))
    if len(distinct) <= 3:
        return "; ".join(distinct)
    common = os.path.commonprefix(distinct)
    return f"{len(distinct)} files under {common}… (e.g. {distinct[0]})"


def render_markdown(summary: list[dict], skipped: list[dict], figures: Iterable[str | Path],
                    consensus: list[dict] | None = None, empty_cells: Iterable[str] = (),
                    sources: dict[str, list[str]] | None = None, by_level: list[dict] | None = None,
                    frontier: list[dict] | None = None) -> str:
    """The report: Table 3 / Table 4 equivalents, the frontier's means, routing consensus, skipped benchmarks,
    sources, figures."""
    benchmarks = sorted({r["benchmark"] for r in summary})
    methods = order_methods(r["method"] for r in summary)
    cells = {(r["benchmark"], r["method"]): r for r in summary}
    by_bench = {b: [r for r in summary if r["benchmark"] == b] for b in benchmarks}
    models = _joined(r["model"] for r in summary) or "–"
    out = ["# Dr.LLM evaluation report", "",
           f"Model: {models}. {len(benchmarks)} benchmark(s), {len(methods)} method(s), {len(summary)} cell(s).", ""]

    out += ["## Accuracy (Table 3)", "",
            "Mean score in % ± half-width of the 95% interval (Wilson for 0/1 scores, seeded bootstrap otherwise); "
            "Δ = mean paired difference to `base` on shared examples in points, `*` when its 95% paired "
            "bootstrap interval excludes 0. n = examples per cell.", ""]
    if summary:
        body = [[b, _joined(r["metric"] for r in by_bench[b]), _n_label([r["n"] for r in by_bench[b]])]
                + [_score_cell(cells[(b, m)]) if (b, m) in cells else "–" for m in methods] for b in benchmarks]
        average = ["**average**", "", ""]
        for m in methods:
            rows = [cells[(b, m)] for b in benchmarks if (b, m) in cells]
            text = _average([r["score"] for r in rows], len(benchmarks), _pct)
            deltas = [r["delta_vs_base"] for r in rows if r["delta_vs_base"] is not None]
            if m != "base" and deltas:
                text += f" (Δ {100 * float(np.mean(deltas)):+.1f})"
            average.append(text)
        out += [markdown_table(["benchmark", "metric", "n", *methods], body + [average]), "",
                "The average is the unweighted mean over benchmarks where the method exists (k/N when not all).", ""]
    else:
        out += ["_No evaluation results._", ""]

    out += ["## Layers (Table 4)", "",
            "Mean executed layers per example (path length, repeats counted), and in brackets the layer "
            "applications relative to `base` summed over shared examples. L = layers of the model.", ""]
    if summary:
        body = [[b, _joined(r["num_layers"] for r in by_bench[b])]
                + [_layers_cell(cells[(b, m)]) if (b, m) in cells else "–" for m in methods] for b in benchmarks]
        average = ["**average**", ""]
        for m in methods:
            rows = [cells[(b, m)] for b in benchmarks if (b, m) in cells]
            text = _average([r["mean_path_length"] for r in rows], len(benchmarks), lambda v: f"{v:.1f}")
            ratios = [r["layer_applications_vs_base"] for r in rows if r["layer_applications_vs_base"] is not None]
            if m != "base" and ratios:
                text += f" ({float(np.mean(ratios)):.2f}×)"
            average.append(text)
        out += [markdown_table(["benchmark", "L", *methods], body + [average]), ""]

    mean_points = [p for p in frontier or [] if p["benchmark"] == MEAN_BENCHMARK]
    if mean_points:
        out += ["## Accuracy vs layers frontier", "",
                "Per method, the unweighted mean over the benchmarks that have it of the mean "
                "executed layers and the score in % ± half-width of the 95% interval; per benchmark in "
                "`frontier.parquet` and `frontier.png`.", ""]
        body = [[p["method"], str(p["benchmarks"]), f"{p['mean_layers']:.1f}",
                 f"{_pct(p['score'])} ±{_pct((p['ci_high'] - p['ci_low']) / 2)}"] for p in mean_points]
        out += [markdown_table(["method", "benchmarks", "layers", "score"], body), ""]

    out += ["## Routing consensus (router)", ""]
    if consensus:
        body = [[c["benchmark"], str(c["n"]), str(c["distinct_paths"]), f"{100 * c['top_path_share']:.1f}%"]
                for c in consensus]
        out += [markdown_table(["benchmark", "n", "distinct routed paths", "examples on the most common path"], body), ""]
    else:
        out += ["_No router results._", ""]

    if by_level:
        level_methods = order_methods({r["method"] for r in by_level})
        scores = {(r["benchmark"], r["level"], r["method"]): r for r in by_level}
        keys = sorted({(r["benchmark"], r["level"]) for r in by_level})
        out += ["## By difficulty level", "",
                "Mean score in % (n) per level, for benchmarks whose examples carry one (DART / MATH).", ""]
        out += [markdown_table(["benchmark", "level", *level_methods],
                       [[b, str(level), *[f"{_pct(scores[b, level, m]['score'])} ({scores[b, level, m]['n']})"
                                          if (b, level, m) in scores else "–" for m in level_methods]]
                        for b, level in keys]), ""]
    out += ["## Skipped benchmarks", ""]
    out += [f"- **{s['benchmark']}**: {s['reason']}" for s in skipped] or ["_None._"]
    if empty_cells:
        out += ["", "## Empty cells", "", "These evaluation cells hold no examples and are left out of the tables:", ""]
        out += [f"- `{path}`" for path in empty_cells]
    out += ["", "## Data sources", ""]
    sources = sources or {b: [r["source"] for r in by_bench[b]] for b in benchmarks}
    out += [f"- **{b}**: {describe_sources(sources.get(b, []))}" for b in benchmarks] or ["_None._"]
    out += ["", "## Figures", ""]
    for figure in figures:
        name = Path(figure).name
        out += [f"![{Path(name).stem.replace('_', ' ')}]({name})", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)


def _message(path, title: str, text: str) -> None:
    """A placeholder figure, so a missing method never breaks the report (or snakemake's declared outputs)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_title(title)
    ax.set_axis_off()
    _save(fig, path)


def plot_accuracy_vs_layers(summary: list[dict], path) -> None:
    """Mean score vs mean executed layers: one style per method, per-benchmark points, big per-method average,
    and the router@p knob curve (router placed at its knob value) per benchmark and on average."""
    title = "Accuracy vs executed layers"
    if not summary:
        return _message(path, title, "no evaluation results")
    plt = _pyplot()
    methods = order_methods(r["method"] for r in summary)
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    markers = "osD^vP*Xph<>"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, m in enumerate(methods):
        rows = [r for r in summary if r["method"] == m]
        style = dict(color=colours(i % colours.N), marker=markers[i % len(markers)])
        ax.scatter([r["mean_path_length"] for r in rows], [100 * r["score"] for r in rows], s=30, alpha=0.6,
                   **style)
        ax.scatter(np.mean([r["mean_path_length"] for r in rows]), 100 * np.mean([r["score"] for r in rows]),
                   s=170, edgecolors="black", linewidths=1.2, label=f"{m} (avg of {len(rows)})", **style)

    # the knob's trade-off curve: router@p points (and the plain router) joined in order of p
    def knob_of(row):
        return PLAIN_ROUTER_KNOB if row["method"] == "router" else row["knob"]

    curve_rows = [r for r in summary if r["method"] == "router"  # router@calibrated is its own marker
                  or (r["method"].startswith("router@") and sweep_param(r["method"]) is not None)]
    if any(r["method"] != "router" for r in curve_rows):
        router_colour = colours(methods.index("router") % colours.N) if "router" in methods else "grey"
        points_by_knob = defaultdict(list)
        for b in sorted({r["benchmark"] for r in curve_rows}):
            points = sorted((knob_of(r), r["mean_path_length"], 100 * r["score"])
                            for r in curve_rows if r["benchmark"] == b)
            ax.plot([p[1] for p in points], [p[2] for p in points], color=router_colour, lw=0.8, alpha=0.4)
            for knob, x, y in points:
                points_by_knob[knob].append((x, y))
        knobs = sorted(points_by_knob)
        ax.plot([np.mean([x for x, _ in points_by_knob[k]]) for k in knobs],
                [np.mean([y for _, y in points_by_knob[k]]) for k in knobs],
                color=router_colour, lw=2, ls="--", label="router knob curve (avg, by p)")
    # name each benchmark once, beside its first method's point
    for b in sorted({r["benchmark"] for r in summary}):
        first = min((r for r in summary if r["benchmark"] == b), key=lambda r: method_sort_key(r["method"]))
        ax.annotate(b, (first["mean_path_length"], 100 * first["score"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=8, alpha=0.8)
    ax.set(xlabel="mean executed layers per example", ylabel="mean score (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)


LINE_STYLES = {"router@p": dict(color="tab:blue", marker="o", ls="-"),
               "static@k": dict(color="tab:orange", marker="s", ls="--"),
               "random@k": dict(color="tab:grey", marker="^", ls=":")}
POINT_STYLES = {"base": dict(color="black", marker="*", ms=12), "router": dict(color="tab:blue", marker="D", ms=8),
                "router@calibrated": dict(color="tab:purple", marker="P", ms=10),
                "oracle": dict(color="tab:green", marker="X", ms=10)}


def plot_frontier(points: list[dict], path) -> None:
    """Score vs mean executed layers, one panel per in-domain benchmark and one for the mean over benchmarks:
    router@p, static@k and random@k as lines sorted by layers, base / router / router@calibrated / oracle as
    markers, 95% intervals as vertical error bars."""
    title = "Accuracy vs layers frontier"
    panels = sorted({p["benchmark"] for p in points if p["in_domain"] and p["benchmark"] != MEAN_BENCHMARK})
    panels += [MEAN_BENCHMARK] if points else []
    if not points:
        return _message(path, title, "no frontier methods evaluated")
    plt = _pyplot()
    columns = min(3, len(panels))
    rows_ = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(2 + 4.8 * columns, 0.6 + 3.8 * rows_), squeeze=False,
                             layout="constrained")
    legend = {}
    for ax, benchmark in zip(axes.flat, panels):
        here = [p for p in points if p["benchmark"] == benchmark]

        def draw(group, **style):
            y = np.array([p["score"] for p in group])
            yerr = np.array([y - [p["ci_low"] for p in group], [p["ci_high"] for p in group] - y])
            ax.errorbar([p["mean_layers"] for p in group], 100 * y, yerr=100 * np.maximum(yerr, 0), capsize=3,
                        elinewidth=0.8, **style)

        for line, style in LINE_STYLES.items():
            group = sorted((p for p in here if p["line"] == line), key=lambda p: (p["mean_layers"], p["param"]))
            if group:
                draw(group, label=line, ms=5, lw=1.4, **style)
        for method, style in POINT_STYLES.items():
            group = [p for p in here if p["method"] == method]
            if group:
                draw(group, label=method, ls="none", mec="black", mew=0.6, **style)
        name = benchmark
        if benchmark == MEAN_BENCHMARK:  # a method averages the benchmarks that have it
            name = f"mean over {_n_label([p['benchmarks'] for p in here])} benchmark(s)"
        ax.set(title=name, xlabel="mean executed layers per example", ylabel="score (%)")
        ax.grid(alpha=0.3)
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))  # one legend for every panel
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def plot_layer_actions(rows: list[dict], path, method: str = "router") -> None:
    """Three heatmaps (skip / execute / repeat): share of examples per benchmark (row) and layer (column)."""
    title = f"Per-layer actions ({method})"
    shares = layer_action_shares(rows, method)
    if not shares:
        return _message(path, title, f"no {method} results")
    plt = _pyplot()
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
    _save(fig, path)


def plot_routing_consensus(rows: list[dict], path, method: str = "router") -> None:
    """Per layer, the share of examples taking that layer's majority action; one line per benchmark."""
    title = f"Routing consensus per layer ({method})"
    consensus = routing_consensus(rows, method)
    if not consensus:
        return _message(path, title, f"no {method} results")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c in consensus:
        ax.plot(range(len(c["majority_share"])), c["majority_share"], marker=".", label=c["benchmark"])
    ax.set(xlabel="layer", ylabel="share taking the majority action", ylim=(0, 1.02), title=title)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    _save(fig, path)


# --------------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------------

def validate_skipped(skipped) -> list[dict]:
    """The skipped-benchmark list: [{"benchmark": str, "reason": str}, ...]."""
    if not isinstance(skipped, list):
        raise ArtifactError(f"skipped benchmarks must be a JSON list, got {type(skipped).__name__}")
    for item in skipped:
        if not (isinstance(item, dict) and isinstance(item.get("benchmark"), str)
                and isinstance(item.get("reason"), str)):
            raise ArtifactError(f"skipped benchmark entries need string 'benchmark' and 'reason', got {item!r}")
    return [{"benchmark": s["benchmark"], "reason": s["reason"]} for s in skipped]


def load_cells(cell_paths: Iterable[str | Path]) -> tuple[list[dict], list[str]]:
    """All rows of the cells, and the paths of empty cells; each cell must hold one benchmark x method, once."""
    rows, empty, seen = [], [], {}
    for path in cell_paths:
        cell = read_cell(path)
        if not cell:
            empty.append(str(path))
            continue
        keys = {(r["benchmark"], r["method"]) for r in cell}
        if len(keys) != 1:
            raise ArtifactError(f"evaluation cell {path} mixes benchmark x method pairs {sorted(keys)}")
        key = keys.pop()
        if key in seen:
            raise ArtifactError(f"two cells for {key[0]} x {key[1]}: {seen[key]} and {path}")
        seen[key] = path
        ids = Counter(r["example_id"] for r in cell)
        repeated = [i for i, k in ids.items() if k > 1]
        if repeated:  # the paired deltas match examples by id
            raise ArtifactError(f"evaluation cell {path} repeats example_id(s) {repeated[:5]}")
        rows.extend(cell)
    return rows, empty


def build_report(cell_paths: Iterable[str | Path], skipped: list[dict], out_dir, seed: int = 0,
                 in_domain: Iterable[str] | None = None, provenance: dict | None = None) -> dict:
    """Read the cells, write report.md, summary.parquet, frontier.parquet and the PNGs into out_dir; return their
    paths. `in_domain`: the benchmarks the frontier figure shows panels for (None = every benchmark);
    `provenance`: stored in both Parquet tables (drllm.core.provenance)."""
    skipped = validate_skipped(skipped)
    rows, empty = load_cells(cell_paths)
    summary = summarize_cells(rows, seed=seed)
    frontier = frontier_points(summary, in_domain)
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.png" for name in FIGURES}
    plot_accuracy_vs_layers(summary, paths["accuracy_vs_layers"])
    plot_frontier(frontier, paths["frontier"])
    plot_layer_actions(rows, paths["layer_actions"])
    plot_routing_consensus(rows, paths["routing_consensus"])
    paths["summary"] = out_dir / "summary.parquet"
    write_parquet(paths["summary"], summary, REPORT_SUMMARY_SCHEMA, "report summary", provenance)
    paths["frontier_points"] = out_dir / "frontier.parquet"
    write_parquet(paths["frontier_points"], frontier, FRONTIER_SCHEMA, "frontier points", provenance)
    paths["report"] = out_dir / "report.md"
    write_text(paths["report"], render_markdown(summary, skipped, [paths[n] for n in FIGURES],
                                                consensus=routing_consensus(rows), empty_cells=empty,
                                                sources=_sources(rows), by_level=scores_by_level(rows),
                                                frontier=frontier))
    return paths
