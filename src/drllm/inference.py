"""Routed inference: a frozen model plus its trained routers, routing once per prompt (METHOD.md §3, §6.6).

The routing pass is the prefill. Block by block, router l reads the residual stream entering block l (window
means over the prompt's real tokens) and picks skip (0 runs), execute (1) or repeat (2); the blocks it runs fill
one KV-cache slot per executed step. The path is then fixed and decoding runs along it.

Batches: rows that decide differently at some layer split into groups that go on separately, each with its own
rows of the hidden states and of the cache. A prompt therefore routes exactly as it would alone, and decoding
runs one batch per routed path (the paper's batching by path), with no wasted block applications.

The control knob p (App. C) blends router probabilities with fixed actions: p = -0.5 is the plain router,
p = 0.5 executes every block (the base model), p = -1 / 1 skips / repeats every block.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from drllm.executor import (Generation, LogLikelihood, PathExecutor, RunState, empty_cache, positions_from_mask,
                            select_rows)
from drllm.paths import LayerPath
from drllm.router import RouterStack, apply_knob, decide, probabilities, window_assignment


@dataclass
class RoutedPrefill:
    """One group of batch rows that share a routed path, prefilled along it."""

    rows: list[int]            # positions of these rows in the input batch
    state: RunState            # the group's prefill (its path, cache when asked, logits when asked)


@dataclass
class RoutedGeneration:
    """Greedy generation of a batch, rows in input order. tokens: [B, n], padded after each row's end."""

    tokens: torch.Tensor
    num_new: torch.Tensor             # [B] tokens generated per row, EOS included
    layer_applications: torch.Tensor  # [B] blocks computed: prefill + decode steps, times the row's path length
    paths: list[LayerPath]


@dataclass
class _Group:
    rows: torch.Tensor           # indices into the input batch
    hidden: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    steps: list[int]
    cache: object
    masks: dict
    rotary: dict


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
                 tokenizer=None):
        self.executor, self.tokenizer = executor, tokenizer
        if routers is not None:
            hidden_size = executor.config.hidden_size
            if routers.num_layers != executor.num_layers or routers.config.hidden_size != hidden_size:
                raise ValueError(f"routers are for {routers.num_layers} layers of width {routers.config.hidden_size}; "
                                 f"the model has {executor.num_layers} layers of width {hidden_size}")
            routers = routers.to(executor.device).eval().requires_grad_(False)
        if knob is not None:
            if routers is None:
                raise ValueError("the control knob needs routers")
            apply_knob(torch.zeros(3), knob)  # validates p
        self.routers, self.knob = routers, knob

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, routers_dir: str | os.PathLike | None = None, *,
                        device: str = "auto", dtype: str = "auto", knob: float | None = None) -> "RoutedModel":
        """Load a materialised model directory (drllm.models) and, if given, the routers trained for it."""
        from drllm.models import load_model

        model, tokenizer, manifest = load_model(model_dir, device=device, dtype=dtype)
        executor = PathExecutor(model)
        routers = None
        if routers_dir is not None:
            routers = RouterStack.from_pretrained(routers_dir, expected_model=manifest["name"],
                                                  expected_layers=executor.num_layers,
                                                  expected_hidden_size=executor.config.hidden_size,
                                                  device=executor.device)
        return cls(executor, routers, knob, tokenizer)

    @property
    def num_layers(self) -> int:
        return self.executor.num_layers

    @property
    def device(self) -> torch.device:
        return self.executor.device

    # -- routing ---------------------------------------------------------------------------------------------

    def _actions(self, layer: int, group: _Group, assign: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
        means = torch.bmm(assign[group.rows], group.hidden.float())
        probs = probabilities(self.routers[layer](means, window_mask[group.rows]))
        if self.knob is not None:
            probs = apply_knob(probs, self.knob)
        return decide(probs)

    def _split(self, group: _Group, local: torch.Tensor) -> _Group:
        """The sub-group of `group` made of its rows `local` (hidden states and cache rows copied out)."""
        mask = None if group.attention_mask is None else group.attention_mask[local]
        hidden, position_ids = group.hidden[local], group.position_ids[local]
        masks, rotary = self.executor.step_inputs(hidden, mask, position_ids)
        cache = None if group.cache is None else select_rows(group.cache, local)
        return _Group(group.rows[local], hidden, mask, position_ids, list(group.steps), cache, masks, rotary)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                use_cache: bool = True, logits: str = "last") -> list[RoutedPrefill]:
        """Route and prefill a (left-padded) batch; one RoutedPrefill per distinct path, rows in input order."""
        executor = self.executor
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if self.routers is None:
            state = executor.prefill(input_ids, attention_mask, None, use_cache=use_cache, logits=logits)
            return [RoutedPrefill(list(range(input_ids.shape[0])), state)]
        batch, length = input_ids.shape
        position_ids = positions_from_mask(attention_mask, length, self.device)
        if position_ids.shape[0] != batch:
            position_ids = position_ids.expand(batch, -1)
        hidden = executor.decoder.embed_tokens(input_ids)
        # the pooling matrix depends only on the prompt mask: one for every layer
        assign, window_mask = window_assignment(attention_mask, batch, length, self.routers.config.windows,
                                                self.device)
        masks, rotary = executor.step_inputs(hidden, attention_mask, position_ids)
        groups = [_Group(torch.arange(batch, device=self.device), hidden, attention_mask, position_ids, [],
                         empty_cache() if use_cache else None, masks, rotary)]
        for layer in range(self.num_layers):
            next_groups = []
            for group in groups:
                actions = self._actions(layer, group, assign, window_mask)
                choices = torch.unique(actions).tolist()
                parts = [(choices[0], group)] if len(choices) == 1 else \
                    [(action, self._split(group, (actions == action).nonzero()[:, 0])) for action in choices]
                for runs, part in parts:
                    for _ in range(runs):  # 0 skip, 1 execute, 2 repeat
                        slot = len(part.steps)
                        part.steps.append(layer)
                        if part.cache is not None:
                            part.cache.layers.append(executor.cache_slot(layer))
                        part.hidden = executor.apply_block(part.hidden, layer, slot, part.masks, part.rotary,
                                                           part.position_ids, part.cache)
                    next_groups.append(part)
            groups = next_groups
        out = []
        for group in groups:
            rows = group.rows
            if logits == "all":
                group_logits = executor.logits_from_hidden(group.hidden)
            elif logits == "last":
                group_logits = executor.logits_from_hidden(group.hidden[:, -1:])
            elif logits == "none":
                group_logits = None
            else:
                raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
            state = RunState(LayerPath(tuple(group.steps), self.num_layers), input_ids[rows], group.attention_mask,
                             group.position_ids, group_logits, group.hidden, None, group.cache)
            out.append(RoutedPrefill(rows.tolist(), state))
        return sorted(out, key=lambda part: part.rows[0])

    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[LayerPath]:
        """The routed path of each row (no cache, no logits)."""
        paths: list[LayerPath | None] = [None] * input_ids.shape[0]
        for part in self.prefill(input_ids, attention_mask, use_cache=False, logits="none"):
            for row in part.rows:
                paths[row] = part.state.path
        return paths  # type: ignore[return-value]

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
        """Greedy generation: route on the prompt, then decode each routed path's rows as one batch."""
        batch = input_ids.shape[0]
        parts = self.prefill(input_ids, attention_mask, use_cache=True, logits="last")
        generations: list[tuple[list[int], Generation]] = [
            (part.rows, self.executor.continue_generation(part.state, max_new_tokens=max_new_tokens,
                                                          eos_token_id=eos_token_id, pad_token_id=pad_token_id))
            for part in parts]
        _, pad_token_id = self.executor.stop_tokens(eos_token_id, pad_token_id)
        width = max(gen.tokens.shape[1] for _, gen in generations)
        tokens = torch.full((batch, width), pad_token_id, dtype=torch.long, device=self.device)
        num_new = torch.zeros(batch, dtype=torch.long, device=self.device)
        applications = torch.zeros(batch, dtype=torch.long, device=self.device)
        paths: list[LayerPath | None] = [None] * batch
        for rows, gen in generations:
            index = torch.tensor(rows, device=self.device)
            tokens[index, :gen.tokens.shape[1]] = gen.tokens
            num_new[index] = gen.num_new
            applications[index] = gen.layer_applications
            for row in rows:
                paths[row] = gen.path
        return RoutedGeneration(tokens, num_new, applications, paths)  # type: ignore[arg-type]

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
