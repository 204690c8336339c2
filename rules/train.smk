# Router stage: training samples from the kept search results, then the routers.


rule router_samples:
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        prompts=expand("results/prompts/{task}.parquet", task=SEARCH_TASKS),
        shards=SEARCH_SHARDS,
        script=f"{workflow.basedir}/workflow/scripts/router_samples.py",
    output:
        f"{ROUTER_DIR}/samples.parquet",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        settings=json.dumps(
            {key: SEARCH[key] for key in ("formats", "chat_template")}, sort_keys=True
        ),
    log:
        f"logs/router_samples/{MODEL}.log",
    benchmark:
        f"benchmarks/router_samples/{MODEL}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --prompts {input.prompts} "
        "--shards {input.shards} --settings-json {params.settings:q} --out {output} > {log} 2>&1"


rule train_routers:
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        samples=f"{ROUTER_DIR}/samples.parquet",
        script=f"{workflow.basedir}/workflow/scripts/train_routers.py",
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
        f"logs/train_routers/{MODEL}.log",
    benchmark:
        f"benchmarks/train_routers/{MODEL}.tsv"
    threads: 2
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --samples {input.samples} "
        "--config-json {params.train:q} --out-dir {params.out_dir} --device {params.device} "
        "--dtype {params.dtype} > {log} 2>&1"


# Calibration (drllm.routing.calibration): the knob p of `router@calibrated`, chosen on held-out validation prompts.
rule calibrate_routers:
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        weights=f"{ROUTER_DIR}/routers.safetensors",
        prompts=expand("results/prompts/{task}.parquet", task=SEARCH_TASKS),
        data=list(CALIBRATION_DATA.values()),
        script=f"{workflow.basedir}/workflow/scripts/calibrate_routers.py",
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
        f"logs/calibrate_routers/{MODEL}.log",
    benchmark:
        f"benchmarks/calibrate_routers/{MODEL}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --routers {params.routers} "
        "--data {params.data} --prompts {input.prompts} --config-json {params.settings:q} --no-progress "
        "--device {params.device} --dtype {params.dtype} --out {output} > {log} 2>&1"
