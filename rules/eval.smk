# Evaluation stage: fan-out over benchmark x method, one Parquet cell each; the static baseline's calibration.

wildcard_constraints:
    # every name the method table's grammar accepts (drllm.evaluation.methods), plugin methods included
    method=method_pattern(),
    eval_benchmark="[A-Za-z0-9_]+",


rule block_influence:
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        prompts=SEARCH_PROMPTS,
        script=f"{SCRIPTS}/block_influence.py",
    output:
        f"{EVAL_DIR}/block_influence.parquet",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        settings=json.dumps(
            {key: SEARCH[key] for key in ("formats", "chat_template")}, sort_keys=True
        ),
        device=config["runtime"]["device"],
        dtype=config["runtime"]["dtype"],
    log:
        f"{LOGS}/block_influence/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/block_influence/{{model}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --prompts {input.prompts} "
        "--settings-json {params.settings:q} --device {params.device} --dtype {params.dtype} "
        "--out {output} > {log} 2>&1"


rule evaluate:
    input:
        unpack(eval_cell_inputs),
    output:
        f"{EVAL_DIR}/{{eval_benchmark}}/{{method}}.parquet",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        entry=eval_entry_json,
        settings=eval_settings,
        artifacts=eval_artifact_flags,
        device=config["runtime"]["device"],
        dtype=config["runtime"]["dtype"],
    log:
        f"{LOGS}/evaluate/{{model}}/{{eval_benchmark}}/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{model}}/{{eval_benchmark}}/{{method}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} {params.artifacts} "
        "--entry-json {params.entry:q} --method {wildcards.method:q} --settings-json {params.settings:q} "
        "--device {params.device} --dtype {params.dtype} --out {output:q} > {log:q} 2>&1"
