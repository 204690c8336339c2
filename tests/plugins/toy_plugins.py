"""Toy extension-point entries for the tests: registered in-process by fixtures, or through the config's
`plugins: [toy_plugins]` (with tests/plugins on PYTHONPATH) in the tiny DAG run."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from drllm.core.paths import LayerPath
from drllm.evaluation.methods import METHODS, Method
from drllm.search.labelers import LABELERS, Labeler
from drllm.search.rewards import REWARDS, Reward
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
    name = "linear"

    def build(self, config, generator):
        return LinearRouter(config.hidden_size, generator)


TOY_ROUTER_KIND = LinearKind()


def in_top_two(config, outcome, encoded, reference) -> bool:
    """top2: the gold option is among the two best-scoring options (choice formats); else the graded answer."""
    if encoded.kind != "choices" or not outcome.scores:
        return bool(outcome.correct)
    ranked = sorted(range(len(outcome.scores)), key=lambda index: -outcome.scores[index])
    return encoded.gold in ranked[:2]


TOY_REWARD = Reward("top2", in_top_two, needs_reference=lambda config, encoded: False)


@dataclass
class LastSafeResult:
    default_correct: bool
    best_path: LayerPath
    evaluated: list
    layer_safety: list
    wrong_to_correct: bool = False
    simulations: int = 0
    max_fanout: int = 0
    max_depth: int = 1


def last_safe(num_layers, settings, rewarder, seed):
    """last_safe: the last four blocks' single skips judged (the others count as unsafe), and a label path skipping
    only the last block that is safe alone."""
    default = LayerPath.default(num_layers)
    default_reward = yield default
    evaluated, safety = [(default, default_reward)], [0.0] * num_layers
    best = default
    for layer in range(max(0, num_layers - 4), num_layers):
        path = LayerPath(tuple(other for other in range(num_layers) if other != layer), num_layers)
        reward = yield path
        evaluated.append((path, reward))
        if reward > 0.5:
            safety[layer], best = 1.0, path
    return LastSafeResult(default_reward > 0.5, best, evaluated, safety)


TOY_LABELER = Labeler("last_safe", last_safe, seeded=False)


TOYS = ((METHODS, TOY_METHOD), (ROUTER_KINDS, TOY_ROUTER_KIND), (REWARDS, TOY_REWARD), (LABELERS, TOY_LABELER))


def register_all() -> None:
    for table, entry in TOYS:
        table.register(entry)


def unregister_all() -> None:
    for table, entry in TOYS:
        table.unregister(entry.name)


register_all()
