"""The search's reward: is the answer produced along a layer path correct? With prefix reuse.

A child path in the search shares its parent's executed steps up to the edit, so the residual stream entering
the first differing step is already known. `PathRewarder` keeps the run states of recently evaluated paths
(a small LRU) and resumes each new path from the one sharing the longest prefix; only the steps after the edit
(and the decode steps, which depend on the whole path) are recomputed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from drllm.executor import PathExecutor, RunState
from drllm.paths import LayerPath
from drllm.tasks import AnswerFormat, Encoded, Outcome


@dataclass
class RewardStats:
    evaluations: int = 0
    forward_passes: int = 0            # model calls: one per scoring pass, prefill + decode steps per generation
    layer_applications: int = 0        # block applications actually computed (prefill rows x steps + decode)
    layer_applications_full: int = 0   # what the same evaluations cost without prefix reuse
    reused_steps: int = 0


class PathRewarder:
    """Evaluates one encoded prompt along many paths; call it as `reward(path) -> float`."""

    def __init__(self, executor: PathExecutor, answer_format: AnswerFormat, encoded: Encoded,
                 cache_size: int = 8, reuse_prefix: bool = True):
        self.executor, self.format, self.encoded = executor, answer_format, encoded
        self.cache_size = cache_size if reuse_prefix else 0
        self.states: OrderedDict[tuple[int, ...], RunState] = OrderedDict()
        self.outcomes: dict[tuple[int, ...], Outcome] = {}
        self.stats = RewardStats()
        self.rows = 1 if encoded.batch is None else int(encoded.batch.input_ids.shape[0])

    def _best_prefix(self, path: LayerPath) -> tuple[RunState | None, int]:
        best, shared = None, 0
        for state in self.states.values():
            common = path.common_prefix(state.path)
            if common > shared:
                best, shared = state, common
        return best, shared

    def outcome(self, path: LayerPath) -> Outcome:
        key = tuple(path)
        if key in self.outcomes:
            return self.outcomes[key]
        resume, step = self._best_prefix(path) if self.cache_size else (None, 0)
        outcome, state = self.format.evaluate(self.executor, self.encoded, path, keep_hidden=self.cache_size > 0,
                                              resume=resume, resume_step=step)
        self.stats.evaluations += 1
        self.stats.forward_passes += max(1, outcome.new_tokens) if self.encoded.kind == "generate" else 1
        self.stats.reused_steps += step
        self.stats.layer_applications += outcome.layer_applications - step * self.rows
        self.stats.layer_applications_full += outcome.layer_applications
        if self.cache_size:
            self.states[key] = state
            self.states.move_to_end(key)
            while len(self.states) > self.cache_size:
                self.states.popitem(last=False)
        self.outcomes[key] = outcome
        return outcome

    def __call__(self, path: LayerPath) -> float:
        return 1.0 if self.outcome(path).correct else 0.0
