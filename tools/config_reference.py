"""The key tables of docs/configuration.md, generated so they cannot drift from the code: each key's default and
what it accepts come from the settings class that reads its block (drllm.core.settings), else from the config
schema (keys no settings class reads: model, data, the search's execution keys, ...); the shipped value comes from
config/config.yaml. Only the meaning column is written by hand, and regeneration keeps it.

    python tools/config_reference.py           # rewrite the tables in docs/configuration.md
    python tools/config_reference.py --check   # exit 1 naming what is stale (tests/test_docs.py runs the same)

--check also refuses a value of config/config.yaml that differs from its default without a comment saying why.

A key new to the schema gets a row with its schema description as meaning, or an empty one, which --check refuses.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "configuration.md"
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SHIPPED_PATH = REPO / "config" / "config.yaml"
TABLE = re.compile(r"(<!-- keys: (\S+) -->\n)(.*?)(<!-- /keys -->)", re.S)
HEADER = "| key | default | shipped | accepts | meaning |\n|---|---|---|---|---|\n"
# Blocks read as a whole by one setting (merged over search.mcts / search.reward): one row, not one per key.
WHOLE = {("eval", "oracle", "mcts"): "search.mcts", ("eval", "oracle", "reward"): "search.reward"}


def settings_blocks() -> dict[tuple[str, ...], type]:
    """Config block (a path of keys) -> the settings class that reads it."""
    from drllm.evaluation.settings import EvalSettings, OracleSettings
    from drllm.routing.allocation_settings import AllocationConfig
    from drllm.calibration.calibration_settings import CalibrationConfig
    from drllm.calibration.certify import CertifyConfig
    from drllm.training.train_settings import TrainConfig
    from drllm.routing.kinds.confidence import ConfidenceSettings
    from drllm.search.mcts import MCTSConfig
    from drllm.search.rewards import RewardConfig
    from drllm.search.safety import SafetyConfig
    from drllm.search.settings import SearchSettings

    return {("search",): SearchSettings, ("search", "mcts"): MCTSConfig, ("search", "reward"): RewardConfig,
            ("search", "safety"): SafetyConfig, ("eval",): EvalSettings, ("eval", "oracle"): OracleSettings,
            ("calibrate",): CalibrationConfig, ("calibrate", "certify"): CertifyConfig, ("train",): TrainConfig,
            ("train", "confidence"): ConfidenceSettings, ("allocate",): AllocationConfig}


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:  # "#/$defs/<name>"
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def properties(schema: dict, node: dict) -> dict:
    """A block's keys, including those of its if/then/else branches (data entries: built-in or declared)."""
    found = dict(node.get("properties", {}))
    for branch in ("then", "else"):
        if branch in node:
            found.update(properties(schema, resolve(schema, node[branch])))
    return found


def keys(schema: dict, node: dict, path: tuple[str, ...], parent: dict | None = None):
    """(path, rule, parent block) of every key below `node`; a mapping of user-chosen names appears once as
    `<name>`, and an extension point's settings block beside a block's own keys once as `<entry>`, named by the
    schema's `x-entry` (`search.reward.<kind>`: additionalProperties with no keys of its own)."""
    node = resolve(schema, node)
    named = properties(schema, node)
    extra = node.get("additionalProperties")
    if path == ("data",):  # the built-in benchmarks' entries and declared ones: one set of keys for any name
        named, extra = {}, {"$ref": "#/$defs/data_entry"}
    if path in WHOLE or not (named or isinstance(extra, dict) and properties(schema, resolve(schema, extra))):
        yield path, node, parent or {}
        return
    for key, child in named.items():
        yield from keys(schema, child, path + (key,), node)
    if isinstance(extra, dict) and properties(schema, resolve(schema, extra)):
        yield from keys(schema, extra, path + ("<name>",), node)
    elif isinstance(extra, dict) and "x-entry" in extra:
        yield path + (f"<{extra['x-entry']}>",), extra, node


def inline(value) -> str:
    """A value as it is written in the config (YAML flow style)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float) and math.isinf(value):
        return ".inf"
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def schema_accepts(schema: dict, rule: dict) -> str:
    rule = resolve(schema, rule)
    if "enum" in rule:
        return f"one of {inline(rule['enum'])}"
    types = rule.get("type", [])
    nouns = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
             "object": "a mapping", "array": "a list", "null": "null"}
    text = " or ".join(nouns[t] for t in ([types] if isinstance(types, str) else types)) or "see the schema"
    bounds = [f"{sign} {rule[bound]:g}" for bound, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                             ("maximum", "<="), ("exclusiveMaximum", "<"))
              if bound in rule]
    return text + (" " + " and ".join(bounds) if bounds else "")


def field_of(cls: type, name: str):
    return next((f for f in dataclasses.fields(cls) if f.name == name), None)


def default_and_accepts(schema: dict, path: tuple[str, ...], rule: dict, parent: dict) -> tuple[str, str]:
    """A key's default and what it accepts: the settings field's where a settings class reads the block, else
    the schema's."""
    if path in WHOLE:
        return f"`{WHOLE[path]}`", f"keys of `{WHOLE[path]}`, merged over it"
    cls = settings_blocks().get(path[:-1])
    field = field_of(cls, path[-1]) if cls else None
    if field is not None:
        accepts = field.metadata.get("accepts")
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        if default is None and "default" in rule:  # None = the model's own; the pipeline passes the schema's
            return f"`{inline(rule['default'])}`", schema_accepts(schema, rule)
        text = "required" if default is dataclasses.MISSING else f"`{inline(default)}`"
        return text, accepts.describe() if accepts else schema_accepts(schema, rule)
    if "default" in rule:
        return f"`{inline(rule['default'])}`", schema_accepts(schema, rule)
    required = path[-1] in parent.get("required", [])
    return ("required" if required else "—"), schema_accepts(schema, rule)


def shipped_value(shipped: dict, path: tuple[str, ...]) -> str:
    """The value at `path` in a config ("—": not set there; "per entry" under a mapping of chosen names)."""
    node = shipped
    for key in path:
        if key == "<name>":
            return "per entry"
        if key.startswith("<"):  # an extension point's block: none is shipped
            return "—"
        if not isinstance(node, dict) or key not in node:
            return "—"
        node = node[key]
    return f"`{inline(node)}`"


def rows(block: str, meanings: dict[str, str], shipped: dict | None = None) -> list[tuple[str, str, str, str, str]]:
    """(key, default, shipped value, accepts, meaning) of every key of one top-level block."""
    schema = load_schema()
    shipped = yaml.safe_load(SHIPPED_PATH.read_text()) if shipped is None else shipped
    out = []
    for path, rule, parent in keys(schema, schema["properties"][block], (block,), schema):
        name = ".".join(path)
        default, accepts = default_and_accepts(schema, path, rule, parent)
        meaning = meanings.get(name) or " ".join(str(rule.get("description", "")).split()).replace("|", "\\|")
        out.append((name, default, shipped_value(shipped, path), accepts, meaning))
    return out


def written_meanings(table: str) -> dict[str, str]:
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 5 and cells[0].startswith("`"):
            found[cells[0].strip("`")] = cells[4]
    return found


def render(text: str) -> str:
    """`text` (docs/configuration.md) with every key table regenerated, hand-written meanings kept."""
    def table(match: re.Match) -> str:
        body = "".join(f"| `{key}` | {default} | {shipped} | {accepts} | {meaning} |\n"
                       for key, default, shipped, accepts, meaning in rows(match[2], written_meanings(match[3])))
        return match[1] + HEADER + body + match[4]
    return TABLE.sub(table, text)


def problems(text: str) -> list[str]:
    """What is stale in `text`: tables that differ from their regeneration, keys without a meaning, top-level
    config blocks without a table."""
    found = []
    fresh = render(text)
    for old, new in zip(TABLE.finditer(text), TABLE.finditer(fresh)):
        stale = sorted(set(new[3].splitlines()) ^ set(old[3].splitlines()) - {""})
        if stale:
            found.append(f"block {old[2]}: stale rows (run tools/config_reference.py): {stale[:4]}")
        found += [f"{key}: no meaning written" for key, meaning in written_meanings(new[3]).items() if not meaning]
    tabled = {match[2] for match in TABLE.finditer(text)}
    found += [f"{block}: no key table" for block in load_schema()["properties"] if block not in tabled]
    return found


def config_lines(text: str) -> dict[tuple[str, ...], int]:
    """Block-style key path -> its line index in a YAML file (keys inside flow mappings are not listed)."""
    found, stack = {}, []
    for index, line in enumerate(text.splitlines()):
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if match:
            indent = len(match[1])
            stack = [(i, key) for i, key in stack if i < indent] + [(indent, match[2])]
            found[tuple(key for _, key in stack)] = index
    return found


def uncommented_overrides(text: str) -> list[str]:
    """Keys whose value in a config file's `text` differs from the default without a comment on its line or a
    comment line right above it at its indentation (for a key inside a flow mapping: the mapping's line)."""
    lines, where = text.splitlines(), config_lines(text)
    shipped = yaml.safe_load(text)
    found = []
    for block in shipped:
        if block not in load_schema()["properties"]:
            continue
        for name, default, value, _, _ in rows(block, {}, shipped):
            if value in ("—", "per entry") or value == default or default in ("required", "—"):
                continue
            key = tuple(name.split("."))
            while key not in where:
                key = key[:-1]
            index = where[key]
            line, above = lines[index], lines[index - 1]
            indent = len(line) - len(line.lstrip())
            # a comment above counts when it is the key's own (not the previous value's continued comment)
            own_above = above.lstrip().startswith("#") and len(above) - len(above.lstrip()) <= indent
            if "#" not in line and not own_above:
                found.append(f"{name}: {value} (default {default}) has no comment saying why (line {index + 1})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the tables are stale, rewrite nothing")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    if args.check:
        overrides = uncommented_overrides(SHIPPED_PATH.read_text())
        found = problems(text) + [f"{SHIPPED_PATH.relative_to(REPO)}: {line}" for line in overrides]
        print("\n".join(found) or f"{DOC.relative_to(REPO)}: up to date")
        return 1 if found else 0
    DOC.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
