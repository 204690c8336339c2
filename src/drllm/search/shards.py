"""Search shards: their schema (here and nowhere else; writers and readers both go through it), I/O, and the
checkpoint a shard job resumes from.

A shard job appends each finished prompt to `<shard>.progress.jsonl` (flushed line by line), so a job that dies
resumes without redoing finished prompts; the Parquet shard is written atomically once the shard is complete and
the checkpoint is then removed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet

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
