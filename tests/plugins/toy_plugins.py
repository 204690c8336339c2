"""Toy extension-point entries for the tests: registered in-process by fixtures, or through the config's
`plugins: [toy_plugins]` (with tests/plugins on PYTHONPATH) in the tiny DAG run."""
from __future__ import annotations

from drllm.evaluation.methods import METHODS, Method

# unsafest@k: the k blocks least often safe to skip alone removed (the opposite of safest@k: a floor)
TOY_METHOD = Method("unsafest", "toy_plugins:unsafest_policy", param="budget", influence="layer_safety",
                    matched=True, order=7.8, summary="the k blocks least often safe to skip alone, removed")


def unsafest_policy(ctx, settings, inputs, remove, threshold):
    from drllm.evaluation.baselines import fixed_removals, matched_removals, read_influence, static_path
    from drllm.evaluation.policies import router_rows_by_id

    ranking = read_influence(inputs.influence, ctx.model, ctx.executor.num_layers)
    last = len(ranking) - 1
    reversed_ranking = [{**row, "rank": last - row["rank"]} for row in ranking]
    if remove is None:
        remove = matched_removals(list(router_rows_by_id(inputs.router_cell, "unsafest").values()))
    else:
        remove = fixed_removals(ctx.method, remove, ctx.executor.num_layers)
    path = static_path(reversed_ranking, remove)
    return lambda index, example, encoded: path


def register_all() -> None:
    METHODS.register(TOY_METHOD.kind, TOY_METHOD)


def unregister_all() -> None:
    METHODS.unregister(TOY_METHOD.kind)


register_all()
