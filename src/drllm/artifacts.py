"""Atomic artifact writing and the one place where each Parquet schema lives.

Every stage writes through these helpers: a file appears under its final name only once it is complete
(temp file in the same directory, fsync, rename), and a Parquet table is checked against its schema by the
same code that writes and reads it.
"""
from __future__ import annotations

import contextlib
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


def write_parquet(path: str | os.PathLike, table: pa.Table | list[dict], schema: pa.Schema, name: str) -> None:
    """Validate against `schema` and write atomically."""
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
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | os.PathLike, schema: pa.Schema, name: str) -> pa.Table:
    """Read a Parquet artifact and check it against `schema`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{name} not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArtifactError(f"{name} {path} is not a readable Parquet file: {exc}") from exc
    return conform(table, schema, f"{name} {path}")
