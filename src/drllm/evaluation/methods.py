"""Evaluation methods: one table (`METHODS`) says, per method kind, its name grammar, the files its cells read, its
settings and the function that gives each example's path. The rules (rules/common.smk: which cells exist, their
inputs and flags, the wildcard pattern), the evaluate stage and the report all read this table, so a new method is
one module with a policy builder plus one `Method` entry (docs/extending.md#an-evaluation-method).

What a cell reads is declared once, in its `Method`: `reads` maps an artifact name to a path pattern in the run's
result trees ({routers}, {search}, {eval}: the model's directories; {benchmark}: the cell's benchmark; {model}),
and the grammar adds the router's cell for a matched method without k and the calibration file for a router's
file point (`cell_artifacts`). The rules make each one an input and pass it as `--artifact <name>=<path>`; the
policy builder gets them as a dict. A method's settings are the block `eval.<kind>` (`Method.settings`).

Names: <kind> or <kind>@<param>, the parameter grammar set by the kind's `param`:
  none    base | oracle
  router  router | router@<p> (control knob p in [-1, 1]) | router@t<tau> (threshold decision: skip when
          P(skip) >= tau, tau in [0, 1]) | router@calibrated | router@certified (the operating point in the
          calibration file, drllm.calibration.calibration)
  budget  static | static@<k>, random | random@<k>, safest | safest@<k> (k layers removed; without k, matched
          per benchmark to the router cell's savings)
  allocation  sure@<b> (a mean of b skips per prompt, spent where the early confidence read is highest) |
          sure@certified (the budget the allocation file certifies; drllm.routing.allocation)
This module imports no model code: the Snakefile reads it when it plans the cells.
"""
from __future__ import annotations

import importlib
import math
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from drllm.core.plugins import Table
from drllm.calibration.calibration import CALIBRATED, CERTIFIED
from drllm.routing.threshold import THRESHOLD, check_threshold

PARAMS = ("none", "budget", "router", "allocation")
FILE_POINTS = (CALIBRATED, CERTIFIED)  # router@<these>: the operating point is read from the calibration file
# Artifacts of a run's result trees that cells read (path patterns; Method.reads names them per method)
ROUTERS = "{routers}/routers.safetensors"   # the trained routers (the stage loads their directory)
CALIBRATION = "{routers}/calibration.json"  # the operating points the calibration stage chose
ROUTER_CELL = "{eval}/{benchmark}/router.parquet"  # the router's cell on the same benchmark (matched methods)
BLOCK_INFLUENCE = "{eval}/block_influence.parquet"  # ShortGPT's ranking
LAYER_SAFETY = "{search}/layer_safety.parquet"  # the blocks most often safe to skip alone in the search's sweep
ALLOCATION = "{routers}/allocation.json"    # the fitted confidence read and its certified budget
# What imported routers (model.routers, rules/train.smk import_routers) come with; a cell reading anything else
# outside {eval} needs this run's search
IMPORTED_ARTIFACTS = (ROUTERS, CALIBRATION, "{routers}/router_config.json")
PATTERN_FIELDS = ("routers", "search", "eval", "benchmark", "model")
RESERVED_INPUTS = ("manifest", "script", "data")  # the cell's own inputs (rules/common.smk eval_cell_inputs)
PLAIN_ROUTER_KNOB = -0.5  # drllm.routing.decision.apply_knob(probs, -0.5) == probs: the plain router on the knob curve
_REMOVALS = re.compile(r"0|[1-9][0-9]*")  # canonical integers only: the name is also the cell's file name
# The rules' wildcard pattern per parameter grammar (parse_method checks the values).
_PARAM_PATTERNS = {"none": "", "budget": "(@[0-9]+)?",
                   "router": f"(@(-?[0-9.]+|t[0-9.]+|{'|'.join(FILE_POINTS)}))?",
                   "allocation": f"@([0-9.]+|{CERTIFIED})"}


@dataclass(frozen=True)
class Method:
    """One evaluation method kind: what its name may carry, what its cells read, how it picks paths."""

    kind: str
    policy: str                    # "module:function" -> build(ctx, settings, inputs, param, threshold) -> PathPolicy
    param: str = "none"            # none | budget (<kind>@<k>) | router (@<p>, @t<tau>, @calibrated, @certified)
    #                                | allocation (@<b>, @certified)
    # the artifacts every cell reads: input name -> path pattern (ROUTERS etc. above, or a pattern of its own);
    # "routers" is the trained routers, which the stage loads for the policy (ctx.routers)
    reads: Mapping[str, str] = field(default_factory=dict)
    matched: bool = False          # without a parameter, matched to the router cell's savings (reads that cell)
    lm_eval: bool = False          # also runs lm-eval tasks through the drllm model (no threshold or file point)
    marker: bool = False           # the plain name is one marker on the accuracy-vs-layers frontier
    order: float = 9.0             # where the report lists it; its @-sweeps follow
    summary: str = ""              # one line for --help
    # its settings, the block eval.<kind>: a frozen dataclass of drllm.core.settings.setting fields, or
    # "module:Class" (imported when a cell reads it: model code stays out of the rules); None: no settings
    settings: type | str | None = None

    @property
    def name(self) -> str:
        """The table's name for this entry: the kind (a method name is the kind and its parameter)."""
        return self.kind

    def __post_init__(self) -> None:
        if self.param not in PARAMS:
            raise ValueError(f"method {self.kind!r}: param must be one of {list(PARAMS)}, got {self.param!r}")
        for name, pattern in self.reads.items():
            if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_INPUTS:
                raise ValueError(f"method {self.kind!r}: artifact names must be identifiers other than "
                                 f"{list(RESERVED_INPUTS)}, got {name!r}")
            unknown = {part[1] for part in string.Formatter().parse(pattern) if part[1] is not None}
            unknown -= set(PATTERN_FIELDS)
            if unknown:
                raise ValueError(f"method {self.kind!r}: artifact {name!r} pattern {pattern!r} may use "
                                 f"{['{' + f + '}' for f in PATTERN_FIELDS]}, not {sorted(unknown)}")
        if ":" not in self.policy:
            raise ValueError(f"method {self.kind!r}: policy must be 'module:function', got {self.policy!r}")


METHODS: Table[Method] = Table("evaluation method", "eval.methods")


_POLICIES = "drllm.evaluation.policies"
for _method in (
    Method("base", f"{_POLICIES}:base_policy", lm_eval=True, marker=True, order=0, summary="every layer"),
    Method("router", f"{_POLICIES}:router_policy", param="router", reads={"routers": ROUTERS}, lm_eval=True,
           marker=True, order=1,
           summary="the routers' path (knob p, threshold tau or the calibrated / certified point)"),
    Method("static", f"{_POLICIES}:ranked_policy", param="budget", reads={"influence": BLOCK_INFLUENCE},
           matched=True, order=4, summary="ShortGPT: the k least influential blocks removed for every input"),
    Method("random", f"{_POLICIES}:random_policy", param="budget", matched=True, order=6,
           summary="k random blocks removed per example (seeded)"),
    Method("safest", f"{_POLICIES}:ranked_policy", param="budget", reads={"influence": LAYER_SAFETY}, matched=True,
           order=6.5, summary="the k blocks most often safe to skip alone in the search's sweep, removed"),
    Method("sure", f"{_POLICIES}:sure_policy", param="allocation", reads={"allocation": ALLOCATION}, order=7,
           summary="a skip budget per prompt from the confidence read at layer R: the safest blocks >= R"),
    Method("oracle", f"{_POLICIES}:oracle_policy", marker=True, order=8,
           summary="the MCTS on the item itself with its gold answer (a ceiling)",
           settings="drllm.evaluation.settings:OracleSettings"),
):
    METHODS.register(_method)


@dataclass(frozen=True)
class Threshold:
    """router@t<tau>: the threshold decision at tau (drllm.routing.decision.Decision), not the knob."""

    value: float

    def __str__(self) -> str:
        return f"t{self.value:g}"


# --------------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------------

def grammar() -> str:
    """Every accepted name form, for error messages and --help."""
    forms = []
    for kind in METHODS:
        param = METHODS.get(kind).param
        forms.append({"none": kind, "budget": f"{kind}[@<k>]",
                      "router": f"{kind}[@<p> | @t<tau> | {' | '.join('@' + p for p in FILE_POINTS)}]",
                      "allocation": f"{kind}@<b> | {kind}@{CERTIFIED}"}[param])
    return " | ".join(forms)


def _expected() -> str:
    """The grammar as an error message says it (built only when a name fails: parse_method runs per cell)."""
    return (f"expected {grammar()} (p in [-1, 1], tau {THRESHOLD.describe().removeprefix('a number ')}, k a "
            "non-negative integer, b a number > 0)")


def method_pattern() -> str:
    """The regex the rules' `method` wildcard uses: every name the table's grammar accepts."""
    return "|".join(f"{re.escape(kind)}{_PARAM_PATTERNS[METHODS.get(kind).param]}" for kind in METHODS)


def parse_method(name: str) -> tuple[str, float | int | str | Threshold | None]:
    """A method name -> (kind, parameter). 'base' -> ('base', None); 'router@-0.25' -> ('router', -0.25);
    'router@calibrated' -> ('router', CALIBRATED); 'static@3' -> ('static', 3). Unknown names raise ValueError."""
    kind, at, param = name.partition("@")
    if kind not in METHODS or (at and METHODS.get(kind).param == "none"):
        raise ValueError(f"unknown evaluation method {name!r}; {_expected()}")
    grammar_kind = METHODS.get(kind).param
    if grammar_kind == "allocation":
        return kind, _allocation_param(name, kind, at, param)
    if not at:
        return kind, None
    if grammar_kind == "budget":
        if not _REMOVALS.fullmatch(param):
            raise ValueError(f"method {name!r}: the number of removed layers after '@' must be a non-negative "
                             f"integer (written without sign or leading zeros); {_expected()}")
        return kind, int(param)
    if param in FILE_POINTS:
        return kind, param
    if param.startswith("t"):
        try:
            value: float | str = float(param[1:])
        except ValueError:
            value = param[1:]
        tau = check_threshold(value, f"method {name!r}: the threshold after '@t'")
        if param[1:] != f"{tau:g}":
            raise ValueError(f"method {name!r}: the threshold must be written as :g writes it ({kind}@t{tau:g})")
        return kind, Threshold(tau)
    try:
        value = float(param)
    except ValueError as exc:
        raise ValueError(f"method {name!r}: the knob after '@' must be a number in [-1, 1] "
                         f"or {CALIBRATED!r}") from exc
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"method {name!r}: the knob must be in [-1, 1]")
    return kind, value


def _allocation_param(name: str, kind: str, at: str, param: str) -> float | str:
    """b of <kind>@<b> (a mean budget > 0, written as :g writes it) or the certified point."""
    if not at:
        raise ValueError(f"method {name!r} needs a mean budget or the certified point: {kind}@<b> or "
                         f"{kind}@{CERTIFIED}")
    if param == CERTIFIED:
        return param
    try:
        budget = float(param)
    except ValueError as exc:
        raise ValueError(f"method {name!r}: the mean budget after '@' must be a number > 0 or {CERTIFIED!r}") from exc
    if not math.isfinite(budget) or budget <= 0 or param != f"{budget:g}":
        raise ValueError(f"method {name!r}: the mean budget must be a number > 0, written as :g writes it "
                         f"({kind}@{budget:g})")
    return budget


def method_name(kind: str, param: float | int | str | Threshold | None = None) -> str:
    """The inverse of parse_method (knobs written with :g, as the rules name the cells)."""
    if param is None:
        return kind
    if isinstance(param, (str, Threshold)) or (isinstance(param, int) and METHODS.get(kind).param == "budget"):
        return f"{kind}@{param}"
    return f"{kind}@{param:g}"


# --------------------------------------------------------------------------------------------------------
# What a cell reads and runs
# --------------------------------------------------------------------------------------------------------

def cell_artifacts(name: str) -> dict[str, str]:
    """What a cell of this method reads besides the records and the model: artifact name (the rule's input and
    evaluate.py's `--artifact <name>=<path>`) -> path pattern (see the module docstring): the method's `reads`,
    the router's cell for a matched method without k, the calibration file for a router's file point."""
    kind, param = parse_method(name)
    method = METHODS.get(kind)
    artifacts = dict(method.reads)
    if method.param == "router" and param in FILE_POINTS:
        artifacts["calibration"] = CALIBRATION
    if method.matched and param is None:
        artifacts["router_cell"] = ROUTER_CELL
    return artifacts


def artifact_path(pattern: str, routers: str, search: str, eval: str, benchmark: str, model: str) -> str:
    """A pattern's path for one cell (the rules give the model's trees)."""
    return pattern.format(routers=routers, search=search, eval=eval, benchmark=benchmark, model=model)


def describe_artifact(pattern: str) -> str:
    """A pattern as the default result trees spell it, for messages: results/routers/<model>/routers.safetensors."""
    return artifact_path(pattern, "results/routers/<model>", "results/search/<model>", "results/eval/<model>",
                         "<benchmark>", "<model>")


def needs_search(name: str) -> bool:
    """Whether the cell reads this run's search or what is made from it (imported routers come without one)."""
    return any(pattern not in IMPORTED_ARTIFACTS and not pattern.startswith("{eval}/")
               for pattern in cell_artifacts(name).values())


def lm_eval_runs(name: str) -> bool:
    """Whether an lm-eval task can run this method: kinds marked lm_eval, plain or with a knob (the lm-eval model
    takes the knob only: no threshold decision, no calibration file)."""
    kind, param = parse_method(name)
    return METHODS.get(kind).lm_eval and (param is None or isinstance(param, float))


def policy_builder(kind: str) -> Callable:
    """The method's policy builder, imported on first use (model code stays out of the rules' process)."""
    module, _, function = METHODS.get(kind).policy.partition(":")
    return getattr(importlib.import_module(module), function)


# --------------------------------------------------------------------------------------------------------
# Report order and the accuracy-vs-layers frontier
# --------------------------------------------------------------------------------------------------------

def method_knob(method: str, knob: float | None = None) -> float | None:
    """The knob p of "<router kind>@<p>" (from the name; @calibrated / @certified: the cell's knob column); None
    otherwise (thresholds included)."""
    try:
        kind, param = parse_method(method)
    except ValueError:
        return None
    if METHODS.get(kind).param != "router" or param is None or isinstance(param, Threshold):
        return None
    return knob if param in FILE_POINTS else float(param)


def sweep_param(method: str) -> float | None:
    """The swept parameter of router@<p> (p), router@t<tau> (tau) and <budget kind>@<k> (k); None otherwise
    (file points are not points of a sweep; names outside the grammar are nobody's sweep)."""
    try:
        kind, param = parse_method(method)
    except ValueError:
        return None
    if param is None or param in FILE_POINTS:
        return None
    return float(param.value) if isinstance(param, Threshold) else float(param)


def frontier_line(method: str) -> str | None:
    """The frontier line a method belongs to (router@p, router@t, static@k, ...), None for a single marker."""
    if sweep_param(method) is None:
        return None
    kind, param = parse_method(method)
    if METHODS.get(kind).param == "budget":
        return f"{kind}@k"
    if METHODS.get(kind).param == "allocation":
        return f"{kind}@b"
    return f"{kind}@t" if isinstance(param, Threshold) else f"{kind}@p"


def is_frontier_point(method: str) -> bool:
    """A single marker on the frontier: a plain name marked so (base, router, oracle) or a file point."""
    try:
        kind, param = parse_method(method)
    except ValueError:
        return False
    return (param is None and METHODS.get(kind).marker) or param in FILE_POINTS


def method_sort_key(method: str) -> tuple:
    """Table order: base, router, router@calibrated, router@certified, router@p by p, router@t by tau, static,
    static@k by k, random, ..., oracle; then anything else by name."""
    try:
        kind, param = parse_method(method)
    except ValueError:
        return (99.0, 0.0, method)
    order = METHODS.get(kind).order
    if param is None:
        return (order, 0.0, method)
    if param in FILE_POINTS:
        return (order + 1 + 0.5 * FILE_POINTS.index(param), 0.0, method)
    line = frontier_line(method)
    offset = 2.5 if line.endswith("@t") else 2 if line.endswith("@p") else 1
    return (order + offset, sweep_param(method), method)


def order_methods(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=method_sort_key)
