"""The benchmark record every loader produces: `Example`, its Parquet schema (EXAMPLE_SCHEMA) and I/O."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import pyarrow as pa

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet


class DataUnavailableError(ArtifactError):
    """A benchmark's data cannot be had here: no offline copy and no hub config (or a package is missing)."""


# --------------------------------------------------------------------------------------------------------
# The record and its Parquet schema
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    """One benchmark question in the uniform schema (see EXAMPLE_SCHEMA)."""

    id: str
    benchmark: str
    split: str
    question: str
    context: str | None = None
    choices: list[str] = field(default_factory=list)
    gold_index: int = -1
    answer: str = ""
    answers: list[str] = field(default_factory=list)
    subset: str | None = None
    level: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = f"example {self.benchmark}/{self.split}/{self.id}"
        for name in ("id", "benchmark", "split", "question", "answer", "source"):
            if not isinstance(getattr(self, name), str):
                raise ArtifactError(f"{where}: {name} must be a string, got {getattr(self, name)!r}")
        for name in ("id", "benchmark", "split", "source"):
            if not getattr(self, name):
                raise ArtifactError(f"{where}: {name} is empty")
        for name in ("context", "subset"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ArtifactError(f"{where}: {name} must be a string or None")
        for name in ("choices", "answers"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ArtifactError(f"{where}: {name} must be a list of strings, got {value!r}")
        if isinstance(self.gold_index, bool) or not isinstance(self.gold_index, int):
            raise ArtifactError(f"{where}: gold_index must be an int")
        if self.choices:
            if not 0 <= self.gold_index < len(self.choices):
                raise ArtifactError(f"{where}: gold_index {self.gold_index} outside 0..{len(self.choices) - 1}")
            if self.answer != self.choices[self.gold_index]:
                raise ArtifactError(f"{where}: answer is not the gold choice's text")
        elif self.gold_index != -1:
            raise ArtifactError(f"{where}: gold_index must be -1 when there are no choices")
        if self.level is not None and (isinstance(self.level, bool) or self.level not in range(1, 6)):
            raise ArtifactError(f"{where}: level must be 1..5 or None, got {self.level!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EXAMPLE_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("benchmark", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("context", pa.string(), nullable=True),
    pa.field("choices", pa.list_(pa.string()), nullable=False),
    pa.field("gold_index", pa.int64(), nullable=False),
    pa.field("answer", pa.string(), nullable=False),
    pa.field("answers", pa.list_(pa.string()), nullable=False),
    pa.field("subset", pa.string(), nullable=True),
    pa.field("level", pa.int64(), nullable=True),
    pa.field("source", pa.string(), nullable=False),
])


def write_examples(path: str | os.PathLike, examples: Iterable[Example], provenance: dict | None = None) -> None:
    """Write examples atomically as Parquet, validated against EXAMPLE_SCHEMA."""
    examples = list(examples)
    for ex in examples:
        if not isinstance(ex, Example):
            raise ArtifactError(f"examples: expected Example records, got {type(ex).__name__}")
    check_unique_ids(examples, "examples")
    write_parquet(path, [ex.to_dict() for ex in examples], EXAMPLE_SCHEMA, "examples", provenance)


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read a Parquet file written by write_examples; raise ArtifactError if it breaks the schema."""
    table = read_parquet(path, EXAMPLE_SCHEMA, "examples")
    examples = [Example(**row) for row in table.to_pylist()]
    check_unique_ids(examples, f"examples {path}")
    return examples


def check_unique_ids(examples: list[Example], what: str) -> None:
    """ArtifactError on a repeated (benchmark, split, id); `what` names the records in the message."""
    seen: set[tuple[str, str, str]] = set()
    for ex in examples:
        key = (ex.benchmark, ex.split, ex.id)
        if key in seen:
            raise ArtifactError(f"{what}: duplicate id {ex.id!r} in {ex.benchmark}/{ex.split}")
        seen.add(key)


def describe_examples(examples: list[Example]) -> str:
    """One line: count, benchmark/split, and source(s)."""
    if not examples:
        return "0 examples"
    sources = sorted({ex.source for ex in examples})
    where = sources[0] if len(sources) == 1 else f"{len(sources)} sources, e.g. {sources[0]}"
    return f"{len(examples)} examples of {examples[0].benchmark}/{examples[0].split} from {where}"
