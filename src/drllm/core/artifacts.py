"""Atomic artifact writing and the one place where each Parquet schema lives.

Every stage writes through these helpers: a file appears under its final name only once it is complete
(temp file in the same directory, fsync, rename), and a Parquet table is checked against its schema by the
same code that writes and reads it. A Parquet artifact may also carry its provenance (what made it) in the
file's key-value metadata under PROVENANCE_KEY; drllm.core.provenance builds it, this module checks and stores it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


class ArtifactError(ValueError):
    """An artifact is missing, malformed or does not match its schema."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are shared like any written file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{what} {path} is not valid JSON: {exc}") from exc


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Return `table` with exactly `schema`'s columns and types, or raise naming what is wrong."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ArtifactError(f"{name}: missing column(s) {missing}; expected {schema.names}")
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        raise ArtifactError(f"{name}: unexpected column(s) {extra}; expected {schema.names}")
    table = table.select(schema.names)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise ArtifactError(f"{name}: columns do not match the schema: {exc}") from exc


def write_parquet(path: str | os.PathLike, table: pa.Table | list[dict], schema: pa.Schema, name: str,
                  provenance: dict | None = None) -> None:
    """Validate against `schema` and write atomically; `provenance` (drllm.core.provenance.stage_provenance) is
    validated and stored in the file's metadata with `artifact` = `name`."""
    if not isinstance(table, pa.Table):
        rows = list(table)
        for index, row in enumerate(rows):  # from_pylist would silently fill a missing key with null
            if set(row) != set(schema.names):
                missing = sorted(set(schema.names) - set(row))
                extra = sorted(set(row) - set(schema.names))
                raise ArtifactError(f"{name}: row {index} has missing column(s) {missing}, unexpected {extra}")
        try:
            table = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise ArtifactError(f"{name}: rows do not match the schema: {exc}") from exc
    table = conform(table, schema, name)
    if provenance is not None:
        record = validate_provenance({**provenance, "artifact": name}, name)
        table = table.replace_schema_metadata({PROVENANCE_KEY: canonical_json(record).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | os.PathLike, schema: pa.Schema, name: str) -> pa.Table:
    """Read a Parquet artifact and check it against `schema`."""
    table = _read(pq.read_table, path, name)
    _provenance_of(table.schema, f"{name} {path}")  # artifacts from before provenance have none: still readable
    return conform(table, schema, f"{name} {path}")


# -- provenance ---------------------------------------------------------------------------------------------
# What made an artifact, as canonical JSON under this key of the Parquet key-value metadata. Deliberately no
# timestamp or hostname: the same config must give byte-identical artifacts (issue 12).
PROVENANCE_KEY = b"drllm"
PROVENANCE_VERSION = 1
# field -> allowed JSON types; `inputs` (the merged provenance of the files a stage combined) is optional
PROVENANCE_FIELDS = {
    "provenance_version": (int,),
    "stage": (str,),              # the pipeline stage (rule) that wrote the file
    "artifact": (str,),           # what the file is: the name write_parquet validated it under
    "drllm_version": (str,),
    "config": (dict,),            # the configuration the stage received, as its rule passes it
    "config_sha256": (str,),      # SHA-256 of canonical_json(config)
    "model": (dict, type(None)),  # name, source, path, revision, weights_sha256; null for model-free stages
    "grader": (dict, type(None)),  # component -> version for stages whose rows are graded answers
}
MODEL_FIELDS = ("name", "source", "path", "revision", "weights_sha256")


def canonical_json(value: Any) -> str:
    """One spelling per value (sorted keys, no spaces, ASCII), so equal configs hash equally on any machine."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_sha256(config: Any) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def validate_provenance(record: Any, where: str) -> dict:
    """Return `record` if it is a complete provenance record, else raise naming the field and the file."""
    if not isinstance(record, dict):
        raise ArtifactError(f"{where}: provenance must be a JSON object, got {type(record).__name__}")
    missing = [key for key in PROVENANCE_FIELDS if key not in record]
    if missing:
        raise ArtifactError(f"{where}: provenance lacks {missing}; expected {list(PROVENANCE_FIELDS)}")
    for key, types in PROVENANCE_FIELDS.items():
        if not isinstance(record[key], types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ArtifactError(f"{where}: provenance {key!r} must be {expected}, got {record[key]!r}")
    if record["config_sha256"] != config_sha256(record["config"]):
        raise ArtifactError(f"{where}: provenance config_sha256 {record['config_sha256']} is not the hash of its "
                            f"config ({config_sha256(record['config'])})")
    model = record["model"]
    if model is not None and (set(model) != set(MODEL_FIELDS) or not isinstance(model["name"], str)):
        raise ArtifactError(f"{where}: provenance model must have exactly {list(MODEL_FIELDS)} with a name, "
                            f"got {model!r}")
    grader = record["grader"]
    if grader is not None and not all(isinstance(v, str) for v in grader.values()):
        raise ArtifactError(f"{where}: provenance grader must map components to version strings, got {grader!r}")
    inputs = record.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(entry, dict) for entry in inputs):
        raise ArtifactError(f"{where}: provenance inputs must be a list of objects, got {inputs!r}")
    return record


def _provenance_of(schema: pa.Schema, where: str) -> dict | None:
    raw = (schema.metadata or {}).get(PROVENANCE_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{where}: provenance metadata is not valid JSON: {exc}") from exc
    return validate_provenance(record, where)


def read_provenance(path: str | os.PathLike, name: str = "artifact") -> dict | None:
    """The provenance stored in a Parquet file (validated), or None if the file has none."""
    return _provenance_of(_read(pq.read_schema, path, name), f"{name} {path}")


def _read(reader, path: str | os.PathLike, name: str):
    """`reader(path)` (a table or a schema), with a missing or unreadable file named in the error."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{name} not found: {path}")
    try:
        return reader(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArtifactError(f"{name} {path} is not a readable Parquet file: {exc}") from exc


def canonicalize_safetensors_header(path: str | os.PathLike) -> None:
    """Rewrite a .safetensors file's JSON header in place with sorted keys, so equal tensors give equal bytes.

    safetensors serialises the header's `__metadata__` from a Rust HashMap, whose order changes per process: a
    materialised model (`format` and a tied weight's alias) or a router file (format, base model, layers) came out
    with other bytes in some runs, and so with another weights_sha256 or file hash. Sorting changes no length
    (same keys and values, compact JSON), so every data offset holds."""
    import struct

    with open(path, "r+b") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:
            raise ArtifactError(f"{path}: the sorted safetensors header is {len(text)} bytes, the written one "
                                f"{size}; not rewritten")
        handle.seek(8)
        handle.write(text + b" " * (size - len(text)))  # safetensors pads its header with spaces
