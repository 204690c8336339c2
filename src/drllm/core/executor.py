"""Run a frozen Hugging Face decoder-only LM along a layer path.

The executor drives the model's own modules (embeddings, blocks, final norm, LM head, rotary embedding) and the
transformers mask builders; it copies no modeling code and never touches weights. Every executed step owns one
KV-cache slot, so a repeated layer has two, and a path is fixed once the prompt has been prefilled (the paper's
routing granularity, not the authors' per-token re-routing).

Padding: batched generation expects left padding, log-likelihood batches are right-padded internally; positions
follow the attention mask either way, as in `generate()`.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, DynamicCache, get_layer_types_and_kwargs
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from drllm.core.paths import LayerPath

MASK_BUILDERS: dict[str, Callable] = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


class UnsupportedModelError(TypeError):
    """The model's structure is not one the executor can drive."""


@dataclass
class RunState:
    """What a prefill leaves behind, enough to resume at any step or to keep decoding.

    hidden[i] is the residual stream entering step i of `path`; hidden[-1] leaves the last step (before the final
    norm). cache holds one slot per executed step.
    """

    path: LayerPath
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    logits: torch.Tensor | None
    last_hidden: torch.Tensor  # leaving the last step, before the final norm
    hidden: list[torch.Tensor] | None = None
    cache: DynamicCache | None = None

    def layer_inputs(self) -> list[torch.Tensor]:
        """The hidden states at each layer boundary (what router l sees before block l), one per layer."""
        if self.hidden is None:
            raise ValueError("run the prefill with keep_hidden=True to get layer inputs")
        return [self.hidden[index] for index in boundary_steps(self.path)]


@dataclass
class Generation:
    """Greedy generation along a fixed path. tokens: [B, n] new tokens, right-padded with pad_token_id after EOS."""

    tokens: torch.Tensor
    num_new: torch.Tensor  # [B] tokens generated per row, EOS included
    layer_applications: torch.Tensor  # [B] prefill + every decode step the row needed
    path: LayerPath
    prefill: RunState
    logprobs: torch.Tensor | None = None  # [B, n] log-probability of each new token, 0 after EOS


@dataclass(frozen=True)
class LogLikelihood:
    logprob: float
    is_greedy: bool
    num_tokens: int


def boundary_steps(path: LayerPath) -> list[int]:
    """For each layer l, the index of the step whose input is the residual stream reaching block l."""
    index, boundaries = 0, []
    for layer in range(path.num_layers):
        boundaries.append(index)
        while index < len(path) and path[index] == layer:
            index += 1
    return boundaries


class _SlotView:
    """Presents one cache slot to a block: its attention calls update(k, v, its own layer_idx)."""

    __slots__ = ("cache", "slot")

    def __init__(self, cache: DynamicCache, slot: int):
        self.cache, self.slot = cache, slot

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        return self.cache.update(key_states, value_states, self.slot, *args, **kwargs)


def positions_from_mask(attention_mask: torch.Tensor | None, length: int, device) -> torch.Tensor:
    """Position ids as `generate()` computes them: count real tokens; padding gets a dummy position."""
    if attention_mask is None:
        return torch.arange(length, device=device).unsqueeze(0)
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 1)


class PathExecutor:
    """Executes `model` (frozen, eval mode) along layer paths."""

    def __init__(self, model: nn.Module):
        self.model = model
        try:
            decoder = model.get_decoder()
        except (AttributeError, NotImplementedError) as exc:
            raise UnsupportedModelError(f"{type(model).__name__} has no decoder (get_decoder failed): {exc}") from exc
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise UnsupportedModelError(
                f"{type(model).__name__}: expected the decoder blocks in a ModuleList at .layers "
                "(Llama, Qwen2/3, Mistral, Gemma3...); found none")
        for part in ("embed_tokens", "norm", "rotary_emb"):
            if getattr(decoder, part, None) is None:
                raise UnsupportedModelError(f"{type(model).__name__}: decoder has no .{part}")
        self.lm_head = model.get_output_embeddings()
        if self.lm_head is None:
            raise UnsupportedModelError(f"{type(model).__name__}: no output embeddings (LM head)")
        self.decoder, self.layers = decoder, layers
        self.config = model.config.get_text_config(decoder=True)
        if getattr(self.config, "use_bidirectional_attention", False):
            raise UnsupportedModelError(f"{type(model).__name__}: bidirectional attention is not a causal LM")
        self.num_layers = len(layers)
        self.layer_types, self._cache_kwargs = get_layer_types_and_kwargs(self.config)
        unknown = sorted(set(self.layer_types) - set(MASK_BUILDERS))
        if unknown:
            raise UnsupportedModelError(f"{type(model).__name__}: layer types {unknown} are not supported; "
                                        f"supported: {sorted(MASK_BUILDERS)}")
        self._rotary_per_type = "layer_type" in inspect.signature(decoder.rotary_emb.forward).parameters
        self.softcap = getattr(self.config, "final_logit_softcapping", None)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def default_path(self) -> LayerPath:
        return LayerPath.default(self.num_layers)

    def as_path(self, path: LayerPath | Sequence[int] | None) -> LayerPath:
        if path is None:
            return self.default_path()
        if isinstance(path, LayerPath):
            if path.num_layers != self.num_layers:
                raise ValueError(f"path is for {path.num_layers} layers; this model has {self.num_layers}")
            return path
        return LayerPath(tuple(path), self.num_layers)

    # -- building blocks ---------------------------------------------------------------------------------------

    def new_cache(self, path: LayerPath) -> DynamicCache:
        """A cache with one slot per executed step, each of its layer's attention type."""
        return _cache_for(path, self.layer_types, self._cache_kwargs)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The residual stream entering step 0: the token embeddings of `input_ids` (moved to the model's device).

        Every forward here and in `path_batch` starts with this call, so an architecture's embedding quirk belongs
        here and nowhere else. Gemma's sqrt(hidden size) scale needs nothing: its embedding module applies it.
        """
        return self.decoder.embed_tokens(input_ids.to(self.device))

    def resume_hidden(self, resume: RunState, step: int, path: LayerPath, input_ids: torch.Tensor,
                      cache: DynamicCache | None = None) -> torch.Tensor:
        """The residual stream entering step `step` of `path`, taken from `resume`: an earlier run of the same
        input ids that kept its hidden states (keep_hidden=True) and shares `path`'s first `step` steps. With
        `cache` (`new_cache(path)`), that run's first `step` slots replace its first ones. Running the remaining
        steps from here (`apply_block`, slot = step index) continues the forward as if it had run from step 0.
        Raises ValueError when `resume` cannot stand in for those steps.
        """
        if resume.hidden is None:
            raise ValueError("cannot resume: the earlier run did not keep hidden states (keep_hidden=True)")
        if step > len(resume.path) or path.common_prefix(resume.path) < step:
            raise ValueError(f"cannot resume at step {step}: path {path} and earlier path {resume.path} "
                             f"share only {path.common_prefix(resume.path)} leading steps")
        if resume.input_ids.shape != input_ids.shape or not torch.equal(resume.input_ids, input_ids):
            raise ValueError("cannot resume: the earlier run was on different input ids")
        if cache is not None:
            if resume.cache is None:
                raise ValueError("cannot resume with a cache: the earlier run kept none (use_cache=True)")
            cache.layers[:step] = _copy_cache(resume.cache).layers[:step]
        return resume.hidden[step]

    def cache_slot(self, layer: int):
        """A fresh, empty cache slot for one execution of block `layer` (append it to a cache's layers)."""
        return DYNAMIC_LAYER_TYPE_MAPPING[self.layer_types[layer]](**self._cache_kwargs[layer])

    def step_inputs(self, hidden_like, attention_mask, position_ids, cache_for_mask=None,
                    path: Sequence[int] | None = None):
        """Masks and rotary embeddings per attention type used by `path` (every type of the model if None)."""
        return self._step_inputs(hidden_like, attention_mask, position_ids, cache_for_mask,
                                 range(self.num_layers) if path is None else path)

    def apply_block(self, hidden, layer: int, slot: int, masks, rotary, position_ids, cache):
        """Run block `layer` once; with a cache its keys/values go to slot `slot` (one slot per executed step)."""
        layer_type = self.layer_types[layer]
        return self.layers[layer](
            hidden,
            attention_mask=masks[layer_type],
            position_embeddings=rotary[layer_type],
            position_ids=position_ids,
            past_key_values=None if cache is None else _SlotView(cache, slot),
            use_cache=cache is not None,
        )

    def _step_inputs(self, hidden_like, attention_mask, position_ids, cache_for_mask, path):
        """Masks and rotary embeddings per attention type used by `path`."""
        types = {self.layer_types[layer] for layer in path} or {"full_attention"}
        masks, rotary = {}, {}
        for layer_type in types:
            masks[layer_type] = MASK_BUILDERS[layer_type](
                config=self.config, inputs_embeds=hidden_like, attention_mask=attention_mask,
                past_key_values=cache_for_mask, position_ids=position_ids)
            if self._rotary_per_type:
                rotary[layer_type] = self.decoder.rotary_emb(hidden_like, position_ids, layer_type)
        if not self._rotary_per_type:
            shared = self.decoder.rotary_emb(hidden_like, position_ids=position_ids)
            rotary = {layer_type: shared for layer_type in types}
        return masks, rotary

    def _run_steps(self, hidden, path, start, masks, rotary, position_ids, cache, keep_hidden):
        kept = [hidden] if keep_hidden else None
        for step in range(start, len(path)):
            hidden = self.apply_block(hidden, path[step], step, masks, rotary, position_ids, cache)
            if keep_hidden:
                kept.append(hidden)
        return hidden, kept

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.decoder.norm(hidden))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def output_logits(self, hidden: torch.Tensor, which: str) -> torch.Tensor | None:
        """A prefill's logits: "all" positions, the "last" one, or "none"."""
        if which == "all":
            return self.logits_from_hidden(hidden)
        if which == "last":
            return self.logits_from_hidden(hidden[:, -1:])
        if which == "none":
            return None
        raise ValueError(f"logits must be 'all', 'last' or 'none', got {which!r}")

    # -- public API ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                path: LayerPath | Sequence[int] | None = None, *, use_cache: bool = False,
                keep_hidden: bool = False, logits: str = "all", resume: RunState | None = None,
                resume_step: int = 0) -> RunState:
        """Run the prompt along `path`.

        logits: "all" (every position), "last" (last position only) or "none".
        resume/resume_step: start at step `resume_step` from the hidden state a previous run of the same inputs
        kept there; its first `resume_step` steps must equal this path's (and its cache slots are reused).
        """
        path = self.as_path(path)
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        position_ids = positions_from_mask(attention_mask, input_ids.shape[1], self.device)
        cache = self.new_cache(path) if use_cache else None
        if resume is not None and resume_step > 0:
            hidden = self.resume_hidden(resume, resume_step, path, input_ids, cache)
        else:
            resume_step = 0
            hidden = self.embed(input_ids)
        # prefill masks depend only on the attention mask, so a half-filled resumed cache must not be consulted
        masks, rotary = self._step_inputs(hidden, attention_mask, position_ids, None, path)
        hidden, kept = self._run_steps(hidden, path, resume_step, masks, rotary, position_ids, cache, keep_hidden)
        if keep_hidden and resume_step > 0:
            kept = list(resume.hidden[:resume_step]) + kept
        return RunState(path, input_ids, attention_mask, position_ids, self.output_logits(hidden, logits), hidden, kept,
                        cache)

    @torch.no_grad()
    def decode_step(self, state: RunState, next_tokens: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row through the fixed path; returns logits [B, vocab]. Updates `state`."""
        if state.cache is None:
            raise ValueError("decode_step needs a prefill run with use_cache=True")
        batch = next_tokens.shape[0]
        if state.attention_mask is None:
            state.attention_mask = torch.ones_like(state.input_ids)
        state.attention_mask = torch.cat(
            [state.attention_mask, state.attention_mask.new_ones((batch, 1))], dim=-1)
        position_ids = (state.attention_mask.long().sum(-1, keepdim=True) - 1)
        hidden = self.embed(next_tokens.view(batch, 1))
        masks, rotary = self._step_inputs(hidden, state.attention_mask, position_ids, state.cache, state.path)
        hidden, _ = self._run_steps(hidden, state.path, 0, masks, rotary, position_ids, state.cache, False)
        return self.logits_from_hidden(hidden)[:, -1]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 path: LayerPath | Sequence[int] | None = None, *, max_new_tokens: int = 32,
                 eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                 keep_hidden: bool = False, resume: RunState | None = None, resume_step: int = 0) -> Generation:
        """Greedy decoding with the path fixed after prefill. Rows stop at their first EOS."""
        path = self.as_path(path)
        state = self.prefill(input_ids, attention_mask, path, use_cache=True, keep_hidden=keep_hidden,
                             logits="last", resume=resume, resume_step=resume_step)
        return self.continue_generation(state, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                        pad_token_id=pad_token_id)

    def stop_tokens(self, eos_token_id: int | Sequence[int] | None = None,
                    pad_token_id: int | None = None) -> tuple[torch.Tensor, int]:
        """(EOS ids as a tensor, pad id): the given ones, else the generation config's; pad falls back to EOS."""
        if eos_token_id is None:
            eos_token_id = self.model.generation_config.eos_token_id
        eos = torch.tensor([] if eos_token_id is None else
                           ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)),
                           dtype=torch.long, device=self.device)
        if pad_token_id is None:
            pad_token_id = self.model.generation_config.pad_token_id
        if pad_token_id is None:
            pad_token_id = int(eos[0]) if len(eos) else 0
        return eos, int(pad_token_id)

    @torch.no_grad()
    def continue_generation(self, state: RunState, *, max_new_tokens: int = 32,
                            eos_token_id: int | Sequence[int] | None = None,
                            pad_token_id: int | None = None) -> Generation:
        """Greedy decoding from a prefill state (use_cache=True, last-position logits) along its fixed path.

        Decodes on a copy of the cache, so `state` stays as it was (resumable, reusable).
        """
        if state.cache is None or state.logits is None:
            raise ValueError("continue_generation needs a prefill with use_cache=True and logits")
        decoding = dataclasses.replace(state, cache=_copy_cache(state.cache))
        new, num_new, passes, logprobs = self.greedy_decode(
            state.logits[:, -1], lambda tokens, finished: self.decode_step(decoding, tokens),
            max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        return Generation(new, num_new, passes * len(state.path), state.path, state, logprobs)

    def greedy_decode(self, logits: torch.Tensor, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                      max_new_tokens: int | Sequence[int], eos_token_id: int | Sequence[int] | None = None,
                      pad_token_id: int | None = None):
        """The greedy loop shared by fixed-path and mixed-path decoding. logits: [B, vocab] after the prompt;
        step(tokens [B], finished [B]) feeds one token per row and returns the next logits (a finished row's
        logits are never read). Rows stop at their first EOS or after `max_new_tokens` (one limit for all rows,
        or one per row).

        Returns (tokens [B, n] padded after EOS, tokens per row with EOS, forward passes per row with the
        prefill, log-probability of each token [B, n] with 0 after EOS).
        """
        eos, pad_token_id = self.stop_tokens(eos_token_id, pad_token_id)
        batch = logits.shape[0]
        limits = torch.as_tensor(max_new_tokens, dtype=torch.long, device=self.device).expand(batch)
        finished = limits < 1
        passes = torch.ones(batch, dtype=torch.long, device=self.device)  # the prefill
        tokens, logprobs = [], []
        for index in range(int(limits.max()) if batch else 0):
            next_tokens = logits.argmax(-1)
            next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
            chosen = torch.log_softmax(logits.float(), dim=-1).gather(-1, next_tokens[:, None])[:, 0]
            logprobs.append(chosen.masked_fill(finished, 0.0))
            tokens.append(next_tokens)
            finished = finished | torch.isin(next_tokens, eos) | (limits <= index + 1)
            if bool(finished.all()):
                break
            passes += (~finished).long()
            logits = step(next_tokens, finished)
        if not tokens:
            empty = torch.zeros((batch, 0), dtype=torch.long, device=self.device)
            return empty, empty.sum(-1), passes, empty.float()
        new, logprobs = torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)
        # a row's tokens after its first EOS, or past its own limit, are padding
        is_real = torch.arange(new.shape[1], device=self.device) < limits[:, None]
        if len(eos):
            hit = torch.isin(new, eos).long()
            is_real &= (hit.cumsum(-1) - hit) == 0
        return new, is_real.long().sum(-1), passes, logprobs.masked_fill(~is_real, 0.0)

    @torch.no_grad()
    def score(self, batch: "ChoiceBatch", path: LayerPath | Sequence[int] | None = None, *,
              keep_hidden: bool = False, resume: RunState | None = None,
              resume_step: int = 0) -> tuple[list[LogLikelihood], RunState]:
        """Log-likelihood of each continuation in `batch` along `path`, in one forward pass (two when every row
        shares its context and no state is kept for reuse: the context once, then the options' own tokens).

        With keep_hidden the returned state lets a later path that shares a prefix resume (search reuse).
        """
        if batch.context_once and not keep_hidden and resume is None:
            final, state = self._shared_context_hidden(batch, path)
        else:
            state = self.prefill(batch.input_ids, batch.attention_mask, path, logits="none",
                                 keep_hidden=keep_hidden, resume=resume, resume_step=resume_step)
            final = state.last_hidden[batch.rows, batch.cols]
        return self.continuation_loglikelihoods(final, batch), state

    def continuation_loglikelihoods(self, final: torch.Tensor, batch: "ChoiceBatch") -> list[LogLikelihood]:
        """Each continuation's log-likelihood from the hidden states at its positions (`batch.rows, batch.cols`)."""
        logprobs = torch.log_softmax(self.logits_from_hidden(final).float(), dim=-1)
        targets = batch.targets.to(self.device)
        picked = logprobs.gather(-1, targets[:, None])[:, 0]
        greedy = logprobs.argmax(-1) == targets
        results, offset = [], 0
        for count in batch.counts:
            results.append(LogLikelihood(float(picked[offset:offset + count].sum()),
                                         bool(greedy[offset:offset + count].all()), count))
            offset += count
        return results

    def _shared_context_hidden(self, batch: "ChoiceBatch", path) -> tuple[torch.Tensor, RunState]:
        """The hidden states `score` reads, computed with the context once: one row runs the shared context
        (filling a cache), the cache is repeated per option, and only the options' own tokens run after it.
        Same values as the right-padded pass (up to float rounding) at a fraction of its cost when the context
        is long and the options short (multiple choice)."""
        context = batch.shared_context
        options = len(batch.counts)
        state = self.prefill(batch.input_ids[:1, :context], None, path, use_cache=True, logits="none")
        last_context = state.last_hidden[0, -1]
        width = batch.input_ids.shape[1] - context
        if width == 0:  # every option is one token: all are read at the context's last position
            return last_context.expand(len(batch.cols), -1), state
        cache = state.cache
        cache.batch_repeat_interleave(options)
        tokens = batch.input_ids[:, context:].to(self.device)
        mask = torch.cat([torch.ones((options, context), dtype=batch.attention_mask.dtype),
                          batch.attention_mask[:, context:]], dim=-1).to(self.device)
        position_ids = torch.arange(context, context + width, device=self.device).expand(options, -1)
        hidden = self.embed(tokens)
        masks, rotary = self._step_inputs(hidden, mask, position_ids, cache, state.path)
        hidden, _ = self._run_steps(hidden, state.path, 0, masks, rotary, position_ids, cache, False)
        rows, cols = batch.rows.to(self.device), batch.cols.to(self.device)
        in_options = cols >= context
        final = last_context.expand(len(cols), -1).clone()
        final[in_options] = hidden[rows[in_options], cols[in_options] - context]
        return final, state

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                      path: LayerPath | Sequence[int] | None = None, *, batch_size: int = 16) -> list[LogLikelihood]:
        """Sum of log p(continuation | context) per (context ids, continuation ids), batched and right-padded."""
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
        results: list[LogLikelihood | None] = [None] * len(requests)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            scored, _ = self.score(ChoiceBatch.build([requests[i] for i in chunk], first_index=start), path)
            for i, result in zip(chunk, scored):
                results[i] = result
        return results  # type: ignore[return-value]


@dataclass
class ChoiceBatch:
    """Right-padded (context + continuation) rows for scoring continuations in one forward pass.

    Like lm-eval, the model reads context + continuation minus its last token; only the continuation's
    positions (rows, cols) go through the LM head.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    counts: list[int]
    shared_context: int = 0  # length of the context every row shares token for token (0: contexts differ)

    @property
    def context_once(self) -> bool:
        """Whether `PathExecutor.score` should run the shared context once: only when that at least halves the
        tokens computed, since the second pass costs its own per-layer overhead (bench/scoring.py, CPU, SmolLM2:
        GPQA 1.7x, MMLU and ARC 1.2x faster; PIQA, with short goals and long solutions, 18% slower)."""
        rows = len(self.counts)
        if rows < 2 or not self.shared_context:
            return False
        padded = int(self.attention_mask.sum())
        once = padded - (rows - 1) * self.shared_context
        return padded >= 2 * once

    @classmethod
    def build(cls, requests: Sequence[tuple[Sequence[int], Sequence[int]]], first_index: int = 0) -> "ChoiceBatch":
        for index, (context, continuation) in enumerate(requests, start=first_index):
            if len(continuation) == 0:
                raise ValueError(f"request {index}: empty continuation")
            if len(context) == 0:
                raise ValueError(f"request {index}: empty context (prepend a BOS token)")
        sequences = [list(context) + list(continuation) for context, continuation in requests]
        width = max(len(seq) for seq in sequences) - 1
        input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        rows, cols, targets = [], [], []
        for row, (seq, (context, continuation)) in enumerate(zip(sequences, requests)):
            input_ids[row, :len(seq) - 1] = torch.tensor(seq[:-1])
            attention_mask[row, :len(seq) - 1] = 1
            rows += [row] * len(continuation)
            cols += range(len(context) - 1, len(context) - 1 + len(continuation))
            targets += list(continuation)
        contexts = {tuple(context) for context, _ in requests}
        shared = len(next(iter(contexts))) if len(contexts) == 1 else 0
        return cls(input_ids, attention_mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(targets),
                   [len(continuation) for _, continuation in requests], shared)


def empty_cache() -> DynamicCache:
    """A cache without slots; `PathExecutor.cache_slot` makes the slots to append."""
    cache = DynamicCache()
    cache.layers = []
    cache.layer_class_to_replicate = None
    return cache


def _cache_for(path: LayerPath, layer_types: list[str], cache_kwargs: list[dict]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [DYNAMIC_LAYER_TYPE_MAPPING[layer_types[layer]](**cache_kwargs[layer]) for layer in path]
    cache.layer_class_to_replicate = None
    return cache


def _copy_cache(cache: DynamicCache) -> DynamicCache:
    """A cache sharing the tensors but not the slot objects: updates rebind tensors per copy (torch.cat)."""
    twin = copy.copy(cache)
    twin.layers = [copy.copy(layer) for layer in cache.layers]
    return twin
