"""A slice of the tiny config through a real SLURM scheduler (single node, Debian slurm-wlm), `--profile slurm-ci`.

.ci/run installs slurm-wlm and starts the cluster with tests/slurm/start_cluster.sh; elsewhere the test skips
unless a cluster answers `sinfo`.
"""
from __future__ import annotations

import shutil
import subprocess

import polars as pl
import pytest
import yaml

from test_workflow import planned_jobs, snakemake, workdir_copy  # noqa: F401

pytestmark = pytest.mark.slow


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and ("idle" in result.stdout or "mix" in result.stdout)


# The scheduler test is about the DAG going through sbatch, not about every method: one search task, the base and
# router cells of one benchmark, and the skipped one; the local tiny run (test_workflow) covers every method.
SLURM_OVERLAY = {
    "search": {"tasks": {"arc_challenge": {"samples": 0}, "squad": {"samples": 0}}},
    "eval": {"methods": ["base", "router"], "knobs": [], "select": ["arc_easy", "agieval"]},
}


@pytest.mark.skipif(not cluster_up(), reason="no SLURM cluster answers sinfo (run tests/slurm/start_cluster.sh)")
def test_tiny_config_runs_through_real_slurm_jobs_to_the_report(tmp_path, smollm2_dir):
    work = workdir_copy(tmp_path)
    # the materialised model from the session fixture: the scheduler test is about the DAG, not the GGUF
    shutil.copytree(smollm2_dir, work / "resources" / "models" / "smollm2-135m-instruct")
    (work / "slurm.yaml").write_text(yaml.safe_dump(SLURM_OVERLAY))
    targets = ["results/search/smollm2-135m-instruct/summary.parquet",
               "results/report/smollm2-135m-instruct/report.md"]
    result = snakemake(*targets, "--cores", "all", "--profile", "slurm-ci",
                       "--configfile", "config/tiny.yaml", "slurm.yaml", cwd=work)
    routers = work / "results" / "routers" / "smollm2-135m-instruct"
    assert pl.read_parquet(routers / "metrics.parquet").height == 25
    assert (work / "results" / "search" / "smollm2-135m-instruct" / "summary.md").is_file()
    out = result.stdout + result.stderr
    # every job went through sbatch (the plugin removes the SLURM logs of successful jobs)
    assert "has been submitted with SLURM jobid" in out and "rule_search_shard" in out
    assert "rule_train_routers" in out and "rule_evaluate" in out and "rule_report" in out
    assert "localrule" not in out
    report = work / "results" / "report" / "smollm2-135m-instruct"
    assert "agieval" in (report / "report.md").read_text()  # the finished report, skipped benchmark included
    summary = pl.read_parquet(report / "summary.parquet")
    assert sorted(summary.select("benchmark", "method").iter_rows()) == [("arc_easy", "base"), ("arc_easy", "router")]
