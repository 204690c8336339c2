"""The allocation stage's settings: the keys of the config's `allocate:` block, built and checked once
(drllm.core.settings). The calibration sets, seed and certificate are the `calibrate:` block's (the same held-out
prompts certify routers and allocations)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from drllm.core.settings import check_fields, from_block, setting
from drllm.routing.confidence import LENSES


@dataclass(frozen=True)
class AllocationConfig:
    """The `allocate:` block (drllm.routing.allocation)."""

    read_layer: int = setting(12, "int", low=1)      # R: the confidence is read entering block R; skips are >= R
    # choice formats' normaliser: each prompt's option tokens | every token the search prompts' options contain | full
    lens: str = setting("options", "str", choices=LENSES)
    share: float = setting(0.5, "number", low=0, high=1, low_open=True)  # the confident share that gets the skips
    budgets: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)  # mean skips per prompt: the certified family

    def __post_init__(self) -> None:
        check_fields(self, "allocate")
        budgets = tuple(self.budgets or ())
        if not budgets:
            raise ValueError("allocate.budgets must list at least one mean budget")
        for budget in budgets:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
                raise ValueError(f"allocate.budgets: every mean budget must be a number > 0, got {budget!r}")
        object.__setattr__(self, "budgets", tuple(sorted({float(b) for b in budgets})))

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None) -> "AllocationConfig":
        return from_block(cls, block, "allocate")

    def to_dict(self) -> dict:
        return asdict(self)
