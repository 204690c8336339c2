r"""Answer formats: how an `Example` becomes a prompt, and how one layer path's answer to it is graded.

A format is built once per search/evaluation task (`get_format(name, **options)`); `encode` turns one example
into an `Encoded` prompt (tokenised once, reused for every path) and `evaluate` runs it along one layer path
and grades the answer. The grade is the search's reward and the evaluation stage's accuracy; the layer
applications are the paper's compute metric.

Formats (docs/method.md#evaluation):

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
* ``listed`` -- cloze with the options in the context, so the routers (which pool the context) see them. Context
  ``Question: {question}\nA. {choice 0}\nB. {choice 1}\n...\nAnswer:``, each option's own text scored as its
  continuation, exactly as ``cloze`` (the shipped lm-eval tasks ``arc_*_listed_offline`` are the same prompt).
  SmolLM2-135M loses ~11 points with it against cloze; a model that reads the options does not pay that.
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

from typing import Any, ClassVar, Sequence

import torch

from drllm.core.blocks import check_keys
from drllm.core.executor import ChoiceBatch, PathExecutor, RunState
from drllm.core.paths import LayerPath
from drllm.formats.grading import (LETTERS, Outcome, exact_match, extract_boxed, first_answer_line, gsm8k_equal,
                                   gsm8k_strict, letters_for, math_equal, max_over_golds, strict_letter, token_f1)
from drllm.formats.prompts import (BOXED_INSTRUCTION, Encoded, GSM8K_INSTRUCTION, QA_INSTRUCTION,
                                   QA_INSTRUCTION_NO_CONTEXT, encode_pair, letter_phrase, render_prompt,
                                   with_context)


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
        return with_context(example, "\n".join(lines))

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
        return with_context(example, f"{example.question}\n{BOXED_INSTRUCTION}")

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
        return with_context(example, f"{example.question}\n{GSM8K_INSTRUCTION}")

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


class QAFormat(_GenerateFormat):
    """Short open answers (SQuAD, TruthfulQA open-ended), scored by SQuAD token F1 / exact match."""

    name = "qa"
    metric = "f1"
    default_max_new_tokens = 32

    @staticmethod
    def prompt(example) -> str:
        instruction = QA_INSTRUCTION if getattr(example, "context", None) else QA_INSTRUCTION_NO_CONTEXT
        return with_context(example, f"Question: {example.question}\n{instruction}")

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
        return with_context(example, f"Question: {example.question}\nAnswer:")

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


class ListedFormat(ClozeFormat):
    """Cloze with the lettered options listed in the context (the routers see them); scored like cloze."""

    name = "listed"

    @staticmethod
    def context(example) -> str:
        options = "".join(f"{letter}. {choice}\n" for letter, choice in zip(LETTERS, example.choices))
        return with_context(example, f"Question: {example.question}\n{options}Answer:")


FORMATS: dict[str, type[AnswerFormat]] = {cls.name: cls for cls in (LetterFormat, ClozeFormat, ListedFormat,
                                                                    BoxedFormat, GSM8KFormat, QAFormat)}


def get_format(name: str, **options: Any) -> AnswerFormat:
    """The answer format `name` with its options (letter: base_model, max_new_tokens; cloze: normalize;
    boxed, gsm8k, qa: max_new_tokens). Unknown names or options raise ValueError naming the known ones."""
    if name not in FORMATS:
        raise ValueError(f"unknown answer format {name!r}; known formats: {sorted(FORMATS)}")
    cls = FORMATS[name]
    check_keys(f"answer format {name!r}", options, cls.option_names, noun="option")
    return cls(**options)
