"""An early read of the model's confidence: what the full model's answer margin looks like after R blocks.

A prompt's safety to skip follows the full model's confidence in its answer (RESULTS.md, study 3c: Spearman 0.81
between the final answer margin and the share of safe single skips). The final margin costs the whole forward; a
logit-lens read at read layer R costs one projection of the residual stream entering block R, in the same forward
pass that later blocks continue (no second pass): the blocks before R run on the full path whatever is decided
after, so their states are the ones the routed forward computes anyway.

Reads (`read_confidence`):
* choice formats (cloze): the lens margin over the options. The residual stream at the options' positions goes
  through the final norm and the LM head, normalised over a small vocabulary (`lens: options`, the tokens this
  example's options contain; `vocabulary`: a fixed token set, e.g. every token the fitting prompts' options contain,
  plus this example's; `full`: the whole vocabulary), summed per option, normalised like the format's score
  (acc_norm: per character), then top-1 minus top-2 over the options.
* generation formats: the next-token top-1 minus top-2 softmax probability at the last prompt position (CALM's
  softmax confidence), over the full vocabulary (one position only).
* both: hidden-state saturation, the cosine between the residual stream entering block R and the one entering
  block R-1 at the last position (CALM's state propagation signal).

What a read costs is counted in block-equivalents (`ReadCost`): the LM-head multiply-accumulates it does, divided by
what one block costs on the same forward (the block's parameters times the tokens it processes; attention scores are
left out of both, so the figure is slightly high for short prompts). A saving reported next to it is net of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.formats.prompts import Encoded

LENSES = ("options", "vocabulary", "full")


@dataclass(frozen=True)
class ConfidenceRead:
    """One prompt's read at layer `read_layer`: the margin (choice: lens score top-1 minus top-2; generation:
    top-1 minus top-2 probability), the saturation, the option the lens prefers (None for generation), and the
    read's cost in block-equivalents."""

    read_layer: int
    margin: float
    saturation: float
    choice: int | None
    cost_blocks: float
    lens_vocabulary: int


def block_macs_per_token(executor: PathExecutor) -> int:
    """Multiply-accumulates one block spends per token: its weight count (norm weights excluded; the
    architecture's blocks are alike, so block 0 stands for all)."""
    return sum(p.numel() for name, p in executor.layers[0].named_parameters() if p.dim() >= 2)


def read_cost_blocks(executor: PathExecutor, positions: int, vocabulary: int, tokens: int) -> float:
    """The lens's cost in block-equivalents: `positions` x hidden x `vocabulary` multiply-accumulates against one
    block on `tokens` tokens."""
    hidden = executor.lm_head.weight.shape[1]
    return positions * hidden * vocabulary / max(1, tokens * block_macs_per_token(executor))


def check_read_layer(read_layer: int, num_layers: int, where: str = "read_layer") -> int:
    if isinstance(read_layer, bool) or not isinstance(read_layer, int) or not 1 <= read_layer < num_layers:
        raise ValueError(f"{where} must be an integer in [1, {num_layers - 1}] (blocks 0..R-1 run before the read), "
                         f"got {read_layer!r}")
    return read_layer


def prefix_state(executor: PathExecutor, encoded: Encoded, read_layer: int):
    """The run of the prompt (or the option rows) through blocks 0..R-1 with every state kept: the read takes the
    last two, and a path that executes those blocks resumes from it at step R (`executor.prefill(resume=...)`)."""
    prefix = LayerPath(tuple(range(read_layer)), executor.num_layers)
    if encoded.batch is not None:
        return executor.prefill(encoded.batch.input_ids, encoded.batch.attention_mask, prefix, logits="none",
                                keep_hidden=True)
    ids = torch.tensor([encoded.prompt_ids], dtype=torch.long)  # generation resumes with these blocks' KV slots
    return executor.prefill(ids, None, prefix, logits="none", keep_hidden=True, use_cache=True)


def _token_set(vocabulary, lens: str) -> torch.Tensor:
    if vocabulary is None or len(vocabulary) == 0:
        raise ValueError(f"lens {lens!r} needs its token set (the fitting prompts' option tokens)")
    return torch.as_tensor(vocabulary, dtype=torch.long)


def _saturation(state, read_layer: int, last: torch.Tensor) -> float:
    entering, before = state.hidden[read_layer], state.hidden[read_layer - 1]
    rows = torch.arange(entering.shape[0], device=entering.device)
    cosine = torch.nn.functional.cosine_similarity(entering[rows, last].float(), before[rows, last].float(), dim=-1)
    return float(cosine.mean())


@torch.no_grad()
def read_confidence(executor: PathExecutor, answer_format, encoded: Encoded, read_layer: int, lens: str = "options",
                    state=None, vocabulary: torch.Tensor | None = None) -> ConfidenceRead:
    """The read at `read_layer` for one encoded prompt (see the module docstring); `state` is a run that executed
    blocks 0..R-1 in order and kept its states (`prefix_state`'s, or the full path's), computed here when None."""
    check_read_layer(read_layer, executor.num_layers)
    if lens not in LENSES:
        raise ValueError(f"lens must be one of {list(LENSES)}, got {lens!r}")
    state = prefix_state(executor, encoded, read_layer) if state is None else state
    if state.hidden is None or len(state.hidden) <= read_layer or any(layer != step for step, layer in
                                                                      enumerate(state.path[:read_layer])):
        raise ValueError(f"the confidence read at layer {read_layer} needs a run of blocks 0..{read_layer - 1} "
                         "that kept its states (prefix_state, or a full-path run with keep_hidden=True)")
    hidden = state.hidden[read_layer]
    if encoded.batch is not None:
        batch = encoded.batch
        rows, cols, targets = (batch.rows.to(hidden.device), batch.cols.to(hidden.device),
                               batch.targets.to(hidden.device))
        normed = executor.decoder.norm(hidden[rows, cols])
        weight = executor.lm_head.weight
        if lens != "full":
            tokens = targets if lens == "options" else torch.cat([targets, _token_set(vocabulary, lens).to(targets.device)])
            vocabulary, index = torch.unique(tokens, return_inverse=True)
            index = index[:len(targets)]
            logits = normed @ weight[vocabulary].T
        else:
            vocabulary, index = None, targets
            logits = executor.lm_head(normed)
        if executor.softcap:
            logits = torch.tanh(logits / executor.softcap) * executor.softcap
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, index[:, None])[:, 0]
        sums, offset = [], 0
        for count in batch.counts:
            sums.append(float(logprobs[offset:offset + count].sum()))
            offset += count
        scores = answer_format.scores(sums, encoded.options)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        margin = scores[order[0]] - scores[order[1]] if len(scores) > 1 else float("inf")
        size = int(logits.shape[-1])
        last = (batch.attention_mask.sum(-1) - 1).to(hidden.device)
        tokens = int(batch.attention_mask.sum())
        return ConfidenceRead(read_layer, float(margin), _saturation(state, read_layer, last), order[0],
                              read_cost_blocks(executor, len(targets), size, tokens), size)
    probs = torch.softmax(executor.logits_from_hidden(hidden[:, -1:]).float()[0, -1], dim=-1)
    top = torch.topk(probs, 2).values
    last = torch.tensor([hidden.shape[1] - 1], device=hidden.device)
    size = int(probs.shape[-1])
    return ConfidenceRead(read_layer, float(top[0] - top[1]), _saturation(state, read_layer, last), None,
                          read_cost_blocks(executor, 1, size, hidden.shape[1]), size)
