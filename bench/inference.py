"""Routed vs base generation speed and the routers' overhead, measured side by side in one run.

On the same chat prompts (ARC test questions in the letter format), interleaved so drift hits every side alike:
  * tokens/s of greedy generation of --new-tokens tokens (EOS ignored) at batch 1 and batch 8:
    base (every layer) vs routed (routing on the prompt, then the batch decodes as one, each row along its path),
    the same routed paths without routing (mixed-path batch), and the paper's batching by path (each distinct
    path decoded as its own batch by the plain executor), with the block calls per decoded token of each
  * router overhead: the routed prefill vs a prefill along the same path without routing, and the routers alone
    (pooling + MLPs + decisions of all layers) as a share of that prefill, for the packed routing step
    (drllm.routing.kinds.mlp.PackedRouters) and, side by side, the step it replaced (`reference_routing` below)
Routers: the trained ones (--routers, default results/routers/<model>) when present, else random routers made
to skip (labelled so). --knob adds a control-knob setting that skips more.

  python bench/inference.py                         # CPU fp32, SmolLM2 + trained routers from results/
  python bench/inference.py --device cuda --dtype bfloat16 --new-tokens 256
  python bench/inference.py --batches none --overhead-repeats 101   # the router overhead alone
  python bench/inference.py --batches none --try-compile            # + torch.compile of the packed step
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from drllm.core import path_batch
from drllm.data.registry import load_benchmark
from drllm.core.executor import PathExecutor
from torch.nn import functional as F

from drllm.routing.inference import RoutedModel, pad_left
from drllm.core.models import load_model, read_manifest, resolve_device
from drllm.routing.decision import apply_knob, decide_row, probabilities
from drllm.routing.pooling import window_assignment
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.formats.answers import get_format


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def reference_routing(routed: RoutedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """The per-block routing step before packing (kept here to measure against): the pooling matrix once per
    prompt, then per block pooling bmm, Router's fc1 / GELU / window vote / fc2 through its modules' weights,
    softmax, apply_knob, host decision."""
    routers, knob = routed.routers, routed.knob
    batch, length = input_ids.shape
    assign, window_mask = window_assignment(attention_mask, batch, length, routers.config.windows, routed.device)
    weights = None
    if not bool(window_mask.all()):
        weights = (window_mask.float() / window_mask.sum(-1, keepdim=True))[..., None]

    def route(layer: int, hidden: torch.Tensor) -> list[int]:
        if hidden.dtype != torch.float32:
            hidden = hidden.float()
        fc1, fc2 = routers[layer].fc1, routers[layer].fc2
        means = torch.bmm(assign, hidden)
        if means.dtype != fc1.weight.dtype:
            means = means.to(fc1.weight.dtype)
        z = F.gelu(F.linear(means, fc1.weight, fc1.bias), approximate="tanh")
        z = z.mean(-2) if weights is None else (z * weights).sum(-2)
        probs = probabilities(F.linear(z, fc2.weight, fc2.bias))
        if knob is not None:
            probs = apply_knob(probs, knob)
        return [decide_row(row) for row in probs.tolist()]

    return route


def try_compile(routers: RouterStack, inputs: list[torch.Tensor], repeats: int, device) -> None:
    """torch.compile of the packed step (pool, fc1, GELU, vote + fc2, softmax) for this prompt's shape: the first
    call's compile time, then eager vs compiled over all layers, interleaved, on the routing pass's one thread."""
    packed = routers.packed()
    prompt = packed.prompt(None, *inputs[0].shape[:2], device)

    def step(assign, hidden, b1, w1t, b2, tiled):
        z = torch.addmm(b1, torch.bmm(assign, hidden).view(assign.shape[0] * assign.shape[1], -1), w1t)
        z = F.gelu(z, approximate="tanh")
        return torch.softmax(torch.addmm(b2, z.view(assign.shape[0], -1), tiled), -1)

    def layer_args(layer):
        return prompt.assign, inputs[layer], packed.b1[layer], packed.w1t[layer], packed.b2[layer], prompt.tiled[layer]

    compiled = torch.compile(step, dynamic=False)
    compile_s = timed(lambda: compiled(*layer_args(0)), device)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    samples = {"eager": [], "compiled": []}
    try:
        for layer in range(len(inputs)):
            torch.testing.assert_close(compiled(*layer_args(layer)), step(*layer_args(layer)))
        for _ in range(repeats):
            for name, fn in (("eager", step), ("compiled", compiled)):
                samples[name].append(timed(lambda: [fn(*layer_args(layer)).tolist() for layer in range(len(inputs))],
                                           device))
    finally:
        torch.set_num_threads(previous)
    print(f"\ntorch.compile of the packed step: first call (compile) {compile_s:.1f} s; all {len(inputs)} layers, "
          f"median of {repeats}: eager {statistics.median(samples['eager']) * 1e3:.2f} ms, compiled "
          f"{statistics.median(samples['compiled']) * 1e3:.2f} ms")


def load_routers(args, manifest, device) -> tuple[RouterStack, str]:
    directory = Path(args.routers or f"results/routers/{manifest['name']}")
    if (directory / "routers.safetensors").is_file():
        stack = RouterStack.for_model(directory, manifest, device=device)
        return stack, f"trained ({directory})"
    stack = RouterStack(RouterConfig(manifest["name"], int(manifest["num_layers"]), int(manifest["hidden_size"])),
                        seed=0)
    with torch.no_grad():
        for router in stack.routers:
            router.fc2.bias.copy_(torch.tensor([1.0, 2.0, -5.0]))
            router.fc2.weight.mul_(3.0)
    return stack.to(device), "random, biased to skip (no trained routers found)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--routers", default="", help="trained router directory (default results/routers/<model>)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", default="1,8", help="generation batch sizes, or 'none' (router overhead only)")
    parser.add_argument("--knob", type=float, default=-0.6, help="an extra router@p setting that skips more")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--try-compile", action="store_true",
                        help="also time torch.compile of the packed step: compile time and eager vs compiled")
    parser.add_argument("--overhead-repeats", type=int, default=0,
                        help="samples of the router-overhead timings (default max(7, 3 * --repeats))")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    model, tokenizer, manifest = load_model(args.model_dir, device=str(device), dtype=args.dtype)
    executor = PathExecutor(model)
    routers, routers_note = load_routers(args, read_manifest(args.model_dir), device)
    answer_format = get_format("letter")
    examples = load_benchmark("arc_easy", "test", limit=8)
    prompts = [answer_format.encode(ex, tokenizer).prompt_ids for ex in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    print(f"# bench/inference.py  {datetime.date.today()}  {platform.node()}  torch {torch.__version__}  "
          f"threads {torch.get_num_threads()}")
    print(f"# model {manifest['name']} ({executor.num_layers} layers) on {device}, {model.dtype}; routers: "
          f"{routers_note}; {args.new_tokens} new tokens, EOS ignored; median of {args.repeats}")

    settings = {"base": RoutedModel(executor), "router": RoutedModel(executor, routers),
                f"router@{args.knob:g}": RoutedModel(executor, routers, knob=args.knob)}
    base_tokens_per_s: dict[int, float] = {}
    for batch in ([] if args.batches == "none" else [int(b) for b in args.batches.split(",")]):
        input_ids, attention_mask = pad_left(prompts[:batch], pad)
        times: dict[str, list[float]] = {name: [] for name in settings}
        mixed_times: dict[str, list[float]] = {name: [] for name in settings if name != "base"}
        by_path_times: dict[str, list[float]] = {name: [] for name in settings if name != "base"}
        paths = {name: routed.route(input_ids, attention_mask) for name, routed in settings.items()}
        for name, routed in settings.items():  # warm-up
            routed.generate(input_ids, attention_mask, max_new_tokens=4, eos_token_id=[])

        def mixed(name):
            """The routed paths without routing, decoded as one mixed-path batch."""
            state = path_batch.prefill(executor, input_ids, attention_mask, paths[name])
            path_batch.continue_generation(executor, state, max_new_tokens=args.new_tokens, eos_token_id=[])

        def by_path(name):
            """The paper's batching by path: the executor decodes each distinct path's rows as their own batch."""
            for path in dict.fromkeys(paths[name]):
                rows = [i for i, p in enumerate(paths[name]) if p == path]
                executor.generate(input_ids[rows], attention_mask[rows], path, max_new_tokens=args.new_tokens,
                                  eos_token_id=[])

        for _ in range(args.repeats):
            for name, routed in settings.items():
                times[name].append(timed(lambda: routed.generate(input_ids, attention_mask,
                                                                 max_new_tokens=args.new_tokens,
                                                                 eos_token_id=[]), device))
                if name in mixed_times:
                    mixed_times[name].append(timed(lambda: mixed(name), device))
                    if batch > 1:  # one row, one path: the same computation as the mixed batch
                        by_path_times[name].append(timed(lambda: by_path(name), device))
        base = statistics.median(times["base"])
        tokens = batch * args.new_tokens
        base_tokens_per_s[batch] = tokens / base
        print(f"\nbatch {batch}:")
        print(f"  {'setting':<14} {'mean layers':>11} {'paths':>5} {'block calls':>11} {'tokens/s':>9} "
              f"{'vs base':>8} {'ideal':>6} {'vs ideal':>8} {'mixed, no routing':>17} {'by path':>8} "
              f"{'by-path calls':>13}")
        for name in settings:
            elapsed = statistics.median(times[name])
            mean_layers = sum(len(p) for p in paths[name]) / batch
            ideal = executor.num_layers / max(mean_layers, 1e-9)
            calls = len(path_batch.PathBatch.of(paths[name]).steps)
            by_path_calls = sum(len(p) for p in set(paths[name]))
            extra = " " * 40
            if name in mixed_times:
                by_path_speed = (f"{tokens / statistics.median(by_path_times[name]):8.1f}" if by_path_times[name]
                                 else f"{'=mixed':>8}")
                extra = f"{tokens / statistics.median(mixed_times[name]):17.1f} {by_path_speed} {by_path_calls:13d}"
            print(f"  {name:<14} {mean_layers:11.2f} {len(set(paths[name])):5d} {calls:11d} {tokens / elapsed:9.1f} "
                  f"{base / elapsed:7.3f}x {ideal:5.3f}x {base / elapsed / ideal:7.3f}x {extra}")

    # router overhead on one prompt: routed prefill vs a prefill along the same path, and the routers alone; the
    # packed step and the reference step side by side, interleaved
    ids = torch.tensor([prompts[0]], device=device)
    routed = settings["router"]
    path = routed.route(ids)[0]
    inputs = executor.prefill(ids, None, path, keep_hidden=True, logits="none").layer_inputs()

    def routers_alone(routing):
        route = routing(ids, None)
        return [list(route(layer, inputs[layer])) for layer in range(executor.num_layers)]

    def one_thread(routing):
        """The reference step's route on one thread, as RoutedModel runs the packed step (router_threads=1)."""
        def threaded(input_ids, mask):
            route = routing(input_ids, mask)

            def on_one(layer, hidden):
                previous = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    return route(layer, hidden)
                finally:
                    torch.set_num_threads(previous)
            return on_one
        return threaded

    all_threads = RoutedModel(executor, routers, router_threads=None)  # the packed step on the process's threads
    steps = {"": routed.routing, ", all threads": all_threads.routing,
             ", reference step": lambda i, m: reference_routing(routed, i, m),
             ", reference step, 1 thread": one_thread(lambda i, m: reference_routing(routed, i, m))}
    for name, knobbed in settings.items():  # the steps decide alike on every block (checked, not timed)
        if name != "base":
            assert routers_alone(knobbed.routing) == routers_alone(lambda i, m: reference_routing(knobbed, i, m)), name

    def routed_prefill(routing, spent: list[float]):
        """A routed prefill; `spent` gets the time inside its route calls (the routers as the pass runs them: the
        block's output still in cache, the prompt's per-prompt setup included)."""
        start = time.perf_counter()
        route = routing(ids, None)
        inside = time.perf_counter() - start

        def timed_route(layer, hidden):
            nonlocal inside
            sync(device)
            begin = time.perf_counter()
            decisions = route(layer, hidden)
            inside += time.perf_counter() - begin
            return decisions

        path_batch.prefill(executor, ids, None, route=timed_route, use_cache=True)
        spent.append(inside)

    runs = {"same path, no routing": lambda: executor.prefill(ids, None, path, use_cache=True, logits="last")}
    in_prefill: dict[str, list[float]] = {}
    for suffix, routing in steps.items():
        in_prefill[suffix] = []
        runs["routed prefill" + suffix] = lambda r=routing, spent=in_prefill[suffix]: routed_prefill(r, spent)
        runs["routers alone" + suffix] = lambda routing=routing: routers_alone(routing)
    samples = {name: [] for name in runs}
    for _ in range(args.overhead_repeats or max(7, args.repeats * 3)):
        for name, run in runs.items():
            samples[name].append(timed(run, device))
    for suffix, spent in in_prefill.items():  # each prefill's own share, then the median of those shares
        samples["routers in the prefill" + suffix] = spent
    shares = {suffix: statistics.median(s / (total - s) for s, total in zip(spent, samples["routed prefill" + suffix]))
              for suffix, spent in in_prefill.items()}
    median = {name: statistics.median(values) for name, values in samples.items()}
    best = {name: min(values) for name, values in samples.items()}  # the least disturbed sample on a shared CPU
    print(f"\nrouter overhead, prompt of {ids.shape[1]} tokens, routed path {len(path)} layers "
          f"(median and min of {len(samples['routed prefill'])}, interleaved; packed step on 1 thread unless said):")
    for name, value in median.items():
        print(f"  {name:<38} {value * 1e3:8.2f} ms  (min {best[name] * 1e3:8.2f} ms)")
    prefill = median["same path, no routing"]
    routing = median["routed prefill"] - prefill
    for suffix in steps:
        step = suffix[2:] if suffix.startswith(", reference") else "packed step" + suffix
        print(f"  {step:<28} routers alone / prefill: median {median['routers alone' + suffix] / prefill:6.2%}, "
              f"min {best['routers alone' + suffix] / best['same path, no routing']:6.2%}   "
              f"routed / unrouted prefill: {median['routed prefill' + suffix] / prefill:.3f}x   "
              f"routers in the prefill / rest of it: median {shares[suffix]:6.2%}")
    if args.try_compile:
        try_compile(routers, inputs, len(samples["routed prefill"]), device)
    if 1 in base_tokens_per_s:
        print(f"  routing cost ({routing * 1e3:.2f} ms, once per prompt) / base generation of {args.new_tokens} "
              f"tokens at batch 1: {routing / (args.new_tokens / base_tokens_per_s[1]):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
