# Report stage: Tables 3/4 equivalents, plots and a summary Parquet from every evaluation cell.

REPORT_DIR = "results/report"
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
        skipped=json.dumps(EVAL_SKIPPED, sort_keys=True),
        in_domain=json.dumps(REPORT_IN_DOMAIN),
        seed=EVAL["seed"],
        out_dir=lambda wildcards, output: os.path.dirname(output.markdown),
        calibration=lambda wildcards, input: shlex.join(["--calibration", input.calibration])
        if "calibration" in input.keys() else "",
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --cells {input.cells:q} --skipped-json {params.skipped:q} "
        "--in-domain-json {params.in_domain:q} --seed {params.seed} {params.calibration} --out-dir {params.out_dir} "
        "> {log} 2>&1"


# Release: the routers as one shareable directory whose model card carries the search settings, the search summary
# and the evaluation table (drllm.routing.card.release_card).
RELEASE_DIR = f"results/release/{MODEL}"


rule release_routers:
    input:
        weights=f"{ROUTER_DIR}/routers.safetensors",
        router_config=f"{ROUTER_DIR}/router_config.json",
        card=f"{ROUTER_DIR}/README.md",
        calibration=f"{ROUTER_DIR}/calibration.json",
        shards=SEARCH_SHARDS,
        search_summary=f"results/search/{MODEL}/summary.md",
        report_summary=f"{REPORT_DIR}/summary.parquet",
        script=f"{workflow.basedir}/workflow/scripts/release_routers.py",
    output:
        weights=f"{RELEASE_DIR}/routers.safetensors",
        router_config=f"{RELEASE_DIR}/router_config.json",
        calibration=f"{RELEASE_DIR}/calibration.json",
        card=report(f"{RELEASE_DIR}/README.md", caption="../workflow/report/release_card.rst", category="Routers"),
    params:
        router_dir=lambda wildcards, input: os.path.dirname(input.weights),
        out_dir=lambda wildcards, output: os.path.dirname(output.weights),
    log:
        f"logs/release_routers/{MODEL}.log",
    benchmark:
        f"benchmarks/release_routers/{MODEL}.tsv"
    conda:
        "../envs/drllm.yaml"
    shell:
        "python {input.script} --router-dir {params.router_dir} --shards {input.shards:q} "
        "--search-summary {input.search_summary} --report-summary {input.report_summary} "
        "--out-dir {params.out_dir} > {log} 2>&1"
