"""Issue 21: a reward and a labeler are one entry each in a lookup table (drllm.search.rewards.REWARDS,
drllm.search.labelers.LABELERS); entries registered in-process drive a tiny model's search, unknown names fail
naming the config key and the known names."""
from __future__ import annotations

import dataclasses
import re

import pytest

from conftest import tiny_model
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.search.labelers import LABELERS, Labeler, LabelResult
from drllm.search.rewards import REWARDS, PathRewarder, Reward, RewardConfig


@pytest.fixture
def registered(monkeypatch):
    """Register entries for one test: each table gets a copy of its entries, restored afterwards."""
    for table in (REWARDS, LABELERS):
        monkeypatch.setattr(table, "_entries", dict(table._entries))
    return lambda table, entry: table.register(entry)


def test_an_entry_is_registered_under_its_own_name(registered):
    reward = Reward("option_one", picks_option_one, needs_reference=lambda config, encoded: False)
    assert registered(REWARDS, reward) is reward and REWARDS.get("option_one") is reward
    registered(REWARDS, reward)  # the same entry again: nothing changes
    with pytest.raises(ValueError, match="reward 'option_one' is already registered"):
        registered(REWARDS, dataclasses.replace(reward, gold_free=True))
    with pytest.raises(ValueError, match=r"reward names must be identifiers, got 'two words' \(the entry's `name`\)"):
        registered(REWARDS, dataclasses.replace(reward, name="two words"))


def picks_option_one(config, outcome, encoded, reference):
    return outcome.choice == 1  # a toy rule: the gold answer plays no part


def test_a_registered_reward_judges_the_search(registered):
    from drllm.formats.answers import get_format
    from drllm.search.mcts import MCTSConfig, run_search
    from test_safety import tiny_cloze

    registered(REWARDS, Reward("option_one", picks_option_one, needs_reference=lambda config, encoded: False))
    executor = PathExecutor(tiny_model("llama", layers=6))
    seen = []
    for seed in range(4):
        rewarder = PathRewarder(executor, get_format("cloze"), tiny_cloze(6 + seed, seed=seed),
                                reward=RewardConfig.from_dict({"kind": "option_one"}))
        result = run_search(rewarder, 6, MCTSConfig(simulations=8, early_stop=False), seed)
        for path, reward in result.evaluated:
            assert reward == (1.0 if rewarder.outcomes[tuple(path)].choice == 1 else 0.0)
            seen.append(reward)
    assert 0 < sum(seen) < len(seen)  # the tiny model's paths gave both verdicts


def test_a_gold_free_reward_is_refused_by_the_oracle(registered):
    from drllm.evaluation.settings import EvalSettings

    registered(REWARDS, Reward("same_option", picks_option_one, needs_reference=lambda config, encoded: True,
                               gold_free=True))
    assert RewardConfig(kind="same_option").entry.gold_free
    with pytest.raises(ValueError, match="must be gold-based .*not same_option"):
        EvalSettings.from_dict({"oracle": {"reward": {"kind": "same_option"}}})


def test_a_registered_labeler_labels_through_search_prompts(registered):
    """A toy labeler (skip the last block, one evaluation) runs through the search stage's worker code."""
    from test_tasks import byte_tokenizer, mc_example

    from drllm.core.seeds import derived_seed
    from drllm.search.prompts import select_prompts
    from drllm.search.settings import SearchSettings
    from drllm.search.workers import search_prompts

    seeds = []

    def skip_last(num_layers, settings, rewarder, seed):
        seeds.append(seed)
        path = LayerPath.from_counts([1] * (num_layers - 1) + [0])
        reward = yield path
        default_correct = rewarder.correct(LayerPath.default(num_layers))  # evaluated outside the batch
        return LabelResult(default_correct, path if reward > 0.5 else None, [(path, reward)])

    registered(LABELERS, Labeler("skip_last", skip_last))
    executor = PathExecutor(tiny_model("llama", layers=6, vocab_size=259))
    records = [mc_example(id=f"q{i}", question=f"Question {i}: which one?", gold=i % 4).to_dict() for i in range(6)]
    prompts = [{**row, "seed_check": row["prompt_index"] == 0}
               for row in select_prompts(records, "arc_easy", "cloze", 6, seed=0)]
    settings = SearchSettings(model="tiny", num_layers=6, chat_template=False, labeler="skip_last",
                              seed_check=1)
    rows = search_prompts(executor, byte_tokenizer(), prompts, settings)
    assert seeds[:6] == [derived_seed(0, row["task"], row["id"]) for row in prompts]  # then the seed check's
    assert seeds[6:] == [derived_seed(1, prompts[0]["task"], prompts[0]["id"])]
    for row in rows:
        assert row["labeler"] == "skip_last" and len(row["evaluated"]) == 1
        assert row["evaluated"][0]["path"] == str(LayerPath.from_counts([1, 1, 1, 1, 1, 0]))
        assert row["kept"] == (row["evaluated"][0]["reward"] == 1.0)
        assert row["labels"] == ([1, 1, 1, 1, 1, 0] if row["kept"] else None)
        assert row["evaluations"] == 2 and row["prediction_default"] is not None
    assert rows[0]["labels_check"] == rows[0]["labels"] and all(row["labels_check"] is None for row in rows[1:])
    assert 0 < sum(row["kept"] for row in rows) < len(rows)

    def untyped(num_layers, settings, rewarder, seed):  # a result of its own type: refused, naming the labeler
        reward = yield LayerPath.default(num_layers)
        return {"default_correct": reward > 0.5, "best_path": None, "evaluated": []}

    registered(LABELERS, Labeler("untyped", untyped))
    with pytest.raises(TypeError, match="search.labeler 'untyped' returned dict, not a "
                                        "drllm.search.labelers.LabelResult"):
        search_prompts(executor, byte_tokenizer(), prompts[:1], dataclasses.replace(settings, labeler="untyped"))


def test_unknown_reward_or_labeler_names_the_key_and_the_known_names():
    from drllm.search.settings import SearchSettings

    with pytest.raises(ValueError, match=r"search\.reward\.kind: unknown reward 'nope'; "
                                         r"known: \['binary', 'robust', 'agreement'\]"):
        RewardConfig.from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match=r"search\.labeler: unknown labeler 'nope'; known: \['mcts', 'safety'\]"):
        SearchSettings.from_dict({"labeler": "nope"}, {"name": "m", "num_layers": 4})


# -- entries with settings of their own: the block named after the entry, read as a built-in block is ------------

MANIFEST = {"name": "m", "num_layers": 4}


def toy_block_settings(name: str, block: dict):
    """The object built from a toy's config block, through the settings object of the stage that reads it."""
    from drllm.evaluation.settings import EvalSettings
    from drllm.search.settings import SearchSettings
    from drllm.training.train_settings import TrainConfig

    if name == "in_top":
        settings = SearchSettings.from_dict({"reward": {"kind": "in_top", "in_top": block}}, MANIFEST)
        return settings.reward_config().settings
    if name == "last_safe":
        return SearchSettings.from_dict({"labeler": "last_safe", "last_safe": block}, MANIFEST).labeler_settings()
    if name == "linear":
        config = TrainConfig.from_dict({"router_kind": "linear", "standardize": False, "prior_init": False,
                                        "linear": block})
        from drllm.routing.kinds import ROUTER_KINDS
        from drllm.routing.router_config import RouterConfig

        return ROUTER_KINDS.get("linear").parse_settings(RouterConfig("m", 4, 8, kind="linear",
                                                                      kind_settings=config.kind_settings))
    return EvalSettings.from_dict({name: block}).method_settings(name)


@pytest.mark.parametrize("name", ["in_top", "last_safe", "linear", "unsafest"])
def test_a_toy_entrys_block_reaches_it_and_is_checked_in_the_built_in_wording(toy_plugins, name):
    where, key, bad, message = toy_plugins.BLOCKS[name]
    defaults = toy_block_settings(name, {})
    good = {key: 3}
    assert getattr(toy_block_settings(name, good), key) == 3 and getattr(defaults, key) != 3
    with pytest.raises(ValueError, match=re.escape(message)):
        toy_block_settings(name, {key: bad})
    with pytest.raises(ValueError, match=re.escape(f"{where}: unknown key(s) ['{key}s']; known: ['{key}']")):
        toy_block_settings(name, {f"{key}s": 3})
    with pytest.raises(ValueError, match=re.escape(f"{where} must be a mapping")):
        toy_block_settings(name, [3])


def test_blocks_of_unknown_entries_are_refused_naming_the_block(toy_plugins):
    from drllm.evaluation.settings import EvalSettings
    from drllm.search.settings import SearchSettings
    from drllm.training.train_settings import TrainConfig

    with pytest.raises(ValueError, match=r"search: unknown key\(s\) \['lst_safe'\]; known: \[.*'last_safe'"):
        SearchSettings.from_dict({"lst_safe": {"blocks": 2}}, MANIFEST)
    with pytest.raises(ValueError, match=r"search.reward: unknown key\(s\) \['in_tops'\]; known: \[.*'in_top'"):
        SearchSettings.from_dict({"reward": {"in_tops": {"k": 2}}}, MANIFEST)
    with pytest.raises(ValueError, match=r"eval: unknown key\(s\) \['unsafe'\]; known: \[.*'unsafest'"):
        EvalSettings.from_dict({"unsafe": {"scale": 2}})
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \['lineal'\]"):
        TrainConfig.from_dict({"router_kind": "linear", "standardize": False, "prior_init": False,
                               "lineal": {"gain": 2}})
    # an entry without settings takes no block
    with pytest.raises(ValueError, match=r"eval: unknown key\(s\) \['router'\]"):
        EvalSettings.from_dict({"router": {"scale": 2}})


def test_a_toy_entrys_settings_show_where_its_artifacts_are_described(toy_plugins):
    """The reward's settings are part of the shard's `reward` column; the oracle's reward block reaches a plugin
    reward the same way (and its settings are checked there, naming eval.oracle.reward); a kind without a
    description of its own is described by name and settings on the model card."""
    from drllm.evaluation.settings import EvalSettings
    from drllm.routing.router_config import RouterConfig

    reward = RewardConfig.from_dict({"kind": "in_top", "margin": 0.02, "in_top": {"k": 3}})
    assert reward.describe() == "in_top(margin=0.02,epsilon=none,min_f1=0.5,k=3)"
    assert RewardConfig.from_dict({"kind": "binary", "in_top": {"k": 3}}).describe() == \
        "binary(margin=0,epsilon=none,min_f1=0.5)"  # another kind's block: checked, not used
    oracle = EvalSettings.from_dict({"oracle": {"reward": {"kind": "in_top", "in_top": {"k": 4}}}})
    assert oracle.method_settings("oracle").reward.settings.k == 4
    with pytest.raises(ValueError, match=re.escape("eval.oracle.reward.in_top.k must be an integer >= 1, got 0")):
        EvalSettings.from_dict({"oracle": {"reward": {"kind": "in_top", "in_top": {"k": 0}}}})
    config = RouterConfig("m", 4, 8, kind="linear", kind_settings={"gain": 0.5})
    assert toy_plugins.TOY_ROUTER_KIND.describe(config) == 'router kind `linear`, settings {"gain": 0.5}'
