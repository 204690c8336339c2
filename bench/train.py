"""Router training speed: the teacher-forced feature cache vs rerunning the frozen model every step.

Same samples, same seed, same schedule on both sides (docs/method.md#training: effective batch 16, AdamW, focal loss):
  * cache build: one teacher-forced forward per sample along its labelled path (batched by identical path)
  * cached epoch: train_routers on the cache
  * full-forward epoch: train_full_forward, which runs the frozen model along the labelled paths every micro-batch
and checks that both give the same step losses.

Samples: real ARC-Easy validation questions in the search's letter format (drllm.formats.answers, chat template), labelled
with the default path minus one or two random layers (synthetic labels, realistic prompts and path shapes).
For machines without the model or the data: --write-prompts saves the tokenised prompts, --prompts-file reads
them back, and --shape uses random weights in a named shape (timing does not depend on weight values).

  python bench/train.py                                   # CPU, fp32, 64 samples, SmolLM2 from resources/
  python bench/train.py --samples 512 --write-prompts /tmp/arc512.parquet
  python bench/train.py --prompts-file /tmp/arc512.parquet --shape smollm2-135m --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from drllm.core.executor import PathExecutor
from drllm.core.models import MANIFEST, ModelSpec, load_model, materialize, resolve_device, resolve_dtype
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.training.features import build_feature_cache, pick_cache_device, teacher_forced_features
from drllm.training.full_forward import train_full_forward
from drllm.training.samples import TrainingSample, read_samples, write_samples
from drllm.training.train_settings import TrainConfig
from drllm.training.training import train_routers

DEFAULT_MODEL = Path("resources/models/smollm2-135m-instruct")
SHAPES = {
    # as bench/executor.py: num_hidden_layers, hidden_size, intermediate_size, heads, kv heads, vocab
    "smollm2-135m": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-3.2-3b": dict(num_hidden_layers=28, hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
}


def model_dir(path: str | None) -> Path:
    if path:
        return Path(path)
    if (DEFAULT_MODEL / MANIFEST).is_file():
        return DEFAULT_MODEL
    out = Path(tempfile.mkdtemp(prefix="smollm2-"))
    materialize(ModelSpec(name="smollm2-135m-instruct", source="embedded"), out)
    return out


def encode(example, tokenizer) -> list[int]:
    try:
        from drllm.formats.answers import get_format

        return list(get_format("letter").encode(example, tokenizer, chat_template=True).input_ids)
    except ImportError:  # tasks.py not there: the same prompt by hand
        letters = "ABCDEFGH"[:len(example.choices)]
        text = "\n".join([example.question] + [f"{l}. {c}" for l, c in zip(letters, example.choices)]
                         + [f"Answer with a single letter ({', '.join(letters)}) and nothing else."])
        return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))


def arc_prompts(tokenizer, count: int) -> list[tuple[str, list[int]]]:
    from drllm.data.registry import load_benchmark

    return [(example.id, encode(example, tokenizer))
            for example in load_benchmark("arc_easy", "validation", limit=count)]


def label(prompts: list[tuple[str, list[int]]], num_layers: int, seed: int) -> list[TrainingSample]:
    """The default path minus one or two random layers (never the first or last block)."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for prompt_id, ids in prompts:
        labels = [1] * num_layers
        skips = int(torch.randint(1, 3, (1,), generator=generator))
        for layer in (torch.randperm(num_layers - 2, generator=generator)[:skips] + 1).tolist():
            labels[layer] = 0
        samples.append(TrainingSample(prompt_id, ids, labels))
    return samples


def build_model(args):
    if args.shape:
        from transformers import LlamaConfig, LlamaForCausalLM

        device = resolve_device(args.device)
        torch.manual_seed(0)
        config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=4096, eos_token_id=2, pad_token_id=2)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype=resolve_dtype(args.dtype, device))
        manifest = {"name": f"random-{args.shape}", "hidden_size": config.hidden_size}
        return model.eval().requires_grad_(False), None, manifest, f"random weights, {args.shape} shape"
    model, tokenizer, manifest = load_model(model_dir(args.model_dir), device=args.device, dtype=args.dtype)
    return model, tokenizer, manifest, f"{manifest['name']} ({manifest['source']})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help=f"materialised model (default {DEFAULT_MODEL}, else embedded SmolLM2)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random weights in this shape instead of a model")
    parser.add_argument("--prompts-file",
                        help="tokenised prompts (training-samples Parquet) instead of ARC + tokenizer")
    parser.add_argument("--write-prompts", help="save the tokenised prompts here (for --prompts-file elsewhere)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--cache-epochs", type=int, default=5, help="cached epochs timed (median reported)")
    parser.add_argument("--full-epochs", type=int, default=1, help="full-forward epochs timed")
    parser.add_argument("--cache-batch-size", type=int, default=8)
    parser.add_argument("--cache-device", default="auto", help="where the feature cache lives: auto, cpu, cuda")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer, manifest, what = build_model(args)
    executor = PathExecutor(model)
    device = executor.device
    if args.prompts_file:
        prompts = [(s.prompt_id, s.input_ids) for s in read_samples(args.prompts_file)][:args.samples]
    elif tokenizer is None:
        parser.error("--shape needs --prompts-file (no tokenizer)")
    else:
        prompts = arc_prompts(tokenizer, args.samples)
    samples = label(prompts, executor.num_layers, seed=0)
    if args.write_prompts:
        write_samples(args.write_prompts, samples)
    lengths = [len(s.input_ids) for s in samples]
    config = TrainConfig(cache_batch_size=args.cache_batch_size, seed=0)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()

    def stack():
        return RouterStack(RouterConfig(manifest["name"], executor.num_layers, manifest["hidden_size"]),
                           seed=config.seed).to(device)

    # warm-up (allocator, kernels) on a few samples, not timed
    build_feature_cache(executor, samples[:4], config.windows, config.cache_batch_size)

    sync(device)
    started = time.perf_counter()
    cache_device = (pick_cache_device(len(samples), executor.num_layers, config.windows, manifest["hidden_size"],
                                      "float32", device) if args.cache_device == "auto" else args.cache_device)
    cache = build_feature_cache(executor, samples, config.windows, config.cache_batch_size, device=cache_device)
    sync(device)
    cache_seconds = time.perf_counter() - started

    cached_config = TrainConfig(**{**config.to_dict(), "epochs": args.cache_epochs})
    cached = train_routers(stack(), cache, cached_config)
    cached_epoch = statistics.median(row["seconds"] for row in cached.epochs)

    full_config = TrainConfig(**{**config.to_dict(), "epochs": args.full_epochs})
    full = train_full_forward(stack(), executor, samples, full_config)
    full_epoch = statistics.median(row["seconds"] for row in full.epochs)
    # the same run (seed, order, schedule length) on the cache: its step losses must match the full forward's
    same = train_routers(stack(), cache, full_config)
    diff = max(abs(a - b) for a, b in zip(same.step_losses, full.step_losses))

    # how far batching (padding, kernel choice) moves the features: the noise floor of the comparison above
    single, _ = teacher_forced_features(executor, samples[:16], config.windows, 1)
    reference = cache.means[:16].to(single.device, torch.float32)
    feature_noise = float((single - reference).abs().max() / reference.abs().max())

    print(f"# bench/train.py  {datetime.date.today()}  {platform.node()}  {gpu}")
    print(f"# model: {what} ({executor.num_layers} layers, d={manifest['hidden_size']}), device {device}, "
          f"dtype {next(model.parameters()).dtype}, threads {torch.get_num_threads()}")
    print(f"# {len(samples)} ARC-Easy prompts ({min(lengths)}-{max(lengths)} tokens, mean "
          f"{sum(lengths) / len(lengths):.0f}), {len({tuple(s.labels) for s in samples})} distinct labelled paths; "
          f"effective batch {config.effective_batch}; feature cache {cache.nbytes / 2**20:.1f} MiB float32 on "
          f"{cache.means.device}; "
          f"{RouterStack(RouterConfig('m', executor.num_layers, manifest['hidden_size'])).num_parameters():,} "
          "router parameters")
    print(f"# cache vs full forward, same seed: max |step loss difference| {diff:.2e} over "
          f"{len(full.step_losses)} steps; batched vs one-at-a-time features differ by up to {feature_noise:.1e} of "
          "their largest magnitude")
    print()
    print("| measurement | seconds | vs cached epoch |")
    print("|---|---|---|")
    print(f"| build feature cache (once, {len(samples)} teacher-forced forwards) | {cache_seconds:.3f} | "
          f"{cache_seconds / cached_epoch:.0f}x |")
    print(f"| cached epoch (median of {args.cache_epochs}) | {cached_epoch:.4f} | 1x |")
    print(f"| full-forward epoch (median of {args.full_epochs}) | {full_epoch:.3f} | "
          f"{full_epoch / cached_epoch:.0f}x |")
    print(f"| 25 epochs, cache (build + 25 epochs) | {cache_seconds + 25 * cached_epoch:.2f} | |")
    print(f"| 25 epochs, full forward | {25 * full_epoch:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
