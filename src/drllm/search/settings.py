"""The search stage's settings: the keys of the config's `search:` block a worker reads (the rules pass them as one
JSON: rules/search.smk), built and checked once (drllm.core.settings); recorded in every shard (`search_config`).
The execution keys (shards, backend, workers, ray_address, max_retries, batch_prompts) go to the stage as its own
arguments: they change where the search runs, never its rows."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from drllm.core.models import chat_template_for
from drllm.core.settings import check_fields, from_block, setting
from drllm.formats.answers import get_format
from drllm.search.labelers import LABELERS
from drllm.search.mcts import MCTSConfig
from drllm.search.rewards import RewardConfig
from drllm.search.safety import SafetyConfig


@dataclass(frozen=True)
class SearchSettings:
    """Everything a worker needs besides the model; JSON-serialisable for the shard's `search_config`.

    Built once per stage by `from_dict` from the search keys of the config's `search:` block; the MCTS, reward
    and answer-format settings are validated when the object is made (a bad value fails naming its field before
    any worker starts) and kept as objects (`mcts_config()`, `reward_config()`). `mcts` and `reward` also keep
    the keys as given, which is what `search_config` records.
    """

    model: str
    num_layers: int
    mcts: dict[str, Any] = setting(kind="mapping")   # drllm.search.mcts.MCTSConfig fields, as given
    seed: int = setting(0, "int")
    chat_template: bool = setting(True, "bool")
    prefix_cache: int = setting(8, "int", low=0)     # run states kept per prompt for prefix reuse; 0 disables reuse
    formats: dict[str, dict[str, Any]] = setting(kind="mapping", factory=dict)  # per-format options
    # drllm.search.rewards.RewardConfig fields; {} = binary
    reward: dict[str, Any] = setting(kind="mapping", factory=dict)
    labeler: str = setting("mcts", "str")            # a LABELERS name: mcts (the paper's single path) | safety | ...
    safety: dict[str, Any] = setting(kind="mapping", factory=dict)  # drllm.search.safety.SafetyConfig fields
    # per shard, the first N prompts searched again with a second seed; 0 = off
    seed_check: int = setting(0, "int", low=0)

    def __post_init__(self) -> None:
        check_fields(self, "search")
        LABELERS.get(self.labeler)  # an unknown labeler fails naming the config key and the known ones
        for name, options in self.formats.items():
            if not isinstance(options, dict):
                raise ValueError(f"search.formats.{name} must be a mapping of options, got {options!r}")
            get_format(name, **options)  # unknown formats or options fail here, naming them
        object.__setattr__(self, "_mcts", MCTSConfig.from_dict(self.mcts))
        object.__setattr__(self, "_reward", RewardConfig.from_dict(self.reward))
        object.__setattr__(self, "_safety", SafetyConfig.from_dict(self.safety))

    @classmethod
    def from_dict(cls, block: dict[str, Any] | None, manifest: dict[str, Any]) -> "SearchSettings":
        """The settings from the search keys of the config's `search:` block (as the search rule passes them) and
        the materialised model's manifest; unknown keys fail naming them, absent ones take the defaults above
        (chat_template: the model's own, see drllm.core.models.chat_template_for)."""
        block = dict(block or {})
        block["chat_template"] = chat_template_for(block.get("chat_template"), manifest)
        block.setdefault("mcts", {})
        block["reward"] = block.get("reward") or {}
        return from_block(cls, block, "search", model=manifest["name"], num_layers=manifest["num_layers"])

    def reward_config(self) -> RewardConfig:
        return self._reward

    def mcts_config(self) -> MCTSConfig:
        return self._mcts

    def safety_config(self) -> SafetyConfig:
        return self._safety

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)
