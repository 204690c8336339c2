"""Multi-prompt batched search, side by side in one run: evaluations per second when a worker searches
`width` prompts in lockstep (one mixed-path batch per round) vs one prompt at a time, same worker, same prompts,
and a check that the shard rows are identical (timing columns aside).

  python bench/search_batch.py --prompts 16 --widths 1 8 16            # CPU, the embedded model, cloze
  python bench/search_batch.py --format letter --prompts 16 --widths 1 8   # the paper's ARC format (generation)
  python bench/search_batch.py --random-shape llama-3.2-3b --device cuda --dtype bfloat16 --widths 1 16
      # GPU: random weights in the Llama-3.2-3B shape (the real weights cannot travel to the GPU machine)

Evaluations per second counts real path evaluations (the search's memo hits are free either way). `--repeats`
times every width that many times, interleaved (1 8 1 8 ...), and reports the median: the machine is shared.
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

from drllm.core import path_batch
from drllm.core.artifacts import write_json
from drllm.data.registry import load_benchmark
from drllm.core.models import MANIFEST, read_manifest
from drllm.search.prompts import select_prompts
from drllm.search.shards import TIMING_COLUMNS
from drllm.formats.answers import FORMATS
from drllm.search.settings import SearchSettings
from drllm.search.workers import SearchWorker

# Llama-3.2-3B's block shape (config.json of meta-llama/Llama-3.2-3B-Instruct); the vocabulary is the embedded
# model's tokenizer's, since the prompts are encoded with it.
SHAPES = {
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, rope_theta=500000.0, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
}


def random_model_dir(shape: str, tokenizer_dir: str, out: Path, device: str) -> str:
    """A model directory with random weights in `shape` and the embedded model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, **SHAPES[shape])
    with torch.device("cuda" if device.startswith("cuda") else "cpu"):  # initialising 3B weights on a CPU is slow
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json(out / MANIFEST, {"name": f"random-{shape}", "num_layers": config.num_hidden_layers,
                                "chat_template": False})
    return str(out)


def timed(worker: SearchWorker, rows: list[dict], width: int) -> tuple[list[dict], float]:
    started = time.perf_counter()
    results = []
    for start in range(0, len(rows), width):
        results += worker.run_many(rows[start:start + width])
    return results, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--random-shape", choices=sorted(SHAPES), help="time random weights in this shape")
    parser.add_argument("--benchmark", default="arc_easy")
    parser.add_argument("--format", default="cloze", choices=sorted(FORMATS),
                        help="answer format (cloze: log-likelihood; letter, boxed, gsm8k, qa: greedy generation)")
    parser.add_argument("--max-new-tokens", type=int, help="generation formats: the format's limit (default its own)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timings per width, interleaved; median reported")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    scratch = tempfile.TemporaryDirectory()
    model_dir = args.model_dir
    if args.random_shape:
        model_dir = random_model_dir(args.random_shape, args.model_dir, Path(scratch.name), args.device)
    manifest = read_manifest(model_dir)
    records = [example.to_dict() for example in load_benchmark(args.benchmark, args.split)]
    rows = select_prompts(records, args.benchmark, args.format, args.prompts, args.seed)
    options = {"normalize": "chars"} if args.format == "cloze" else {}
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    settings = SearchSettings(model=manifest["name"], num_layers=manifest["num_layers"],
                              labelers={"mcts": {"simulations": args.simulations}}, seed=args.seed,
                              chat_template=bool(manifest.get("chat_template")), formats={args.format: options})
    worker = SearchWorker(model_dir, settings, device=args.device, dtype=args.dtype, threads=args.threads)
    device = torch.cuda.get_device_name() if worker.executor.device.type == "cuda" else platform.processor() or \
        platform.machine()
    print(f"# bench/search_batch.py  {datetime.date.today()}  {platform.node()}  {device}  "
          f"{torch.get_num_threads()} threads")
    print(f"# {manifest['name']} ({worker.executor.model.dtype}); {len(rows)} {args.benchmark}/{args.split} prompts, "
          f"{args.format} {options}; {args.simulations} simulations, early stop on; median of {args.repeats}")
    timed(worker, rows[:min(2, len(rows))], 1)  # warm-up (allocator, kernels)
    reference, seconds, evaluations, same = None, {w: [] for w in args.widths}, {}, {}
    for _ in range(args.repeats):
        for width in args.widths:
            before = dict(path_batch.GENERATION_COUNTS)
            results, elapsed = timed(worker, rows, width)
            counts = {key: value - before[key] for key, value in path_batch.GENERATION_COUNTS.items()}
            seconds[width].append(elapsed)
            evaluations[width] = sum(row["evaluations"] for row in results)
            comparable = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in results]
            if reference is None:
                reference = comparable
            same[width] = same.get(width, True) and comparable == reference
            print(f"#   width {width}: {evaluations[width]} evaluations in {elapsed:.1f} s, rows identical to the "
                  f"first: {comparable == reference}; generations batched {counts['batched']}, of them near a "
                  f"tie and generated alone {counts['near_tie_alone']}", flush=True)
    print("\n| prompts in lockstep | evaluations | evaluations / s (median) | vs one at a time | rows identical |\n"
          "|---|---|---|---|---|")
    speeds = {width: evaluations[width] / statistics.median(seconds[width]) for width in args.widths}
    for width in args.widths:
        identical = "reference" if width == args.widths[0] else str(same[width])
        print(f"| {width} | {evaluations[width]} | {speeds[width]:.2f} | {speeds[width] / speeds[args.widths[0]]:.2f}x "
              f"| {identical} |")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
