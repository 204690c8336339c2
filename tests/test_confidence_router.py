"""The `confidence` router kind (drllm.routing.kinds.confidence): its read equals a hand computation on a tiny model,
routed inference makes the read in the same pass (a batch routes as each prompt alone), it trains, saves and loads
with its lens, its settings are checked in the config's wording, and its read cost is counted."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import random_prompts, tiny_model
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.routing.confidence import block_macs_per_token
from drllm.routing.inference import RoutedModel, pad_left
from drllm.routing.kinds.confidence import ConfidenceKind, read_features
from drllm.routing.pooling import window_mean_pool
from drllm.routing.router import CONFIG_FILE, RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.training.features import build_feature_cache
from drllm.training.samples import TrainingSample
from drllm.training.train_settings import TrainConfig
from drllm.training.training import train_routers

LAYERS, READ, TOP_K = 6, 3, 3


@pytest.fixture(scope="module")
def executor():
    return PathExecutor(tiny_model("llama", layers=LAYERS, seed=3))


def samples(count: int = 10) -> list[TrainingSample]:
    prompts = random_prompts(tuple(3 + (5 * i) % 11 for i in range(count)), seed=4)
    generator = torch.Generator().manual_seed(5)
    return [TrainingSample(f"q{i}", ids, [1] * LAYERS, torch.rand(LAYERS, generator=generator).tolist())
            for i, ids in enumerate(prompts)]


def stack_for(executor, cache, seed: int = 0) -> RouterStack:
    stack = RouterStack(RouterConfig("tiny", LAYERS, executor.config.hidden_size, windows=4, hidden=16,
                                     kind="confidence", kind_settings={"read_layer": READ, "lens_top_k": TOP_K}),
                        seed=seed)
    stack.kind.prepare(stack.routers, stack.config, executor, cache)
    return stack


def full_path_states(executor, ids: list[int]) -> list[torch.Tensor]:
    state = executor.prefill(torch.tensor([ids]), None, executor.default_path(), keep_hidden=True, logits="none")
    return [hidden[0, -1] for hidden in state.layer_inputs()]


def test_read_equals_hand_computation(executor):
    rows = samples()
    cache = build_feature_cache(executor, rows, windows=4, batch_size=4, last_states=True)
    stack = stack_for(executor, cache)
    model = executor.model
    norm, head = model.model.norm, model.lm_head.weight
    tokens = set()
    for sample in rows:  # the lens vocabulary: each prompt's top-k of the full-vocabulary lens at R
        states = full_path_states(executor, sample.input_ids)
        tokens.update(model.lm_head(norm(states[READ][None]))[0].topk(TOP_K).indices.tolist())
    tokens = sorted(tokens)
    holder = stack.routers[READ]
    assert holder.lens.shape == (len(tokens), executor.config.hidden_size)
    torch.testing.assert_close(holder.lens, head[tokens] * norm.weight[None, :])
    for sample in rows[:4]:
        states = full_path_states(executor, sample.input_ids)
        probs = torch.softmax(model.lm_head(norm(states[READ][None]))[0, tokens], -1)
        top = probs.sort(descending=True).values
        saturation = torch.nn.functional.cosine_similarity(states[READ], states[READ - 1], dim=0)
        expected = torch.stack([top[0] - top[1], top[0], saturation])
        torch.testing.assert_close(read_features(holder, states[READ][None], states[READ - 1][None])[0], expected,
                                   atol=1e-5, rtol=1e-5)
        index = rows.index(sample)  # the cache keeps the same states (right padding: the last real token)
        torch.testing.assert_close(cache.last_states[index, READ], states[READ], atol=1e-5, rtol=1e-5)


def routing_by_the_read(stack: RouterStack, executor, rows) -> RouterStack:
    """Routers that execute every block before R and, after it, skip exactly when the read's margin is above its
    median over `rows`, so prompts take different paths because of the read alone."""
    margins = torch.stack([read_features(stack.routers[READ], states[READ][None], states[READ - 1][None])[0, 0]
                           for states in (full_path_states(executor, s.input_ids) for s in rows)])
    median = float(margins.median())
    with torch.no_grad():
        for layer, router in enumerate(stack.routers):
            router.fc2.weight.zero_()
            router.fc2.bias.copy_(torch.tensor([0.0, 1.0, -5.0]))
            if layer >= READ:
                router.read.weight.copy_(torch.tensor([[1e4, 0, 0], [0, 0, 0], [0, 0, 0]]))
                router.fc2.bias[0] = 1.0 - 1e4 * median - 1e-3
    return stack


def reference_path(stack: RouterStack, executor, ids: list[int]) -> LayerPath:
    """One prompt alone, block by block: the read made by hand from the routed states entering R-1 and R."""
    steps, hidden, states = [], executor.embed(torch.tensor([ids])), {}
    for layer in range(LAYERS):
        states[layer] = hidden[0, -1]
        read = (read_features(stack.routers[READ], states[READ][None], states[READ - 1][None])
                if layer >= READ else None)
        means, window_mask = window_mean_pool(hidden, None, stack.config.windows)
        for _ in range(int(stack.routers[layer](means, window_mask, read).argmax(-1))):
            steps.append(layer)
            hidden = executor.prefill(torch.tensor([ids]), None, steps, keep_hidden=True, logits="none").last_hidden
    return LayerPath(tuple(steps), LAYERS)


def test_batched_routing_reads_in_the_same_pass(executor):
    rows = samples()
    stack = stack_for(executor, build_feature_cache(executor, rows, 4, 4, last_states=True))
    stack = routing_by_the_read(stack, executor, rows)
    prompts = [s.input_ids for s in rows]
    input_ids, mask = pad_left(prompts)
    paths = RoutedModel(executor, stack).route(input_ids, mask)
    assert paths == [reference_path(stack, executor, ids) for ids in prompts]
    assert len(set(paths)) > 1, "the read should route prompts differently"


def test_trains_saves_and_loads_with_its_lens(executor, tmp_path):
    config = TrainConfig.from_dict({"router_kind": "confidence", "confidence": {"read_layer": READ, "lens_top_k": TOP_K},
                                    "target": "safety", "prior_init": True, "standardize": True, "epochs": 3,
                                    "batch_size": 4, "windows": 4, "hidden": 16, "select_epoch": "last",
                                    "threshold": 0.5})
    assert config.kind_settings == {"read_layer": READ, "lens_top_k": TOP_K}
    assert config.to_dict()["confidence"] == {"read_layer": READ, "lens_top_k": TOP_K}
    rows = samples(16)
    cache = build_feature_cache(executor, rows, 4, 4, last_states=True)
    stack = RouterStack(RouterConfig("tiny", LAYERS, executor.config.hidden_size, windows=4, hidden=16,
                                     kind="confidence", kind_settings=dict(config.kind_settings),
                                     training=config.to_dict()), seed=0)
    stack.kind.prepare(stack.routers, stack.config, executor, cache)
    train_routers(stack, cache, config)
    read_weights = torch.stack([router.read.weight for router in stack.routers])
    assert read_weights[READ:].abs().sum() > 0, "the read's weights should move off zero in training"
    assert read_weights[:READ].abs().sum() == 0, "blocks before R never see the read"
    stack.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert saved["kind"] == "confidence" and saved["kind_settings"] == {"read_layer": READ, "lens_top_k": TOP_K}
    loaded = RouterStack.from_pretrained(tmp_path, expected_model="tiny", expected_layers=LAYERS)
    assert loaded.routers[READ].lens.shape == stack.routers[READ].lens.shape
    assert all(torch.equal(a, b) for a, b in zip(stack.state_dict().values(), loaded.state_dict().values()))
    input_ids, mask = pad_left([s.input_ids for s in rows])
    assert RoutedModel(executor, loaded).route(input_ids, mask) == RoutedModel(executor, stack).route(input_ids, mask)


def test_settings_are_checked_in_the_configs_wording():
    with pytest.raises(ValueError, match=r"train.confidence.read_layer must be an integer >= 1, got 0"):
        TrainConfig.from_dict({"router_kind": "confidence", "confidence": {"read_layer": 0}})
    with pytest.raises(ValueError, match=r"train.confidence: unknown key\(s\) \['read_layers'\]"):
        TrainConfig.from_dict({"router_kind": "confidence", "confidence": {"read_layers": 4}})
    with pytest.raises(ValueError, match="train.confidence: settings of router kind 'confidence', but "
                                         "train.router_kind is 'mlp'"):
        TrainConfig.from_dict({"confidence": {"read_layer": 4}})
    with pytest.raises(ValueError, match="read_layer must be < the model's 6 layers, got 6"):
        RouterStack(RouterConfig("tiny", LAYERS, 8, kind="confidence", kind_settings={"read_layer": 6}))
    assert "kind_settings" not in RouterConfig("tiny", 2, 8).to_dict()  # mlp files stay as they were


def test_read_cost_is_the_lens_against_a_block(executor):
    cache = build_feature_cache(executor, samples(), 4, 4, last_states=True)
    stack = stack_for(executor, cache)
    size = stack.routers[READ].lens.shape[0]
    hidden = executor.config.hidden_size
    cost = stack.kind.read_cost(stack.routers, stack.config, executor, tokens=10)
    assert cost == pytest.approx(size * hidden / (10 * block_macs_per_token(executor)))
    assert isinstance(stack.kind, ConfidenceKind) and 0 < cost < 1


def test_a_served_point_reports_the_read_cost(executor):
    from drllm.serving.points import OperatingPoint

    stack = stack_for(executor, build_feature_cache(executor, samples(), 4, 4, last_states=True))
    point = OperatingPoint("router", None, RoutedModel(executor, stack))
    assert point.read_cost(10) == stack.kind.read_cost(stack.routers, stack.config, executor, 10) > 0
    assert OperatingPoint("base", executor.default_path(), None).read_cost(10) == 0.0
