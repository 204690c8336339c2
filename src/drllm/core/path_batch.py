"""Batches whose rows run different layer paths, computed together and exactly.

A path runs each block 0, 1 or 2 times in block order, so a batch of paths is a list of steps (block, the rows
that execute it this time), in block order: block l's first execution by every row whose path runs it, then its
second by the rows that repeat it. Each step gathers its rows' hidden states, runs the block on them and
scatters the result back; its KV-cache slot holds exactly those rows. A row's numbers are therefore those of the
row alone along its path, while the batch pays for each distinct (block, execution) once, instead of once per
distinct path as when every path decodes as its own batch (the paper's batching by path).

Row subsets read the batch's masks and rotary embeddings by row, so this needs tensor masks (sdpa, eager and
flash attention); a model whose mask builder returns another object (flex attention's BlockMask) is refused.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from drllm.core.executor import (ChoiceBatch, Generation, LogLikelihood, RunState, UnsupportedModelError, empty_cache,
                                 positions_from_mask)
from drllm.core.paths import MAX_REPEATS, LayerPath


@dataclass(frozen=True)
class BatchStep:
    """One execution of block `layer` by batch rows `rows` (ascending); `index` is None when every row runs it."""

    layer: int
    rows: tuple[int, ...]
    index: torch.Tensor | None


class PathBatch:
    """The steps of a batch of rows, each on its own path: built from the paths, or grown step by step (routing)."""

    def __init__(self, num_rows: int, num_layers: int, device: torch.device | str | None = None):
        if num_rows < 1:
            raise ValueError(f"a path batch needs at least one row, got {num_rows}")
        self.num_rows, self.num_layers, self.device = num_rows, num_layers, device
        self.steps: list[BatchStep] = []

    @classmethod
    def of(cls, paths: Sequence[LayerPath], device: torch.device | str | None = None) -> "PathBatch":
        if not paths:
            raise ValueError("a path batch needs at least one path")
        num_layers = paths[0].num_layers
        if any(path.num_layers != num_layers for path in paths):
            raise ValueError(f"paths are for different layer counts: {sorted({p.num_layers for p in paths})}")
        batch = cls(len(paths), num_layers, device)
        for layer, runs in enumerate(zip(*(path.counts() for path in paths))):
            batch.add_block(layer, runs)
        return batch

    def add_block(self, layer: int, runs: Sequence[int]) -> list[BatchStep]:
        """Append block `layer`'s executions, `runs[row]` (0, 1 or 2) per row: the first by every row that runs it,
        then the repeat. Returns the new steps; blocks must come in order."""
        if self.steps and layer <= self.steps[-1].layer:
            raise ValueError(f"block {layer} after block {self.steps[-1].layer}: block order must be kept")
        steps = []
        for execution in range(1, MAX_REPEATS + 1):
            rows = tuple(row for row, count in enumerate(runs) if count >= execution)
            if not rows:
                break
            index = None if len(rows) == self.num_rows else torch.tensor(rows, dtype=torch.long, device=self.device)
            steps.append(BatchStep(int(layer), rows, index))
        self.steps += steps
        return steps

    def paths(self) -> list[LayerPath]:
        """Each row's path."""
        layers: list[list[int]] = [[] for _ in range(self.num_rows)]
        for step in self.steps:
            for row in step.rows:
                layers[row].append(step.layer)
        return [LayerPath(tuple(row_layers), self.num_layers) for row_layers in layers]

    def layers(self) -> list[int]:
        """The blocks the batch runs, one entry per step (what decides the attention types needed)."""
        return [step.layer for step in self.steps]

    def row_steps(self) -> torch.Tensor:
        """[rows] number of steps each row executes (its path length)."""
        lengths = torch.zeros(self.num_rows, dtype=torch.long)
        for step in self.steps:
            lengths[list(step.rows)] += 1
        return lengths


class RowInputs:
    """A forward's masks, rotary embeddings and positions, with their restriction to row subsets (memoised)."""

    def __init__(self, masks: dict, rotary: dict, position_ids: torch.Tensor):
        self.full = (masks, rotary, position_ids)
        self._subsets: dict[tuple[int, ...], tuple] = {}

    def rows(self, step: BatchStep) -> tuple:
        if step.index is None:
            return self.full
        subset = self._subsets.get(step.rows)
        if subset is None:
            masks, rotary, position_ids = self.full
            subset = ({kind: _take_rows(mask, step.index, "attention mask") for kind, mask in masks.items()},
                      {kind: tuple(_take_rows(part, step.index, "rotary embedding") for part in pair)
                       for kind, pair in rotary.items()},
                      _take_rows(position_ids, step.index, "position ids"))
            self._subsets[step.rows] = subset
        return subset


def _take_rows(value, index: torch.Tensor, what: str):
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise UnsupportedModelError(f"mixed-path batches select rows of the {what}; got a {type(value).__name__} "
                                    "(use sdpa, eager or flash attention)")
    if value.shape[0] == 1:  # broadcast over the batch (positions without padding)
        return value
    return value.index_select(0, index)


def run_step(executor, hidden: torch.Tensor, step: BatchStep, slot: int, inputs: RowInputs, cache) -> torch.Tensor:
    """Run one step: only its rows go through the block (cache slot `slot`), the others pass unchanged."""
    masks, rotary, position_ids = inputs.rows(step)
    if step.index is None:
        return executor.apply_block(hidden, step.layer, slot, masks, rotary, position_ids, cache)
    out = executor.apply_block(hidden.index_select(0, step.index), step.layer, slot, masks, rotary, position_ids,
                               cache)
    return hidden.index_copy(0, step.index, out)


def run_steps(executor, hidden: torch.Tensor, batch: PathBatch, inputs: RowInputs, cache) -> torch.Tensor:
    for slot, step in enumerate(batch.steps):
        hidden = run_step(executor, hidden, step, slot, inputs, cache)
    return hidden


@dataclass
class BatchState:
    """A prefilled mixed-path batch, ready to decode: cache slot i holds the rows of `batch.steps[i]`."""

    batch: PathBatch
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    logits: torch.Tensor | None
    last_hidden: torch.Tensor
    cache: object | None

    def paths(self) -> list[LayerPath]:
        return self.batch.paths()


# route(layer, hidden entering it) -> how many times each row runs the block (0, 1 or 2)
Router = Callable[[int, torch.Tensor], Sequence[int]]


@torch.no_grad()
def prefill(executor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            paths: Sequence[LayerPath] | None = None, *, route: Router | None = None, use_cache: bool = True,
            logits: str = "last") -> BatchState:
    """Run a (left-padded) batch along per-row `paths`, or along the paths `route` decides block by block."""
    if (paths is None) == (route is None):
        raise ValueError("give either the rows' paths or a route function")
    input_ids = input_ids.to(executor.device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(executor.device)
    rows, length = input_ids.shape
    if paths is not None:
        if len(paths) != rows:
            raise ValueError(f"{len(paths)} paths for a batch of {rows} rows")
        runs = list(zip(*(executor.as_path(path).counts() for path in paths)))  # [layer][row]
        route = lambda layer, hidden: runs[layer]  # noqa: E731
    position_ids = positions_from_mask(attention_mask, length, executor.device)
    hidden = executor.embed(input_ids)
    inputs = RowInputs(*executor.step_inputs(hidden, attention_mask, position_ids), position_ids)
    batch = PathBatch(rows, executor.num_layers, executor.device)
    cache = empty_cache() if use_cache else None
    for layer in range(executor.num_layers):
        first_slot = len(batch.steps)
        for slot, step in enumerate(batch.add_block(layer, route(layer, hidden)), start=first_slot):
            if cache is not None:
                cache.layers.append(executor.cache_slot(layer))
            hidden = run_step(executor, hidden, step, slot, inputs, cache)
    return BatchState(batch, input_ids, attention_mask, executor.output_logits(hidden, logits), hidden, cache)


@torch.no_grad()
def decode_step(executor, state: BatchState, next_tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, each along its own path; returns logits [B, vocab]. Updates `state`."""
    rows = next_tokens.shape[0]
    if state.attention_mask is None:
        state.attention_mask = torch.ones_like(state.input_ids)
    state.attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_ones((rows, 1))], dim=-1)
    position_ids = state.attention_mask.long().sum(-1, keepdim=True) - 1
    hidden = executor.embed(next_tokens.view(rows, 1))
    masks, rotary = executor.step_inputs(hidden, state.attention_mask, position_ids, state.cache,
                                         state.batch.layers())
    hidden = run_steps(executor, hidden, state.batch, RowInputs(masks, rotary, position_ids), state.cache)
    return executor.logits_from_hidden(hidden)[:, -1]


@dataclass
class BatchGeneration:
    """Greedy generation of a mixed-path batch, rows in input order. tokens: [B, n], padded after each row's end."""

    tokens: torch.Tensor
    num_new: torch.Tensor             # [B] tokens generated per row, EOS included
    layer_applications: torch.Tensor  # [B] blocks computed: prefill + decode passes, times the row's path length
    paths: list[LayerPath]
    logprobs: torch.Tensor            # [B, n] log-probability of each new token, 0 after EOS


@torch.no_grad()
def continue_generation(executor, state: BatchState, *, max_new_tokens: int = 32,
                        eos_token_id: int | Sequence[int] | None = None,
                        pad_token_id: int | None = None) -> BatchGeneration:
    """Greedy decoding of the whole batch at once, each row along its own path (consumes `state`'s cache)."""
    if state.cache is None or state.logits is None:
        raise ValueError("continue_generation needs a prefill with use_cache=True and logits")
    tokens, num_new, passes, logprobs = executor.greedy_decode(
        state.logits[:, -1], lambda next_tokens, finished: decode_step(executor, state, next_tokens),
        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    lengths = state.batch.row_steps().to(passes.device)
    return BatchGeneration(tokens, num_new, passes * lengths, state.paths(), logprobs)


@dataclass(frozen=True)
class ScoreRequest:
    """One `PathExecutor.score` call: an option batch along `path`, resumed at `resume_step` of `resume`."""

    batch: ChoiceBatch
    path: LayerPath
    resume: RunState | None = None
    resume_step: int = 0


def width_groups(widths: Sequence[int], rows: Sequence[int], max_padding: float) -> list[list[int]]:
    """Indices grouped by similar width (ascending): a group grows while its padded tokens (widest x rows) stay
    within (1 + max_padding) x its real tokens (width x rows per member)."""
    order = sorted(range(len(widths)), key=lambda index: widths[index])
    groups: list[list[int]] = []
    for index in order:
        if groups:
            group = groups[-1] + [index]
            padded = widths[index] * sum(rows[i] for i in group)
            if padded <= (1 + max_padding) * sum(widths[i] * rows[i] for i in group):
                groups[-1] = group
                continue
        groups.append([index])
    return groups


@torch.no_grad()
def score_together(executor, requests: Sequence[ScoreRequest], keep_hidden: bool = False,
                   max_padding: float = 0.25) -> list[tuple[list[LogLikelihood], RunState]]:
    """`executor.score` for several option batches at once (e.g. several prompts in a search round), each along
    its own path and from its own resume step. Requests of similar width (padding at most `max_padding` of the
    real tokens) form one mixed-path batch, right-padded, in which every row runs only its path's remaining
    steps. Same values as scoring each alone, up to float rounding; with keep_hidden each returned state can be
    resumed like `score`'s."""
    results: list = [None] * len(requests)
    shapes = [request.batch.input_ids.shape for request in requests]
    for group in width_groups([width for _, width in shapes], [rows for rows, _ in shapes], max_padding):
        for index, result in zip(group, _score_group(executor, [requests[i] for i in group], keep_hidden)):
            results[index] = result
    return results


def _score_group(executor, requests: Sequence[ScoreRequest],
                 keep_hidden: bool) -> list[tuple[list[LogLikelihood], RunState]]:
    if not requests:
        return []
    paths = [executor.as_path(request.path) for request in requests]
    starts = [request.resume_step if request.resume is not None else 0 for request in requests]
    offsets, widths = [], []
    rows = 0
    for request in requests:
        offsets.append(rows)
        rows += request.batch.input_ids.shape[0]
        widths.append(request.batch.input_ids.shape[1])
    width = max(widths)
    input_ids = torch.zeros((rows, width), dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for request, offset, request_width in zip(requests, offsets, widths):
        count = request.batch.input_ids.shape[0]
        input_ids[offset:offset + count, :request_width] = request.batch.input_ids
        attention_mask[offset:offset + count, :request_width] = request.batch.attention_mask
    input_ids, attention_mask = input_ids.to(executor.device), attention_mask.to(executor.device)
    position_ids = positions_from_mask(attention_mask, width, executor.device)
    hidden = executor.embed(input_ids)
    spans = [slice(offset, offset + request.batch.input_ids.shape[0]) for request, offset in zip(requests, offsets)]
    own_ids = [request.batch.input_ids.to(executor.device) for request in requests]
    kept: list[list[torch.Tensor]] = []
    for request, path, start, span, request_width, ids in zip(requests, paths, starts, spans, widths, own_ids):
        if start > 0:  # other requests' rows are written below, never these: the views stay valid
            entering = executor.resume_hidden(request.resume, start, path, ids)
            hidden[span, :request_width] = entering
            kept.append(list(request.resume.hidden[:start]) + [entering] if keep_hidden else [])
        else:
            kept.append([hidden[span, :request_width]] if keep_hidden else [])
    # (block, execution) -> the requests that still run it, in block order
    runs: dict[tuple[int, int], list[int]] = {}
    for number, (path, start) in enumerate(zip(paths, starts)):
        seen: dict[int, int] = {}
        for step, layer in enumerate(path):
            seen[layer] = seen.get(layer, 0) + 1
            if step >= start:
                runs.setdefault((layer, seen[layer]), []).append(number)
    inputs = RowInputs(*executor.step_inputs(hidden, attention_mask, position_ids, None, sorted(
        {layer for layer, _ in runs})), position_ids)
    for (layer, _), numbers in sorted(runs.items()):
        step_rows = tuple(row for number in numbers for row in range(spans[number].start, spans[number].stop))
        index = None if len(step_rows) == rows else torch.tensor(step_rows, dtype=torch.long, device=executor.device)
        hidden = run_step(executor, hidden, BatchStep(layer, step_rows, index), 0, inputs, None)
        if keep_hidden:  # views, not copies: every step makes a new tensor, so they stay valid
            for number in numbers:
                kept[number].append(hidden[spans[number], :widths[number]])
    results = []
    for request, path, span, request_width, own_kept, ids in zip(requests, paths, spans, widths, kept, own_ids):
        last = hidden[span, :request_width]
        scored = executor.continuation_loglikelihoods(last[request.batch.rows, request.batch.cols], request.batch)
        own_mask = request.batch.attention_mask.to(executor.device)
        state = RunState(path, ids, own_mask,
                         positions_from_mask(own_mask, request_width, executor.device), None, last,
                         own_kept if keep_hidden else None, None)
        results.append((scored, state))
    return results


@dataclass(frozen=True)
class GenerateRequest:
    """One `PathExecutor.generate` call on a single prompt: greedy along `path`, at most `max_new_tokens` new
    tokens, resumed at `resume_step` of `resume` (a kept prefill of the same prompt)."""

    input_ids: Sequence[int] | torch.Tensor
    path: LayerPath
    max_new_tokens: int
    resume: RunState | None = None
    resume_step: int = 0


@torch.no_grad()
def generate_together(executor, requests: Sequence[GenerateRequest], *,
                      eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                      keep_hidden: bool = False, max_padding: float = 0.25) -> list[Generation]:
    """`executor.generate` for several single prompts at once (e.g. several prompts in a search round), each
    along its own path, from its own resume step and with its own token limit. Prompts of similar length
    (padding at most `max_padding` of the real tokens) form one left-padded mixed-path batch: the prefill runs
    only each row's remaining steps, the cache slots of the resumed steps come from the rows' kept runs, and the
    decode stops each row at its EOS or limit. A prompt alone in its group is generated by `executor.generate`
    itself. Each result's `prefill` is that prompt's own run state (its hidden states and a cache of its rows
    only), resumable like `generate`'s. The tokens are those of generating each alone: batch and single-prompt
    logits differ only by float rounding, and a row whose greedy choices came within `tie_tolerance` of a tie is
    generated again alone (counted in `GENERATION_COUNTS`)."""
    results: list = [None] * len(requests)
    ids = [torch.as_tensor(request.input_ids, dtype=torch.long).view(1, -1) for request in requests]
    for group in width_groups([row.shape[1] for row in ids], [1] * len(ids), max_padding):
        if len(group) == 1:
            request = requests[group[0]]
            results[group[0]] = executor.generate(
                ids[group[0]], None, request.path, max_new_tokens=request.max_new_tokens, eos_token_id=eos_token_id,
                pad_token_id=pad_token_id, keep_hidden=keep_hidden, resume=request.resume,
                resume_step=request.resume_step)
            continue
        generated = _generate_group(executor, [requests[i] for i in group], [ids[i] for i in group],
                                    eos_token_id, pad_token_id, keep_hidden)
        for index, result in zip(group, generated):
            results[index] = result
    return results


def _generate_group(executor, requests: Sequence[GenerateRequest], ids: Sequence[torch.Tensor], eos_token_id,
                    pad_token_id, keep_hidden: bool) -> list[Generation]:
    device = executor.device
    paths = [executor.as_path(request.path) for request in requests]
    ids = [row.to(device) for row in ids]
    lengths = [row.shape[1] for row in ids]
    rows, width = len(requests), max(lengths)
    starts = [request.resume_step if request.resume is not None else 0 for request in requests]
    if len(set(lengths)) == 1:  # no padding: no mask, as each prompt alone
        input_ids, attention_mask = torch.cat(ids), None
    else:
        input_ids = torch.zeros((rows, width), dtype=torch.long, device=device)
        attention_mask = torch.zeros((rows, width), dtype=torch.long, device=device)
        for row, (own, length) in enumerate(zip(ids, lengths)):
            input_ids[row, width - length:] = own[0]
            attention_mask[row, width - length:] = 1
    position_ids = positions_from_mask(attention_mask, width, device)
    hidden = executor.embed(input_ids)
    spans = [slice(width - length, width) for length in lengths]
    kept: list[list[torch.Tensor]] = []
    for row, (request, path, start, span, own) in enumerate(zip(requests, paths, starts, spans, ids)):
        if start > 0:  # other rows' writes never touch this row: the views stay valid
            if request.resume.cache is None:
                raise ValueError("cannot resume with a cache: the earlier run kept none (use_cache=True)")
            entering = executor.resume_hidden(request.resume, start, path, own)
            hidden[row:row + 1, span] = entering
            kept.append(list(request.resume.hidden[:start]) + [entering])
        else:
            kept.append([hidden[row:row + 1, span]])
    batch = PathBatch.of(paths, device)
    inputs = RowInputs(*executor.step_inputs(hidden, attention_mask, position_ids, None, batch.layers()),
                       position_ids)
    cache = empty_cache()
    done = [0] * rows  # steps of its path each row has passed so far
    for slot, step in enumerate(batch.steps):
        computing = tuple(row for row in step.rows if done[row] >= starts[row])
        if computing == step.rows:
            cache.layers.append(executor.cache_slot(step.layer))
            hidden = run_step(executor, hidden, step, slot, inputs, cache)
        else:  # some rows resume past this step: their keys and values come from their kept cache slot
            pieces = {row: (request_slot.keys, request_slot.values) for row in step.rows if row not in computing
                      for request_slot in [requests[row].resume.cache.layers[done[row]]]}
            if computing:
                scratch = empty_cache()
                scratch.layers.append(executor.cache_slot(step.layer))
                index = torch.tensor(computing, dtype=torch.long, device=device)
                hidden = run_step(executor, hidden, BatchStep(step.layer, computing, index), 0, inputs, scratch)
                for position, row in enumerate(computing):
                    pieces[row] = (scratch.layers[0].keys[position:position + 1],
                                   scratch.layers[0].values[position:position + 1])
            cache.layers.append(_filled_slot(executor, step.layer, width,
                                             torch.cat([_pad_left(pieces[row][0], width) for row in step.rows]),
                                             torch.cat([_pad_left(pieces[row][1], width) for row in step.rows])))
        for row in step.rows:
            if keep_hidden and row in computing:  # every step makes a new tensor, so views stay valid
                kept[row].append(hidden[row:row + 1, spans[row]])
            done[row] += 1
    logits = executor.output_logits(hidden, "last")
    states = [_own_state(executor, batch, cache, row, path, own, hidden, logits, kept[row] if keep_hidden else None)
              for row, (path, own) in enumerate(zip(paths, ids))]
    decoding = _Decoding(executor, BatchState(batch, input_ids, attention_mask, logits, hidden, cache))
    tokens, num_new, passes, logprobs = executor.greedy_decode(
        logits[:, -1], decoding.step, max_new_tokens=[request.max_new_tokens for request in requests],
        eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    results = []
    tolerance = tie_tolerance(hidden.dtype)
    for row, (request, path) in enumerate(zip(requests, paths)):
        GENERATION_COUNTS["batched"] += 1
        if float(decoding.margins[row]) < tolerance:
            # a near-tie: the batch's rounding could pick another token than the prompt alone, so it runs alone
            GENERATION_COUNTS["near_tie_alone"] += 1
            results.append(executor.generate(ids[row], None, path, max_new_tokens=request.max_new_tokens,
                                             eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                             keep_hidden=keep_hidden, resume=request.resume,
                                             resume_step=request.resume_step))
            continue
        results.append(Generation(tokens[row:row + 1], num_new[row:row + 1], passes[row:row + 1] * len(path), path,
                                  states[row], logprobs[row:row + 1]))
    return results


# Greedy choices closer than this (top-1 minus top-2 logit) are re-decided by generating the prompt alone: batched
# and single-prompt logits differ by float rounding (fp32 on SmolLM2: 2.9e-5 largest log-prob drift, BENCHMARKS.md),
# which must not flip a token. Half precision rounds far coarser, hence its wider band.
TIE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
TIE_TOLERANCE_HALF = 0.25
# batched generations, and those of them regenerated alone because of a near-tie (for benchmarks and logs)
GENERATION_COUNTS = {"batched": 0, "near_tie_alone": 0}


def tie_tolerance(dtype: torch.dtype) -> float:
    return TIE_TOLERANCE.get(dtype, TIE_TOLERANCE_HALF)


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """[rows] top-1 minus top-2 logit: how far each greedy choice is from a tie."""
    if logits.shape[-1] < 2:
        return torch.full(logits.shape[:-1], float("inf"), device=logits.device)
    top = logits.float().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def _pad_left(states: torch.Tensor, length: int) -> torch.Tensor:
    """[rows, heads, n, dim] keys or values, zero-filled on the left to `length` positions."""
    return torch.nn.functional.pad(states, (0, 0, max(0, length - states.shape[-2]), 0))


def _filled_slot(executor, layer: int, length: int, keys: torch.Tensor, values: torch.Tensor):
    """A fresh cache slot of block `layer` holding `keys`/`values` as if `length` tokens had gone through it: a
    sliding-window slot keeps only its window and counts every token, so the missing older positions are
    zero-filled first (and dropped by its update)."""
    slot = executor.cache_slot(layer)
    slot.update(_pad_left(keys, length), _pad_left(values, length))
    return slot


def _own_state(executor, batch: PathBatch, cache, row: int, path: LayerPath, own_ids: torch.Tensor,
               hidden: torch.Tensor, logits: torch.Tensor, kept: list[torch.Tensor] | None) -> RunState:
    """Row `row`'s run state as `PathExecutor.prefill` would leave it for that prompt alone: its real positions
    only, and a cache of its own slots (copies, so decoding the batch does not change them)."""
    length = own_ids.shape[1]
    own_cache = empty_cache()
    for slot, step in enumerate(batch.steps):
        if row in step.rows:
            position = step.rows.index(row)
            layer_cache = cache.layers[slot]
            stored = min(length, layer_cache.keys.shape[-2])
            own_cache.layers.append(_filled_slot(
                executor, step.layer, length, layer_cache.keys[position:position + 1, :, -stored:],
                layer_cache.values[position:position + 1, :, -stored:]))
    return RunState(path, own_ids, None, positions_from_mask(None, length, executor.device), logits[row:row + 1],
                    hidden[row:row + 1, -length:], kept, own_cache)


class _Decoding:
    """The decode step of a mixed-path batch that drops finished rows: once a quarter of its rows have stopped,
    the batch (its paths, cache slots and mask) shrinks to the live rows, so a long generation does not carry
    rows that already ended. Finished rows get zero logits, which the greedy loop never reads."""

    def __init__(self, executor, state: BatchState):
        self.executor, self.state = executor, state
        self.rows = list(range(state.batch.num_rows))  # original row of each row in `state`
        self.index = torch.arange(state.batch.num_rows, device=executor.device)  # the same, as a tensor
        self.margins = top2_margin(state.logits[:, -1])  # per row: the closest greedy choice it made

    def step(self, next_tokens: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        stopped = finished[self.rows].tolist()
        if 4 * sum(stopped) >= len(self.rows):
            live = [position for position, done in enumerate(stopped) if not done]
            self.state = select_batch_rows(self.executor, self.state, live)
            self.rows = [self.rows[position] for position in live]
            self.index = torch.tensor(self.rows, dtype=torch.long, device=next_tokens.device)
        logits = decode_step(self.executor, self.state, next_tokens.index_select(0, self.index))
        full = logits.new_zeros((next_tokens.shape[0], logits.shape[-1]))
        full = full.index_copy(0, self.index, logits)
        live = ~finished  # only the choices of rows still generating count
        self.margins = torch.where(live, torch.minimum(self.margins, top2_margin(full)), self.margins)
        return full


def select_batch_rows(executor, state: BatchState, keep: Sequence[int]) -> BatchState:
    """The batch restricted to rows `keep` (ascending): their paths' steps, and each cache slot cut to their rows
    (copies of the slot objects, so `state` is unchanged)."""
    paths = state.batch.paths()
    batch = PathBatch.of([paths[row] for row in keep], state.batch.device)
    old: dict[tuple[int, int], int] = {}  # (block, execution) -> its slot in `state`
    seen: dict[int, int] = {}
    for slot, step in enumerate(state.batch.steps):
        seen[step.layer] = seen.get(step.layer, 0) + 1
        old[(step.layer, seen[step.layer])] = slot
    cache, seen = empty_cache(), {}
    for step in batch.steps:
        seen[step.layer] = seen.get(step.layer, 0) + 1
        slot = old[(step.layer, seen[step.layer])]
        positions = [state.batch.steps[slot].rows.index(keep[row]) for row in step.rows]
        layer_cache = copy.copy(state.cache.layers[slot])
        layer_cache.batch_select_indices(torch.tensor(positions, dtype=torch.long, device=executor.device))
        cache.layers.append(layer_cache)
    index = torch.tensor(list(keep), dtype=torch.long, device=state.input_ids.device)
    mask = None if state.attention_mask is None else state.attention_mask.index_select(0, index)
    logits = None if state.logits is None else state.logits.index_select(0, index)
    return BatchState(batch, state.input_ids.index_select(0, index), mask, logits,
                      state.last_hidden.index_select(0, index), cache)
