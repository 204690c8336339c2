"""The evaluation stage's settings: the keys of the config's `eval:` block a cell reads (the rules pass only its
method's: rules/common.smk `eval_settings`), built and validated once (drllm.core.settings). A method's own settings
are the block named after it, `eval.<kind>` (`Method.settings`, drllm.evaluation.methods): the oracle's is
`eval.oracle` (OracleSettings)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from drllm.core.plugins import split_blocks
from drllm.core.settings import building, check_fields, from_block, setting
from drllm.evaluation.methods import METHODS
from drllm.search.mcts import MCTSConfig
from drllm.search.rewards import REWARDS, RewardConfig


@dataclass(frozen=True)
class OracleSettings:
    """eval.oracle as the oracle's cells receive it: the search's settings with the oracle's over them (the blocks
    mcts and reward may be given as mappings: they are built here, naming eval.oracle.mcts / .reward)."""

    samples: int | None = setting(None, "int", low=1, nullable=True)  # only the first N sampled examples
    mcts: MCTSConfig = field(default_factory=MCTSConfig)       # search.mcts with eval.oracle.mcts over it
    reward: RewardConfig = field(default_factory=RewardConfig)  # search.reward with eval.oracle.reward over it

    def __post_init__(self) -> None:
        where = building(self, "eval.oracle")
        check_fields(self, where)
        if not isinstance(self.mcts, MCTSConfig):
            object.__setattr__(self, "mcts", MCTSConfig.from_dict(self.mcts, f"{where}.mcts"))
        if not isinstance(self.reward, RewardConfig):
            object.__setattr__(self, "reward", RewardConfig.from_dict(self.reward, f"{where}.reward"))
        if self.reward.entry.gold_free:
            gold = [name for name in REWARDS if not REWARDS.get(name).gold_free]
            raise ValueError(f"{where}.reward: the oracle searches with the gold answer, so its reward must be "
                             f"gold-based (one of {gold}), not {self.reward.kind} (set {where}.reward.kind)")

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None) -> "OracleSettings":
        return from_block(cls, block, "eval.oracle")


@dataclass(frozen=True)
class EvalSettings:
    """The settings an evaluation cell reads (the rules pass only its method's: rules/common.smk `eval_settings`),
    built and validated once by `from_dict`."""

    seed: int = setting(0, "int")
    chat_template: bool | None = setting(None, "bool", nullable=True)  # None: the model's own (chat_template_for)
    formats: dict = setting(kind="mapping", factory=dict)
    prefix_cache: int = setting(8, "int", low=0)  # oracle cells: the search's prefix reuse
    # the methods' own blocks given, built: method kind -> its settings object (eval.<kind>)
    blocks: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "eval")

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None) -> "EvalSettings":
        """From the settings the rule passes: seed, chat_template, formats, prefix_cache and the cell's method's own
        block (eval.<kind>, e.g. oracle {samples, mcts, reward}), checked against that method's settings."""
        own = [f.name for f in fields(cls) if f.name != "blocks"]
        block, given = split_blocks(dict(block or {}), own, METHODS, "eval")
        blocks = {kind: METHODS.settings_of(kind, options, f"eval.{kind}") for kind, options in given.items()}
        return from_block(cls, block, "eval", blocks=blocks)

    def method_settings(self, kind: str) -> Any:
        """Method `kind`'s settings object: its block as given, else its defaults (None: it has no settings)."""
        if kind in self.blocks:
            return self.blocks[kind]
        return METHODS.settings_of(kind, None, f"eval.{kind}")
