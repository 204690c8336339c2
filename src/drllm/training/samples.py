"""Router training samples: one per (search prompt, labelled path), the prompt's token ids, the path's per-layer
labels (skip / execute / repeat counts) and, from the safety labeler, the per-layer safety targets; their schema
(SAMPLES_SCHEMA), checks and the validation split by prompt id."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet
from drllm.core.paths import LayerPath
from drllm.core.seeds import digest_hex

# --------------------------------------------------------------------------------------------------------
# Samples and schemas
# --------------------------------------------------------------------------------------------------------

SAMPLES_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("input_ids", pa.list_(pa.int64()), nullable=False),  # the prompt exactly as the search encoded it
    pa.field("labels", pa.list_(pa.int8()), nullable=False),      # per-layer counts 0 skip / 1 execute / 2 repeat
    pa.field("safety", pa.list_(pa.float32())),                   # safety labeler: 1.0 where skipping alone is safe
])


@dataclass(frozen=True)
class TrainingSample:
    """One kept search prompt: its token ids (as the search encoded it) and the per-layer label counts."""

    prompt_id: str
    input_ids: list[int]
    labels: list[int]
    safety: list[float] | None = None  # per-layer safety targets (search.labeler safety); None for MCTS labels

    def path(self) -> LayerPath:
        return LayerPath.from_counts(self.labels)


def samples_from_search(shard_rows: Sequence[dict], prompt_rows: Sequence[dict], tokenizer,
                        formats: dict | None = None, chat_template: bool = True) -> list[TrainingSample]:
    """Training samples from the kept search results: each prompt re-encoded exactly as the search read it."""
    from drllm.core.seeds import text_digest
    from drllm.search.prompts import encode_prompt_row

    prompts = {(row["task"], row["id"]): row for row in prompt_rows}
    samples = []
    for result in shard_rows:
        if not result["kept"]:
            continue
        key = (result["task"], result["prompt_id"])
        if key not in prompts:
            raise ArtifactError(f"search result {key} has no prompt in the prompt sets given")
        row = prompts[key]
        _, encoded = encode_prompt_row(row, tokenizer, formats or {}, chat_template)
        if text_digest(encoded.prompt_text) != result["prompt_hash"]:
            raise ArtifactError(f"prompt {key}: its encoding differs from the one searched (prompt_hash); "
                                "was the search run with another tokenizer, format option or chat template?")
        safety = result.get("layer_safety")
        samples.append(TrainingSample(f"{result['task']}/{result['prompt_id']}", encoded.prompt_ids,
                                      list(result["labels"]), None if safety is None else list(safety)))
    return samples


def write_samples(path, samples: Sequence[TrainingSample], provenance: dict | None = None) -> None:
    rows = [{"prompt_id": s.prompt_id, "input_ids": list(s.input_ids), "labels": list(s.labels),
             "safety": None if s.safety is None else list(s.safety)} for s in samples]
    write_parquet(path, rows, SAMPLES_SCHEMA, "training samples", provenance)


def read_samples(path) -> list[TrainingSample]:
    table = read_parquet(path, SAMPLES_SCHEMA, "training samples")
    return [TrainingSample(r["prompt_id"], list(r["input_ids"]), list(r["labels"]),
                           None if r["safety"] is None else list(r["safety"])) for r in table.to_pylist()]


def validate_samples(samples: Sequence[TrainingSample], num_layers: int, vocab_size: int | None = None) -> None:
    """Raise ArtifactError naming the prompt (and layer) of the first bad sample."""
    if not samples:
        raise ArtifactError("no training samples: the search kept no prompt (or the sample list is empty)")
    for index, sample in enumerate(samples):
        pid = sample.prompt_id
        if not isinstance(pid, str) or not pid:
            raise ArtifactError(f"sample {index}: prompt_id must be a non-empty string, got {pid!r}")
        if len(sample.input_ids) == 0:
            raise ArtifactError(f"sample {pid!r}: no input ids (routers pool over the prompt tokens)")
        if vocab_size is not None:
            bad = [t for t in sample.input_ids if not 0 <= int(t) < vocab_size]
            if bad:
                raise ArtifactError(f"sample {pid!r}: token id {bad[0]} is outside the vocabulary 0..{vocab_size - 1}")
        if len(sample.labels) != num_layers:
            raise ArtifactError(f"sample {pid!r}: {len(sample.labels)} labels, but the model has {num_layers} layers")
        if sample.safety is not None and (len(sample.safety) != num_layers or
                                          any(not 0.0 <= float(v) <= 1.0 for v in sample.safety)):
            raise ArtifactError(f"sample {pid!r}: safety targets must be {num_layers} numbers in [0, 1], "
                                f"got {list(sample.safety)!r}")
        for layer, label in enumerate(sample.labels):
            if isinstance(label, bool) or label not in (0, 1, 2):
                raise ArtifactError(f"sample {pid!r}: layer {layer} has label {label!r}; labels are 0 (skip), "
                                    "1 (execute) or 2 (repeat)")


def split_samples(samples: Sequence[TrainingSample], val_fraction: float,
                  seed: int) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """Seeded split by prompt id: round(val_fraction * prompts) prompts (at least 1 if val_fraction > 0 and there
    are 2+ prompts) go to validation, chosen by a seeded hash of the id, so the split does not depend on the
    order of `samples`. Every sample of a prompt lands on the same side; both sides keep the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    prompts = sorted({s.prompt_id for s in samples})
    count = round(val_fraction * len(prompts))
    if val_fraction > 0 and len(prompts) >= 2:
        count = min(max(count, 1), len(prompts) - 1)
    ranked = sorted(prompts, key=lambda pid: (digest_hex(seed, pid), pid))
    val_ids = set(ranked[:count])
    return ([s for s in samples if s.prompt_id not in val_ids], [s for s in samples if s.prompt_id in val_ids])
