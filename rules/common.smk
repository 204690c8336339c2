# Shared names and helpers for all rules, included first. Every other .smk reads only names defined here or in
# its own text (tests/test_workflow.py checks that no file reads a name a later include defines).
import json
import os
import re
import shlex
import sys

import yaml

# Plugin modules (config `plugins:`) register extension-point entries; every job inherits the variable, so each
# stage imports them before looking a name up (drllm.core.plugins).
os.environ["DRLLM_PLUGINS"] = ",".join(config.get("plugins") or [])


envvars:
    "PATH",
    "DRLLM_PLUGINS",


# Rules run `python`: the interpreter running Snakemake is put first on PATH here (its venv works unactivated),
# and jobs inherit it (SLURM: sbatch --export=ALL); under --sdm conda the job shell sources conda's `activate`,
# which puts the env's bin before it, so there `python` is the env's.
_BIN = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:  # parsed again per job: prepend once
    os.environ["PATH"] = os.pathsep.join(filter(None, [_BIN, os.environ.get("PATH")]))

# The stages every routed cell waits for (data, model, search, samples, training, calibration, allocation) run
# before ready evaluation cells, so a run on a few cores does not finish the cheap cells first and then wait on the
# routers (the demo's 2-core run spent 7 minutes so).
CRITICAL_PATH = 10


# -- models and result trees ---------------------------------------------------------------------------------
# `models:` (several) replaces `model:` (one) when given; every artifact lives under its model's name, so models
# and runs coexist: <results.dir>[/<results.run>]/{prompts,search,routers,eval,report,release}/<model>/.
MODEL_BLOCKS = config.get("models") or [config["model"]]
MODELS = {block["name"]: block for block in MODEL_BLOCKS}
if len(MODELS) != len(MODEL_BLOCKS):
    _names = [block["name"] for block in MODEL_BLOCKS]
    raise ValueError(f"config models: names must be unique (they name result trees), got {_names}")
# Models with `routers:` evaluate those routers: no search, training or release is scheduled for them.
IMPORTED_MODELS = sorted(name for name, block in MODELS.items() if block.get("routers"))
TRAINED_MODELS = sorted(name for name in MODELS if name not in IMPORTED_MODELS)


def _names_pattern(names):
    """A wildcard constraint matching exactly these model names (none: matches nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    model=_names_pattern(MODELS),


_RESULTS = config.get("results") or {}
_RUN = _RESULTS.get("run")
RESULTS = os.path.join(_RESULTS.get("dir") or "results", _RUN or "").rstrip("/")
LOGS = os.path.join("logs", _RUN) if _RUN else "logs"
BENCHMARKS = os.path.join("benchmarks", _RUN) if _RUN else "benchmarks"
# Rule inputs name the scripts relative to the working directory, so a moved or copied checkout plans nothing.
SCRIPTS = os.path.relpath(os.path.join(workflow.basedir, "workflow", "scripts"))
MODEL_DIR = "resources/models/{model}"
PROMPTS = f"{RESULTS}/prompts/{{model}}/{{task}}.parquet"
SEARCH_DIR = f"{RESULTS}/search/{{model}}"
ROUTER_DIR = f"{RESULTS}/routers/{{model}}"
EVAL_DIR = f"{RESULTS}/eval/{{model}}"
REPORT_DIR = f"{RESULTS}/report/{{model}}"
CROSS_MODEL_DIR = f"{RESULTS}/report"
RELEASE_DIR = f"{RESULTS}/release/{{model}}"


def model_block_json(wc):
    """The model block as prepare_model reads it (without `routers`: changing them rematerialises nothing)."""
    return json.dumps({key: value for key, value in MODELS[wc.model].items() if key != "routers"}, sort_keys=True)


# Trees written before results were per model held prompts and the report directly: say the two moves once.
_single = next(iter(MODELS))
if len(MODELS) == 1 and not _RUN and (glob_wildcards(f"{RESULTS}/prompts/{{task,[A-Za-z0-9_]+}}.parquet").task
                                      or os.path.exists(f"{RESULTS}/report/report.md")):
    print(
        f"drllm: results/prompts and results/report are per model now; to keep this tree, run: mkdir -p "
        f"{RESULTS}/prompts/{_single} {RESULTS}/report/{_single} && mv {RESULTS}/prompts/*.parquet "
        f"{RESULTS}/prompts/{_single}/ && mv {RESULTS}/report/*.* {RESULTS}/report/{_single}/",
        file=sys.stderr,
    )
DATA_FILES = [
    f"resources/data/{benchmark}/{split}.parquet"
    for benchmark, block in config["data"].items()
    for split in block["splits"]
]
# Cluster sizing (threads, mem_mb, runtime, gpu per rule) is the profile's (set-threads / set-resources in
# profiles/slurm*/config.yaml): the config says what to compute, the profile where.
if "resources" in config:
    raise ValueError(
        "config resources: per-rule threads, memory, runtime and GPUs moved to the profiles; set them with "
        "set-threads / set-resources in profiles/slurm/config.yaml (or --set-threads / --set-resources)"
    )
# -- search (rules/search.smk; the prompts feed the routers, calibration and block influence too) -----------
SEARCH = config["search"]
# `samples: 0` disables a task: config overlays merge key by key and cannot delete one.
SEARCH_TASKS = {name: block for name, block in SEARCH["tasks"].items() if block["samples"] > 0}
# One model's shards and prompts ({model} left to the rule's wildcard).
SEARCH_SHARDS = expand(f"{SEARCH_DIR}/{{task}}/shard-{{shard}}.parquet", task=SEARCH_TASKS,
                       shard=range(SEARCH["shards"]), allow_missing=True)
SEARCH_PROMPTS = expand(PROMPTS, task=SEARCH_TASKS, allow_missing=True)


# -- routers (rules/train.smk) -------------------------------------------------------------------------------
def router_source_files(wc):
    """A local release folder's files are inputs (replacing them re-imports); a hub id has none."""
    source = MODELS[wc.model]["routers"]["source"]
    if not os.path.isdir(source):
        return []
    return [os.path.join(source, name) for name in ("routers.safetensors", "router_config.json", "calibration.json")]


# Benchmarks declared by config (`kind`, `source`, `fields`) and the formats reading them: checked here, so a bad
# block stops the run before any job, naming the key. (drllm must import here: the method table below needs it.)
from drllm.data.declared import check_config

CONFIG_DECLARED = check_config(config)
# Search tasks and calibration sets read records of a `data:` entry (eval entries without one are reported skipped).
for _section, _blocks in (("search.tasks", config["search"]["tasks"]), ("calibrate.sets", config["calibrate"]["sets"])):
    for _name, _block in _blocks.items():
        if _block.get("samples") != 0 and _block["benchmark"] not in config["data"]:
            raise ValueError(
                f"config {_section}.{_name}.benchmark: {_block['benchmark']!r} has no data.{_block['benchmark']} "
                f"entry (data entries: {sorted(config['data'])})"
            )


def data_source_files(wc):
    """The local file a config-declared benchmark's split reads (none for built-ins and hub sources)."""
    block = config["data"].get(wc.benchmark, {})
    if "kind" not in block:
        return []
    return CONFIG_DECLARED[wc.benchmark].source_files(wc.split)


def data_block_json(wc):
    """The `data.<benchmark>` block as prepare_data reads it, without `splits` (adding a split redoes no other)."""
    block = {key: value for key, value in config["data"].get(wc.benchmark, {}).items() if key != "splits"}
    return json.dumps(block, sort_keys=True)


# -- evaluation (rules/eval.smk, rules/report.smk) ---------------------------------------------------------
# The method table: which methods exist, what their cells read, their settings, the `method` wildcard's pattern.
from drllm.core.plugins import split_blocks
from drllm.evaluation.methods import (METHODS, artifact_path, cell_artifacts, lm_eval_runs, method_pattern,
                                      needs_search, parse_method)

EVAL = config["eval"]
# eval's own keys are the schema's; any other key is a method's settings block, eval.<kind> (checked against the
# method's settings class when its cells run; here: it must name a method that has settings)
with open(os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")) as _schema:
    _EVAL_KEYS = list(yaml.safe_load(_schema)["properties"]["eval"]["properties"])
EVAL_METHOD_BLOCKS = split_blocks(EVAL, _EVAL_KEYS, METHODS, "config eval")[1]
EVAL_SELECTED = EVAL["select"] or list(EVAL["benchmarks"])
_unknown_selected = sorted(set(EVAL_SELECTED) - set(EVAL["benchmarks"]))
if _unknown_selected:
    raise ValueError(
        f"config eval.select names {_unknown_selected}, which eval.benchmarks does not define "
        f"(defined: {sorted(EVAL['benchmarks'])})"
    )
# A benchmark with no `data:` entry has no source here: it is reported as skipped, never silently dropped.
# Entries with `lm_eval:` run an lm-eval task (lm-eval finds its data) with the base and router methods only.
def _has_source(block):
    return "lm_eval" in block or block.get("benchmark") in config["data"]


EVAL_ENTRIES = {name: EVAL["benchmarks"][name] for name in EVAL_SELECTED if _has_source(EVAL["benchmarks"][name])}
EVAL_SKIPPED = [
    {
        "benchmark": name,
        "reason": f"no data source: config has no data.{EVAL['benchmarks'][name].get('benchmark')} entry "
        "(add one with a hub mapping to evaluate it)",
    }
    for name in EVAL_SELECTED
    if name not in EVAL_ENTRIES
]
# Swept cells: router@p per knob, and the fixed-budget baselines static@k / random@k (the frontier's x axis).
EVAL_METHODS = (
    list(EVAL["methods"])
    + [f"router@{p:g}" for p in EVAL["knobs"]]
    + [f"static@{k}" for k in EVAL["static_k"]]
    + [f"random@{k}" for k in EVAL["random_k"]]
)
# Every method name is checked against the method table (drllm.evaluation.methods, plugins included) before any
# job runs, naming the config key; an entry's own `methods` list replaces the global one for that entry.
for _name, _methods in [("eval.methods", EVAL_METHODS)] + [
    (f"eval.benchmarks.{name}.methods", block["methods"]) for name, block in EVAL_ENTRIES.items() if "methods" in block
]:
    for _method in _methods:
        try:
            parse_method(_method)
        except ValueError as _error:
            raise ValueError(f"config {_name}: {_error}") from None


def eval_cells(model):
    """One model's evaluation cells. lm-eval tasks run the methods the table marks lm_eval (no threshold or file
    point); imported routers come without a search, so cells reading it are left out (eval_skipped says so)."""
    return [
        f"{EVAL_DIR.format(model=model)}/{benchmark}/{method}.parquet"
        for benchmark, block in EVAL_ENTRIES.items()
        for method in block.get("methods", EVAL_METHODS)
        if ("lm_eval" not in block or lm_eval_runs(method)) and not (model in IMPORTED_MODELS and needs_search(method))
    ]


def eval_skipped(model):
    """The benchmarks without a source, and for imported routers the cells that need this run's search."""
    return EVAL_SKIPPED + [
        {"benchmark": f"{benchmark} {method}", "reason": "needs the search's single-skip sweep, which imported "
         "routers (model.routers) do not come with"}
        for benchmark, block in EVAL_ENTRIES.items()
        for method in block.get("methods", EVAL_METHODS)
        if model in IMPORTED_MODELS and needs_search(method)
    ]


def eval_entry_json(wc):
    """The entry as evaluate.py reads it: which records, format and sample (not which cells exist)."""
    entry = {key: value for key, value in EVAL_ENTRIES[wc.eval_benchmark].items() if key != "methods"}
    return json.dumps({"name": wc.eval_benchmark, **entry}, sort_keys=True)


def eval_cell_inputs(wc):
    """The records (not for lm-eval tasks) and every artifact the cell's method declares it reads
    (drllm.evaluation.methods.cell_artifacts), at this model's and benchmark's paths."""
    entry = EVAL_ENTRIES[wc.eval_benchmark]
    inputs = {
        "manifest": f"{MODEL_DIR}/drllm_model.json".format(model=wc.model),
        "script": f"{SCRIPTS}/evaluate.py",
    }
    if "lm_eval" not in entry:
        inputs["data"] = "resources/data/{benchmark}/{split}.parquet".format(**entry)
    trees = {"routers": ROUTER_DIR, "search": SEARCH_DIR, "eval": EVAL_DIR}
    for name, pattern in cell_artifacts(wc.method).items():
        inputs[name] = artifact_path(pattern, **{tree: path.format(model=wc.model) for tree, path in trees.items()},
                                     benchmark=wc.eval_benchmark, model=wc.model)
    return inputs


def eval_artifact_flags(wildcards, input):
    """--data (records) and one `--artifact <name>=<path>` per artifact the cell reads, shell-quoted."""
    args = ["--data", input.data] if "data" in input.keys() else []
    for name in cell_artifacts(wildcards.method):
        args += ["--artifact", f"{name}={getattr(input, name)}"]
    return shlex.join(args)


def eval_settings(wc):
    """Only the settings this cell's method reads, so editing one method's settings reruns only its cells: the
    shared keys and the method's own block, eval.<kind> (the oracle's: the search's MCTS and reward under it)."""
    kind = parse_method(wc.method)[0]
    settings = {
        "seed": EVAL["seed"],
        "chat_template": EVAL["chat_template"],
        "formats": EVAL["formats"],
    }
    if kind == "oracle":  # config/config.yaml gives eval.oracle both keys; the schema the defaults of the rest
        settings["oracle"] = {
            "samples": EVAL["oracle"]["samples"],
            "mcts": {**SEARCH["mcts"], **EVAL["oracle"]["mcts"]},
            # eval.oracle.reward over the search's (recorded in provenance): a gold-free agreement reward would
            # make the "oracle" search for the full model's own answer, so config.yaml sets robust there
            "reward": {**SEARCH["reward"], **EVAL["oracle"].get("reward", {})},
        }
        settings["prefix_cache"] = SEARCH["prefix_cache"]
    elif kind in EVAL_METHOD_BLOCKS:
        settings[kind] = EVAL_METHOD_BLOCKS[kind]
    return json.dumps(settings, sort_keys=True)


# -- calibration (rules/train.smk) --------------------------------------------------------------------------
# `samples: 0` disables a set (overlays cannot delete a key).
CALIBRATE = {
    **config["calibrate"],
    "sets": {name: block for name, block in config["calibrate"]["sets"].items() if block.get("samples") != 0},
}
CALIBRATION_DATA = {
    name: "resources/data/{benchmark}/{split}.parquet".format(**block) for name, block in sorted(CALIBRATE["sets"].items())
}


# -- report (rules/report.smk) ------------------------------------------------------------------------------
def report_inputs(wc):
    """One model's cells, and its calibration file when a router@certified cell is reported (its certificate is
    shown)."""
    cells = eval_cells(wc.model)
    inputs = {"cells": cells, "script": f"{SCRIPTS}/report.py"}
    if any(os.path.basename(cell) == "router@certified.parquet" for cell in cells):
        inputs["calibration"] = f"{ROUTER_DIR}/calibration.json".format(model=wc.model)
    if any(os.path.basename(cell) == "sure@certified.parquet" for cell in cells):
        inputs["allocation"] = f"{ROUTER_DIR}/allocation.json".format(model=wc.model)
    return inputs
