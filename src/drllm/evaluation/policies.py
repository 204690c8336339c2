"""Which path each evaluation method takes for an example: the policy builders the method table
(`drllm.evaluation.methods.METHODS`) names, and `build_policy`, which looks a kind's builder up and calls it.

A builder is `build(ctx, settings, inputs, param, threshold) -> PathPolicy`, the function the per-example loop
(`drllm.evaluation.cells.evaluate_examples`) calls: `inputs` maps each artifact the method declares
(`drllm.evaluation.methods.cell_artifacts`) to its path, `ctx.routers` holds the loaded routers of a method reading
them, `settings.method_settings(kind)` is the method's own settings (eval.<kind>), `param` is parse_method's
parameter (a file point already read from the calibration file: the router's p), `threshold` the threshold
decision's tau or None.

base: every layer; router / router@<p>: the routers' path with knob p (router@t<tau>: threshold decision at tau);
static: ShortGPT block removal, matched to the router cell's mean savings or k layers; safest: the same with the
blocks most often safe to skip alone in the search's sweep removed first; random: random skips, matched per
example to the router cell or k per example (seeded per example); oracle: the search run with the gold answer,
returning its path and outcome.
"""
from __future__ import annotations

from dataclasses import dataclass

from drllm.core.artifacts import ArtifactError
from drllm.core.seeds import derived_seed
from drllm.evaluation.baselines import (fixed_removals, matched_removals, oracle_search, random_path, random_seed,
                                        read_influence, static_path)
from drllm.evaluation.cells import CellContext, PathPolicy, read_cell
from drllm.evaluation.methods import (FILE_POINTS, ROUTERS, Threshold, cell_artifacts, describe_artifact,
                                      policy_builder)
from drllm.evaluation.settings import EvalSettings
from drllm.calibration.calibration import CERTIFIED, read_calibration
from drllm.routing.inference import RoutedModel
from drllm.routing.decision import Decision


def artifact(inputs: dict[str, str], name: str, method: str) -> str:
    """The path of the artifact `name` (ValueError naming the flag and the artifact when the cell lacks it)."""
    if not inputs.get(name):
        declared = cell_artifacts(method)
        what = describe_artifact(declared[name]) if name in declared else "<path>"
        raise ValueError(f"method {method!r} needs --artifact {name}=<{what}>")
    return inputs[name]


def router_rows_by_id(path: str, method: str) -> dict[str, dict]:
    return {row["example_id"]: row for row in read_cell(artifact({"router_cell": path}, "router_cell", method))}


def build_policy(kind: str, param, ctx: CellContext, settings: EvalSettings, inputs: dict[str, str],
                 threshold: float | None = None) -> PathPolicy:
    """The function giving each example's path (or path and outcome) for this method kind (see the module
    docstring for `param` and `threshold`)."""
    return policy_builder(kind)(ctx, settings, inputs, param, threshold)


def base_policy(ctx: CellContext, settings: EvalSettings, inputs: dict[str, str], param, threshold) -> PathPolicy:
    executor = ctx.executor
    return lambda index, example, encoded: executor.default_path()


def router_model(executor, routers, knob: float | None, threshold: float | None, tokenizer=None) -> RoutedModel:
    """The routed model of a router operating point: the knob p, or the threshold decision at tau."""
    decision = None
    if threshold is not None:
        decision = Decision.from_dict(routers.config.decision).with_threshold(threshold)
    return RoutedModel(executor, routers, knob, tokenizer, decision=decision)


def router_point(param, calibration: str = "") -> tuple[float | None, float | None]:
    """(knob p, threshold tau) of a router method's parameter: a knob, router@t<tau>, or a file point read from
    the calibration file (router@calibrated / router@certified)."""
    if param in FILE_POINTS:
        return read_calibration(calibration, param)
    if isinstance(param, Threshold):
        return None, param.value
    return param, None


def router_policy(ctx: CellContext, settings: EvalSettings, inputs: dict[str, str], knob, threshold) -> PathPolicy:
    if ctx.routers is None:
        raise ValueError(f"method {ctx.method!r} needs --artifact routers=<{describe_artifact(ROUTERS)}>")
    routed = router_model(ctx.executor, ctx.routers, knob, threshold, ctx.tokenizer)
    stack = ctx.routers
    if not stack.kind.supports("read_cost"):  # nothing read beyond the blocks: rows keep read_blocks null
        return lambda index, example, encoded: routed.route_ids([encoded.prompt_ids])[0]

    def reading_policy(index, example, encoded):  # the row records what the routers' read cost
        path = routed.route_ids([encoded.prompt_ids])[0]
        outcome, _ = ctx.answer_format.evaluate(ctx.executor, encoded, path)
        cost = stack.kind.read_cost(stack.routers, stack.config, ctx.executor, len(encoded.prompt_ids))
        return path, outcome, cost
    return reading_policy


def ranked_policy(ctx: CellContext, settings: EvalSettings, inputs: dict[str, str], remove, threshold) -> PathPolicy:
    """One path for every input: the blocks ranked first by the method's influence table removed (static:
    ShortGPT's block influence; safest: the sweep's safe rates), k of them or as many as the router saved."""
    executor, kind = ctx.executor, ctx.method.partition("@")[0]
    influence = read_influence(artifact(inputs, "influence", ctx.method), ctx.model, executor.num_layers)
    if remove is None:
        remove = matched_removals(list(router_rows_by_id(inputs.get("router_cell", ""), ctx.method).values()))
    else:
        remove = fixed_removals(ctx.method, remove, executor.num_layers)
    path = static_path(influence, remove)
    print(f"evaluate: {kind} path removes {executor.num_layers - len(path)} layers: {path}")
    return lambda index, example, encoded: path


def random_policy(ctx: CellContext, settings: EvalSettings, inputs: dict[str, str], remove, threshold) -> PathPolicy:
    executor, seed = ctx.executor, settings.seed
    if remove is not None:
        remove = fixed_removals(ctx.method, remove, executor.num_layers)
        return lambda index, example, encoded: random_path(executor.num_layers, remove,
                                                           random_seed(seed, ctx.entry.name, example.id))
    router_rows = router_rows_by_id(inputs.get("router_cell", ""), ctx.method)

    def matched_policy(index, example, encoded):
        if example.id not in router_rows:
            raise ArtifactError(f"{inputs['router_cell']} has no row for example {example.id!r}")
        removed = executor.num_layers - router_rows[example.id]["path_length"]
        return random_path(executor.num_layers, removed, random_seed(seed, ctx.entry.name, example.id))
    return matched_policy


def sure_policy(ctx: CellContext, settings: EvalSettings, inputs: dict[str, str], budget, threshold) -> PathPolicy:
    """sure@<b> / sure@certified: read the confidence at the allocation's layer R on the same forward, then skip
    the budget's safest blocks at or after R; the path resumes from the read's run (blocks 0..R-1 are not run
    twice) and the row records the read's cost."""
    from drllm.routing.allocation import allocation_path
    from drllm.evaluation.allocation_stage import Allocation
    from drllm.routing.confidence import prefix_state, read_confidence

    allocation = Allocation.read(artifact(inputs, "allocation", ctx.method))
    executor = ctx.executor
    if allocation.num_layers != executor.num_layers:
        raise ArtifactError(f"{inputs['allocation']} is for a {allocation.num_layers}-layer model, not "
                            f"{ctx.model}'s {executor.num_layers} layers")
    if budget == CERTIFIED:  # the certified budget, on the kinds of prompt its calibration prompts were
        points = allocation.certified_points()
        budget = allocation.certified_budget()
        print(f"evaluate: {ctx.method}: " + (f"certified mean budget {budget:g} on {sorted(points)} prompts"
                                              if budget is not None else "nothing certified: the base model"))
    else:
        points = allocation.point(budget)

    def policy(index, example, encoded):
        state = prefix_state(executor, encoded, allocation.read_layer)
        read = read_confidence(executor, ctx.answer_format, encoded, allocation.read_layer, allocation.lens,
                               state=state, vocabulary=allocation.vocabulary)
        path = allocation_path(executor.num_layers, allocation.order,
                               allocation.skips(points, encoded.kind, read.margin))
        outcome, _ = ctx.answer_format.evaluate(executor, encoded, path, resume=state,
                                                resume_step=allocation.read_layer)
        return path, outcome, read.cost_blocks
    return policy


def oracle_policy(ctx: CellContext, settings: EvalSettings, inputs: dict[str, str], param, threshold) -> PathPolicy:
    executor, seed = ctx.executor, settings.seed
    oracle = settings.method_settings("oracle")
    mcts, prefix_cache, reward = oracle.mcts, settings.prefix_cache, oracle.reward

    def policy(index, example, encoded):
        path, outcome, _ = oracle_search(executor, ctx.answer_format, encoded, mcts,
                                         derived_seed(seed, "oracle", ctx.entry.name, example.id), prefix_cache,
                                         reward)
        return path, outcome
    return policy
