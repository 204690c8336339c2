"""Search artifacts: the prompt sets, the per-shard results, their checkpoints and the Table 2 summary.

Schemas live here and nowhere else; writers and readers both go through them.

A shard job appends each finished prompt to `<shard>.progress.jsonl` (flushed line by line), so a job that dies
resumes without redoing finished prompts; the Parquet shard is written atomically once the shard is complete and
the checkpoint is then removed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet
from drllm.core.blocks import check_keys
from drllm.core.seeds import derived_seed
from drllm.data.examples import EXAMPLE_SCHEMA, Example

PROMPT_SCHEMA = pa.schema(
    [pa.field("task", pa.string(), nullable=False), pa.field("format", pa.string(), nullable=False),
     pa.field("prompt_index", pa.int64(), nullable=False)] + list(EXAMPLE_SCHEMA))

EVALUATED = pa.struct([pa.field("path", pa.string()), pa.field("reward", pa.float32())])
SHARD_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt_index", pa.int64(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("benchmark", pa.string(), nullable=False),
    pa.field("subset", pa.string()),
    pa.field("level", pa.int64()),
    pa.field("prompt_hash", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("num_layers", pa.int64(), nullable=False),
    pa.field("default_correct", pa.bool_(), nullable=False),
    pa.field("kept", pa.bool_(), nullable=False),               # a correct path exists: a training sample
    pa.field("best_path", pa.list_(pa.int16())),                # layer ids of the label path (null if not kept)
    pa.field("labels", pa.list_(pa.int8())),                    # per-layer counts 0/1/2 (null if not kept)
    pa.field("labels_check", pa.list_(pa.int8())),              # the label of a second seed (search.seed_check);
    #                                                             null: not checked, or that search kept nothing
    pa.field("best_length", pa.int64()),
    pa.field("layers_saved", pa.int64()),                       # num_layers - best_length
    pa.field("wrong_to_correct", pa.bool_(), nullable=False),
    pa.field("prediction_default", pa.string()),
    pa.field("prediction_best", pa.string()),
    pa.field("simulations", pa.int64(), nullable=False),
    pa.field("evaluations", pa.int64(), nullable=False),       # distinct paths evaluated
    pa.field("forward_passes", pa.int64(), nullable=False),    # model calls: prefill + decode steps
    pa.field("layer_applications", pa.int64(), nullable=False),  # blocks computed, prefix reuse included
    pa.field("layer_applications_full", pa.int64(), nullable=False),  # the same without prefix reuse
    pa.field("evaluated", pa.list_(EVALUATED)),                 # every evaluated path with its reward
    pa.field("max_fanout", pa.int64(), nullable=False),
    pa.field("max_depth", pa.int64(), nullable=False),
    pa.field("reward", pa.string(), nullable=False),           # which reward judged the paths (drllm.search.rewards)
    pa.field("labeler", pa.string(), nullable=False),          # mcts | safety (drllm.search.safety)
    pa.field("layer_safety", pa.list_(pa.float32())),           # safety: 1.0 where skipping the block alone is acceptable
    pa.field("wall_seconds", pa.float64(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("search_config", pa.string(), nullable=False),     # JSON of the search settings
])
TIMING_COLUMNS = ("wall_seconds",)

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
# The paper's Table 2 figures for its 4,000 kept samples (METHOD.md §4), shown beside ours.
PAPER_LABEL_STATS = {"mean_layers_saved": 1.82, "wrong_to_correct_share": 0.30, "skip_share": 0.035,
                     "execute_share": 0.954, "repeat_share": 0.011}


def example_from_row(row: dict) -> Example:
    """The benchmark record a prompt row carries (PROMPT_SCHEMA holds every EXAMPLE_SCHEMA column)."""
    return Example(**{name: row[name] for name in EXAMPLE_SCHEMA.names})


@dataclass(frozen=True)
class PromptEncoding:
    """The search's `formats` (per-format options) and `chat_template` (None: the model's own), which the router
    samples and the block influence read too, so they encode every prompt row as the search did."""

    formats: dict = field(default_factory=dict)
    chat_template: bool | None = None

    @classmethod
    def from_dict(cls, block: dict | None) -> "PromptEncoding":
        block = dict(block or {})
        check_keys("prompt encoding settings", block, ("formats", "chat_template"))
        encoding = cls(**block)
        if not isinstance(encoding.formats, dict):
            raise ValueError(f"search.formats must be a mapping of format options, got {encoding.formats!r}")
        if encoding.chat_template is not None and not isinstance(encoding.chat_template, bool):
            raise ValueError(f"search.chat_template must be true, false or null, got {encoding.chat_template!r}")
        return encoding


def encode_prompt_row(row: dict, tokenizer, formats: dict, chat_template: bool):
    """(answer format, encoded prompt) of a prompt row exactly as the search reads it: the row's `format` with its
    options from `formats` (search.formats). The search, the router samples and the block influence use this one
    encoding, so `prompt_hash` matches between them."""
    from drllm.formats.answers import get_format

    answer_format = get_format(row["format"], **formats.get(row["format"], {}))
    return answer_format, answer_format.encode(example_from_row(row), tokenizer, chat_template=chat_template)


def write_prompts(path, rows: list[dict], provenance: dict | None = None) -> None:
    write_parquet(path, rows, PROMPT_SCHEMA, "prompt set", provenance)


def read_prompts(path) -> list[dict]:
    return read_parquet(path, PROMPT_SCHEMA, "prompt set").to_pylist()


def write_shard(path, rows: list[dict], provenance: dict | None = None) -> None:
    write_parquet(path, sorted(rows, key=lambda r: r["prompt_index"]), SHARD_SCHEMA, "search shard", provenance)


def seed_check_ids(rows: list[dict], count: int) -> set[str]:
    """The ids of a shard's first `count` prompts by prompt_index: those `search.seed_check` searches twice."""
    return {row["id"] for row in sorted(rows, key=lambda r: r["prompt_index"])[:count]}


def read_shard(path, model: str | None = None, num_layers: int | None = None) -> list[dict]:
    """Read a shard; with `model`/`num_layers`, reject shards written for another model. A shard written before
    `labels_check` existed reads with it null (nothing was checked)."""
    try:
        before_check = "labels_check" not in pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid):
        before_check = False  # read_parquet below names the missing or unreadable file
    if before_check:
        before = SHARD_SCHEMA.remove(SHARD_SCHEMA.get_field_index("labels_check"))
        rows = [{**row, "labels_check": None} for row in read_parquet(path, before, "search shard").to_pylist()]
    else:
        rows = read_parquet(path, SHARD_SCHEMA, "search shard").to_pylist()
    for row in rows:
        if model is not None and row["model"] != model:
            raise ArtifactError(f"search shard {path} is from model {row['model']!r}, expected {model!r}")
        if num_layers is not None and row["num_layers"] != num_layers:
            raise ArtifactError(f"search shard {path} has {row['num_layers']} layers, expected {num_layers}")
    return rows


class Checkpoint:
    """Append-only record of finished rows (prompts of a shard, examples of a cell); the first line fingerprints
    the job, `key` names the column that identifies a row."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], key: str = "prompt_id"):
        self.path, self.key = Path(path), key
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self.rows: dict[str, dict] = {}
        self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self._handle = open(self.path, "a")
        if fresh:
            self._write_line({"fingerprint": self.fingerprint})

    def _load(self) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("fingerprint") != self.fingerprint:  # another model/config/prompt set: start over
            self.path.unlink()
            return
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that prompt is redone
                continue
            self.rows[row[self.key]] = row

    def _write_line(self, obj: dict) -> None:
        self._handle.write(json.dumps(obj) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def add(self, row: dict) -> None:
        self.rows[row[self.key]] = row
        self._write_line(row)

    def close(self, remove: bool = False) -> None:
        self._handle.close()
        if remove and self.path.exists():
            self.path.unlink()


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


def select_prompts(records: list[dict], task: str, answer_format: str, samples: int, seed: int,
                   levels: list[int] | None = None) -> list[dict]:
    """A seeded sample of `samples` records (all if fewer), optionally only some levels, in a stable order."""
    import numpy as np

    if samples < 1:
        raise ArtifactError(f"search task {task!r}: samples must be >= 1, got {samples}")
    if levels:
        records = [r for r in records if r["level"] in set(levels)]
    if not records:
        raise ArtifactError(f"search task {task!r}: no records left to sample (levels {levels})")
    order = np.random.default_rng(derived_seed(seed, task)).permutation(len(records))[:samples]
    return [{**records[i], "task": task, "format": answer_format, "prompt_index": index}
            for index, i in enumerate(sorted(order))]
