r"""Answer formats: how an `Example` becomes a prompt, and how one layer path's answer to it is graded.

A format is built once per search/evaluation task (`get_format(name, **options)`); `encode` turns one example
into an `Encoded` prompt (tokenised once, reused for every path) and `evaluate` runs it along one layer path
and grades the answer. The grade is the search's reward and the evaluation stage's accuracy; the layer
applications are the paper's compute metric.

Formats (METHOD.md section 6):

* ``letter`` -- multiple choice answered by a letter (the paper's ARC format). Prompt::

      {question}
      A. {choice 0}
      B. {choice 1}
      ...
      Answer with a single letter (A, B, C, or D) and nothing else.

  greedy, at most 10 new tokens (2 with ``base_model=True``), graded by the strict regex
  ``^(?:Answer:\s*)?([A-Da-d])\.?$`` on the stripped generation (letter class = the example's letters).
* ``cloze`` -- multiple choice scored by log-likelihood (lm-eval's loglikelihood tasks; for small models that
  cannot follow the letter format). Context ``Question: {question}\nAnswer:`` (plain text, BOS prepended when
  the tokenizer has one), continuation `` {choice}``; all options in one forward pass; prediction = argmax of
  the summed log-probability divided by ``len(choice)`` (``normalize="chars"``, lm-eval acc_norm, default) or
  of the raw sum (``normalize="none"``, lm-eval acc).
* ``boxed`` -- math (the paper's DART format). Prompt
  ``{question}\nThe final answer MUST BE put in \boxed{} and no explanation.``; greedy, at most 15 new tokens;
  the last ``\boxed{...}`` of the generation is graded against the gold answers by math equivalence
  (math-verify).
* ``gsm8k`` -- grade-school math with a worked answer (lm-eval's gsm8k). Prompt
  ``{question}\n{GSM8K_INSTRUCTION}``; greedy, at most 256 new tokens; graded by lm-eval's "strict-match":
  the number after the first ``#### `` equals the gold answer (commas, ``$`` and a trailing ``.`` ignored).
* ``qa`` -- short open answers (SQuAD extractive QA, TruthfulQA open-ended). Prompt
  ``{context}\n\nQuestion: {question}\n{QA_INSTRUCTION}`` (``QA_INSTRUCTION_NO_CONTEXT`` without a
  passage); greedy, at most 32 new tokens; the first non-empty line of the generation (a leading ``Answer:``
  dropped) is scored by SQuAD token F1, max over the gold answers, and is correct on an exact match. No gold
  answers means unanswerable (SQuAD v2): only an empty answer scores.

Each outcome carries a ``score`` in [0, 1], what the format's ``metric`` averages over a benchmark: 1.0/0.0
from ``correct`` for every format except ``qa`` (token F1). Metric names: letter ``strict_letter``, cloze
``acc_norm`` (``normalize="chars"``) or ``acc``, boxed ``math_equiv``, gsm8k ``strict_match``, qa ``f1``.

Generation formats wrap their prompt as one user message by the tokenizer's chat template when
``chat_template=True`` and the tokenizer has one; otherwise it is plain text (BOS prepended when the
tokenizer has one). An example's ``context`` (a passage), when present, precedes the question (blank line).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from drllm.core.executor import ChoiceBatch, PathExecutor, RunState
from drllm.evaluation.metrics import exact_match, gsm8k_equal, gsm8k_strict, max_over_golds, token_f1
from drllm.core.paths import LayerPath

# Bump when a prompt, an answer extraction or a grading rule below changes: artifacts record it (drllm.core.provenance),
# so scores made by different grading can be told apart.
GRADER_VERSION = 1
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BOXED_INSTRUCTION = "The final answer MUST BE put in \\boxed{} and no explanation."
GSM8K_INSTRUCTION = ("Let's think step by step. At the end, write the final answer as a number on its own "
                     "line, in the form \"#### <number>\".")
QA_INSTRUCTION = "Answer with a short span copied from the passage, and nothing else."
QA_INSTRUCTION_NO_CONTEXT = "Answer in a few words, and nothing else."


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Encoded:
    """An example made ready for the model: built once per prompt, reused for every path.

    kind "generate": `input_ids` holds the prompt tokens (greedy generation on a batch of one).
    kind "choices": `batch` holds one row per option (context + option), scored in one forward pass.
    gold: the gold option index (letter, cloze) or a tuple of gold answer strings (boxed, gsm8k, qa; empty for
    an unanswerable qa question).
    """

    example_id: str
    kind: str
    prompt_text: str
    input_ids: list[int] | None
    batch: ChoiceBatch | None
    max_new_tokens: int
    gold: Any
    format: str = ""
    options: tuple[str, ...] = ()          # the option texts (multiple choice), in order
    tokenizer: Any = field(default=None, repr=False, compare=False)  # decodes generations

    @property
    def prompt_ids(self) -> list[int]:
        """The prompt tokens routers pool over: the generation prompt, or the shared context of the options."""
        if self.batch is None:
            return list(self.input_ids)
        return self.batch.input_ids[0, :int(self.batch.cols[0]) + 1].tolist()

    @property
    def rows(self) -> int:
        """Sequences one evaluation runs through the path: 1 (generate) or one per option (choices)."""
        return 1 if self.batch is None else int(self.batch.input_ids.shape[0])


@dataclass(frozen=True)
class Outcome:
    """One example answered along one path.

    score: what the format's metric averages, in [0, 1]; left None it is 1.0/0.0 from `correct`.
    """

    correct: bool
    prediction: str          # letter (letter), option text (cloze), \boxed{} content (boxed), number after
    #                          "####" (gsm8k), first answer line (qa); else the stripped raw output
    layer_applications: int  # generate: (prefill + decode steps) x len(path); choices: len(path) x option rows
    new_tokens: int          # generated tokens, EOS included (0 for choices)
    generation: str | None = None           # the raw decoded generation (generate formats)
    choice: int | None = None               # the option picked (letter: None when the output breaks the regex)
    scores: tuple[float, ...] | None = None  # per-option scores the argmax was taken over (cloze)
    score: float | None = None               # the metric's per-example value (token F1 for qa)

    def __post_init__(self) -> None:
        if self.score is None:  # accuracy metrics: the score is the grade
            object.__setattr__(self, "score", float(self.correct))
        elif not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Outcome.score must be in [0, 1], got {self.score!r}")


# --------------------------------------------------------------------------------------------------------
# Grading helpers
# --------------------------------------------------------------------------------------------------------

def letters_for(num_choices: int) -> str:
    if isinstance(num_choices, bool) or not isinstance(num_choices, int) or not 1 <= num_choices <= len(LETTERS):
        raise ValueError(f"number of choices must be 1..{len(LETTERS)}, got {num_choices!r}")
    return LETTERS[:num_choices]


def _letter_pattern(num_choices: int) -> re.Pattern:
    last = letters_for(num_choices)[-1]
    return re.compile(rf"^(?:Answer:\s*)?([A-{last}a-{last.lower()}])\.?$")


def strict_letter(text: str, num_choices: int) -> int | None:
    r"""The option index named by `text` under the paper's strict regex ``^(?:Answer:\s*)?([A-Da-d])\.?$``.

    The text is stripped first; the letter class follows the number of choices (A-B for 2, ..., A-E for 5).
    None when the text does not match.
    """
    match = _letter_pattern(num_choices).match((text or "").strip())
    return None if match is None else LETTERS.index(match.group(1).upper())


def letter_phrase(num_choices: int) -> str:
    """"A, B, C, or D" for 4 choices, "A or B" for 2, "A" for 1."""
    letters = list(letters_for(num_choices))
    if len(letters) == 1:
        return letters[0]
    if len(letters) == 2:
        return f"{letters[0]} or {letters[1]}"
    return ", ".join(letters[:-1]) + f", or {letters[-1]}"


_BOXED = re.compile(r"\\boxed\s*\{")


def extract_boxed(text: str | None) -> str | None:
    r"""The content of the last ``\boxed{...}`` in `text`, braces balanced (nested braces kept).

    Escaped braces ``\{`` and ``\}`` are content, not delimiters. None when there is no ``\boxed{`` or the
    last one is never closed.
    """
    if not text:
        return None
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth, index = 1, start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # an escaped character (\{, \}, \\) never opens or closes
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:index]
        index += 1
    return None


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text.strip().strip("$").strip())


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _parse_math(text: str, timeout: int | None):
    from math_verify import parse

    for wrapped in (f"\\boxed{{{text}}}", f"${text}$"):
        parsed = parse(wrapped, parsing_timeout=timeout)
        if parsed:
            return parsed
    return []


def math_equal(prediction: str | None, gold: str | None, timeout: int = 5) -> bool:
    r"""Whether `prediction` and `gold` (bare answers, e.g. the content of a ``\boxed{}``) are mathematically equal.

    Identical strings (ignoring whitespace and surrounding $) are equal; otherwise both are parsed with
    math-verify (wrapped in ``\boxed{}``, or ``$...$`` if that yields nothing) and compared with its `verify`
    (1/2 == \frac{1}{2} == 0.5; "x=3" == "3"; sets, intervals, tuples). Never raises: anything unparsable is
    simply not equal. The signal-based timeout is used only on the main thread (math-verify cannot use it
    elsewhere).
    """
    if prediction is None or gold is None:
        return False
    if not isinstance(prediction, str) or not isinstance(gold, str):
        return False
    if not prediction.strip() or not gold.strip():
        return False
    if _squash(prediction) == _squash(gold):
        return True
    limit = timeout if _in_main_thread() else None
    try:
        from math_verify import verify

        gold_parsed = _parse_math(gold, limit)
        pred_parsed = _parse_math(prediction, limit)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))
    except Exception:  # noqa: BLE001 - grading must never crash a search
        return False


# --------------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------------

def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_plain(tokenizer, text: str) -> list[int]:
    """Plain-text tokens, starting with the BOS token when the tokenizer has one."""
    ids = _ids(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def render_prompt(tokenizer, user_text: str, chat_template: bool) -> tuple[str, list[int]]:
    """(the text the model reads, its tokens): one user message through the chat template, or plain text."""
    if chat_template and has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                             add_generation_prompt=True)
        return text, _ids(tokenizer, text)
    return user_text, encode_plain(tokenizer, user_text)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval splits them: the continuation is what tokenising the whole
    string adds after the context's tokens (separate tokenisation if the boundary merges)."""
    context_ids = encode_plain(tokenizer, context)
    whole = encode_plain(tokenizer, context + continuation)
    if len(whole) > len(context_ids) and whole[:len(context_ids)] == context_ids:
        return context_ids, whole[len(context_ids):]
    return context_ids, _ids(tokenizer, continuation)


def _with_context(example, text: str) -> str:
    return f"{example.context}\n\n{text}" if getattr(example, "context", None) else text


def _check_choices(example, name: str) -> None:
    if not example.choices:
        raise ValueError(f"format {name!r} needs a multiple-choice example; {example.benchmark}/{example.id} "
                         "has no choices")
    if not 0 <= example.gold_index < len(example.choices):
        raise ValueError(f"{example.benchmark}/{example.id}: gold_index {example.gold_index} is not an option")


def _bool_option(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"option {name!r} must be true or false, got {value!r}")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"option {name!r} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------------------

class AnswerFormat:
    """Base class: `encode` an example once, `evaluate` it along any number of paths."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""          # "generate" | "choices"
    metric: ClassVar[str] = ""        # what Outcome.score measures (cloze: depends on its options)
    option_names: ClassVar[tuple[str, ...]] = ()

    def options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.option_names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"get_format({self.name!r}{', ' if args else ''}{args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options() == self.options()

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.options().items()))))

    def encode(self, example, tokenizer, *, chat_template: bool = True) -> Encoded:
        raise NotImplementedError

    def evaluate(self, executor: PathExecutor, encoded: Encoded, path: LayerPath | Sequence[int] | None, *,
                 keep_hidden: bool = False, resume: RunState | None = None,
                 resume_step: int = 0) -> tuple[Outcome, RunState]:
        raise NotImplementedError

    def _check(self, encoded: Encoded) -> None:
        if encoded.format != self.name or encoded.kind != self.kind:
            raise ValueError(f"format {self.name!r} cannot evaluate an example encoded by "
                             f"{encoded.format or encoded.kind!r}")


class _GenerateFormat(AnswerFormat):
    """Greedy generation on a batch of one along the path, then grading of the decoded text."""

    kind = "generate"
    option_names = ("max_new_tokens",)
    default_max_new_tokens: ClassVar[int] = 32

    def __init__(self, max_new_tokens: int | None = None):
        self.max_new_tokens = (self.default_max_new_tokens if max_new_tokens is None
                               else _positive_int("max_new_tokens", max_new_tokens))

    def _encoded(self, example, tokenizer, user_text: str, chat_template: bool, max_new_tokens: int,
                 gold: Any, options: tuple[str, ...] = ()) -> Encoded:
        text, ids = render_prompt(tokenizer, user_text, chat_template)
        return Encoded(example_id=example.id, kind=self.kind, prompt_text=text, input_ids=ids, batch=None,
                       max_new_tokens=max_new_tokens, gold=gold, format=self.name, options=options,
                       tokenizer=tokenizer)

    def evaluate(self, executor, encoded, path, *, keep_hidden=False, resume=None, resume_step=0):
        self._check(encoded)
        eos = self.stop_ids(executor, encoded)
        generation = executor.generate(torch.tensor([encoded.input_ids], dtype=torch.long), None, path,
                                       max_new_tokens=encoded.max_new_tokens, eos_token_id=eos,
                                       keep_hidden=keep_hidden, resume=resume, resume_step=resume_step)
        return self.grade_generation(encoded, generation, eos), generation.prefill

    @staticmethod
    def stop_ids(executor, encoded: Encoded):
        """The EOS id(s) generation stops at: the model's generation config's, else the tokenizer's."""
        eos = executor.model.generation_config.eos_token_id
        if eos is None and encoded.tokenizer is not None:
            eos = encoded.tokenizer.eos_token_id
        return eos

    def grade_generation(self, encoded: Encoded, generation, eos) -> Outcome:
        """The outcome of a greedy generation of `encoded` (a `Generation` of one row) that stopped at `eos`."""
        self._check(encoded)
        count = int(generation.num_new[0])
        tokens = generation.tokens[0, :count].tolist()
        stops = {eos} if isinstance(eos, int) else set(eos or ())
        if tokens and tokens[-1] in stops:  # the EOS ends the answer; it is no part of it
            tokens = tokens[:-1]
        text = encoded.tokenizer.decode(tokens, skip_special_tokens=True)
        return self.grade(encoded, text, int(generation.layer_applications[0]), count)

    def grade(self, encoded: Encoded, text: str, layer_applications: int, new_tokens: int) -> Outcome:
        raise NotImplementedError


class LetterFormat(_GenerateFormat):
    """Multiple choice answered with one letter (the paper's ARC format)."""

    name = "letter"
    metric = "strict_letter"
    option_names = ("base_model", "max_new_tokens")

    def __init__(self, base_model: bool = False, max_new_tokens: int | None = None):
        self.base_model = _bool_option("base_model", base_model)
        default = 2 if self.base_model else 10
        self.max_new_tokens = default if max_new_tokens is None else _positive_int("max_new_tokens",
                                                                                   max_new_tokens)

    @staticmethod
    def prompt(example) -> str:
        letters = letters_for(len(example.choices))
        lines = [example.question]
        lines += [f"{letter}. {choice}" for letter, choice in zip(letters, example.choices)]
        lines.append(f"Answer with a single letter ({letter_phrase(len(letters))}) and nothing else.")
        return _with_context(example, "\n".join(lines))

    def encode(self, example, tokenizer, *, chat_template: bool = True) -> Encoded:
        _check_choices(example, self.name)
        return self._encoded(example, tokenizer, self.prompt(example), chat_template, self.max_new_tokens,
                             example.gold_index, tuple(example.choices))

    def grade(self, encoded, text, layer_applications, new_tokens):
        choice = strict_letter(text, len(encoded.options))
        prediction = LETTERS[choice] if choice is not None else text.strip()
        correct = choice is not None and choice == encoded.gold
        return Outcome(correct=correct, prediction=prediction, layer_applications=layer_applications,
                       new_tokens=new_tokens, generation=text, choice=choice)


class BoxedFormat(_GenerateFormat):
    r"""Math answered in \boxed{} (the paper's DART format), graded by math equivalence."""

    name = "boxed"
    metric = "math_equiv"
    default_max_new_tokens = 15

    @staticmethod
    def prompt(example) -> str:
        return _with_context(example, f"{example.question}\n{BOXED_INSTRUCTION}")

    def encode(self, example, tokenizer, *, chat_template: bool = True) -> Encoded:
        golds = tuple(a for a in (example.answers or [example.answer]) if a and a.strip())
        if not golds:
            raise ValueError(f"format 'boxed': {example.benchmark}/{example.id} has no gold answer")
        return self._encoded(example, tokenizer, self.prompt(example), chat_template, self.max_new_tokens, golds)

    def grade(self, encoded, text, layer_applications, new_tokens):
        answer = extract_boxed(text)
        correct = answer is not None and any(math_equal(answer, gold) for gold in encoded.gold)
        return Outcome(correct=correct, prediction=answer if answer is not None else text.strip(),
                       layer_applications=layer_applications, new_tokens=new_tokens, generation=text)


class GSM8KFormat(_GenerateFormat):
    """Grade-school math reasoned step by step, graded by lm-eval's gsm8k "strict-match" (``#### <number>``)."""

    name = "gsm8k"
    metric = "strict_match"
    default_max_new_tokens = 256

    @staticmethod
    def prompt(example) -> str:
        return _with_context(example, f"{example.question}\n{GSM8K_INSTRUCTION}")

    def encode(self, example, tokenizer, *, chat_template: bool = True) -> Encoded:
        if not example.answer.strip():
            raise ValueError(f"format 'gsm8k': {example.benchmark}/{example.id} has no gold answer")
        return self._encoded(example, tokenizer, self.prompt(example), chat_template, self.max_new_tokens,
                             (example.answer,))

    def grade(self, encoded, text, layer_applications, new_tokens):
        answer = gsm8k_strict(text)
        correct = answer is not None and any(gsm8k_equal(answer, gold) for gold in encoded.gold)
        return Outcome(correct=correct, prediction=answer if answer is not None else text.strip(),
                       layer_applications=layer_applications, new_tokens=new_tokens, generation=text)


_ANSWER_PREFIX = re.compile(r"^answer\s*:\s*", re.IGNORECASE)


def first_answer_line(text: str | None) -> str:
    """The first non-empty line of a generation, stripped, without a leading "Answer:" (chat models often
    echo the prompt's cue); "" when the generation is blank (an abstention)."""
    for line in (text or "").splitlines():
        if line.strip():
            return _ANSWER_PREFIX.sub("", line.strip()).strip()
    return ""


class QAFormat(_GenerateFormat):
    """Short open answers (SQuAD, TruthfulQA open-ended), scored by SQuAD token F1 / exact match."""

    name = "qa"
    metric = "f1"
    default_max_new_tokens = 32

    @staticmethod
    def prompt(example) -> str:
        instruction = QA_INSTRUCTION if getattr(example, "context", None) else QA_INSTRUCTION_NO_CONTEXT
        return _with_context(example, f"Question: {example.question}\n{instruction}")

    def encode(self, example, tokenizer, *, chat_template: bool = True) -> Encoded:
        # no gold answer = unanswerable (SQuAD v2); the metrics score that against the empty answer
        golds = tuple(a for a in (example.answers or [example.answer]) if a and a.strip())
        return self._encoded(example, tokenizer, self.prompt(example), chat_template, self.max_new_tokens, golds)

    def grade(self, encoded, text, layer_applications, new_tokens):
        answer = first_answer_line(text)
        return Outcome(correct=max_over_golds(exact_match, answer, encoded.gold) == 1.0, prediction=answer,
                       layer_applications=layer_applications, new_tokens=new_tokens, generation=text,
                       score=max_over_golds(token_f1, answer, encoded.gold))


class ClozeFormat(AnswerFormat):
    """Multiple choice scored by each option's log-likelihood as a continuation (lm-eval acc / acc_norm)."""

    name = "cloze"
    kind = "choices"
    option_names = ("normalize",)
    NORMALIZE = ("none", "chars")

    def __init__(self, normalize: str = "chars"):
        if normalize not in self.NORMALIZE:
            raise ValueError(f"option 'normalize' must be one of {list(self.NORMALIZE)}, got {normalize!r}")
        self.normalize = normalize

    @property
    def metric(self) -> str:  # type: ignore[override]
        """lm-eval's names: acc_norm for the length-normalised argmax, acc for the raw one."""
        return "acc_norm" if self.normalize == "chars" else "acc"

    @staticmethod
    def context(example) -> str:
        return _with_context(example, f"Question: {example.question}\nAnswer:")

    def encode(self, example, tokenizer, *, chat_template: bool = True) -> Encoded:
        """Plain text whatever `chat_template` says (lm-eval's loglikelihood tasks use no chat template)."""
        _check_choices(example, self.name)
        context = self.context(example)
        requests = [encode_pair(tokenizer, context, f" {choice}") for choice in example.choices]
        return Encoded(example_id=example.id, kind=self.kind, prompt_text=context, input_ids=None,
                       batch=ChoiceBatch.build(requests), max_new_tokens=0, gold=example.gold_index,
                       format=self.name, options=tuple(example.choices), tokenizer=tokenizer)

    def scores(self, logprobs: Sequence[float], options: Sequence[str]) -> list[float]:
        if self.normalize == "chars":
            return [lp / max(1, len(option)) for lp, option in zip(logprobs, options)]
        return list(logprobs)

    def evaluate(self, executor, encoded, path, *, keep_hidden=False, resume=None, resume_step=0):
        self._check(encoded)
        results, state = executor.score(encoded.batch, path, keep_hidden=keep_hidden, resume=resume,
                                        resume_step=resume_step)
        return self.grade_scores(encoded, results, len(state.path)), state

    def grade_scores(self, encoded: Encoded, results: Sequence, path_length: int) -> Outcome:
        """The outcome from the options' log-likelihoods (`PathExecutor.score`'s results) along a path."""
        scores = self.scores([r.logprob for r in results], encoded.options)
        choice = max(range(len(scores)), key=lambda i: scores[i])  # first of ties, like numpy argmax
        return Outcome(correct=choice == encoded.gold, prediction=encoded.options[choice],
                       layer_applications=path_length * encoded.rows, new_tokens=0, choice=choice,
                       scores=tuple(scores))


FORMATS: dict[str, type[AnswerFormat]] = {cls.name: cls for cls in (LetterFormat, ClozeFormat, BoxedFormat,
                                                                    GSM8KFormat, QAFormat)}


def get_format(name: str, **options: Any) -> AnswerFormat:
    """The answer format `name` with its options (letter: base_model, max_new_tokens; cloze: normalize;
    boxed, gsm8k, qa: max_new_tokens). Unknown names or options raise ValueError naming the known ones."""
    if name not in FORMATS:
        raise ValueError(f"unknown answer format {name!r}; known formats: {sorted(FORMATS)}")
    cls = FORMATS[name]
    unknown = sorted(set(options) - set(cls.option_names))
    if unknown:
        raise ValueError(f"answer format {name!r}: unknown option(s) {unknown}; "
                         f"known options: {list(cls.option_names)}")
    return cls(**options)
