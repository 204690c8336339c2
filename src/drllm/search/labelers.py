"""Labelers: what the search stage runs per prompt to find its label path; a lookup table with one entry each.

A labeler is a coroutine with the protocol of `drllm.search.mcts.search_steps`: it yields each path it wants
evaluated, takes the path's reward back through `send`, and returns a `LabelResult` (what the shard row records).
`search.labeler` names the entry, and the block named after it, `search.<labeler>`, holds its settings (the entry's
`settings` class, built by `drllm.core.settings.from_block`). The built-in ones are `mcts` (the paper's search,
settings `search.mcts`: drllm.search.mcts.MCTSConfig) and `safety` (`drllm.search.safety`, settings
`search.safety`: SafetyConfig); a plugin module registers more (docs/extending.md#a-labeler).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator

from drllm.core.paths import LayerPath
from drllm.core.plugins import Table
from drllm.search.mcts import MCTSConfig, search_steps
from drllm.search.rewards import PathRewarder, choice_margin
from drllm.search.safety import SafetyConfig, sweep_steps


@dataclass(frozen=True)
class LabelResult:
    """What a labeler returns for one prompt: the columns of its shard row that the labeler decides
    (drllm.search.shards.SHARD_SCHEMA). The search stage reads nothing else of it."""

    default_correct: bool                         # the reward's verdict on the default path
    best_path: LayerPath | None                   # the label path; None: nothing kept (no training sample)
    evaluated: list[tuple[LayerPath, float]]      # every path it evaluated with its reward, in evaluation order
    layer_safety: list[float] | None = None       # per block, 1.0 where skipping it alone is acceptable
    wrong_to_correct: bool = False                # the label fixes a wrong default
    simulations: int = 0                          # search simulations run (0: no tree search)
    max_fanout: int = 0                           # the search tree's widest node
    max_depth: int = 0                            # the search tree's depth (safety: skips in the label path)


LabelSteps = Generator[LayerPath, float, LabelResult]


@dataclass(frozen=True)
class Labeler:
    """One labeler: `start(num_layers, settings, rewarder, seed)` returns its coroutine for one prompt (`settings`:
    its own settings object, built from `search.<name>`, or None when it declares none; `rewarder`: the prompt's
    `PathRewarder`, for what the evaluated paths gave; `seed`: the prompt's derived seed, None for an unseeded
    labeler). `settings` here: the settings class (a frozen dataclass of `setting(...)` fields), or None. `seeded`
    False: the label does not depend on the seed (a pure function of prompt and model), so the seed check
    (`search.seed_check`) repeats the label instead of labelling again. The shard row also reads the default path's
    outcome (`prediction_default`): a labeler that does not evaluate it gets it evaluated afterwards, outside the
    cost columns."""

    name: str
    start: Callable[[int, Any, PathRewarder, "int | None"], LabelSteps]
    seeded: bool = True
    settings: type | None = None
    summary: str = ""   # one line for the model card (drllm.release.card)


LABELERS: Table[Labeler] = Table("labeler", "search.labeler")


def margin_reader(rewarder: PathRewarder) -> Callable[[LayerPath], float]:
    """How clearly an evaluated path kept the full model's answer: the chosen option's lead over the runner-up
    (choice formats); 0 for generation formats (their joint checks then go in layer order)."""
    def margin_of(path) -> float:
        outcome, reference = rewarder.outcomes[tuple(path)], rewarder.reference()
        if rewarder.encoded.kind != "choices":
            return 0.0
        return choice_margin(outcome.scores, reference.choice)
    return margin_of


def _start_mcts(num_layers: int, settings: MCTSConfig, rewarder: PathRewarder, seed: int | None) -> LabelSteps:
    found = yield from search_steps(num_layers, settings, seed)
    return LabelResult(found.default_correct, found.best_path, found.evaluated,
                       wrong_to_correct=found.wrong_to_correct, simulations=found.simulations,
                       max_fanout=found.max_fanout, max_depth=found.max_depth)


def _start_safety(num_layers: int, settings: SafetyConfig, rewarder: PathRewarder, seed: int | None) -> LabelSteps:
    found = yield from sweep_steps(num_layers, settings, margin_reader(rewarder))
    return LabelResult(found.default_correct, found.best_path, found.evaluated, layer_safety=found.layer_safety,
                       wrong_to_correct=found.wrong_to_correct, simulations=found.simulations,
                       max_fanout=found.max_fanout, max_depth=found.max_depth)


LABELERS.register(Labeler("mcts", _start_mcts, settings=MCTSConfig,
                          summary="the paper's length-aware MCTS over layer paths: one label path per prompt"))
LABELERS.register(Labeler("safety", _start_safety, seeded=False, settings=SafetyConfig,
                          summary="per prompt, every block's single skip judged, then joint checks of the safe ones"))
