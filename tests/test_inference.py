"""Routed inference: routing once on the prompt, fixed-path decoding, mixed-path batches, the control knob."""
from __future__ import annotations

import pytest
import torch

from conftest import block_calls, random_prompts as prompts, tiny_model
from drllm.core.artifacts import ArtifactError
from drllm.core.executor import PathExecutor
from drllm.routing.inference import RoutedModel, pad_left
from drllm.core.paths import LayerPath
from drllm.routing.decision import apply_knob, decide, probabilities
from drllm.routing.pooling import window_mean_pool
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig

LAYERS = 6


def decisive_routers(layers=LAYERS, hidden=64, seed=3, scale=30.0, base_model="tiny"):
    """Random routers made confident, so different prompts take different paths (skips, repeats)."""
    stack = RouterStack(RouterConfig(base_model, layers, hidden), seed=seed)
    with torch.no_grad():
        for router in stack.routers:
            router.fc2.weight.mul_(scale)
    return stack


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def routed(request):
    executor = PathExecutor(tiny_model(request.param, layers=LAYERS))
    return RoutedModel(executor, decisive_routers())


def reference_path(routed: RoutedModel, ids: list[int]) -> LayerPath:
    """The routed path computed the slow, obvious way: one prompt, block by block, router.route on each input."""
    executor, steps = routed.executor, []
    hidden = executor.embed(torch.tensor([ids]))
    for layer in range(executor.num_layers):
        action = int(routed.routers.route(layer, hidden).argmax(-1))
        for _ in range(action):
            steps.append(layer)
            state = executor.prefill(torch.tensor([ids]), None, steps, keep_hidden=True, logits="none")
            hidden = state.last_hidden
    return LayerPath(tuple(steps), executor.num_layers)


def test_routing_follows_each_router_on_its_own_input(routed):
    paths = [routed.route(torch.tensor([ids]))[0] for ids in prompts()]
    assert paths == [reference_path(routed, ids) for ids in prompts()]
    assert len(set(paths)) > 1, "test routers should route prompts differently"
    assert any(max(p.counts()) == 2 for p in paths) and any(min(p.counts()) == 0 for p in paths)


def test_routed_generation_equals_executor_generation_along_the_routed_path(routed):
    for ids in prompts():
        generation = routed.generate(torch.tensor([ids]), max_new_tokens=8, eos_token_id=2)
        path = generation.paths[0]
        reference = routed.executor.generate(torch.tensor([ids]), None, path, max_new_tokens=8, eos_token_id=2)
        assert torch.equal(generation.tokens, reference.tokens)
        assert torch.equal(generation.num_new, reference.num_new)
        assert torch.equal(generation.layer_applications, reference.layer_applications)


def test_a_routed_batch_equals_its_prompts_one_at_a_time(routed):
    batch = prompts()
    input_ids, attention_mask = pad_left(batch)
    together = routed.generate(input_ids, attention_mask, max_new_tokens=8, eos_token_id=2)
    assert len(set(together.paths)) > 1
    for row, ids in enumerate(batch):
        alone = routed.generate(torch.tensor([ids]), max_new_tokens=8, eos_token_id=2)
        assert together.paths[row] == alone.paths[0]
        count = int(alone.num_new[0])
        assert int(together.num_new[row]) == count
        assert together.tokens[row, :count].tolist() == alone.tokens[0, :count].tolist()
        assert int(together.layer_applications[row]) == int(alone.layer_applications[0])


def test_batched_routing_computes_each_block_once_per_row(routed):
    """Mixed-path routing wastes nothing: the blocks computed equal the sum of the rows' path lengths."""
    input_ids, attention_mask = pad_left(prompts())
    with block_calls(routed.executor) as calls:
        paths = routed.route(input_ids, attention_mask)
    assert sum(calls) == sum(len(path) for path in paths)


def test_knob_endpoints(routed):
    input_ids, attention_mask = pad_left(prompts())
    plain = routed.route(input_ids, attention_mask)
    executor, routers = routed.executor, routed.routers
    assert RoutedModel(executor, routers, knob=-0.5).route(input_ids, attention_mask) == plain
    assert RoutedModel(executor, routers, knob=0.5).route(input_ids, attention_mask) == \
        [executor.default_path()] * len(plain)
    skip_all = RoutedModel(executor, routers, knob=-1.0)
    assert skip_all.route(input_ids, attention_mask) == [LayerPath((), LAYERS)] * len(plain)
    generation = skip_all.generate(input_ids, attention_mask, max_new_tokens=3, eos_token_id=2)
    assert generation.tokens.shape[0] == len(plain) and int(generation.layer_applications.sum()) == 0
    repeat_all = RoutedModel(executor, routers, knob=1.0).route(input_ids, attention_mask)
    assert all(path.counts() == [2] * LAYERS for path in repeat_all)


def test_knob_at_half_generates_exactly_like_the_base_model(routed):
    ids = torch.tensor([prompts()[1]])
    base = RoutedModel(routed.executor).generate(ids, max_new_tokens=6, eos_token_id=2)
    knob = RoutedModel(routed.executor, routed.routers, knob=0.5).generate(ids, max_new_tokens=6, eos_token_id=2)
    assert torch.equal(base.tokens, knob.tokens) and base.paths == knob.paths


def test_pooling_in_the_routing_pass_matches_the_router_module():
    """The routing pass pools a left-padded batch as window_mean_pool does on each row alone."""
    batch = prompts((4, 11, 17))
    input_ids, mask = pad_left(batch)
    hidden = torch.randn(input_ids.shape[0], input_ids.shape[1], 8)
    means, window_mask = window_mean_pool(hidden, mask, 8)
    for row, ids in enumerate(batch):
        alone, alone_mask = window_mean_pool(hidden[row:row + 1, -len(ids):], None, 8)
        used = int(alone_mask.sum())
        assert torch.allclose(means[row, :used], alone[0, :used], atol=1e-6)
        assert int(window_mask[row].sum()) == used


def reference_decisions(routers, layer, hidden, mask, knob):
    """One block's decisions the plain way: window_mean_pool + Router.forward, softmax, knob, decide."""
    probs = probabilities(routers.route(layer, hidden, mask))
    return decide(probs if knob is None else apply_knob(probs, knob)).tolist()


@pytest.mark.parametrize("knob", [None, -1.0, -0.8, -0.5, 0.0, 0.5, 0.9])
def test_routing_step_decides_as_the_reference(knob):
    """RoutedModel's per-block step (packed routers, knob in place, host decision) decides every row of every
    block as the reference computation does, on random hidden states of a padded batch with short rows."""
    routers = decisive_routers(hidden=64, scale=10.0)
    routed = RoutedModel(PathExecutor(tiny_model("llama", layers=LAYERS)), routers, knob=knob)
    input_ids, mask = pad_left(prompts((4, 11, 17, 1, 9)))
    route = routed.routing(input_ids, mask)
    seen = set()
    torch.manual_seed(0)
    for _ in range(3):
        for layer in range(LAYERS):
            hidden = torch.randn(*input_ids.shape, 64) * 2
            decisions = list(route(layer, hidden))
            assert decisions == reference_decisions(routers, layer, hidden, mask, knob)
            seen.update(decisions)
    if knob in (None, -0.5):
        assert seen == {0, 1, 2}


def test_router_step_runs_on_its_own_threads_and_restores_them(monkeypatch):
    """router_threads=1: the router step runs on one CPU thread and gives the blocks back the process's setting;
    None leaves it alone. Decisions are the same either way."""
    from drllm.routing.kinds.mlp import PromptRouting

    seen = []
    logits = PromptRouting.logits
    monkeypatch.setattr(PromptRouting, "logits", lambda self, layer, hidden: (seen.append(torch.get_num_threads()),
                                                                             logits(self, layer, hidden))[1])
    executor, routers = PathExecutor(tiny_model("llama", layers=LAYERS)), decisive_routers()
    input_ids, mask = pad_left(prompts((4, 11, 17)))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        paths = {}
        for threads in (1, None):
            seen.clear()
            paths[threads] = RoutedModel(executor, routers, router_threads=threads).route(input_ids, mask)
            assert seen == [threads or 2] * LAYERS and torch.get_num_threads() == 2
        assert paths[1] == paths[None]
    finally:
        torch.set_num_threads(previous)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="router_threads"):
            RoutedModel(executor, routers, router_threads=bad)


def test_loglikelihood_routes_on_the_context_and_scores_along_that_path(routed):
    contexts = prompts((6, 9, 6), seed=1)
    requests = [(contexts[0], [5, 6]), (contexts[1], [7]), (contexts[0], [8, 9, 10]), (contexts[2], [11])]
    results, paths = routed.loglikelihood(requests, batch_size=2)
    for (context, continuation), result, path in zip(requests, results, paths):
        assert path == routed.route(torch.tensor([context]))[0]
        expected = routed.executor.loglikelihood([(context, continuation)], path)[0]
        assert result.logprob == pytest.approx(expected.logprob, abs=1e-5)
        assert result.is_greedy == expected.is_greedy


def test_mismatched_or_missing_routers_fail_clearly(tmp_path):
    executor = PathExecutor(tiny_model("llama", layers=LAYERS))
    with pytest.raises(ValueError, match="routers are for 4 layers"):
        RoutedModel(executor, RouterStack(RouterConfig("tiny", 4, 64)))
    with pytest.raises(ValueError, match="knob needs routers"):
        RoutedModel(executor, None, knob=0.0)
    with pytest.raises(ValueError, match="knob p must be in"):
        RoutedModel(executor, decisive_routers(), knob=2.0)


def test_from_pretrained_checks_the_routers_model(tmp_path, smollm2_dir):
    with pytest.raises(ArtifactError, match="router_config.json not found"):
        RoutedModel.from_pretrained(smollm2_dir, tmp_path / "missing", device="cpu", dtype="float32")
    other = tmp_path / "other"
    RouterStack(RouterConfig("some-other-model", 30, 576)).save_pretrained(other)
    with pytest.raises(ArtifactError, match="trained for model 'some-other-model'"):
        RoutedModel.from_pretrained(smollm2_dir, other, device="cpu", dtype="float32")
    wrong_layers = tmp_path / "wrong"
    RouterStack(RouterConfig("smollm2-135m-instruct", 24, 576)).save_pretrained(wrong_layers)
    with pytest.raises(ArtifactError, match="trained for 24 layers"):
        RoutedModel.from_pretrained(smollm2_dir, wrong_layers, device="cpu", dtype="float32")


@pytest.mark.slow
def test_routed_smollm2_batch_matches_single_prompts(tmp_path, smollm2_dir):
    """The real model with saved routers: a batch of chat prompts routes and generates as each prompt alone."""
    stack = decisive_routers(layers=30, hidden=576, seed=1, scale=4.0, base_model="smollm2-135m-instruct")
    stack.save_pretrained(tmp_path / "routers")
    routed = RoutedModel.from_pretrained(smollm2_dir, tmp_path / "routers", device="cpu", dtype="float32")
    texts = ["What is the capital of France?", "Name a prime number larger than ten.", "Say hello."]
    batch = [routed.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False) for text in texts]
    input_ids, attention_mask = pad_left(batch, routed.tokenizer.pad_token_id or 0)
    together = routed.generate(input_ids, attention_mask, max_new_tokens=12)
    for row, ids in enumerate(batch):
        alone = routed.generate(torch.tensor([ids]), max_new_tokens=12)
        reference = routed.executor.generate(torch.tensor([ids]), None, alone.paths[0], max_new_tokens=12)
        assert together.paths[row] == alone.paths[0]
        assert torch.equal(alone.tokens, reference.tokens)
        count = int(alone.num_new[0])
        assert together.tokens[row, :count].tolist() == alone.tokens[0, :count].tolist()


@pytest.mark.slow
def test_packed_routers_on_smollm2_equal_the_reference(smollm2):
    """The real model's hidden states entering each of its 30 blocks, for a left-padded batch of chat prompts: the
    packed routers' logits equal window_mean_pool + Router.forward to float32 rounding, and every decision of the
    routing step (plain and with the knob) equals the reference."""
    model, tokenizer = smollm2
    executor = PathExecutor(model)
    routers = decisive_routers(layers=30, hidden=576, seed=1, scale=4.0, base_model="smollm2-135m-instruct")
    texts = ["What is the capital of France?", "Name a prime number larger than ten.", "Say hello.",
             "Which gas do plants take in from the air to make food?"]
    batch = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False) for text in texts]
    input_ids, mask = pad_left(batch, tokenizer.pad_token_id or 0)
    inputs = executor.prefill(input_ids, mask, executor.default_path(), keep_hidden=True,
                              logits="none").layer_inputs()
    prompt = routers.packed().prompt(mask, *input_ids.shape)
    assert prompt.pool_first and prompt.tiled is not None
    worst, decisions = 0.0, set()
    with torch.no_grad():
        for layer in range(30):
            reference = routers.route(layer, inputs[layer], mask)
            logits = prompt.logits(layer, inputs[layer])
            torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-5)
            worst = max(worst, float((logits - reference).abs().max() / reference.abs().max()))
            decisions.update(decide(probabilities(reference)).tolist())
    # float32 rounding: sums in another order, relative to the logits' scale (tens here, residual stream in hundreds)
    assert len(decisions) > 1 and worst < 1e-5, worst
    for knob in (None, -0.6, 0.0):
        route = RoutedModel(executor, routers, knob=knob).routing(input_ids, mask)
        for layer in range(30):
            assert list(route(layer, inputs[layer])) == reference_decisions(routers, layer, inputs[layer], mask, knob)
