"""How far batched generation's numbers drift from one prompt alone, on real prompts: the largest difference of a
generated token's log-probability and of the kept hidden states between `path_batch.generate_together` and
`PathExecutor.generate` on each prompt alone, and the closest greedy choice (top-1 minus top-2 logit) met. The
tie tolerance of `drllm.core.path_batch` (prompts closer to a tie are generated alone) must stay well above the drift.

  python bench/generation_rounding.py --format letter --prompts 8     # ARC-Easy, the embedded SmolLM2, fp32
"""
from __future__ import annotations

import argparse
import sys

import torch

from drllm.core import path_batch
from drllm.data.registry import load_benchmark
from drllm.core.executor import PathExecutor
from drllm.core.models import load_model
from drllm.core.paths import LayerPath
from drllm.formats.answers import get_format


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--benchmark", default="arc_easy")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--format", default="letter")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    model, tokenizer, _ = load_model(args.model_dir, device=args.device, dtype=args.dtype)
    executor = PathExecutor(model)
    answer_format = get_format(args.format)
    encoded = [answer_format.encode(example, tokenizer, chat_template=True)
               for example in load_benchmark(args.benchmark, args.split, limit=args.prompts)]
    eos = answer_format.stop_ids(executor, encoded[0])
    layers = executor.num_layers
    generator = torch.Generator().manual_seed(0)
    requests = []
    for item in encoded:  # a parent path with one or two blocks skipped, a child with one more edit, resumed
        dropped = torch.randperm(layers, generator=generator)[:3].tolist()
        parent = LayerPath(tuple(l for l in range(layers) if l not in dropped[:1]), layers)
        child = LayerPath(tuple(l for l in range(layers) if l not in dropped), layers)
        kept = executor.generate(torch.tensor([item.input_ids]), None, parent, max_new_tokens=1, eos_token_id=eos,
                                 keep_hidden=True).prefill
        requests.append(path_batch.GenerateRequest(item.input_ids, child, item.max_new_tokens, kept,
                                                   child.common_prefix(parent)))
    tolerance = path_batch.tie_tolerance(executor.model.dtype)
    path_batch.TIE_TOLERANCE[executor.model.dtype] = 0.0  # measure the batch's own tokens
    together = path_batch.generate_together(executor, requests, eos_token_id=eos, keep_hidden=True,
                                            max_padding=float("inf"))
    drift_logprob = drift_hidden = 0.0
    closest, same = float("inf"), 0
    for request, got in zip(requests, together):
        ids = torch.tensor([request.input_ids])
        want = executor.generate(ids, None, request.path, max_new_tokens=request.max_new_tokens, eos_token_id=eos,
                                 keep_hidden=True)
        count = int(want.num_new[0])
        same += got.tokens[0, :count].tolist() == want.tokens[0, :count].tolist()
        drift_logprob = max(drift_logprob, float((got.logprobs[0, :count] - want.logprobs[0, :count]).abs().max()))
        drift_hidden = max(drift_hidden, max(float((a - b).abs().max()) for a, b in zip(got.prefill.hidden,
                                                                                          want.prefill.hidden)))
        # the closest greedy choice along the prompt's own generation
        state = executor.prefill(ids, None, request.path, use_cache=True, logits="last")
        margins = [path_batch.top2_margin(state.logits[:, -1])]
        for token in want.tokens[0, :count - 1]:
            margins.append(path_batch.top2_margin(executor.decode_step(state, token.view(1))))
        closest = min(closest, float(torch.cat(margins).min()))
    print(f"# {args.prompts} {args.benchmark} prompts, {args.format}, {executor.model.dtype}, "
          f"{sum(len(r.input_ids) for r in requests) / len(requests):.0f} tokens on average, one left-padded batch")
    print(f"same tokens: {same}/{len(requests)}; max |logprob drift| {drift_logprob:.2e}; "
          f"max |hidden drift| {drift_hidden:.2e}; closest greedy choice (top-1 - top-2 logit) {closest:.3g}; "
          f"tie tolerance {tolerance:g}")
    return 0 if same == len(requests) else 1


if __name__ == "__main__":
    sys.exit(main())
