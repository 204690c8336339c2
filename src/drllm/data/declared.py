"""Benchmarks declared in the config only: a `data.<name>` block with a `kind` becomes Example records.

    data:
      my_mc:
        kind: multiple_choice                  # multiple_choice | qa | math
        source: {path: data/my_mc.jsonl}       # .jsonl .json .csv .parquet, or {hub: owner/name, config, split, ...}
        fields: {question: q, choices: options, answer: gold}
        answer_format: index                   # multiple_choice: index (0-based) | letter | text | label
        splits: [train, test]
        partition: {train: 0.5, test: 0.5}     # one source split into disjoint parts by a hash of the question

Fields (`fields.<field>: <column>`; dotted paths such as ``choices.text`` reach into nested objects, a name
matches case-insensitively):

* multiple_choice: `question`, `choices` (a list column, or a list of columns, one per option), `answer`
  (read as `answer_format` says; `label` looks the answer up in the `labels` column, ARC's answerKey style);
  optional `id`, `context`, `subset`, `labels`.
* qa (open-ended, F1 / exact match): `question`, `answer` (a string or a list of accepted answers); optional `id`,
  `context`, `subset`.
* math (final answer, math-verify): `question` and `answer` (the final answer) or `solution` (its last
  ``\\boxed{}`` is the answer); optional `id`, `subset`, `level` (1-5 or 'Level 3').

A mapped field must exist in every row; a required field must be non-empty, an optional one may be null.
Ids are the `id` column, else the row's position in the source (00000, 00001, ...), so they stay stable
whichever part of a partition the row lands in.

Splits: with `partition`, every split reads the one source and keeps the rows whose question hashes into its
share (sha256 of the question text, as the DART stand-in's `dart_half`: a repeated question lands in one part
only). Without it each split reads its own data: `{split}` in `source.path` (or the hub `split`, which defaults
to the split's name) is replaced by the split's name. Several splits reading the same data without a partition
are refused (search and evaluation would share items).

Every error names the config key (`data.my_mc.fields.answer`), and for a row the file and the row (`line N` of a
JSON-lines or CSV file, `row N` (1-based) of a JSON array, Parquet file or hub dataset).
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from drllm.core.artifacts import ArtifactError
from drllm.core.blocks import check_keys
from drllm.data.examples import DataUnavailableError, Example
from drllm.data.mappers import last_boxed, lookup, parse_level, unique
from drllm.core.seeds import stable_hash

KINDS = {
    # kind: (required fields, optional fields)
    "multiple_choice": (("question", "choices", "answer"), ("id", "context", "subset", "labels")),
    "qa": (("question", "answer"), ("id", "context", "subset")),
    "math": (("question",), ("id", "subset", "level", "answer", "solution")),
}
# Which answer formats (drllm.formats.answers) read each kind's records.
KIND_FORMATS = {"multiple_choice": ("cloze", "listed", "letter"), "qa": ("qa",), "math": ("boxed", "gsm8k")}
ANSWER_FORMATS = ("index", "letter", "text", "label")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SOURCE_KEYS = {"path", "hub", "config", "split", "revision", "data_files"}
BLOCK_KEYS = {"kind", "source", "fields", "answer_format", "splits", "partition"}
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class BenchmarkConfigError(ArtifactError):
    """A `data.<name>` block or the data it points to does not fit: the message names the key, file and row."""


def is_config_declared(block: Any) -> bool:
    """A `data.<name>` block that declares its own benchmark (a `kind`), rather than configuring a built-in."""
    return isinstance(block, dict) and "kind" in block


@dataclass(frozen=True)
class Source:
    """Where the rows come from: a local file (`path`) or a hub dataset (`hub`, loaded by datasets)."""

    path: str | None = None
    hub: str | None = None
    config: str | None = None       # the hub dataset's configuration (load_dataset's `name`)
    split: str | None = None        # the hub split; None = the split being prepared
    revision: str | None = None
    data_files: Any = None          # load_dataset's data_files (generic builders such as `json`, `csv`)

    def for_split(self, split: str) -> "Source":
        """This source with `{split}` replaced by the split's name."""
        def fill(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace("{split}", split)
            if isinstance(value, list):
                return [fill(v) for v in value]
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            return value
        return Source(fill(self.path), self.hub, self.config, fill(self.split) if self.split else split,
                      self.revision, fill(self.data_files))

    def per_split(self) -> bool:
        """Whether different splits read different data."""
        if self.path is not None:
            return "{split}" in self.path
        return self.split is None or "{split}" in self.split or "{split}" in json.dumps(self.data_files)

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        return f"hub:{self.hub}" + (f"/{self.config}" if self.config else "") + (f":{self.split}" if self.split else "")


@dataclass(frozen=True)
class CustomBenchmark:
    """A validated `data.<name>` block that declares a benchmark (see the module docstring)."""

    name: str
    kind: str
    source: Source
    fields: dict[str, str | tuple[str, ...]]
    answer_format: str = "index"
    splits: tuple[str, ...] = ()
    partition: dict[str, float] | None = None
    where: str = field(default="", compare=False)   # 'data.<name>', the prefix of every message

    # ---------------------------------------------------------------------------------------------- config

    @classmethod
    def from_config(cls, name: str, block: Any) -> "CustomBenchmark":
        """Check a `data.<name>` block, naming the offending key; `splits` may be absent (the data stage
        receives the block without it, so that adding a split does not redo the others)."""
        where = f"data.{name}"
        if not isinstance(block, dict):
            raise BenchmarkConfigError(f"{where} must be a mapping, got {type(block).__name__}")
        check_keys(where, block, BLOCK_KEYS, error=BenchmarkConfigError)
        kind = block.get("kind")
        if kind not in KINDS:
            raise BenchmarkConfigError(f"{where}.kind must be one of {list(KINDS)}, got {kind!r}")
        source = _source(where, block.get("source"))
        fields = _fields(where, kind, block.get("fields"))
        answer_format = block.get("answer_format", "index")
        if kind == "multiple_choice":
            if answer_format not in ANSWER_FORMATS:
                raise BenchmarkConfigError(
                    f"{where}.answer_format must be one of {list(ANSWER_FORMATS)}, got {answer_format!r}")
            if (answer_format == "label") != ("labels" in fields):
                raise BenchmarkConfigError(
                    f"{where}: answer_format 'label' and fields.labels go together (the answer is looked up "
                    f"among the row's labels); got answer_format {answer_format!r}, fields.labels "
                    f"{fields.get('labels')!r}")
        elif "answer_format" in block:
            raise BenchmarkConfigError(f"{where}.answer_format applies to kind multiple_choice only, not {kind!r}")
        splits = _splits(where, block.get("splits"))
        partition = _partition(where, block.get("partition"))
        if partition is not None:
            outside = [s for s in splits if s not in partition]
            if outside:
                raise BenchmarkConfigError(
                    f"{where}.splits {outside} are not parts of {where}.partition {sorted(partition)}")
        elif len(splits) > 1 and not source.per_split():
            raise BenchmarkConfigError(
                f"{where}: splits {list(splits)} would all read the same data ({source.describe()}), so search "
                f"and evaluation would share items; put {{split}} in {where}.source."
                f"{'path' if source.path is not None else 'split'} (one file per split) or set {where}.partition "
                f"(e.g. {{train: 0.5, test: 0.5}})")
        return cls(name, kind, source, fields, answer_format, splits, partition, where)

    def source_files(self, split: str) -> list[str]:
        """The local file a split reads ([] for a hub source): the data stage's input, so editing it reruns it."""
        self._check_split(split)
        source = self.source.for_split(split)
        return [source.path] if source.path is not None else []

    # ---------------------------------------------------------------------------------------------- loading

    def load(self, split: str) -> list[Example]:
        """The split's records, in source order; raise BenchmarkConfigError naming the field, file and row."""
        self._check_split(split)
        source = self.source.for_split(split)
        rows, origin = _read_rows(self.where, source)
        examples, seen = [], {}
        for index, (location, row) in enumerate(rows):
            if not isinstance(row, dict):
                raise BenchmarkConfigError(
                    f"{self.where}: {origin} {location}: expected an object (column -> value), got "
                    f"{type(row).__name__}")
            mapper = _RowMapper(self, origin, location, row)
            example = mapper.example(split, f"{index:05d}", source.describe())
            if example.id in seen:  # over the whole source, whichever parts the two rows fall in
                raise BenchmarkConfigError(
                    f"{self.where}.fields.id: {origin} {location}: id {example.id!r} repeats {seen[example.id]}")
            seen[example.id] = location
            if self.partition is None or _part(self.partition, example.question) == split:
                examples.append(example)
        if not examples:
            raise BenchmarkConfigError(
                f"{self.where}: split {split!r} has no rows: {self.where}.partition {self.partition} gives it none "
                f"of the {len(rows)} rows of {origin}")
        return examples

    def _check_split(self, split: str) -> None:
        if not isinstance(split, str) or not SPLIT_NAME.match(split):
            raise BenchmarkConfigError(f"{self.where}: split must be a name like 'test', got {split!r}")
        if self.partition is not None and split not in self.partition:
            raise BenchmarkConfigError(
                f"{self.where}: split {split!r} is not a part of {self.where}.partition {sorted(self.partition)}")


def load_custom(name: str, split: str, block: dict, limit: int | None = None) -> list[Example]:
    """Records of a config-declared benchmark's split (limit: the first N)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise BenchmarkConfigError(f"data.{name}: limit must be a non-negative int or None, got {limit!r}")
    examples = CustomBenchmark.from_config(name, block).load(split)
    return examples if limit is None else examples[:limit]


# -------------------------------------------------------------------------------------------------- checks

def _source(where: str, block: Any) -> Source:
    if not isinstance(block, dict):
        raise BenchmarkConfigError(f"{where}.source must be a mapping with `path` (a local file) or `hub` (a hub "
                                   f"dataset id), got {block!r}")
    check_keys(f"{where}.source", block, SOURCE_KEYS, error=BenchmarkConfigError)
    if ("path" in block) == ("hub" in block):
        raise BenchmarkConfigError(f"{where}.source needs exactly one of `path` (a local .jsonl/.json/.csv/.parquet "
                                   f"file) and `hub` (a hub dataset id), got {sorted(block)}")
    for key in ("path", "hub", "config", "split", "revision"):
        value = block.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise BenchmarkConfigError(f"{where}.source.{key} must be a non-empty string, got {value!r}")
    if "path" in block:
        extra = sorted(set(block) - {"path"})
        if extra:
            raise BenchmarkConfigError(f"{where}.source: {extra} apply to a hub source only, not to a local path")
        if not str(block["path"]).endswith(SUFFIXES):
            raise BenchmarkConfigError(
                f"{where}.source.path must end in one of {list(SUFFIXES)} (the suffix says how to read it), "
                f"got {block['path']!r}")
    return Source(**block)


def _fields(where: str, kind: str, block: Any) -> dict[str, str | tuple[str, ...]]:
    required, optional = KINDS[kind]
    if not isinstance(block, dict):
        raise BenchmarkConfigError(f"{where}.fields must map fields to columns, e.g. {{question: q, answer: a}}")
    unknown = sorted(set(block) - set(required) - set(optional))
    if unknown:
        raise BenchmarkConfigError(f"{where}.fields: unknown field(s) {unknown} for kind {kind!r}; required "
                                   f"{list(required)}, optional {list(optional)}")
    missing = [name for name in required if name not in block]
    if kind == "math" and "answer" not in block and "solution" not in block:
        missing.append("answer (or solution)")
    if missing:
        raise BenchmarkConfigError(f"{where}.fields: missing {missing} (kind {kind!r} needs {list(required)})")
    fields: dict[str, str | tuple[str, ...]] = {}
    for name, column in block.items():
        if name == "choices" and isinstance(column, list):
            if not column or not all(isinstance(c, str) and c.strip() for c in column):
                raise BenchmarkConfigError(
                    f"{where}.fields.choices must be a column name or a non-empty list of column names, got {column!r}")
            fields[name] = tuple(column)
        elif isinstance(column, str) and column.strip():
            fields[name] = column
        else:
            hint = " (a list of columns is for choices only)" if isinstance(column, list) else ""
            raise BenchmarkConfigError(f"{where}.fields.{name} must be a column name, got {column!r}{hint}")
    return fields


def _splits(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and SPLIT_NAME.match(s) for s in value):
        raise BenchmarkConfigError(f"{where}.splits must be a non-empty list of split names, got {value!r}")
    if len(set(value)) != len(value):
        raise BenchmarkConfigError(f"{where}.splits repeats a split: {value}")
    return tuple(value)


def _partition(where: str, value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) < 2:
        raise BenchmarkConfigError(f"{where}.partition must map two or more split names to shares, "
                                   f"e.g. {{train: 0.5, test: 0.5}}, got {value!r}")
    for split, share in value.items():
        if not isinstance(split, str) or not SPLIT_NAME.match(split):
            raise BenchmarkConfigError(f"{where}.partition: {split!r} is not a split name")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise BenchmarkConfigError(f"{where}.partition.{split} must be a share in (0, 1], got {share!r}")
    total = sum(value.values())
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise BenchmarkConfigError(f"{where}.partition: shares must add up to 1, got {total:g}")
    return {split: float(value[split]) for split in sorted(value)}


def _part(partition: dict[str, float], question: str) -> str:
    """The split a question belongs to: its sha256 position in [0, 1) against the cumulative shares, splits in
    name order (so the YAML order does not matter)."""
    position = stable_hash(question) / 2 ** 64
    cumulative = 0.0
    for split, share in partition.items():
        cumulative += share
        if position < cumulative:
            return split
    return split  # float rounding at the very top: the last part


# -------------------------------------------------------------------------------------------------- reading

def _read_rows(where: str, source: Source) -> tuple[list[tuple[str, Any]], str]:
    """(location, row) pairs and a description of where they came from; an empty source is an error."""
    if source.path is not None:
        path = Path(source.path)
        if not path.is_file():
            raise BenchmarkConfigError(f"{where}.source.path: {path} does not exist (relative paths start at the "
                                       f"directory the pipeline runs in, {Path.cwd()})")
        reader = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}
        try:
            rows = list(reader[path.suffix](path))
        except BenchmarkConfigError:
            raise
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
            raise BenchmarkConfigError(f"{where}.source.path: cannot read {path}: {type(exc).__name__}: {exc}") from exc
        origin = str(path)
    else:
        rows, origin = _hub_rows(where, source), source.describe()
    if not rows:
        raise BenchmarkConfigError(f"{where}.source: {origin} has no rows")
    return rows, origin


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkConfigError(f"{path} line {number}: not valid JSON: {exc}") from exc


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchmarkConfigError(f"{path}: not valid JSON ({exc}); one object per line needs the .jsonl "
                                   f"suffix") from exc
    if not isinstance(data, list):
        raise BenchmarkConfigError(f"{path}: expected a JSON array of row objects, got a {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        yield f"row {number}", row


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            # an empty CSV cell is a missing value, as it would be in JSON
            yield f"line {reader.line_num}", {key: (value if value != "" else None) for key, value in row.items()}


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield f"row {number}", row


def _hub_rows(where: str, source: Source) -> list[tuple[str, Any]]:
    import datasets  # lazy: importing datasets costs a second or two

    kwargs = {"path": source.hub, "name": source.config, "split": source.split, "revision": source.revision,
              "data_files": source.data_files}
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        dataset = datasets.load_dataset(**kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; name the config in one message
        raise DataUnavailableError(f"{where}.source: could not load hub dataset {kwargs}: "
                                   f"{type(exc).__name__}: {exc}") from exc
    return [(f"row {number}", row) for number, row in enumerate(dataset, start=1)]


# -------------------------------------------------------------------------------------------------- mapping

class _RowMapper:
    """One source row -> one Example, every message naming the key, the source and the row."""

    def __init__(self, bench: CustomBenchmark, origin: str, location: str, row: dict):
        self.bench, self.origin, self.location, self.row = bench, origin, location, row

    def fail(self, name: str, message: str) -> BenchmarkConfigError:
        return BenchmarkConfigError(f"{self.bench.where}.fields.{name}: {self.origin} {self.location}: {message}")

    def value(self, name: str, column: str | None = None, required: bool = True) -> Any:
        """The row's value for a mapped field (None if unmapped); a mapped column must exist in the row."""
        column = column or self.bench.fields.get(name)
        if column is None:
            return None
        found, value = lookup(self.row, column)
        if not found:
            raise self.fail(name, f"no column {column!r}; the row has columns {sorted(map(str, self.row))}")
        if required and (value is None or (isinstance(value, str) and not value.strip())):
            raise self.fail(name, f"column {column!r} is empty")
        return value

    def text(self, name: str, required: bool = True) -> str | None:
        value = self.value(name, required=required)
        if value is None:
            return None
        if isinstance(value, (dict, list)):
            raise self.fail(name, f"column {self.bench.fields[name]!r} holds a {type(value).__name__}, "
                                  f"expected text")
        return str(value)

    def texts(self, name: str, value: Any, column: str) -> list[str]:
        if isinstance(value, str):
            hint = (" (in a CSV file, map one column per option: choices: [A, B, C, D])" if name == "choices" else "")
            raise self.fail(name, f"column {column!r} holds a string, expected a list{hint}")
        if not isinstance(value, (list, tuple)) or not value:
            raise self.fail(name, f"column {column!r} holds {value!r}, expected a non-empty list")
        if any(v is None or isinstance(v, (dict, list)) for v in value):
            raise self.fail(name, f"column {column!r} holds {value!r}, expected a list of texts")
        return [str(v) for v in value]

    def choices(self) -> list[str]:
        spec = self.bench.fields["choices"]
        if isinstance(spec, tuple):  # one column per option
            return [str(self.value("choices", column)) for column in spec]
        return self.texts("choices", self.value("choices"), spec)

    def gold_index(self, choices: list[str]) -> int:
        column, raw = self.bench.fields["answer"], self.value("answer")
        answer_format, n = self.bench.answer_format, len(choices)
        if answer_format == "label":
            labels = self.texts("labels", self.value("labels"), self.bench.fields["labels"])
            if len(labels) != n:
                raise self.fail("labels", f"{len(labels)} labels {labels} for {n} choices")
            key = str(raw).strip()
            if key not in labels:
                raise self.fail("answer", f"answer {key!r} (column {column!r}) is not among the labels {labels}")
            return labels.index(key)
        if answer_format == "text":
            text = str(raw).strip()
            matches = [i for i, choice in enumerate(choices) if choice.strip() == text]
            if not matches:
                raise self.fail("answer", f"answer {text!r} (column {column!r}) is not one of the choices {choices}")
            return matches[0]
        if answer_format == "letter":
            letter = str(raw).strip().upper()
            if not re.fullmatch(r"[A-Z]", letter):
                raise self.fail("answer", f"column {column!r} holds {raw!r}, expected a letter A-Z "
                                          f"(answer_format letter)")
            index = ord(letter) - ord("A")
            shown = f"letter {letter}"
        else:
            if isinstance(raw, int) and not isinstance(raw, bool):
                index = raw
            elif isinstance(raw, float) and raw.is_integer():
                index = int(raw)
            elif isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
                index = int(raw)
            else:
                raise self.fail("answer", f"column {column!r} holds {raw!r}, expected a 0-based choice index "
                                          f"(answer_format index; or set answer_format: letter, text or label)")
            shown = f"gold index {index}"
        if not 0 <= index < n:
            raise self.fail("answer", f"{shown} (column {column!r}) is out of range for {n} choices "
                                      f"(0..{n - 1}): {choices}")
        return index

    def example(self, split: str, position: str, source: str) -> Example:
        bench = self.bench
        native = self.value("id", required=True) if "id" in bench.fields else None
        common = dict(id=str(native).strip() if native is not None else position, benchmark=bench.name, split=split,
                      question=self.text("question"), context=self.text("context", required=False),
                      subset=self.text("subset", required=False), source=source)
        if bench.kind == "multiple_choice":
            choices = self.choices()
            gold = self.gold_index(choices)
            return Example(**common, choices=choices, gold_index=gold, answer=choices[gold], answers=[choices[gold]])
        if bench.kind == "qa":
            raw = self.value("answer")
            answers = unique(self.texts("answer", raw, bench.fields["answer"]) if not isinstance(raw, str)
                              else [raw])
            answers = [a.strip() for a in answers if a.strip()]
            if not answers:
                raise self.fail("answer", f"column {bench.fields['answer']!r} holds no answer text: {raw!r}")
            return Example(**common, answer=answers[0], answers=unique(answers))
        # math: the final answer, else the solution's last \boxed{}
        if "answer" in bench.fields:
            answer = self.text("answer").strip()
        else:
            solution = self.text("solution")
            answer = last_boxed(solution)
            if not answer:
                raise self.fail("solution", f"no \\boxed{{...}} final answer in column "
                                            f"{bench.fields['solution']!r}: {solution[-80:]!r}")
        level_raw = self.value("level", required=False)
        level = parse_level(level_raw)
        if level_raw is not None and level is None:
            raise self.fail("level", f"column {bench.fields['level']!r} holds {level_raw!r}, expected 1-5 or "
                                     f"'Level 1'..'Level 5'")
        return Example(**common, answer=answer, answers=[answer], level=level)


def check_config(config: dict) -> dict[str, CustomBenchmark]:
    """Check every config-declared `data:` block, and that the search tasks, calibration sets and evaluation
    entries reading one use an answer format for its kind (the Snakefile calls this on load)."""
    declared = {name: CustomBenchmark.from_config(name, block) for name, block in config["data"].items()
                if is_config_declared(block)}
    readers = [("search.tasks", config.get("search", {}).get("tasks", {})),
               ("calibrate.sets", config.get("calibrate", {}).get("sets", {})),
               ("eval.benchmarks", config.get("eval", {}).get("benchmarks", {}))]
    for section, blocks in readers:
        for name, block in blocks.items():
            bench = declared.get(block.get("benchmark"))
            if bench is not None and block.get("samples") != 0 and block.get("format") not in KIND_FORMATS[bench.kind]:
                raise BenchmarkConfigError(
                    f"{section}.{name}.format: {block.get('format')!r} cannot read data.{bench.name} (kind "
                    f"{bench.kind!r} is read by the formats {list(KIND_FORMATS[bench.kind])})")
    return declared
