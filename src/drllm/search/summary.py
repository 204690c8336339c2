"""The search summary: the paper's Table 2 per task from the shards' rows, with the label agreement across seeds;
its Parquet schema and its markdown.
"""
from __future__ import annotations

from typing import Iterable

import pyarrow as pa

from drllm.core.artifacts import ArtifactError, write_parquet

SEARCH_SUMMARY_SCHEMA = pa.schema([
    pa.field("task", pa.string(), nullable=False),
    pa.field("prompts", pa.int64(), nullable=False),
    pa.field("kept_samples", pa.int64(), nullable=False),
    pa.field("default_correct", pa.int64(), nullable=False),
    pa.field("visited_paths", pa.int64(), nullable=False),
    pa.field("forward_passes", pa.int64(), nullable=False),
    pa.field("layer_applications", pa.int64(), nullable=False),
    pa.field("wrong_to_correct_share", pa.float64(), nullable=False),
    pa.field("mean_layers_saved", pa.float64(), nullable=False),
    pa.field("skip_share", pa.float64(), nullable=False),
    pa.field("execute_share", pa.float64(), nullable=False),
    pa.field("repeat_share", pa.float64(), nullable=False),
    pa.field("reward", pa.string(), nullable=False),           # the reward(s) that judged the task's paths
    pa.field("seed_checked", pa.int64(), nullable=False),      # prompts with a label from both seeds
    pa.field("label_agreement", pa.float64()),                 # mean share of layers with equal counts (null: none)
    pa.field("deviation_jaccard", pa.float64()),               # mean Jaccard of the layers with count != 1
])
ALL_TASKS = "all"  # the summary row over every task
# The paper's Table 2 figures for its 4,000 kept samples (docs/method.md#the-search), shown beside ours.
PAPER_LABEL_STATS = {"mean_layers_saved": 1.82, "wrong_to_correct_share": 0.30, "skip_share": 0.035,
                     "execute_share": 0.954, "repeat_share": 0.011}


def label_agreement(first: list[int], second: list[int]) -> tuple[float, float]:
    """(share of layers whose count is equal in both labels, Jaccard of their sets of layers with count != 1;
    1.0 when neither deviates from the default)."""
    if len(first) != len(second):
        raise ArtifactError(f"labels of different lengths cannot be compared: {first} and {second}")
    equal = sum(a == b for a, b in zip(first, second)) / max(1, len(first))
    one = {layer for layer, count in enumerate(first) if count != 1}
    two = {layer for layer, count in enumerate(second) if count != 1}
    return equal, (len(one & two) / len(one | two)) if one | two else 1.0


def _summary_row(task: str, task_rows: list[dict]) -> dict:
    kept = [r for r in task_rows if r["kept"]]
    labels = [count for r in kept for count in r["labels"]]
    total = max(1, len(labels))
    pairs = [label_agreement(r["labels"], r["labels_check"]) for r in task_rows
             if r["labels"] is not None and r.get("labels_check") is not None]
    return {
        "task": task,
        "prompts": len(task_rows),
        "kept_samples": len(kept),
        "default_correct": sum(r["default_correct"] for r in task_rows),
        "visited_paths": sum(len(r["evaluated"]) for r in task_rows),
        "forward_passes": sum(r["forward_passes"] for r in task_rows),
        "layer_applications": sum(r["layer_applications"] for r in task_rows),
        "wrong_to_correct_share": (sum(r["wrong_to_correct"] for r in kept) / len(kept)) if kept else 0.0,
        "mean_layers_saved": (sum(r["layers_saved"] for r in kept) / len(kept)) if kept else 0.0,
        "skip_share": labels.count(0) / total,
        "execute_share": labels.count(1) / total,
        "repeat_share": labels.count(2) / total,
        "reward": " + ".join(sorted({r["reward"] for r in task_rows})),
        "seed_checked": len(pairs),
        "label_agreement": sum(p[0] for p in pairs) / len(pairs) if pairs else None,
        "deviation_jaccard": sum(p[1] for p in pairs) / len(pairs) if pairs else None,
    }


def summarize_search(rows: Iterable[dict]) -> list[dict]:
    """The paper's Table 2 per task (kept samples, visited paths, forward passes, W->C share, layers saved,
    label mix), then one row `all` over every task (the label statistics to hold against the paper's). Beside
    them, the label agreement across seeds over the prompts with a label from both (`labels`, `labels_check`):
    `seed_checked`, `label_agreement` (mean share of layers with equal counts) and `deviation_jaccard` (mean
    Jaccard of the sets of layers with count != 1); null without such prompts."""
    rows = list(rows)
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    if ALL_TASKS in by_task:
        raise ArtifactError(f"a search task may not be named {ALL_TASKS!r} (the summary's total row)")
    summary = [_summary_row(task, by_task[task]) for task in sorted(by_task)]
    if rows:
        summary.append(_summary_row(ALL_TASKS, rows))
    return summary


def write_summary(path, summary: list[dict], provenance: dict | None = None) -> None:
    write_parquet(path, summary, SEARCH_SUMMARY_SCHEMA, "search summary", provenance)


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def format_summary(summary: list[dict]) -> str:
    """Markdown Table 2, with the paper's label statistics as the last row, and the label agreement across seeds
    (seed-checked prompts, share of equal layer counts, Jaccard of the deviating layers)."""
    header = ("| task | prompts | kept | default correct | visited paths | forward passes | W->C share | "
              "mean layers saved | skip/exec/repeat % | reward | seed-checked | label agreement | "
              "deviation Jaccard |")
    lines = [header, "|" + "---|" * 13]
    for s in summary:
        lines.append(f"| {s['task']} | {s['prompts']} | {s['kept_samples']} | {s['default_correct']} | "
                     f"{s['visited_paths']} | {s['forward_passes']} | {s['wrong_to_correct_share']:.2f} | "
                     f"{s['mean_layers_saved']:.2f} | {100 * s['skip_share']:.1f}/{100 * s['execute_share']:.1f}/"
                     f"{100 * s['repeat_share']:.1f} | {s['reward']} | {s['seed_checked']} | "
                     f"{_share(s['label_agreement'])} | {_share(s['deviation_jaccard'])} |")
    paper = PAPER_LABEL_STATS
    lines.append(f"| paper (4,000 samples) | | 4000 | | | | {paper['wrong_to_correct_share']:.2f} | "
                 f"{paper['mean_layers_saved']:.2f} | {100 * paper['skip_share']:.1f}/"
                 f"{100 * paper['execute_share']:.1f}/{100 * paper['repeat_share']:.1f} | binary | | | |")
    lines += ["", "Label agreement across seeds: on the seed-checked prompts (`search.seed_check` per shard) with a "
              "label from both seeds, the mean share of layers whose count is equal in both labels, and the mean "
              "Jaccard of their sets of skipped or repeated layers (1 when neither deviates)."]
    return "\n".join(lines)
