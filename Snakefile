# drllm: Dr.LLM dynamic layer routing as a Snakemake DAG.
#   assets (model + benchmark records) -> prompts -> MCTS search -> router training -> evaluation -> report
# Run: snakemake --cores all            (embedded default, config/config.yaml)
#      snakemake --cores all --configfile config/paper.yaml --profile slurm
import json
import sys

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")

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
    """Cluster resources for a rule from config `resources.<name>`."""
    block = config.get("resources", {}).get(name, {})
    return {key: block[key] for key in ("mem_mb", "runtime", "gpus") if key in block}


include: "rules/assets.smk"


rule all:
    input:
        f"{MODEL_DIR}/drllm_model.json",
        DATA_FILES,
