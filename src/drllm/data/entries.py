"""Benchmark entries: which records of which benchmark split, in which answer format, how many examples. One
config `eval.benchmarks` entry or one `calibrate.sets` entry (`EvalEntry.from_config`), and the seeded sample
of the records it evaluates (`sample_examples`). Shared by evaluation cells and router calibration, so it lives
below both."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drllm.core.artifacts import ArtifactError
from drllm.core.blocks import check_keys
from drllm.core.seeds import derived_seed


@dataclass(frozen=True)
class EvalEntry:
    """Which records, in which answer format, how many examples: one config `eval.benchmarks` entry, or one
    `calibrate.sets` entry (section "calibrate.sets", no lm-eval tasks)."""

    name: str
    benchmark: str
    split: str
    format: str
    samples: int | None = None       # None = every record
    levels: tuple[int, ...] | None = None
    options: dict = field(default_factory=dict)  # answer format options
    lm_eval: dict | None = None      # {task: name or config dict, metric, include_path, apply_chat_template}

    @classmethod
    def from_config(cls, name: str, block: dict, formats: dict | None = None,
                    section: str = "eval.benchmarks") -> "EvalEntry":
        known = {"benchmark", "split", "format", "samples", "levels", "options"}
        if section == "eval.benchmarks":
            known.add("lm_eval")
        check_keys(f"{section}.{name}", block, known)
        if block.get("lm_eval") is not None:
            return cls._lm_eval_entry(name, block)
        for key in ("benchmark", "split", "format"):
            if not isinstance(block.get(key), str) or not block[key]:
                raise ValueError(f"{section}.{name}.{key} must be a non-empty string")
        samples = block.get("samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"{section}.{name}.samples must be a positive integer or null, got {samples!r}")
        options = {**(formats or {}).get(block["format"], {}), **(block.get("options") or {})}
        levels = block.get("levels")
        return cls(name, block["benchmark"], block["split"], block["format"], samples,
                   tuple(levels) if levels else None, options)


    @classmethod
    def _lm_eval_entry(cls, name: str, block: dict) -> "EvalEntry":
        spec = block["lm_eval"]
        where = f"eval.benchmarks.{name}.lm_eval"
        known = {"task", "metric", "include_path", "apply_chat_template"}
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping with keys among {sorted(known)}")
        check_keys(where, spec, known)
        if not isinstance(spec.get("task"), (str, dict)) or not spec["task"]:
            raise ValueError(f"{where}.task must be an lm-eval task name or a task config mapping")
        if not isinstance(spec.get("metric"), str) or not spec["metric"]:
            raise ValueError(f"{where}.metric must name the per-sample metric to report (acc, acc_norm, ...)")
        extra = sorted(set(block) - {"lm_eval", "samples"})
        if extra:
            raise ValueError(f"eval.benchmarks.{name}: {extra} do not apply to an lm-eval task (only samples)")
        samples = block.get("samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"eval.benchmarks.{name}.samples must be a positive integer or null, got {samples!r}")
        return cls(name, name, "lm_eval", "lm_eval", samples, None, {}, dict(spec))


def sample_examples(examples: list, entry: EvalEntry, seed: int) -> list:
    """The entry's evaluated sample, in record order: `samples` records drawn with a seed; with `levels`, drawn
    per level in equal shares (the first levels get the remainder) so every level is represented."""
    if entry.levels is not None:
        examples = [ex for ex in examples if ex.level in entry.levels]
    if not examples:
        raise ArtifactError(f"eval.benchmarks.{entry.name}: no records left (levels {entry.levels})")
    if entry.samples is None or entry.samples >= len(examples):
        return list(examples)
    rng = np.random.default_rng(derived_seed(seed, "eval", entry.name))
    strata = [[i for i, ex in enumerate(examples) if ex.level == level] for level in sorted(entry.levels or ())]
    strata = [stratum for stratum in strata if stratum] or [list(range(len(examples)))]
    keep: list[int] = []
    for position, stratum in enumerate(strata):
        quota = entry.samples // len(strata) + (position < entry.samples % len(strata))
        keep += rng.choice(stratum, size=min(quota, len(stratum)), replace=False).tolist()
    return [examples[i] for i in sorted(keep)]
