# Shared names and helpers for every rule file.
import json
import os
import sys

from snakemake.settings.types import DeploymentMethod

# Inside a conda env (--sdm conda) `python` is the env's; otherwise the interpreter running Snakemake.
PYTHON = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable
MODEL = config["model"]["name"]
MODEL_DIR = f"resources/models/{MODEL}"
DATA_FILES = [
    f"resources/data/{benchmark}/{split}.parquet"
    for benchmark, block in config["data"].items()
    for split in block["splits"]
]


def rule_resources(name):
    """Cluster resources for a rule from config `resources.<name>` (threads are set separately).

    `gpus` becomes Snakemake's `gpu` resource (the SLURM executor's --gpus), and only when > 0.
    """
    block = config.get("resources", {}).get(name, {})
    resources = {key: block[key] for key in ("mem_mb", "runtime") if key in block}
    if block.get("gpus", 0) > 0:
        resources["gpu"] = block["gpus"]
    return resources


def rule_threads(name, default=1):
    return config.get("resources", {}).get(name, {}).get("threads", default)
