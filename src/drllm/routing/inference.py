"""Routed inference: a frozen model plus its trained routers, routing once per prompt (docs/method.md#routed-inference).

The routing pass is the prefill. Block by block, router l reads the residual stream entering block l (window
means over the prompt's real tokens) and picks skip (0 runs), execute (1) or repeat (2); the blocks it runs fill
one KV-cache slot per executed step. The path is then fixed and decoding runs along it.

Batches stay one batch (drllm.core.path_batch): at each block every row's router decides, and only the rows that run
the block are computed, each execution with its own cache slot holding exactly those rows. A prompt therefore
routes and decodes exactly as it would alone, with no wasted block applications, and a batch whose prompts take
different paths decodes as one batch rather than one batch per path.

Routing cost per block: the router kind's packed step (for mlp, drllm.routing.kinds.mlp.PackedRouters: pooling
matmul, first layer, GELU, vote and output layer in one matmul), a softmax, and one host sync (the decisions decide
which rows run the block, so they must reach the host; the pooling matrix and window vote are built once per prompt).

The control knob p (App. C) blends router probabilities with fixed actions: p = -0.5 is the plain router,
p = 0.5 executes every block (the base model), p = -1 / 1 skips / repeats every block.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from drllm.core import path_batch
from drllm.core.executor import LogLikelihood, PathExecutor
from drllm.core.path_batch import BatchGeneration as RoutedGeneration, BatchState
from drllm.core.paths import LayerPath
from drllm.routing.decision import EXECUTE, SKIP, Decision, decide_row, knob_affine
from drllm.routing.router import RouterStack


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask), as batched generation expects."""
    if not sequences or any(len(seq) == 0 for seq in sequences):
        raise ValueError("pad_left needs at least one sequence and no empty sequence")
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
        attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


class RoutedModel:
    """A frozen decoder-only model driven along the paths its routers choose (no routers: the base model)."""

    def __init__(self, executor: PathExecutor, routers: RouterStack | None = None, knob: float | None = None,
                 tokenizer=None, router_threads: int | None = 1, decision: Decision | dict | None = None):
        """router_threads: CPU threads for the per-block router step (None: the process's setting). The routers'
        matmuls are tiny: splitting one over threads costs more in fork/join than it saves, and on a shared CPU a
        descheduled helper thread stalls every such op (bench/inference.py). The blocks keep every thread: the
        step sets torch.set_num_threads around itself and restores it (process state: use None if other Python
        threads run torch work at the same time and must not see the change)."""
        if router_threads is not None and (isinstance(router_threads, bool) or not isinstance(router_threads, int)
                                           or router_threads < 1):
            raise ValueError(f"router_threads must be a positive integer or None, got {router_threads!r}")
        self.executor, self.tokenizer, self.router_threads = executor, tokenizer, router_threads
        if routers is not None:
            hidden_size = executor.config.hidden_size
            if routers.num_layers != executor.num_layers or routers.config.hidden_size != hidden_size:
                raise ValueError(f"routers are for {routers.num_layers} layers of width {routers.config.hidden_size}; "
                                 f"the model has {executor.num_layers} layers of width {hidden_size}")
            routers = routers.to(executor.device).eval().requires_grad_(False)
        self.knob_scale, self.knob_offset = None, None  # the knob as offset + scale * probs (apply_knob)
        if knob is not None:
            if routers is None:
                raise ValueError("the control knob needs routers")
            self.knob_scale, self.knob_offset = knob_affine(knob, device=executor.device)  # validates p
        self.routers, self.knob = routers, knob
        if decision is None:
            decision = routers.config.decision if routers is not None else None
        self.decision = Decision.from_dict(decision)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, routers_dir: str | os.PathLike | None = None, *,
                        device: str = "auto", dtype: str = "auto", knob: float | None = None,
                        router_threads: int | None = 1) -> "RoutedModel":
        """Load a materialised model directory (drllm.core.models) and, if given, the routers trained for it (a local
        directory or a hub repository id); routers trained for another model, revision or weights are refused."""
        from drllm.core.models import load_model

        model, tokenizer, manifest = load_model(model_dir, device=device, dtype=dtype)
        executor = PathExecutor(model)
        routers = None
        if routers_dir is not None:
            routers = RouterStack.for_model(routers_dir, manifest, device=executor.device)
        return cls(executor, routers, knob, tokenizer, router_threads)

    @property
    def num_layers(self) -> int:
        return self.executor.num_layers

    @property
    def device(self) -> torch.device:
        return self.executor.device

    # -- routing ---------------------------------------------------------------------------------------------

    def routing(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """route(layer, hidden) -> per-row runs of that block, for this batch (pooling matrix built once)."""
        batch, length = input_ids.shape
        if self.knob_scale == 0.0:  # the knob ignores the router: every block gets the same action, no router runs
            actions = [decide_row(self.knob_offset.tolist())] * batch
            return lambda layer, hidden: actions
        prompt = self.routers.packed().prompt(attention_mask, batch, length, self.device)
        scale, offset = self.knob_scale, self.knob_offset
        def decide_in_row(probs: Sequence[float], row: int) -> int:
            return decide_row(probs)

        if self.decision.rule == "threshold":
            threshold, budget = self.decision.threshold, self.decision.budget
            skipped = [0] * batch  # per row: blocks skipped so far in this prefill

            def decide_in_row(probs: Sequence[float], row: int) -> int:
                if probs[SKIP] >= threshold and (budget is None or skipped[row] < budget):
                    skipped[row] += 1
                    return SKIP
                return EXECUTE

        def decisions(layer: int, hidden: torch.Tensor) -> list[int]:
            probs = torch.softmax(prompt.logits(layer, hidden).float(), dim=-1)  # as drllm.routing.decision.probabilities
            if offset is not None:  # apply_knob, in the same float32 operations
                probs = probs.mul_(scale).add_(offset)
            return [decide_in_row(row, index) for index, row in enumerate(probs.tolist())]  # the block's one host sync

        threads = self.router_threads if self.device.type == "cpu" else None
        if threads is None:
            return decisions

        def route(layer: int, hidden: torch.Tensor) -> list[int]:
            previous = torch.get_num_threads()
            if previous <= threads:
                return decisions(layer, hidden)
            torch.set_num_threads(threads)
            try:
                return decisions(layer, hidden)
            finally:
                torch.set_num_threads(previous)

        return route

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                use_cache: bool = True, logits: str = "last") -> BatchState:
        """Route and prefill a (left-padded) batch as one batch; `.paths()` of the result gives each row's path."""
        if self.routers is None:
            paths, route = [self.executor.default_path()] * input_ids.shape[0], None
        else:
            paths, route = None, self.routing(input_ids, attention_mask)
        return path_batch.prefill(self.executor, input_ids, attention_mask, paths, route=route, use_cache=use_cache,
                                  logits=logits)

    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[LayerPath]:
        """The routed path of each row (no cache, no logits)."""
        if self.routers is None:
            return [self.executor.default_path()] * input_ids.shape[0]
        return self.prefill(input_ids, attention_mask, use_cache=False, logits="none").paths()

    def route_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> list[LayerPath]:
        """Route token id lists (one prompt each), in batches of similar lengths."""
        if self.routers is None:  # nothing to decide: no pass over the prompts
            return [self.executor.default_path()] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        paths: list[LayerPath | None] = [None] * len(sequences)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            input_ids, attention_mask = pad_left([sequences[i] for i in chunk])
            for i, path in zip(chunk, self.route(input_ids, attention_mask)):
                paths[i] = path
        return paths  # type: ignore[return-value]

    # -- generation and scoring -----------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 32, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None) -> RoutedGeneration:
        """Greedy generation: route on the prompt, then decode the batch as one, each row along its path."""
        state = self.prefill(input_ids, attention_mask, use_cache=True, logits="last")
        return path_batch.continue_generation(self.executor, state, max_new_tokens=max_new_tokens,
                                              eos_token_id=eos_token_id, pad_token_id=pad_token_id)

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 16,
                      prompts: Sequence[Sequence[int]] | None = None) -> tuple[list[LogLikelihood], list[LayerPath]]:
        """log p(continuation | context) per request, each along the path routed on its prompt.

        prompts: what each request is routed on (default: its context). Every distinct prompt is routed once;
        requests are then scored in batches that share a path. Returns the results and each request's path.
        """
        keys = [tuple(prompt) for prompt in (prompts if prompts is not None else [c for c, _ in requests])]
        if len(keys) != len(requests):
            raise ValueError(f"{len(keys)} routing prompts for {len(requests)} requests")
        distinct = sorted(set(keys))
        routed = dict(zip(distinct, self.route_ids(distinct, batch_size)))
        by_path: dict[LayerPath, list[int]] = {}
        for index, key in enumerate(keys):
            by_path.setdefault(routed[key], []).append(index)
        results: list[LogLikelihood | None] = [None] * len(requests)
        for path, indices in by_path.items():
            scored = self.executor.loglikelihood([requests[i] for i in indices], path, batch_size=batch_size)
            for i, result in zip(indices, scored):
                results[i] = result
        return results, [routed[key] for key in keys]  # type: ignore[return-value]
