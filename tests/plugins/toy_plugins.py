"""Toy extension-point entries for the tests, each with settings of its own: registered in-process by fixtures, or
through the config's `plugins: [toy_plugins]` (with tests/plugins on PYTHONPATH) in the tiny DAG run. Nothing
outside this module (and a config overlay) names them: their config blocks are `search.reward.in_top`,
`search.last_safe`, `train.linear` and `eval.unsafest`."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from drllm.core.paths import LayerPath
from drllm.core.settings import setting
from drllm.evaluation.methods import LAYER_SAFETY, METHODS, Method
from drllm.search.labelers import LABELERS, Labeler, LabelResult
from drllm.search.rewards import REWARDS, Reward
from drllm.routing.kinds import ROUTER_KINDS, RouterKind
from drllm.routing.pooling import masked_window_mean


# -- a reward with a parameter: search.reward.in_top.k -------------------------------------------------------

@dataclass(frozen=True)
class InTopSettings:
    k: int = setting(2, "int", low=1)   # the gold option among the k best-scoring options counts as correct


def in_top(config, outcome, encoded, reference) -> bool:
    """in_top: the gold option is among the k best-scoring options (choice formats); else the graded answer."""
    if encoded.kind != "choices" or not outcome.scores:
        return bool(outcome.correct)
    ranked = sorted(range(len(outcome.scores)), key=lambda index: -outcome.scores[index])
    return encoded.gold in ranked[:config.settings.k]


TOY_REWARD = Reward("in_top", in_top, needs_reference=lambda config, encoded: False, settings=InTopSettings)


# -- a labeler with an option: search.last_safe.blocks -------------------------------------------------------

@dataclass(frozen=True)
class LastSafeSettings:
    blocks: int = setting(4, "int", low=1)   # how many of the last blocks are judged (the others count as unsafe)


def last_safe(num_layers, settings: LastSafeSettings, rewarder, seed):
    """last_safe: the last `blocks` blocks' single skips judged, and a label path skipping only the last block
    that is safe alone."""
    default = LayerPath.default(num_layers)
    default_reward = yield default
    evaluated, safety = [(default, default_reward)], [0.0] * num_layers
    best = default
    for layer in range(max(0, num_layers - settings.blocks), num_layers):
        path = LayerPath(tuple(other for other in range(num_layers) if other != layer), num_layers)
        reward = yield path
        evaluated.append((path, reward))
        if reward > 0.5:
            safety[layer], best = 1.0, path
    return LabelResult(default_reward > 0.5, best, evaluated, layer_safety=safety)


TOY_LABELER = Labeler("last_safe", last_safe, seeded=False, settings=LastSafeSettings)


# -- a router kind with a hyperparameter: train.linear.gain --------------------------------------------------

@dataclass(frozen=True)
class LinearSettings:
    gain: float = setting(1.0, "number", low=0, low_open=True)   # the Xavier initialisation's gain


class LinearRouter(nn.Module):
    """One linear layer per window, logits voted over the windows."""

    def __init__(self, hidden_size: int, generator, gain: float = 1.0):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 3)
        nn.init.xavier_uniform_(self.proj.weight, gain=gain, generator=generator)
        nn.init.zeros_(self.proj.bias)

    def forward(self, window_means, window_mask=None):
        return masked_window_mean(self.proj(window_means.to(self.proj.weight.dtype)), window_mask)


class LinearKind(RouterKind):
    name = "linear"
    settings = LinearSettings

    def build(self, config, generator):
        return LinearRouter(config.hidden_size, generator, self.parse_settings(config).gain)


TOY_ROUTER_KIND = LinearKind()


# -- an evaluation method reading an artifact no built-in one reads (the search summary): eval.unsafest.scale --

@dataclass(frozen=True)
class UnsafestSettings:
    scale: float = setting(1.0, "number", low=0)   # plain unsafest removes round(scale x the labels' mean saving)


SEARCH_SUMMARY = "{search}/summary.parquet"
# unsafest@k: the k blocks least often safe to skip alone removed (the opposite of safest@k: a floor); plain
# unsafest: as many as the search's labels saved on average (the summary's `all` row), times eval.unsafest.scale
TOY_METHOD = Method("unsafest", "toy_plugins:unsafest_policy", param="budget",
                    reads={"influence": LAYER_SAFETY, "summary": SEARCH_SUMMARY}, order=7.8,
                    summary="the k blocks least often safe to skip alone, removed", settings=UnsafestSettings)


def unsafest_policy(ctx, settings, inputs, remove, threshold):
    import pyarrow.parquet as pq

    from drllm.evaluation.baselines import fixed_removals, read_influence, static_path

    ranking = read_influence(inputs["influence"], ctx.model, ctx.executor.num_layers)
    last = len(ranking) - 1
    reversed_ranking = [{**row, "rank": last - row["rank"]} for row in ranking]
    if remove is None:
        [saved] = [row["mean_layers_saved"] for row in pq.read_table(inputs["summary"]).to_pylist()
                   if row["task"] == "all"]
        remove = round(settings.method_settings("unsafest").scale * saved)
    path = static_path(reversed_ranking, fixed_removals(ctx.method, remove, ctx.executor.num_layers))
    return lambda index, example, encoded: path


TOYS = ((METHODS, TOY_METHOD), (ROUTER_KINDS, TOY_ROUTER_KIND), (REWARDS, TOY_REWARD), (LABELERS, TOY_LABELER))
# each toy's settings: (config block, a bad value's key and value, the wording it fails with)
BLOCKS = {"in_top": ("search.reward.in_top", "k", 0, "search.reward.in_top.k must be an integer >= 1, got 0"),
          "last_safe": ("search.last_safe", "blocks", 0, "search.last_safe.blocks must be an integer >= 1, got 0"),
          "linear": ("train.linear", "gain", 0, "train.linear.gain must be a number > 0, got 0"),
          "unsafest": ("eval.unsafest", "scale", -1, "eval.unsafest.scale must be a number >= 0, got -1")}


def register_all() -> None:
    for table, entry in TOYS:
        table.register(entry)


def unregister_all() -> None:
    for table, entry in TOYS:
        table.unregister(entry.name)


register_all()
