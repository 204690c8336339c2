"""Layer paths: the ordered list of block indices a forward pass executes.

A path keeps block order and runs each block 0 (skip), 1 (execute) or 2 (repeat) times, so it is equivalent
to its per-layer count vector in {0,1,2}^L: the router labels. Its compact string form lists layer ids joined
by '-' ("0-1-3-4-4-5"); the empty path is "" .
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

MAX_REPEATS = 2


class PathError(ValueError):
    """A layer path or count vector is invalid."""


@dataclass(frozen=True)
class LayerPath:
    """A validated layer path for a model with `num_layers` blocks."""

    layers: tuple[int, ...]
    num_layers: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        validate_path(self.layers, self.num_layers)

    @classmethod
    def default(cls, num_layers: int) -> "LayerPath":
        return cls(tuple(range(num_layers)), num_layers)

    @classmethod
    def from_counts(cls, counts: Sequence[int]) -> "LayerPath":
        counts = [int(c) for c in counts]
        for layer, count in enumerate(counts):
            if count not in (0, 1, 2):
                raise PathError(f"count for layer {layer} is {count}; each layer runs 0, 1 or 2 times")
        return cls(tuple(layer for layer, count in enumerate(counts) for _ in range(count)), len(counts))

    @classmethod
    def parse(cls, text: str, num_layers: int) -> "LayerPath":
        text = text.strip()
        if not text:
            return cls((), num_layers)
        try:
            layers = tuple(int(part) for part in text.split("-"))
        except ValueError as exc:
            raise PathError(f"path string {text!r} is not '-'-separated layer ids") from exc
        return cls(layers, num_layers)

    def counts(self) -> list[int]:
        counts = [0] * self.num_layers
        for layer in self.layers:
            counts[layer] += 1
        return counts

    def __str__(self) -> str:
        return "-".join(str(x) for x in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    @property
    def unique_layers(self) -> int:
        return len(set(self.layers))

    def common_prefix(self, other: Iterable[int]) -> int:
        """Number of leading steps this path shares with `other`."""
        shared = 0
        for mine, theirs in zip(self.layers, other):
            if mine != theirs:
                break
            shared += 1
        return shared


def validate_path(layers: Sequence[int], num_layers: int) -> None:
    """Raise PathError naming the first offending element of `layers`."""
    if num_layers < 1:
        raise PathError(f"num_layers must be >= 1, got {num_layers}")
    if len(layers) > MAX_REPEATS * num_layers:
        raise PathError(f"path has {len(layers)} steps; at most {MAX_REPEATS * num_layers} for {num_layers} layers")
    seen: dict[int, int] = {}
    previous = -1
    for position, layer in enumerate(layers):
        if not 0 <= layer < num_layers:
            raise PathError(f"step {position}: layer {layer} is outside 0..{num_layers - 1}")
        if layer < previous:
            raise PathError(f"step {position}: layer {layer} comes after layer {previous}; block order must be kept")
        seen[layer] = seen.get(layer, 0) + 1
        if seen[layer] > MAX_REPEATS:
            raise PathError(f"step {position}: layer {layer} runs {seen[layer]} times; at most {MAX_REPEATS}")
        previous = layer
