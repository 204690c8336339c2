"""The early confidence read (drllm.routing.confidence), the skip allocation it drives (drllm.routing.allocation),
its certification, its stage and its evaluation method (sure@<b>, sure@certified)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_model
from drllm.core.executor import ChoiceBatch, PathExecutor
from drllm.core.paths import LayerPath
from drllm.evaluation.methods import cell_artifacts, frontier_line, is_frontier_point, needs_search, parse_method
from drllm.formats.answers import get_format
from drllm.formats.prompts import Encoded
from drllm.routing.allocation import (AllocationPoint, allocation_family, allocation_path, budget_for, fit_threshold,
                                      safe_order, skips_for)
from drllm.routing.allocation_settings import AllocationConfig
from drllm.evaluation.allocation_stage import Allocation, certify_budget
from drllm.calibration.calibration import PointLosses
from drllm.calibration.certify import CertifyConfig
from drllm.routing.confidence import block_macs_per_token, read_confidence

OPTIONS = ("ab", "cde", "f")


def choice_encoded():
    context = [1, 5, 9, 14, 3]
    options = [[20, 21], [22, 23, 20], [30]]
    batch = ChoiceBatch.build([(context, option) for option in options])
    return Encoded(example_id="x", kind="choices", prompt_text="", input_ids=None, batch=batch, max_new_tokens=0,
                   gold=1, format="cloze", options=OPTIONS), context, options


def hidden_states(model, ids):
    out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states  # [0] = embeddings = the stream entering block 0; [R] = entering block R


@pytest.mark.parametrize("lens", ["options", "full"])
def test_choice_read_equals_a_hand_computed_lens(lens):
    model = tiny_model(layers=4)
    executor = PathExecutor(model)
    encoded, context, options = choice_encoded()
    read_layer = 2
    vocabulary = sorted({t for option in options for t in option}) if lens == "options" else list(range(97))
    sums = []
    for option in options:
        ids = context + option
        states = hidden_states(model, ids[:-1])
        entering = states[read_layer][0]
        total = 0.0
        for offset, target in enumerate(option):
            position = len(context) - 1 + offset
            logits = model.lm_head(model.model.norm(entering[position]))[vocabulary]
            total += float(torch.log_softmax(logits, -1)[vocabulary.index(target)])
        sums.append(total)
    scores = [s / len(o) for s, o in zip(sums, OPTIONS)]
    best, second = sorted(scores, reverse=True)[:2]

    read = read_confidence(executor, get_format("cloze"), encoded, read_layer, lens)

    assert read.margin == pytest.approx(best - second, abs=1e-5)
    assert read.choice == int(np.argmax(scores))
    assert read.lens_vocabulary == len(vocabulary)
    # saturation: cosine of the last position's stream entering R and R-1, averaged over the option rows
    cosines = []
    for option in options:
        states = hidden_states(model, (context + option)[:-1])
        cosines.append(float(torch.nn.functional.cosine_similarity(states[read_layer][0, -1],
                                                                   states[read_layer - 1][0, -1], dim=0)))
    assert read.saturation == pytest.approx(np.mean(cosines), abs=1e-5)
    # cost: positions x hidden x vocabulary against one block on the batch's tokens
    positions = sum(len(o) for o in options)
    tokens = sum(len(context) + len(o) - 1 for o in options)
    assert read.cost_blocks == pytest.approx(positions * 64 * len(vocabulary) / (tokens * block_macs_per_token(executor)))


def test_block_macs_count_the_weight_matrices():
    executor = PathExecutor(tiny_model(layers=2))
    # q (64x64), k and v (32x64 each: 2 KV heads of 16), o (64x64), gate/up (128x64), down (64x128)
    assert block_macs_per_token(executor) == 64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3


def test_generation_read_is_the_next_token_top2_gap():
    model = tiny_model(layers=4)
    executor = PathExecutor(model)
    ids = [1, 7, 8, 9, 10, 11]
    encoded = Encoded(example_id="g", kind="generate", prompt_text="", input_ids=ids, batch=None, max_new_tokens=4,
                      gold=("x",), format="qa")
    states = hidden_states(model, ids)
    probs = torch.softmax(model.lm_head(model.model.norm(states[3][0, -1])), -1)
    top = torch.topk(probs, 2).values
    read = read_confidence(executor, get_format("qa"), encoded, 3)
    assert read.margin == pytest.approx(float(top[0] - top[1]), abs=1e-6)
    assert read.choice is None


def test_read_layer_and_lens_are_checked():
    executor = PathExecutor(tiny_model(layers=4))
    encoded, _, _ = choice_encoded()
    for layer in (0, 4, 2.0):
        with pytest.raises(ValueError, match="read_layer must be an integer in \\[1, 3\\]"):
            read_confidence(executor, get_format("cloze"), encoded, layer)
    with pytest.raises(ValueError, match="lens must be one of"):
        read_confidence(executor, get_format("cloze"), encoded, 2, "logits")


def test_a_routed_forward_resumed_after_the_read_equals_a_fresh_one():
    model = tiny_model(layers=6)
    executor = PathExecutor(model)
    encoded, _, _ = choice_encoded()
    fmt = get_format("cloze")
    from drllm.routing.confidence import prefix_state

    state = prefix_state(executor, encoded, 3)
    path = allocation_path(6, [4, 3, 5], 2)
    resumed, _ = fmt.evaluate(executor, encoded, path, resume=state, resume_step=3)
    fresh, _ = fmt.evaluate(executor, encoded, path)
    assert path.layers == (0, 1, 2, 5)
    assert resumed.scores == pytest.approx(fresh.scores, abs=1e-5)


@pytest.mark.parametrize("budget, skips", [(2.0, 4), (1.0, 2), (3.0, 6)])
def test_the_allocation_mean_equals_the_configured_budget(budget, skips):
    margins = np.random.default_rng(0).normal(size=40)
    threshold = fit_threshold(margins, budget, skips)
    given = [budget_for(m, threshold, skips) for m in margins]
    assert np.mean(given) == budget
    # monotone: every prompt at least as confident as one that gets skips gets them too
    assert min(m for m, g in zip(margins, given) if g) > max(m for m, g in zip(margins, given) if not g)


def test_family_is_ordered_and_sized_by_the_share():
    margins = list(range(10))
    family = allocation_family(margins, [2, 0.5, 1], 0.5, 8)
    assert [p.mean_budget for p in family] == [0.5, 1.0, 2.0]
    assert [p.max_skips for p in family] == [1, 2, 4]
    assert [p.threshold for p in family] == [5, 5, 5]  # half the prompts confident each time
    assert fit_threshold(margins, 0.2, 4) == math.inf  # round(10 * 0.05) = 0 prompts
    with pytest.raises(ValueError, match="needs 10 blocks at or after the read layer, but only 8"):
        skips_for(5, 0.5, 8)


def test_safe_order_and_paths():
    safety = [0.9, 0.1, 0.5, 0.8, 0.8, 0.2]
    assert safe_order(safety, 2) == [3, 4, 2, 5]  # ties: the earlier block, as safest@k ranks them
    assert allocation_path(6, [3, 4, 2, 5], 2) == LayerPath((0, 1, 2, 5), 6)
    assert allocation_path(6, [3, 4], 0) == LayerPath.default(6)


def test_learn_then_test_refuses_the_allocation_when_n_is_too_small():
    config = CertifyConfig(epsilon=0.01, delta=0.1)
    few = {b: PointLosses([0.0] * 50, [0.0] * 50, [b] * 50) for b in (1.0, 2.0)}
    refused = certify_budget(few, config)
    assert not refused["certified"] and refused["mean_budget"] is None
    assert "needs >= 470" in refused["certificate"]["reason"]
    many = {1.0: PointLosses([0.0] * 900, [0.0] * 900, [0.9] * 900),
            2.0: PointLosses([0.0] * 900, [1.0] * 100 + [0.0] * 800, [1.9] * 900)}
    chosen = certify_budget(many, config)
    assert chosen["certified"] and chosen["mean_budget"] == 1.0 and chosen["mean_layers_saved"] == pytest.approx(0.9)


def test_allocation_settings_name_the_field():
    assert AllocationConfig().budgets == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="allocate.read_layer must be an integer >= 1"):
        AllocationConfig.from_dict({"read_layer": 0})
    with pytest.raises(ValueError, match="allocate.budgets: every mean budget must be a number > 0"):
        AllocationConfig.from_dict({"budgets": [1, -2]})
    with pytest.raises(ValueError, match="allocate.lens must be one of"):
        AllocationConfig.from_dict({"lens": "tuned"})
    with pytest.raises(ValueError, match="allocate"):
        AllocationConfig.from_dict({"read_layers": 3})


def test_method_grammar():
    assert parse_method("sure@2") == ("sure", 2.0)
    assert parse_method("sure@1.5") == ("sure", 1.5)
    assert parse_method("sure@certified") == ("sure", "certified")
    for bad, message in (("sure", "needs a mean budget"), ("sure@0", "number > 0"), ("sure@2.0", ":g"),
                         ("sure@x", "number > 0 or 'certified'")):
        with pytest.raises(ValueError, match=message):
            parse_method(bad)
    assert cell_artifacts("sure@2") == {"allocation": "{routers}/allocation.json"}
    assert needs_search("sure@certified")
    assert frontier_line("sure@2") == "sure@b" and is_frontier_point("sure@certified")


def test_allocation_file_points_and_kinds():
    record = {"read_layer": 2, "lens": "options", "share": 0.5, "order": [3, 2], "num_layers": 4,
              "fit_margins": {"choices": [0.0, 1.0, 2.0, 3.0]}, "certified": {"certified": True, "mean_budget": 1.0}}
    allocation = Allocation(record)
    points = allocation.point(1.0)
    assert points == {"choices": AllocationPoint(1.0, 2, 2.0)}
    assert allocation.skips(points, "choices", 2.5) == 2 and allocation.skips(points, "choices", 1.0) == 0
    assert allocation.skips(points, "generate", 9.0) == 0  # nothing fitted on that scale
    assert allocation.certified_budget() == 1.0
    assert allocation.certified_points() == points  # a file without `kinds`: every fitted kind
    with pytest.raises(Exception, match="not an allocation file"):
        Allocation({"lens": "options"}, "a.json")


def test_the_certificate_covers_only_the_kinds_of_prompt_it_was_measured_on():
    """Choice calibration prompts certify nothing about generation prompts: sure@certified runs the full model there,
    while sure@<b> still spends the budget on both."""
    record = {"read_layer": 2, "lens": "options", "share": 0.5, "order": [3, 2], "num_layers": 4,
              "fit_margins": {"choices": [0.0, 1.0, 2.0, 3.0], "generate": [0.1, 0.2, 0.3, 0.4]},
              "certified": {"certified": True, "mean_budget": 1.0, "kinds": ["choices"]}}
    allocation = Allocation(record)
    certified = allocation.certified_points()
    assert set(certified) == {"choices"} and allocation.skips(certified, "generate", 0.4) == 0
    assert allocation.skips(allocation.point(1.0), "generate", 0.4) == 2
    assert allocation.skips(certified, "choices", 2.5) == 2
    refused = Allocation({**record, "certified": {"certified": False, "mean_budget": None, "kinds": ["choices"]}})
    assert refused.certified_points() == {}


@pytest.mark.slow
def test_allocation_stage_and_sure_cells_on_the_embedded_model(smollm2_dir, tmp_path):
    """The stage fits, calibrates and writes the allocation; a sure@<b> cell reads it and records the read's cost."""
    from drllm.data.registry import load_benchmark
    from drllm.data.examples import write_examples
    from drllm.evaluation.baselines import influence_rows, write_influence
    from drllm.evaluation.cells import read_cell
    from drllm.evaluation.stage import CellRequest, run_cell
    from drllm.evaluation.allocation_stage import AllocationRequest, run_allocation
    from drllm.search.prompts import select_prompts, write_prompts

    examples = load_benchmark("arc_easy", "validation", limit=40)
    records = tmp_path / "arc.parquet"
    write_examples(records, examples)
    rows = [example.to_dict() for example in examples]
    prompts = tmp_path / "prompts.parquet"
    write_prompts(prompts, select_prompts(rows, "arc_easy", "cloze", 8, 0))
    unsafe = [0.5] * 30
    for rank, layer in enumerate([18, 17, 16, 19, 20, 21]):
        unsafe[layer] = 0.1 + 0.01 * rank
    safety = tmp_path / "layer_safety.parquet"
    write_influence(safety, influence_rows("smollm2-135m-instruct", unsafe, 16, 0))
    out = tmp_path / "allocation.json"
    calibrate = {"sets": {"arc_easy": {"benchmark": "arc_easy", "split": "validation", "format": "cloze",
                                       "samples": 6}},
                 "certify": {"epsilon": 0.01, "delta": 0.1}}
    record = run_allocation(AllocationRequest(str(smollm2_dir), str(safety), (str(prompts),),
                                              {"arc_easy": str(records)}, {"read_layer": 12, "budgets": [1, 2]},
                                              calibrate, {}, str(out)), log=lambda line: None)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(record))
    assert written["order"][:4] == [18, 17, 16, 19]
    assert len(written["fit_margins"]["choices"]) == 8
    assert [p["max_skips"] for p in written["family"]] == [2, 4]
    assert not written["certified"]["certified"]  # 6 prompts cannot certify 1 point
    assert written["certified"]["kinds"] == ["choices"]
    curve = {(p["set"], p["knob"]): p for p in written["curve"]}
    assert 26.0 <= curve[("arc_easy", 2.0)]["mean_layers"] <= 30.0 and curve[("arc_easy", 2.0)]["n"] == 6
    assert 0.0 < written["read_cost_blocks"] < 0.5

    entry = json.dumps({"name": "arc_easy", "benchmark": "arc_easy", "split": "validation", "format": "cloze",
                        "samples": 6})
    cells = {}
    for method in ("base", "sure@2"):
        cell = tmp_path / f"{method}.parquet"
        run_cell(CellRequest(str(smollm2_dir), entry, method, str(cell), data=str(records),
                             artifacts={"allocation": str(out)}, device="cpu", dtype="float32", progress=False))
        cells[method] = {row["example_id"]: row for row in read_cell(cell)}
    base, sure = cells["base"], cells["sure@2"]
    assert set(base) == set(sure)
    for example_id, row in sure.items():
        assert 0.0 < row["read_blocks"] < 0.5
        assert row["path_length"] in (30, 26)  # none or K = 4 skips
        skipped = set(range(30)) - set(row["path"])
        assert skipped in (set(), {18, 17, 16, 19})
        if not skipped:  # no skips: exactly the base model's answer
            assert row["prediction"] == base[example_id]["prediction"]
    assert all(row["read_blocks"] is None for row in base.values())


def test_a_generation_resumed_after_the_read_equals_a_fresh_one():
    from drllm.routing.confidence import prefix_state

    executor = PathExecutor(tiny_model(layers=6))
    encoded = Encoded(example_id="g", kind="generate", prompt_text="", input_ids=[1, 7, 8, 9, 10], batch=None,
                      max_new_tokens=5, gold=("x",), format="qa", tokenizer=None)
    state = prefix_state(executor, encoded, 3)
    path = allocation_path(6, [4, 3], 1)
    resumed = executor.generate(torch.tensor([encoded.prompt_ids]), None, path, max_new_tokens=5,
                                resume=state, resume_step=3)
    fresh = executor.generate(torch.tensor([encoded.prompt_ids]), None, path, max_new_tokens=5)
    assert resumed.tokens.tolist() == fresh.tokens.tolist()


def test_vocabulary_lens_normalises_over_the_given_tokens_and_the_options():
    model = tiny_model(layers=4)
    executor = PathExecutor(model)
    encoded, context, options = choice_encoded()
    extra = [40, 41, 42, 20]
    vocabulary = sorted(set(extra) | {t for option in options for t in option})
    sums = []
    for option in options:
        entering = hidden_states(model, (context + option)[:-1])[2][0]
        total = 0.0
        for offset, target in enumerate(option):
            logits = model.lm_head(model.model.norm(entering[len(context) - 1 + offset]))[vocabulary]
            total += float(torch.log_softmax(logits, -1)[vocabulary.index(target)])
        sums.append(total)
    scores = sorted((s / len(o) for s, o in zip(sums, OPTIONS)), reverse=True)
    read = read_confidence(executor, get_format("cloze"), encoded, 2, "vocabulary", vocabulary=torch.tensor(extra))
    assert read.margin == pytest.approx(scores[0] - scores[1], abs=1e-5) and read.lens_vocabulary == len(vocabulary)
    with pytest.raises(ValueError, match="needs its token set"):
        read_confidence(executor, get_format("cloze"), encoded, 2, "vocabulary")
