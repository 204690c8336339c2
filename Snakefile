# drllm: Dr.LLM dynamic layer routing as a Snakemake DAG.
#   assets (model + benchmark records) -> prompts -> MCTS search -> router training -> evaluation -> report
#   -> release (the routers with a complete model card)
# Run: snakemake --cores all            (embedded default, config/config.yaml)
#      snakemake --cores all --configfile config/paper.yaml --profile slurm
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

include: "rules/common.smk"
include: "rules/assets.smk"
include: "rules/search.smk"
include: "rules/train.smk"
include: "rules/eval.smk"
include: "rules/report.smk"


rule all:
    input:
        f"{MODEL_DIR}/drllm_model.json",
        DATA_FILES,
        f"results/search/{MODEL}/summary.parquet",
        f"results/routers/{MODEL}/routers.safetensors",
        f"results/routers/{MODEL}/calibration.json",
        f"results/report/report.md",
        f"results/release/{MODEL}/README.md",
