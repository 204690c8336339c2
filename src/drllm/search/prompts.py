"""Search prompt sets: the seeded selection of a task's prompts (`select_prompts`), their Parquet schema and I/O,
and a prompt row's encoding exactly as the search reads it (`encode_prompt_row`, `PromptEncoding`), shared by the
router samples and the block influence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet
from drllm.core.blocks import check_keys
from drllm.core.seeds import derived_seed
from drllm.data.examples import EXAMPLE_SCHEMA, Example

PROMPT_SCHEMA = pa.schema(
    [pa.field("task", pa.string(), nullable=False), pa.field("format", pa.string(), nullable=False),
     pa.field("prompt_index", pa.int64(), nullable=False)] + list(EXAMPLE_SCHEMA))


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
