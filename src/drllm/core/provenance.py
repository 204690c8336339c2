"""Provenance of Parquet artifacts: the one helper every stage uses to say what made its file.

`stage_provenance(stage, config, ...)` returns the record that `drllm.core.artifacts.write_parquet(...,
provenance=...)` validates and stores under the file's metadata key b"drllm"; `drllm.core.artifacts.read_provenance`
reads it back. A record holds:

  stage, artifact       the stage that wrote the file and what the file is (write_parquet adds `artifact`)
  drllm_version         the installed drllm distribution's version
  config, config_sha256 the configuration block the stage received, exactly as its rule passes it (e.g. the
                        search settings, `train:`, an evaluation entry + method + settings), and the SHA-256 of its
                        canonical JSON (equal settings, equal hash, on any machine)
  model                 name, source, path (hub id or local directory; null for the embedded model, whose
                        install path is machine-specific), revision and weights_sha256 of the materialised model,
                        or null for stages without one
  grader                what graded the rows: {"drllm.tasks": GRADER_VERSION, "math_verify": version} for the
                        answer formats, {"lm_eval": version} where lm-eval grades; null where nothing is graded
  inputs                (search summary and router samples: the shards; report: the cells) one entry per
                        distinct provenance of the input files, with `files` = how many files had it; a model or
                        grader the stage does not give itself is the inputs' common one (null where they
                        disagree, and the entries show how)
"""
from __future__ import annotations

import importlib.metadata
import json
import os
from collections import Counter
from typing import Any, Iterable

from drllm.core.artifacts import (MODEL_FIELDS, PROVENANCE_VERSION, canonical_json, config_sha256, read_provenance,
                                  validate_provenance)

GRADERS = ("drllm", "lm_eval")
# The version of drllm's own grading (drllm.formats: prompts, answer extraction, grading rules). Bump it when any
# of them changes, so scores made by different grading can be told apart. Kept here, not in formats, because core
# imports no higher package.
GRADER_VERSION = 1


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_provenance(manifest: dict) -> dict:
    """The model fields of a materialised model's manifest (drllm_model.json)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("name"), str):
        raise ValueError(f"a model manifest with a 'name' is needed for provenance, got {manifest!r}")
    record = {key: manifest.get(key) for key in MODEL_FIELDS}
    if manifest.get("source") == "embedded":  # the GGUF's install path differs per machine; the name pins it
        record["path"] = None
    return record


def grader_versions(graders: Iterable[str]) -> dict | None:
    """Versions of what grades: "drllm" = the answer formats of drllm.formats.answers, "lm_eval" = lm-eval's metrics."""
    graders = set(graders)
    unknown = sorted(graders - set(GRADERS))
    if unknown:
        raise ValueError(f"unknown grader(s) {unknown}; expected some of {list(GRADERS)}")
    versions = {}
    if "drllm" in graders:
        versions["drllm.tasks"] = str(GRADER_VERSION)
        versions["math_verify"] = package_version("math-verify") or "not installed"
    if "lm_eval" in graders:
        versions["lm_eval"] = package_version("lm-eval") or "not installed"
    return versions or None


def merged_inputs(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """One entry per distinct provenance among `paths` (without its config, which each file keeps), counted."""
    counts: Counter[str] = Counter()
    for path in paths:
        record = read_provenance(path)
        if record is None:
            entry = {"provenance": None}
        else:
            entry = {key: record[key] for key in ("stage", "artifact", "drllm_version", "config_sha256", "model",
                                                  "grader")}
        counts[canonical_json(entry)] += 1
    return [{**json.loads(text), "files": count} for text, count in sorted(counts.items())]


def _common(entries: list[dict], key: str) -> Any:
    values = {canonical_json(entry.get(key)) for entry in entries}
    return entries[0].get(key) if len(values) == 1 else None


def stage_provenance(stage: str, config: Any, manifest: dict | None = None, graders: Iterable[str] = (),
                     inputs: Iterable[str | os.PathLike] | None = None) -> dict:
    """The provenance record of an artifact written by `stage`.

    `config`: the block the stage received (JSON-serialisable); `manifest`: the model's drllm_model.json, if the
    stage has a model; `graders`: "drllm" and/or "lm_eval" when the rows are graded; `inputs`: the files a
    merging stage combined (their provenance is listed, and gives model and grader when not given here).
    """
    record = {"provenance_version": PROVENANCE_VERSION, "stage": stage, "drllm_version": package_version("drllm"),
              "config": config, "config_sha256": config_sha256(config),
              "model": model_provenance(manifest) if manifest is not None else None,
              "grader": grader_versions(graders)}
    if record["drllm_version"] is None:
        raise ValueError("the drllm distribution is not installed (pip install -e .): provenance needs its version")
    if inputs is not None:
        record["inputs"] = merged_inputs(inputs)
        if record["inputs"]:
            if manifest is None:
                record["model"] = _common(record["inputs"], "model")
            if record["grader"] is None:
                record["grader"] = _common(record["inputs"], "grader")
    validate_provenance({**record, "artifact": stage}, f"stage {stage}")  # fail here, not at the write
    return record
