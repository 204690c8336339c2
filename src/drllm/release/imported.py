"""Routers from elsewhere: trained routers taken as an input (a release folder, a training-stage router directory,
or a hub repository) instead of being searched for and trained here.

`resolve_router_source` finds the files (a local directory as is, else a hub id fetched with huggingface_hub);
`import_routers` checks them against the materialised model's manifest with the loader's own checks
(`RouterStack.for_model`: base model name, revision, weights hash, layers, width, and that the weights load),
checks the calibration file, and copies them into the pipeline's router directory, writing `source.json`
(where they came from, the hash of each copied file) last, so that its presence marks a complete import.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from drllm.core.artifacts import ArtifactError, atomic_path, read_json, write_json
from drllm.core.models import file_sha256
from drllm.calibration.calibration import CALIBRATED, read_calibration, read_certified
from drllm.routing.router import (CALIBRATION_FILE, CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, RouterStack,
                                  download_routers)

SOURCE_FILE = "source.json"  # the import's provenance, written last
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, CALIBRATION_FILE)  # the model card (CARD_FILE) is copied when present
# manifest field -> router config field that must record it when the manifest does
IDENTITY_FIELDS = (("revision", "base_model_revision"), ("weights_sha256", "base_model_sha256"))


def resolve_router_source(source: str, revision: str | None = None) -> Path:
    """The local directory holding the routers of `source`: an existing directory as is, else the hub repository
    "owner/name" at `revision` (default: main) fetched with huggingface_hub, router files only.

    ArtifactError when `source` is a file, is neither an existing directory nor a valid hub id, or the repository
    cannot be reached (the hub's error included); a revision with a local directory is refused, as it would be
    silently ignored."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(source)
    if path.is_dir():
        if revision is not None:
            raise ArtifactError(f"routers {source!r} are a local directory; a revision ({revision!r}) applies only "
                                "to a hub repository")
        return path
    if path.exists():
        raise ArtifactError(f"routers {source!r}: not a directory (expected a release folder with "
                            f"{', '.join(REQUIRED_FILES)}, or a hub repository id owner/name)")
    try:
        if source.count("/") != 1:  # router repositories live under a user or an organisation
            raise HFValidationError("a hub repository id has the form owner/name")
        validate_repo_id(source)
    except HFValidationError as exc:
        detail = " ".join(str(exc).split())
        raise ArtifactError(f"routers {source!r}: neither an existing directory nor a valid hub repository id "
                            f"({detail})") from exc
    return download_routers(source, revision)


def import_routers(source_dir: str | os.PathLike, manifest: dict[str, Any], out_dir: str | os.PathLike, *,
                   source: str | None = None, revision: str | None = None) -> dict[str, Any]:
    """Check the routers in `source_dir` against `manifest` (drllm.core.models) and copy them into `out_dir`.

    `source` and `revision` are what the user named (a path or hub id), recorded in `source.json`; a source
    that is not a local directory is recorded as a hub repository with the snapshot's commit. Returns that record.
    ArtifactError, naming the file and what was expected, when a file is missing or does not match the model.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if out_dir.exists() and out_dir.resolve() == source_dir.resolve():
        raise ArtifactError(f"routers {source_dir}: the import source and --out-dir are the same directory")
    for name in REQUIRED_FILES:
        if not (source_dir / name).is_file():
            why = (" (required: it holds the operating points of router@calibrated and router@certified; release "
                   "folders made by workflow/scripts/release_routers.py have it, a training-stage router directory "
                   "once the calibration stage has run)") if name == CALIBRATION_FILE else ""
            raise ArtifactError(f"routers {source_dir}: {name} missing; expected {', '.join(REQUIRED_FILES)}{why}")
    names = [*REQUIRED_FILES, *([CARD_FILE] if (source_dir / CARD_FILE).is_file() else [])]
    checked = {name: file_sha256(source_dir / name) for name in names}  # the bytes the checks below read

    stack = RouterStack.for_model(source_dir, manifest)  # the loader's checks, as evaluation loads them
    for ours, theirs in IDENTITY_FIELDS:
        # for_model compares these only when both sides know them; routers from elsewhere must name what they
        # were trained on, or a copy trained on other weights of the same model name would pass
        if manifest.get(ours) is not None and getattr(stack.config, theirs) is None:
            raise ArtifactError(f"routers {source_dir}: {CONFIG_FILE} has no {theirs}, so they cannot be checked "
                                f"against the model's {ours} {manifest[ours]!r}")
    check_calibration(source_dir / CALIBRATION_FILE, manifest)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SOURCE_FILE).unlink(missing_ok=True)  # an interrupted re-import must not look complete
    if CARD_FILE not in names:
        (out_dir / CARD_FILE).unlink(missing_ok=True)  # a previous import's card would describe other routers
    for name in names:
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(source_dir / name, tmp)
    copied = {name: file_sha256(out_dir / name) for name in names}
    changed = sorted(name for name in names if copied[name] != checked[name])
    if changed:
        raise ArtifactError(f"routers {source_dir}: {changed} changed while being imported; import again")

    hub = None
    if source is not None and not Path(source).is_dir():
        # a snapshot_download folder is named after the commit it holds (the hub cache's layout)
        hub = {"repo_id": source, "revision": revision, "commit": source_dir.name}
    record = {"source": str(source) if source is not None else str(source_dir), "revision": revision,
              "path": str(source_dir.resolve()), "hub": hub,
              "model": {key: manifest.get(key) for key in ("name", "revision", "weights_sha256")},
              "files": copied}
    write_json(out_dir / SOURCE_FILE, record)  # last: its presence marks a complete import
    return record


def check_calibration(path: Path, manifest: dict[str, Any]) -> None:
    """The calibration file as evaluation reads it (its calibrated point, and its certified point when it has
    one), made for this model when it says which (calibrate_routers.py writes `model` and `num_layers`)."""
    read_calibration(path, CALIBRATED)
    calibration = read_json(path, "router calibration file")
    read_certified(path)  # the report shows its certificate: checked now, not after the evaluation
    for key, expected in (("model", manifest["name"]), ("num_layers", int(manifest["num_layers"]))):
        if key in calibration and calibration[key] != expected:
            raise ArtifactError(f"router calibration file {path}: made for {key} {calibration[key]!r}, "
                                f"but the model has {expected!r}")
