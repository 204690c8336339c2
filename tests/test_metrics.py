"""Evaluation metrics (SQuAD F1/EM, lm-eval gsm8k strict-match, Wilson and bootstrap intervals) on hand-worked
cases, and the out-of-domain answer formats built on them (gsm8k, qa): prompts, grading, evaluation along paths
on a tiny random model; one slow test on the real SmolLM2."""
from __future__ import annotations

import math

import pytest

from drllm.data.examples import Example
from drllm.core.executor import PathExecutor
from drllm.evaluation.metrics import bootstrap_interval, paired_bootstrap_delta, wilson_interval
from drllm.core.paths import LayerPath
from drllm.formats.answers import GSM8KFormat, QAFormat, get_format
from drllm.formats.grading import (Outcome, exact_match, first_answer_line, gsm8k_equal, gsm8k_normalize, gsm8k_strict,
                                   max_over_golds, normalize_answer, token_f1)
from drllm.formats.prompts import GSM8K_INSTRUCTION, QA_INSTRUCTION, QA_INSTRUCTION_NO_CONTEXT
from test_tasks import StubExecutor, byte_tokenizer, math_example, mc_example, model


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def gsm8k_example(answer="42", question="Tom has 40 apples and buys 2. How many apples?"):
    return Example(id="g1", benchmark="gsm8k", split="test", question=question, answer=answer, answers=[answer],
                   source="test")


def squad_example(answers=("Denver Broncos", "Broncos"), context="The Denver Broncos won Super Bowl 50."):
    answers = list(answers)
    return Example(id="s1", benchmark="squad", split="validation", question="Who won Super Bowl 50?",
                   context=context, answer=answers[0] if answers else "", answers=answers, source="test")


# -- SQuAD normalisation, F1, exact match ----------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("The  Big, red-dog!", "big reddog"),        # punctuation is deleted, not replaced by a space
    ("An apple a day", "apple day"),
    ("theater, anthem", "theater anthem"),       # articles only as whole words
    ("  Denver\tBroncos\n", "denver broncos"),
    ("THE", ""), ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_token_f1_by_hand():
    # [big, red, dog] vs [red, dog]: 2 shared, precision 2/3, recall 2/2, F1 = 2*(2/3)*1/(2/3+1) = 0.8
    assert token_f1("the big red dog", "a red dog") == pytest.approx(0.8)
    # bags, not sets: [dog, dog] vs [dog] shares 1 token: precision 1/2, recall 1, F1 2/3
    assert token_f1("dog dog", "dog") == pytest.approx(2 / 3)
    assert token_f1("Denver Broncos!", "the denver broncos") == 1.0
    assert token_f1("Carolina Panthers", "Denver Broncos") == 0.0


def test_empty_answers():
    assert token_f1("", "") == 1.0 and exact_match("", "") == 1.0
    assert token_f1("", "Broncos") == 0.0 and token_f1("Broncos", "") == 0.0
    assert token_f1("the", "") == 1.0  # "the" normalises to nothing: an abstention
    assert exact_match("Broncos", "") == 0.0


def test_exact_match():
    assert exact_match("The Broncos.", "broncos") == 1.0
    assert exact_match("Denver Broncos", "Broncos") == 0.0


def test_max_over_golds_and_unanswerable():
    golds = ["Denver Broncos", "Broncos", "the Denver team"]
    assert max_over_golds(token_f1, "Broncos", golds) == 1.0
    assert max_over_golds(token_f1, "Denver", golds) == pytest.approx(2 / 3)  # 1 of 2 tokens: P 1, R 1/2
    assert max_over_golds(exact_match, "Denver", golds) == 0.0
    # unanswerable (SQuAD v2): no gold, or only golds that normalise to nothing, means the gold ""
    for unanswerable in ([], ["", " a "]):
        assert max_over_golds(token_f1, "", unanswerable) == 1.0
        assert max_over_golds(exact_match, "", unanswerable) == 1.0
        assert max_over_golds(token_f1, "Denver", unanswerable) == 0.0


# -- GSM8K strict-match ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("She has 1,000 + 234 = 1,234 eggs.\n#### 1,234.", "1234"),
    ("#### -5", "-5"),
    ("#### 3\nwait, no\n#### 4", "3"),            # the first match, as lm-eval's group_select 0
    ("#### 2.50", "2.50"),
    ("#### $18", None),                           # the regex wants the number right after "#### "
    ("####42", None),
    ("The answer is 42", None), ("", None), (None, None),
])
def test_gsm8k_strict(text, expected):
    assert gsm8k_strict(text) == expected


def test_gsm8k_equal():
    assert gsm8k_equal("1234", "1,234") and gsm8k_equal("1000", "1,000.") and gsm8k_equal("18", "$18")
    assert gsm8k_equal("18", "Janet sells 9 eggs at $2: 9*2 = 18\n#### 18")  # a full solution as gold
    assert not gsm8k_equal("18", "18.0")  # lm-eval compares strings, not numbers
    assert not gsm8k_equal("-5", "5")
    assert not gsm8k_equal(None, "3") and not gsm8k_equal("3", None) and not gsm8k_equal("", "")
    assert gsm8k_normalize(" $1,000. ") == "1000"


# -- intervals -------------------------------------------------------------------------------------------------

def test_wilson_by_hand():
    # 8/10, z = 1.96: p = 0.8, z^2/n = 0.38416, denominator 1.38416;
    # center = (0.8 + 0.19208) / 1.38416 = 0.716738; half = 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.226581
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(1 - high)  # symmetric around 1/2
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n must be"):
        wilson_interval(0, -1)


def test_bootstrap_interval():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0.5, 0.25]
    mean = sum(values) / len(values)
    first = bootstrap_interval(values, seed=7)
    assert first == bootstrap_interval(values, seed=7)  # seeded: reproducible
    assert first[0] < mean < first[1]
    narrow = bootstrap_interval(values, seed=7, level=0.5)
    assert first[0] <= narrow[0] < narrow[1] <= first[1]
    assert bootstrap_interval([0.3] * 5, seed=0) == pytest.approx((0.3, 0.3))
    assert all(math.isnan(x) for x in bootstrap_interval([], seed=0))
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval(values, seed=0, resamples=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(values, seed=0, level=95)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_interval([1.0, float("nan")], seed=0)


def test_paired_bootstrap_delta():
    scores = [1, 0, 1, 1, 0.5]
    assert paired_bootstrap_delta(scores, scores, seed=3) == (0.0, 0.0, 0.0)
    assert paired_bootstrap_delta([1, 1, 1], [0, 0, 0], seed=3) == (1.0, 1.0, 1.0)
    delta, low, high = paired_bootstrap_delta([1, 1, 0, 1, 1, 0], [0, 1, 0, 0, 1, 1], seed=3)
    assert delta == pytest.approx(1 / 6) and low <= delta <= high
    assert (delta, low, high) == paired_bootstrap_delta([1, 1, 0, 1, 1, 0], [0, 1, 0, 0, 1, 1], seed=3)
    assert all(math.isnan(x) for x in paired_bootstrap_delta([], [], seed=0))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_delta([1, 0], [1], seed=0)


# -- formats: registry, metric names, scores --------------------------------------------------------------------

def test_registry_options_and_metric_names():
    assert isinstance(get_format("gsm8k"), GSM8KFormat) and get_format("gsm8k").max_new_tokens == 256
    assert isinstance(get_format("qa"), QAFormat) and get_format("qa").max_new_tokens == 32
    assert get_format("qa", max_new_tokens=16).max_new_tokens == 16
    assert get_format("qa", max_new_tokens=16) == get_format("qa", max_new_tokens=16) != get_format("qa")
    assert repr(get_format("gsm8k", max_new_tokens=8)) == "get_format('gsm8k', max_new_tokens=8)"
    with pytest.raises(ValueError, match="'temperature'.*max_new_tokens"):
        get_format("qa", temperature=0.1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        get_format("gsm8k", max_new_tokens=0)
    assert {name: get_format(name).metric for name in ("letter", "boxed", "gsm8k", "qa", "cloze")} == \
           {"letter": "strict_letter", "boxed": "math_equiv", "gsm8k": "strict_match", "qa": "f1",
            "cloze": "acc_norm"}
    assert get_format("cloze", normalize="none").metric == "acc"


def test_outcome_score():
    assert Outcome(True, "A", 1, 1).score == 1.0 and Outcome(False, "A", 1, 1).score == 0.0
    assert Outcome(False, "Denver", 1, 1, score=0.5).score == 0.5
    with pytest.raises(ValueError, match="score"):
        Outcome(True, "A", 1, 1, score=1.5)


def test_existing_formats_set_scores(tok):
    letter = get_format("letter")
    encoded = letter.encode(mc_example(), tok)
    assert letter.evaluate(StubExecutor(tok, "B"), encoded, None)[0].score == 1.0
    assert letter.evaluate(StubExecutor(tok, "C"), encoded, None)[0].score == 0.0
    boxed = get_format("boxed")
    assert boxed.evaluate(StubExecutor(tok, "\\boxed{0.5}"), boxed.encode(math_example(), tok), None)[0].score == 1.0
    cloze = get_format("cloze")
    outcome, _ = cloze.evaluate(PathExecutor(model()), cloze.encode(mc_example(), tok), None)
    assert outcome.score == float(outcome.correct)


# -- prompts ---------------------------------------------------------------------------------------------------

def test_gsm8k_prompt(tok):
    text = f"Tom has 40 apples and buys 2. How many apples?\n{GSM8K_INSTRUCTION}"
    assert "#### <number>" in GSM8K_INSTRUCTION
    encoded = get_format("gsm8k").encode(gsm8k_example(), tok, chat_template=True)
    assert encoded.prompt_text == f"<s>[user] {text}\n[assistant] "
    assert (encoded.kind, encoded.format, encoded.max_new_tokens, encoded.gold) == ("generate", "gsm8k", 256, ("42",))
    plain = get_format("gsm8k", max_new_tokens=8).encode(gsm8k_example(), tok, chat_template=False)
    assert plain.prompt_text == text and plain.max_new_tokens == 8
    assert plain.input_ids == [1] + tok(text, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="gsm8k.*no gold answer"):
        get_format("gsm8k").encode(gsm8k_example(answer=" "), tok)


def test_qa_prompt(tok):
    encoded = get_format("qa").encode(squad_example(), tok, chat_template=False)
    assert encoded.prompt_text == ("The Denver Broncos won Super Bowl 50.\n\nQuestion: Who won Super Bowl 50?\n"
                                   f"{QA_INSTRUCTION}")
    assert (encoded.kind, encoded.max_new_tokens, encoded.gold) == ("generate", 32, ("Denver Broncos", "Broncos"))
    open_ended = get_format("qa").encode(squad_example(context=None), tok, chat_template=True)
    assert open_ended.prompt_text == f"<s>[user] Question: Who won Super Bowl 50?\n{QA_INSTRUCTION_NO_CONTEXT}\n" \
                                     "[assistant] "
    assert get_format("qa").encode(squad_example(answers=()), tok).gold == ()  # unanswerable


# -- grading hand-written generations --------------------------------------------------------------------------

@pytest.mark.parametrize("text,correct,prediction", [
    ("blah\n#### 42", True, "42"), ("40 + 2 = 42\n#### 42.", True, "42"), ("#### 42\n#### 41", True, "42"),
    ("#### 41", False, "41"), ("The answer is 42.", False, "The answer is 42."), ("  ", False, ""),
])
def test_gsm8k_grade(tok, text, correct, prediction):
    fmt = get_format("gsm8k")
    outcome = fmt.grade(fmt.encode(gsm8k_example(), tok), text, 12, 3)
    assert (outcome.correct, outcome.prediction, outcome.score) == (correct, prediction, float(correct))
    assert (outcome.layer_applications, outcome.new_tokens, outcome.generation) == (12, 3, text)
    thousands = fmt.grade(fmt.encode(gsm8k_example(answer="1,000"), tok), "#### 1000", 1, 1)
    assert thousands.correct


@pytest.mark.parametrize("text,golds,score,correct,prediction", [
    ("Denver Broncos\nmore", ("Denver Broncos", "Broncos"), 1.0, True, "Denver Broncos"),
    ("\n  the Broncos.  \n", ("Denver Broncos", "Broncos"), 1.0, True, "the Broncos."),
    ("Answer: Broncos", ("Denver Broncos",), 2 / 3, False, "Broncos"),   # P 1, R 1/2
    ("the Denver team", ("Denver Broncos",), 0.5, False, "the Denver team"),  # [denver, team]: P 1/2, R 1/2
    ("Carolina", ("Denver Broncos",), 0.0, False, "Carolina"),
    ("", (), 1.0, True, ""),                  # unanswerable, abstained
    ("Denver", (), 0.0, False, "Denver"),     # unanswerable, answered anyway
])
def test_qa_grade(tok, text, golds, score, correct, prediction):
    fmt = get_format("qa")
    outcome = fmt.grade(fmt.encode(squad_example(answers=golds), tok), text, 8, 2)
    assert outcome.score == pytest.approx(score)
    assert (outcome.correct, outcome.prediction, outcome.generation) == (correct, prediction, text)


def test_first_answer_line():
    assert first_answer_line("\n\nanswer:  Denver \nmore") == "Denver"
    assert first_answer_line("Broncos") == "Broncos"
    assert first_answer_line(None) == "" and first_answer_line(" \n") == ""


def test_grading_through_evaluate(tok):
    fmt = get_format("qa")
    stub = StubExecutor(tok, "Broncos\nand more")
    outcome, state = fmt.evaluate(stub, fmt.encode(squad_example(), tok), [0, 2, 3])
    assert (outcome.score, outcome.correct, outcome.prediction) == (1.0, True, "Broncos") and state == "PREFILL"
    assert stub.calls[0]["max_new_tokens"] == 32 and stub.calls[0]["path"] == [0, 2, 3]


# -- evaluation along paths on a tiny random model -------------------------------------------------------------

@pytest.mark.parametrize("name,example", [("gsm8k", gsm8k_example()), ("qa", squad_example())])
def test_evaluate_along_paths(tok, name, example):
    tiny = model()
    tiny.generation_config.eos_token_id = 2
    executor = PathExecutor(tiny)
    fmt = get_format(name, max_new_tokens=6)
    encoded = fmt.encode(example, tok, chat_template=True)
    for path in [None, LayerPath((0, 1, 1, 3), 4), (0, 2)]:
        outcome, state = fmt.evaluate(executor, encoded, path)
        steps = 4 if path is None else len(path)
        assert fmt.metric == ("strict_match" if name == "gsm8k" else "f1")
        assert 0.0 <= outcome.score <= 1.0 and isinstance(outcome.correct, bool)
        assert 1 <= outcome.new_tokens <= 6
        # one pass of the path for the prefill (first token) and one per further decode step
        assert outcome.layer_applications == outcome.new_tokens * steps
        assert state.path == executor.as_path(path)
        free = executor.generate(state.input_ids, None, path, max_new_tokens=6, eos_token_id=2)
        tokens = free.tokens[0, :int(free.num_new[0])].tolist()
        assert outcome.generation == tok.decode([t for t in tokens if t != 2], skip_special_tokens=True)
        assert outcome == fmt.grade(encoded, outcome.generation, outcome.layer_applications, outcome.new_tokens)


# -- the real model --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_gsm8k_and_qa(smollm2):
    from drllm.data.registry import load_benchmark

    model_, tokenizer = smollm2
    executor = PathExecutor(model_)
    layers = executor.num_layers
    skip = LayerPath(tuple(l for l in range(layers) if l != layers - 2), layers)
    # gsm8k capped at 64 tokens (same code path as the default 256; SmolLM2 rambles to the cap on CPU)
    runs = [(get_format("gsm8k", max_new_tokens=64), load_benchmark("gsm8k", "test", limit=2)),
            (get_format("qa"), load_benchmark("squad", "validation", limit=2))]
    for fmt, examples in runs:
        for example in examples:
            encoded = fmt.encode(example, tokenizer, chat_template=True)
            assert encoded.prompt_text.startswith("<|im_start|>") and encoded.prompt_text.endswith("assistant\n")
            for path, steps in [(None, layers), (skip, layers - 1)]:
                outcome, _ = fmt.evaluate(executor, encoded, path)
                assert 1 <= outcome.new_tokens <= fmt.max_new_tokens
                assert outcome.layer_applications == outcome.new_tokens * steps
                assert 0.0 <= outcome.score <= 1.0 and isinstance(outcome.correct, bool)
                assert isinstance(outcome.prediction, str) and isinstance(outcome.generation, str)
                assert outcome == fmt.grade(encoded, outcome.generation, outcome.layer_applications,
                                            outcome.new_tokens)
