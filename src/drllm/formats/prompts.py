"""Prompts: the instructions, the chat template (a user message, when the tokenizer has one and it is asked
for) or plain text with BOS, context/continuation token pairs, and the `Encoded` prompt a format evaluates along
every path."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drllm.core.executor import ChoiceBatch
from drllm.formats.grading import letters_for

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


def letter_phrase(num_choices: int) -> str:
    """"A, B, C, or D" for 4 choices, "A or B" for 2, "A" for 1."""
    letters = list(letters_for(num_choices))
    if len(letters) == 1:
        return letters[0]
    if len(letters) == 2:
        return f"{letters[0]} or {letters[1]}"
    return ", ".join(letters[:-1]) + f", or {letters[-1]}"


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


def with_context(example, text: str) -> str:
    """`text` after the example's passage and a blank line, when it has one."""
    return f"{example.context}\n\n{text}" if getattr(example, "context", None) else text
