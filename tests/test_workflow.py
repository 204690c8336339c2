"""The Snakemake DAG: lint, dry runs, schema validation, and the assets stage end to end on a tiny config."""
from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(*args, cwd=REPO, check=True, env=None):
    result = subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def workdir_copy(tmp_path):
    """The workflow files in a scratch directory, so runs leave the checkout alone."""
    for name in ["Snakefile", "rules", "workflow", "config", "envs", "profiles", "slurm", "slurm-ci"]:
        src = REPO / name
        if src.is_symlink():
            (tmp_path / name).symlink_to(src.readlink())
        else:
            (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def planned_jobs(result) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    lines = (result.stdout + result.stderr).splitlines()
    start = lines.index("Job stats:") + 3
    jobs = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.mark.parametrize("configs", [[], ["--configfile", "config/tiny.yaml"]], ids=["default", "tiny"])
def test_lint_is_clean(configs):
    out = (result := snakemake("--lint", *configs)).stdout + result.stderr
    assert "Lints for" not in out and "Congratulations, your workflow is in a good condition" in out, out


def rule_file_names(path: Path) -> tuple[set[str], str]:
    """A rule file's top-level names (assignments, defs) and its text without comments (what it reads)."""
    text = path.read_text()
    defined = set(re.findall(r"^([A-Za-z_]\w*)\s*=(?!=)", text, re.M)) | set(re.findall(r"^def (\w+)", text, re.M))
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    code = " ".join(token.string for token in tokens if token.type != tokenize.COMMENT)
    return defined, code


def test_no_rule_file_reads_a_name_a_later_include_defines():
    """Each rule file reads only names from itself or the files included before it (rules/common.smk first)."""
    includes = re.findall(r'^include: "([^"]+)"', (REPO / "Snakefile").read_text(), re.M)
    assert includes[0] == "rules/common.smk" and len(includes) == len(list((REPO / "rules").glob("*.smk")))
    files = [rule_file_names(REPO / name) for name in includes]
    for i, (_, code) in enumerate(files):
        for j in range(i + 1, len(files)):
            for name in sorted(files[j][0]):
                assert not re.search(rf"\b{name}\b", code), f"{includes[i]} reads {name}, defined by {includes[j]}"


def test_documented_rule_graph_is_the_rulegraph():
    """docs/running.md's mermaid flowchart has exactly the edges of `snakemake --rulegraph` (the default config)."""
    readme = (REPO / "docs" / "running.md").read_text()
    chart = readme.split("```mermaid\nflowchart LR\n", 1)[1].split("```", 1)[0]
    drawn = set()
    for line in chart.splitlines():
        groups = [[name.strip() for name in group.split("&")]
                  for group in re.sub(r'--\s*"[^"]*"\s*-->', "-->", line).split("-->")]
        drawn |= {(a, b) for left, right in zip(groups, groups[1:]) for a in left for b in right}
    dot = snakemake("--rulegraph").stdout
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)$", dot, re.M)}
    assert edges, dot
    assert drawn == edges, f"the docs lack {sorted(edges - drawn)}; the docs have extra {sorted(drawn - edges)}"


def test_every_report_output_has_a_caption_that_exists():
    for rule_file in sorted((REPO / "rules").glob("*.smk")):
        text = rule_file.read_text()
        for call in re.findall(r"report\((.*?)\)\s*,\s*\n", text, flags=re.S):
            caption = re.search(r'caption="([^"]+)"', call)
            assert caption, f"{rule_file.name}: report({call.strip()[:60]}...) has no caption"
            assert (rule_file.parent / caption.group(1)).resolve().is_file(), caption.group(1)


def test_a_gguf_model_file_is_an_input_of_the_assets_stage(tmp_path):
    work = workdir_copy(tmp_path)
    (work / "my.gguf").write_bytes(b"GGUF")  # a dry run only plans: the file is not read
    (work / "gguf.yaml").write_text(yaml.safe_dump({"model": {"name": "mine", "source": "gguf", "path": "my.gguf"}}))
    out = snakemake("-n", "resources/models/mine/drllm_model.json", "--configfile", "config/tiny.yaml",
                    "gguf.yaml", cwd=work).stdout
    assert "input: workflow/scripts/prepare_model.py, my.gguf" in out.replace(str(work) + "/", "")
    (work / "my.gguf").unlink()
    missing = snakemake("-n", "resources/models/mine/drllm_model.json", "--configfile", "config/tiny.yaml",
                        "gguf.yaml", cwd=work, check=False)
    assert missing.returncode != 0 and "my.gguf" in missing.stdout + missing.stderr


def test_rules_run_the_interpreter_running_snakemake_whatever_python_path_finds(tmp_path):
    """Rules call `python`: the workflow puts Snakemake's own interpreter first on PATH, so an unactivated venv
    works and another `python` earlier on PATH is not used."""
    import os

    work = tmp_path / "work"
    work.mkdir()
    workdir_copy(work)
    decoy = tmp_path / "bin"
    decoy.mkdir()
    (decoy / "python").write_text("#!/bin/sh\necho 'not the venv python' >&2\nexit 3\n")
    (decoy / "python").chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(decoy), "/usr/bin", "/bin"])}
    target = "resources/data/arc_easy/test.parquet"  # prepare_data reads packaged records: a second or two
    result = subprocess.run([SNAKEMAKE, "--cores", "1", target, "--configfile", "config/tiny.yaml"], cwd=work,
                            env=env, capture_output=True, text=True, timeout=300)
    log = (work / "logs" / "prepare_data" / "arc_easy-test.log").read_text()
    assert result.returncode == 0, result.stderr[-3000:] + log
    assert "not the venv python" not in log and (work / target).is_file()


def test_dry_run_of_default_config_plans_the_assets():
    result = snakemake("-n", "--forceall", "--quiet", "rules")
    out = result.stdout + result.stderr
    assert "prepare_model" in out and "prepare_data" in out


@pytest.mark.parametrize("profile", ["slurm", "slurm-ci"])
def test_slurm_profiles_are_found_from_the_repo_root(profile):
    result = snakemake("-n", "--forceall", "--profile", profile)
    assert "search_shard" in result.stdout + result.stderr


def test_paper_config_plans_the_paper_search_on_gpus():
    """The config says what to compute, the profile where: GPUs and threads come from profiles/slurm alone."""
    result = snakemake("-n", "-p", "--forceall", "--cores", "16", "--configfile", "config/paper.yaml",
                       "--profile", "slurm")
    jobs = planned_jobs(result)
    assert jobs["search_shard"] == 7 * 8 and jobs["train_routers"] == 1
    out = result.stdout + result.stderr
    searches = [line for line in out.splitlines() if line.startswith("Shell command: python") and "search.py" in line]
    assert len(searches) == 7 * 8 and all("--cpus 8 --gpus 1 " in line for line in searches)
    assert "mem_mb=64000" in out.split("rule train_routers:", 1)[1].split("\n\n", 1)[0]
    local = snakemake("-n", "-p", "--forceall", "--cores", "16", "--configfile", "config/paper.yaml")
    assert "gpu=" not in local.stdout and "--cpus 2 --gpus 0 " in local.stdout


def test_a_config_resources_block_is_refused_naming_the_profiles(tmp_path):
    work = workdir_copy(tmp_path)
    (work / "sized.yaml").write_text(yaml.safe_dump({"resources": {"search": {"gpus": 1}}}))
    result = snakemake("-n", "--configfile", "config/config.yaml", "sized.yaml", cwd=work, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "config resources:" in out and "profiles/slurm/config.yaml" in out


def test_schema_violation_fails_with_the_field_named(tmp_path):
    work = workdir_copy(tmp_path)
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config["runtime"]["dtype"] = "fp8"
    (work / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", "bad.yaml", cwd=work, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "fp8" in out and "dtype" in out


def test_search_task_with_unknown_benchmark_is_rejected(tmp_path):
    work = workdir_copy(tmp_path)
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config["search"]["tasks"]["arc_easy"]["benchmark"] = "arc_hard"
    (work / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", "bad.yaml", cwd=work, check=False)
    assert result.returncode != 0 and "arc_hard" in result.stdout + result.stderr


def test_dry_run_plans_the_frontier_and_calibrated_cells(tmp_path):
    import json
    import re

    work = workdir_copy(tmp_path)
    routers = work / "results" / "routers" / "smollm2-135m-instruct"
    routers.mkdir(parents=True)
    (routers / "calibration.json").write_text(json.dumps({"knob": -0.4, "max_drop": 0.02}))  # the stage's contract
    methods = ["base", "router", "static", "random", "oracle", "router@calibrated"]
    overlay = {"eval": {"methods": methods, "knobs": [-0.25, 0.25], "static_k": [2, 3], "random_k": [2]}}
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    out = snakemake("-n", "-p", "--configfile", "config/tiny.yaml", "overlay.yaml", cwd=work)
    out = out.stdout + out.stderr
    commands = {}
    for line in out.splitlines():
        if "evaluate.py" in line and "--method" in line:
            cell = re.search(r"--out results/eval/smollm2-135m-instruct/(\w+)/(\S+)\.parquet", line).groups()
            args = shlex.split(line.partition("Shell command: ")[2].partition(" > ")[0])
            assert "" not in args, line  # an absent input passes no flag, not an empty argument
            given = dict(zip(args, args[1:]))
            assert given["--data"] == f"resources/data/{cell[0]}/test.parquet"
            # each artifact the method declares, as --artifact <name>=<path>
            commands[cell] = dict(value.split("=", 1) for flag, value in zip(args, args[1:]) if flag == "--artifact")
    swept = ["router@-0.25", "router@0.25", "static@2", "static@3", "random@2"]
    assert set(commands) == {(b, m) for b in ("arc_easy", "squad") for m in methods + swept}
    router_dir, eval_dir = "results/routers/smollm2-135m-instruct", "results/eval/smollm2-135m-instruct"
    # fixed budgets need no router cell; static@k still reads the block influence; the matched baselines keep both
    assert commands["arc_easy", "static@2"] == {"influence": f"{eval_dir}/block_influence.parquet"}
    assert commands["squad", "random@2"] == {}
    assert commands["arc_easy", "static"] == {"influence": f"{eval_dir}/block_influence.parquet",
                                              "router_cell": f"{eval_dir}/arc_easy/router.parquet"}
    assert commands["arc_easy", "random"] == {"router_cell": f"{eval_dir}/arc_easy/router.parquet"}
    assert commands["squad", "router@calibrated"] == {"routers": f"{router_dir}/routers.safetensors",
                                                      "calibration": f"{router_dir}/calibration.json"}
    assert commands["squad", "router@-0.25"] == {"routers": f"{router_dir}/routers.safetensors"}
    # the frontier's panels: the evaluated entries on a benchmark some (enabled) search task trained on
    default, tiny = (yaml.safe_load((work / "config" / name).read_text()) for name in ("config.yaml", "tiny.yaml"))
    tasks = {name: {**block, **tiny["search"].get("tasks", {}).get(name, {})}
             for name, block in default["search"]["tasks"].items()}
    searched = {block["benchmark"] for block in tasks.values() if block["samples"] > 0}
    in_domain = json.loads(re.search(r"--in-domain-json '(\[[^']*\])'", out).group(1))
    assert "arc_easy" in in_domain and in_domain == [b for b in ("arc_easy", "squad") if b in searched]
    # any integer budget is a cell the rules can make on request; a malformed one matches no rule
    snakemake("-n", f"{eval_dir}/arc_easy/static@4.parquet", "--configfile", "config/tiny.yaml", cwd=work)
    bad = snakemake("-n", f"{eval_dir}/arc_easy/static@1.5.parquet", "--configfile", "config/tiny.yaml", cwd=work,
                    check=False)
    assert bad.returncode != 0 and "static@1.5.parquet" in bad.stdout + bad.stderr


LOCAL_DOCS = [{"question": "What is the capital of France?", "choices": ["Paris", "London"], "answer": 0},
              {"question": "What is 2+2?", "choices": ["3", "4"], "answer": 1}]


SQUAD_METHODS = ("base", "router", "router@calibrated", "oracle")


def lm_eval_overlay(work) -> dict:
    """An lm-eval task on a local json file, added to the tiny config's evaluation."""
    import json

    data = work / "local_mc.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in LOCAL_DOCS))
    task = {"task": "local_mc", "dataset_path": "json", "test_split": "test",
            "dataset_kwargs": {"data_files": {"test": str(data)}}, "output_type": "multiple_choice",
            "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc_norm"}]}
    tiny = yaml.safe_load((work / "config" / "tiny.yaml").read_text())
    return {"eval": {"select": tiny["eval"]["select"] + ["local_mc"],
                     "benchmarks": {"local_mc": {"lm_eval": {"task": task, "metric": "acc_norm"}},
                                    # test time: the generation benchmark runs the methods whose code differs
                                    # by format (the layer-removal baselines pick paths the same way on any)
                                    "squad": {"methods": list(SQUAD_METHODS)}}}}


# arc_easy: router, router@0.25, router@calibrated, router@certified, static, random, safest; squad: router,
# router@calibrated
ROUTED_CELLS = 7 + 2
REPORTED = {"report": 1, "cross_model_report": 1, "release_routers": 1, "all": 1}
# arc_easy: sure@2, sure@certified (the allocation, fitted on the search) and safest@2 (the search's sweep)
SEARCHED_CELLS = 3
# a config change reruns exactly the stages it reaches through params:
RERUNS = {
    "train.epochs": ({"train": {"epochs": 3}},
                     {"train_routers": 1, "calibrate_routers": 1, "evaluate": ROUTED_CELLS + 2, **REPORTED}),
    # the oracle's MCTS is search.mcts with eval.oracle.mcts over it (tiny sets its simulations)
    "search.mcts.simulations": ({"search": {"mcts": {"simulations": 5}}},
                                {"search_shard": 2, "search_summary": 1, "router_samples": 1, "train_routers": 1,
                                 "calibrate_routers": 1, "allocate": 1, "evaluate": ROUTED_CELLS + 2 + SEARCHED_CELLS,
                                 **REPORTED}),
    "search.mcts.length_penalty": ({"search": {"mcts": {"length_penalty": 4.0}}},
                                   {"search_shard": 2, "search_summary": 1, "router_samples": 1, "train_routers": 1,
                                    "calibrate_routers": 1, "allocate": 1,
                                    "evaluate": ROUTED_CELLS + 2 + 2 + SEARCHED_CELLS,  # + 2 oracle cells
                                    **REPORTED}),
    "search.tasks.samples": ({"search": {"tasks": {"arc_easy": {"samples": 3}}}},
                             {"select_prompts": 1, "search_shard": 1, "search_summary": 1, "router_samples": 1,
                              "train_routers": 1, "calibrate_routers": 1, "block_influence": 1, "allocate": 1,
                              "evaluate": ROUTED_CELLS + 2 + SEARCHED_CELLS, **REPORTED}),
    "eval.knobs": ({"eval": {"knobs": [0.5]}}, {"evaluate": 1 + 1, **REPORTED}),  # arc_easy and local_mc
    "eval.benchmarks.samples": ({"eval": {"benchmarks": {"arc_easy": {"samples": 4}}}}, {"evaluate": 9 + SEARCHED_CELLS, **REPORTED}),
    "eval.oracle.mcts": ({"eval": {"oracle": {"mcts": {"simulations": 3}}}}, {"evaluate": 2, **REPORTED}),
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, smollm2_dir):
    """The tiny config (plus an lm-eval task on a local file) run once, end to end, for the tests below. The model
    is the session's materialised SmolLM2 (test_models covers materialising it; here it would cost 45 s of CPU
    on the critical path), copied with fresh times so that it is newer than the assets script."""
    work = workdir_copy(tmp_path_factory.mktemp("tiny"))
    shutil.copytree(smollm2_dir, work / "resources" / "models" / "smollm2-135m-instruct", copy_function=shutil.copy)
    (work / "lm_eval.yaml").write_text(yaml.safe_dump(lm_eval_overlay(work)))
    configs = ["--configfile", "config/tiny.yaml", "lm_eval.yaml"]
    snakemake("--cores", "2", *configs, cwd=work)
    manifest = json.loads((work / "resources" / "models" / "smollm2-135m-instruct" / "drllm_model.json").read_text())
    return work, configs, manifest


@pytest.mark.slow
def test_tiny_run_assets_search_and_routers(tiny_run):
    work, _, manifest = tiny_run
    import polars as pl

    frame = pl.read_parquet(work / "resources" / "data" / "arc_easy" / "validation.parquet")
    assert frame.height == 570 and {"id", "question", "choices", "gold_index"} <= set(frame.columns)
    summary = pl.read_parquet(work / "results" / "search" / "smollm2-135m-instruct" / "summary.parquet")
    assert sorted(summary["task"]) == ["all", "arc_challenge", "arc_easy"]
    assert summary.filter(pl.col("task") == "arc_easy")["prompts"].item() == 2
    routers = work / "results" / "routers" / "smollm2-135m-instruct"
    assert {"routers.safetensors", "router_config.json", "metrics.parquet", "training_curves.png",
            "label_distribution.png", "calibration.json", "README.md"} <= {p.name for p in routers.iterdir()}
    card = (routers / "README.md").read_text()
    assert manifest["weights_sha256"] in card and "# Dr.LLM routers for smollm2-135m-instruct" in card
    assert json.loads((routers / "router_config.json").read_text())["base_model_sha256"] == manifest["weights_sha256"]
    assert pl.read_parquet(routers / "metrics.parquet").height == 25
    summary = json.loads((routers / "train_summary.json").read_text())
    assert summary["prior_val_loss"] > 0  # safety targets: the routers' validation loss has the prior's beside it


@pytest.mark.slow
def test_tiny_run_release_card(tiny_run):
    work, _, _ = tiny_run
    card = (work / "results" / "routers" / "smollm2-135m-instruct" / "README.md").read_text()
    release = work / "results" / "release" / "smollm2-135m-instruct"
    assert {p.name for p in release.iterdir()} == {"routers.safetensors", "router_config.json", "calibration.json",
                                                   "README.md"}
    released = (release / "README.md").read_text()
    assert released.startswith(card[:card.index("## Evaluation")]) and '"simulations": 4' in released
    assert "| arc_easy | base | 3 |" in released and "| arc_easy | router@calibrated | 3 |" in released
    assert "## Search" in released and "| arc_easy |" in released.split("## Search")[1].split("## Evaluation")[0]


@pytest.mark.slow
def test_tiny_run_evaluation_and_report(tiny_run):
    """Every benchmark x method cell (lm-eval tasks: the base and router methods only) and the report."""
    work, _, _ = tiny_run
    import polars as pl

    from drllm.evaluation.methods import order_methods
    from drllm.evaluation.summary import n_label

    cells = pl.read_parquet(work / "results" / "eval" / "smollm2-135m-instruct" / "*" / "*.parquet")
    methods = {"base", "router", "router@0.25", "router@calibrated", "router@certified", "static", "random", "safest",
               "oracle", "sure@2", "sure@certified", "safest@2"}
    assert {(b, m) for b, m in cells.select("benchmark", "method").unique().iter_rows()} == \
        {("arc_easy", m) for m in methods} | {("squad", m) for m in SQUAD_METHODS} | \
        {("local_mc", m) for m in ("base", "router", "router@0.25")}
    assert cells.filter(pl.col("method") == "base")["path_length"].unique().to_list() == [30]
    assert cells.filter((pl.col("benchmark") == "arc_easy") & (pl.col("method") == "router")).height == 3
    sure = cells.filter(pl.col("method") == "sure@2")
    assert sure.height == 3 and sure["read_blocks"].min() > 0 and cells.filter(pl.col("method") == "base")[
        "read_blocks"].null_count() == cells.filter(pl.col("method") == "base").height
    report = work / "results" / "report" / "smollm2-135m-instruct"
    text = (report / "report.md").read_text()
    assert "agieval" in text and "no data source" in text  # skipped, with the reason
    assert "## Certified operating point (sure@certified)" in text  # 4 calibration prompts: refused, saying why
    assert "`sure@certified` is the base model (saves no layers): refused: n = 4 calibration prompts" in text
    # every evaluated cell is a summary row with its row count, and every method a column of Table 3 whose n
    # column gives each benchmark's counts
    counts = {(b, m): n for b, m, n in cells.group_by("benchmark", "method").len().iter_rows()}
    summary = pl.read_parquet(report / "summary.parquet")
    assert {(b, m): n for b, m, n in summary.select("benchmark", "method", "n").iter_rows()} == counts
    assert f"| benchmark | metric | n | {' | '.join(order_methods(m for _, m in counts))} |" in text
    table3 = text.split("## Accuracy (Table 3)")[1].split("## Layers (Table 4)")[0]
    for benchmark in {b for b, _ in counts}:
        [row] = [line for line in table3.splitlines() if line.startswith(f"| {benchmark} |")]
        assert row.split(" | ")[2] == n_label([n for (b, _), n in counts.items() if b == benchmark]), row
    assert all((report / name).read_bytes()[:4] == b"\x89PNG" for name in
               ("accuracy_vs_layers.png", "frontier.png", "layer_actions.png", "routing_consensus.png"))
    assert (work / "logs" / "evaluate" / "smollm2-135m-instruct" / "squad" / "oracle.log").is_file()


@pytest.mark.slow
def test_tiny_run_provenance(tiny_run):
    """Every Parquet artifact names the stage, config, model and grader that made it."""
    work, _, manifest = tiny_run
    from drllm.core.artifacts import read_provenance

    records = {path.relative_to(work): read_provenance(path)
               for path in sorted([*(work / "resources").rglob("*.parquet"), *(work / "results").rglob("*.parquet")])}
    assert [str(path) for path, record in records.items() if record is None] == []
    by_stage = {}
    for path, record in records.items():
        by_stage.setdefault(record["stage"], []).append(record)
        if record["stage"] not in ("prepare_data", "select_prompts"):
            assert record["model"]["weights_sha256"] == manifest["weights_sha256"], path
    assert set(by_stage) == {"prepare_data", "select_prompts", "search", "search_summary", "router_samples",
                             "train_routers", "block_influence", "evaluate", "report", "cross_model_report"}
    assert by_stage["train_routers"][0]["config"]["epochs"] == 25
    [search_summary] = [r for r in by_stage["search_summary"] if r["artifact"] != "block influence"]
    assert [entry["files"] for entry in search_summary["inputs"]] == [2]  # the 2 shards agree
    assert search_summary["inputs"][0]["config_sha256"] == by_stage["search"][0]["config_sha256"]
    graders = {record["config"]["entry"]["name"]: set(record["grader"]) for record in by_stage["evaluate"]}
    assert graders == {"arc_easy": {"drllm.tasks", "math_verify"}, "squad": {"drllm.tasks", "math_verify"},
                       "local_mc": {"lm_eval"}}
    assert {record["artifact"] for record in by_stage["report"]} == {"report summary", "frontier points"}
    assert sum(entry["files"] for entry in by_stage["report"][0]["inputs"]) == len(by_stage["evaluate"])
    [cross_model] = by_stage["cross_model_report"]
    assert cross_model["config"]["models"] == ["smollm2-135m-instruct"] and cross_model["inputs"][0]["files"] == 1


@pytest.mark.slow
def test_tiny_run_leaves_nothing_to_do(tiny_run):
    work, configs, _ = tiny_run
    assert "Nothing to be done" in snakemake("-n", *configs, cwd=work).stdout


@pytest.mark.slow
def test_a_moved_finished_run_plans_nothing(tiny_run, tmp_path):
    """No rule input, output or param holds an absolute path: a finished run copied elsewhere is up to date."""
    import os

    work, configs, _ = tiny_run
    moved = tmp_path / "moved"
    shutil.copytree(work, moved, symlinks=True, copy_function=os.link)  # hard links: every file keeps its mtime
    assert "Nothing to be done" in snakemake("-n", *configs, cwd=moved).stdout


@pytest.mark.slow
def test_a_model_added_to_a_finished_run_plans_only_its_jobs(tiny_run):
    """`models:` lists several models, each in its own result trees: adding one schedules its jobs and the
    cross-model table, nothing of the finished model."""
    work, configs, _ = tiny_run
    first = yaml.safe_load((work / "config" / "config.yaml").read_text())["model"]
    (work / "models.yaml").write_text(yaml.safe_dump({"models": [first, {"name": "smollm2-again",
                                                                         "source": "embedded"}]}))
    result = snakemake("-n", *configs, "models.yaml", cwd=work)
    out = result.stdout + result.stderr
    jobs = planned_jobs(result)
    assert jobs["prepare_model"] == 1 and jobs["train_routers"] == 1 and jobs["report"] == 1
    assert jobs["cross_model_report"] == 1 and jobs["release_routers"] == 1
    assert set(re.findall(r"model=([\w.-]+)", out)) == {"smollm2-again"}
    assert "results/report/smollm2-again/report.md" in out and "results/search/smollm2-again/arc_easy/" in out
    two = yaml.safe_dump({"models": [first, {**first, "name": "smollm2-b"}], "results": {"run": "pair"}})
    (work / "models.yaml").write_text(two)  # a fresh run of both: two trees under results/pair, one table
    jobs = planned_jobs(result := snakemake("-n", *configs, "models.yaml", cwd=work))
    assert jobs["train_routers"] == 2 and jobs["report"] == 2 and jobs["cross_model_report"] == 1
    assert "results/pair/report/cross_model.md" in result.stdout and "logs/pair/report/smollm2-b.log" in result.stdout
    bad = yaml.safe_dump({"models": [first, first]})
    (work / "models.yaml").write_text(bad)
    refused = snakemake("-n", *configs, "models.yaml", cwd=work, check=False)
    assert refused.returncode != 0 and "config models: names must be unique" in refused.stdout + refused.stderr


@pytest.mark.slow
def test_released_routers_evaluate_on_a_new_benchmark_without_search_or_training(tiny_run):
    """`model.routers` names a release folder: only data, import and evaluation jobs run, into their own run tree,
    and the imported routers route the real model. Two benchmarks declared by config, threshold cells beside the
    plain router and the certified point, no knobs: the report lists them all."""
    import polars as pl

    work, configs, manifest = tiny_run
    questions = {"capitals": [("Which city is the capital of France?", ["Paris", "Rome"], 0),
                              ("Which city is the capital of Italy?", ["Paris", "Rome"], 1),
                              ("Which city is the capital of Japan?", ["Lima", "Tokyo", "Oslo"], 1),
                              ("Which city is the capital of Peru?", ["Lima", "Tokyo"], 0)],
                 "rivers": [("Which river flows through Cairo?", ["Nile", "Seine"], 0),
                            ("Which river flows through Paris?", ["Nile", "Seine"], 1),
                            ("Which river flows through London?", ["Thames", "Danube", "Volga"], 0)]}
    for name, rows in questions.items():
        (work / f"{name}.jsonl").write_text("".join(json.dumps({"q": q, "opts": options, "gold": gold}) + "\n"
                                                    for q, options, gold in rows))
    methods = ["base", "router", "router@certified", "router@t0.88", "router@t0.85"]
    overlay = {
        "results": {"run": "imported"},
        "model": {"routers": {"source": "results/release/smollm2-135m-instruct"}},
        "data": {name: {"kind": "multiple_choice", "source": {"path": f"{name}.jsonl"}, "splits": ["test"],
                        "fields": {"question": "q", "choices": "opts", "answer": "gold"}, "answer_format": "index"}
                 for name in questions},
        "eval": {"select": list(questions), "methods": methods, "knobs": [], "static_k": [], "random_k": [],
                 "benchmarks": {name: {"benchmark": name, "split": "test", "format": "cloze"} for name in questions}},
    }
    (work / "imported.yaml").write_text(yaml.safe_dump(overlay))
    jobs = planned_jobs(snakemake("-n", *configs, "imported.yaml", cwd=work))
    assert jobs == {"prepare_data": 2, "import_routers": 1, "evaluate": 10, "report": 1, "cross_model_report": 1,
                    "all": 1}
    snakemake("--cores", "2", *configs, "imported.yaml", cwd=work)
    tree = work / "results" / "imported"
    source = json.loads((tree / "routers" / "smollm2-135m-instruct" / "source.json").read_text())
    assert "results/release/smollm2-135m-instruct" in json.dumps(source)
    cells = pl.read_parquet(tree / "eval" / "smollm2-135m-instruct" / "*" / "*.parquet")
    assert sorted(cells["method"].unique()) == sorted(methods) and cells.height == 5 * (4 + 3)
    report = tree / "report" / "smollm2-135m-instruct"
    summary = pl.read_parquet(report / "summary.parquet")
    assert sorted(summary.select("benchmark", "method", "n").iter_rows()) == \
        sorted((name, m, len(rows)) for name, rows in questions.items() for m in methods)
    text = (report / "report.md").read_text()
    assert ("| benchmark | metric | n | base | router | router@certified | router@t0.85 | router@t0.88 |" in text
            and "## Certified operating point (router@certified)" in text)
    assert (report / "accuracy_vs_layers.png").read_bytes()[:4] == b"\x89PNG"
    assert (tree / "report" / "cross_model.md").is_file()
    assert not (tree / "search").exists() and not (tree / "release").exists()


@pytest.mark.slow
def test_confidence_routers_train_and_evaluate_through_the_dag(tiny_run):
    """train.router_kind confidence on the embedded model: the routers keep their lens and settings, the router
    cell routes with the read made in the same pass and records its cost, and the summary nets it out."""
    import polars as pl

    work, configs, manifest = tiny_run
    overlay = {"results": {"run": "confidence"},
               "search": {"tasks": {"arc_easy": {"samples": 0}}},  # test time: one search prompt (ARC-Challenge)
               "train": {"router_kind": "confidence", "confidence": {"read_layer": 12, "lens_top_k": 4},
                         "epochs": 2},
               "eval": {"select": ["arc_easy"], "methods": ["base", "router"], "knobs": [], "static_k": [],
                        "random_k": []}}
    (work / "confidence.yaml").write_text(yaml.safe_dump(overlay))
    tree, model = work / "results" / "confidence", manifest["name"]
    cell = f"results/confidence/eval/{model}/arc_easy/router.parquet"
    snakemake("--cores", "2", cell, *configs, "confidence.yaml", cwd=work)
    router_config = json.loads((tree / "routers" / model / "router_config.json").read_text())
    assert router_config["kind"] == "confidence"
    assert router_config["kind_settings"] == {"read_layer": 12, "lens_top_k": 4}
    rows = pl.read_parquet(tree / "eval" / model / "arc_easy" / "router.parquet")
    assert rows.height == 3 and all(0 < cost < 0.5 for cost in rows["read_blocks"])


@pytest.mark.slow
def test_plugin_reward_labeler_router_kind_and_method_run_through_the_dag(tiny_run):
    """config `plugins:` names a module (tests/plugins/toy_plugins.py) that registers a toy of each extension
    point, each with settings of its own; the config names them, and sets each one's block beside the key that
    chooses it. Every stage that looks one up finds it and its settings: the search labels with the toy labeler
    (judging its last `blocks` blocks) under the toy reward (its `k` in the shards' reward), the routers train as
    the toy kind (its `gain` kept in router_config.json), and the toy method's cells read what it declares (the
    search summary, which no built-in method reads) at its `scale`. Nothing outside the module and the overlay
    names them."""
    import os

    import polars as pl

    from conftest import PLUGINS_DIR

    work, configs, manifest = tiny_run
    overlay = {
        "results": {"run": "toys"},
        "plugins": ["toy_plugins"],
        # test time: one search prompt (ARC-Challenge), two epochs
        "search": {"reward": {"kind": "in_top", "in_top": {"k": 3}}, "labeler": "last_safe",
                   "last_safe": {"blocks": 3}, "tasks": {"arc_easy": {"samples": 0}}},
        "train": {"router_kind": "linear", "linear": {"gain": 0.5}, "standardize": False, "prior_init": False,
                  "epochs": 2},
        "eval": {"select": ["arc_easy"], "methods": ["base", "router", "unsafest", "unsafest@2"], "knobs": [],
                 "static_k": [], "random_k": [], "unsafest": {"scale": 2}},
    }
    (work / "toys.yaml").write_text(yaml.safe_dump(overlay))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS_DIR),
                                                                      os.environ.get("PYTHONPATH")]))}
    tree = work / "results" / "toys"
    model, layers = manifest["name"], manifest["num_layers"]
    cells = [f"results/toys/eval/{model}/arc_easy/{method}.parquet" for method in ("router", "unsafest", "unsafest@2")]
    snakemake("--cores", "2", *cells, *configs, "toys.yaml", cwd=work, env=env)
    shards = pl.read_parquet(tree / "search" / model / "*" / "shard-*.parquet")
    assert set(shards["labeler"]) == {"last_safe"}
    assert set(shards["reward"]) == {"in_top(margin=0.02,epsilon=0.2,min_f1=0.5,k=3)"}
    assert all(len(row) == layers for row in shards["layer_safety"])
    assert all(len(evaluated) == 1 + 3 for evaluated in shards["evaluated"])  # the default path, the last 3 blocks
    assert all(saved in (0, 1) for saved in shards["layers_saved"])  # the toy label skips at most one block
    router_config = json.loads((tree / "routers" / model / "router_config.json").read_text())
    assert router_config["kind"] == "linear" and router_config["kind_settings"] == {"gain": 0.5}
    assert router_config["training"]["linear"] == {"gain": 0.5}
    cell = lambda method: pl.read_parquet(tree / "eval" / model / "arc_easy" / f"{method}.parquet")  # noqa: E731
    assert set(cell("unsafest@2")["path_length"]) == {layers - 2}
    summary = pl.read_parquet(tree / "search" / model / "summary.parquet").filter(pl.col("task") == "all")
    assert set(cell("unsafest")["path_length"]) == {layers - round(2 * summary["mean_layers_saved"].item())}
    assert cell("router").height == 3
    # a block named after no method is refused when the Snakefile loads, naming it
    (work / "typo.yaml").write_text(yaml.safe_dump({"eval": {"unsafe": {"scale": 2}}}))
    typo = snakemake("-n", *cells, *configs, "toys.yaml", "typo.yaml", cwd=work, env=env, check=False)
    assert typo.returncode != 0 and "config eval: unknown key(s) ['unsafe']" in typo.stdout + typo.stderr
    # without the plugin module the config's names are unknown, and the error names the key
    bad = snakemake("-n", *cells, *configs, "toys.yaml", cwd=work, check=False)
    assert bad.returncode != 0 and "toy_plugins" in bad.stdout + bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("overlay, expected", list(RERUNS.values()), ids=list(RERUNS))
def test_a_config_change_reruns_exactly_the_stages_it_reaches(tiny_run, overlay, expected):
    work, configs, _ = tiny_run
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    assert planned_jobs(snakemake("-n", *configs, "overlay.yaml", cwd=work)) == expected


def test_two_models_config_plans_two_trees_and_one_table(tmp_path):
    """config/two_models.yaml: SmolLM2 and a user-assembled Gemma GGUF, each in its own tree, one cross-model table."""
    work = workdir_copy(tmp_path)
    gguf = work / "resources" / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")  # a dry run only plans: the file is not read
    result = snakemake("-n", "--configfile", "config/tiny.yaml", "config/two_models.yaml", cwd=work)
    jobs = planned_jobs(result)
    assert jobs["prepare_model"] == 2 and jobs["train_routers"] == 2 and jobs["report"] == 2
    assert jobs["cross_model_report"] == 1 and jobs["release_routers"] == 2
    for model in ("smollm2-135m-instruct", "gemma-3-270m"):
        assert f"results/two-models/report/{model}/report.md" in result.stdout


def test_study_config_plans_the_study():
    """config/study.yaml (RESULTS.md): >= 400 search prompts, calibration, >= 1,000 held-out ARC items with every
    method, the frontier subsamples and the out-of-domain benchmarks."""
    config = yaml.safe_load((REPO / "config" / "study.yaml").read_text())
    tasks = config["search"]["tasks"]
    assert sum(task["samples"] for task in tasks.values()) >= 400
    benchmarks = config["eval"]["benchmarks"]
    assert benchmarks["arc_easy"]["samples"] + benchmarks["arc_challenge"]["samples"] >= 1000
    result = snakemake("-n", "--forceall", "--configfile", "config/study.yaml")
    out = result.stdout + result.stderr
    jobs = planned_jobs(result)
    assert jobs["search_shard"] == 3 and jobs["calibrate_routers"] == 1 and jobs["report"] == 1
    for cell in ("arc_easy/router@calibrated", "arc_challenge/oracle", "arc_easy_frontier/static@4", "arc_easy/router",
                 "arc_easy/random", "arc_challenge_frontier/router@-0.1", "mmlu/router", "gpqa/router", "squad/base"):
        assert f"results/eval/smollm2-135m-instruct/{cell}.parquet" in out, cell
    assert "results/eval/smollm2-135m-instruct/gsm8k/router.parquet" not in out  # per-entry methods


def test_study3_config_plans_the_safety_study():
    """config/study3.yaml (RESULTS.md, issue 19): the safety labeler on ARC validation, safety targets, calibration
    on >= 500 pooled held-out prompts with a certificate, >= 1,000 held-out ARC test items with router@certified,
    the router's threshold frontier, safest@k / ShortGPT / random baselines, and >= 100 items per OOD benchmark."""
    config = yaml.safe_load((REPO / "config" / "study3.yaml").read_text())
    assert config["search"]["labeler"] == "safety" and config["train"]["target"] == "safety"
    assert config["calibrate"]["certify"]["epsilon"] == 0.01
    benchmarks = config["eval"]["benchmarks"]
    assert benchmarks["arc_easy"]["samples"] + benchmarks["arc_challenge"]["samples"] >= 1000
    assert all(benchmarks[name]["samples"] >= 100 for name in ("mmlu", "piqa", "gpqa", "squad", "truthfulqa"))
    result = snakemake("-n", "--forceall", "--configfile", "config/study3.yaml")
    out = result.stdout + result.stderr
    jobs = planned_jobs(result)
    assert jobs["search_shard"] == 3 and jobs["calibrate_routers"] == 1 and jobs["report"] == 1
    # labels from ARC validation and one half of ARC test, evaluation on the other half
    tasks = {name: block for name, block in config["search"]["tasks"].items() if block["samples"] > 0}
    assert {block["split"] for block in tasks.values()} == {"validation", "test_search"}
    assert sum(block["samples"] for block in tasks.values()) >= 770
    assert {benchmarks[name]["split"] for name in ("arc_easy", "arc_challenge")} == {"test_eval"}
    for cell in ("arc_easy/router@certified", "arc_challenge/router@t0.9", "arc_easy/safest@2",
                 "arc_challenge/static@2", "arc_easy/random@2", "mmlu/router@certified", "squad/base"):
        assert f"results/eval/smollm2-135m-instruct/{cell}.parquet" in out, cell
    # calibration takes every validation question the search left: 570 + 299 - 300 >= 500
    assert "calibrate_routers" in out and '"samples": null' in out


def test_study4d_config_is_study3s_search_in_the_listed_format():
    """config/study4d.yaml (RESULTS.md study 4d, issue 30): study 3's 770 labelled prompts, reward and train block,
    with the options listed in the context, in a run tree of its own."""
    study3 = yaml.safe_load((REPO / "config" / "study3.yaml").read_text())
    study4d = yaml.safe_load((REPO / "config" / "study4d.yaml").read_text())
    assert study4d["train"] == study3["train"] and study4d["search"]["reward"] == study3["search"]["reward"]
    searched = {name: block for name, block in study4d["search"]["tasks"].items() if block["samples"] > 0}
    assert searched == {name: {**study3["search"]["tasks"][name], "format": "listed"}
                        for name in ("arc_easy", "arc_challenge", "arc_easy_test")}
    target = "results/study4d/routers/smollm2-135m-instruct/router_config.json"
    result = snakemake("-n", "--forceall", target, "--configfile", "config/study4d.yaml")
    out = result.stdout + result.stderr
    assert planned_jobs(result)["search_shard"] == 3 and out.count("--format listed") == 3


def test_labeler_comparison_configs_swap_only_the_labels():
    """config/labelers/ (RESULTS.md, issue 19): over study 3, the paper's or canonical MCTS labels on study 3's 300
    validation prompts, path routers, a knob sweep on the same calibration prompts, each arm in its own run tree."""
    common = yaml.safe_load((REPO / "config" / "labelers" / "common.yaml").read_text())
    assert common["search"]["tasks"]["arc_easy_test"]["samples"] == 0 and common["train"]["target"] == "path"
    arms = {arm: yaml.safe_load((REPO / "config" / "labelers" / f"{arm}.yaml").read_text())
            for arm in ("paper", "canonical")}
    assert {(a["search"]["mcts"]["expansion"], a["search"]["mcts"]["tie_break"]) for a in arms.values()} == \
        {("random", "first"), ("ordered", "canonical")}
    target = "results/labelers-paper/routers/smollm2-135m-instruct/calibration.json"
    result = snakemake("-n", "--forceall", target, "--configfile", "config/study3.yaml", "config/labelers/common.yaml",
                       "config/labelers/paper.yaml")
    out = result.stdout + result.stderr
    assert planned_jobs(result)["search_shard"] == 2 and '"labeler": "mcts"' in out and '"target": "path"' in out
    assert '"knobs": [-0.7, -0.6, -0.5, -0.35, -0.2]' in out
