"""How router probabilities become actions: the classes, the decision rules and the paper's control knob (App. C).

Classes: 0 = skip, 1 = execute, 2 = repeat. `decide_row` is the one greedy rule (the routing pass and `decide`, its
tensor form, both apply it); `Decision` is the rule a router directory is saved with (argmax or threshold).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from drllm.core.blocks import check_keys
from drllm.routing.threshold import check_threshold

SKIP, EXECUTE, REPEAT = 0, 1, 2
CLASSES = ("skip", "execute", "repeat")
DECISION_RULES = ("argmax", "threshold")


@dataclass(frozen=True)
class Decision:
    """How a router's probabilities become an action (saved in router_config.json as `decision`).

    argmax -- the paper's greedy action (`decide`: a tie with execute goes to execute).
    threshold -- skip block l when P_l(skip) >= `threshold`, else execute (never repeat): routers trained on
      per-layer safety (train.target: safety) give P(skip) = the estimated chance that skipping the block keeps
      the answer. With `budget` k, a prompt skips at most k blocks: the first k that pass the threshold (routing
      runs block by block during the prefill, so later blocks' probabilities are not known yet).
    """

    rule: str = "argmax"
    threshold: float = 0.5
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.rule not in DECISION_RULES:
            raise ValueError(f"router decision: rule must be one of {list(DECISION_RULES)}, got {self.rule!r}")
        object.__setattr__(self, "threshold", check_threshold(self.threshold, "router decision: threshold"))
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                        or self.budget < 0):
            raise ValueError(f"router decision: budget must be an integer >= 0 or null, got {self.budget!r}")

    @classmethod
    def from_dict(cls, block: "dict[str, Any] | Decision | None") -> "Decision":
        if isinstance(block, Decision):
            return block
        block = dict(block or {})
        known = [f.name for f in dataclasses.fields(cls)]
        check_keys("router decision", block, known)
        return cls(**block)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_threshold(self, threshold: float) -> "Decision":
        return dataclasses.replace(self, rule="threshold", threshold=threshold)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


def decide_row(probs: Sequence[float]) -> int:
    """The greedy action for one row of probabilities [skip, execute, repeat]: 0 skip, 1 execute, 2 repeat.

    A tie with execute goes to execute (the default path is the safe choice): the knob's blend at p = 0 ties a
    saturated skip probability with execute exactly, and a plain argmax would then skip. Other ties go to the
    lower class, as argmax does. On the host: the routing pass brings each block's probabilities to the host
    anyway (its one sync), and a few Python comparisons per row cost less than the tensor ops would.
    """
    best = max(range(len(probs)), key=lambda action: (probs[action], -action))
    return EXECUTE if probs[EXECUTE] >= probs[best] else best


def decide(probs: torch.Tensor) -> torch.Tensor:
    """`decide_row` on every row of a [..., 3] tensor -> [...] long (one rule: this only reshapes)."""
    rows = probs.detach().reshape(-1, probs.shape[-1]).tolist()
    return torch.tensor([decide_row(row) for row in rows], dtype=torch.long,
                        device=probs.device).reshape(probs.shape[:-1])


def knob_affine(p: float, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> tuple[float, torch.Tensor]:
    """The control knob as an affine map of the probabilities: apply_knob(probs, p) = offset + scale * probs,
    with scale 0 where the knob ignores the router (p >= 0.5, p = -1). (scale, offset [3])."""
    p = float(p)
    if not math.isfinite(p) or not -1.0 <= p <= 1.0:
        raise ValueError(f"control knob p must be in [-1, 1], got {p}")
    skip, execute, repeat = torch.eye(len(CLASSES), dtype=dtype, device=device)[[SKIP, EXECUTE, REPEAT]]
    if p <= -0.5:
        t = (p + 1.0) / 0.5
        return t, (1 - t) * skip
    if p <= 0.5:
        t = p + 0.5
        return 1 - t, t * execute
    t = (p - 0.5) / 0.5
    return 0.0, (1 - t) * execute + t * repeat


def apply_knob(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The paper's control knob (App. C): blend router probabilities [..., 3] with one-hot actions.

    p in [-1, -0.5]: (1-t)*skip + t*router, t = (p+1)/0.5   (p=-1 always skip, p=-0.5 the plain router)
    p in (-0.5, 0.5]: (1-t)*router + t*execute, t = p+0.5   (p=0.5 always execute)
    p in (0.5, 1]:   (1-t)*execute + t*repeat, t = (p-0.5)/0.5 (p=1 always repeat)
    """
    if probs.shape[-1] != len(CLASSES):
        raise ValueError(f"probs must have {len(CLASSES)} classes in the last dim, got {tuple(probs.shape)}")
    scale, offset = knob_affine(p, probs.dtype, probs.device)
    if scale == 0.0:
        return offset.expand_as(probs).clone()
    return offset + scale * probs
