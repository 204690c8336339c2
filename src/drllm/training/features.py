"""The feature cache: the frozen model run once per sample along its labelled path, each router's window means
kept ([N, L, W, d]), so that every training epoch is a few batched matmuls (docs/method.md#training teacher forcing; the
labelled path does not depend on the routers)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from drllm.core.artifacts import ArtifactError
from drllm.routing.pooling import window_assignment
from drllm.training.samples import TrainingSample, validate_samples

# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------

CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------------------
# Teacher-forced features
# --------------------------------------------------------------------------------------------------------

def _path_chunks(samples: Sequence[TrainingSample], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by labelled path (the executor runs one path per batch), by length within a path."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        groups[tuple(int(c) for c in sample.labels)].append(index)
    for key in sorted(groups, key=lambda k: groups[k][0]):
        members = sorted(groups[key], key=lambda i: (len(samples[i].input_ids), i))
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size]


def _iter_features(executor, samples: Sequence[TrainingSample], windows: int, batch_size: int,
                   exclude_first: bool = False, last_states: bool = False
                   ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Yield (indices, window means [b, L, windows, d] float32, window mask [b, windows], and with `last_states`
    the last real token's state entering each block [b, L, d] float32, else None) per forward pass."""
    num_layers = executor.num_layers
    for chunk in _path_chunks(samples, batch_size):
        rows = [samples[i] for i in chunk]
        width = max(len(s.input_ids) for s in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, sample in enumerate(rows):  # right padding: real tokens never attend to pads
            input_ids[row, :len(sample.input_ids)] = torch.as_tensor(sample.input_ids, dtype=torch.long)
            mask[row, :len(sample.input_ids)] = 1
        padded = bool((mask == 0).any())
        state = executor.prefill(input_ids, mask if padded else None, rows[0].path(), keep_hidden=True,
                                 logits="none")
        layer_inputs = state.layer_inputs()
        # the pooling matrix depends only on the mask: build it once, then one matmul per layer (no host syncs)
        assign, window_mask = window_assignment(mask, len(rows), width, windows, executor.device, exclude_first)
        means = torch.zeros((len(rows), num_layers, windows, layer_inputs[0].shape[-1]), dtype=torch.float32,
                            device=executor.device)
        for layer, hidden in enumerate(layer_inputs):
            means[:, layer, :assign.shape[1]] = torch.bmm(assign, hidden.float())
        full_mask = torch.zeros((len(rows), windows), dtype=torch.bool, device=executor.device)
        full_mask[:, :window_mask.shape[1]] = window_mask
        states = None
        if last_states:
            last = torch.as_tensor([len(sample.input_ids) - 1 for sample in rows], device=executor.device)
            states = torch.stack([hidden[torch.arange(len(rows), device=executor.device), last].float()
                                  for hidden in layer_inputs], 1)
        yield chunk, means, full_mask, states


def teacher_forced_features(executor, samples: Sequence[TrainingSample], windows: int = 8,
                            batch_size: int = 8, exclude_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen model along each sample's labelled path now and pool every layer's input over the prompt.

    Returns (means [n, L, windows, d] float32, window_mask [n, windows]) on the executor's device, in the order
    of `samples`.
    """
    if not samples:
        raise ArtifactError("no samples to compute features for")
    means = window_mask = None
    for chunk, chunk_means, chunk_mask, _ in _iter_features(executor, samples, windows, batch_size, exclude_first):
        if means is None:
            means = chunk_means.new_zeros((len(samples),) + tuple(chunk_means.shape[1:]))
            window_mask = chunk_mask.new_zeros((len(samples), windows))
        index = torch.as_tensor(chunk, device=chunk_means.device)
        means[index] = chunk_means
        window_mask[index] = chunk_mask
    return means, window_mask


@dataclass
class FeatureCache:
    """Teacher-forced window means: what router l sees for sample i is means[i, l] (valid windows: window_mask[i])."""

    prompt_ids: list[str]
    means: torch.Tensor        # [N, L, W, d] float32 or bfloat16
    window_mask: torch.Tensor  # [N, W] bool
    labels: torch.Tensor       # [N, L] long
    safety: torch.Tensor | None = None  # [N, L] float32 per-layer safety targets (safety labeler), or None
    last_states: torch.Tensor | None = None  # [N, L, d]: the last prompt token's state entering each block (kinds
    #                                          that read it: RouterKind.reads_last_token), or None

    def __post_init__(self) -> None:
        n = len(self.prompt_ids)
        if self.means.dim() != 4 or self.means.shape[0] != n:
            raise ValueError(f"feature cache: means must be [{n}, L, W, d], got {tuple(self.means.shape)}")
        if tuple(self.window_mask.shape) != (n, self.means.shape[2]):
            raise ValueError(f"feature cache: window_mask must be [{n}, {self.means.shape[2]}], "
                             f"got {tuple(self.window_mask.shape)}")
        if tuple(self.labels.shape) != (n, self.means.shape[1]):
            raise ValueError(f"feature cache: labels must be [{n}, {self.means.shape[1]}], "
                             f"got {tuple(self.labels.shape)}")
        if self.safety is not None and tuple(self.safety.shape) != tuple(self.labels.shape):
            raise ValueError(f"feature cache: safety must be [{n}, {self.means.shape[1]}], "
                             f"got {tuple(self.safety.shape)}")
        if self.last_states is not None and tuple(self.last_states.shape) != (n, self.means.shape[1],
                                                                              self.means.shape[3]):
            raise ValueError(f"feature cache: last_states must be [{n}, {self.means.shape[1]}, "
                             f"{self.means.shape[3]}], got {tuple(self.last_states.shape)}")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_layers(self) -> int:
        return self.means.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.means, self.window_mask, self.labels, self.last_states)
                   if t is not None)

    def subset(self, indices: Sequence[int]) -> "FeatureCache":
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return FeatureCache([self.prompt_ids[i] for i in index.tolist()], self.means[index],
                            self.window_mask[index], self.labels[index],
                            None if self.safety is None else self.safety[index],
                            None if self.last_states is None else self.last_states[index])

    def to(self, device) -> "FeatureCache":
        return FeatureCache(self.prompt_ids, self.means.to(device), self.window_mask.to(device),
                            self.labels.to(device), None if self.safety is None else self.safety.to(device),
                            None if self.last_states is None else self.last_states.to(device))

    def batch(self, indices: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means float32, window_mask, labels) of `indices`, on `device`."""
        index = indices.to(self.means.device)
        return (self.means[index].to(device, torch.float32, non_blocking=True),
                self.window_mask[index].to(device, non_blocking=True),
                self.labels[index].to(device, non_blocking=True))

    def last_states_of(self, indices: torch.Tensor, device) -> torch.Tensor | None:
        """[b, L, d] float32 last-token states of `indices` on `device`, or None when the cache keeps none."""
        if self.last_states is None:
            return None
        return self.last_states[indices.to(self.last_states.device)].to(device, torch.float32, non_blocking=True)

    def safety_targets(self, indices: torch.Tensor, device) -> torch.Tensor:
        """[b, L] float32 safety targets of `indices` on `device` (ArtifactError when the cache has none)."""
        if self.safety is None:
            raise ArtifactError("training target 'safety' needs samples from the safety labeler "
                                "(search.labeler: safety); these samples carry path labels only")
        return self.safety[indices.to(self.safety.device)].to(device, torch.float32, non_blocking=True)


def pick_cache_device(num_samples: int, num_layers: int, windows: int, hidden_size: int,
                      dtype: str | torch.dtype, device: str | torch.device, share: float = 0.5) -> torch.device:
    """`device` when it is a GPU with room for the cache (at most `share` of its free memory), else the CPU.

    A cache on the GPU saves a host-to-device copy per training step; on the CPU it costs no GPU memory.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return torch.device("cpu")
    element = torch.empty((), dtype=CACHE_DTYPES[dtype] if isinstance(dtype, str) else dtype).element_size()
    needed = num_samples * num_layers * windows * hidden_size * element
    free, _ = torch.cuda.mem_get_info(device)
    return device if needed <= share * free else torch.device("cpu")


def build_feature_cache(executor, samples: Sequence[TrainingSample], windows: int = 8, batch_size: int = 8,
                        dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                        progress: bool = False, exclude_first: bool = False,
                        last_states: bool = False) -> FeatureCache:
    """One teacher-forced forward per sample (batched by identical labelled path) -> FeatureCache.

    The features are pooled in float32 and stored as `dtype` ("float32" or "bfloat16") on `device`; with
    `last_states` the last prompt token's state entering each block is kept too (float32).
    """
    validate_samples(samples, executor.num_layers, getattr(executor.config, "vocab_size", None))
    if isinstance(dtype, str):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
        dtype = CACHE_DTYPES[dtype]
    hidden_size = executor.config.hidden_size
    means = torch.zeros((len(samples), executor.num_layers, windows, hidden_size), dtype=dtype, device=device)
    window_mask = torch.zeros((len(samples), windows), dtype=torch.bool, device=device)
    states = (torch.zeros((len(samples), executor.num_layers, hidden_size), dtype=torch.float32, device=device)
              if last_states else None)
    chunks = _iter_features(executor, samples, windows, batch_size, exclude_first, last_states)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="feature cache", unit="batch")
    for chunk, chunk_means, chunk_mask, chunk_states in chunks:
        index = torch.as_tensor(chunk, dtype=torch.long, device=device)
        means[index] = chunk_means.to(device=device, dtype=dtype)
        window_mask[index] = chunk_mask.to(device)
        if states is not None:
            states[index] = chunk_states.to(device)
    labels = torch.tensor([[int(c) for c in s.labels] for s in samples], dtype=torch.long, device=device)
    safety = None
    if all(s.safety is not None for s in samples):
        safety = torch.tensor([[float(v) for v in s.safety] for s in samples], dtype=torch.float32, device=device)
    return FeatureCache([s.prompt_id for s in samples], means, window_mask, labels, safety, states)
