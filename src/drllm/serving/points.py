"""Operating points a server offers: evaluation method names (drllm.evaluation.methods) that map a prompt to a
path without anything but the prompt, built with the evaluation's own policy builders.

  fixed paths   base, static@<k> (block influence file), safest@<k> (the search's layer safety file): one path
                for every prompt, known before the prefill
  routed        router, router@<p>, router@t<tau>, router@calibrated, router@certified (the calibration file):
                the routers decide block by block during the prefill (drllm.routing.inference)

Refused, naming why: random@<k> (a path per example id, which a request does not have), oracle (needs the gold
answer), and static / safest / random without k (matched to a router evaluation cell)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drllm.core.paths import LayerPath
from drllm.evaluation.cells import CellContext
from drllm.evaluation.methods import FILE_POINTS, METHODS, cell_artifacts, describe_artifact, method_name, parse_method
from drllm.evaluation.policies import build_policy, router_model, router_point
from drllm.evaluation.settings import EvalSettings
from drllm.routing.inference import RoutedModel
from drllm.routing.router import CALIBRATION_FILE

UNSERVABLE = {"oracle": "it searches with the gold answer",
              "random": "its random paths are drawn per evaluation example"}


@dataclass(frozen=True)
class OperatingPoint:
    """A served operating point: a fixed path for every prompt, or the routers' decision per prompt."""

    name: str
    path: LayerPath | None          # fixed-path points
    routed: RoutedModel | None      # routed points
    knob: float | None = None
    threshold: float | None = None

    def read_cost(self, prompt_tokens: int) -> float:
        """What routing a prompt of `prompt_tokens` tokens costs beyond the blocks, in block-equivalents (a router
        kind's confidence read; 0 for fixed paths and window-mean routers)."""
        if self.routed is None or self.routed.routers is None:
            return 0.0
        stack = self.routed.routers
        return stack.kind.read_cost(stack.routers, stack.config, self.routed.executor, max(1, prompt_tokens))

    def describe(self) -> dict:
        out = {"name": self.name, "routed": self.routed is not None}
        if self.path is not None:
            out |= {"path": str(self.path), "layers_executed": len(self.path)}
        if self.routed is not None:
            out |= {"knob": self.knob, "threshold": self.threshold}
        return out


def build_point(name: str, executor, tokenizer, model_name: str, routers=None, routers_dir: str | None = None,
                calibration: str | None = None, influence: str | None = None) -> OperatingPoint:
    """The operating point `name` (ValueError naming the operating point and what it needs when it cannot be
    served)."""
    try:
        kind, param = parse_method(name)
    except ValueError as exc:
        raise ValueError(f"operating point {name!r}: {exc}") from None
    canonical = method_name(kind, param)
    method = METHODS.get(kind)
    if kind in UNSERVABLE:
        raise ValueError(f"operating point {name!r}: {kind} cannot be served ({UNSERVABLE[kind]}); serve base, "
                         "router[@<p> | @t<tau> | @calibrated | @certified], static@<k> or safest@<k>")
    if method.param == "router":
        if routers is None:
            raise ValueError(f"operating point {name!r} needs routers (serve.routers: a release folder, a run's "
                             "routers directory or a hub id)")
        if param in FILE_POINTS and not calibration:
            calibration = str(Path(routers_dir) / CALIBRATION_FILE) if routers_dir else ""
        knob, threshold = router_point(param, calibration or "")
        return OperatingPoint(canonical, None, router_model(executor, routers, knob, threshold, tokenizer), knob,
                              threshold)
    if method.param == "budget" and param is None:
        raise ValueError(f"operating point {name!r}: give the number of removed layers ({kind}@<k>); without k "
                         f"it is matched to a router evaluation cell, which a server does not have")
    reads = cell_artifacts(canonical)
    if "influence" in reads and not influence:
        raise ValueError(f"operating point {name!r} needs serve.influence: the {describe_artifact(reads['influence'])} "
                         "file")
    ctx = CellContext(None, canonical, model_name, executor, tokenizer, None, routers=routers)
    policy = build_policy(kind, param, ctx, EvalSettings(), {"influence": influence} if influence else {})
    path = executor.as_path(policy(0, None, None))
    return OperatingPoint(canonical, path, None)
