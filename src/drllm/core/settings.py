"""Settings objects built one way from a config block: each field of a settings dataclass declares what it accepts
(`setting(default, kind, bounds, choices)`), `check_fields` checks and normalises them all in one wording, and
`from_block` refuses unknown keys before building. Cross-field rules stay in the class's `__post_init__`, after
`check_fields`. The JSON schema checks the same bounds when the Snakefile loads (tests/test_settings.py keeps the
schema's bounds and defaults equal to these).

    @dataclass(frozen=True)
    class SafetyConfig:
        joint_checks: int = setting(4, "int", low=0)

        def __post_init__(self):
            check_fields(self, "search.safety")
"""
from __future__ import annotations

import contextvars
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

import numpy as np

from drllm.core.blocks import check_keys

KINDS = ("int", "number", "bool", "str", "mapping", "list")
S = TypeVar("S")
# The block a settings class is being built from (from_block), so one class read from two config blocks (the
# search's MCTS and the oracle's) names the right one in its errors.
_BUILDING: contextvars.ContextVar[tuple[type, str] | None] = contextvars.ContextVar("settings_block", default=None)


@dataclass(frozen=True)
class Accepts:
    """What one settings field accepts."""

    kind: str                       # int | number | bool | str | mapping | list
    low: float | None = None
    high: float | None = None
    low_open: bool = False          # low itself is refused
    high_open: bool = False         # high itself is refused
    choices: tuple | None = None    # str fields: the allowed values
    nullable: bool = False          # None (YAML null) accepted

    def describe(self) -> str:
        noun = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
                "mapping": "a mapping", "list": "a list"}[self.kind]
        if self.choices is not None:
            noun = f"one of {list(self.choices)}"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = noun + (" " + " and ".join(bounds) if bounds else "")
        return text + (" or null" if self.nullable else "")

    def json_schema(self) -> dict:
        """The JSON-schema rule accepting the same values (tests/test_settings.py holds the config schema to it)."""
        if self.choices is not None:
            rule: dict = {"enum": list(self.choices) + ([None] if self.nullable else [])}
            return rule
        kind = {"int": "integer", "number": "number", "bool": "boolean", "str": "string", "mapping": "object",
                "list": "array"}[self.kind]
        rule = {"type": [kind, "null"] if self.nullable else kind}
        if self.low is not None:
            rule["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            rule["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return rule

    def check(self, value: Any) -> Any:
        """The value normalised (ints accepted as numbers become floats); ValueError without the field's name."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError
        if self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError
            return value
        if self.kind in ("int", "number"):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise ValueError
            if self.kind == "int" and not isinstance(value, numbers.Integral):
                raise ValueError
            if not math.isfinite(value):
                raise ValueError
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                raise ValueError
            if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
                raise ValueError
            return float(value) if self.kind == "number" else value
        if self.kind == "str":
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise ValueError
            return value
        if self.kind == "mapping":
            if not isinstance(value, Mapping):
                raise ValueError
            return value
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return value


def setting(default: Any = dataclasses.MISSING, kind: str = "number", *, low: float | None = None,
            high: float | None = None, low_open: bool = False, high_open: bool = False,
            choices: tuple | list | None = None, nullable: bool = False, factory: Any = dataclasses.MISSING):
    """A dataclass field that says what it accepts (checked by `check_fields`)."""
    if kind not in KINDS:
        raise ValueError(f"setting kind must be one of {list(KINDS)}, got {kind!r}")
    accepts = Accepts(kind, low, high, low_open, high_open, tuple(choices) if choices is not None else None, nullable)
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"accepts": accepts})
    return dataclasses.field(default=default, metadata={"accepts": accepts})


def accepts(cls_or_obj, name: str) -> Accepts | None:
    """What field `name` accepts (None: a field without a declaration)."""
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name:
            return f.metadata.get("accepts")
    raise KeyError(name)


def check_fields(obj, where: str) -> None:
    """Check every declared field of a settings object (frozen or not), normalising numbers; the first bad one
    raises ValueError as `<where>.<field> must be <what it accepts>, got <value>` (`where`: the block from_block
    is building this object from, else the given one)."""
    where = building(obj, where)
    for f in dataclasses.fields(obj):
        rule = f.metadata.get("accepts")
        if rule is None:
            continue
        value = getattr(obj, f.name)
        try:
            normalised = rule.check(value)
        except ValueError:
            raise ValueError(f"{where}.{f.name} must be {rule.describe()}, got {value!r}") from None
        if normalised is not value:
            object.__setattr__(obj, f.name, normalised)


def building(obj, default: str) -> str:
    """The config block `obj` is being built from by from_block (so a class read from several blocks names the
    right one in errors its `__post_init__` raises), else `default`."""
    current = _BUILDING.get()
    return current[1] if current is not None and current[0] is type(obj) else default


def from_block(cls: type[S], block: Mapping[str, Any] | None, where: str, **fixed: Any) -> S:
    """A settings object from a config block: unknown keys refused (naming `where` and the known keys), absent
    ones take the class's defaults, every declared field checked (`check_fields`, also for a class whose
    `__post_init__` does not call it: a plugin's settings); `fixed` sets fields the block may not (e.g. the
    model's layer count)."""
    if block is not None and not isinstance(block, Mapping):
        raise ValueError(f"{where} must be a mapping, got {block!r}")
    block = dict(block or {})
    known = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    check_keys(where, block, known)
    token = _BUILDING.set((cls, where))
    try:
        made = cls(**block, **fixed)
        check_fields(made, where)
        return made
    finally:
        _BUILDING.reset(token)
