"""The search's reward: is the answer produced along a layer path correct? With prefix reuse.

A child path in the search shares its parent's executed steps up to the edit, so the residual stream entering
the first differing step is already known. `PathRewarder` keeps the run states of recently evaluated paths
(a small LRU) and resumes each new path from the one sharing the longest prefix; only the steps after the edit
(and the decode steps, which depend on the whole path) are recomputed.

The reward kinds (`RewardConfig.kind`) are entries of the table `REWARDS` (a `Reward` each); a plugin module
registers more (docs/extending.md#a-reward). A kind may declare settings of its own (`Reward.settings`): the block
named after it beside `kind`, `search.reward.<kind>` (`eval.oracle.reward.<kind>` for the oracle), reaches
`correct` as `config.settings`. The built-in ones (no settings of their own: they read `margin`, `epsilon` and
`min_f1`):

* ``binary`` -- the paper's: 1 when the format grades the answer correct. On a 4-option cloze item a broken
  short path is "correct" by luck 25% of the time, and a wrong default accepts the first lucky hit.
* ``robust`` -- a path counts as correct only if it answers as a working model would. Choice formats (cloze):
  the gold option wins by at least `margin` in the format's score (acc_norm: log-likelihood per character), and
  its score stays within `epsilon` of the full model's score for it. Generation formats: the graded answer is
  correct (the log-likelihood condition does not apply to them here).

* ``agreement`` -- gold-free: a path is acceptable when it keeps the full model's answer, right or wrong.
  Choice formats: the full model's chosen option still wins by at least `margin` (a near tie is not kept), and
  its score stays within `epsilon` of the full model's score for it (a broken path that still ranks the same
  option first, at a collapsed score, is rejected; null = no such condition).
  Generation formats: the graded answer equals the full model's (`qa`: token F1 against the full model's answer
  >= `min_f1`). The default path is acceptable by definition. Any prompt can be labelled (wrong defaults
  included, as what is safe to skip, not as a fix) and prompts need no gold answer.

For `qa` (token F1), "correct" means F1 >= `min_f1` under binary and robust (exact match is too strict a label
for a small model's spans).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

from drllm.core.plugins import Table, split_blocks
from drllm.core.settings import building, check_fields, from_block, setting
from drllm.core.executor import PathExecutor, RunState
from drllm.core.paths import LayerPath
from drllm.formats.answers import AnswerFormat
from drllm.formats.grading import Outcome, normalize_answer, token_f1
from drllm.formats.prompts import Encoded


@dataclass(frozen=True)
class Reward:
    """One reward kind: `correct(config, outcome, encoded, reference)` judges an outcome (`reference`: the full
    model's outcome on the prompt, or None); `needs_reference(config, encoded)` says whether `correct` needs that
    reference for this prompt (it costs a default-path evaluation); `gold_free` marks a reward that judges against
    the full model, not the gold answer: the default path is acceptable by definition, the shard's
    `default_correct` records the graded answer instead, and the oracle (which searches with the gold) refuses it.
    `settings`: the class of its own settings (a frozen dataclass of `setting(...)` fields), None for none."""

    name: str
    correct: Callable[["RewardConfig", Outcome, Encoded, Outcome | None], bool]
    needs_reference: Callable[["RewardConfig", Encoded], bool]
    gold_free: bool = False
    settings: type | None = None


REWARDS: Table[Reward] = Table("reward", "search.reward.kind")


@dataclass(frozen=True)
class RewardConfig:
    """Which paths count as correct in the search (see the module docstring)."""

    kind: str = setting("binary", "str")  # a REWARDS name: binary (paper) | robust | agreement | a plugin's
    # choice formats: gold (robust) or the full model's choice (agreement) wins by this
    margin: float = setting(0.0, "number", low=0)
    # choice formats: the judged option's score >= the full model's score for it - epsilon (robust: the gold
    # option; agreement: the full model's); null = inf
    epsilon: float = math.inf
    # qa: F1 at least this counts as correct (agreement: F1 against the full model)
    min_f1: float = setting(0.5, "number", low=0, high=1)
    # the chosen kind's own block, `<block>.<kind>`, as given (from_dict fills it; {}: the kind's defaults)
    kind_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = building(self, "search.reward")
        check_fields(self, where)
        REWARDS.get(self.kind)  # an unknown kind fails naming the config key and the known kinds
        epsilon = math.inf if self.epsilon is None else self.epsilon  # YAML has no infinity
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or math.isnan(epsilon) or epsilon < 0:
            raise ValueError(f"{where}.epsilon must be a number >= 0 or null, got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", float(epsilon))
        object.__setattr__(self, "_settings", REWARDS.settings_of(self.kind, self.kind_settings,
                                                                  f"{where}.{self.kind}"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "search.reward") -> "RewardConfig":
        """From a reward block: the keys above and the blocks of reward kinds beside them (each checked against
        its kind's settings; the chosen kind's becomes `kind_settings`)."""
        own = [f.name for f in fields(cls) if f.name != "kind_settings"]
        block, kinds = split_blocks(dict(data or {}), own, REWARDS, where)
        for name, options in kinds.items():
            REWARDS.settings_of(name, options, f"{where}.{name}")
        chosen = kinds.get(block.get("kind", cls.kind), {})
        return from_block(cls, block, where, kind_settings=dict(chosen))

    @property
    def settings(self) -> Any:
        """The kind's own settings object (None for a kind that declares none)."""
        return self._settings

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if math.isinf(data["epsilon"]):
            data["epsilon"] = None  # JSON has no infinity
        if not data["kind_settings"]:
            del data["kind_settings"]
        return data

    def describe(self) -> str:
        """What the shard's `reward` column records, e.g. 'robust(margin=0.05,epsilon=0.1,min_f1=0.5)', the kind's
        own settings after the shared ones."""
        values = [(k, v) for k, v in self.to_dict().items() if k not in ("kind", "kind_settings")]
        if self.settings is not None:
            values += asdict(self.settings).items()
        return f"{self.kind}({','.join(f'{k}={_described(v)}' for k, v in values)})"

    @property
    def entry(self) -> Reward:
        """The kind's `Reward` (looked up each time: the settings travel to Ray workers, entries need not pickle)."""
        return REWARDS.get(self.kind)

    def correct(self, outcome: Outcome, encoded: Encoded, reference: Outcome | None) -> bool:
        """Whether `outcome` (of `encoded` along some path) counts as correct; `reference` is the full model's
        outcome on the same prompt (the default path), needed by the robust reward on choice formats and by the
        agreement reward everywhere (`Reward.needs_reference`)."""
        return self.entry.correct(self, outcome, encoded, reference)


def _described(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _binary_correct(config: RewardConfig, outcome: Outcome, encoded: Encoded, reference: Outcome | None) -> bool:
    if encoded.format == "qa":
        return outcome.score >= config.min_f1
    return bool(outcome.correct)


def _robust_correct(config: RewardConfig, outcome: Outcome, encoded: Encoded, reference: Outcome | None) -> bool:
    if encoded.format == "qa" or encoded.kind != "choices":
        return _binary_correct(config, outcome, encoded, reference)
    return robust_choice_correct(outcome.scores, outcome.choice, encoded.gold, config.margin, config.epsilon,
                                 None if reference is None else reference.scores)


def _agreement_correct(config: RewardConfig, outcome: Outcome, encoded: Encoded,
                       reference: Outcome | None) -> bool:
    if reference is None:
        raise ValueError("the agreement reward needs the full model's outcome (reference)")
    return agrees(outcome, reference, encoded, config.margin, config.min_f1, config.epsilon)


REWARDS.register(Reward("binary", _binary_correct, needs_reference=lambda config, encoded: False))
REWARDS.register(Reward("robust", _robust_correct, needs_reference=lambda config, encoded: encoded.kind == "choices"))
REWARDS.register(Reward("agreement", _agreement_correct, needs_reference=lambda config, encoded: True, gold_free=True))


def robust_choice_correct(scores, choice: int | None, gold: int, margin: float, epsilon: float,
                          reference_scores=None) -> bool:
    """Gold wins by at least `margin` and its score is >= the reference's gold score - `epsilon`."""
    if choice is None or choice != gold or not scores:
        return False
    others = [score for index, score in enumerate(scores) if index != gold]
    if others and scores[gold] - max(others) < margin:
        return False
    if reference_scores is not None and scores[gold] < reference_scores[gold] - epsilon:
        return False
    return True


def choice_margin(scores, choice: int | None) -> float:
    """How far option `choice` leads the best other option (negative when it does not win); -inf without scores."""
    if choice is None or not scores:
        return -math.inf
    others = [score for index, score in enumerate(scores) if index != choice]
    return scores[choice] - max(others) if others else math.inf


def agrees(outcome: Outcome, reference: Outcome, encoded: Encoded, margin: float, min_f1: float,
           epsilon: float = math.inf) -> bool:
    """The agreement reward: `outcome` keeps the full model's answer `reference` (see the module docstring)."""
    if encoded.kind == "choices":
        return (outcome.choice == reference.choice and choice_margin(outcome.scores, reference.choice) >= margin
                and outcome.scores[reference.choice] >= reference.scores[reference.choice] - epsilon)
    if encoded.format == "qa":
        return token_f1(outcome.prediction, reference.prediction) >= min_f1
    return normalize_answer(outcome.prediction or "") == normalize_answer(reference.prediction or "")


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
                 cache_size: int = 8, reuse_prefix: bool = True, reward: RewardConfig | None = None):
        self.executor, self.format, self.encoded = executor, answer_format, encoded
        self.reward = reward or RewardConfig()
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
        resume, step = self.resume_point(path)
        outcome, state = self.format.evaluate(self.executor, self.encoded, path, keep_hidden=self.cache_size > 0,
                                              resume=resume, resume_step=step)
        self.record(path, outcome, state, step)
        return outcome

    def resume_point(self, path: LayerPath) -> tuple[RunState | None, int]:
        """The kept run sharing the longest prefix with `path`, and how many steps it saves."""
        return self._best_prefix(path) if self.cache_size else (None, 0)

    def record(self, path: LayerPath, outcome: Outcome, state: RunState, step: int) -> None:
        """Count an evaluation of `path` resumed at `step`, keep its run state for reuse and its outcome."""
        key = tuple(path)
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

    def reference(self) -> Outcome:
        """The full model's outcome (default path): what the robust reward compares against."""
        return self.outcome(LayerPath.default(self.executor.num_layers))

    def correct(self, path: LayerPath) -> bool:
        outcome = self.outcome(path)
        entry = self.reward.entry
        if entry.gold_free and path.layers == tuple(range(self.executor.num_layers)):
            return True  # the full model agrees with itself, near tie or not
        reference = self.reference() if entry.needs_reference(self.reward, self.encoded) else None
        return entry.correct(self.reward, outcome, self.encoded, reference)

    def __call__(self, path: LayerPath) -> float:
        return 1.0 if self.correct(path) else 0.0


def rewards_together(items: Sequence[tuple[PathRewarder, LayerPath]]) -> list[float]:
    """The reward of each (prompt's rewarder, path), as calling each rewarder alone would give (up to float
    rounding), with each path resumed from its own rewarder's kept prefix: the multiple-choice prompts' paths
    are scored as one mixed-path batch (`drllm.core.path_batch.score_together`), the generation prompts' paths
    generated as one (`drllm.core.path_batch.generate_together`), each group of similar prompt lengths together."""
    from drllm.core.path_batch import GenerateRequest, ScoreRequest, generate_together, score_together

    if len({id(rewarder) for rewarder, _ in items}) != len(items):
        raise ValueError("rewards_together takes at most one path per rewarder (the second would miss the "
                         "first's kept prefix)")
    fresh = [(rewarder, path) for rewarder, path in items if tuple(path) not in rewarder.outcomes]
    if len({id(rewarder.executor) for rewarder, _ in fresh}) > 1:
        raise ValueError("rewards_together needs every rewarder on the same executor")
    scoring = [(rewarder, path) for rewarder, path in fresh if rewarder.encoded.kind == "choices"]
    if scoring:
        points = [rewarder.resume_point(path) for rewarder, path in scoring]
        requests = [ScoreRequest(rewarder.encoded.batch, path, resume, step)
                    for (rewarder, path), (resume, step) in zip(scoring, points)]
        keep_hidden = any(rewarder.cache_size for rewarder, _ in scoring)
        scored = score_together(scoring[0][0].executor, requests, keep_hidden=keep_hidden)
        for (rewarder, path), (_, step), (results, state) in zip(scoring, points, scored):
            outcome = rewarder.format.grade_scores(rewarder.encoded, results, len(state.path))
            rewarder.record(path, outcome, state, step)
    # generation prompts that stop at the same EOS ids decode together
    generating: dict[tuple[int, ...], list[tuple[PathRewarder, LayerPath, Any]]] = {}
    for rewarder, path in fresh:
        if rewarder.encoded.kind == "generate":
            eos = rewarder.format.stop_ids(rewarder.executor, rewarder.encoded)
            key = (eos,) if isinstance(eos, int) else tuple(eos or ())
            generating.setdefault(key, []).append((rewarder, path, eos))
    for group in generating.values():
        points = [rewarder.resume_point(path) for rewarder, path, _ in group]
        requests = [GenerateRequest(rewarder.encoded.input_ids, path, rewarder.encoded.max_new_tokens, resume, step)
                    for (rewarder, path, _), (resume, step) in zip(group, points)]
        keep_hidden = any(rewarder.cache_size for rewarder, _, _ in group)
        generations = generate_together(group[0][0].executor, requests, eos_token_id=group[0][2],
                                        keep_hidden=keep_hidden)
        for (rewarder, path, eos), (_, step), generation in zip(group, points, generations):
            rewarder.record(path, rewarder.format.grade_generation(rewarder.encoded, generation, eos),
                            generation.prefill, step)
    return [rewarder(path) for rewarder, path in items]
