"""The search stage end to end on the real SmolLM2: CLI, backends, resume, failures, summary, a joined Ray cluster."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from drllm.data.registry import load_benchmark
from drllm.search.prompts import select_prompts, write_prompts

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


@pytest.fixture(scope="module")
def serial_shard(smollm2_dir, prompt_file, tmp_path_factory):
    """All 4 prompts searched by the serial backend: the reference every other backend must reproduce."""
    out = tmp_path_factory.mktemp("serial") / "serial.parquet"
    assert run_cli(smollm2_dir, prompt_file, out, "--backend", "serial") == 0
    return out


def test_shards_identical_across_backends_and_worker_counts(smollm2_dir, prompt_file, serial_shard, tmp_path):
    outputs = {"serial": serial_shard}
    # prompts searched in lockstep (--batch-prompts) give the rows of one prompt at a time
    # (one Ray run: two workers and lockstep batches at once; every Ray start costs seconds of CPU)
    for name, extra in {"ray2": ["--backend", "ray", "--workers", "2", "--batch-prompts", "2"]}.items():
        outputs[name] = tmp_path / f"{name}.parquet"
        assert run_cli(smollm2_dir, prompt_file, outputs[name], *extra) == 0
    serial = without_timing(outputs["serial"])
    assert serial.height == 4 and serial["evaluations"].min() >= 2
    assert serial.equals(without_timing(outputs["ray2"]))
    provenance = {name: pq.read_schema(path).metadata[b"drllm"] for name, path in outputs.items()}
    assert provenance["serial"] == provenance["ray2"]
    assert not (serial_shard.parent / "serial.parquet.progress.jsonl").exists()
    # the Table 2 summary reads the shards back
    manifest = smollm2_dir / "drllm_model.json"
    summary = tmp_path / "summary.parquet"
    assert search_summary.main(["--manifest", str(manifest), "--shards", str(outputs["serial"]),
                                "--out", str(summary)]) == 0
    assert pl.read_parquet(summary)["prompts"].to_list() == [4, 4]  # the task, then the `all` row
    assert (tmp_path / "summary.md").read_text().startswith("# Search summary")


def test_letter_shards_identical_at_any_batch_width(smollm2_dir, tmp_path):
    """The paper's ARC format (greedy letter answers): prompts searched in lockstep, each round's answers
    generated as one mixed-path batch, give the shard of one prompt at a time, byte for byte but for timing."""
    records = [e.to_dict() for e in load_benchmark("arc_easy", "validation", limit=40)]
    prompts = tmp_path / "arc_letter.parquet"
    write_prompts(prompts, select_prompts(records, "arc_easy", "letter", 5, seed=0))
    settings = json.dumps({"mcts": {"simulations": 3, "early_stop": False}, "seed": 3, "formats": {"letter": {}}})
    shards = {}
    for width in (1, 3):  # 3: a full lockstep group of 3, then a ragged one of 2
        shards[width] = tmp_path / f"width{width}.parquet"
        assert run_cli(smollm2_dir, prompts, shards[width], "--backend", "serial", "--batch-prompts", str(width),
                       settings=settings) == 0
    one = without_timing(shards[1])
    assert one.height == 5 and one["evaluations"].min() >= 3
    assert one.equals(without_timing(shards[3]))
    assert pq.read_schema(shards[1]).metadata[b"drllm"] == pq.read_schema(shards[3]).metadata[b"drllm"]


def test_sharding_splits_prompts(smollm2_dir, prompt_file, tmp_path):
    assert run_cli(smollm2_dir, prompt_file, tmp_path / "s1.parquet", "--shard", "1", "--num-shards", "2") == 0
    assert pl.read_parquet(tmp_path / "s1.parquet")["prompt_index"].to_list() == [1, 3]


def test_clear_failures(smollm2_dir, prompt_file, tmp_path, capsys):
    assert run_cli(smollm2_dir, prompt_file, tmp_path / "x.parquet",
                   settings=json.dumps({"mcts": {"simulations": 0}})) == 2
    assert "simulations" in capsys.readouterr().err
    assert run_cli(smollm2_dir, prompt_file, tmp_path / "x.parquet", settings='{"mcst": {}}') == 2
    assert "search: unknown key(s) ['mcst']" in capsys.readouterr().err
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

    from drllm.training.samples import read_samples

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def session_processes(session: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session:
                found.append(process)
        except (OSError, psutil.Error):
            pass
    return found


@dataclasses.dataclass
class RayHead:
    address: str   # what search.ray_address / --ray-address take
    session: int   # the process session of all its processes
    env: dict      # the environment of processes that join it


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head (`ray start --head`) as a user would start one, with token authentication as the sbatch
    script sets it (one token, in the environment: no ~/.ray/auth_token written).

    Its own session, temp dir and ports keep it apart from any other Ray on the machine (`ray stop` would stop
    them all); teardown ends every process of that session, whatever the tests did.
    """
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: AF_UNIX socket paths are limited to 107 bytes
    log = open(os.path.join(temp_dir, "head.log"), "w+")
    port = free_port()
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=false",
                             f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                             "--disable-usage-stats"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (text := Path(log.name).read_text()):
            assert head.poll() is None and time.monotonic() < deadline, f"ray start --head failed:\n{text}"
            time.sleep(0.2)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", text)  # ray colours its output when a colour library is installed
        node_ip = re.search(r"Local node IP: (\S+)", plain).group(1)
        yield RayHead(f"{node_ip}:{port}", head.pid, env)
    finally:
        head.terminate()  # `ray start --block` stops its processes on SIGTERM
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for process in session_processes(head.pid):  # whatever survived, e.g. a worker the raylet left behind
            process.kill()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


class WorkerKiller(threading.Thread):
    """SIGKILLs the first search worker of the cluster seen running a prompt (Ray titles it `ray::SearchWorker.run_many`):
    the loss always hits a prompt in flight, with no timing guess."""

    def __init__(self, session: int):
        super().__init__(daemon=True)
        self.session, self.killed, self.stop = session, None, threading.Event()

    def run(self):
        raylet = None
        for process in session_processes(self.session):  # the workers' parent
            with contextlib.suppress(psutil.Error):
                if process.name() == "raylet":
                    raylet = process
        while raylet is not None and not self.stop.wait(0.1):
            for process in raylet.children():
                try:
                    if process.cmdline()[:1] == ["ray::SearchWorker.run_many"]:
                        process.kill()
                        self.killed = process.pid
                        return
                except psutil.Error:
                    pass


def search_killing_a_worker(ray_head, smollm2_dir, prompt_file, out, *extra):
    """The search stage's CLI (its own process, as the search rule runs it) joins the cluster; one worker is
    SIGKILLed mid-prompt, as by preemption or the OOM killer."""
    killer = WorkerKiller(ray_head.session)
    killer.start()
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "workflow" / "scripts" / "search.py"), "--model-dir", str(smollm2_dir),
             "--prompts", str(prompt_file), "--settings-json", SETTINGS, "--out", str(out), "--cpus", "2",
             "--backend", "ray", "--workers", "1", "--ray-address", ray_head.address, "--shard", "3",
             "--num-shards", "4", *extra], env=ray_head.env, capture_output=True, text=True, timeout=300)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, f"no search worker was seen running a prompt:\n{result.stderr}"
    return result


def test_joined_ray_cluster_replaces_a_killed_worker(smollm2_dir, prompt_file, serial_shard, ray_head, tmp_path):
    """Joined through --ray-address (search.ray_address), the job loses its worker mid-prompt: a new worker takes
    the prompt and the rows are the serial run's."""
    expected = without_timing(serial_shard).filter(pl.col("prompt_index") == 3)
    prompt_id = expected["prompt_id"].item()
    out = tmp_path / "joined.parquet"
    result = search_killing_a_worker(ray_head, smollm2_dir, prompt_file, out)
    assert result.returncode == 0, result.stderr
    assert (f"lost the worker searching prompt {prompt_id} (ActorDiedError); starting a replacement, retry 1/2"
            in result.stderr)
    assert result.stderr.count("worker ready") == 2
    assert without_timing(out).equals(expected)


def test_a_prompt_losing_workers_past_max_retries_fails_naming_it(smollm2_dir, prompt_file, serial_shard, ray_head,
                                                                  tmp_path):
    prompt_id = pl.read_parquet(serial_shard).filter(pl.col("prompt_index") == 3)["prompt_id"].item()
    out = tmp_path / "lost.parquet"
    result = search_killing_a_worker(ray_head, smollm2_dir, prompt_file, out, "--max-retries", "0")
    assert result.returncode == 1, result.stderr
    assert f"search: error: prompt {prompt_id}: the Ray search worker died 1 time(s); max_retries=0" in result.stderr
    assert not out.exists() and "rerun the same command to resume" in result.stderr
