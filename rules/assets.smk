# Assets stage: the frozen model, materialised once, and uniform benchmark records.


rule prepare_model:
    input:
        script=f"{workflow.basedir}/workflow/scripts/prepare_model.py",
    output:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        weights=f"{MODEL_DIR}/model.safetensors",
    params:
        model=json.dumps(config["model"], sort_keys=True),
        python=PYTHON,
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    log:
        f"logs/prepare_model/{MODEL}.log",
    benchmark:
        f"benchmarks/prepare_model/{MODEL}.tsv"
    threads: rule_threads("prepare_model", 2)
    resources:
        **rule_resources("prepare_model"),
    conda:
        "../envs/drllm.yaml"
    shell:
        "{params.python} {input.script} --model-json {params.model:q} --out-dir {params.out_dir} > {log} 2>&1"


rule prepare_data:
    input:
        script=f"{workflow.basedir}/workflow/scripts/prepare_data.py",
    output:
        "resources/data/{benchmark}/{split}.parquet",
    params:
        hub=lambda wc: json.dumps(config["data"].get(wc.benchmark, {}).get("hub") or {}, sort_keys=True),
        python=PYTHON,
    log:
        "logs/prepare_data/{benchmark}-{split}.log",
    benchmark:
        "benchmarks/prepare_data/{benchmark}-{split}.tsv"
    threads: rule_threads("prepare_data")
    resources:
        **rule_resources("prepare_data"),
    conda:
        "../envs/drllm.yaml"
    shell:
        "{params.python} {input.script} --benchmark {wildcards.benchmark} --split {wildcards.split} "
        "--hub-json {params.hub:q} --out {output} > {log} 2>&1"
