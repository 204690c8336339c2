"""The report's statistics: one summary row per benchmark x method (score, 95% interval, paired difference to
the base model, layers), the accuracy/compute frontier, per-layer action shares and routing consensus."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Iterable

import numpy as np
import pyarrow as pa

from drllm.core.cli import json_argument
from drllm.evaluation.methods import (frontier_line, is_frontier_point, method_knob, method_sort_key,
                                      order_methods, sweep_param)
from drllm.evaluation.metrics import bootstrap_interval, wilson_interval

Z95 = 1.959963984540054          # two-sided 95% normal quantile
RESAMPLES = 2000                 # bootstrap resamples per interval
ACTIONS = ("skip", "execute", "repeat")
MEAN_BENCHMARK = "(mean)"        # the frontier's across-benchmark rows (config names cannot hold parentheses)

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
    pa.field("mean_layers_saved", pa.float64(), nullable=False),  # L - path_length - read_blocks, averaged
    pa.field("read_blocks", pa.float64(), nullable=False),   # a confidence read's cost in block-equivalents (sure)
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
    pa.field("method", pa.string(), nullable=False),         # router@p, static@k, random@k, or a single frontier point
    pa.field("line", pa.string()),                           # router@p | static@k | random@k; null = single marker
    pa.field("param", pa.float64()),                         # p of router@p, k of static@k / random@k, else null
    pa.field("in_domain", pa.bool_(), nullable=False),       # benchmark drawn from the search tasks' benchmarks
    pa.field("mean_layers", pa.float64(), nullable=False),   # mean executed layers per example (path length), plus
    #                                                          a confidence read's cost in block-equivalents
    pa.field("score", pa.float64(), nullable=False),
    pa.field("ci_low", pa.float64(), nullable=False),        # 95% interval of the score
    pa.field("ci_high", pa.float64(), nullable=False),
    pa.field("n", pa.int64(), nullable=False),               # examples (summed over benchmarks for the mean)
    pa.field("benchmarks", pa.int64(), nullable=False),      # benchmarks averaged (1 for a benchmark's row)
])


def _is_binary(values) -> bool:
    return all(v in (0.0, 1.0) for v in values)


# --------------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------------

def joined(values) -> str:
    """The distinct non-null values, sorted, as one comma-separated cell."""
    return ", ".join(sorted({str(v) for v in values if v is not None}))


def _group(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["benchmark"], row["method"])].append(row)
    for cell in groups.values():  # a fixed example order keeps the seeded bootstrap independent of input order
        cell.sort(key=lambda r: (r["example_index"], r["example_id"]))
    return groups


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
        reads = np.array([r.get("read_blocks") or 0.0 for r in cell], dtype=np.float64)
        row = {
            "benchmark": benchmark, "method": method,
            "knob": method_knob(method, knob) if method.startswith("router@") else knob,
            "model": joined(r["model"] for r in cell), "metric": joined(r["metric"] for r in cell),
            "source": joined(r["source"] for r in cell), "n": len(cell),
            "score": float(scores.mean()), "ci_low": ci[0], "ci_high": ci[1], "ci_method": ci_method,
            "num_layers": int(layers.max()),
            "mean_path_length": float(paths.mean()), "mean_layers_saved": float((layers - paths - reads).mean()),
            "read_blocks": float(reads.mean()),
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


def frontier_points(summary: list[dict], in_domain: Iterable[str] | None = None) -> list[dict]:
    """FRONTIER_SCHEMA rows from summary rows: the swept methods and the single points (base, router, file points,
    oracle), per benchmark and averaged (over a method's in-domain benchmarks; over all of its benchmarks when it has
    no in-domain one).

    `in_domain` names the benchmarks the routers were trained on (None: unknown, every benchmark counts as such).
    """
    chosen = [r for r in summary if frontier_line(r["method"]) is not None or is_frontier_point(r["method"])]
    domain = None if in_domain is None else set(in_domain)
    points = [{"benchmark": r["benchmark"], "method": r["method"], "line": frontier_line(r["method"]),
               "param": sweep_param(r["method"]), "in_domain": domain is None or r["benchmark"] in domain,
               "mean_layers": r["mean_path_length"] + r.get("read_blocks", 0.0), "score": r["score"],
               "ci_low": r["ci_low"],
               "ci_high": r["ci_high"], "n": r["n"], "benchmarks": 1} for r in chosen]
    by_method: dict[str, list[dict]] = defaultdict(list)
    for point in points:
        by_method[point["method"]].append(point)
    for method in order_methods(by_method):
        # the mean over the in-domain benchmarks (the figure's panels), so methods evaluated on more benchmarks
        # (base, out of domain too) and frontier sweeps (in domain only) are averaged over the same ones
        rows = [r for r in by_method[method] if r["in_domain"]] or by_method[method]
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


def n_label(ns: list[int]) -> str:
    """An example count for a table cell: the count, or min–max when they differ."""
    return str(ns[0]) if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"


def scores_by_level(rows: list[dict]) -> list[dict]:
    """Mean score per benchmark x level x method, for benchmarks with two or more levels."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("level") is not None:
            groups[row["benchmark"], row["level"], row["method"]].append(row["score"])
    multi = {b for b in {k[0] for k in groups} if len({k[1] for k in groups if k[0] == b}) > 1}
    return [{"benchmark": b, "level": level, "method": m, "n": len(v), "score": float(np.mean(v))}
            for (b, level, m), v in sorted(groups.items()) if b in multi]


def parse_in_domain(text: str) -> list[str] | None:
    """The report scripts' --in-domain-json: null (every benchmark) or a JSON list of benchmark names."""
    return json_argument(text, "--in-domain-json", list, null=True, items=str, what="a list of benchmark names")
