"""The served model: base and routed side by side through one server, the batching choice, and a bounded load test.

Three parts, one run:
  1. batching (in process, no HTTP): one batch of 8 routed prompts whose paths differ, decoded as one exact
     mixed-path batch (mixed), shared paths together + the rest mixed (grouped), each path alone (by_path); and the
     same 8 prompts along the base path. Interleaved, median of --repeats. The server's default is the fastest.
  2. HTTP (drllm serve on a local Ray, one replica serving `base` and the routed point): throughput (generated
     tokens/s) and p50 / p95 latency at concurrency 1, 8 and 32, base and routed interleaved per concurrency, on a
     mix of ARC test prompts in the letter chat format (their routed paths differ). EOS ignored (`ignore_eos`), so
     both sides generate the same number of tokens.
  3. load test: two replicas, a fixed number of requests at concurrency 8; one replica is killed (SIGKILL) a third
     of the way in. Counts ok / failed (the in-flight requests the killed replica fails) / lost (no answer: must be
     0), and waits for Ray Serve to replace the replica.
Routers: trained ones (--routers) when given, else seeded random routers biased to skip (bench/inference.py's,
labelled so).

  python bench/serve.py                               # CPU, the embedded SmolLM2
  python bench/serve.py --routers results/routers/smollm2-135m-instruct --point router@certified
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from drllm.core.models import read_manifest
from drllm.data.registry import load_benchmark
from drllm.formats.answers import get_format
from drllm.serving.engine import Engine
from drllm.serving.load import run_load
from drllm.serving.settings import BATCHING, ServeSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def routers_dir(args, manifest: dict, out: Path) -> tuple[str, str]:
    """The routers to serve: --routers, else bench/inference.py's seeded skipping routers saved under `out`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from inference import load_routers

    stack, note = load_routers(args, manifest, "cpu")
    if args.routers:
        return args.routers, note
    stack.save_pretrained(out)
    return str(out), note


def batching_part(args, settings: ServeSettings, prompts: list[list[int]]) -> tuple[str, list[str]]:
    """Time Engine.run on one batch of 8 under each grouping; returns the fastest and the table's lines."""
    engine = Engine(settings)
    jobs = {point: [engine.completion_jobs({"model": f"{engine.name}:{point}", "prompt": [ids],
                                            "max_tokens": args.new_tokens, "ignore_eos": True})[0]
                    for ids in prompts[:8]] for point in engine.points}
    routed = engine.settings.operating_points[1]

    def run(point: str, batching: str) -> tuple[float, list]:
        object.__setattr__(engine.settings, "batching", batching)
        start = time.perf_counter()
        finals = [None] * len(jobs[point])
        for events in engine.run(jobs[point]):
            for index, event in enumerate(events):
                if event is not None and event.finished:
                    finals[index] = event
        return time.perf_counter() - start, finals

    run(routed, "mixed")  # warm-up
    variants = [(routed, b) for b in BATCHING] + [("base", "mixed")]
    times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    tokens: dict[tuple[str, str], list] = {}
    for _ in range(args.repeats):
        for variant in variants:
            elapsed, finals = run(*variant)
            times[variant].append(elapsed)
            tokens[variant] = [(tuple(f.token_ids), f.path) for f in finals]
    same = all(tokens[(routed, b)] == tokens[(routed, "mixed")] for b in BATCHING)
    paths = [path for _, path in tokens[(routed, "mixed")]]
    lines = [f"8 prompts, {len(set(paths))} distinct routed paths, mean {statistics.fmean(len(p) for p in paths):.2f} "
             f"of {engine.executor.num_layers} blocks; {args.new_tokens} new tokens each; tokens equal across "
             f"groupings: {same}", "",
             "| point | batching | decode groups | tokens/s (median) | min s | vs base |", "|---|---|---|---|---|---|"]
    from drllm.serving.engine import decode_groups

    base = statistics.median(times[("base", "mixed")])
    for variant in variants:
        elapsed = statistics.median(times[variant])
        groups = len(decode_groups(paths, variant[1])) if variant[0] == routed else 1
        lines.append(f"| {variant[0]} | {variant[1]} | {groups} | {8 * args.new_tokens / elapsed:.1f} | "
                     f"{min(times[variant]):.2f} | {base / elapsed:.3f}x |")
    best = min(BATCHING, key=lambda b: statistics.median(times[(routed, b)]))
    del engine
    return best, lines


def http_part(args, settings: ServeSettings, prompts: list[list[int]]) -> list[str]:
    from drllm.serving.app import serve_in_process
    from drllm.serving.cli import start

    running = serve_in_process(settings) if args.in_process else start(settings, blocking=False)
    url = f"http://127.0.0.1:{settings.port}"
    name = settings.name
    points = settings.operating_points
    lines = ["| concurrency | point | requests | tokens/s | p50 s | p95 s | mean blocks | distinct paths | "
             "routed / base tokens/s |", "|---|---|---|---|---|---|---|---|---|"]
    warm = [{"model": f"{name}:{p}", "prompt": prompts[0], "max_tokens": 2} for p in points]
    run_load(f"{url}/v1/completions", warm, 1)
    for concurrency in args.concurrency:
        count = max(args.min_requests, 2 * concurrency)
        results = {}
        for point in points:
            bodies = [{"model": f"{name}:{point}", "prompt": prompts[i % len(prompts)], "max_tokens": args.new_tokens,
                       "ignore_eos": True} for i in range(count)]
            result = run_load(f"{url}/v1/completions", bodies, concurrency, timeout_s=args.timeout)
            results[point] = result
            summary = result.summary()
            layers = [o.body["choices"][0]["drllm"]["layers_executed"] for o in result.outcomes if o.status == "ok"]
            paths = {o.body["choices"][0]["drllm"]["path"] for o in result.outcomes if o.status == "ok"}
            ratio = ""
            if point != points[0]:
                ratio = f"{summary['tokens_per_s'] / results[points[0]].summary()['tokens_per_s']:.3f}x"
            lines.append(f"| {concurrency} | {point} | {summary['ok']}/{count} | {summary['tokens_per_s']:.1f} | "
                         f"{summary['p50_s']:.2f} | {summary['p95_s']:.2f} | "
                         f"{statistics.fmean(layers) if layers else float('nan'):.2f} | {len(paths)} | {ratio} |")
            print(lines[-1], flush=True)
    if args.in_process:
        running.should_exit = True
    else:
        from ray import serve

        serve.shutdown()
    return lines


def load_part(args, settings: ServeSettings, prompts: list[list[int]]) -> list[str]:
    """Two replicas, --load-requests requests at concurrency 8, one replica killed a third of the way in."""
    import ray
    from ray import serve

    from drllm.serving.cli import start

    start(settings, blocking=False)
    url = f"http://127.0.0.1:{settings.port}"
    pids = set()
    for _ in range(40):
        pids.add(get(f"{url}/health")["replica_pid"])
        if len(pids) >= 2:
            break
    victim = min(pids)
    killed: dict = {}

    def on_sent(index: int) -> None:
        if index == args.load_requests // 3 and not killed:
            killed["at"] = time.perf_counter()
            os.kill(victim, signal.SIGKILL)

    bodies = [{"model": f"{settings.name}:{settings.operating_points[i % 2]}", "prompt": prompts[i % len(prompts)],
               "max_tokens": args.new_tokens, "ignore_eos": True} for i in range(args.load_requests)]
    result = run_load(f"{url}/v1/completions", bodies, 8, timeout_s=args.timeout, on_sent=on_sent)
    replaced = None
    deadline = time.perf_counter() + args.timeout
    while time.perf_counter() < deadline:
        seen = {get(f"{url}/health")["replica_pid"] for _ in range(6)}
        if seen - pids:
            replaced = time.perf_counter() - killed["at"]
            break
        time.sleep(2)
    summary = result.summary()
    errors = sorted({o.error or str(o.code) for o in result.outcomes if o.status != "ok"})
    serve.shutdown()
    ray.shutdown()
    return [f"replicas {sorted(pids)}; killed {victim} (SIGKILL) as request {args.load_requests // 3 + 1} started",
            f"requests {summary['requests']}: ok {summary['ok']}, failed {summary['failed']} (in flight on the "
            f"killed replica), lost {summary['lost']}; {summary['seconds']:.1f} s",
            f"errors: {errors}",
            f"replacement replica answering {replaced:.1f} s after the kill" if replaced is not None
            else "no replacement replica seen before the timeout"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--routers", default="", help="trained router directory (default: seeded random routers)")
    parser.add_argument("--point", default="router", help="the routed operating point served beside base")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--min-requests", type=int, default=16, help="requests per point and concurrency (at "
                                                                     "least 2 x concurrency)")
    parser.add_argument("--repeats", type=int, default=3, help="samples of the in-process batching timings")
    parser.add_argument("--load-requests", type=int, default=48)
    parser.add_argument("--parts", default="batching,http,load")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server's replica")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--in-process", action="store_true",
                        help="HTTP part: the same app served in this process without Ray (serve_in_process)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))

    torch.manual_seed(0)
    manifest = read_manifest(args.model_dir)
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    routers, note = routers_dir(args, manifest, work / "routers")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    answer_format = get_format("letter")
    prompts = [answer_format.encode(ex, tokenizer).prompt_ids for ex in load_benchmark("arc_easy", "test", limit=32)]
    base = {"model": {"name": manifest["name"]}, "model_dir": args.model_dir, "routers": routers,
            "operating_points": ["base", args.point], "threads": args.threads, "max_batch_size": 8}
    print(f"# bench/serve.py  {datetime.date.today()}  {platform.node()}  torch {torch.__version__}  "
          f"cpus {os.cpu_count()}  load average {os.getloadavg()[0]:.1f}")
    print(f"# model {manifest['name']}; routers: {note}; point {args.point}; {args.new_tokens} new tokens, EOS "
          f"ignored; {len(prompts)} ARC-Easy test prompts (letter chat format)")
    batching = "mixed"
    if "batching" in parts:
        torch.set_num_threads(args.threads)
        batching, lines = batching_part(args, ServeSettings.from_dict(base), prompts)
        print("\n## batching (in process)\n" + "\n".join(lines) + f"\nfastest: {batching}", flush=True)
    if "http" in parts:
        settings = ServeSettings.from_dict({**base, "batching": batching, "port": free_port()})
        where = "in process (no Ray)" if args.in_process else "Ray Serve, one replica"
        print(f"\n## HTTP, {where}, batching {batching}, max_batch_size 8", flush=True)
        print("\n".join(http_part(args, settings, prompts)), flush=True)
    if "load" in parts:
        settings = ServeSettings.from_dict({**base, "batching": batching, "port": free_port(), "num_replicas": 2,
                                            "threads": 1})
        print("\n## load test: 2 replicas, concurrency 8", flush=True)
        print("\n".join(load_part(args, settings, prompts)), flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
