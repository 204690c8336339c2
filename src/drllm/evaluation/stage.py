"""The evaluation stage for one cell (benchmark x method), from files to the written Parquet cell:
`run_cell(CellRequest)`. workflow/scripts/evaluate.py parses the command line into a CellRequest; the rules
(rules/eval.smk) give one per cell.

Finished examples are checkpointed (<out>.progress.jsonl), so a killed job resumes where it stopped. An entry with
`lm_eval: {task, metric}` runs that lm-eval task through the drllm lm-eval model instead (base and router methods
only).
"""
from __future__ import annotations

import json
import time
import os
from dataclasses import dataclass, field
from pathlib import Path

from drllm.core.cli import json_argument
from drllm.core.executor import PathExecutor
from drllm.core.models import chat_template_for, load_model, read_manifest
from drllm.core.provenance import stage_provenance
from drllm.data.entries import EvalEntry, sample_examples
from drllm.data.examples import read_examples
from drllm.evaluation.cells import (CellContext, EvaluationError, cell_accuracy, cell_row, evaluate_examples,
                                    write_cell)
from drllm.evaluation.methods import (FILE_POINTS, METHODS, cell_artifacts, describe_artifact, method_name,
                                      parse_method)
from drllm.evaluation.policies import build_policy, router_point
from drllm.evaluation.settings import EvalSettings
from drllm.formats.answers import get_format
from drllm.calibration.calibration import CALIBRATED
from drllm.routing.router import RouterStack
from drllm.search.shards import Checkpoint


@dataclass(frozen=True)
class CellRequest:
    """One cell to evaluate, as the rule gives it (JSON blocks as text: they are recorded in the provenance)."""

    model_dir: str
    entry_json: str                # the eval.benchmarks entry: name, benchmark, split, format, samples, levels...
    method: str                    # drllm.evaluation.methods grammar
    out: str
    data: str = ""                 # benchmark records Parquet (not for lm-eval tasks)
    settings_json: str = "{}"      # EvalSettings: seed, chat_template, formats, prefix_cache, eval.<kind>
    # the artifacts the method reads (drllm.evaluation.methods.cell_artifacts): name -> path; "routers": the trained
    # router directory or its routers.safetensors
    artifacts: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True


def parse_entry(text: str, formats: dict) -> EvalEntry:
    block = json_argument(text, "--entry-json")
    if not isinstance(block.get("name"), str):
        raise ValueError("--entry-json must be a JSON object with a 'name'")
    name = block.pop("name")
    return EvalEntry.from_config(name, block, formats)


def cell_inputs(request: CellRequest, method: str) -> dict[str, str]:
    """The artifacts of the request that the method declares it reads, each one required (a ValueError names
    the flag and the artifact's usual path); others given are not the method's and are left out."""
    declared = cell_artifacts(request.method)
    missing = [name for name in declared if not request.artifacts.get(name)]
    if missing:
        raise ValueError(f"method {method!r} needs " + ", ".join(
            f"--artifact {name}=<{describe_artifact(declared[name])}>" for name in missing))
    return {name: request.artifacts[name] for name in declared}


def routers_dir(inputs: dict[str, str]) -> str:
    """The trained routers' directory (the artifact names the directory or its weights file)."""
    path = inputs["routers"]
    return path if os.path.isdir(path) else os.path.dirname(path)


def lm_eval_rows(request: CellRequest, entry: EvalEntry, kind: str, knob, settings: EvalSettings,
                 model_name: str, method: str, inputs: dict[str, str]) -> list[dict]:
    """An lm-eval task through the drllm lm-eval model: one EVAL_SCHEMA row per document."""
    from drllm.evaluation.lmeval import DrLLM, evaluate_task

    if not METHODS.get(kind).lm_eval:
        runs = [name for name in METHODS if METHODS.get(name).lm_eval]
        raise ValueError(f"method {method!r} does not apply to the lm-eval task {entry.name!r} "
                         f"(lm-eval tasks run {runs}, their @<p> knobs and router@{CALIBRATED})")
    routers = routers_dir(inputs) if "routers" in inputs else None
    lm = DrLLM(pretrained=request.model_dir, routers=routers, knob=knob, device=request.device, dtype=request.dtype)
    started = time.perf_counter()
    spec = entry.lm_eval
    try:
        records = evaluate_task(lm, spec["task"], spec["metric"], limit=entry.samples,
                                seed=settings.seed, include_path=spec.get("include_path"),
                                apply_chat_template=bool(spec.get("apply_chat_template", False)))
    except Exception as exc:  # lm-eval raises many types; name the cell
        raise EvaluationError(f"{entry.name}/{method}: lm-eval failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    seconds = (time.perf_counter() - started) / max(1, len(records))
    task_name = spec["task"] if isinstance(spec["task"], str) else spec["task"].get("task", entry.name)
    rows = []
    for index, record in enumerate(records):
        path = record["path"]
        passes = record["new_tokens"] if record["new_tokens"] else record["requests"]
        rows.append(cell_row(entry.name, method, model_name, example_id=record["example_id"], example_index=index,
                             subset=None, level=None, source=f"lm-eval task {task_name}", format="lm_eval",
                             metric=spec["metric"], prediction=record["prediction"], gold=record["gold"],
                             score=record["score"], correct=record["score"] >= 1.0, path=path,
                             layer_applications=len(path) * passes, new_tokens=record["new_tokens"], knob=knob,
                             seconds=seconds))
    return rows


def run_cell(request: CellRequest) -> str:
    """Evaluate one cell and write it atomically to `request.out`; returns a one-line summary.

    Raises ValueError / ArtifactError / EvaluationError naming what is wrong; a checkpoint of finished examples
    is kept on any failure or interrupt."""
    given = json_argument(request.settings_json, "--settings-json")
    settings = EvalSettings.from_dict(given)
    entry = parse_entry(request.entry_json, settings.formats)
    kind, knob = parse_method(request.method)
    method = method_name(kind, knob)
    inputs = cell_inputs(request, method)
    threshold = None
    routed = METHODS.get(kind).param == "router"
    from_file = routed and knob in FILE_POINTS  # routes exactly as router@<p> / router@t<tau>; the rows keep the name
    if routed:
        knob, threshold = router_point(knob, inputs.get("calibration", ""))
    if from_file:
        point = f"knob p = {knob:g}" if threshold is None else f"threshold tau = {threshold:g}"
        print(f"evaluate: {method}: {point} from {inputs['calibration']}")
    manifest = read_manifest(request.model_dir)
    provenance = stage_provenance(
        "evaluate", {"entry": json.loads(request.entry_json), "method": request.method, "settings": given},
        manifest, graders=["lm_eval"] if entry.lm_eval is not None else ["drllm"])
    if entry.lm_eval is not None:
        if threshold is not None:
            raise ValueError(f"method {method!r}: lm-eval cells take the knob only, not a threshold decision")
        rows = lm_eval_rows(request, entry, kind, knob, settings, manifest["name"], method, inputs)
        write_cell(request.out, rows, provenance)
        return (f"evaluate: {entry.name}/{method}: {len(rows)} documents, lm-eval {entry.lm_eval['metric']} "
                f"{cell_accuracy(rows):.4f} -> {request.out}")
    answer_format = get_format(entry.format, **entry.options)
    examples = sample_examples(read_examples(request.data), entry, settings.seed)
    if kind == "oracle" and settings.method_settings("oracle").samples:
        examples = examples[:settings.method_settings("oracle").samples]
    # routers are checked against the model before the model loads
    routers = RouterStack.for_model(routers_dir(inputs), manifest) if "routers" in inputs else None
    model, tokenizer, _ = load_model(request.model_dir, device=request.device, dtype=request.dtype)
    ctx = CellContext(entry, method, manifest["name"], PathExecutor(model), tokenizer, answer_format,
                      chat_template_for(settings.chat_template, manifest), routers)
    policy = build_policy(kind, knob, ctx, settings, inputs, threshold)
    fingerprint = {"model": manifest["name"], "entry": entry.__dict__ | {"levels": entry.levels},
                   "method": method, "knob": knob, "threshold": threshold, "settings": given,
                   "data": Path(request.data).name,
                   "examples": [ex.id for ex in examples]}
    checkpoint = Checkpoint(f"{request.out}.progress.jsonl", fingerprint, key="example_id")
    try:
        if checkpoint.rows:
            print(f"evaluate: resuming, {len(checkpoint.rows)} of {len(examples)} examples already done")
        rows = evaluate_examples(ctx, examples, policy, done=checkpoint.rows, on_row=checkpoint.add,
                                 progress=request.progress,
                                 knob=knob if routed else None,  # static@k's k is in the name
                                 threshold=threshold if routed else None)
        write_cell(request.out, rows, provenance)
    except BaseException:
        checkpoint.close()
        raise
    checkpoint.close(remove=True)
    mean_length = sum(row["path_length"] for row in rows) / max(1, len(rows))
    return (f"evaluate: {entry.name}/{method}: {len(rows)} examples, {answer_format.name} "
            f"score {cell_accuracy(rows):.4f}, mean path {mean_length:.2f}/{ctx.executor.num_layers} -> {request.out}")
