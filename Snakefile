# drllm: Dr.LLM dynamic layer routing as a Snakemake DAG.
#   assets (model + benchmark records) -> prompts -> MCTS search -> router training -> evaluation -> report
#   -> release (the routers with a complete model card); several models (`models:`) -> one cross-model table
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
include: "rules/allocate.smk"
include: "rules/eval.smk"
include: "rules/report.smk"


rule all:
    input:
        DATA_FILES,
        expand(f"{MODEL_DIR}/drllm_model.json", model=MODELS),
        expand(f"{ROUTER_DIR}/{{name}}", model=MODELS, name=["routers.safetensors", "calibration.json"]),
        expand(f"{REPORT_DIR}/report.md", model=MODELS),
        f"{CROSS_MODEL_DIR}/cross_model.md",
        # routers trained here: the search summary and the release (imported routers come released)
        expand(f"{SEARCH_DIR}/summary.parquet", model=TRAINED_MODELS),
        expand(f"{RELEASE_DIR}/README.md", model=TRAINED_MODELS),
