"""The Snakemake DAG: lint, dry runs, schema validation, and the assets stage end to end on a tiny config."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(*args, cwd=REPO, check=True):
    result = subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def workdir_copy(tmp_path):
    """The workflow files in a scratch directory, so runs leave the checkout alone."""
    for name in ["Snakefile", "rules", "workflow", "config", "envs", "profiles"]:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def test_lint_is_clean():
    result = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def test_dry_run_of_default_config_plans_the_assets():
    result = snakemake("-n", "--forceall", "--quiet", "rules")
    out = result.stdout + result.stderr
    assert "prepare_model" in out and "prepare_data" in out


def test_schema_violation_fails_with_the_field_named(tmp_path):
    work = workdir_copy(tmp_path)
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config["runtime"]["dtype"] = "fp8"
    (work / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", "bad.yaml", cwd=work, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "fp8" in out and "dtype" in out


def test_search_task_with_unknown_benchmark_is_rejected(tmp_path):
    work = workdir_copy(tmp_path)
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config["search"]["tasks"]["arc_easy"]["benchmark"] = "arc_hard"
    (work / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", "bad.yaml", cwd=work, check=False)
    assert result.returncode != 0 and "arc_hard" in result.stdout + result.stderr


@pytest.mark.slow
def test_tiny_config_runs_through_search_and_router_training(tmp_path):
    work = workdir_copy(tmp_path)
    snakemake("--cores", "2", "--configfile", "config/tiny.yaml", cwd=work)
    assert (work / "resources" / "models" / "smollm2-135m-instruct" / "drllm_model.json").is_file()
    import polars as pl

    frame = pl.read_parquet(work / "resources" / "data" / "arc_easy" / "validation.parquet")
    assert frame.height == 570 and {"id", "question", "choices", "gold_index"} <= set(frame.columns)
    assert (work / "logs" / "prepare_model" / "smollm2-135m-instruct.log").is_file()
    summary = pl.read_parquet(work / "results" / "search" / "smollm2-135m-instruct" / "summary.parquet")
    assert sorted(summary["task"]) == ["arc_challenge", "arc_easy", "dart_1", "dart_2", "dart_3", "dart_4", "dart_5"]
    assert summary.filter(pl.col("task") == "arc_easy")["prompts"].item() == 2
    routers = work / "results" / "routers" / "smollm2-135m-instruct"
    assert {"routers.safetensors", "router_config.json", "metrics.parquet", "training_curves.png",
            "label_distribution.png"} <= {p.name for p in routers.iterdir()}
    assert pl.read_parquet(routers / "metrics.parquet").height == 25
    # nothing left to do on a second run
    assert "Nothing to be done" in snakemake("-n", "--configfile", "config/tiny.yaml", cwd=work).stdout
