"""Executor overhead and path-length scaling, measured side by side in one run.

Compares, on the same inputs and interleaved so drift hits both sides alike:
  * default-path prefill: PathExecutor.prefill vs the plain HF forward
  * greedy decoding: PathExecutor.generate vs HF generate (KV cache on both sides)
  * prefill and decoding along paths of 30, 25 and 20 executed layers (layers skipped evenly)

Model: the materialised SmolLM2 (--model-dir), or random weights in a named shape (--shape) for machines
without the assets (timing does not depend on weight values).

  python bench/executor.py                              # CPU, fp32, SmolLM2 from resources/
  python bench/executor.py --shape llama-3.2-3b --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time

import torch

from drllm.core.executor import PathExecutor
from drllm.core.models import load_model, resolve_device, resolve_dtype
from drllm.core.paths import LayerPath

SHAPES = {
    # num_hidden_layers, hidden_size, intermediate_size, heads, kv heads, vocab
    "smollm2-135m": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-3.2-3b": dict(num_hidden_layers=28, hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
}


def build_model(args):
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.shape:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=4096, eos_token_id=2, pad_token_id=2)
        model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval().requires_grad_(False)
        return model, f"random weights, {args.shape} shape"
    model, _, manifest = load_model(args.model_dir, device=str(device), dtype=args.dtype)
    return model, f"{manifest['name']} ({manifest['source']})"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int, device) -> dict:
    """Median seconds per function, alternating the order each round."""
    times = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up
        fn()
    names = list(fns)
    for round_ in range(repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            times[name].append(timed(fns[name], device))
    return {name: statistics.median(values) for name, values in times.items()}


def evenly_skipped(num_layers: int, executed: int) -> LayerPath:
    """Keep the first and last layer; drop `num_layers - executed` layers spread over the middle."""
    drop = num_layers - executed
    if drop <= 0:
        return LayerPath.default(num_layers)
    middle = list(range(1, num_layers - 1))
    step = len(middle) / drop
    dropped = {middle[int(i * step + step / 2)] for i in range(drop)}
    return LayerPath(tuple(l for l in range(num_layers) if l not in dropped), num_layers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random weights in this shape instead of --model-dir")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, what = build_model(args)
    device = next(model.parameters()).device
    executor = PathExecutor(model)
    L = executor.num_layers
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (args.batch, args.prompt_tokens), generator=gen).to(device)
    mask = torch.ones_like(ids)
    # no EOS: both sides must decode exactly new_tokens tokens
    hf_generate = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                       eos_token_id=None, pad_token_id=0)

    print(f"# bench/executor.py  {datetime.date.today()}  {platform.node()}  {platform.processor() or platform.machine()}")
    print(f"# model: {what}; {L} layers; device {device}, dtype {next(model.parameters()).dtype}, "
          f"threads {torch.get_num_threads()}; batch {args.batch}, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens; median of {args.repeats}")

    with torch.no_grad():
        theirs = model(ids, attention_mask=mask).logits[:, -1].float()
        ours = executor.prefill(ids, mask, logits="last").logits[:, -1].float()
        hf_tokens = model.generate(ids, attention_mask=mask, **hf_generate)[:, ids.shape[1]:]
        our_tokens = executor.generate(ids, mask, max_new_tokens=args.new_tokens, eos_token_id=[]).tokens
    agree = (hf_tokens == our_tokens).float().mean().item()
    print(f"# correctness: max |logit diff| vs HF forward {(theirs - ours).abs().max().item():.2e} "
          f"(max |logit| {theirs.abs().max().item():.1f}); greedy tokens equal to HF generate: {agree:.1%}")

    with torch.no_grad():
        prefill = interleaved({
            "hf": lambda: model(ids, attention_mask=mask, use_cache=False, logits_to_keep=1),
            "drllm": lambda: executor.prefill(ids, mask, logits="last"),
        }, args.repeats, device)
        decode = interleaved({
            "hf": lambda: model.generate(ids, attention_mask=mask, **hf_generate),
            "drllm": lambda: executor.generate(ids, mask, max_new_tokens=args.new_tokens, eos_token_id=[]),
        }, max(3, args.repeats // 2), device)
    print("\n| measurement | HF | drllm | drllm / HF |\n|---|---|---|---|")
    print(f"| default-path prefill (s) | {prefill['hf']:.4f} | {prefill['drllm']:.4f} | "
          f"{prefill['drllm'] / prefill['hf']:.3f} |")
    print(f"| greedy {args.new_tokens} tokens incl. prefill (s) | {decode['hf']:.4f} | {decode['drllm']:.4f} | "
          f"{decode['drllm'] / decode['hf']:.3f} |")

    sizes = [L, L - 5, L - 10] if L > 10 else [L, max(1, L - 1)]
    paths = {n: evenly_skipped(L, n) for n in sizes}
    path_prefill = interleaved({n: (lambda p=p: executor.prefill(ids, mask, p, logits="last"))
                                for n, p in paths.items()}, args.repeats, device)
    path_decode = interleaved({n: (lambda p=p: executor.generate(ids, mask, p, max_new_tokens=args.new_tokens,
                                                                 eos_token_id=[]))
                               for n, p in paths.items()}, max(3, args.repeats // 2), device)
    print(f"\n| executed layers | prefill (s) | vs {L} | greedy {args.new_tokens} tokens (s) | vs {L} | layer ratio |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        print(f"| {n} | {path_prefill[n]:.4f} | {path_prefill[n] / path_prefill[L]:.3f} | {path_decode[n]:.4f} | "
              f"{path_decode[n] / path_decode[L]:.3f} | {n / L:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
