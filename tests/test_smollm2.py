"""The executor on the real embedded model: SmolLM2-135M-Instruct, 30 layers, fp32 on CPU."""
from __future__ import annotations

import pytest
import torch

from drllm.core.executor import PathExecutor, positions_from_mask
from drllm.core.models import read_manifest
from drllm.core.paths import LayerPath
from test_executor import reassembled, uncached_greedy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prompts(smollm2):
    model, tokenizer = smollm2
    chats = [[{"role": "user", "content": text}] for text in
             ["What is the capital of France?", "Name a prime number larger than ten and explain briefly."]]
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_manifest_describes_smollm2(smollm2_dir):
    manifest = read_manifest(smollm2_dir)
    assert manifest["num_layers"] == 30 and manifest["hidden_size"] == 576
    assert manifest["architecture"] == "LlamaForCausalLM"
    assert 134_000_000 < manifest["num_parameters"] < 135_000_000


def test_default_path_matches_forward_and_generate(smollm2, prompts):
    model, tokenizer = smollm2
    ids, mask = prompts
    executor = PathExecutor(model)
    ours = executor.prefill(ids, mask).logits
    theirs = model(ids, attention_mask=mask, position_ids=positions_from_mask(mask, 0, 'cpu')).logits
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-4
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(executor.generate(ids, mask, max_new_tokens=16).tokens, generated)


def test_skip_repeat_path_cached_equals_uncached(smollm2, prompts):
    model, _ = smollm2
    ids, mask = prompts
    executor = PathExecutor(model)
    counts = [1] * 30
    counts[5] = counts[17] = counts[24] = 0
    counts[10] = counts[20] = 2
    path = LayerPath.from_counts(counts)
    ours = executor.prefill(ids, mask, path).logits
    theirs = reassembled(model, path)(ids, attention_mask=mask, position_ids=positions_from_mask(mask, 0, 'cpu'), use_cache=False).logits
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-4
    eos = model.generation_config.eos_token_id
    cached = executor.generate(ids, mask, path, max_new_tokens=8, eos_token_id=eos, pad_token_id=eos).tokens
    assert torch.equal(cached, uncached_greedy(model, ids, mask, path, 8, eos=eos))


def test_loglikelihood_batched_equals_single(smollm2):
    model, tokenizer = smollm2
    executor = PathExecutor(model)
    context = tokenizer("Question: Which gas do plants absorb from the air?\nAnswer:")["input_ids"]
    choices = [" carbon dioxide", " oxygen", " nitrogen", " helium"]
    requests = [(context, tokenizer(c)["input_ids"]) for c in choices]
    together = executor.loglikelihood(requests)
    alone = [executor.loglikelihood([r])[0] for r in requests]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(together, alone)) < 1e-4
    assert max(range(4), key=lambda i: together[i].logprob) == 0
