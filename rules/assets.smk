# Assets stage: the frozen model, materialised once, and uniform benchmark records.


rule prepare_model:
    priority: CRITICAL_PATH
    input:
        script=f"{SCRIPTS}/prepare_model.py",
        # a local GGUF file is an input: replacing it rematerialises the model (and reruns what depends on it)
        gguf=lambda wc: [MODELS[wc.model]["path"]] if MODELS[wc.model].get("source") == "gguf" else [],
    output:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        weights=f"{MODEL_DIR}/model.safetensors",
    params:
        model=model_block_json,
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "benchmarks/prepare_model/{model}.tsv"
    threads: 2
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-json {params.model:q} --out-dir {params.out_dir} > {log} 2>&1"


# A `data:` entry with a `kind` declares its own benchmark (drllm.data.declared): its local source file is an
# input, so editing the file reruns the stage; the block rides in params, so editing it does too (without
# `splits`: adding a split leaves the others alone).
rule prepare_data:
    priority: CRITICAL_PATH  # seconds each; the search waits for its prompts' records
    input:
        script=f"{SCRIPTS}/prepare_data.py",
        source=data_source_files,
    output:
        "resources/data/{benchmark}/{split}.parquet",
    params:
        data=data_block_json,
    log:
        "logs/prepare_data/{benchmark}-{split}.log",
    benchmark:
        "benchmarks/prepare_data/{benchmark}-{split}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --benchmark {wildcards.benchmark} --split {wildcards.split} "
        "--data-json {params.data:q} --out {output} > {log} 2>&1"
