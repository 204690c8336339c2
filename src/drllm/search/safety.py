"""The safety labeler: per prompt, which blocks are safe to skip (dense, deterministic supervision).

The MCTS label names one path among many acceptable ones, chosen by the seed (docs/method.md#the-safety-labeler:
three seeds agree at 1 of 49 deviating layers), so it cannot be learned. This labeler measures instead, per prompt:

1. Single-skip sweep. For every block l, the default path without l is judged by the search's reward (the
   `agreement` reward: the full model's answer is kept). Paths are evaluated from the last block down, so each
   resumes from the previous run's hidden state at its edit (prefix reuse: about half the block applications of
   independent runs). `layer_safety[l]` = 1.0 when skipping l alone is acceptable, else 0.0.
2. Joint checks of the combinations a router would choose. A router that thresholds per-layer safety skips the
   layers it is most confident about together, so single-skip verdicts are not enough: the safe layers are tried
   one at a time in decreasing order of how clearly they kept the answer (the kept answer's margin over the
   runner-up for choice formats; layer index breaks ties), each added to the jointly kept set when the path
   skipping the set plus it is still acceptable, for at most `joint_checks` tries. The label path skips the
   jointly kept set (no repeats): the path the routers are teacher-forced along, and a canonical single-path label.

Everything is a pure function of the prompt and the model: no seed, so the labels are the same for any seed and
any number of workers. Prompts whose every single skip changes the answer are labelled all-execute (hard
prompts), never dropped.

`sweep_steps` is the labeler as a coroutine with the same protocol as `drllm.search.mcts.search_steps` (it yields
each path to evaluate and takes the reward back), so the search stage drives several prompts in lockstep with
one batched evaluation per round (`drllm.search.mcts.run_searches`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Generator, Mapping

from drllm.core.settings import check_fields, from_block, setting
from drllm.core.paths import LayerPath
from drllm.search.mcts import is_correct


@dataclass(frozen=True)
class SafetyConfig:
    joint_checks: int = setting(4, "int", low=0)  # safe layers tried jointly (each one evaluation); 0 = single skips

    def __post_init__(self) -> None:
        check_fields(self, "search.safety")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "SafetyConfig":
        return from_block(cls, data, "search.safety")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SafetyResult:
    """What the sweep found for one prompt (the safety labeler returns it as a drllm.search.labelers.LabelResult)."""

    default_correct: bool                      # the reward's verdict on the default path
    best_path: LayerPath                       # skips the jointly kept set (the default path if it is empty)
    evaluated: list[tuple[LayerPath, float]]   # every evaluated path with its reward, evaluation order
    layer_safety: list[float]                  # 1.0 where skipping that block alone is acceptable
    joint_tries: int                           # joint checks evaluated
    simulations: int = 0
    max_fanout: int = 0

    @property
    def evaluations(self) -> int:
        return len(self.evaluated)

    @property
    def wrong_to_correct(self) -> bool:
        return False  # the labeler never searches for a fix

    @property
    def max_depth(self) -> int:
        return self.best_path.num_layers - len(self.best_path)  # skips in the label path


def skip_path(num_layers: int, skipped) -> LayerPath:
    counts = [1] * num_layers
    for layer in skipped:
        counts[layer] = 0
    return LayerPath.from_counts(counts)


SweepSteps = Generator[LayerPath, float, SafetyResult]


def sweep_steps(num_layers: int, config: SafetyConfig,
                margin_of: Callable[[LayerPath], float] | None = None) -> SweepSteps:
    """The safety labeler as a coroutine (see the module docstring). `margin_of(path)` tells how clearly an
    evaluated path kept the answer (larger = safer), used only to order the joint checks; None = layer order."""
    evaluated: list[tuple[LayerPath, float]] = []

    def evaluate(path: LayerPath) -> Generator[LayerPath, float, float]:
        reward = float((yield path))
        if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
            raise ValueError(f"evaluate({path}) returned {reward!r}; rewards must lie in [0, 1]")
        evaluated.append((path, reward))
        return reward

    default_correct = is_correct((yield from evaluate(LayerPath.default(num_layers))))
    safety = [0.0] * num_layers
    margins: dict[int, float] = {}
    if num_layers > 1:
        for layer in reversed(range(num_layers)):  # each path shares its prefix with the previous one
            path = skip_path(num_layers, [layer])
            if is_correct((yield from evaluate(path))):
                safety[layer] = 1.0
                margins[layer] = margin_of(path) if margin_of is not None else 0.0
    order = sorted(margins, key=lambda layer: (-margins[layer], layer))
    kept: list[int] = []
    tries = 0
    for layer in order:
        if tries >= config.joint_checks or len(kept) + 1 >= num_layers:
            break
        if not kept:  # a single skip is already verified
            kept.append(layer)
            continue
        tries += 1
        if is_correct((yield from evaluate(skip_path(num_layers, kept + [layer])))):
            kept.append(layer)
    return SafetyResult(default_correct=default_correct, best_path=skip_path(num_layers, kept),
                        evaluated=evaluated, layer_safety=safety, joint_tries=tries)
