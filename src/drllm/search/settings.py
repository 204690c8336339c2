"""The search stage's settings: the keys of the config's `search:` block a worker reads (the rules pass them as one
JSON: rules/search.smk), built and checked once (drllm.core.settings); recorded in every shard (`search_config`).
The execution keys (shards, backend, workers, ray_address, max_retries, batch_prompts) and the tasks go to the
stage as its own arguments: they change where the search runs, never its rows. Every other key of `search:` is
either one of SearchSettings' own or a labeler's block (`search.mcts`, `search.safety`, a plugin labeler's
`search.<name>`: drllm.search.labelers)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from drllm.core.models import chat_template_for
from drllm.core.plugins import split_blocks
from drllm.core.settings import check_fields, from_block, setting
from drllm.formats.answers import get_format
from drllm.search.labelers import LABELERS
from drllm.search.rewards import RewardConfig


@dataclass(frozen=True)
class SearchSettings:
    """Everything a worker needs besides the model; JSON-serialisable for the shard's `search_config`.

    Built once per stage by `from_dict` from the search keys of the config's `search:` block; the labeler, reward
    and answer-format settings are validated when the object is made (a bad value fails naming its field before
    any worker starts) and kept as objects (`labeler_settings()`, `reward_config()`). `reward` and `labelers` also
    keep the blocks as given, which is what `search_config` records.
    """

    model: str
    num_layers: int
    seed: int = setting(0, "int")
    chat_template: bool = setting(True, "bool")
    prefix_cache: int = setting(8, "int", low=0)     # run states kept per prompt for prefix reuse; 0 disables reuse
    formats: dict[str, dict[str, Any]] = setting(kind="mapping", factory=dict)  # per-format options
    # drllm.search.rewards.RewardConfig fields; {} = binary
    reward: dict[str, Any] = setting(kind="mapping", factory=dict)
    labeler: str = setting("mcts", "str")            # a LABELERS name: mcts (the paper's single path) | safety | ...
    # per shard, the first N prompts searched again with a second seed; 0 = off
    seed_check: int = setting(0, "int", low=0)
    # the labelers' blocks as given, by labeler: search.mcts (MCTSConfig), search.safety (SafetyConfig), a plugin's
    labelers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "search")
        LABELERS.get(self.labeler)  # an unknown labeler fails naming the config key and the known ones
        for name, options in self.formats.items():
            if not isinstance(options, dict):
                raise ValueError(f"search.formats.{name} must be a mapping of options, got {options!r}")
            get_format(name, **options)  # unknown formats or options fail here, naming them
        # every labeler block given is checked, the chosen labeler's settings kept (its defaults without a block)
        parsed = {name: LABELERS.settings_of(name, block, f"search.{name}") for name, block in self.labelers.items()}
        if self.labeler not in parsed:
            parsed[self.labeler] = LABELERS.settings_of(self.labeler, None, f"search.{self.labeler}")
        object.__setattr__(self, "_labeler", parsed[self.labeler])
        object.__setattr__(self, "_reward", RewardConfig.from_dict(self.reward))

    @classmethod
    def from_dict(cls, block: dict[str, Any] | None, manifest: dict[str, Any]) -> "SearchSettings":
        """The settings from the search keys of the config's `search:` block (as the search rule passes them) and
        the materialised model's manifest; a key that is neither a field above nor a labeler's block fails naming
        it, absent ones take the defaults above (chat_template: the model's own, see
        drllm.core.models.chat_template_for)."""
        own = [f.name for f in dataclasses.fields(cls) if f.name not in ("model", "num_layers", "labelers")]
        block, labelers = split_blocks(dict(block or {}), own, LABELERS, "search")
        block["chat_template"] = chat_template_for(block.get("chat_template"), manifest)
        block["reward"] = block.get("reward") or {}
        return from_block(cls, block, "search", model=manifest["name"], num_layers=manifest["num_layers"],
                          labelers=labelers)

    def reward_config(self) -> RewardConfig:
        return self._reward

    def labeler_settings(self) -> Any:
        """The chosen labeler's settings object (from `search.<labeler>`; None when it declares none)."""
        return self._labeler

    def to_json(self) -> str:
        """The settings as the config gave them, labeler blocks beside the other keys (`search_config`)."""
        data = dataclasses.asdict(self)
        data.update(data.pop("labelers"))
        return json.dumps(data, sort_keys=True)
