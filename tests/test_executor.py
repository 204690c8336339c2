"""The executor against the model's own forward/generate and against an independent reference: the HF model
re-assembled with the path's blocks as its ModuleList, run without a cache."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_model
from drllm.core.executor import ChoiceBatch, PathExecutor, UnsupportedModelError, boundary_steps, positions_from_mask
from drllm.core.paths import LayerPath, PathError

SKIP_REPEAT = [(0, 0, 2, 3), (1, 1, 3, 3), (0, 2), (0, 1, 2, 2, 3)]


def reassembled(model, path):
    """The HF model with its blocks replaced by the path's blocks: HF's own forward becomes the path."""
    def shallow(module):  # a new module object sharing parameters; its own child registry
        twin = copy.copy(module)
        twin._modules = dict(module._modules)
        return twin

    clone, inner = shallow(model), shallow(model.model)
    inner.layers = nn.ModuleList([model.model.layers[i] for i in path])
    inner.config = copy.deepcopy(model.config)
    inner.config.num_hidden_layers = len(path)
    if getattr(inner.config, "layer_types", None):
        inner.config.layer_types = [model.config.layer_types[i] for i in path]
    clone.model = inner
    return clone


def uncached_greedy(model, ids, mask, path, steps, eos):
    """Greedy decoding that recomputes the whole sequence every step (no KV cache at all)."""
    ref = reassembled(model, path)
    ids, mask = ids.clone(), mask.clone()
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    out = []
    for _ in range(steps):
        logits = ref(ids, attention_mask=mask, position_ids=positions_from_mask(mask, 0, 'cpu'), use_cache=False).logits[:, -1]
        nxt = torch.where(done, torch.full_like(logits[:, 0], eos, dtype=torch.long), logits.argmax(-1))
        out.append(nxt)
        done |= nxt == eos
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(nxt[:, None])], 1)
    return torch.stack(out, 1)


def batch(seed=0, rows=3, width=10, pad_left=(0, 3, 5)):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (rows, width), generator=gen)
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pad_left[:rows]):
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    return ids, mask


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_default_path_reproduces_forward_logits(kind):
    model = tiny_model(kind)
    executor = PathExecutor(model)
    ids, mask = batch()
    ours = executor.prefill(ids, mask).logits
    theirs = model(ids, attention_mask=mask, position_ids=positions_from_mask(mask, 0, 'cpu')).logits
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-4
    assert torch.equal(executor.prefill(ids[:1, :]).logits, model(ids[:1, :]).logits)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_default_path_reproduces_generate(kind):
    model = tiny_model(kind)
    executor = PathExecutor(model)
    ids, mask = batch(seed=1)
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, output_scores=True,
                               return_dict_in_generate=True)
    theirs = generated.sequences[:, ids.shape[1]:]
    ours = executor.generate(ids, mask, max_new_tokens=12)
    assert torch.equal(ours.tokens, theirs)
    # each token's log-probability, as generate()'s scores give it (no EOS in these tiny runs' first 12 tokens)
    scores = torch.stack(generated.scores, 1).log_softmax(-1).gather(-1, theirs[..., None])[..., 0]
    real = ours.logprobs != 0
    assert torch.allclose(ours.logprobs[real], scores[real], atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("layers", SKIP_REPEAT)
def test_skip_and_repeat_match_reassembled_model(kind, layers):
    model = tiny_model(kind)
    executor = PathExecutor(model)
    ids, mask = batch(seed=2)
    path = LayerPath(layers, 4)
    ours = executor.prefill(ids, mask, path).logits
    theirs = reassembled(model, path)(ids, attention_mask=mask, position_ids=positions_from_mask(mask, 0, 'cpu'), use_cache=False).logits
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("layers", SKIP_REPEAT)
def test_cached_generation_equals_uncached_recomputation(kind, layers):
    model = tiny_model(kind)
    executor = PathExecutor(model)
    ids, mask = batch(seed=3)
    path = LayerPath(layers, 4)
    ours = executor.generate(ids, mask, path, max_new_tokens=10, eos_token_id=2, pad_token_id=2).tokens
    theirs = uncached_greedy(model, ids, mask, path, 10, eos=2)
    assert torch.equal(ours, theirs)


def test_every_step_owns_its_cache_slot():
    model = tiny_model("llama")
    executor = PathExecutor(model)
    ids, _ = batch(rows=1, pad_left=(0,))
    state = executor.prefill(ids, path=(0, 1, 1, 3), use_cache=True)
    assert len(state.cache.layers) == 4
    first, second = state.cache.layers[1], state.cache.layers[2]
    assert first.keys.shape == second.keys.shape == (1, 2, ids.shape[1], 16)
    assert not torch.allclose(first.keys, second.keys)  # the repeat sees a different input


def test_layer_applications_count_prefill_and_each_needed_decode_step():
    model = tiny_model("llama")
    executor = PathExecutor(model)
    ids, mask = batch(seed=4)
    path = LayerPath((0, 1, 1, 3), 4)
    out = executor.generate(ids, mask, path, max_new_tokens=6, eos_token_id=2, pad_token_id=2)
    assert torch.equal(out.layer_applications, out.num_new * len(path))
    # force an early EOS on one row: its count stops there while the others go on
    row0_token = int(out.tokens[0, 1])
    early = executor.generate(ids, mask, path, max_new_tokens=6, eos_token_id=row0_token, pad_token_id=0)
    assert int(early.num_new[0]) <= 2
    assert torch.equal(early.layer_applications, early.num_new * len(path))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_batched_loglikelihood_equals_one_at_a_time_and_logits(kind):
    model = tiny_model(kind)
    executor = PathExecutor(model)
    gen = torch.Generator().manual_seed(5)
    requests = [(torch.randint(3, 97, (n,), generator=gen).tolist(), torch.randint(3, 97, (k,), generator=gen).tolist())
                for n, k in [(5, 1), (8, 3), (3, 4), (11, 2), (6, 6)]]
    path = LayerPath((0, 0, 2, 3), 4)
    together = executor.loglikelihood(requests, path, batch_size=4)
    alone = [executor.loglikelihood([r], path)[0] for r in requests]
    for a, b in zip(together, alone):
        assert abs(a.logprob - b.logprob) < 1e-4 and a.is_greedy == b.is_greedy and a.num_tokens == b.num_tokens
    context, continuation = requests[1]
    logits = reassembled(model, path)(torch.tensor([context + continuation]), use_cache=False).logits[0]
    logprobs = torch.log_softmax(logits, -1)
    expected = sum(float(logprobs[len(context) - 1 + j, t]) for j, t in enumerate(continuation))
    assert abs(together[1].logprob - expected) < 1e-4


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("path", [(0, 1, 2, 3), (0, 0, 2, 3), (1, 3)])
def test_shared_context_scoring_equals_the_right_padded_pass(kind, path):
    """Multiple choice (one context, several options) runs the context once and repeats its cache per option: the
    same log-likelihoods as the right-padded pass over every full row (which keep_hidden forces)."""
    executor = PathExecutor(tiny_model(kind))
    gen = torch.Generator().manual_seed(7)
    context = torch.randint(3, 97, (9,), generator=gen).tolist()  # longer than mistral's sliding window of 6
    for lengths in [(1, 3, 2, 5), (1, 1, 1)]:  # mixed option lengths; one-token options only
        requests = [(context, torch.randint(3, 97, (k,), generator=gen).tolist()) for k in lengths]
        batch = ChoiceBatch.build(requests)
        assert batch.shared_context == len(context) and batch.context_once
        shared, state = executor.score(batch, path)
        padded, _ = executor.score(batch, path, keep_hidden=True)
        assert list(state.path) == list(path)
        for a, b in zip(shared, padded):
            assert abs(a.logprob - b.logprob) < 1e-4 and a.is_greedy == b.is_greedy and a.num_tokens == b.num_tokens
    assert ChoiceBatch.build([(context, [5]), (context[:-1], [5])]).shared_context == 0  # contexts differ
    long_options = ChoiceBatch.build([(context[:2], list(range(3, 20))), (context[:2], list(range(4, 20)))])
    assert long_options.shared_context == 2 and not long_options.context_once  # no saving worth a second pass


def test_resume_from_prefix_equals_full_run():
    model = tiny_model("qwen2")
    executor = PathExecutor(model)
    ids, mask = batch(seed=6)
    parent = executor.prefill(ids, mask, (0, 1, 2, 3), use_cache=True, keep_hidden=True)
    child = LayerPath((0, 1, 1, 3), 4)
    full = executor.prefill(ids, mask, child, keep_hidden=True)
    resumed = executor.prefill(ids, mask, child, keep_hidden=True, resume=parent, resume_step=2)
    assert torch.equal(resumed.logits, full.logits)
    assert all(torch.equal(a, b) for a, b in zip(resumed.hidden, full.hidden))
    gen_full = executor.generate(ids, mask, child, max_new_tokens=8, eos_token_id=2)
    gen_resumed = executor.generate(ids, mask, child, max_new_tokens=8, eos_token_id=2, resume=parent, resume_step=2)
    assert torch.equal(gen_full.tokens, gen_resumed.tokens)
    # the parent's cache is untouched by the child's decoding
    assert parent.cache.layers[0].keys.shape[-2] == ids.shape[1]
    with pytest.raises(ValueError, match="share only 1 leading steps"):
        executor.prefill(ids, mask, (0, 2, 3), resume=parent, resume_step=2)


def test_layer_inputs_follow_routing_boundaries():
    path = LayerPath((0, 2, 2, 3), 5)
    # layer 1 is skipped: it sees the input of the step that runs layer 2; layer 4 sees the final output
    assert boundary_steps(path) == [0, 1, 1, 3, 4]
    model = tiny_model("llama", layers=5)
    state = PathExecutor(model).prefill(torch.randint(3, 97, (1, 6)), path=path, keep_hidden=True)
    inputs = state.layer_inputs()
    assert len(inputs) == 5 and inputs[1] is inputs[2] and inputs[4] is state.hidden[-1]


def test_invalid_paths_and_models_fail_clearly():
    executor = PathExecutor(tiny_model("llama"))
    ids = torch.randint(3, 97, (1, 5))
    with pytest.raises(PathError, match="comes after"):
        executor.prefill(ids, path=(2, 1))
    with pytest.raises(ValueError, match="path is for 6 layers; this model has 4"):
        executor.prefill(ids, path=LayerPath.default(6))
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(UnsupportedModelError, match="ModuleList at .layers"):
        PathExecutor(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)))
    with pytest.raises(UnsupportedModelError):
        PathExecutor(nn.Linear(2, 2))


def test_choice_scoring_resumes_from_a_shared_prefix():
    executor = PathExecutor(tiny_model("llama"))
    batch = ChoiceBatch.build([([1, 5, 6, 7], [8, 9]), ([1, 5, 6, 7], [10]), ([1, 5, 6, 7], [11, 12, 13])])
    _, parent = executor.score(batch, (0, 1, 2, 3), keep_hidden=True)
    full, _ = executor.score(batch, (0, 1, 3, 3), keep_hidden=True)  # the right-padded pass, as resumed runs it
    resumed, _ = executor.score(batch, (0, 1, 3, 3), resume=parent, resume_step=2)
    assert [r.logprob for r in full] == [r.logprob for r in resumed]
    with pytest.raises(ValueError, match="request 1: empty continuation"):
        ChoiceBatch.build([([1], [2]), ([1], [])])


def test_generation_leaves_its_prefill_state_resumable():
    executor = PathExecutor(tiny_model("llama"))
    ids, mask = batch(seed=8)
    parent = executor.generate(ids, mask, (0, 1, 2, 3), max_new_tokens=6, keep_hidden=True, eos_token_id=[]).prefill
    assert parent.cache.layers[0].keys.shape[-2] == ids.shape[1] and parent.attention_mask.shape == mask.shape
    child = (0, 1, 1, 2, 3)
    fresh = executor.generate(ids, mask, child, max_new_tokens=6, eos_token_id=[])
    resumed = executor.generate(ids, mask, child, max_new_tokens=6, eos_token_id=[], resume=parent, resume_step=2)
    assert torch.equal(fresh.tokens, resumed.tokens)
