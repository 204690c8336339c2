"""Search artifacts: prompt selection, shard schema, checkpoints, the Table 2 summary."""
from __future__ import annotations

import pytest

from drllm.core.artifacts import ArtifactError
from drllm.search.prompts import select_prompts
from drllm.search.shards import SHARD_SCHEMA, Checkpoint, read_shard, seed_check_ids, write_shard
from drllm.search.summary import format_summary, label_agreement, summarize_search


def records(n=20):
    return [{"id": f"q{i}", "level": 1 + i % 5, "question": f"question {i}"} for i in range(n)]


def shard_row(index, task="arc_easy", model="m", layers=4, kept=True, labels=(1, 0, 1, 1), w2c=False, check=None):
    best = [layer for layer, count in enumerate(labels) for _ in range(count)] if kept else None
    return {
        "prompt_id": f"q{index}", "prompt_index": index, "task": task, "benchmark": "arc_easy", "subset": None,
        "level": None, "prompt_hash": "abc", "model": model, "num_layers": layers, "default_correct": not w2c,
        "kept": kept, "best_path": best, "labels": list(labels) if kept else None,
        "labels_check": list(check) if check is not None else None,
        "best_length": len(best) if kept else None, "layers_saved": layers - len(best) if kept else None,
        "wrong_to_correct": w2c, "prediction_default": "A", "prediction_best": "A" if kept else None,
        "simulations": 5, "evaluations": 4, "forward_passes": 9, "layer_applications": 10, "layer_applications_full": 16,
        "evaluated": [{"path": "0-1-2-3", "reward": 1.0}, {"path": "0-2-3", "reward": 1.0}],
        "max_fanout": 2, "max_depth": 1, "reward": "binary(margin=0,epsilon=none,min_f1=0.5)", "wall_seconds": 0.5,
        "labeler": "mcts", "layer_safety": None, "seed": 7, "search_config": "{}",
    }


def test_select_prompts_is_seeded_and_filters_levels():
    first = select_prompts(records(), "dart_2", "boxed", 3, seed=0, levels=[2])
    assert [r["level"] for r in first] == [2, 2, 2] and [r["prompt_index"] for r in first] == [0, 1, 2]
    assert first == select_prompts(records(), "dart_2", "boxed", 3, seed=0, levels=[2])
    assert first != select_prompts(records(), "dart_2", "boxed", 3, seed=1, levels=[2])
    assert len(select_prompts(records(), "t", "cloze", 999, seed=0)) == 20
    with pytest.raises(ArtifactError, match="samples must be >= 1"):
        select_prompts(records(), "t", "cloze", 0, seed=0)
    with pytest.raises(ArtifactError, match="no records left"):
        select_prompts(records(), "t", "cloze", 2, seed=0, levels=[9])


def test_shard_round_trip_and_foreign_shards(tmp_path):
    path = tmp_path / "shard-0.parquet"
    write_shard(path, [shard_row(1), shard_row(0)])
    rows = read_shard(path, model="m", num_layers=4)
    assert [r["prompt_index"] for r in rows] == [0, 1] and rows[0]["labels"] == [1, 0, 1, 1]
    with pytest.raises(ArtifactError, match="is from model 'm', expected 'other'"):
        read_shard(path, model="other")
    with pytest.raises(ArtifactError, match="has 4 layers, expected 30"):
        read_shard(path, num_layers=30)
    assert rows[0]["labels_check"] is None
    bad = shard_row(2)
    del bad["labels"]
    with pytest.raises(ArtifactError, match="missing column"):
        write_shard(tmp_path / "bad.parquet", [bad])
    assert not (tmp_path / "bad.parquet").exists()


def test_checkpoint_resumes_and_discards_a_torn_line_or_another_job(tmp_path):
    path = tmp_path / "shard.progress.jsonl"
    checkpoint = Checkpoint(path, {"job": 1})
    checkpoint.add({"prompt_id": "a", "x": 1})
    checkpoint.add({"prompt_id": "b", "x": 2})
    checkpoint.close()
    with open(path, "a") as handle:
        handle.write('{"prompt_id": "c", "x"')  # killed mid-write
    again = Checkpoint(path, {"job": 1})
    assert sorted(again.rows) == ["a", "b"]
    again.close()
    other = Checkpoint(path, {"job": 2})
    assert other.rows == {}
    other.close(remove=True)
    assert not path.exists()


def test_summary_matches_hand_count():
    rows = [shard_row(0, labels=(1, 0, 1, 1)), shard_row(1, labels=(0, 1, 2, 1), w2c=True),
            shard_row(2, kept=False, w2c=False)]
    summary, total = summarize_search(rows)
    assert total["task"] == "all" and {k: v for k, v in total.items() if k != "task"} == \
        {k: v for k, v in summary.items() if k != "task"}
    assert summary["reward"] == "binary(margin=0,epsilon=none,min_f1=0.5)"
    assert summary["prompts"] == 3 and summary["kept_samples"] == 2
    assert summary["visited_paths"] == 6 and summary["forward_passes"] == 27
    assert summary["wrong_to_correct_share"] == 0.5
    assert summary["mean_layers_saved"] == 0.5  # saved 1 and 0
    assert summary["skip_share"] == 2 / 8 and summary["repeat_share"] == 1 / 8


def test_summary_total_row_pools_tasks_and_the_table_shows_the_paper():
    rows = [shard_row(0, task="a", labels=(1, 0, 1, 1)), shard_row(1, task="b", labels=(1, 1, 1, 1)),
            shard_row(2, task="b", labels=(1, 0, 0, 1), w2c=True)]
    by_task = {s["task"]: s for s in summarize_search(rows)}
    assert sorted(by_task) == ["a", "all", "b"]
    assert by_task["all"]["kept_samples"] == 3 and by_task["all"]["wrong_to_correct_share"] == 1 / 3
    assert by_task["all"]["mean_layers_saved"] == (1 + 0 + 2) / 3
    assert by_task["all"]["skip_share"] == 3 / 12
    table = format_summary(summarize_search(rows))
    assert "| all | 3 | 3 |" in table and "| paper (4,000 samples) |" in table and "1.82" in table
    with pytest.raises(ArtifactError, match="may not be named 'all'"):
        summarize_search([shard_row(0, task="all")])


def test_labels_check_round_trips_and_older_shards_read_it_as_null(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "shard-0.parquet"
    write_shard(path, [shard_row(0, check=(1, 1, 2, 0)), shard_row(1), shard_row(2, kept=False, check=(0, 1, 1, 1))])
    rows = read_shard(path)
    assert [r["labels_check"] for r in rows] == [[1, 1, 2, 0], None, [0, 1, 1, 1]]
    assert pq.read_schema(path).field("labels_check").type == pa.list_(pa.int8())
    # a shard written before the column existed: every row unchecked
    old = tmp_path / "old.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["labels_check"]), old)
    assert [r["labels_check"] for r in read_shard(old)] == [None, None, None]
    assert [r["labels"] for r in read_shard(old)] == [r["labels"] for r in rows]
    with pytest.raises(ArtifactError, match="not found"):
        read_shard(tmp_path / "missing.parquet")
    assert "labels_check" in SHARD_SCHEMA.names


def test_seed_check_takes_the_first_prompts_of_the_shard():
    rows = [{"id": f"q{i}", "prompt_index": i} for i in (7, 3, 11, 5)]
    assert seed_check_ids(rows, 2) == {"q3", "q5"}
    assert seed_check_ids(rows, 0) == set() and seed_check_ids(rows, 9) == {"q3", "q5", "q7", "q11"}


def test_label_agreement_on_constructed_labels():
    assert label_agreement([1, 0, 1, 1], [1, 0, 1, 1]) == (1.0, 1.0)
    assert label_agreement([1, 1, 1, 1], [1, 1, 1, 1]) == (1.0, 1.0)       # neither deviates: Jaccard 1
    assert label_agreement([0, 1, 1, 1], [1, 1, 0, 1]) == (0.5, 0.0)       # disjoint deviations
    assert label_agreement([0, 2, 1, 1], [0, 1, 1, 0]) == (0.5, 1 / 3)     # {0, 1} vs {0, 3}
    with pytest.raises(ArtifactError, match="different lengths"):
        label_agreement([1, 1], [1, 1, 1])


def test_summary_reports_label_agreement_across_seeds(tmp_path):
    identical = [shard_row(0, task="a", labels=(1, 0, 1, 1), check=(1, 0, 1, 1)),
                 shard_row(1, task="a", labels=(1, 1, 0, 2), check=(1, 1, 0, 2))]
    disjoint = [shard_row(2, task="b", labels=(0, 1, 1, 1), check=(1, 1, 0, 1)),
                shard_row(3, task="b", labels=(1, 0, 1, 1)),                                 # not checked
                shard_row(4, task="b", kept=False, check=(1, 0, 1, 1))]                      # first search: none
    by_task = {s["task"]: s for s in summarize_search(identical + disjoint)}
    assert (by_task["a"]["seed_checked"], by_task["a"]["label_agreement"], by_task["a"]["deviation_jaccard"]) == \
        (2, 1.0, 1.0)
    assert (by_task["b"]["seed_checked"], by_task["b"]["label_agreement"], by_task["b"]["deviation_jaccard"]) == \
        (1, 0.5, 0.0)
    assert by_task["all"]["seed_checked"] == 3 and by_task["all"]["label_agreement"] == pytest.approx(2.5 / 3)
    assert by_task["all"]["deviation_jaccard"] == pytest.approx(2 / 3)
    unchecked = summarize_search([shard_row(0)])[0]
    assert unchecked["seed_checked"] == 0 and unchecked["label_agreement"] is None
    assert unchecked["deviation_jaccard"] is None
    table = format_summary(summarize_search(identical + disjoint))
    assert "| seed-checked | label agreement | deviation Jaccard |" in table
    assert "| a | 2 | 2 |" in table and "| 2 | 1.00 | 1.00 |" in table and "| 1 | 0.50 | 0.00 |" in table
    assert "| 0 | – | – |" in format_summary(summarize_search([shard_row(0)]))
    from drllm.core.artifacts import read_parquet
    from drllm.search.summary import SEARCH_SUMMARY_SCHEMA, write_summary

    write_summary(tmp_path / "summary.parquet", summarize_search(identical + disjoint + [shard_row(5, task="c")]))
    written = {r["task"]: r for r in read_parquet(tmp_path / "summary.parquet", SEARCH_SUMMARY_SCHEMA,
                                                  "search summary").to_pylist()}
    assert written["b"]["deviation_jaccard"] == 0.0 and written["c"]["label_agreement"] is None
