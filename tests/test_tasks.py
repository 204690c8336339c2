r"""Answer formats: prompt texts, grading (strict letter regex, \boxed{} extraction, math equivalence) and
evaluation along layer paths (compute counts, prefix resume) on tiny random models with a byte-level tokenizer;
one slow test on the real SmolLM2."""
from __future__ import annotations

import threading

import pytest
import torch

from conftest import tiny_model
from drllm.data.examples import Example
from drllm.core.executor import Generation, PathExecutor
from drllm.core.paths import LayerPath
from drllm.formats.answers import FORMATS, BoxedFormat, LetterFormat, get_format
from drllm.formats.grading import Outcome, extract_boxed, math_equal, strict_letter
from drllm.formats.prompts import Encoded, encode_pair, letter_phrase

CHAT = "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}" \
       "{% if add_generation_prompt %}[assistant] {% endif %}"
VOCAB = 259  # <pad>, <s>, </s> + 256 bytes; ids 0/1/2 match conftest.tiny_model's pad/bos/eos


def byte_tokenizer(chat_template: str | None = CHAT, bos: bool = True):
    """A real fast tokenizer, one token per byte (no merges): offline, instant, exactly predictable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{char: 3 + i for i, char in enumerate(alphabet)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<pad>", "<s>", "</s>"])
    kwargs = dict(eos_token="</s>", pad_token="<pad>")
    if bos:
        kwargs["bos_token"] = "<s>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def mc_example(question="Which is a mammal?", choices=("Shark", "Dog", "Trout", "Eel"), gold=1, **kw):
    choices = list(choices)
    return Example(id=kw.pop("id", "q1"), benchmark="arc_easy", split="validation", question=question,
                   choices=choices, gold_index=gold, answer=choices[gold], answers=[choices[gold]],
                   source="test", **kw)


def math_example(question="What is $1/2 + 0$?", answer="\\frac{1}{2}"):
    return Example(id="m1", benchmark="dart", split="train", question=question, answer=answer, answers=[answer],
                   level=1, source="test")


def model(layers=4, seed=0):
    return tiny_model("llama", layers=layers, seed=seed, vocab_size=VOCAB)


# -- strict letter regex ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,index", [("B", 1), ("b.", 1), ("Answer: C", 2), (" D \n", 3), ("A.", 0),
                                        ("Answer:D", 3), ("c", 2)])
def test_strict_letter_accepts(text, index):
    assert strict_letter(text, 4) == index


@pytest.mark.parametrize("text", ["B)", "The answer is B", "AB", "E", "e.", "", "B..", "answer: B", "(B)", "B. Dog"])
def test_strict_letter_rejects(text):
    assert strict_letter(text, 4) is None


def test_letter_class_follows_number_of_choices():
    assert strict_letter("E", 5) == 4 and strict_letter("e.", 5) == 4
    assert strict_letter("D", 3) is None and strict_letter("C", 3) == 2
    assert strict_letter("B", 2) == 1 and strict_letter("C", 2) is None
    assert [letter_phrase(n) for n in (1, 2, 3, 5)] == ["A", "A or B", "A, B, or C", "A, B, C, D, or E"]
    with pytest.raises(ValueError, match="1..26"):
        strict_letter("A", 0)


# -- \boxed{} extraction and math equivalence -------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{\\frac{a}{b^{2}}}} done", "\\sqrt{\\frac{a}{b^{2}}}"),
    ("first \\boxed{1} then \\boxed{2} and \\boxed{x^{3}}", "x^{3}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed {7}", "7"),
    ("no box here, 42", None),
    ("\\boxed{\\frac{1}{2}", None),
    ("\\boxed{3} then \\boxed{4", None),
    ("", None),
    (None, None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("prediction,gold", [
    ("1/2", "\\frac{1}{2}"), ("0.5", "\\frac{1}{2}"), ("\\frac{1}{2}", "0.5"), ("\\frac12", "\\frac{1}{2}"),
    ("x=3", "3"), ("x = 3", "3"), ("(7, 4)", "(7,4)"), ("[-13,3]", "[-13, 3]"), ("\\text{(C)}", "\\text{(C)}"),
])
def test_math_equal_true(prediction, gold):
    assert math_equal(prediction, gold)


@pytest.mark.parametrize("prediction,gold", [
    ("3", "4"), ("x=4", "3"), ("1/3", "0.5"), ("}{", "3"), ("\\frac{", "\\frac{1}{2}"), ("", "3"), ("3", ""),
    (None, "3"), ("\\boxed{", "x"), ("@@@###", "7"),
])
def test_math_equal_false_and_never_raises(prediction, gold):
    assert math_equal(prediction, gold) is False


def test_math_equal_off_the_main_thread():
    """math-verify's signal timeout only works on the main thread; elsewhere grading must still work."""
    results = []
    worker = threading.Thread(target=lambda: results.extend([math_equal("0.5", "\\frac{1}{2}"),
                                                              math_equal("3", "4")]))
    worker.start()
    worker.join()
    assert results == [True, False]


# -- prompt rendering --------------------------------------------------------------------------------------------

LETTER_TEXT = ("Which is a mammal?\nA. Shark\nB. Dog\nC. Trout\nD. Eel\n"
               "Answer with a single letter (A, B, C, or D) and nothing else.")
BOXED_TEXT = "What is $1/2 + 0$?\nThe final answer MUST BE put in \\boxed{} and no explanation."


def test_letter_prompt_with_chat_template(tok):
    encoded = get_format("letter").encode(mc_example(), tok, chat_template=True)
    assert encoded.prompt_text == f"<s>[user] {LETTER_TEXT}\n[assistant] "
    assert encoded.input_ids == tok(encoded.prompt_text, add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[0] == 1 and encoded.input_ids.count(1) == 1  # the template's own <s>, not doubled
    assert (encoded.kind, encoded.max_new_tokens, encoded.gold, encoded.batch) == ("generate", 10, 1, None)
    assert encoded.options == ("Shark", "Dog", "Trout", "Eel") and encoded.rows == 1


def test_letter_prompt_plain(tok):
    for tokenizer, chat in [(tok, False), (byte_tokenizer(chat_template=None), True)]:
        encoded = get_format("letter").encode(mc_example(), tokenizer, chat_template=chat)
        assert encoded.prompt_text == LETTER_TEXT
        assert encoded.input_ids == [1] + tok(LETTER_TEXT, add_special_tokens=False)["input_ids"]
    no_bos = get_format("letter").encode(mc_example(), byte_tokenizer(bos=False), chat_template=False)
    assert no_bos.input_ids == tok(LETTER_TEXT, add_special_tokens=False)["input_ids"]


def test_letter_prompt_five_choices_and_context(tok):
    example = mc_example(question="Pick one.", choices=["a", "b", "c", "d", "e"], gold=4, context="A passage.")
    encoded = get_format("letter").encode(example, tok, chat_template=False)
    assert encoded.prompt_text == ("A passage.\n\nPick one.\nA. a\nB. b\nC. c\nD. d\nE. e\n"
                                   "Answer with a single letter (A, B, C, D, or E) and nothing else.")
    assert get_format("letter", base_model=True).encode(example, tok, chat_template=False).max_new_tokens == 2


def test_boxed_prompt(tok):
    encoded = get_format("boxed").encode(math_example(), tok, chat_template=True)
    assert encoded.prompt_text == f"<s>[user] {BOXED_TEXT}\n[assistant] "
    plain = get_format("boxed").encode(math_example(), tok, chat_template=False)
    assert plain.prompt_text == BOXED_TEXT
    assert plain.input_ids == [1] + tok(BOXED_TEXT, add_special_tokens=False)["input_ids"]
    assert (plain.kind, plain.max_new_tokens, plain.gold) == ("generate", 15, ("\\frac{1}{2}",))


def test_encoding_is_deterministic(tok):
    for name, example in [("letter", mc_example()), ("boxed", math_example()), ("cloze", mc_example())]:
        first = get_format(name).encode(example, tok, chat_template=True)
        second = get_format(name).encode(example, tok, chat_template=True)
        assert first.prompt_text == second.prompt_text and first.input_ids == second.input_ids


def test_cloze_encoding(tok):
    example = mc_example()
    encoded = get_format("cloze").encode(example, tok, chat_template=True)  # cloze ignores the chat template
    context = "Question: Which is a mammal?\nAnswer:"
    assert (encoded.kind, encoded.prompt_text, encoded.input_ids, encoded.gold) == ("choices", context, None, 1)
    batch = encoded.batch
    assert encoded.rows == batch.input_ids.shape[0] == 4
    context_ids = [1] + tok(context, add_special_tokens=False)["input_ids"]
    for row, option in enumerate(example.choices):
        option_ids = tok(" " + option, add_special_tokens=False)["input_ids"]
        length = len(context_ids) + len(option_ids) - 1  # the model reads all but the last token
        assert batch.input_ids[row, :length].tolist() == (context_ids + option_ids)[:-1]
        assert batch.attention_mask[row].sum() == length
        assert batch.targets[batch.rows == row].tolist() == option_ids
        assert tok.decode(batch.targets[batch.rows == row].tolist()) == " " + option
    assert batch.counts == [len(" " + option) for option in example.choices]
    # no BOS token: the context is the bare text (ChoiceBatch only needs it non-empty)
    bare = get_format("cloze").encode(example, byte_tokenizer(bos=False), chat_template=False)
    assert bare.batch.input_ids[0, 0].item() == context_ids[1]


def test_encode_pair_without_bos_duplicates(tok):
    context, continuation = encode_pair(tok, "<s>Question: x\nAnswer:", " y")
    assert context.count(1) == 1 and context[0] == 1 and tok.decode(continuation) == " y"


# -- registry and options --------------------------------------------------------------------------------------

def test_registry_and_errors(tok):
    assert set(FORMATS) == {"letter", "cloze", "listed", "boxed", "gsm8k", "qa"}
    assert isinstance(get_format("letter"), LetterFormat) and get_format("letter").max_new_tokens == 10
    assert get_format("letter", base_model=True).max_new_tokens == 2
    assert isinstance(get_format("boxed"), BoxedFormat) and get_format("boxed").max_new_tokens == 15
    assert get_format("cloze").normalize == "chars" and get_format("cloze", normalize="none").normalize == "none"
    assert get_format("cloze") == get_format("cloze", normalize="chars") != get_format("cloze", normalize="none")
    with pytest.raises(ValueError, match="'haiku'.*boxed.*cloze.*letter"):
        get_format("haiku")
    with pytest.raises(ValueError, match="'temperature'.*normalize"):
        get_format("cloze", temperature=0.7)
    with pytest.raises(ValueError, match="'normalize'.*chars"):
        get_format("cloze", normalize="tokens")
    with pytest.raises(ValueError, match="base_model"):
        get_format("letter", base_model="yes")
    with pytest.raises(ValueError, match="max_new_tokens"):
        get_format("boxed", max_new_tokens=0)
    with pytest.raises(ValueError, match="no choices"):
        get_format("letter").encode(math_example(), tok, chat_template=False)
    with pytest.raises(ValueError, match="no choices"):
        get_format("cloze").encode(math_example(), tok, chat_template=False)
    encoded = get_format("cloze").encode(mc_example(), tok, chat_template=False)
    with pytest.raises(ValueError, match="cannot evaluate"):
        get_format("letter").evaluate(PathExecutor(model()), encoded, None)


# -- grading the generation: a stub executor returning a chosen generation -------------------------------------

class StubExecutor:
    """Returns a fixed generation; records what evaluate asked for."""

    def __init__(self, tokenizer, text: str, eos: bool = True, layers: int = 4):
        self.tokens = tokenizer(text, add_special_tokens=False)["input_ids"] + ([2] if eos else [])
        self.model = type("M", (), {"generation_config": type("G", (), {"eos_token_id": 2})()})()
        self.num_layers, self.calls = layers, []

    def generate(self, input_ids, attention_mask=None, path=None, **kwargs):
        self.calls.append(dict(input_ids=input_ids, path=path, **kwargs))
        tokens = torch.tensor([self.tokens + [0] * 3])
        return Generation(tokens, torch.tensor([len(self.tokens)]), torch.tensor([7 * len(self.tokens)]),
                          path, prefill="PREFILL")


@pytest.mark.parametrize("text,correct,prediction,choice", [
    ("B", True, "B", 1), ("Answer: b.", True, "B", 1), (" B\n", True, "B", 1), ("C", False, "C", 2),
    ("B) Dog", False, "B) Dog", None), ("The answer is B", False, "The answer is B", None),
])
def test_letter_grading(tok, text, correct, prediction, choice):
    fmt = get_format("letter")
    encoded = fmt.encode(mc_example(), tok, chat_template=True)
    stub = StubExecutor(tok, text)
    outcome, state = fmt.evaluate(stub, encoded, [0, 1, 3], keep_hidden=True, resume="PARENT", resume_step=2)
    assert (outcome.correct, outcome.prediction, outcome.choice) == (correct, prediction, choice)
    assert outcome.new_tokens == len(stub.tokens) and outcome.layer_applications == 7 * len(stub.tokens)
    assert outcome.generation == text and state == "PREFILL"
    call = stub.calls[0]
    assert call["input_ids"].tolist() == [encoded.input_ids] and call["path"] == [0, 1, 3]
    assert (call["max_new_tokens"], call["eos_token_id"]) == (10, 2)
    assert (call["keep_hidden"], call["resume"], call["resume_step"]) == (True, "PARENT", 2)


@pytest.mark.parametrize("text,correct,prediction", [
    ("\\boxed{0.5}", True, "0.5"), ("\\boxed{\\frac{1}{2}}", True, "\\frac{1}{2}"),
    ("So $\\boxed{1}$ no, \\boxed{1/2}", True, "1/2"), ("\\boxed{2}", False, "2"),
    ("The answer is 1/2", False, "The answer is 1/2"), ("\\boxed{\\frac{1}{2", False, "\\boxed{\\frac{1}{2"),
])
def test_boxed_grading(tok, text, correct, prediction):
    fmt = get_format("boxed")
    outcome, _ = fmt.evaluate(StubExecutor(tok, text), fmt.encode(math_example(), tok, chat_template=False), None)
    assert (outcome.correct, outcome.prediction, outcome.generation) == (correct, prediction, text)


def test_boxed_any_gold_answer(tok):
    example = Example(id="m2", benchmark="dart", split="train", question="q", answer="2", answers=["2", "x=2"],
                      source="test")
    fmt = get_format("boxed")
    outcome, _ = fmt.evaluate(StubExecutor(tok, "\\boxed{2.0}"), fmt.encode(example, tok), None)
    assert outcome.correct


# -- evaluation along real paths on a tiny random Llama --------------------------------------------------------

def test_cloze_evaluate_counts_and_argmax(tok):
    executor = PathExecutor(model())
    example = mc_example(choices=["Shark", "Dog", "Trout fish", "E"])
    for normalize in ("chars", "none"):
        fmt = get_format("cloze", normalize=normalize)
        encoded = fmt.encode(example, tok, chat_template=False)
        for path in [None, (0, 1, 3), (0, 1, 1, 2, 3, 3), ()]:
            outcome, state = fmt.evaluate(executor, encoded, path)
            steps = 4 if path is None else len(path)
            assert outcome.layer_applications == steps * 4 and outcome.new_tokens == 0
            assert state.path == executor.as_path(path)
            # independent: lm-eval style requests through the batched loglikelihood API
            context = [1] + tok("Question: Which is a mammal?\nAnswer:", add_special_tokens=False)["input_ids"]
            requests = [(context, tok(" " + c, add_special_tokens=False)["input_ids"]) for c in example.choices]
            raw = [r.logprob for r in executor.loglikelihood(requests, path, batch_size=3)]
            expected = [lp / len(c) for lp, c in zip(raw, example.choices)] if normalize == "chars" else raw
            assert outcome.scores == pytest.approx(expected, abs=1e-4)
            best = max(range(4), key=lambda i: expected[i])
            assert outcome.choice == best and outcome.prediction == example.choices[best]
            assert outcome.correct == (best == 1)


def test_generate_evaluate_counts(tok):
    tiny = model()
    executor = PathExecutor(tiny)
    fmt = get_format("boxed")
    encoded = fmt.encode(math_example(), tok, chat_template=True)
    path = LayerPath((0, 1, 1, 3), 4)
    ids = torch.tensor([encoded.input_ids])
    tiny.generation_config.eos_token_id = 2
    free = executor.generate(ids, None, path, max_new_tokens=15, eos_token_id=2)
    tokens = free.tokens[0, :int(free.num_new[0])].tolist()
    outcome, state = fmt.evaluate(executor, encoded, path)
    assert outcome.layer_applications == int(free.layer_applications[0])
    assert outcome.new_tokens == len(tokens)
    assert outcome.generation == tok.decode(tokens, skip_special_tokens=True)
    assert state.path == path and state.input_ids.tolist() == [encoded.input_ids]
    if 2 not in tokens:  # no EOS: prefill + 14 decode steps
        assert outcome.layer_applications == 15 * len(path)
    # make the model's own EOS the k-th greedy token: generation stops there, k+1 passes of the path
    k = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])
    tiny.generation_config.eos_token_id = [tokens[k], 2]
    outcome, _ = fmt.evaluate(executor, encoded, path)
    assert outcome.new_tokens == k + 1 and outcome.layer_applications == (k + 1) * len(path)
    assert outcome.generation == tok.decode(tokens[:k], skip_special_tokens=True)


@pytest.mark.parametrize("name", ["cloze", "letter", "boxed"])
def test_resume_from_parent_equals_fresh(tok, name):
    executor = PathExecutor(model(layers=6, seed=3))
    fmt = get_format(name)
    encoded = fmt.encode(math_example() if name == "boxed" else mc_example(), tok, chat_template=True)
    parent, child = LayerPath.default(6), LayerPath((0, 1, 2, 4, 4, 5), 6)
    step = child.common_prefix(parent)
    assert step == 3
    parent_outcome, parent_state = fmt.evaluate(executor, encoded, parent, keep_hidden=True)
    assert parent_state.hidden is not None and len(parent_state.hidden) == len(parent) + 1
    resumed, resumed_state = fmt.evaluate(executor, encoded, child, keep_hidden=True, resume=parent_state,
                                          resume_step=step)
    fresh, fresh_state = fmt.evaluate(executor, encoded, child)
    assert resumed_state.path == child
    assert (resumed.correct, resumed.prediction, resumed.layer_applications, resumed.new_tokens, resumed.choice) == \
           (fresh.correct, fresh.prediction, fresh.layer_applications, fresh.new_tokens, fresh.choice)
    assert resumed.generation == fresh.generation
    if name == "cloze":
        assert resumed.scores == pytest.approx(fresh.scores, abs=1e-5)
        assert resumed.layer_applications == len(child) * 4
    # a grandchild resumes from the resumed child's state in turn
    grandchild = LayerPath((0, 1, 2, 4, 5), 6)
    again, _ = fmt.evaluate(executor, encoded, grandchild, resume=resumed_state,
                            resume_step=grandchild.common_prefix(child))
    assert again.prediction == fmt.evaluate(executor, encoded, grandchild)[0].prediction


def test_outcome_and_encoded_are_frozen(tok):
    encoded = get_format("letter").encode(mc_example(), tok, chat_template=False)
    with pytest.raises(AttributeError):
        encoded.max_new_tokens = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Outcome(True, "A", 1, 1).correct = False  # type: ignore[misc]
    assert isinstance(encoded, Encoded)


# -- the real model --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_formats(smollm2):
    from drllm.data.registry import load_benchmark

    model_, tokenizer = smollm2
    executor = PathExecutor(model_)
    layers = executor.num_layers
    arc = load_benchmark("arc_easy", "validation", limit=8)

    cloze = get_format("cloze")
    correct = 0
    for example in arc:
        encoded = cloze.encode(example, tokenizer, chat_template=True)
        outcome, _ = cloze.evaluate(executor, encoded, None)
        assert outcome.layer_applications == layers * len(example.choices)
        context, continuation = cloze.context(example), [" " + c for c in example.choices]
        requests = [encode_pair(tokenizer, context, c) for c in continuation]
        assert requests[0][0][0] == tokenizer.bos_token_id
        raw = [r.logprob for r in executor.loglikelihood(requests)]
        normed = [lp / len(c) for lp, c in zip(raw, example.choices)]
        assert outcome.choice == max(range(len(normed)), key=normed.__getitem__)
        assert outcome.prediction == example.choices[outcome.choice]
        assert outcome.correct == (outcome.choice == example.gold_index)
        correct += outcome.correct
    assert correct >= 2  # 3/8 measured; ~0.48 on 100 (chance 0.25)

    letter = get_format("letter")
    for example in arc[:4]:
        encoded = letter.encode(example, tokenizer, chat_template=True)
        assert encoded.prompt_text.startswith("<|im_start|>") and encoded.prompt_text.endswith("assistant\n")
        outcome, state = letter.evaluate(executor, encoded, None)
        assert 1 <= outcome.new_tokens <= 10
        assert outcome.layer_applications % layers == 0 and outcome.layer_applications <= layers * 10
        assert state.input_ids.shape == (1, len(encoded.input_ids))
        assert outcome.correct == (strict_letter(outcome.generation, len(example.choices)) == example.gold_index)

    boxed = get_format("boxed")
    example = load_benchmark("dart", "train", limit=1)[0]
    encoded = boxed.encode(example, tokenizer, chat_template=True)
    skip = LayerPath(tuple(l for l in range(layers) if l != layers - 2), layers)
    for path in (None, skip):
        outcome, _ = boxed.evaluate(executor, encoded, path)
        steps = layers if path is None else layers - 1
        assert 1 <= outcome.new_tokens <= 15 and outcome.layer_applications <= steps * 15
        assert isinstance(outcome.prediction, str) and isinstance(outcome.correct, bool)
        assert outcome.correct == any(math_equal(extract_boxed(outcome.generation), g) for g in encoded.gold)
