"""Seeds and hashes that are the same on every machine, Python run and worker (sha256, never Python's hash()).

Every random choice in the pipeline draws from `numpy.random.default_rng(derived_seed(config seed, what, ...))`,
so a result depends on the config and the item, not on worker count or order.
"""
from __future__ import annotations

import hashlib


def digest_hex(*parts) -> str:
    """sha256 (hex) of the parts joined by ':'."""
    return hashlib.sha256(":".join(str(part) for part in parts).encode("utf-8")).hexdigest()


def derived_seed(*parts) -> int:
    """A 60-bit seed from sha256 of the parts joined by ':'."""
    return int(digest_hex(*parts)[:15], 16)


def stable_hash(text: str) -> int:
    """A 64-bit integer from sha256(text)."""
    return int(digest_hex(text)[:16], 16)


def text_digest(text: str) -> str:
    """16 hex digits of sha256(text): a short fingerprint of a prompt or question."""
    return digest_hex(text)[:16]
