"""The search stage end to end on the real SmolLM2: CLI, backends, resume, failures, summary."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from conftest import REPO
from drllm.benchmarks import load_benchmark
from drllm.shards import select_prompts, write_prompts

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import search  # noqa: E402
import search_summary  # noqa: E402

pytestmark = pytest.mark.slow
SETTINGS = json.dumps({"mcts": {"simulations": 6, "early_stop": False}, "seed": 3,
                       "formats": {"cloze": {"normalize": "chars"}}})


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    records = [e.to_dict() for e in load_benchmark("arc_easy", "validation", limit=40)]
    path = tmp_path_factory.mktemp("prompts") / "arc_easy.parquet"
    write_prompts(path, select_prompts(records, "arc_easy", "cloze", 4, seed=0))
    return path


def run_cli(smollm2_dir, prompt_file, out, *extra, settings=SETTINGS):
    return search.main(["--model-dir", str(smollm2_dir), "--prompts", str(prompt_file), "--settings-json", settings,
                        "--out", str(out), "--cpus", "2", *extra])


def without_timing(path):
    return pl.read_parquet(path).drop("wall_seconds")


def test_shards_identical_across_backends_and_worker_counts(smollm2_dir, prompt_file, tmp_path):
    outputs = {}
    for name, extra in {"serial": ["--backend", "serial"],
                        "ray1": ["--backend", "ray", "--workers", "1"],
                        "ray2": ["--backend", "ray", "--workers", "2"]}.items():
        outputs[name] = tmp_path / f"{name}.parquet"
        assert run_cli(smollm2_dir, prompt_file, outputs[name], *extra) == 0
    serial = without_timing(outputs["serial"])
    assert serial.height == 4 and serial["evaluations"].min() >= 2
    assert serial.equals(without_timing(outputs["ray1"]))
    assert serial.equals(without_timing(outputs["ray2"]))
    assert not (tmp_path / "serial.parquet.progress.jsonl").exists()
    # the Table 2 summary reads the shards back
    manifest = smollm2_dir / "drllm_model.json"
    summary = tmp_path / "summary.parquet"
    assert search_summary.main(["--manifest", str(manifest), "--shards", str(outputs["serial"]),
                                "--out", str(summary)]) == 0
    assert pl.read_parquet(summary)["prompts"].to_list() == [4, 4]  # the task, then the `all` row
    assert (tmp_path / "summary.md").read_text().startswith("# Search summary")


def test_sharding_splits_prompts(smollm2_dir, prompt_file, tmp_path):
    assert run_cli(smollm2_dir, prompt_file, tmp_path / "s1.parquet", "--shard", "1", "--num-shards", "2") == 0
    assert pl.read_parquet(tmp_path / "s1.parquet")["prompt_index"].to_list() == [1, 3]


def test_clear_failures(smollm2_dir, prompt_file, tmp_path, capsys):
    assert run_cli(smollm2_dir, prompt_file, tmp_path / "x.parquet",
                   settings=json.dumps({"mcts": {"simulations": 0}})) == 2
    assert "simulations" in capsys.readouterr().err
    assert run_cli(smollm2_dir, prompt_file, tmp_path / "x.parquet", settings='{"mcst": {}}') == 2
    assert "unknown search setting(s) ['mcst']" in capsys.readouterr().err
    broken = tmp_path / "broken.parquet"
    pl.read_parquet(prompt_file).drop("choices").write_parquet(broken)
    assert run_cli(smollm2_dir, broken, tmp_path / "x.parquet") == 2
    assert "missing column(s) ['choices']" in capsys.readouterr().err
    assert run_cli(smollm2_dir, tmp_path / "nope.parquet", tmp_path / "x.parquet") == 2
    assert "prompt set not found" in capsys.readouterr().err
    other = tmp_path / "other.parquet"
    pl.read_parquet(prompt_file).with_columns(pl.lit("haiku").alias("format")).write_parquet(other)
    assert run_cli(smollm2_dir, other, tmp_path / "x.parquet") == 2
    assert "haiku" in capsys.readouterr().err
    shard = tmp_path / "foreign.parquet"
    assert run_cli(smollm2_dir, prompt_file, shard, "--shard", "0", "--num-shards", "4") == 0
    foreign = json.loads((smollm2_dir / "drllm_model.json").read_text()) | {"name": "llama-3.2-3b"}
    (tmp_path / "manifest.json").write_text(json.dumps(foreign))
    assert search_summary.main(["--manifest", str(tmp_path / "manifest.json"), "--shards", str(shard),
                                "--out", str(tmp_path / "sum.parquet")]) == 2
    assert "is from model 'smollm2-135m-instruct', expected 'llama-3.2-3b'" in capsys.readouterr().err


def test_killed_job_resumes_without_redoing_finished_prompts(smollm2_dir, prompt_file, tmp_path):
    out = tmp_path / "shard.parquet"
    command = [sys.executable, str(REPO / "workflow" / "scripts" / "search.py"), "--model-dir", str(smollm2_dir),
               "--prompts", str(prompt_file), "--settings-json", SETTINGS, "--out", str(out), "--cpus", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:  # wait for the first finished prompt, then kill hard
        if "1/4 prompts" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert not out.exists()
    done = len((tmp_path / "shard.parquet.progress.jsonl").read_text().splitlines()) - 1
    assert done >= 1
    started = time.perf_counter()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"{done} already done (checkpoint)" in again.stdout
    assert again.stdout.count("last: ") == 4 - done
    assert pl.read_parquet(out).height == 4 and time.perf_counter() - started < 600


def test_router_samples_re_encode_the_searched_prompts(smollm2_dir, prompt_file, tmp_path, capsys):
    import router_samples

    from drllm.training import read_samples

    shard = tmp_path / "shard.parquet"
    assert run_cli(smollm2_dir, prompt_file, shard, "--shard", "0", "--num-shards", "2") == 0
    kept = pl.read_parquet(shard).filter("kept")
    out = tmp_path / "samples.parquet"
    args = ["--model-dir", str(smollm2_dir), "--prompts", str(prompt_file), "--shards", str(shard), "--out", str(out)]
    if kept.height == 0:
        assert router_samples.main(args) == 2
        assert "no kept prompts" in capsys.readouterr().err
        return
    assert router_samples.main(args) == 0
    samples = read_samples(out)
    assert [s.labels for s in samples] == kept["labels"].to_list()
    assert all(s.input_ids[-1] != s.input_ids[0] for s in samples)
    # another format option changes the prompt text: the hash check refuses to pair them
    letter = tmp_path / "letter.parquet"
    pl.read_parquet(prompt_file).with_columns(pl.lit("letter").alias("format")).write_parquet(letter)
    assert router_samples.main(args[:2] + ["--prompts", str(letter)] + args[4:]) == 2
    assert "differs from the one searched" in capsys.readouterr().err
