"""Toy extension-point entries for the tests: registered in-process by fixtures, or through the config's
`plugins: [toy_plugins]` (with tests/plugins on PYTHONPATH) in the tiny DAG run."""
from __future__ import annotations

from torch import nn

from drllm.evaluation.methods import METHODS, Method
from drllm.routing.kinds import ROUTER_KINDS, RouterKind
from drllm.routing.pooling import masked_window_mean

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


class LinearRouter(nn.Module):
    """One linear layer per window, logits voted over the windows."""

    def __init__(self, hidden_size: int, generator):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 3)
        nn.init.xavier_uniform_(self.proj.weight, generator=generator)
        nn.init.zeros_(self.proj.bias)

    def forward(self, window_means, window_mask=None):
        return masked_window_mean(self.proj(window_means.to(self.proj.weight.dtype)), window_mask)


class LinearKind(RouterKind):
    def build(self, config, generator):
        return LinearRouter(config.hidden_size, generator)


TOY_ROUTER_KIND = LinearKind()


def register_all() -> None:
    METHODS.register(TOY_METHOD.kind, TOY_METHOD)
    ROUTER_KINDS.register("linear", TOY_ROUTER_KIND)


def unregister_all() -> None:
    METHODS.unregister(TOY_METHOD.kind)
    ROUTER_KINDS.unregister("linear")


register_all()
