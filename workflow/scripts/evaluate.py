"""Evaluation stage: one benchmark x one method -> one Parquet cell, one row per example (drllm.evaluation.cells).

Methods: base | router | router@<p> (control knob p) | router@calibrated (p from --calibration) |
static (needs --router-cell and --influence) | static@<k> (k layers removed; needs --influence) |
random (needs --router-cell) | random@<k> (k random layers per example) | oracle (MCTS with the gold answer).
Finished examples are checkpointed (<out>.progress.jsonl), so a killed job resumes where it stopped. An entry with
`lm_eval: {task, metric}` runs that lm-eval task through the drllm lm-eval model instead (base and router methods
only).

Example:
  python workflow/scripts/evaluate.py --model-dir resources/models/smollm2-135m-instruct \\
      --data resources/data/arc_easy/test.parquet \\
      --entry-json '{"name": "arc_easy", "benchmark": "arc_easy", "split": "test", "format": "cloze"}' \\
      --method router --routers results/routers/smollm2-135m-instruct \\
      --out results/eval/smollm2-135m-instruct/arc_easy/router.parquet
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from drllm.core.artifacts import ArtifactError
from drllm.evaluation.baselines import (fixed_removals, matched_removals, oracle_search, random_path, random_seed,
                                        read_influence, static_path)
from drllm.data.examples import read_examples
from drllm.evaluation.cells import (CellContext, EvalEntry, EvalSettings, EvaluationError, cell_accuracy,
                                    evaluate_examples, read_calibration, read_cell, sample_examples, write_cell)
from drllm.evaluation.methods import CALIBRATED, LM_EVAL_METHODS, method_name, parse_method
from drllm.core.executor import PathExecutor
from drllm.routing.inference import RoutedModel
from drllm.core.models import chat_template_for, load_model, read_manifest
from drllm.core.provenance import stage_provenance
from drllm.routing.router import RouterStack
from drllm.search.shards import Checkpoint
from drllm.core.seeds import derived_seed
from drllm.formats.answers import get_format

def parse_settings(text: str) -> tuple[dict, EvalSettings]:
    """The settings as given (recorded in provenance and the checkpoint) and validated (what the cell uses)."""
    try:
        block = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--settings-json is not valid JSON: {exc}") from exc
    if not isinstance(block, dict):
        raise ValueError("--settings-json must be a JSON object")
    return block, EvalSettings.from_dict(block)


def parse_entry(text: str, formats: dict) -> EvalEntry:
    try:
        block = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--entry-json is not valid JSON: {exc}") from exc
    if not isinstance(block, dict) or not isinstance(block.get("name"), str):
        raise ValueError("--entry-json must be a JSON object with a 'name'")
    name = block.pop("name")
    return EvalEntry.from_config(name, block, formats)


def router_rows_by_id(path: str | None, method: str) -> dict[str, dict]:
    if not path:
        raise ValueError(f"method {method!r} needs --router-cell (the router's cell on the same benchmark)")
    return {row["example_id"]: row for row in read_cell(path)}


def build_policy(kind: str, knob, args, ctx: CellContext, settings: EvalSettings, routers):
    """The function giving each example's path (or path and outcome) for this method.

    `knob` is parse_method's parameter, with router@calibrated's already read from the file: the router's p,
    static@k's / random@k's k, or None (static and random then match the router cell).
    """
    executor = ctx.executor
    seed = settings.seed
    if kind == "base":
        return lambda index, example, encoded: executor.default_path()
    if kind == "router":
        routed = RoutedModel(executor, routers, knob, ctx.tokenizer)
        return lambda index, example, encoded: routed.route_ids([encoded.prompt_ids])[0]
    if kind == "static":
        if not args.influence:
            raise ValueError(f"method {ctx.method!r} needs --influence (the block influence file)")
        influence = read_influence(args.influence, ctx.model, executor.num_layers)
        if knob is None:
            remove = matched_removals(list(router_rows_by_id(args.router_cell, kind).values()))
        else:
            remove = fixed_removals(ctx.method, knob, executor.num_layers)
        path = static_path(influence, remove)
        print(f"evaluate: static path removes {executor.num_layers - len(path)} layers: {path}")
        return lambda index, example, encoded: path
    if kind == "random" and knob is not None:
        remove = fixed_removals(ctx.method, knob, executor.num_layers)
        return lambda index, example, encoded: random_path(executor.num_layers, remove,
                                                           random_seed(seed, ctx.entry.name, example.id))
    if kind == "random":
        router_rows = router_rows_by_id(args.router_cell, kind)

        def random_policy(index, example, encoded):
            if example.id not in router_rows:
                raise ArtifactError(f"{args.router_cell} has no row for example {example.id!r}")
            remove = executor.num_layers - router_rows[example.id]["path_length"]
            return random_path(executor.num_layers, remove, random_seed(seed, ctx.entry.name, example.id))
        return random_policy
    if kind == "oracle":
        mcts, prefix_cache = settings.oracle_mcts, settings.prefix_cache

        def oracle_policy(index, example, encoded):
            path, outcome, _ = oracle_search(executor, ctx.answer_format, encoded, mcts,
                                             derived_seed(seed, "oracle", ctx.entry.name, example.id), prefix_cache)
            return path, outcome
        return oracle_policy
    raise ValueError(f"unknown method kind {kind!r}")


def lm_eval_cell(args, entry: EvalEntry, kind: str, knob, settings: EvalSettings, manifest: dict,
                 method: str) -> list[dict]:
    """An lm-eval task through the drllm lm-eval model: one EVAL_SCHEMA row per document."""
    from drllm.evaluation.lmeval import DrLLM, evaluate_task

    if kind not in LM_EVAL_METHODS:
        raise ValueError(f"method {method!r} does not apply to the lm-eval task {entry.name!r} "
                         f"(lm-eval tasks run {list(LM_EVAL_METHODS)}, router@<p> and router@{CALIBRATED})")
    if kind == "router" and not args.routers:
        raise ValueError("method 'router' needs --routers (a trained router directory)")
    lm = DrLLM(pretrained=args.model_dir, routers=args.routers if kind == "router" else None, knob=knob,
               device=args.device, dtype=args.dtype)
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
        rows.append({"benchmark": entry.name, "method": method, "model": manifest["name"],
                     "example_id": record["example_id"], "example_index": index, "subset": None, "level": None,
                     "source": f"lm-eval task {task_name}",
                     "format": "lm_eval", "metric": spec["metric"], "prediction": record["prediction"],
                     "gold": record["gold"], "score": record["score"], "correct": record["score"] >= 1.0,
                     "path": list(path), "counts": path.counts(), "path_length": len(path),
                     "num_layers": path.num_layers, "layer_applications": len(path) * passes,
                     "new_tokens": record["new_tokens"], "knob": knob, "seconds": seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="materialised model (resources/models/<name>)")
    parser.add_argument("--data", default="", help="benchmark records Parquet from the assets stage "
                                                    "(not for lm-eval tasks)")
    parser.add_argument("--entry-json", required=True,
                        help="the eval.benchmarks entry as JSON: name, benchmark, split, format, samples, levels, "
                             "options")
    parser.add_argument("--method", required=True, help="base | router | router@<p> | router@calibrated | static | "
                                                        "static@<k> | random | random@<k> | oracle")
    parser.add_argument("--settings-json", default="{}",
                        help="seed, chat_template, formats (per-format options), prefix_cache, "
                             "oracle {samples, mcts}")
    parser.add_argument("--routers", default="", help="trained router directory (router, static, random)")
    parser.add_argument("--router-cell", default="", help="the router's cell on this benchmark (static, random)")
    parser.add_argument("--influence", default="", help="block influence Parquet (static, static@<k>)")
    parser.add_argument("--calibration", default="",
                        help="router calibration JSON with the knob p (router@calibrated)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, help="output cell .parquet (written atomically)")
    args = parser.parse_args(argv)

    checkpoint = None
    try:
        given, settings = parse_settings(args.settings_json)
        entry = parse_entry(args.entry_json, settings.formats)
        kind, knob = parse_method(args.method)
        method = method_name(kind, knob)
        if knob == CALIBRATED:  # routes exactly as router@<p>; the rows keep the method name, knob = p
            knob = read_calibration(args.calibration)
            print(f"evaluate: {method}: knob p = {knob:g} from {args.calibration}")
        manifest = read_manifest(args.model_dir)
        provenance = stage_provenance(
            "evaluate", {"entry": json.loads(args.entry_json), "method": args.method, "settings": given},
            manifest, graders=["lm_eval"] if entry.lm_eval is not None else ["drllm"])
        if entry.lm_eval is not None:
            rows = lm_eval_cell(args, entry, kind, knob, settings, manifest, method)
            write_cell(args.out, rows, provenance)
            print(f"evaluate: {entry.name}/{method}: {len(rows)} documents, lm-eval {entry.lm_eval['metric']} "
                  f"{cell_accuracy(rows):.4f} -> {args.out}")
            return 0
        answer_format = get_format(entry.format, **entry.options)
        examples = sample_examples(read_examples(args.data), entry, settings.seed)
        if kind == "oracle" and settings.oracle_samples:
            examples = examples[:settings.oracle_samples]
        routers = None
        if kind == "router":
            if not args.routers:
                raise ValueError(f"method {method!r} needs --routers (a trained router directory)")
            routers = RouterStack.for_model(args.routers, manifest)
        model, tokenizer, _ = load_model(args.model_dir, device=args.device, dtype=args.dtype)
        ctx = CellContext(entry, method, manifest["name"], PathExecutor(model), tokenizer, answer_format,
                          chat_template_for(settings.chat_template, manifest))
        policy = build_policy(kind, knob, args, ctx, settings, routers)
        fingerprint = {"model": manifest["name"], "entry": entry.__dict__ | {"levels": entry.levels},
                       "method": method, "knob": knob, "settings": given, "data": Path(args.data).name,
                       "examples": [ex.id for ex in examples]}
        checkpoint = Checkpoint(f"{args.out}.progress.jsonl", fingerprint, key="example_id")
        if checkpoint.rows:
            print(f"evaluate: resuming, {len(checkpoint.rows)} of {len(examples)} examples already done")
        rows = evaluate_examples(ctx, examples, policy, done=checkpoint.rows, on_row=checkpoint.add,
                                 progress=not args.no_progress,
                                 knob=knob if kind == "router" else None)  # static@k's k is in the name
        write_cell(args.out, rows, provenance)
        checkpoint.close(remove=True)
    except (ArtifactError, ValueError, EvaluationError) as exc:
        if checkpoint is not None:
            checkpoint.close()
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if checkpoint is not None:
            checkpoint.close()
        print("evaluate: interrupted; finished examples are kept for the next run", file=sys.stderr)
        return 130
    mean_length = sum(row["path_length"] for row in rows) / max(1, len(rows))
    print(f"evaluate: {entry.name}/{method}: {len(rows)} examples, {answer_format.name} "
          f"score {cell_accuracy(rows):.4f}, mean path {mean_length:.2f}/{ctx.executor.num_layers} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
