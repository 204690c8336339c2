# Router stage: training samples from the kept search results, then the routers.


rule router_samples:
    priority: CRITICAL_PATH
    wildcard_constraints:
        model=_names_pattern(TRAINED_MODELS),
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        prompts=SEARCH_PROMPTS,
        shards=SEARCH_SHARDS,
        script=f"{SCRIPTS}/router_samples.py",
    output:
        f"{ROUTER_DIR}/samples.parquet",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        settings=json.dumps(
            {key: SEARCH[key] for key in ("formats", "chat_template")}, sort_keys=True
        ),
    log:
        f"{LOGS}/router_samples/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/router_samples/{{model}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --prompts {input.prompts} "
        "--shards {input.shards} --settings-json {params.settings:q} --out {output} > {log} 2>&1"


rule train_routers:
    priority: CRITICAL_PATH
    wildcard_constraints:
        model=_names_pattern(TRAINED_MODELS),
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        samples=f"{ROUTER_DIR}/samples.parquet",
        script=f"{SCRIPTS}/train_routers.py",
    output:
        weights=f"{ROUTER_DIR}/routers.safetensors",
        config=f"{ROUTER_DIR}/router_config.json",
        metrics=f"{ROUTER_DIR}/metrics.parquet",
        card=f"{ROUTER_DIR}/README.md",
        curves=report(f"{ROUTER_DIR}/training_curves.png", caption="../workflow/report/training_curves.rst", category="Routers"),
        labels=report(f"{ROUTER_DIR}/label_distribution.png", caption="../workflow/report/label_distribution.rst", category="Routers"),
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        out_dir=lambda wildcards, output: os.path.dirname(output.weights),
        train=json.dumps(config["train"], sort_keys=True),
        device=config["runtime"]["device"],
        dtype=config["runtime"]["dtype"],
    log:
        f"{LOGS}/train_routers/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/train_routers/{{model}}.tsv"
    threads: 2
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --samples {input.samples} "
        "--config-json {params.train:q} --out-dir {params.out_dir} --device {params.device} "
        "--dtype {params.dtype} > {log} 2>&1"


# Calibration (drllm.calibration.calibration): the knob p of `router@calibrated`, chosen on held-out validation prompts.
rule calibrate_routers:
    priority: CRITICAL_PATH
    wildcard_constraints:
        model=_names_pattern(TRAINED_MODELS),
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        weights=f"{ROUTER_DIR}/routers.safetensors",
        prompts=SEARCH_PROMPTS,
        data=list(CALIBRATION_DATA.values()),
        script=f"{SCRIPTS}/calibrate_routers.py",
    output:
        f"{ROUTER_DIR}/calibration.json",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        routers=lambda wildcards, input: os.path.dirname(input.weights),
        data=" ".join(f"{name}={path}" for name, path in CALIBRATION_DATA.items()),
        settings=json.dumps(
            {
                **CALIBRATE,
                "formats": EVAL["formats"],
                "chat_template": EVAL["chat_template"],
            },
            sort_keys=True,
        ),
        device=config["runtime"]["device"],
        dtype=config["runtime"]["dtype"],
    log:
        f"{LOGS}/calibrate_routers/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/calibrate_routers/{{model}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --routers {params.routers} "
        "--data {params.data} --prompts {input.prompts} --config-json {params.settings:q} --no-progress "
        "--device {params.device} --dtype {params.dtype} --out {output} > {log} 2>&1"


# Routers from elsewhere (`model.routers`: a release folder or a hub repo id), checked against the model's name,
# revision and weights hash; in place of the search, training and calibration above.
rule import_routers:
    wildcard_constraints:
        model=_names_pattern(IMPORTED_MODELS),
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        source=router_source_files,
        script=f"{SCRIPTS}/import_routers.py",
    output:
        weights=f"{ROUTER_DIR}/routers.safetensors",
        config=f"{ROUTER_DIR}/router_config.json",
        calibration=f"{ROUTER_DIR}/calibration.json",
        provenance=f"{ROUTER_DIR}/source.json",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        out_dir=lambda wildcards, output: os.path.dirname(output.weights),
        source=lambda wc: MODELS[wc.model]["routers"]["source"],
        revision=lambda wc: shlex.join(["--revision", MODELS[wc.model]["routers"]["revision"]])
        if MODELS[wc.model]["routers"].get("revision") else "",
    log:
        f"{LOGS}/import_routers/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/import_routers/{{model}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --source {params.source:q} {params.revision} --model-dir {params.model_dir} "
        "--out-dir {params.out_dir} > {log} 2>&1"
