r"""Grading: the answer extraction and equivalence checks every format grades with (strict letter regex,
last \boxed{}, math-verify equivalence, the first answer line), the `Outcome` of one path, and the answer metrics:

* SQuAD -- `normalize_answer`, `exact_match`, `token_f1`, `max_over_golds`: the official SQuAD v2.0 evaluation
  script (which adds empty-answer handling to v1.1's definitions).
* GSM8K -- `gsm8k_strict`, `gsm8k_equal`: lm-eval-harness's gsm8k task, "strict-match" filter and its
  exact_match settings.

Bump drllm.core.provenance.GRADER_VERSION whenever a prompt or a grading rule here changes: every graded
artifact records it."""
from __future__ import annotations

import re
import string
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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


_ANSWER_PREFIX = re.compile(r"^answer\s*:\s*", re.IGNORECASE)


def first_answer_line(text: str | None) -> str:
    """The first non-empty line of a generation, stripped, without a leading "Answer:" (chat models often
    echo the prompt's cue); "" when the generation is blank (an abstention)."""
    for line in (text or "").splitlines():
        if line.strip():
            return _ANSWER_PREFIX.sub("", line.strip()).strip()
    return ""


# --------------------------------------------------------------------------------------------------------
# SQuAD
# --------------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's official normalisation: lowercase, drop ASCII punctuation, drop the articles a/an/the,
    collapse whitespace (evaluate-v2.0.py `normalize_answer`, same steps in the same order)."""
    text = "".join(ch for ch in (text or "").lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0 (SQuAD v2.0 `compute_exact`)."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised tokens' bag overlap (SQuAD v2.0 `compute_f1`).

    When either side normalises to no tokens, the F1 is 1.0 if both do, else 0.0 (v2's rule for
    unanswerable questions: an empty prediction is the correct abstention).
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """The best `metric(prediction, gold)` over the gold answers (SQuAD scores against every annotator).

    No gold answers means an unanswerable question (SQuAD v2): scored against the single gold "" as the
    official script does, so only an empty prediction (an abstention) scores 1.
    """
    golds = [g for g in golds if normalize_answer(g)] or [""]  # v2 drops golds that normalise to nothing
    return max(metric(prediction, gold) for gold in golds)


# --------------------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------------------

_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
# lm-eval gsm8k exact_match `regexes_to_ignore`, applied in this order to prediction and reference alike
_GSM8K_IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def gsm8k_normalize(text: str) -> str:
    """An answer as lm-eval's gsm8k exact_match compares it: commas, `$`, anything up to a "#### " and one
    trailing "." removed (its `regexes_to_ignore`), lowercased; surrounding whitespace stripped too."""
    text = text.strip()
    for pattern in _GSM8K_IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def gsm8k_strict(text: str | None) -> str | None:
    """The normalised number after the first "#### " in `text` (lm-eval gsm8k "strict-match": regex
    ``#### (\\-?[0-9\\.\\,]+)``, first match); None when there is none (lm-eval's "[invalid]")."""
    match = _GSM8K_STRICT.search(text or "")
    return None if match is None else gsm8k_normalize(match.group(1))


def gsm8k_equal(prediction: str | None, gold: str | None) -> bool:
    """Whether two GSM8K answers are equal after `gsm8k_normalize` ("1,000" == "1000." == "$1000").
    None or an answer that normalises to nothing is never equal."""
    if prediction is None or gold is None:
        return False
    pred, ref = gsm8k_normalize(prediction), gsm8k_normalize(gold)
    return bool(ref) and pred == ref
