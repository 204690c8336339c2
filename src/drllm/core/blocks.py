"""Configuration blocks (a config section, a settings argument, a saved config file): one check for keys a block
does not know, so every block says the same thing in the same words."""
from __future__ import annotations

from typing import Any, Collection, Mapping


def check_keys(where: str, block: Mapping[str, Any], known: Collection[str], *, noun: str = "key",
               error: type[Exception] = ValueError) -> None:
    """Raise `error` naming the block (`where`), the keys of `block` outside `known`, and the known ones:
    `train: unknown key(s) ['epochz']; known: ['batch_size', ...]`. A typo fails instead of being ignored."""
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise error(f"{where}: unknown {noun}(s) {unknown}; known: {sorted(known)}")
