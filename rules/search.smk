# Prompts + search stages: a seeded prompt set per task, MCTS shards per task, the Table 2 summary.


wildcard_constraints:
    task="[A-Za-z0-9_]+",
    shard=r"\d+",


# The search: keys the stage takes as arguments (where the search runs, never its rows) and the tasks (the rules
# above); every other key reaches the workers as one JSON (drllm.search.settings.SearchSettings: its own keys, the
# reward, and the labelers' blocks, search.mcts, search.safety and a plugin labeler's search.<name>).
SEARCH_STAGE_KEYS = ("shards", "backend", "workers", "ray_address", "max_retries", "batch_prompts", "tasks")
SEARCH_SETTINGS = {key: value for key, value in SEARCH.items() if key not in SEARCH_STAGE_KEYS}


rule select_prompts:
    priority: CRITICAL_PATH
    input:
        records=lambda wc: "resources/data/{benchmark}/{split}.parquet".format(**SEARCH_TASKS[wc.task]),
        script=f"{SCRIPTS}/select_prompts.py",
    output:
        PROMPTS,
    params:
        format=lambda wc: SEARCH_TASKS[wc.task]["format"],
        samples=lambda wc: SEARCH_TASKS[wc.task]["samples"],
        # only a task with `levels` passes the flag (select_prompts keeps every level without it)
        levels=lambda wc: shlex.join(["--levels", ",".join(map(str, SEARCH_TASKS[wc.task]["levels"]))])
        if SEARCH_TASKS[wc.task].get("levels")
        else "",
        seed=SEARCH["seed"],
    log:
        f"{LOGS}/select_prompts/{{model}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/select_prompts/{{model}}/{{task}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --records {input.records} --task {wildcards.task} "
        "--format {params.format} --samples {params.samples} {params.levels} --seed {params.seed} "
        "--out {output} > {log} 2>&1"


rule search_shard:
    priority: CRITICAL_PATH
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        prompts=PROMPTS,
        script=f"{SCRIPTS}/search.py",
    output:
        f"{SEARCH_DIR}/{{task}}/shard-{{shard}}.parquet",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        settings=json.dumps(SEARCH_SETTINGS, sort_keys=True),
        num_shards=SEARCH["shards"],
        backend=SEARCH["backend"],
        workers=SEARCH["workers"],
        # without `ray_address` no flag: the stage starts its own Ray (or runs in process)
        ray_address=shlex.join(["--ray-address", SEARCH["ray_address"]]) if SEARCH.get("ray_address") else "",
        max_retries=SEARCH["max_retries"],
        batch_prompts=SEARCH["batch_prompts"],
        device=config["runtime"]["device"],
        dtype=config["runtime"]["dtype"],
        # the job's `gpu` resource (a profile's set-resources, or none): Ray gets exactly these
        gpus=lambda wildcards, resources: resources.get("gpu", 0),
    log:
        f"{LOGS}/search/{{model}}/{{task}}-{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/search/{{model}}/{{task}}-{{shard}}.tsv"
    threads: 2
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --model-dir {params.model_dir} --prompts {input.prompts} "
        "--shard {wildcards.shard} --num-shards {params.num_shards} --settings-json {params.settings:q} "
        "--backend {params.backend} --workers {params.workers} --cpus {threads} --gpus {params.gpus} "
        "{params.ray_address} --max-retries {params.max_retries} --batch-prompts {params.batch_prompts} "
        "--device {params.device} --dtype {params.dtype} "
        "--out {output} > {log} 2>&1"


rule search_summary:
    priority: CRITICAL_PATH
    input:
        manifest=f"{MODEL_DIR}/drllm_model.json",
        shards=SEARCH_SHARDS,
        script=f"{SCRIPTS}/search_summary.py",
    output:
        table=f"{SEARCH_DIR}/summary.parquet",
        markdown=report(f"{SEARCH_DIR}/summary.md", caption="../workflow/report/search_summary.rst", category="Search"),
        safety=f"{SEARCH_DIR}/layer_safety.parquet",
    log:
        f"{LOGS}/search_summary/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/search_summary/{{model}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --manifest {input.manifest} --shards {input.shards} "
        "--out {output.table} > {log} 2>&1"
