"""The evaluation methods' names, one grammar for the library: base | router | router@<p> (control knob p in
[-1, 1]) | router@t<tau> (threshold decision: skip when P(skip) >= tau, tau in [0, 1]) | router@calibrated |
router@certified (the operating point certified on calibration prompts, drllm.routing.certify) | static |
static@<k> | random | random@<k> (k layers removed) | safest | safest@<k> (the blocks most often safe to skip
alone in the search's single-skip sweep) | oracle.
`parse_method` / `method_name` read and write a cell's name; the rest orders and classifies names for the report.
(The rules' `method` wildcard constraint spells the same grammar as a regex.)"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from drllm.routing.calibration import CALIBRATED, CERTIFIED

LM_EVAL_METHODS = ("base", "router")  # lm-eval tasks run through the drllm model: all layers or routed (and @p)
PLAIN_METHODS = ("base", "router", "static", "random", "safest", "oracle")
BUDGET_METHODS = ("static", "random", "safest")  # <kind>@<k>: k layers removed, independent of the router
FILE_POINTS = (CALIBRATED, CERTIFIED)  # router@<these>: the operating point is read from the calibration file
_REMOVALS = re.compile(r"0|[1-9][0-9]*")  # canonical integers only: the name is also the cell's file name
PLAIN_ROUTER_KNOB = -0.5         # drllm.routing.decision.apply_knob(probs, -0.5) == probs: the plain router on the knob curve
SWEEPS = ("router", "static", "random", "safest")  # <kind>@<param> methods drawn as lines on the frontier
FRONTIER_POINTS = ("base", "router", "router@calibrated", "router@certified", "oracle")  # single markers


@dataclass(frozen=True)
class Threshold:
    """router@t<tau>: the threshold decision at tau (drllm.routing.decision.Decision), not the knob."""

    value: float

    def __str__(self) -> str:
        return f"t{self.value:g}"


# --------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------

def parse_method(name: str) -> tuple[str, float | int | str | None]:
    """A method name -> (kind, parameter). 'base' -> ('base', None); 'router@-0.25' -> ('router', -0.25);
    'router@calibrated' -> ('router', CALIBRATED); 'static@3' -> ('static', 3). Unknown names raise ValueError."""
    kind, at, param = name.partition("@")
    expected = (f"expected one of {list(PLAIN_METHODS)}, router@<p> with p in [-1, 1], router@t<tau> with tau in "
                f"[0, 1], router@{CALIBRATED}, router@{CERTIFIED}, static@<k>, random@<k> or safest@<k> with k a "
                "non-negative integer")
    if kind not in PLAIN_METHODS or (at and kind not in ("router", *BUDGET_METHODS)):
        raise ValueError(f"unknown evaluation method {name!r}; {expected}")
    if not at:
        return kind, None
    if kind in BUDGET_METHODS:
        if not _REMOVALS.fullmatch(param):
            raise ValueError(f"method {name!r}: the number of removed layers after '@' must be a non-negative "
                             f"integer (written without sign or leading zeros); {expected}")
        return kind, int(param)
    if param in FILE_POINTS:
        return kind, param
    if param.startswith("t"):
        try:
            tau = float(param[1:])
        except ValueError as exc:
            raise ValueError(f"method {name!r}: the threshold after '@t' must be a number in [0, 1]") from exc
        if not 0.0 <= tau <= 1.0 or param[1:] != f"{tau:g}":
            raise ValueError(f"method {name!r}: the threshold must be in [0, 1], written as :g writes it "
                             f"(router@t{tau:g})")
        return kind, Threshold(tau)
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
    if isinstance(param, (str, Threshold)) or (isinstance(param, int) and kind in BUDGET_METHODS):
        return f"{kind}@{param}"
    return f"{kind}@{param:g}"


def method_knob(method: str, knob: float | None = None) -> float | None:
    """The knob p of "router@<p>" (from the name; router@calibrated / @certified: the cell's knob column); None
    otherwise (thresholds included)."""
    try:
        kind, param = parse_method(method)
    except ValueError:
        return None
    if kind != "router" or param is None or isinstance(param, Threshold):
        return None
    return knob if param in FILE_POINTS else float(param)


def sweep_param(method: str) -> float | None:
    """The swept parameter of router@<p> (p), router@t<tau> (tau) and static@<k> / random@<k> / safest@<k> (k);
    None otherwise (router@calibrated / @certified are not points of a sweep; names outside the grammar are
    nobody's sweep)."""
    try:
        kind, param = parse_method(method)
    except ValueError:
        return None
    if kind not in SWEEPS or param is None or param in FILE_POINTS:
        return None
    return float(param.value) if isinstance(param, Threshold) else float(param)


def method_sort_key(method: str) -> tuple:
    """base, router, router@calibrated, router@p by p, static, static@k by k, random, random@k by k, oracle,
    then anything else by name."""
    fixed = {"base": 0, "router": 1, "router@calibrated": 2, "router@certified": 2.5, "static": 4, "random": 6,
             "safest": 6.5, "oracle": 8}
    if method in fixed:
        return (fixed[method], 0.0, method)
    param = sweep_param(method)
    if param is not None:
        line = frontier_line(method)
        sweeps = {"router@p": 3, "router@t": 3.5, "static@k": 5, "random@k": 7, "safest@k": 7.5}
        return (sweeps[line], param, method)
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
    kind, param = parse_method(method)
    if isinstance(param, Threshold):
        return "router@t"
    return {"router": "router@p", "static": "static@k", "random": "random@k", "safest": "safest@k"}[kind]
