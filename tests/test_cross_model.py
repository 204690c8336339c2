"""Cross-model report: table values against hand computation from synthetic per-item cells (summaries made by the
real summarize_cells), missing cells, schema validation, the figure and the CLI's errors. No model runs."""
from __future__ import annotations

import json
import math
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet
from drllm.evaluation.cross_model import (CROSS_MODEL_SCHEMA, IN_DOMAIN_AVERAGE, OUT_OF_DOMAIN_AVERAGE,
                                          build_cross_model_report, cross_model_rows, load_summaries,
                                          render_cross_model_markdown)
from drllm.evaluation.summary import REPORT_SUMMARY_SCHEMA, Z95, summarize_cells

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import cross_model_report as cli  # noqa: E402

IN_DOMAIN = ["arc", "dart"]


def item(model, benchmark, method, i, score, counts):
    path = [layer for layer, c in enumerate(counts) for _ in range(c)]
    return {"benchmark": benchmark, "method": method, "model": model, "example_id": f"{benchmark}-{i}",
            "example_index": i, "subset": None, "level": None, "source": f"hub/{benchmark}", "format": "cloze",
            "metric": "acc_norm", "prediction": "a", "gold": "a", "score": float(score), "correct": score == 1,
            "path": path, "counts": counts, "path_length": len(path), "num_layers": len(counts),
            "layer_applications": len(path), "new_tokens": 0, "knob": None, "threshold": None, "read_blocks": None,
            "seconds": 0.1}


def cells(model, spec):
    """spec: (benchmark, method) -> (scores, counts per item or one counts list for all)."""
    rows = []
    for (benchmark, method), (scores, counts) in spec.items():
        for i, score in enumerate(scores):
            rows.append(item(model, benchmark, method, i, score, counts(i) if callable(counts) else counts))
    return rows


def alternating(i):  # 4 and 3 executed blocks of 4: 0.5 layers saved on average over an even count
    return [0, 1, 1, 2] if i % 2 == 0 else [0, 1, 1, 1]


# alpha (L = 4): arc and dart in-domain, mmlu out-of-domain, squad with a router but no base; no gpqa
ALPHA = {("arc", "base"): ([1] * 8 + [0] * 2, [1] * 4),
         ("arc", "router"): ([1] * 7 + [0, 1, 1], alternating),            # +0.1, 0.5 saved
         ("arc", "router@certified"): ([1] * 8 + [0, 0], [1, 0, 1, 1]),     # +0.0, 1 saved
         ("dart", "base"): ([1, 0, 0, 0, 0], [1] * 4),
         ("dart", "router"): ([1, 1, 1, 0, 0], [0, 1, 1, 1]),               # +0.4, 1 saved
         ("mmlu", "base"): ([1, 1, 0, 0], [1] * 4),
         ("mmlu", "router"): ([1, 0, 0, 0], [1, 0, 1, 1]),                 # -0.25, 1 saved
         ("squad", "router"): ([1, 0, 1], [1, 1, 1, 0])}
# beta (L = 6): no dart, no squad, no router@certified; gpqa only here
BETA = {("arc", "base"): ([1, 1, 1, 0], [1] * 6),
        ("arc", "router"): ([1, 1, 1, 1], [1, 1, 0, 1, 1, 1]),             # +0.25, 1 saved
        ("mmlu", "base"): ([0, 0, 1, 1], [1] * 6),
        ("mmlu", "router"): ([0, 1, 1, 1], [1, 1, 1, 1, 0, 0]),            # +0.25, 2 saved
        ("gpqa", "base"): ([0, 0, 0, 0], [1] * 6),
        ("gpqa", "router"): ([1, 0, 0, 0], [0, 1, 1, 1, 1, 1])}            # +0.25, 1 saved


def write_summary(path, model, spec):
    summary = summarize_cells(cells(model, spec), seed=0)
    write_parquet(path, summary, REPORT_SUMMARY_SCHEMA, "report summary")
    return {(r["benchmark"], r["method"]): r for r in summary}


@pytest.fixture
def summaries(tmp_path):
    """(entries for the CLI / build, the summary rows by model and (benchmark, method))."""
    entries, by_model = [], {}
    for model, spec in (("alpha", ALPHA), ("beta", BETA)):
        path = tmp_path / model / "summary.parquet"
        by_model[model] = write_summary(path, model, spec)
        entries.append((model, path))
    return entries, by_model


def table(rows):
    return {(r["model"], r["method"], r["benchmark"]): r for r in rows}


def test_rows_against_hand_values(summaries):
    entries, source = summaries
    rows = cross_model_rows(load_summaries(entries), IN_DOMAIN)
    at = table(rows)
    # 2 models x (base, router, router@certified) x (5 benchmarks + 2 averages), in order
    assert len(rows) == 2 * 3 * 7
    assert [r["benchmark"] for r in rows[:7]] == ["arc", "dart", IN_DOMAIN_AVERAGE, "gpqa", "mmlu", "squad",
                                                  OUT_OF_DOMAIN_AVERAGE]
    assert [r["method"] for r in rows[::7]] == ["base", "router", "router@certified"] * 2
    assert [r["model"] for r in rows[::21]] == ["alpha", "beta"]

    arc = at[("alpha", "router", "arc")]
    assert (arc["present"], arc["in_domain"], arc["n"], arc["n_paired"], arc["num_layers"]) == (True, True, 10, 10, 4)
    assert arc["delta_vs_base"] == pytest.approx(0.1) and arc["mean_layers_saved"] == pytest.approx(0.5)
    assert (arc["score"], arc["base_score"]) == pytest.approx((0.9, 0.8))
    summary = source["alpha"][("arc", "router")]
    assert (arc["delta_ci_low"], arc["delta_ci_high"]) == (summary["delta_ci_low"], summary["delta_ci_high"])
    assert (arc["base_ci_low"], arc["base_ci_high"]) == (source["alpha"][("arc", "base")]["ci_low"],
                                                         source["alpha"][("arc", "base")]["ci_high"])

    # in-domain average: arc (10 paired) and dart (5 paired) pooled by examples
    avg = at[("alpha", "router", IN_DOMAIN_AVERAGE)]
    assert (avg["is_average"], avg["present"], avg["weighting"], avg["benchmarks"], avg["benchmarks_total"],
            avg["n"], avg["n_paired"]) == (True, True, "examples", 2, 2, 15, 15)
    assert avg["delta_vs_base"] == pytest.approx((10 * 0.1 + 5 * 0.4) / 15)
    assert avg["mean_layers_saved"] == pytest.approx((10 * 0.5 + 5 * 1.0) / 15)
    assert (avg["score"], avg["base_score"]) == pytest.approx(((9 + 3) / 15, (8 + 1) / 15))
    parts = [source["alpha"][(b, "router")] for b in ("arc", "dart")]
    se = math.hypot(*[w * (p["delta_ci_high"] - p["delta_ci_low"]) / (2 * Z95)
                      for w, p in zip((10 / 15, 5 / 15), parts)])
    assert (avg["delta_ci_low"], avg["delta_ci_high"]) == pytest.approx((avg["delta_vs_base"] - Z95 * se,
                                                                         avg["delta_vs_base"] + Z95 * se))

    # out-of-domain for alpha: only mmlu pairs with base (squad has no base, gpqa is beta's): its own interval
    ood = at[("alpha", "router", OUT_OF_DOMAIN_AVERAGE)]
    mmlu = source["alpha"][("mmlu", "router")]
    assert (ood["benchmarks"], ood["benchmarks_total"], ood["weighting"]) == (1, 3, "benchmarks")
    assert (ood["delta_vs_base"], ood["delta_ci_low"], ood["delta_ci_high"], ood["mean_layers_saved"]) == \
        (mmlu["delta_vs_base"], mmlu["delta_ci_low"], mmlu["delta_ci_high"], mmlu["mean_layers_saved"])
    squad = at[("alpha", "router", "squad")]
    assert squad["present"] and squad["delta_vs_base"] is None and squad["base_score"] is None
    assert squad["mean_layers_saved"] == pytest.approx(1.0)

    # beta out-of-domain: gpqa and mmlu, one weight each
    ood = at[("beta", "router", OUT_OF_DOMAIN_AVERAGE)]
    assert (ood["benchmarks"], ood["benchmarks_total"]) == (2, 3)
    assert ood["delta_vs_base"] == pytest.approx(0.25) and ood["mean_layers_saved"] == pytest.approx(1.5)
    assert ood["score"] == pytest.approx((0.75 + 0.25) / 2) and ood["base_score"] == pytest.approx(0.25)

    # base is the reference line: delta 0, nothing saved
    base = at[("beta", "base", IN_DOMAIN_AVERAGE)]
    assert (base["delta_vs_base"], base["mean_layers_saved"], base["base_score"]) == (0.0, 0.0, 0.75)


def test_missing_cells_are_rows_not_gaps(summaries):
    entries, _ = summaries
    at = table(cross_model_rows(load_summaries(entries), IN_DOMAIN + ["arc_challenge"]))
    # a benchmark one model lacks, a method one model lacks, an in-domain benchmark nobody evaluated
    for key in [("beta", "router", "dart"), ("beta", "base", "dart"), ("alpha", "router", "gpqa"),
                ("beta", "router@certified", "arc"), ("alpha", "router", "arc_challenge")]:
        row = at[key]
        assert row["present"] is False and row["score"] is None and row["delta_vs_base"] is None
        assert row["benchmarks"] == 0
    # base stays visible where the method is missing
    assert at[("alpha", "router@certified", "dart")]["base_score"] == pytest.approx(0.2)
    assert at[("beta", "router@certified", IN_DOMAIN_AVERAGE)]["present"] is False
    assert at[("beta", "router", IN_DOMAIN_AVERAGE)]["benchmarks_total"] == 3  # arc, arc_challenge, dart
    # without router@certified anywhere, the default reports router only; named methods are kept even if absent
    only_beta = load_summaries(entries[1:])
    assert {r["method"] for r in cross_model_rows(only_beta, IN_DOMAIN)} == {"base", "router"}
    named = cross_model_rows(only_beta, IN_DOMAIN, methods=["static@2", "router"])
    assert {r["method"] for r in named} == {"base", "router", "static@2"}
    assert not any(r["present"] for r in named if r["method"] == "static@2")
    with pytest.raises(ValueError, match="unknown evaluation method 'routr'"):
        cross_model_rows(only_beta, IN_DOMAIN, methods=["routr"])
    # no in-domain list: every benchmark is in-domain, the out-of-domain average is an empty row
    rows = table(cross_model_rows(only_beta, None))
    assert rows[("beta", "router", "gpqa")]["in_domain"] is True
    assert rows[("beta", "router", OUT_OF_DOMAIN_AVERAGE)]["benchmarks_total"] == 0


def test_markdown(summaries):
    entries, source = summaries
    rows = cross_model_rows(load_summaries(entries), IN_DOMAIN)
    text = render_cross_model_markdown(rows, {name: str(path) for name, path in entries}, "out/cross_model.png")
    assert ("| model | method | arc | dart | in-domain average | gpqa | mmlu | squad | out-of-domain average |"
            in text)
    base = source["alpha"][("arc", "base")]
    arc = source["alpha"][("arc", "router")]
    assert f"| alpha | base | 80.0 ({100 * base['ci_low']:.1f}, {100 * base['ci_high']:.1f}) |" in text
    router = (f"| alpha | router | +10.0 ({100 * arc['delta_ci_low']:+.1f}, {100 * arc['delta_ci_high']:+.1f}) "
              "· 0.50 |")
    assert router in text
    avg = table(rows)[("alpha", "router", IN_DOMAIN_AVERAGE)]
    assert (f"| +20.0 ({100 * avg['delta_ci_low']:+.1f}, {100 * avg['delta_ci_high']:+.1f}) · 0.67 | – | "
            in text)  # alpha's in-domain average, then its missing gpqa
    assert "no base · 1.00" in text  # alpha's squad router
    assert "(1/3) |" in text  # alpha's out-of-domain average holds mmlu only
    beta_certified = [line for line in text.splitlines() if line.startswith("| beta | router@certified |")]
    assert beta_certified == ["| beta | router@certified | – | – | – | – | – | – | – |"] * 2  # two tables
    assert "| beta | router | 4 | – | 4 | 4 | 4 | – | 8 |" in text  # examples per cell
    assert "- **alpha**: `" in text and "(cross_model.png)" in text


def test_build_writes_three_validated_artifacts(summaries, tmp_path):
    entries, _ = summaries
    out = tmp_path / "cross"
    paths = build_cross_model_report(entries, out, in_domain=IN_DOMAIN)
    assert {p.name for p in paths.values()} == {"cross_model.md", "cross_model.parquet", "cross_model.png"}
    written = read_parquet(paths["table"], CROSS_MODEL_SCHEMA, "cross-model table")
    assert written.schema.names == CROSS_MODEL_SCHEMA.names and written.num_rows == 42
    assert written.to_pylist() == cross_model_rows(load_summaries(entries), IN_DOMAIN)
    assert paths["figure"].stat().st_size > 5000
    text = paths["markdown"].read_text()
    assert build_cross_model_report(entries, tmp_path / "again", in_domain=IN_DOMAIN)["markdown"].read_text() == text
    # a row that misses a column is refused by the one schema
    bad = [dict(written.to_pylist()[0])]
    del bad[0]["present"]
    with pytest.raises(ArtifactError, match=r"missing column\(s\) \['present'\]"):
        write_parquet(tmp_path / "bad.parquet", bad, CROSS_MODEL_SCHEMA, "cross-model table")
    # nothing to plot: a captioned placeholder, still a PNG
    base_only = tmp_path / "base_only.parquet"
    write_summary(base_only, "gamma", {k: v for k, v in BETA.items() if k[1] == "base"})
    paths = build_cross_model_report([("gamma", base_only)], tmp_path / "placeholder", in_domain=IN_DOMAIN)
    assert paths["figure"].stat().st_size > 0 and "| gamma | router | – |" in paths["markdown"].read_text()


def test_bad_inputs(summaries, tmp_path):
    entries, _ = summaries
    with pytest.raises(ArtifactError, match="model name 'alpha' given twice"):
        load_summaries([entries[0], ("alpha", entries[1][1])])
    wrong = tmp_path / "wrong.parquet"
    table_ = pq.read_table(entries[0][1]).drop(["delta_vs_base"])
    pq.write_table(table_, wrong)
    with pytest.raises(ArtifactError, match=r"missing column\(s\) \['delta_vs_base'\]") as err:
        load_summaries([("alpha", wrong)])
    assert str(wrong) in str(err.value)
    doubled = tmp_path / "doubled.parquet"
    rows = pq.read_table(entries[0][1]).to_pylist()
    pq.write_table(pa.Table.from_pylist(rows + rows[:1], schema=REPORT_SUMMARY_SCHEMA), doubled)
    with pytest.raises(ArtifactError, match=f"{doubled} has two rows for arc x base"):
        load_summaries([("alpha", doubled)])


def test_cli(summaries, tmp_path, capsys):
    entries, _ = summaries
    out = tmp_path / "cli"
    args = [f"--summary={name}={path}" for name, path in entries]
    assert cli.main([*args, "--in-domain-json", json.dumps(IN_DOMAIN), "--out-dir", str(out)]) == 0
    assert "2 model(s)" in capsys.readouterr().out
    table_ = read_parquet(out / "cross_model.parquet", CROSS_MODEL_SCHEMA, "cross-model table")
    assert set(table_.column("method").to_pylist()) == {"base", "router", "router@certified"}
    assert cli.main([*args, "--methods", "router", "--out-dir", str(tmp_path / "router")]) == 0
    assert "router@certified" not in (tmp_path / "router" / "cross_model.md").read_text()

    def fails(argv, *needles):
        assert cli.main([*argv, "--out-dir", str(tmp_path / "fail")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cross_model_report: error:"), err
        for needle in needles:
            assert needle in err, err

    missing = tmp_path / "nope.parquet"
    fails([args[0], f"--summary=beta={missing}"], str(missing), "not found")
    fails([args[0], f"--summary=alpha={entries[1][1]}"], "model name 'alpha' given twice")
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pq.read_table(entries[0][1]).drop(["mean_layers_saved"]), wrong)
    fails([f"--summary=alpha={wrong}"], str(wrong), "mean_layers_saved")
    fails([f"--summary={entries[0][1]}"], "--summary expects MODEL=PATH")
    fails([*args, "--in-domain-json", '"arc"'], "--in-domain-json must be null or a list")
    fails([*args, "--methods", "routr"], "unknown evaluation method 'routr'")
    assert not (tmp_path / "fail").exists()
