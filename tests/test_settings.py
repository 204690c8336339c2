"""Settings built one way (drllm.core.settings): one wording for every bad value, and the config schema holding
the same bounds, choices and defaults as the settings objects that read each block."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO
from drllm.core.settings import Accepts, check_fields, from_block, setting
from drllm.evaluation.settings import EvalSettings, OracleSettings
from drllm.calibration.calibration_settings import CalibrationConfig
from drllm.calibration.certify import CertifyConfig
from drllm.training.train_settings import TrainConfig
from drllm.search.mcts import MCTSConfig
from drllm.search.rewards import RewardConfig
from drllm.search.safety import SafetyConfig
from drllm.search.settings import SearchSettings

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())

# config block (a path of schema properties) -> the settings class that reads it
BLOCKS = [
    (("search",), SearchSettings),
    (("search", "mcts"), MCTSConfig),
    (("search", "reward"), RewardConfig),
    (("search", "safety"), SafetyConfig),
    (("eval",), EvalSettings),
    (("eval", "oracle"), OracleSettings),
    (("calibrate",), CalibrationConfig),
    (("calibrate", "certify"), CertifyConfig),
    (("train",), TrainConfig),
]
# Fields that read another block's key (the rules pass it along).
ELSEWHERE = {(CalibrationConfig, "chat_template"): ("eval", "chat_template"),
             (EvalSettings, "prefix_cache"): ("search", "prefix_cache")}
# A settings field may also take null where null means "decide from the model": the rules always pass the config's
# value, and scripts run by hand get the model's own chat template.
MODEL_DEFAULTS = {"chat_template"}


def resolve(node):
    if "$ref" in node:  # "#/$defs/<name>"
        return SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def schema_block(path):
    node = SCHEMA["properties"]
    for key in path[:-1]:
        node = resolve(node[key])["properties"]
    return resolve(node[path[-1]])


def declared(cls):
    return [(f, f.metadata["accepts"]) for f in dataclasses.fields(cls) if "accepts" in f.metadata]


@pytest.mark.parametrize("path, cls", BLOCKS, ids=[".".join(p) for p, _ in BLOCKS])
def test_schema_and_settings_agree_on_bounds_choices_and_defaults(path, cls):
    properties = schema_block(path)["properties"]
    fields = declared(cls)
    assert fields, f"{cls.__name__} declares no settings"
    for field, accepts in fields:
        if (cls, field.name) in ELSEWHERE:
            rule = schema_block(ELSEWHERE[cls, field.name][:-1])["properties"][ELSEWHERE[cls, field.name][-1]]
        else:
            assert field.name in properties, f"{'.'.join(path)}.{field.name}: in {cls.__name__}, not in the schema"
            rule = resolve(properties[field.name])
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if default is None and accepts.nullable and "null" not in str(rule):
            # absent in the config means None: the schema need not accept an explicit null
            accepts = dataclasses.replace(accepts, nullable=False)
        if field.name in MODEL_DEFAULTS:
            accepts, default = dataclasses.replace(accepts, nullable=False), rule.get("default")
        expected = accepts.json_schema()
        if "enum" in expected:
            assert sorted(map(str, rule["enum"])) == sorted(map(str, expected["enum"])), field.name
            continue
        types = rule["type"] if isinstance(rule["type"], list) else [rule["type"]]
        want = expected["type"] if isinstance(expected["type"], list) else [expected["type"]]
        assert sorted(types) == sorted(want), f"{'.'.join(path)}.{field.name}: type {types} vs {want}"
        for bound in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            assert rule.get(bound) == expected.get(bound), f"{'.'.join(path)}.{field.name}: {bound}"
        if "default" in rule:
            assert rule["default"] == default, f"{'.'.join(path)}.{field.name}: default {rule['default']!r} " \
                                               f"in the schema, {default!r} in {cls.__name__}"


def test_one_wording_for_every_bad_value():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        count: int = setting(1, "int", low=1)
        share: float = setting(0.5, "number", low=0, high=1, high_open=True)
        mode: str = setting("a", "str", choices=("a", "b"))
        limit: int | None = setting(None, "int", low=0, nullable=True)

        def __post_init__(self):
            check_fields(self, "toy")

    assert from_block(Toy, {"share": 0}, "toy").share == 0.0 and isinstance(Toy(share=0).share, float)
    for block, message in [({"count": 0}, "toy.count must be an integer >= 1, got 0"),
                           ({"count": True}, "toy.count must be an integer >= 1, got True"),
                           ({"share": 1}, "toy.share must be a number >= 0 and < 1, got 1"),
                           ({"share": float("nan")}, "toy.share must be a number >= 0 and < 1, got nan"),
                           ({"mode": "c"}, "toy.mode must be one of ['a', 'b'], got 'c'"),
                           ({"limit": -1}, "toy.limit must be an integer >= 0 or null, got -1"),
                           ({"counts": 2}, "toy: unknown key(s) ['counts']; known: ['count', 'limit', 'mode', "
                                           "'share']")]:
        with pytest.raises(ValueError) as error:
            from_block(Toy, block, "toy")
        assert str(error.value) == message
    assert Accepts("int", low=0, nullable=True).json_schema() == {"type": ["integer", "null"], "minimum": 0}


def test_the_search_execution_keys_default_as_the_shard_request_does():
    """search.max_retries and search.batch_prompts reach the stage as ShardRequest fields: one default each."""
    from drllm.search.stage import ShardRequest

    search = SCHEMA["properties"]["search"]["properties"]
    for key in ("max_retries", "batch_prompts"):
        assert search[key]["default"] == getattr(ShardRequest, key), key

