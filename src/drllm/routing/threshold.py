"""The threshold decision's tau: skip block l when P_l(skip) >= tau. One definition of the values tau takes, read by
every place that accepts one: `train.threshold`, the router decision saved in router_config.json
(drllm.routing.decision), the method name router@t<tau> (drllm.evaluation.methods), `calibrate.thresholds` and the
calibration file's operating point (drllm.calibration). No model code: the rules read it through the method table."""
from __future__ import annotations

from typing import Any

from drllm.core.settings import Accepts, setting

THRESHOLD = Accepts("number", low=0, high=1)


def threshold_setting(default: Any = None, *, nullable: bool = False):
    """A settings field holding a tau (drllm.core.settings.setting with THRESHOLD's bounds)."""
    return setting(default, THRESHOLD.kind, low=THRESHOLD.low, high=THRESHOLD.high, nullable=nullable)


def check_threshold(value: Any, where: str, error: type[Exception] = ValueError) -> float:
    """`value` as a float tau, or `error` in the settings' wording: `<where> must be a number >= 0 and <= 1, got
    <value>`."""
    try:
        return float(THRESHOLD.check(value))
    except ValueError:
        raise error(f"{where} must be {THRESHOLD.describe()}, got {value!r}") from None
