"""slurm/ray-cluster.sbatch (a multi-node Ray cluster inside one SLURM allocation): valid bash, and the config
overlay it writes passes the workflow's schema. The Ray join it relies on runs for real in test_search_stage.py."""
from __future__ import annotations

import re
import subprocess

import yaml
from snakemake.utils import validate

from conftest import REPO
from test_workflow import snakemake

SCRIPT = REPO / "slurm" / "ray-cluster.sbatch"


def test_script_is_valid_bash_with_sbatch_directives():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = SCRIPT.read_text()
    assert re.search(r"^#SBATCH --nodes=\d+$", text, re.M)
    # head on the first node, the other nodes join it, every `ray start` stays in the foreground of its job step
    assert re.search(r'srun --nodes=1 --ntasks=1 -w "\$head" "\$ray" start --head --block', text)
    assert re.search(r'srun --nodes=1 --ntasks=1 -w "\$node" "\$ray" start --block --address="\$address"', text)
    # one authentication mode for head, workers and search jobs (test_search_stage joins a head set up this way)
    assert "export RAY_AUTH_MODE=token" in text and "export RAY_AUTH_TOKEN" in text


def test_overlay_it_writes_joins_the_cluster_through_existing_config_keys(tmp_path):
    text = SCRIPT.read_text()
    overlay = re.search(r"<<YAML\n(.*?)^YAML$", text, re.S | re.M).group(1)
    overlay = overlay.replace("$address", "10.0.0.1:6379").replace("$workers", "32")
    gpus = re.search(r"printf '(resources:.*?)' \"\$total\"", text).group(1).replace("\\n", "\n").replace("%s", "8")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for extra in (yaml.safe_load(overlay), yaml.safe_load(gpus)):
        for section, values in extra.items():
            config[section] = config.get(section, {}) | values
    # as the Snakefile does; unknown keys fail
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert config["search"]["ray_address"] == "10.0.0.1:6379" and config["search"]["workers"] == 32
    assert config["resources"]["search"]["gpus"] == 8
    # the search rule hands the key to the stage's --ray-address (and passes no flag without it)
    (tmp_path / "joined.yaml").write_text(yaml.safe_dump(config))
    shard = "results/search/smollm2-135m-instruct/arc_easy/shard-0.parquet"
    joined = snakemake("-n", "-p", "--forceall", shard, "--configfile", str(tmp_path / "joined.yaml")).stdout
    alone = snakemake("-n", "-p", "--forceall", shard).stdout
    assert "--ray-address 10.0.0.1:6379 " in joined and "--ray-address" not in alone
