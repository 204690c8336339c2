"""The evaluation stage's settings: the keys of the config's `eval:` block a cell reads (the rules pass only its
method's: rules/common.smk `eval_settings`), built and validated once (drllm.core.settings)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from drllm.core.blocks import check_keys
from drllm.core.settings import check_fields, setting
from drllm.search.mcts import MCTSConfig
from drllm.search.rewards import RewardConfig


@dataclass(frozen=True)
class OracleSettings:
    """eval.oracle as the oracle's cells receive it: the search's settings with the oracle's over them."""

    samples: int | None = setting(None, "int", low=1, nullable=True)  # only the first N sampled examples
    mcts: MCTSConfig = field(default_factory=MCTSConfig)       # search.mcts with eval.oracle.mcts over it
    reward: RewardConfig = field(default_factory=RewardConfig)  # search.reward with eval.oracle.reward over it

    def __post_init__(self) -> None:
        check_fields(self, "eval.oracle")
        if self.reward.entry.gold_free:
            raise ValueError("eval.oracle.reward: the oracle searches with the gold answer, so its reward must be "
                             f"gold-based (binary or robust), not {self.reward.kind} (set eval.oracle.reward)")

    @classmethod
    def from_dict(cls, block: dict | None) -> "OracleSettings":
        if block is not None and not isinstance(block, dict):
            raise ValueError(f"eval.oracle must be a mapping of samples, mcts and reward, got {block!r}")
        block = dict(block or {})
        check_keys("eval.oracle", block, ("samples", "mcts", "reward"))
        return cls(samples=block.get("samples"), mcts=MCTSConfig.from_dict(block.get("mcts"), "eval.oracle.mcts"),
                   reward=RewardConfig.from_dict(block.get("reward"), "eval.oracle.reward"))


@dataclass(frozen=True)
class EvalSettings:
    """The settings an evaluation cell reads (the rules pass only its method's: rules/common.smk `eval_settings`),
    built and validated once by `from_dict`."""

    seed: int = setting(0, "int")
    chat_template: bool | None = setting(None, "bool", nullable=True)  # None: the model's own (chat_template_for)
    formats: dict = setting(kind="mapping", factory=dict)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    prefix_cache: int = setting(8, "int", low=0)  # oracle cells: the search's prefix reuse

    def __post_init__(self) -> None:
        check_fields(self, "eval")

    @classmethod
    def from_dict(cls, block: dict | None) -> "EvalSettings":
        """From the settings the rule passes: seed, chat_template, formats, prefix_cache and oracle {samples, mcts,
        reward}."""
        block = dict(block or {})
        check_keys("eval", block, [f.name for f in fields(cls)])
        return cls(**{**block, "oracle": OracleSettings.from_dict(block.get("oracle"))})
