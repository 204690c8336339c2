"""Evaluation cells: methods, benchmark entries, baselines (static, random, oracle) and the stage CLI."""
from __future__ import annotations

import json
import re
import sys

import pytest
import torch

from conftest import REPO, tiny_model
from drllm.core.artifacts import ArtifactError
from drllm.evaluation.baselines import (block_influence, influence_rows, matched_removals, random_path, random_seed,
                                        read_influence, static_path, write_influence)
from drllm.data.examples import Example, write_examples
from drllm.data.registry import load_benchmark
from drllm.data.entries import EvalEntry, sample_examples
from drllm.evaluation.cells import EVAL_SCHEMA, CellContext, EvaluationError, evaluate_examples, read_cell
from drllm.evaluation.methods import Threshold, frontier_line, method_name, parse_method
from drllm.calibration.calibration import CALIBRATED, CERTIFIED, read_calibration
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.search.prompts import select_prompts, write_prompts
from drllm.formats.answers import get_format

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import block_influence as influence_cli  # noqa: E402
import evaluate as evaluate_cli  # noqa: E402


def test_methods_parse_with_clear_errors():
    assert parse_method("base") == ("base", None)
    assert parse_method("router@-0.25") == ("router", -0.25)
    assert parse_method("router@0.5") == ("router", 0.5)
    assert parse_method("static@3") == ("static", 3) and parse_method("random@0") == ("random", 0)
    assert parse_method("router@calibrated") == ("router", CALIBRATED)
    assert parse_method("router@certified") == ("router", CERTIFIED)
    assert parse_method("router@t0.9") == ("router", Threshold(0.9)) and parse_method("safest@2") == ("safest", 2)
    assert frontier_line("router@t0.9") == "router@t" and frontier_line("safest@2") == "safest@k"
    for name in ("base", "router@-0.25", "router@calibrated", "router@certified", "router@t0.95", "static",
                 "static@3", "random@12", "safest", "safest@4", "oracle"):
        assert method_name(*parse_method(name)) == name  # the cell's method column is its file name
    for bad, match in [("greedy", "unknown evaluation method"), ("router@x", "must be a number"),
                       ("router@1.5", "must be in"), ("oracle@2", "unknown evaluation method"),
                       ("base@calibrated", "unknown evaluation method"), ("static@-1", "non-negative integer"),
                       ("static@1.5", "non-negative integer"), ("static@0.1", "non-negative integer"),
                       ("random@x", "non-negative integer"), ("random@02", "non-negative integer"),
                       ("static@calibrated", "non-negative integer"),
                       ("router@t1.5", "after '@t' must be a number >= 0 and <= 1"),
                       ("router@t0.90", "threshold must be written as :g"), ("router@tx", "threshold after '@t'"),
                       ("safest@certified", "non-negative integer")]:
        with pytest.raises(ValueError, match=match) as err:
            parse_method(bad)
        assert repr(bad) in str(err.value)


def test_entries_validate_and_merge_format_options():
    entry = EvalEntry.from_config("gsm", {"benchmark": "gsm8k", "split": "test", "format": "gsm8k",
                                          "options": {"max_new_tokens": 8}},
                                  {"gsm8k": {"max_new_tokens": 96}, "cloze": {"normalize": "chars"}})
    assert entry.options == {"max_new_tokens": 8} and entry.samples is None
    with pytest.raises(ValueError, match="eval.benchmarks.x: unknown key"):
        EvalEntry.from_config("x", {"benchmark": "mmlu", "split": "test", "format": "cloze", "shots": 5})
    with pytest.raises(ValueError, match="eval.benchmarks.x.samples"):
        EvalEntry.from_config("x", {"benchmark": "mmlu", "split": "test", "format": "cloze", "samples": 0})
    with pytest.raises(ValueError, match="eval.benchmarks.x.split"):
        EvalEntry.from_config("x", {"benchmark": "mmlu", "format": "cloze"})


def test_lm_eval_entries_validate():
    entry = EvalEntry.from_config("hs", {"lm_eval": {"task": "hellaswag", "metric": "acc_norm"}, "samples": 50})
    assert entry.lm_eval == {"task": "hellaswag", "metric": "acc_norm"} and entry.samples == 50
    with pytest.raises(ValueError, match="lm_eval.metric must name"):
        EvalEntry.from_config("hs", {"lm_eval": {"task": "hellaswag"}})
    with pytest.raises(ValueError, match=r"\['format'\] do not apply to an lm-eval task"):
        EvalEntry.from_config("hs", {"lm_eval": {"task": "hellaswag", "metric": "acc"}, "format": "cloze"})
    with pytest.raises(ValueError, match=r"eval.benchmarks.hs.lm_eval: unknown key\(s\) \['shots'\]"):
        EvalEntry.from_config("hs", {"lm_eval": {"task": "hellaswag", "metric": "acc", "shots": 5}})
    with pytest.raises(ValueError, match="lm_eval must be a mapping"):
        EvalEntry.from_config("hs", {"lm_eval": "hellaswag"})


def _records(n=30):
    return [Example(id=f"q{i}", benchmark="dart", split="test", question=f"{i}+1?", answer=str(i + 1),
                    answers=[str(i + 1)], level=1 + i % 5, source="test") for i in range(n)]


def test_sample_is_seeded_in_record_order_and_respects_levels():
    entry = EvalEntry("math", "dart", "test", "boxed", samples=5, levels=(2, 3))
    first = sample_examples(_records(), entry, seed=0)
    assert [ex.id for ex in first] == [ex.id for ex in sample_examples(_records(), entry, seed=0)]
    assert [ex.id for ex in first] != [ex.id for ex in sample_examples(_records(), entry, seed=1)]
    assert len(first) == 5 and sorted(ex.level for ex in first) == [2, 2, 2, 3, 3]  # equal shares per level
    indices = [int(ex.id[1:]) for ex in first]
    assert indices == sorted(indices)
    assert len(sample_examples(_records(), EvalEntry("m", "dart", "test", "boxed"), 0)) == 30
    with pytest.raises(ArtifactError, match="no records left"):
        sample_examples(_records(3), EvalEntry("m", "dart", "test", "boxed", levels=(5,)), 0)


def test_block_influence_is_one_minus_cosine_of_block_input_and_output():
    model = tiny_model("llama", layers=4)
    executor = PathExecutor(model)
    prompts = [[1, 5, 9, 13, 17], [1, 22, 7]]
    influence, tokens = block_influence(executor, prompts)
    assert tokens == 8
    # HF hidden_states[l] enters block l; the last entry is normed, so check the blocks before the last
    totals = torch.zeros(3, dtype=torch.float64)
    for ids in prompts:
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in range(3):
            totals[layer] += torch.cosine_similarity(hidden[layer][0], hidden[layer + 1][0], dim=-1).double().sum()
    assert influence[:3] == pytest.approx((1 - totals / 8).tolist(), abs=1e-5)


def test_static_random_and_matching_rules(tmp_path):
    rows = influence_rows("m", [0.5, 0.1, 0.3, 0.05, 0.9], prompts=2, tokens=10)
    assert [row["rank"] for row in rows] == [3, 1, 2, 0, 4]
    write_influence(tmp_path / "bi.parquet", rows)
    rows = read_influence(tmp_path / "bi.parquet", "m", 5)
    assert static_path(rows, 2) == LayerPath((0, 2, 4), 5)
    assert static_path(rows, 0) == LayerPath.default(5)
    with pytest.raises(ArtifactError, match="not for other"):
        read_influence(tmp_path / "bi.parquet", "other", 5)
    router_rows = [{"num_layers": 30, "path_length": n} for n in (26, 27, 28)]  # mean saving 3
    assert matched_removals(router_rows) == 3
    assert matched_removals([{"num_layers": 30, "path_length": 32}]) == 0  # repeats: no saving to match
    assert static_path(rows, 3) == LayerPath((0, 4), 5)  # ranks 0, 1, 2: layers 3, 1, 2
    path = random_path(30, 4, seed=7)
    assert len(path) == 26 and path == random_path(30, 4, seed=7) and path != random_path(30, 4, seed=8)
    assert random_path(30, -2, seed=0) == LayerPath.default(30)


def test_a_failing_example_names_the_cell_and_the_example():
    executor = PathExecutor(tiny_model("llama", layers=4, vocab_size=259))
    from test_tasks import byte_tokenizer, mc_example

    ctx = CellContext(EvalEntry("arc", "arc_easy", "test", "cloze"), "router", "tiny", executor,
                      byte_tokenizer(), get_format("cloze"))
    examples = [mc_example(id="a"), mc_example(id="b")]

    def policy(index, example, encoded):
        if example.id == "b":
            raise RuntimeError("boom")
        return executor.default_path()

    with pytest.raises(EvaluationError, match=r"arc/router: example 'b' \(#1\) failed: RuntimeError: boom"):
        evaluate_examples(ctx, examples, policy, progress=False)
    rows = evaluate_examples(ctx, examples[:1], policy, progress=False)
    assert set(rows[0]) == set(EVAL_SCHEMA.names)
    assert rows[0]["metric"] == "acc_norm" and rows[0]["layer_applications"] == 4 * 4


@pytest.fixture(scope="module")
def cell_inputs(tmp_path_factory, smollm2_dir):
    """Records, routers (random but decisive, saved for the real model) and a block influence file."""
    root = tmp_path_factory.mktemp("eval")
    write_examples(root / "arc.parquet", load_benchmark("arc_easy", "test", limit=12))
    stack = RouterStack(RouterConfig("smollm2-135m-instruct", 30, 576), seed=5)
    with torch.no_grad():
        for router in stack.routers:
            router.fc2.bias.copy_(torch.tensor([1.0, 2.0, -5.0]))  # mostly execute, some skips
            router.fc2.weight.mul_(3.0)
    stack.save_pretrained(root / "routers")
    records = [ex.to_dict() for ex in load_benchmark("arc_easy", "validation", limit=20)]
    write_prompts(root / "prompts.parquet", select_prompts(records, "arc_easy", "cloze", 3, seed=0))
    assert influence_cli.main(["--model-dir", str(smollm2_dir), "--prompts", str(root / "prompts.parquet"),
                               "--device", "cpu", "--out", str(root / "bi.parquet")]) == 0
    return root


def run_cell(root, smollm2_dir, method, out, extra=(), entry=None, settings=None):
    entry = entry or {"name": "arc", "benchmark": "arc_easy", "split": "test", "format": "cloze", "samples": 4}
    settings = settings or {"seed": 0, "oracle": {"samples": 2, "mcts": {"simulations": 3}}}
    return evaluate_cli.main(["--model-dir", str(smollm2_dir), "--data", str(root / "arc.parquet"),
                              "--entry-json", json.dumps(entry), "--method", method,
                              "--settings-json", json.dumps(settings), "--artifact", f"routers={root / 'routers'}",
                              "--artifact", f"router_cell={root / 'router.parquet'}",
                              "--artifact", f"influence={root / 'bi.parquet'}",
                              "--device", "cpu", "--no-progress", "--out", str(out), *extra])


@pytest.mark.slow
def test_every_method_on_the_real_model(cell_inputs, smollm2_dir, capsys):
    root = cell_inputs
    for method in ("base", "router", "router@0.5", "static", "random", "oracle"):
        assert run_cell(root, smollm2_dir, method, root / f"{method}.parquet") == 0, capsys.readouterr().err
    cells = {method: read_cell(root / f"{method}.parquet")
             for method in ("base", "router", "router@0.5", "static", "random", "oracle")}
    ids = [row["example_id"] for row in cells["base"]]
    assert len(ids) == 4 and all([r["example_id"] for r in cells[m]] == ids for m in ("router", "static", "random"))
    assert all(row["path_length"] == 30 and row["layer_applications"] == 30 * 4 for row in cells["base"])
    # knob 0.5 executes every block: the base model's predictions exactly
    assert [(r["prediction"], r["path_length"]) for r in cells["router@0.5"]] == \
        [(r["prediction"], r["path_length"]) for r in cells["base"]]
    assert {r["knob"] for r in cells["router@0.5"]} == {0.5} and {r["knob"] for r in cells["router"]} == {None}
    router_lengths = [r["path_length"] for r in cells["router"]]
    assert min(router_lengths) < 30, "the test routers should skip something"
    saving = round(30 - sum(router_lengths) / len(router_lengths))
    assert {r["path_length"] for r in cells["static"]} == {30 - saving}
    assert [r["path_length"] for r in cells["random"]] == [min(30, n) for n in router_lengths]
    assert len(cells["oracle"]) == 2 and all(r["score"] >= b["score"] for r, b in zip(cells["oracle"], cells["base"]))
    # a method that needs inputs it was not given fails clearly
    code = evaluate_cli.main(["--model-dir", str(smollm2_dir), "--data", str(root / "arc.parquet"),
                              "--entry-json", json.dumps({"name": "arc", "benchmark": "arc_easy", "split": "test",
                                                          "format": "cloze"}),
                              "--method", "router", "--out", str(root / "x.parquet")])
    assert code == 2 and "needs --artifact routers=<results/routers/<model>/routers.safetensors>" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_cell_resumes_without_redoing_examples(cell_inputs, smollm2_dir, capsys, monkeypatch):
    root = cell_inputs
    from drllm.formats import answers as tasks

    original, calls = tasks.ClozeFormat.evaluate, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("node lost")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tasks.ClozeFormat, "evaluate", flaky)
    out = root / "resumed.parquet"
    assert run_cell(root, smollm2_dir, "base", out) == 2
    err = capsys.readouterr().err
    assert "arc/base: example" in err and "(#2) failed: RuntimeError: node lost" in err
    assert not out.exists() and (root / "resumed.parquet.progress.jsonl").exists()
    calls.clear()
    assert run_cell(root, smollm2_dir, "base", out) == 0
    assert "resuming, 2 of 4 examples already done" in capsys.readouterr().out
    assert len(calls) == 2 and not (root / "resumed.parquet.progress.jsonl").exists()
    monkeypatch.undo()
    fresh = root / "fresh.parquet"
    assert run_cell(root, smollm2_dir, "base", fresh) == 0
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_cell(out)) == strip(read_cell(fresh))


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    code = evaluate_cli.main(["--model-dir", str(tmp_path), "--data", str(tmp_path / "x.parquet"),
                              "--entry-json", "{not json", "--method", "base", "--out", str(tmp_path / "o.parquet")])
    assert code == 2 and "--entry-json is not valid JSON" in capsys.readouterr().err
    code = evaluate_cli.main(["--model-dir", str(tmp_path), "--data", str(tmp_path / "x.parquet"),
                              "--entry-json", '{"name": "a", "benchmark": "arc_easy", "split": "test", '
                                              '"format": "cloze"}',
                              "--method", "sometimes", "--out", str(tmp_path / "o.parquet")])
    assert code == 2 and "unknown evaluation method 'sometimes'" in capsys.readouterr().err
    code = evaluate_cli.main(["--model-dir", str(tmp_path), "--data", str(tmp_path / "x.parquet"),
                              "--entry-json", '{"name": "a", "benchmark": "arc_easy", "split": "test", '
                                              '"format": "cloze"}', "--settings-json", '{"sed": 1}',
                              "--method", "base", "--out", str(tmp_path / "o.parquet")])
    assert code == 2 and "eval: unknown key(s) ['sed']" in capsys.readouterr().err
    for settings, message in [('{"oracle": {"mcts": {"simulations": 0}}}', "eval.oracle.mcts.simulations must be an integer >= 1"),
                              ('{"oracle": {"samples": 0}}', "eval.oracle.samples must be an integer >= 1 or null"),
                              ('{"seed": "0"}', "eval.seed must be an integer")]:
        code = evaluate_cli.main(["--model-dir", str(tmp_path), "--data", str(tmp_path / "x.parquet"),
                                  "--entry-json", '{"name": "a", "benchmark": "arc_easy", "split": "test", '
                                                  '"format": "cloze"}', "--settings-json", settings,
                                  "--method", "oracle", "--out", str(tmp_path / "o.parquet")])
        assert code == 2 and message in capsys.readouterr().err, settings


# --------------------------------------------------------------------------------------------------------
# Fixed-budget baselines and the calibrated router through the stage CLI, on a tiny local model (fast)
# --------------------------------------------------------------------------------------------------------

TINY_LAYERS = 6
TINY_INFLUENCE = [0.4, 0.05, 0.3, 0.02, 0.2, 0.9]  # ranks 3, 1, 5, 0, 2, 4 -> removal order 3, 1, 4, 2, 0


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """A materialised tiny llama (byte tokenizer), cloze records, routers and a block influence file."""
    from test_tasks import byte_tokenizer, mc_example
    from drllm.core.models import ModelSpec, materialize

    root = tmp_path_factory.mktemp("tiny_eval")
    source = root / "hf"
    tiny_model("llama", layers=TINY_LAYERS, vocab_size=259).save_pretrained(source)
    byte_tokenizer().save_pretrained(source)
    materialize(ModelSpec(name="tiny", source="local", path=str(source)), root / "model")
    write_examples(root / "records.parquet",
                   [mc_example(id=f"q{i}", question=f"Question {i}: which one?") for i in range(6)])
    stack = RouterStack(RouterConfig("tiny", TINY_LAYERS, 64), seed=3)
    with torch.no_grad():
        for router in stack.routers:
            router.fc2.bias.copy_(torch.tensor([1.5, 2.0, -5.0]))  # execute or skip, prompt-dependent
            router.fc2.weight.mul_(4.0)
    stack.save_pretrained(root / "routers")
    write_influence(root / "bi.parquet", influence_rows("tiny", TINY_INFLUENCE, prompts=1, tokens=5))
    return root


def tiny_cell(root, method, out, *extra, settings=None, data=None, influence=None):
    entry = {"name": "arc", "benchmark": "arc_easy", "split": "test", "format": "cloze"}
    return evaluate_cli.main(["--model-dir", str(root / "model"), "--data", str(data or root / "records.parquet"),
                              "--entry-json", json.dumps(entry), "--method", method,
                              "--settings-json", json.dumps(settings or {"seed": 4}),
                              "--artifact", f"routers={root / 'routers'}",
                              "--artifact", f"influence={influence or root / 'bi.parquet'}", "--device", "cpu",
                              "--dtype", "float32", "--no-progress", "--out", str(out), *extra])


def test_static_at_k_removes_the_k_least_influential_layers(tiny_inputs, tmp_path, capsys):
    for k, kept in [(0, [0, 1, 2, 3, 4, 5]), (2, [0, 2, 4, 5]), (4, [0, 5])]:
        assert tiny_cell(tiny_inputs, f"static@{k}", tmp_path / f"s{k}.parquet") == 0, capsys.readouterr().err
        rows = read_cell(tmp_path / f"s{k}.parquet")
        assert len(rows) == 6 and {r["method"] for r in rows} == {f"static@{k}"}
        assert all(r["path"] == kept and r["path_length"] == TINY_LAYERS - k for r in rows)
        assert {r["knob"] for r in rows} == {None}
    # no router cell needed; k must leave a layer
    assert tiny_cell(tiny_inputs, f"static@{TINY_LAYERS}", tmp_path / "bad.parquet") == 2
    assert "'static@6': cannot remove 6 of the model's 6 layers" in capsys.readouterr().err


def test_safest_at_k_removes_the_k_blocks_most_often_safe_alone(tiny_inputs, tmp_path, capsys):
    """safest@k on the search's layer_safety file (influence = the share of swept prompts on which skipping the
    block alone was unsafe, as search_summary writes it): the k safest blocks removed for every example."""
    safe = [0.1, 0.3, 0.8, 0.2, 0.5, 0.9]  # safest first: 5, 2, 4, 1, 3, 0 (not static's 3, 1, 4, 2, 0)
    ranking = tmp_path / "layer_safety.parquet"
    write_influence(ranking, influence_rows("tiny", [1 - s for s in safe], 10, 0))
    for k, kept in [(0, [0, 1, 2, 3, 4, 5]), (2, [0, 1, 3, 4]), (3, [0, 1, 3])]:
        out = tmp_path / f"safest{k}.parquet"
        assert tiny_cell(tiny_inputs, f"safest@{k}", out, influence=ranking) == 0, capsys.readouterr().err
        rows = read_cell(out)
        assert len(rows) == 6 and {r["method"] for r in rows} == {f"safest@{k}"}
        assert all(r["path"] == kept for r in rows)


def test_random_at_k_removes_k_seeded_layers_per_example(tiny_inputs, tmp_path, capsys):
    assert tiny_cell(tiny_inputs, "random@2", tmp_path / "r.parquet") == 0, capsys.readouterr().err
    rows = read_cell(tmp_path / "r.parquet")
    assert all(r["path_length"] == TINY_LAYERS - 2 and r["path"] == sorted(set(r["path"])) for r in rows)
    assert [r["path"] for r in rows] == [list(random_path(TINY_LAYERS, 2, random_seed(4, "arc", r["example_id"])))
                                         for r in rows]
    assert len({tuple(r["path"]) for r in rows}) > 1, "the removed layers should differ across examples"
    assert tiny_cell(tiny_inputs, "random@2", tmp_path / "again.parquet") == 0
    assert [r["path"] for r in read_cell(tmp_path / "again.parquet")] == [r["path"] for r in rows]
    assert tiny_cell(tiny_inputs, "random@7", tmp_path / "bad.parquet") == 2
    assert "'random@7': cannot remove 7" in capsys.readouterr().err


def test_router_at_calibrated_routes_as_router_at_its_knob(tiny_inputs, tmp_path, capsys):
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"knob": -0.6, "max_drop": 0.02, "benchmarks": ["arc"]}))
    assert read_calibration(calibration) == (-0.6, None)
    assert tiny_cell(tiny_inputs, "router@calibrated", tmp_path / "c.parquet", "--artifact",
                     f"calibration={calibration}") == 0, capsys.readouterr().err
    assert "knob p = -0.6 from" in capsys.readouterr().out
    assert tiny_cell(tiny_inputs, "router@-0.6", tmp_path / "p.parquet") == 0
    calibrated, fixed = read_cell(tmp_path / "c.parquet"), read_cell(tmp_path / "p.parquet")
    assert {r["method"] for r in calibrated} == {"router@calibrated"} and {r["knob"] for r in calibrated} == {-0.6}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("method", "seconds")} for r in rows]  # noqa: E731
    assert strip(calibrated) == strip(fixed)
    lengths = {r["path_length"] for r in fixed}
    assert min(lengths) < TINY_LAYERS, "the test routers should skip something at p = -0.6"


@pytest.mark.parametrize("content, match", [
    (None, "router calibration file not found"),
    ("{not json", "is not valid JSON"),
    ("[0.5]", "must hold a JSON object with a 'knob'"),
    ('{"max_drop": 0.01}', "exactly one of 'knob' and 'threshold' must be set"),
    ('{"knob": 0.5, "threshold": 0.9}', "exactly one of 'knob' and 'threshold' must be set"),
    ('{"threshold": 1.5}', "'threshold' must be a number >= 0 and <= 1, got 1.5"),
    ('{"knob": 1.5, "max_drop": 0.01}', "'knob' must be a number in \\[-1, 1\\], got 1.5"),
    ('{"knob": "low"}', "'knob' must be a number"),
])
def test_a_missing_or_malformed_calibration_file_fails_naming_it(tiny_inputs, tmp_path, capsys, content, match):
    calibration = tmp_path / "calibration.json"
    if content is not None:
        calibration.write_text(content)
    out = tmp_path / "c.parquet"
    assert tiny_cell(tiny_inputs, "router@calibrated", out, "--artifact", f"calibration={calibration}") == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluate: error:") and str(calibration) in err
    assert re.search(match, err), err
    assert not out.exists()


def test_router_at_calibrated_without_the_file_argument_fails(tiny_inputs, tmp_path, capsys):
    assert tiny_cell(tiny_inputs, "router@calibrated", tmp_path / "c.parquet") == 2
    assert "'router@calibrated' needs --artifact calibration=<results/routers/<model>/calibration.json>" in \
        capsys.readouterr().err


def test_oracle_is_judged_by_the_search_reward_and_the_report_names_it(tiny_inputs, tmp_path, capsys):
    """The oracle's search uses the reward the settings give (the rules pass search.reward), records it in the
    cell's provenance, and report.md's oracle line names it; a cell recorded without one used the binary reward."""
    from test_tasks import mc_example
    from drllm.core.artifacts import read_provenance
    from drllm.evaluation.report import build_report

    # the tiny model answers "Shark" (option 0) on these items, so make it the gold answer
    data = tmp_path / "records.parquet"
    write_examples(data, [mc_example(id=f"q{i}", question=f"Question {i}: which one?", gold=0) for i in range(4)])

    def oracle(name, reward):
        settings = {"seed": 4, "oracle": {"samples": 4, "mcts": {"simulations": 6, "early_stop": False}}}
        if reward is not None:
            settings["oracle"]["reward"] = reward
        out = tmp_path / name / "oracle.parquet"
        assert tiny_cell(tiny_inputs, "oracle", out, settings=settings, data=data) == 0, capsys.readouterr().err
        return out

    binary, strict = oracle("binary", None), oracle("strict", {"kind": "robust", "margin": 100.0, "epsilon": 0.2})
    assert read_provenance(strict)["config"]["settings"]["oracle"]["reward"]["margin"] == 100.0
    # no option wins by 100 nats per character: no path is correct, so the oracle keeps every layer
    assert {row["path_length"] for row in read_cell(strict)} == {TINY_LAYERS}
    assert min(row["path_length"] for row in read_cell(binary)) < TINY_LAYERS, "binary: some lucky shorter path"
    report = build_report([strict], [], tmp_path / "report", seed=0)["report"].read_text()
    assert "`oracle` (reward: robust(margin=100,epsilon=0.2,min_f1=0.5)):" in report
    report = build_report([binary], [], tmp_path / "report_binary", seed=0)["report"].read_text()
    assert "`oracle` (reward: binary(margin=0,epsilon=none,min_f1=0.5)):" in report
    assert tiny_cell(tiny_inputs, "base", tmp_path / "base.parquet", data=data) == 0
    assert "`oracle`" not in build_report([tmp_path / "base.parquet"], [], tmp_path / "r3")["report"].read_text()


def test_rule_pattern_and_schema_shape_come_from_the_method_table():
    """rules/eval.smk's wildcard is the table's pattern; the schema checks the shape <kind>[@<param>] and leaves
    kinds and parameters to the table (so a plugin method needs no schema edit)."""
    import re

    import yaml

    from conftest import REPO
    from drllm.evaluation.methods import method_pattern

    assert "method=method_pattern()," in (REPO / "rules" / "eval.smk").read_text()
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    shape = schema["$defs"]["method_name"]["pattern"]
    entry = schema["properties"]["eval"]["properties"]["benchmarks"]["additionalProperties"]
    assert entry["properties"]["methods"]["items"] == {"$ref": "#/$defs/method_name"}
    assert schema["properties"]["eval"]["properties"]["methods"]["items"] == {"$ref": "#/$defs/method_name"}
    for name in ("base", "oracle", "router", "router@-0.25", "router@t0.9", "router@calibrated",
                 "router@certified", "static", "static@2", "random@3", "safest", "safest@4"):
        parse_method(name)
        assert re.fullmatch(method_pattern(), name) and re.fullmatch(shape, name), name
    for name in ("greedy", "router@x", "safest@calibrated", "oracle@2", "static@02"):
        with pytest.raises(ValueError):
            parse_method(name)
        if name != "static@02":  # the pattern only routes cells; parse_method refuses non-canonical k
            assert not re.fullmatch(method_pattern(), name), name


def test_a_registered_method_joins_the_grammar_and_its_cells_read_what_it_declares(toy_method):
    from drllm.evaluation.methods import (cell_artifacts, frontier_line, method_pattern, method_sort_key,
                                          needs_search, order_methods)
    import re

    assert parse_method("unsafest@3") == ("unsafest", 3) and re.fullmatch(method_pattern(), "unsafest@3")
    reads = {"influence": "{search}/layer_safety.parquet", "summary": "{search}/summary.parquet"}
    assert cell_artifacts("unsafest") == cell_artifacts("unsafest@3") == reads and needs_search("unsafest@3")
    assert cell_artifacts("static") == {"influence": "{eval}/block_influence.parquet",
                                        "router_cell": "{eval}/{benchmark}/router.parquet"}
    assert cell_artifacts("router@certified") == {"routers": "{routers}/routers.safetensors",
                                                  "calibration": "{routers}/calibration.json"}
    assert frontier_line("unsafest@3") == "unsafest@k"
    # its order (7.8) puts it after safest (6.5) and its k sweep (+1) after the oracle (8)
    assert order_methods(["unsafest@3", "oracle", "base", "unsafest"]) == ["base", "unsafest", "oracle",
                                                                           "unsafest@3"]
    assert method_sort_key("router@certified") < method_sort_key("router@0.5") < method_sort_key("static")


