"""Cross-model report: the paper's Tables 3 and 4 across models, built from each model's report summary.

Input: per model, the report stage's summary.parquet (REPORT_SUMMARY_SCHEMA: one row per benchmark x method, with
the paired difference to base, its 95% interval and the layers saved) and the list of in-domain benchmarks.
Output (build_cross_model_report): cross_model.md (one table row per model x method, a column per benchmark and
per domain average), cross_model.parquet (CROSS_MODEL_SCHEMA) and cross_model.png (accuracy change vs layers
saved). Every number comes from the summaries; a cell a model lacks is a row with present = false (a dash in the
Markdown), never left out.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet, write_text
from drllm.core.figures import placeholder_figure, pyplot, save_figure
from drllm.core.tables import markdown_table
from drllm.evaluation.methods import order_methods, parse_method
from drllm.evaluation.summary import REPORT_SUMMARY_SCHEMA, Z95, joined

IN_DOMAIN_AVERAGE = "(in-domain)"       # average rows' benchmark (config names cannot hold parentheses)
OUT_OF_DOMAIN_AVERAGE = "(out-of-domain)"
DEFAULT_METHODS = ("router", "router@certified")  # router@certified only where some summary has it
# In-domain averages pool the examples (the paper's Table 3 "total" over ARC and DART is example-weighted);
# out-of-domain benchmarks mix metrics and sizes (MMLU vs GPQA), so each counts once, as in the paper's mean.
WEIGHTING = {True: "examples", False: "benchmarks"}
FILES = {"markdown": "cross_model.md", "table": "cross_model.parquet", "figure": "cross_model.png"}

# One row per model x method x benchmark, then per model x method one average row per domain. `base` is always
# one of the methods (the reference line; its delta is 0). Scores and deltas are fractions (0..1); the Markdown
# shows percent and points.
CROSS_MODEL_SCHEMA = pa.schema([
    pa.field("model", pa.string(), nullable=False),          # the name the summary was given
    pa.field("method", pa.string(), nullable=False),
    pa.field("benchmark", pa.string(), nullable=False),      # or "(in-domain)" / "(out-of-domain)" on averages
    pa.field("is_average", pa.bool_(), nullable=False),
    pa.field("in_domain", pa.bool_(), nullable=False),
    pa.field("present", pa.bool_(), nullable=False),         # the summary has the cell / the average has a benchmark
    pa.field("metric", pa.string()),
    pa.field("n", pa.int64()),                               # examples of the method's cell (averages: summed)
    pa.field("score", pa.float64()),                         # the method's mean score and its 95% interval
    pa.field("ci_low", pa.float64()),
    pa.field("ci_high", pa.float64()),
    pa.field("base_score", pa.float64()),                    # the model's base on that benchmark, 95% interval
    pa.field("base_ci_low", pa.float64()),
    pa.field("base_ci_high", pa.float64()),
    pa.field("n_paired", pa.int64()),                        # examples shared with base (averages: summed)
    pa.field("delta_vs_base", pa.float64()),                 # mean paired score difference to base
    pa.field("delta_ci_low", pa.float64()),                  # its 95% paired interval
    pa.field("delta_ci_high", pa.float64()),
    pa.field("num_layers", pa.int64()),                      # L
    pa.field("mean_layers_saved", pa.float64()),             # L - executed blocks, per example
    pa.field("benchmarks", pa.int64(), nullable=False),      # benchmarks behind the numbers (0 or 1 on benchmark rows)
    pa.field("benchmarks_total", pa.int64(), nullable=False),  # benchmarks of the domain (1 on benchmark rows)
    pa.field("weighting", pa.string()),                      # averages: "examples" (n_paired) | "benchmarks" (equal)
])

_VALUES = ("metric", "n", "score", "ci_low", "ci_high", "base_score", "base_ci_low", "base_ci_high", "n_paired",
           "delta_vs_base", "delta_ci_low", "delta_ci_high", "num_layers", "mean_layers_saved")


# --------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------

def load_summaries(entries: Iterable[tuple[str, str | Path]]) -> dict[str, list[dict]]:
    """model name -> its report summary rows, in the given order; names unique, one row per benchmark x method."""
    summaries: dict[str, list[dict]] = {}
    paths: dict[str, str] = {}
    for name, path in entries:
        if not name or not name.strip():
            raise ArtifactError(f"report summary {path}: empty model name")
        if name in summaries:
            raise ArtifactError(f"model name {name!r} given twice: {paths[name]} and {path}")
        rows = read_parquet(path, REPORT_SUMMARY_SCHEMA, "report summary").to_pylist()
        seen = set()
        for row in rows:
            key = (row["benchmark"], row["method"])
            if key in seen:
                raise ArtifactError(f"report summary {path} has two rows for {key[0]} x {key[1]}")
            if row["benchmark"] in (IN_DOMAIN_AVERAGE, OUT_OF_DOMAIN_AVERAGE):
                raise ArtifactError(f"report summary {path}: benchmark name {row['benchmark']!r} is reserved for "
                                    "the averages")
            seen.add(key)
        summaries[name], paths[name] = rows, str(path)
    if not summaries:
        raise ArtifactError("no report summaries given")
    return summaries


def select_methods(summaries: dict[str, list[dict]], methods: Iterable[str] | None = None) -> list[str]:
    """`base` first, then the reported methods in report order. None: `router`, and `router@certified` where a
    summary has it. Named methods are kept even where no summary has them (their cells show as missing)."""
    if methods is None:
        found = {r["method"] for rows in summaries.values() for r in rows}
        methods = [m for m in DEFAULT_METHODS if m == "router" or m in found]
    methods = list(methods)
    for method in methods:
        parse_method(method)  # a typo raises ValueError naming the grammar
    return ["base", *order_methods(m for m in methods if m != "base")]


# --------------------------------------------------------------------------------------------------------
# Table rows
# --------------------------------------------------------------------------------------------------------

def benchmark_columns(summaries: dict[str, list[dict]], in_domain: Iterable[str] | None) -> list[tuple[str, bool]]:
    """(benchmark, in_domain) for every benchmark of any summary and every named in-domain one: in-domain
    first, each group by name. `in_domain` None: every benchmark counts as in-domain."""
    names = {r["benchmark"] for rows in summaries.values() for r in rows}
    domain = names if in_domain is None else set(in_domain)
    names |= domain
    return [(b, True) for b in sorted(names & domain)] + [(b, False) for b in sorted(names - domain)]


def _combine(values: list[float], lows: list[float], highs: list[float], weights: list[float],
             bounds: tuple[float, float]) -> tuple[float, float, float]:
    """Weighted mean and 95% interval, each interval's half-width read as 1.96 standard errors of independent
    benchmarks (one benchmark: its own, possibly asymmetric, interval)."""
    if len(values) == 1:
        return values[0], lows[0], highs[0]
    mean = sum(w * v for w, v in zip(weights, values))
    se = math.sqrt(sum((w * (h - lo) / (2 * Z95)) ** 2 for w, lo, h in zip(weights, lows, highs)))
    return mean, max(bounds[0], mean - Z95 * se), min(bounds[1], mean + Z95 * se)


def _benchmark_row(model: str, method: str, benchmark: str, in_domain: bool, cells: dict) -> dict:
    row, base = cells.get((benchmark, method)), cells.get((benchmark, "base"))
    out = {"model": model, "method": method, "benchmark": benchmark, "is_average": False, "in_domain": in_domain,
           "present": row is not None, **dict.fromkeys(_VALUES), "benchmarks": int(row is not None),
           "benchmarks_total": 1, "weighting": None}
    if row is not None:
        out.update({key: row[key] for key in ("metric", "n", "score", "ci_low", "ci_high", "n_paired",
                                              "delta_vs_base", "delta_ci_low", "delta_ci_high", "num_layers",
                                              "mean_layers_saved")})
    if base is not None:  # the base line is a fact of the model x benchmark, shown even where the method is missing
        out.update(base_score=base["score"], base_ci_low=base["ci_low"], base_ci_high=base["ci_high"])
    return out


def _average_row(model: str, method: str, in_domain: bool, rows: list[dict]) -> dict:
    """The domain average over the benchmarks where the method has a paired delta (every number over that set)."""
    parts = [r for r in rows if r["present"] and r["delta_vs_base"] is not None]
    out = {"model": model, "method": method, "benchmark": IN_DOMAIN_AVERAGE if in_domain else OUT_OF_DOMAIN_AVERAGE,
           "is_average": True, "in_domain": in_domain, "present": bool(parts), **dict.fromkeys(_VALUES),
           "benchmarks": len(parts), "benchmarks_total": len(rows), "weighting": WEIGHTING[in_domain]}
    if not parts:
        return out
    raw = [r["n_paired"] if in_domain else 1 for r in parts]
    weights = [w / sum(raw) for w in raw]

    def combined(prefix: str, value: str, bounds: tuple[float, float]) -> tuple[float, float, float]:
        return _combine([r[value] for r in parts], [r[f"{prefix}ci_low"] for r in parts],
                        [r[f"{prefix}ci_high"] for r in parts], weights, bounds)

    score, low, high = combined("", "score", (0.0, 1.0))
    base, base_low, base_high = combined("base_", "base_score", (0.0, 1.0))
    delta, delta_low, delta_high = combined("delta_", "delta_vs_base", (-1.0, 1.0))
    out.update(metric=joined(r["metric"] for r in parts), n=sum(r["n"] for r in parts), score=score, ci_low=low,
               ci_high=high, base_score=base, base_ci_low=base_low, base_ci_high=base_high,
               n_paired=sum(r["n_paired"] for r in parts), delta_vs_base=delta, delta_ci_low=delta_low,
               delta_ci_high=delta_high, num_layers=max(r["num_layers"] for r in parts),
               mean_layers_saved=sum(w * r["mean_layers_saved"] for w, r in zip(weights, parts)))
    return out


def cross_model_rows(summaries: dict[str, list[dict]], in_domain: Iterable[str] | None = None,
                     methods: Iterable[str] | None = None) -> list[dict]:
    """CROSS_MODEL_SCHEMA rows: per model (given order) x method (select_methods), the in-domain benchmarks and
    their average, then the out-of-domain ones and theirs. Every model gets every benchmark any model has."""
    columns = benchmark_columns(summaries, in_domain)
    methods = select_methods(summaries, methods)
    out = []
    for model, summary in summaries.items():
        cells = {(r["benchmark"], r["method"]): r for r in summary}
        for method in methods:
            for domain in (True, False):
                rows = [_benchmark_row(model, method, b, domain, cells) for b, d in columns if d == domain]
                out += rows + [_average_row(model, method, domain, rows)]
    return out


# --------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------

def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _cell(row: dict) -> str:
    """base: score % (95% interval); a method: Δ points (95% paired interval) · layers saved; averages add k/N
    when not every benchmark of the domain is in them."""
    if not row["present"]:
        return "–"
    if row["method"] == "base":
        text = f"{100 * row['score']:.1f} ({100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f})"
    elif row["delta_vs_base"] is None:
        text = f"no base · {row['mean_layers_saved']:.2f}"
    else:
        significant = row["delta_ci_low"] > 0 or row["delta_ci_high"] < 0
        text = (f"{_points(row['delta_vs_base'])} ({_points(row['delta_ci_low'])}, {_points(row['delta_ci_high'])})"
                f"{'*' if significant else ''} · {row['mean_layers_saved']:.2f}")
    if row["is_average"] and row["benchmarks"] < row["benchmarks_total"]:
        text += f" ({row['benchmarks']}/{row['benchmarks_total']})"
    return text


def _layout(rows: list[dict]) -> tuple[list[str], list[tuple[str, bool]], dict]:
    """Models in row order, the columns (benchmark, in_domain) in row order, and (model, method) -> row by column."""
    models, columns, table = [], [], defaultdict(dict)
    for row in rows:
        if row["model"] not in models:
            models.append(row["model"])
        column = (row["benchmark"], row["in_domain"])
        if column not in columns:
            columns.append(column)
        table[(row["model"], row["method"])][column] = row
    return models, columns, table


def _header(benchmark: str) -> str:
    return {IN_DOMAIN_AVERAGE: "in-domain average", OUT_OF_DOMAIN_AVERAGE: "out-of-domain average"}.get(benchmark,
                                                                                                     benchmark)


def render_cross_model_markdown(rows: list[dict], sources: dict[str, str] | None = None,
                                figure: str | Path | None = None) -> str:
    """cross_model.md from CROSS_MODEL_SCHEMA rows; `sources`: model -> its summary file."""
    models, columns, table = _layout(rows)
    methods = order_methods(m for _, m in table)
    in_domain = [b for b, d in columns if d and b != IN_DOMAIN_AVERAGE]
    out_domain = [b for b, d in columns if not d and b != OUT_OF_DOMAIN_AVERAGE]
    out = ["# Dr.LLM cross-model report", "",
           f"{len(models)} model(s): {', '.join(models) or '–'}. Methods: "
           f"{', '.join(m for m in methods if m != 'base') or '–'}. In-domain: {', '.join(in_domain) or '–'}. "
           f"Out-of-domain: {', '.join(out_domain) or '–'}.", "",
           "## Accuracy change and layers saved (Tables 3 and 4)", "",
           "`base` rows: mean score in % (95% interval). Method rows: Δ = mean paired score difference to the "
           "same model's `base` on shared examples, in points (95% paired bootstrap interval), `*` when that "
           "interval excludes 0, then · mean layers saved per example (L − executed blocks). `–`: the model's "
           "summary has no such cell; `no base`: the cell exists but the model has no base cell to pair with.", "",
           "Averages cover the domain's benchmarks where the method has a paired Δ (k/N when not all): in-domain "
           "weighted by paired examples (the paper's pooled total), out-of-domain one weight per benchmark; "
           "intervals combine the benchmarks' intervals as independent normal errors.", ""]
    if rows:
        body = [[model, method, *[_cell(table[(model, method)][c]) for c in columns]]
                for model in models for method in methods if (model, method) in table]
        out += [markdown_table(["model", "method", *[_header(b) for b, _ in columns]], body), ""]
        out += ["## Examples per cell", "",
                "n of the method's cell, and in brackets the examples paired with base where they differ.", ""]

        def count(row: dict) -> str:
            if not row["present"]:
                return "–"
            paired = row["n_paired"]
            return str(row["n"]) + ("" if paired == row["n"] else f" ({0 if paired is None else paired})")

        body = [[model, method, *[count(table[(model, method)][c]) for c in columns]]
                for model in models for method in methods if (model, method) in table]
        out += [markdown_table(["model", "method", *[_header(b) for b, _ in columns]], body), ""]
    else:
        out += ["_No report summaries._", ""]
    if sources:
        out += ["## Sources", ""] + [f"- **{model}**: `{path}`" for model, path in sources.items()] + [""]
    if figure is not None:
        name = Path(figure).name
        out += ["## Figure", "", f"![accuracy change vs layers saved]({name})", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------------------

def plot_cross_model(rows: list[dict], path) -> None:
    """Accuracy change (points) vs layers saved: one colour per model, one marker per method; small points per
    benchmark, large ones for the domain averages (filled: in-domain, hollow: out-of-domain) with their 95%
    paired intervals."""
    title = "Accuracy change vs layers saved"
    points = [r for r in rows if r["method"] != "base" and r["present"] and r["delta_vs_base"] is not None]
    if not points:
        return placeholder_figure(path, title, "no method with a paired delta vs base")
    plt = pyplot()
    from matplotlib.lines import Line2D

    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = order_methods(r["method"] for r in points)
    colours = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    markers = "osD^vP*Xph<>"
    colour = {m: colours(i % colours.N) for i, m in enumerate(models)}
    marker = {m: markers[i % len(markers)] for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.axhline(0, color="grey", lw=0.8)
    for r in points:
        x, y = r["mean_layers_saved"], 100 * r["delta_vs_base"]
        if r["is_average"]:
            face = colour[r["model"]] if r["in_domain"] else "white"
            ax.errorbar(x, y, yerr=[[y - 100 * r["delta_ci_low"]], [100 * r["delta_ci_high"] - y]], capsize=3,
                        color=colour[r["model"]], elinewidth=1, ls="none", marker=marker[r["method"]], ms=12,
                        mfc=face, mec="black" if r["in_domain"] else colour[r["model"]], mew=1.4, zorder=3)
        else:
            ax.scatter(x, y, s=28, alpha=0.6, color=colour[r["model"]], marker=marker[r["method"]], zorder=2)
            ax.annotate(r["benchmark"], (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7, alpha=0.7)
    handles = [Line2D([], [], ls="none", marker="o", color=colour[m], label=m) for m in models]
    if len(methods) > 1:
        handles += [Line2D([], [], ls="none", marker=marker[m], color="grey", label=m) for m in methods]
    handles += [Line2D([], [], ls="none", marker="o", ms=10, mfc="grey", mec="black", color="grey",
                       label="in-domain average"),
                Line2D([], [], ls="none", marker="o", ms=10, mfc="white", mec="grey", color="grey",
                       label="out-of-domain average"),
                Line2D([], [], ls="none", marker="o", ms=5, alpha=0.6, color="grey", label="one benchmark")]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set(xlabel="mean layers saved per example", ylabel="accuracy change vs base (points)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------------

def write_cross_model_report(summaries: dict[str, list[dict]], out_dir, in_domain: Iterable[str] | None = None,
                             methods: Iterable[str] | None = None, provenance: dict | None = None,
                             sources: dict[str, str] | None = None) -> dict[str, Path]:
    """Write cross_model.md, .parquet and .png for load_summaries' result into out_dir; return their paths under
    FILES' keys. `provenance` is stored in the Parquet (drllm.core.provenance); `sources`: model -> summary file."""
    rows = cross_model_rows(summaries, in_domain, methods)
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in FILES.items()}
    write_parquet(paths["table"], rows, CROSS_MODEL_SCHEMA, "cross-model table", provenance)
    plot_cross_model(rows, paths["figure"])
    write_text(paths["markdown"], render_cross_model_markdown(rows, sources, paths["figure"]))
    return paths


def build_cross_model_report(entries: Iterable[tuple[str, str | Path]], out_dir,
                             in_domain: Iterable[str] | None = None, methods: Iterable[str] | None = None,
                             provenance: dict | None = None) -> dict[str, Path]:
    """Read the (model name, summary path) entries and write the three files (write_cross_model_report)."""
    entries = list(entries)
    return write_cross_model_report(load_summaries(entries), out_dir, in_domain, methods, provenance,
                                    {name: str(path) for name, path in entries})
