# Report stage: Tables 3/4 equivalents, plots and a summary Parquet from every evaluation cell.

# In-domain: entries on a benchmark the search (and so the routers) trained on; the frontier plots a panel each.
REPORT_IN_DOMAIN = sorted(
    name
    for name, block in EVAL_ENTRIES.items()
    if block.get("benchmark") in {task["benchmark"] for task in SEARCH_TASKS.values()}
)


rule report:
    input:
        unpack(report_inputs),
    output:
        markdown=report(f"{REPORT_DIR}/report.md", caption="../workflow/report/report_md.rst", category="Evaluation"),
        summary=report(f"{REPORT_DIR}/summary.parquet", caption="../workflow/report/summary.rst", category="Evaluation"),
        accuracy=report(
            f"{REPORT_DIR}/accuracy_vs_layers.png",
            caption="../workflow/report/accuracy_vs_layers.rst",
            category="Evaluation",
        ),
        frontier=report(
            f"{REPORT_DIR}/frontier.png", caption="../workflow/report/frontier.rst", category="Evaluation"
        ),
        frontier_points=report(
            f"{REPORT_DIR}/frontier.parquet", caption="../workflow/report/frontier_points.rst", category="Evaluation"
        ),
        actions=report(
            f"{REPORT_DIR}/layer_actions.png", caption="../workflow/report/layer_actions.rst", category="Evaluation"
        ),
        consensus=report(
            f"{REPORT_DIR}/routing_consensus.png",
            caption="../workflow/report/routing_consensus.rst",
            category="Evaluation",
        ),
    params:
        skipped=lambda wc: json.dumps(eval_skipped(wc.model), sort_keys=True),
        in_domain=json.dumps(REPORT_IN_DOMAIN),
        seed=EVAL["seed"],
        out_dir=lambda wildcards, output: os.path.dirname(output.markdown),
        files=lambda wildcards, input: shlex.join(
            arg for name in ("calibration", "allocation") if name in input.keys()
            for arg in (f"--{name}", getattr(input, name))
        ),
    log:
        f"{LOGS}/report/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/report/{{model}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --cells {input.cells:q} --skipped-json {params.skipped:q} "
        "--in-domain-json {params.in_domain:q} --seed {params.seed} {params.files} --out-dir {params.out_dir} "
        "> {log} 2>&1"


# Release: the routers as one shareable directory whose model card carries the search settings, the search summary
# and the evaluation table (drllm.release.card.release_card).
rule release_routers:
    wildcard_constraints:
        model=_names_pattern(TRAINED_MODELS),
    input:
        weights=f"{ROUTER_DIR}/routers.safetensors",
        router_config=f"{ROUTER_DIR}/router_config.json",
        card=f"{ROUTER_DIR}/README.md",
        calibration=f"{ROUTER_DIR}/calibration.json",
        shards=SEARCH_SHARDS,
        search_summary=f"{SEARCH_DIR}/summary.md",
        report_summary=f"{REPORT_DIR}/summary.parquet",
        script=f"{SCRIPTS}/release_routers.py",
    output:
        weights=f"{RELEASE_DIR}/routers.safetensors",
        router_config=f"{RELEASE_DIR}/router_config.json",
        calibration=f"{RELEASE_DIR}/calibration.json",
        card=report(f"{RELEASE_DIR}/README.md", caption="../workflow/report/release_card.rst", category="Routers"),
    params:
        router_dir=lambda wildcards, input: os.path.dirname(input.weights),
        out_dir=lambda wildcards, output: os.path.dirname(output.weights),
    log:
        f"{LOGS}/release_routers/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/release_routers/{{model}}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --router-dir {params.router_dir} --shards {input.shards:q} "
        "--search-summary {input.search_summary} --report-summary {input.report_summary} "
        "--out-dir {params.out_dir} > {log} 2>&1"


# Cross-model: the paper's Table 3 / Table 4 layout, one row per model, from every model's report summary.
rule cross_model_report:
    input:
        summaries=expand(f"{REPORT_DIR}/summary.parquet", model=MODELS),
        script=f"{SCRIPTS}/cross_model_report.py",
    output:
        markdown=report(f"{CROSS_MODEL_DIR}/cross_model.md", caption="../workflow/report/cross_model.rst", category="Models"),
        table=report(f"{CROSS_MODEL_DIR}/cross_model.parquet", caption="../workflow/report/cross_model.rst", category="Models"),
        figure=report(f"{CROSS_MODEL_DIR}/cross_model.png", caption="../workflow/report/cross_model.rst", category="Models"),
    params:
        summaries=lambda wildcards, input: shlex.join(
            arg for name, path in zip(MODELS, input.summaries) for arg in ("--summary", f"{name}={path}")
        ),
        in_domain=json.dumps(REPORT_IN_DOMAIN),
        out_dir=lambda wildcards, output: os.path.dirname(output.markdown),
    log:
        f"{LOGS}/report/cross_model.log",
    benchmark:
        f"{BENCHMARKS}/report/cross_model.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} {params.summaries} --in-domain-json {params.in_domain:q} "
        "--out-dir {params.out_dir} > {log} 2>&1"
