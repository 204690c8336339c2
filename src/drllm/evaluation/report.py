"""Report stage: the paper's Tables 3 and 4 from evaluation cells, with 95% intervals, plots and Markdown.

Input: evaluation cells (one Parquet per benchmark x method, drllm.evaluation.cells.EVAL_SCHEMA) and the list of
skipped benchmarks. Output (build_report): report.md, summary.parquet (REPORT_SUMMARY_SCHEMA), frontier.parquet
(FRONTIER_SCHEMA: the accuracy-vs-layers frontier's points) and four PNGs.
Every number is computed from the cells; the bootstrap is seeded so the report is deterministic.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from drllm.core.artifacts import ArtifactError, read_provenance, write_parquet, write_text
from drllm.core.tables import markdown_table
from drllm.evaluation.cells import read_cell
from drllm.evaluation.methods import order_methods
from drllm.evaluation.plots import plot_accuracy_vs_layers, plot_frontier, plot_layer_actions, plot_routing_consensus
from drllm.evaluation.summary import (FRONTIER_SCHEMA, MEAN_BENCHMARK, REPORT_SUMMARY_SCHEMA, frontier_points, joined,
                                      n_label, routing_consensus, scores_by_level, summarize_cells)

FIGURES = ("accuracy_vs_layers", "frontier", "layer_actions", "routing_consensus")


# --------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


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


def describe_oracle(rewards: dict[str, str] | None, benchmarks: Iterable[str]) -> str:
    """The report's oracle line: which reward judged the oracle's paths, per benchmark when they differ."""
    rewards = rewards or {}
    by_reward: dict[str, list[str]] = defaultdict(list)
    for benchmark in sorted(benchmarks):
        by_reward[rewards.get(benchmark, "not recorded")].append(benchmark)
    text = "; ".join(reward if len(by_reward) == 1 else f"{reward} on {', '.join(names)}"
                     for reward, names in sorted(by_reward.items()))
    return (f"`oracle` (reward: {text}): the search run on each item with its gold answer, the shortest path it "
            "judged correct (else every layer); a ceiling, not a method a router can reach.")


def render_markdown(summary: list[dict], skipped: list[dict], figures: Iterable[str | Path],
                    consensus: list[dict] | None = None, empty_cells: Iterable[str] = (),
                    sources: dict[str, list[str]] | None = None, by_level: list[dict] | None = None,
                    frontier: list[dict] | None = None, oracle_rewards: dict[str, str] | None = None,
                    certified: dict | None = None, allocation: dict | None = None) -> str:
    """The report: the certified operating points and the frontier first (what a reader needs to know), then the
    Table 3 / Table 4 equivalents, routing consensus, skipped benchmarks, sources, figures. `oracle_rewards`: benchmark -> the reward its oracle cell used (`cell_oracle_rewards`)."""
    benchmarks = sorted({r["benchmark"] for r in summary})
    methods = order_methods(r["method"] for r in summary)
    cells = {(r["benchmark"], r["method"]): r for r in summary}
    by_bench = {b: [r for r in summary if r["benchmark"] == b] for b in benchmarks}
    models = joined(r["model"] for r in summary) or "–"
    out = ["# Dr.LLM evaluation report", "",
           f"Model: {models}. {len(benchmarks)} benchmark(s), {len(methods)} method(s), {len(summary)} cell(s).", ""]

    if certified is not None:
        out += certification_lines(certified, [r for r in summary if r["method"] == "router@certified"])
    if allocation is not None:
        from drllm.evaluation.allocation_stage import certified_summary as allocation_summary

        out += certification_lines(allocation.get("certified"), [r for r in summary if r["method"] == "sure@certified"],
                                   "sure@certified", allocation_summary(allocation))

    mean_points = [p for p in frontier or [] if p["benchmark"] == MEAN_BENCHMARK]
    if mean_points:
        out += ["## Accuracy vs layers frontier", "",
                "Per method, the unweighted mean over the in-domain benchmarks that have it (all of its "
                "benchmarks when none is in domain) of the mean executed layers and the score in % ± half-width "
                "of the 95% interval; per benchmark in "
                "`frontier.parquet` and `frontier.png`.", ""]
        body = [[p["method"], str(p["benchmarks"]), f"{p['mean_layers']:.1f}",
                 f"{_pct(p['score'])} ±{_pct((p['ci_high'] - p['ci_low']) / 2)}"] for p in mean_points]
        out += [markdown_table(["method", "benchmarks", "layers", "score"], body), ""]
        figures = list(figures)
        if any(Path(f).name == "frontier.png" for f in figures):
            out += ["![frontier](frontier.png)", ""]

    out += ["## Accuracy (Table 3)", "",
            "Mean score in % ± half-width of the 95% interval (Wilson for 0/1 scores, seeded bootstrap otherwise); "
            "Δ = mean paired difference to `base` on shared examples in points, `*` when its 95% paired "
            "bootstrap interval excludes 0. n = examples per cell.", ""]
    if summary:
        body = [[b, joined(r["metric"] for r in by_bench[b]), n_label([r["n"] for r in by_bench[b]])]
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
        if "oracle" in methods:
            out += [describe_oracle(oracle_rewards, [b for b in benchmarks if (b, "oracle") in cells]), ""]
    else:
        out += ["_No evaluation results._", ""]

    out += ["## Layers (Table 4)", "",
            "Mean executed layers per example (path length, repeats counted), and in brackets the layer "
            "applications relative to `base` summed over shared examples. L = layers of the model.", ""]
    if summary:
        body = [[b, joined(r["num_layers"] for r in by_bench[b])]
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


def certification_lines(certified: dict | None, cells: list[dict], method: str = "router@certified",
                        line: str | None = None) -> list[str]:
    """The certified operating point in one line (`line`, default the routers' calibration summary), then, per
    benchmark with a cell of `method`, the observed drop on the test items next to the certified bound (layers
    saved net of any confidence read)."""
    from drllm.calibration.calibration import certified_summary

    out = [f"## Certified operating point ({method})", "", line or certified_summary(certified), ""]
    if certified is None:
        return out
    cert = certified["certificate"]
    if cells and cert["loss"] == "accuracy_drop":
        body = []
        for row in sorted(cells, key=lambda r: r["benchmark"]):
            drop = None if row["delta_vs_base"] is None else -row["delta_vs_base"]
            held = "–" if drop is None else ("yes" if drop <= cert["epsilon"] + 1e-12 else "**no**")
            body.append([row["benchmark"], str(row["n"]), "–" if drop is None else f"{100 * drop:+.2f}",
                         f"{row['mean_layers_saved']:.2f}", held])
        out += ["Observed on the test items (the guarantee covers prompts from the calibration sets' distribution, "
                "i.e. the in-domain benchmarks):", "",
                markdown_table(["benchmark", "n", "accuracy drop (points)", "layers saved",
                                f"drop <= {100 * cert['epsilon']:g}"], body), ""]
    return out


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
    rows, empty, _ = _read_cells(cell_paths)
    return rows, empty


def _read_cells(cell_paths: Iterable[str | Path]) -> tuple[list[dict], list[str], dict[tuple[str, str], str]]:
    """load_cells, and each non-empty cell's path by (benchmark, method)."""
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
        seen[key] = str(path)
        ids = Counter(r["example_id"] for r in cell)
        repeated = [i for i, k in ids.items() if k > 1]
        if repeated:  # the paired deltas match examples by id
            raise ArtifactError(f"evaluation cell {path} repeats example_id(s) {repeated[:5]}")
        rows.extend(cell)
    return rows, empty, seen


def cell_oracle_rewards(cell_paths: Iterable[str | Path]) -> dict[str, str]:
    """benchmark -> the reward that judged its oracle cell's paths, read from the cell's provenance (the settings'
    `oracle.reward`, which the rules fill with search.reward). An oracle cell recorded without one used the binary
    reward (the code before the reward was passed); cells without provenance are left out ("not recorded")."""
    from drllm.search.rewards import RewardConfig

    rewards = {}
    for path in cell_paths:
        record = read_provenance(path, "evaluation cell")
        config = (record or {}).get("config") or {}
        if not isinstance(config, dict) or config.get("method") != "oracle":
            continue
        oracle = (config.get("settings") or {}).get("oracle") or {}
        name = (config.get("entry") or {}).get("name")
        if name is not None:
            rewards[name] = RewardConfig.from_dict(oracle.get("reward")).describe()
    return rewards


def build_report(cell_paths: Iterable[str | Path], skipped: list[dict], out_dir, seed: int = 0,
                 in_domain: Iterable[str] | None = None, provenance: dict | None = None,
                 certified: dict | None = None, allocation: dict | None = None) -> dict:
    """Read the cells, write report.md, summary.parquet, frontier.parquet and the PNGs into out_dir; return their
    paths. `in_domain`: the benchmarks the frontier figure shows panels for (None = every benchmark);
    `provenance`: stored in both Parquet tables (drllm.core.provenance); `certified`: the calibration file's
    `certified` object (router@certified), shown with the observed drops; `allocation`: the allocation file
    (sure@certified), the same way."""
    skipped = validate_skipped(skipped)
    cell_paths = list(cell_paths)
    rows, empty, cells = _read_cells(cell_paths)
    summary = summarize_cells(rows, seed=seed)
    frontier = frontier_points(summary, in_domain)
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.png" for name in FIGURES}
    for name, plot, data, methods in [
            ("accuracy_vs_layers", plot_accuracy_vs_layers, summary, {r["method"] for r in summary}),
            ("frontier", plot_frontier, frontier, {p["method"] for p in frontier}),
            ("layer_actions", plot_layer_actions, rows, {"router"}),
            ("routing_consensus", plot_routing_consensus, rows, {"router"})]:
        try:
            plot(data, paths[name])
        except Exception as exc:  # a combination the figure cannot draw is named like bad input, not a traceback
            drawn = sorted(path for (_, method), path in cells.items() if method in methods)
            raise ArtifactError(f"report figure {name}.png cannot draw method(s) {order_methods(methods)} "
                                f"of cell(s) {drawn}: {type(exc).__name__}: {exc}") from exc
    paths["summary"] = out_dir / "summary.parquet"
    write_parquet(paths["summary"], summary, REPORT_SUMMARY_SCHEMA, "report summary", provenance)
    paths["frontier_points"] = out_dir / "frontier.parquet"
    write_parquet(paths["frontier_points"], frontier, FRONTIER_SCHEMA, "frontier points", provenance)
    paths["report"] = out_dir / "report.md"
    write_text(paths["report"], render_markdown(summary, skipped, [paths[n] for n in FIGURES],
                                                consensus=routing_consensus(rows), empty_cells=empty,
                                                sources=_sources(rows), by_level=scores_by_level(rows),
                                                frontier=frontier, oracle_rewards=cell_oracle_rewards(cell_paths),
                                                certified=certified, allocation=allocation))
    return paths
