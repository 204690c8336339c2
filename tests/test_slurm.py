"""A slice of the tiny config through a real SLURM scheduler (single node, Debian slurm-wlm), `--profile slurm-ci`.

.ci/run installs slurm-wlm and starts the cluster with tests/slurm/start_cluster.sh; elsewhere the test skips
unless a cluster answers `sinfo`.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml

from test_workflow import SNAKEMAKE, workdir_copy

pytestmark = pytest.mark.slow


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and ("idle" in result.stdout or "mix" in result.stdout)


# The scheduler test is about the DAG going through sbatch, not about every method: one search task, the base and
# router cells of one benchmark, and the skipped one; the local tiny run (test_workflow) covers every method and the
# default labeler. Here the paper's MCTS labels (4 simulations: ~5 paths a prompt, against the safety sweep's 33)
# keep the scheduled search short.
SLURM_OVERLAY = {
    "search": {"labeler": "mcts", "tasks": {"arc_challenge": {"samples": 0}, "squad": {"samples": 0}}},
    "train": {"target": "path", "prior_init": False},
    "eval": {"methods": ["base", "router"], "knobs": [], "select": ["arc_easy", "agieval"]},
}


ROUTERS = Path("results/routers/smollm2-135m-instruct")
BASE_CELL = Path("results/eval/smollm2-135m-instruct/arc_easy/base.parquet")


class SlurmSlice:
    """The slice's snakemake run, started in the background (`start`) so that its scheduler round trips (each up to
    the plugin's status polling, mostly idle) overlap the rest of the suite; `finish` waits for it."""

    def __init__(self, work: Path, smollm2_dir: Path):
        self.work = work
        workdir_copy(work)
        # the materialised model from the session fixture: the scheduler test is about the DAG, not the GGUF
        # fresh times: newer than the assets script, so the model is not materialised again
        shutil.copytree(smollm2_dir, work / "resources" / "models" / "smollm2-135m-instruct",
                        copy_function=shutil.copy)
        (work / "slurm.yaml").write_text(yaml.safe_dump(SLURM_OVERLAY))
        # search and training: the rules that ask a cluster for threads and memory; the base cell runs beside them
        targets = ["results/search/smollm2-135m-instruct/summary.parquet", str(BASE_CELL),
                   str(ROUTERS / "routers.safetensors")]
        self.args = [SNAKEMAKE, *targets, "--cores", "all", "--profile", "slurm-ci", "--configfile",
                     "config/tiny.yaml", "slurm.yaml"]
        self.log = open(work / "snakemake.out", "w+")
        self.process = subprocess.Popen(self.args, cwd=work, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def finish(self, timeout: float = 900) -> str:
        """Wait for the run; its output, or an AssertionError with the output's end when it failed."""
        returncode = self.process.wait(timeout=timeout)
        self.log.seek(0)
        out = self.log.read()
        if returncode != 0:
            raise AssertionError(f"snakemake {' '.join(self.args[1:])} failed:\n{out[-6000:]}")
        return out

    def stop(self) -> None:
        """At session end: a run nobody waited for (its test deselected or failed first) is stopped."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.log.close()


@pytest.mark.skipif(not cluster_up(), reason="no SLURM cluster answers sinfo (run tests/slurm/start_cluster.sh)")
def test_tiny_config_runs_through_real_slurm_jobs(slurm_slice):
    out = slurm_slice.finish()
    work = slurm_slice.work
    assert pl.read_parquet(work / ROUTERS / "metrics.parquet").height == 25
    assert (work / "results" / "search" / "smollm2-135m-instruct" / "summary.md").is_file()
    # every job went through sbatch (the plugin removes the SLURM logs of successful jobs)
    assert "has been submitted with SLURM jobid" in out and "rule_search_shard" in out
    assert "rule_train_routers" in out and "rule_evaluate" in out
    assert "localrule" not in out
    cell = pl.read_parquet(work / BASE_CELL)
    assert cell.height == 3 and cell["path_length"].unique().to_list() == [30]
