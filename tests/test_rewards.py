"""The search's reward: binary (paper) and robust (margin + epsilon) semantics on constructed outcomes."""
from __future__ import annotations

import math

import pytest

from drllm.search.rewards import RewardConfig, robust_choice_correct
from drllm.formats.grading import Outcome
from drllm.formats.prompts import Encoded


def choices(gold=0, fmt="cloze"):
    return Encoded(example_id="x", kind="choices", prompt_text="", input_ids=None, batch=None, max_new_tokens=0,
                   gold=gold, format=fmt, options=("a", "b", "c", "d"))


def generated(fmt="qa"):
    return Encoded(example_id="x", kind="generate", prompt_text="", input_ids=[1], batch=None, max_new_tokens=4,
                   gold=("gold",), format=fmt)


def cloze(scores, gold=0):
    choice = max(range(len(scores)), key=lambda i: scores[i])
    return Outcome(correct=choice == gold, prediction="", layer_applications=1, new_tokens=0, choice=choice,
                   scores=tuple(scores))


FULL = cloze([-1.0, -1.3, -1.5, -2.0])


@pytest.mark.parametrize("scores, binary, robust", [
    ([-1.0, -1.3, -1.5, -2.0], True, True),      # the full model itself: wins by 0.3
    ([-1.05, -1.06, -1.5, -2.0], True, False),   # wins by 0.01 < margin 0.05: a near-tie, not a working answer
    ([-2.0, -2.5, -2.6, -3.0], True, False),     # wins by 0.5, but gold fell 1.0 below the full model (eps 0.2)
    ([-1.15, -1.4, -1.5, -2.0], True, True),     # gold within eps (0.15 <= 0.2) and margin 0.25
    ([-1.3, -1.0, -1.5, -2.0], False, False),    # wrong answer
])
def test_robust_reward_on_constructed_score_vectors(scores, binary, robust):
    strict = RewardConfig(kind="robust", margin=0.05, epsilon=0.2)
    outcome, encoded = cloze(scores), choices()
    assert RewardConfig(kind="binary").correct(outcome, encoded, FULL) is binary
    assert strict.correct(outcome, encoded, FULL) is robust


def test_robust_reward_can_fix_a_wrong_default():
    wrong_default = cloze([-1.4, -1.2, -1.5, -2.0])  # the full model picks option 1
    fixed = cloze([-1.1, -1.3, -1.5, -2.0])          # a shorter path makes gold win by 0.2, gold score rose
    lucky = cloze([-3.0, -3.01, -3.2, -3.3])         # gold "wins" by 0.01 with a collapsed distribution
    reward = RewardConfig(kind="robust", margin=0.05, epsilon=0.2)
    assert reward.correct(fixed, choices(), wrong_default)
    assert not reward.correct(lucky, choices(), wrong_default)
    assert RewardConfig(kind="binary").correct(lucky, choices(), wrong_default)


def test_edge_cases_of_the_robust_rule():
    assert robust_choice_correct([-1.0, -1.05], 0, 0, margin=0.05, epsilon=0.0, reference_scores=[-1.0, -1.2])
    assert not robust_choice_correct([-1.0, -1.05], 0, 0, margin=0.0501, epsilon=0.0)
    assert not robust_choice_correct([-1.0, -1.05], None, 0, margin=0.0, epsilon=math.inf)
    assert robust_choice_correct([-1.0], 0, 0, margin=5.0, epsilon=math.inf)  # one option: no rival


def test_generation_formats_use_the_grade_and_qa_its_f1_threshold():
    reward = RewardConfig(kind="robust", margin=1.0, epsilon=0.0, min_f1=0.5)
    half = Outcome(correct=False, prediction="x", layer_applications=1, new_tokens=1, generation="x", score=0.5)
    low = Outcome(correct=False, prediction="x", layer_applications=1, new_tokens=1, generation="x", score=0.4)
    assert reward.correct(half, generated("qa"), None) and not reward.correct(low, generated("qa"), None)
    boxed = Outcome(correct=True, prediction="4", layer_applications=1, new_tokens=1, generation="\\boxed{4}")
    assert reward.correct(boxed, generated("boxed"), None)
    assert not reward.correct(Outcome(False, "5", 1, 1, generation="5"), generated("boxed"), None)


def test_reward_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"search\.reward\.kind: unknown reward 'soft'; known: \['binary', 'robust', "
                                         r"'agreement'\]"):
        RewardConfig(kind="soft")
    with pytest.raises(ValueError, match="margin"):
        RewardConfig(margin=-0.1)
    with pytest.raises(ValueError, match="min_f1"):
        RewardConfig(min_f1=1.5)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['delta'\]"):
        RewardConfig.from_dict({"delta": 0.1})
    config = RewardConfig.from_dict({"kind": "robust", "margin": 0.02, "epsilon": None})
    assert config.epsilon == math.inf and config.to_dict()["epsilon"] is None
    assert config.describe() == "robust(margin=0.02,epsilon=none,min_f1=0.5)"
