r"""Grading: the answer extraction and equivalence checks every format grades with (strict letter regex,
last \boxed{}, math-verify equivalence, the first answer line), the `Outcome` of one path, and GRADER_VERSION
(bumped whenever prompts or grading change; recorded in every graded artifact's provenance)."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass

# Bump when a prompt, an answer extraction or a grading rule below changes: artifacts record it (drllm.core.provenance),
# so scores made by different grading can be told apart.
GRADER_VERSION = 1
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
