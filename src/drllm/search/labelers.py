"""Labelers: what the search stage runs per prompt to find its label path; a lookup table with one entry each.

A labeler is a coroutine with the protocol of `drllm.search.mcts.search_steps`: it yields each path it wants
evaluated, takes the path's reward back through `send`, and returns a result whose attributes the shard row reads
(`default_correct`, `best_path`, `evaluated`, `wrong_to_correct`, `simulations`, `max_fanout`, `max_depth`, and
optionally `layer_safety`; see `mcts.SearchResult`). `search.labeler` names the entry; the built-in ones are
`mcts` (the paper's search, settings from `search.mcts`) and `safety` (`drllm.search.safety`, settings from
`search.safety`); a plugin module registers more (docs/extending.md#a-labeler).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Protocol

from drllm.core.paths import LayerPath
from drllm.core.plugins import Table
from drllm.search.mcts import MCTSConfig, search_steps
from drllm.search.rewards import PathRewarder, choice_margin
from drllm.search.safety import SafetyConfig, sweep_steps

LabelSteps = Generator[LayerPath, float, Any]


class LabelerSettings(Protocol):
    """What the built-in labelers read of the stage's settings (a drllm.search.settings.SearchSettings): a protocol,
    not that class, as settings.py imports this module to check `search.labeler` against LABELERS."""

    def mcts_config(self) -> MCTSConfig: ...

    def safety_config(self) -> SafetyConfig: ...


@dataclass(frozen=True)
class Labeler:
    """One labeler: `start(num_layers, settings, rewarder, seed)` returns its coroutine for one prompt (`settings`:
    the stage's `SearchSettings`; `rewarder`: the prompt's `PathRewarder`, for what the evaluated paths gave; `seed`:
    the prompt's derived seed, None for an unseeded labeler). `seeded` False: the label does not depend on the seed
    (a pure function of prompt and model), so the seed check (`search.seed_check`) repeats the label instead of
    labelling again. The shard row also reads the default path's outcome (`prediction_default`): a labeler that
    does not evaluate it gets it evaluated afterwards, outside the cost columns."""

    name: str
    start: Callable[[int, LabelerSettings, PathRewarder, "int | None"], LabelSteps]
    seeded: bool = True


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


def _start_mcts(num_layers: int, settings: LabelerSettings, rewarder: PathRewarder, seed: int | None) -> LabelSteps:
    return search_steps(num_layers, settings.mcts_config(), seed)


def _start_safety(num_layers: int, settings: LabelerSettings, rewarder: PathRewarder,
                  seed: int | None) -> LabelSteps:
    return sweep_steps(num_layers, settings.safety_config(), margin_reader(rewarder))


LABELERS.register(Labeler("mcts", _start_mcts))
LABELERS.register(Labeler("safety", _start_safety, seeded=False))
