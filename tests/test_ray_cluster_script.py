"""slurm/ray-cluster.sbatch (a multi-node Ray cluster inside one SLURM allocation): valid bash, and the config
overlay it writes passes the workflow's schema. The Ray join it relies on runs for real in test_search_stage.py."""
from __future__ import annotations

import re
import shlex
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
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for section, values in yaml.safe_load(overlay).items():
        config[section] = config.get(section, {}) | values
    # as the Snakefile does; unknown keys fail
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert config["search"]["ray_address"] == "10.0.0.1:6379" and config["search"]["workers"] == 32
    # the search rule hands the key to the stage's --ray-address (and passes no flag without it)
    (tmp_path / "joined.yaml").write_text(yaml.safe_dump(config))
    shard = "results/search/smollm2-135m-instruct/arc_easy/shard-0.parquet"
    joined = snakemake("-n", "-p", "--forceall", shard, "--configfile", str(tmp_path / "joined.yaml")).stdout
    alone = snakemake("-n", "-p", "--forceall", shard).stdout
    assert "--ray-address 10.0.0.1:6379 " in joined and "--ray-address" not in alone
    assert "--gpus 0 " in alone


def test_gpu_nodes_size_the_jobs_on_the_command_line_not_in_the_config():
    """With RAY_GPUS_PER_NODE the script's --set-resources give each search shard the allocation's GPUs, which the
    rule hands to the stage's --gpus (Ray); the other GPU stages take one each."""
    text = SCRIPT.read_text()
    array = re.search(r"gpu_args=\((--resources.*?)\)\n", text, re.S).group(1)
    gpu_args = shlex.split(array.replace("$total", "8"))
    assert gpu_args[:2] == ["--resources", "gpu=8"]
    target = "results/eval/smollm2-135m-instruct/arc_easy/static.parquet"  # needs search, training, evaluation
    out = snakemake("-n", "-p", "--forceall", "--cores", "16", target, *gpu_args).stdout
    searches = [line for line in out.splitlines() if "search.py" in line and "Shell command" in line]
    assert searches and all("--gpus 8 " in line for line in searches)
    for rule in ("search_shard", "train_routers", "block_influence", "evaluate"):
        block = out.split(f"rule {rule}:", 1)[1].split("\n\n", 1)[0]
        assert f"gpu={8 if rule == 'search_shard' else 1}" in block, (rule, block)
