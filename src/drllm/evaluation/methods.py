"""The evaluation methods' names, one grammar for the library: base | router | router@<p> (control knob p in
[-1, 1]) | router@calibrated | static | static@<k> | random | random@<k> (k layers removed) | oracle.
`parse_method` / `method_name` read and write a cell's name; the rest orders and classifies names for the report.
(The rules' `method` wildcard constraint spells the same grammar as a regex.)"""
from __future__ import annotations

import re
from typing import Iterable

LM_EVAL_METHODS = ("base", "router")  # lm-eval tasks run through the drllm model: all layers or routed (and @p)
PLAIN_METHODS = ("base", "router", "static", "random", "oracle")
BUDGET_METHODS = ("static", "random")  # <kind>@<k>: k layers removed, independent of the router
CALIBRATED = "calibrated"             # router@calibrated: the knob comes from the calibration file
_REMOVALS = re.compile(r"0|[1-9][0-9]*")  # canonical integers only: the name is also the cell's file name
PLAIN_ROUTER_KNOB = -0.5         # drllm.routing.router.apply_knob(probs, -0.5) == probs: the plain router on the knob curve
SWEEPS = ("router", "static", "random")          # <kind>@<param> methods drawn as lines on the frontier
FRONTIER_POINTS = ("base", "router", "router@calibrated", "oracle")  # drawn as single markers


# --------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------

def parse_method(name: str) -> tuple[str, float | int | str | None]:
    """A method name -> (kind, parameter). 'base' -> ('base', None); 'router@-0.25' -> ('router', -0.25);
    'router@calibrated' -> ('router', CALIBRATED); 'static@3' -> ('static', 3). Unknown names raise ValueError."""
    kind, at, param = name.partition("@")
    expected = (f"expected one of {list(PLAIN_METHODS)}, router@<p> with p in [-1, 1], router@{CALIBRATED}, "
                "static@<k> or random@<k> with k a non-negative integer")
    if kind not in PLAIN_METHODS or (at and kind not in ("router", *BUDGET_METHODS)):
        raise ValueError(f"unknown evaluation method {name!r}; {expected}")
    if not at:
        return kind, None
    if kind in BUDGET_METHODS:
        if not _REMOVALS.fullmatch(param):
            raise ValueError(f"method {name!r}: the number of removed layers after '@' must be a non-negative "
                             f"integer (written without sign or leading zeros); {expected}")
        return kind, int(param)
    if param == CALIBRATED:
        return kind, CALIBRATED
    try:
        value = float(param)
    except ValueError as exc:
        raise ValueError(f"method {name!r}: the knob after '@' must be a number in [-1, 1] "
                         f"or {CALIBRATED!r}") from exc
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"method {name!r}: the knob must be in [-1, 1]")
    return kind, value

def method_name(kind: str, param: float | int | str | None = None) -> str:
    """The inverse of parse_method (knobs written with :g, as the rules name the cells)."""
    if param is None:
        return kind
    if isinstance(param, str) or (isinstance(param, int) and kind in BUDGET_METHODS):
        return f"{kind}@{param}"
    return f"{kind}@{param:g}"


def method_knob(method: str, knob: float | None = None) -> float | None:
    """The knob p of "router@<p>" (from the name; router@calibrated: the cell's knob column); None otherwise."""
    try:
        kind, param = parse_method(method)
    except ValueError:
        return None
    if kind != "router" or param is None:
        return None
    return knob if param == CALIBRATED else float(param)


def sweep_param(method: str) -> float | None:
    """The swept parameter of router@<p> (p) and static@<k> / random@<k> (k); None otherwise (router@calibrated
    is not a point of the knob sweep; names outside the grammar are nobody's sweep)."""
    try:
        kind, param = parse_method(method)
    except ValueError:
        return None
    if kind not in SWEEPS or param is None or param == CALIBRATED:
        return None
    return float(param)


def method_sort_key(method: str) -> tuple:
    """base, router, router@calibrated, router@p by p, static, static@k by k, random, random@k by k, oracle,
    then anything else by name."""
    fixed = {"base": 0, "router": 1, "router@calibrated": 2, "static": 4, "random": 6, "oracle": 8}
    if method in fixed:
        return (fixed[method], 0.0, method)
    param = sweep_param(method)
    sweeps = {"router": 3, "static": 5, "random": 7}
    if param is not None:
        return (sweeps[method.split("@")[0]], param, method)
    return (9, 0.0, method)


def order_methods(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=method_sort_key)


# --------------------------------------------------------------------------------------------------------
# Accuracy-vs-layers frontier
# --------------------------------------------------------------------------------------------------------

def frontier_line(method: str) -> str | None:
    """The frontier line a method belongs to (router@p, static@k, random@k), None for a single marker."""
    if sweep_param(method) is None:
        return None
    return {"router": "router@p", "static": "static@k", "random": "random@k"}[method.split("@")[0]]
