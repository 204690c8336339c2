# Allocation (drllm.evaluation.allocation_stage): a per-prompt skip budget from the confidence read at layer R, fitted
# on the search's prompts, run on the calibration sets at every mean budget and certified by Learn-then-Test.
# `sure@<b>` and `sure@certified` cells read it; it needs this run's search (its single-skip sweep).
rule allocate:
    priority: CRITICAL_PATH
    wildcard_constraints:
        model=_names_pattern(TRAINED_MODELS),
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        safety=f"{SEARCH_DIR}/layer_safety.parquet",
        prompts=SEARCH_PROMPTS,
        data=list(CALIBRATION_DATA.values()),
        script=f"{SCRIPTS}/allocate.py",
    output:
        f"{ROUTER_DIR}/allocation.json",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        data=" ".join(f"{name}={path}" for name, path in CALIBRATION_DATA.items()),
        config=json.dumps(config.get("allocate") or {}, sort_keys=True),
        calibrate=json.dumps(
            {
                **{key: CALIBRATE[key] for key in ("sets", "seed", "certify") if key in CALIBRATE},
                "formats": EVAL["formats"],
                "chat_template": EVAL["chat_template"],
            },
            sort_keys=True,
        ),
        encoding=json.dumps({key: SEARCH[key] for key in ("formats", "chat_template")}, sort_keys=True),
        device=config["runtime"]["device"],
        dtype=config["runtime"]["dtype"],
    log:
        f"{LOGS}/allocate/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/allocate/{{model}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --safety {input.safety} --prompts {input.prompts} "
        "--data {params.data} --config-json {params.config:q} --calibrate-json {params.calibrate:q} "
        "--encoding-json {params.encoding:q} --device {params.device} --dtype {params.dtype} "
        "--out {output} > {log} 2>&1"
