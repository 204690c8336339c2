"""Evaluation cells: one benchmark x one method -> one Parquet file, one row per example (EVAL_SCHEMA).

A cell evaluates a seeded sample of a benchmark's records in one answer format along the paths a method picks:
`base` (every layer), `router` / `router@<p>` (the routed path, with the control knob p), `router@calibrated`
(router@<p> with p read from the calibration file), `static` / `static@<k>` (ShortGPT layer removal, matched to
the router or k layers), `random` / `random@<k>` (random skips, matched to the router or k per example) and
`oracle` (the search run with the gold answer); see drllm.evaluation.baselines.
Every example is graded by the same format code the search uses, so accuracies are comparable across methods.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from drllm.core.artifacts import read_parquet, write_parquet
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.data.entries import EvalEntry
from drllm.formats.answers import AnswerFormat
from drllm.formats.grading import Outcome
from drllm.formats.prompts import Encoded

# One row per example of one cell (benchmark x method). `score` is what the benchmark's metric averages
# (1/0 for accuracy metrics, token F1 for f1); `correct` is the 0/1 grade (exact match for f1).
EVAL_SCHEMA = pa.schema([
    pa.field("benchmark", pa.string(), nullable=False),     # evaluation entry (config eval.benchmarks key)
    pa.field("method", pa.string(), nullable=False),        # parse_method: base, router@<p>, static@<k>, ...
    pa.field("model", pa.string(), nullable=False),
    pa.field("example_id", pa.string(), nullable=False),
    pa.field("example_index", pa.int64(), nullable=False),  # position in the evaluated sample
    pa.field("subset", pa.string()),
    pa.field("level", pa.int64()),
    pa.field("source", pa.string(), nullable=False),        # where the data came from (hub id or packaged file)
    pa.field("format", pa.string(), nullable=False),        # answer format (cloze, letter, boxed, ...)
    pa.field("metric", pa.string(), nullable=False),        # acc_norm | acc | strict_match | exact_match | f1 ...
    pa.field("prediction", pa.string(), nullable=False),
    pa.field("gold", pa.string(), nullable=False),
    pa.field("score", pa.float64(), nullable=False),
    pa.field("correct", pa.bool_(), nullable=False),
    pa.field("path", pa.list_(pa.int16()), nullable=False),  # executed layer ids, in order
    pa.field("counts", pa.list_(pa.int8()), nullable=False),  # per layer: 0 skip, 1 execute, 2 repeat
    pa.field("path_length", pa.int64(), nullable=False),
    pa.field("num_layers", pa.int64(), nullable=False),
    pa.field("layer_applications", pa.int64(), nullable=False),  # blocks computed for this example
    pa.field("new_tokens", pa.int64(), nullable=False),     # generated tokens (0 for log-likelihood formats)
    pa.field("knob", pa.float64()),                         # control knob p (router@p, router@calibrated), else null
    pa.field("threshold", pa.float64()),                    # threshold decision tau (router@t<tau>, certified), else null
    pa.field("read_blocks", pa.float64()),                  # an early confidence read's cost in block-equivalents
    #                                                         (sure), else null: a saving is net of it
    pa.field("seconds", pa.float64(), nullable=False),      # wall time for this example
])


def write_cell(path, rows: list[dict], provenance: dict | None = None) -> None:
    write_parquet(path, sorted(rows, key=lambda r: r["example_index"]), EVAL_SCHEMA, "evaluation cell",
                  provenance)


def read_cell(path) -> list[dict]:
    return read_parquet(path, EVAL_SCHEMA, "evaluation cell").to_pylist()


# --------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------


class EvaluationError(RuntimeError):
    """A cell failed; the message names the benchmark, the method and, when known, the example."""


def gold_text(example) -> str:
    if example.choices:
        return example.choices[example.gold_index]
    return " | ".join(example.answers or [example.answer])


# --------------------------------------------------------------------------------------------------------
# Running one cell
# --------------------------------------------------------------------------------------------------------

@dataclass
class CellContext:
    """What every example of a cell shares."""

    entry: EvalEntry
    method: str
    model: str
    executor: PathExecutor
    tokenizer: object
    answer_format: AnswerFormat
    chat_template: bool = True
    routers: object | None = None  # the loaded RouterStack, for a method that reads the routers


# A policy gives the path, or (path, outcome) when it has evaluated it, or (path, outcome, read cost in
# block-equivalents) when it also read the model's confidence on the way.
PathPolicy = Callable[[int, object, Encoded], "LayerPath | tuple[LayerPath, Outcome] | tuple[LayerPath, Outcome, float]"]


def cell_row(benchmark: str, method: str, model: str, *, example_id: str, example_index: int, subset, level,
             source: str, format: str, metric: str, prediction, gold, score: float, correct: bool, path: LayerPath,
             layer_applications: int, new_tokens: int, knob: float | None, seconds: float,
             threshold: float | None = None, read_blocks: float | None = None) -> dict:
    """One EVAL_SCHEMA row; the path columns (`path`, `counts`, `path_length`, `num_layers`) come from `path`."""
    return {"benchmark": benchmark, "method": method, "model": model, "example_id": example_id,
            "example_index": example_index, "subset": subset, "level": level, "source": source, "format": format,
            "metric": metric, "prediction": prediction, "gold": gold, "score": score, "correct": correct,
            "path": list(path), "counts": path.counts(), "path_length": len(path), "num_layers": path.num_layers,
            "layer_applications": layer_applications, "new_tokens": new_tokens, "knob": knob,
            "threshold": threshold, "read_blocks": read_blocks, "seconds": seconds}


def evaluate_examples(ctx: CellContext, examples: list, policy: PathPolicy, *, done: dict | None = None,
                      on_row: Callable[[dict], None] | None = None, progress: bool = True,
                      knob: float | None = None, threshold: float | None = None) -> list[dict]:
    """Evaluate each example along the path `policy(index, example, encoded)` gives; one EVAL_SCHEMA row each.

    A policy may also return (path, outcome) when it has already evaluated the path (the oracle's search), or
    (path, outcome, read cost) when it read the model's confidence to choose it (sure).
    `done` maps example ids to rows finished earlier (a resumed cell); `on_row` sees each new row.
    """
    from tqdm import tqdm

    done = done or {}
    rows = []
    metric = ctx.answer_format.metric
    bar = tqdm(total=len(examples), desc=f"{ctx.entry.name}/{ctx.method}", unit="ex", disable=not progress,
               mininterval=2.0, file=sys.stderr)
    for index, example in enumerate(examples):
        if example.id in done:
            rows.append(done[example.id])
            bar.update(1)
            continue
        try:
            started = time.perf_counter()
            encoded = ctx.answer_format.encode(example, ctx.tokenizer, chat_template=ctx.chat_template)
            chosen = policy(index, example, encoded)
            read_blocks = None
            if isinstance(chosen, tuple):
                path, outcome, *read = chosen
                read_blocks = float(read[0]) if read else None
            else:
                path = ctx.executor.as_path(chosen)
                outcome, _ = ctx.answer_format.evaluate(ctx.executor, encoded, path)
            seconds = time.perf_counter() - started
        except Exception as exc:  # name the cell and the example, keep the cause
            raise EvaluationError(f"{ctx.entry.name}/{ctx.method}: example {example.id!r} (#{index}) failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        row = cell_row(ctx.entry.name, ctx.method, ctx.model, example_id=example.id, example_index=index,
                       subset=example.subset, level=example.level, source=example.source,
                       format=ctx.answer_format.name, metric=metric, prediction=outcome.prediction,
                       gold=gold_text(example), score=outcome.score, correct=bool(outcome.correct), path=path,
                       layer_applications=int(outcome.layer_applications), new_tokens=int(outcome.new_tokens),
                       knob=knob, seconds=seconds, threshold=threshold, read_blocks=read_blocks)
        rows.append(row)
        if on_row is not None:
            on_row(row)
        bar.update(1)
    bar.close()
    return rows


def cell_accuracy(rows: list[dict]) -> float:
    return float(np.mean([row["score"] for row in rows])) if rows else float("nan")
