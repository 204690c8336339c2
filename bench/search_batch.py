"""Multi-prompt batched search, side by side in one run: evaluations per second when a worker searches
`width` prompts in lockstep (one mixed-path batch per round) vs one prompt at a time, same worker, same prompts,
and a check that the shard rows are identical (timing columns aside).

  python bench/search_batch.py --prompts 16 --widths 1 8 16            # CPU, the embedded model
  python bench/search_batch.py --random-shape llama-3.2-3b --device cuda --dtype bfloat16 --widths 1 16
      # GPU: random weights in the Llama-3.2-3B shape (the real weights cannot travel to the GPU machine)

Evaluations per second counts real path evaluations (the search's memo hits are free either way).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from drllm.core.artifacts import write_json
from drllm.data.registry import load_benchmark
from drllm.core.models import MANIFEST, read_manifest
from drllm.search.shards import TIMING_COLUMNS, select_prompts
from drllm.search.workers import SearchSettings, SearchWorker

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
    parser.add_argument("--split", default="validation")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    scratch = tempfile.TemporaryDirectory()
    model_dir = args.model_dir
    if args.random_shape:
        model_dir = random_model_dir(args.random_shape, args.model_dir, Path(scratch.name), args.device)
    manifest = read_manifest(model_dir)
    records = [example.to_dict() for example in load_benchmark(args.benchmark, args.split)]
    rows = select_prompts(records, args.benchmark, "cloze", args.prompts, args.seed)
    settings = SearchSettings(model=manifest["name"], num_layers=manifest["num_layers"],
                              mcts={"simulations": args.simulations}, seed=args.seed,
                              chat_template=bool(manifest.get("chat_template")),
                              formats={"cloze": {"normalize": "chars"}})
    worker = SearchWorker(model_dir, settings, device=args.device, dtype=args.dtype)
    device = torch.cuda.get_device_name() if worker.executor.device.type == "cuda" else platform.processor() or \
        platform.machine()
    print(f"# bench/search_batch.py  {datetime.date.today()}  {platform.node()}  {device}  "
          f"{torch.get_num_threads()} threads")
    print(f"# {manifest['name']} ({worker.executor.model.dtype}); {len(rows)} {args.benchmark}/{args.split} prompts, "
          f"cloze; {args.simulations} simulations, early stop on")
    timed(worker, rows[:min(2, len(rows))], 1)  # warm-up (allocator, kernels)
    reference, speeds = None, {}
    print("\n| prompts in lockstep | evaluations | evaluations / s | vs one at a time | rows identical |\n"
          "|---|---|---|---|---|")
    for width in args.widths:
        results, seconds = timed(worker, rows, width)
        evaluations = sum(row["evaluations"] for row in results)
        speeds[width] = evaluations / seconds
        comparable = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in results]
        same = "reference" if reference is None else str(comparable == reference)
        reference = reference or comparable
        print(f"| {width} | {evaluations} | {speeds[width]:.2f} | {speeds[width] / speeds[args.widths[0]]:.2f}x | "
              f"{same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
