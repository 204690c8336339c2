"""Digest every artifact of a pipeline run, timing aside, to show that a change left the outputs byte-identical.

    python tools/artifact_digest.py results resources/data > before.json    # on the old commit
    python tools/artifact_digest.py results resources/data > after.json     # on the new one, same config
    python tools/artifact_digest.py --compare before.json after.json        # exit 1 and list what differs

Parquet files are digested as their rows (every column except wall-clock timings: `seconds`, `wall_seconds`, `seconds_per_example`)
plus their provenance record (metadata key b"drllm"); JSON files without such keys; every other
file (safetensors, PNG, Markdown) byte for byte. Paths are keyed relative to the directory given.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq



def _timing(name: str) -> bool:
    """Wall-clock columns and keys: `seconds`, `wall_seconds`, `seconds_per_example`..."""
    return name.endswith("seconds") or name.startswith("seconds_")


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not _timing(k)}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def digest(path: Path) -> str:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        kept = [name for name in table.column_names if not _timing(name)]
        metadata = table.schema.metadata or {}
        record = {"rows": table.select(kept).to_pylist(), "schema": str(table.select(kept).schema.remove_metadata()),
                  "provenance": json.loads(metadata[b"drllm"]) if b"drllm" in metadata else None}
        data = json.dumps(record, sort_keys=True, default=str).encode()
    elif path.suffix == ".json":
        data = json.dumps(_untimed(json.loads(path.read_text())), sort_keys=True).encode()
    else:
        data = path.read_bytes()
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", help="directories whose files to digest (e.g. results resources/data)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="two digest files to compare")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        differ = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
        only = sorted(before.keys() ^ after.keys())
        for key in differ:
            print(f"differs: {key}")
        for key in only:
            print(f"only in {'before' if key in before else 'after'}: {key}")
        print(f"{len(before.keys() & after.keys()) - len(differ)} identical, {len(differ)} differ, {len(only)} unmatched")
        return 1 if differ or only else 0
    if not args.dirs:
        parser.error("give directories to digest, or --compare BEFORE AFTER")
    digests = {}
    for folder in args.dirs:
        root = Path(folder)
        if not root.is_dir():
            print(f"artifact_digest: error: {folder} is not a directory", file=sys.stderr)
            return 2
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith((".log", ".jsonl"))):
            digests[str(Path(folder) / path.relative_to(root))] = digest(path)
    print(json.dumps(digests, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
