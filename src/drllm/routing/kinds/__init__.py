"""Router kinds: what one per-block router is, as a lookup table (`ROUTER_KINDS`; config key `train.router_kind`).

A kind says how to build one block's router and how the stack of them runs: in training, all layers at once on
cached window means (`forward`), and at inference, block by block on the hidden states entering each block
(`pack`). `RouterStack` (drllm.routing.router) goes through the kind named in its RouterConfig for all of it, so a
kind is one object, and tests/test_router_kinds.py checks for every registered kind that training and inference
give the same logits.

The contract and the table are in drllm.routing.kinds.base; this package imports both and registers the built-in
`mlp` (drllm.routing.kinds.mlp, the paper's router) and `confidence` (drllm.routing.kinds.confidence: the MLP plus
the model's confidence read at a layer R). A plugin module registers more with
`ROUTER_KINDS.register(kind)` (the kind's `name` names it) (docs/extending.md#a-router-kind).
"""
from __future__ import annotations

from drllm.routing.kinds import confidence, mlp  # noqa: F401  (register the built-in kinds)
from drllm.routing.kinds.base import ROUTER_KINDS, PackedStep, PromptStep, RouterKind

__all__ = ["ROUTER_KINDS", "PackedStep", "PromptStep", "RouterKind"]
