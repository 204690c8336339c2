"""The analysis behind RESULTS.md's study 4 (bench/confidence_allocation.py, bench/listed_vs_cloze.py) on
constructed per-prompt records whose answers are worked out by hand."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import confidence_allocation as study  # noqa: E402
import listed_vs_cloze  # noqa: E402

L = 30


def outcome(choice, scores, correct):
    return {"choice": choice, "scores": scores, "correct": correct}


def record(index, lens_margin, final_margin, safe_paths: set[str]):
    """A prompt whose full model picks option 0 (correct) by `final_margin`; the paths in `safe_paths` keep it,
    every other one flips to option 1 (wrong)."""
    base = outcome(0, [0.0, -final_margin], True)
    kept, flipped = outcome(0, [0.0, -final_margin], True), outcome(1, [-1.0, 0.0], False)
    names = study.candidate_paths(L, {"safe_rate": RANKING})
    reads = {str(layer): {"margin": lens_margin, "cost": 0.1} for layer in study.READ_LAYERS}
    return {"id": f"p{index}", "base": base, "reads": reads,
            "paths": {name: kept if name in safe_paths else flipped for name in names}}


RANKING = [0.5] * L
for _rank, _layer in enumerate([17, 18, 15, 16, 20, 21, 22, 23, 24]):
    RANKING[_layer] = 0.9 - 0.01 * _rank


def test_rank_prompts_give_the_safe_rates_and_the_epsilon_table():
    base = outcome(0, [-1.0, -1.5], True)
    skips = {str(layer): outcome(0, [-1.0, -1.5], True) for layer in range(L)}
    skips["0"] = outcome(0, [-3.0, -3.4], True)    # broken: same option, collapsed score
    skips["1"] = outcome(1, [-1.6, -1.0], False)   # flipped
    rank = [{"id": "a", "base": base, "skips": skips}]
    ranking = study.build_ranking(rank, L)
    assert ranking["safe_rate"][0] == 1.0 and ranking["safe_rate"][1] == 0.0 and ranking["safe_rate"][2] == 1.0
    table = {row["epsilon"]: row["rates"] for row in study.epsilon_table(rank, L)}
    assert table[None][0] == 1.0 and table[0.2][0] == 0.0 and table[0.2][2] == 1.0


def test_the_allocation_spends_its_skips_on_the_confident_prompts():
    # four fitting prompts with lens margins 1..4: at mean budget 2 (K = 4 at share 0.5) the two most confident
    # get 4 skips; on the evaluated prompts only the confident ones keep their answer with 4 skips
    fit = [record(i, float(i + 1), 1.0, set()) for i in range(4)]
    chosen = study.policies({"safe_rate": RANKING}, {"choices": fit}, L)
    confident = [record(10 + i, 5.0, 1.0, {"ge12@4", "ge8@4"}) for i in range(2)]
    unsure = [record(20 + i, 0.5, 1.0, set()) for i in range(2)]
    result = study.evaluate_policy(confident + unsure, chosen["sure-options(R=12)@2"])
    assert result["agree"].tolist() == [1, 1, 1, 1]          # confident skip safely, unsure skip nothing
    assert result["saved"] == pytest.approx((4 + 4 + 0 + 0) / 4 - 0.1)  # net of the read
    static = study.evaluate_policy(confident + unsure, chosen["safest@2"])
    assert static["agree"].tolist() == [0, 0, 0, 0] and static["saved"] == 2.0
    assert study.candidate_paths(L, {"safe_rate": RANKING})["safest@2"] == [17, 18]
    assert study.candidate_paths(L, {"safe_rate": RANKING})["ge12@4"] == [17, 18, 15, 16]


def test_generation_prompts_take_their_own_thresholds_and_are_judged_by_their_answer_text():
    # choice margins fitted on 1..4, generation margins on 0.1..0.4: a generation prompt at 0.35 is confident on its
    # own scale (K = 4 at mean budget 2) though far below every choice threshold
    fit = [record(i, float(i + 1), 1.0, set()) for i in range(4)]
    fitgen = [{"id": f"g{i}", "kind": "generate", "reads": {str(layer): {"margin": 0.1 * (i + 1), "cost": 0.05}
                                                            for layer in study.READ_LAYERS}} for i in range(4)]
    chosen = study.policies({"safe_rate": RANKING}, {"choices": fit, "generate": fitgen}, L)
    answer = {"choice": None, "correct": False, "score": 0.5, "prediction": "Paris"}
    other = {"choice": None, "correct": False, "score": 0.25, "prediction": "Lyon"}
    prompt = {"id": "q", "kind": "generate", "base": answer,
              "reads": {str(layer): {"margin": 0.35, "cost": 0.05} for layer in study.READ_LAYERS},
              "paths": {"ge12@4": other}}
    result = study.evaluate_policy([prompt], chosen["sure-options(R=12)@2"])
    assert result["agree"].tolist() == [0] and result["saved"] == pytest.approx(4 - 0.05)
    assert result["correct"].tolist() == [0.25] and result["base_correct"].tolist() == [0.5]  # token F1
    family = study.families({"safe_rate": RANKING}, {"choices": fit, "generate": fitgen}, 12)
    # calib computes only the allocation's paths, ood the static baselines too
    assert study.needed_paths(prompt, family, 12, "calib") == {f"ge12@{round(2 * b)}" for b in study.MEAN_BUDGETS}
    assert study.needed_paths(prompt, family, 12, "ood") >= {"safest@2", "safest@4"}
    assert study.needed_paths(prompt, family, 12, "eval") is None


def test_calibration_never_shares_an_item_with_eval():
    sizes = {"rank_arc_easy": 3, "rank_arc_challenge": 2, "calib_arc_easy": 5, "calib_arc_challenge": 4,
             "eval_arc_easy": 50, "eval_arc_challenge": 40, "calib_extra": "test", "ood": 2, "fitgen": 2}
    ids = {role: [e.id for _, e in study.role_examples(role, sizes)] for role in ("rank", "calib", "eval")}
    assert len(ids["eval"]) == 90 and len(set(ids["calib"])) == len(ids["calib"])
    assert not set(ids["calib"]) & set(ids["eval"]) and not set(ids["rank"]) & set(ids["calib"])
    without = dict(sizes, calib_extra="none")
    assert len(study.role_examples("calib", without)) == 9
    assert [e.id for _, e in study.role_examples("eval", without)] == ids["eval"]  # the same eval either way


def test_listed_against_cloze_on_constructed_records():
    records = [{"cloze": {"choice": c, "correct": c == 0, "margin": m, "reads": {"8": m / 2}},
                "listed": {"choice": l, "correct": l == 0, "margin": -m, "reads": {"8": m}}}
               for c, l, m in ((0, 0, 1.0), (1, 0, 2.0), (0, 1, 3.0), (0, 0, 4.0))]
    result = listed_vs_cloze.compare(records, [8])
    assert result["n"] == 4 and result["same_choice"] == 0.5
    assert result["cloze_accuracy"] == 0.75 and result["listed_accuracy"] == 0.75
    assert result["cloze_spearman_R8"] == pytest.approx(1.0) and result["listed_spearman_R8"] == pytest.approx(-1.0)
    assert np.isfinite(result["listed_spearman_R8"])


def test_flips_net_the_accuracy_drop_and_split_the_full_models_accuracy():
    right, wrong = outcome(0, [0.0, -1.0], True), outcome(1, [-1.0, 0.0], False)
    records = [{"base": right, "paths": {"k": wrong}}, {"base": wrong, "paths": {"k": right}},
               {"base": right, "paths": {"k": right}}, {"base": wrong, "paths": {}}]
    skip_first_three = lambda r: ("k", 2, 0.0) if r["paths"] else (None, 0, 0.0)  # noqa: E731
    f = study.flips(records, skip_first_three)
    assert (f["losses"], f["gains"], f["skipped"]) == (0.25, 0.25, 0.75)
    assert f["skipped_accuracy"] == pytest.approx(2 / 3) and f["kept_accuracy"] == 0.0
