"""Router kinds (drllm.routing.kinds): for every registered kind the training forward, the per-layer module and the
packed inference step give the same logits; a kind registered in-process trains, saves, loads and routes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import random_prompts, tiny_model
from drllm.core.artifacts import ArtifactError
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.training.features import FeatureCache
from drllm.routing.inference import RoutedModel, pad_left
from drllm.routing.kinds import ROUTER_KINDS, RouterKind
from drllm.routing.pooling import masked_window_mean, window_mean_pool
from drllm.routing.router import CONFIG_FILE, RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.training.train_settings import TrainConfig
from drllm.training.training import train_routers

LAYERS, DIM = 4, 64
KIND_SETTINGS = {"confidence": {"read_layer": 2}}  # built-in kinds' settings for a LAYERS-block stack


def fill_lens(stack: RouterStack, generator: torch.Generator) -> None:
    """What `prepare` takes from a model, random here: the confidence kind's lens rows at its read layer."""
    holder = next(router for router in stack.routers if router.holds_lens)
    holder.lens = torch.randn(7, stack.config.hidden_size, generator=generator)


PREPARE = {"confidence": fill_lens}


def perturbed_stack(kind: str, layers: int = LAYERS, dim: int = 24, windows: int = 3, hidden: int = 16,
                    exclude_first: bool = False) -> RouterStack:
    """A stack of `kind` with every parameter moved off its initialisation (biases too), so that no term of the
    forward is zero by construction."""
    stack = RouterStack(RouterConfig("tiny", layers, dim, windows=windows, hidden=hidden, kind=kind,
                                     pool_exclude_first=exclude_first, kind_settings=KIND_SETTINGS.get(kind, {})),
                        seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in stack.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    if kind in PREPARE:
        PREPARE[kind](stack, generator)
    return stack


def last_token_states(hidden: list[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
    """[B, L, d]: each row's last real token's state entering each block, as the feature cache keeps them."""
    batch, length = hidden[0].shape[:2]
    last = (torch.full((batch,), length - 1) if mask is None
            else torch.tensor([max(i for i in range(length) if mask[row, i]) for row in range(batch)]))
    return torch.stack([h[torch.arange(batch), last] for h in hidden], 1)


def padded_mask(length: int, rows: list[tuple[int, int]]) -> torch.Tensor:
    mask = torch.ones(len(rows), length, dtype=torch.long)
    for row, (left, right) in enumerate(rows):
        mask[row, :left] = 0
        mask[row, length - right:] = 0
    return mask


def assert_training_equals_inference(stack: RouterStack, length: int, mask: torch.Tensor | None, batch: int) -> None:
    """Per layer: the packed step on the hidden states entering the block, the layer's module on their window means
    (RouterStack.route) and the training forward over all layers on the stacked window means agree (float32)."""
    config = stack.config
    generator = torch.Generator().manual_seed(length)
    hidden = [torch.randn(batch, length, config.hidden_size, generator=generator) * 3 for _ in range(config.num_layers)]
    pooled = [window_mean_pool(h, mask, config.windows, config.pool_exclude_first) for h in hidden]
    means = torch.stack([m for m, _ in pooled], 1)  # [B, L, W, d]: one mask, so one window count for every layer
    window_mask = pooled[0][1]
    reads = stack.kind.reads_last_token
    with torch.no_grad():
        trained = stack(means, window_mask, last_token_states(hidden, mask) if reads else None)
        prompt = stack.packed().prompt(mask, batch, length)
        for layer in range(config.num_layers):
            packed = prompt.logits(layer, hidden[layer])
            assert packed.shape == (batch, 3) and packed.dtype == torch.float32
            torch.testing.assert_close(packed, trained[:, layer], atol=2e-5, rtol=1e-5)
            if not reads:  # a kind reading earlier blocks' states cannot route one block alone
                torch.testing.assert_close(stack.route(layer, hidden[layer], mask), trained[:, layer], atol=2e-5,
                                           rtol=1e-5)


CASES = [
    (17, None),                                  # every window valid
    (17, [(0, 0), (5, 0), (0, 4), (2, 3)]),      # left, right and both-sides padding
    (12, [(0, 0), (10, 0), (0, 11), (4, 4)]),    # rows with 2 and 1 real tokens: fewer valid windows
    (3, [(0, 0), (1, 0), (0, 2)]),               # fewer tokens than windows
]


@pytest.mark.parametrize("kind", ROUTER_KINDS.names())
@pytest.mark.parametrize("exclude_first", [False, True])
@pytest.mark.parametrize("length,rows", CASES)
def test_training_forward_equals_inference_step(kind, exclude_first, length, rows):
    stack = perturbed_stack(kind, exclude_first=exclude_first)
    mask = None if rows is None else padded_mask(length, rows)
    assert_training_equals_inference(stack, length, mask, 4 if rows is None else len(rows))


def test_mlp_is_the_default_and_unnamed_in_files(tmp_path):
    """Files written before kinds existed have no `kind`: mlp. Writing mlp routers leaves it out, so their
    router_config.json is byte-identical to those files."""
    stack = RouterStack(RouterConfig("tiny", 2, 8, hidden=4), seed=0)
    assert stack.config.kind == "mlp" and list(stack.state_dict())[:2] == ["routers.0.fc1.weight", "routers.0.fc1.bias"]
    stack.save_pretrained(tmp_path)
    assert "kind" not in json.loads((tmp_path / CONFIG_FILE).read_text())
    assert RouterStack.from_pretrained(tmp_path).config.kind == "mlp"
    assert "router_kind" not in TrainConfig().to_dict()
    block = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**block, "kind": "no_such_kind"}))
    with pytest.raises(ArtifactError, match="unknown router kind 'no_such_kind'"):
        RouterStack.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="train.router_kind: unknown router kind 'nope'"):
        TrainConfig(router_kind="nope")


# -- a kind added in-process, as a plugin module would -------------------------------------------------------

class LinearRouter(nn.Module):
    """Linear(d -> 3) on each window mean, logits averaged over the valid windows."""

    def __init__(self, hidden_size: int, generator: torch.Generator | None):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 3)
        nn.init.xavier_uniform_(self.proj.weight, generator=generator)

    def forward(self, window_means: torch.Tensor, window_mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_window_mean(self.proj(window_means), window_mask)


class LinearKind(RouterKind):
    """Only `build`: training and inference use the contract's defaults."""

    name = "toy_linear"

    def build(self, config, generator):
        return LinearRouter(config.hidden_size, generator)


@pytest.fixture
def linear_kind(monkeypatch):
    """The `toy_linear` kind, registered for one test; the table is restored afterwards."""
    monkeypatch.setattr(ROUTER_KINDS, "_entries", dict(ROUTER_KINDS._entries))
    ROUTER_KINDS.register(LinearKind())
    yield "toy_linear"


def reference_path(routers: RouterStack, executor: PathExecutor, ids: list[int]) -> LayerPath:
    """One prompt routed block by block the obvious way: RouterStack.route on the hidden state entering each block."""
    steps, hidden = [], executor.embed(torch.tensor([ids]))
    for layer in range(executor.num_layers):
        for _ in range(int(routers.route(layer, hidden).argmax(-1))):
            steps.append(layer)
            hidden = executor.prefill(torch.tensor([ids]), None, steps, keep_hidden=True, logits="none").last_hidden
    return LayerPath(tuple(steps), executor.num_layers)


def test_a_new_kind_trains_saves_loads_and_routes(linear_kind, tmp_path):
    assert linear_kind in ROUTER_KINDS.names()
    for length, rows in CASES:
        assert_training_equals_inference(perturbed_stack(linear_kind, exclude_first=True), length,
                                         None if rows is None else padded_mask(length, rows), 4 if rows is None else len(rows))
    config = TrainConfig(router_kind=linear_kind, epochs=2, windows=4, batch_size=4, select_epoch="last")
    with pytest.raises(ValueError, match="standardize needs the router kind to provide fold_standardization"):
        TrainConfig(router_kind=linear_kind, standardize=True)
    stack = RouterStack(RouterConfig("tiny", LAYERS, DIM, windows=4, kind=linear_kind, training=config.to_dict()),
                        seed=0)
    assert list(stack.state_dict()) == [f"routers.{l}.proj.{p}" for l in range(LAYERS) for p in ("weight", "bias")]
    generator = torch.Generator().manual_seed(0)
    count = 12
    cache = FeatureCache([f"s{i}" for i in range(count)], torch.randn((count, LAYERS, 4, DIM), generator=generator),
                         torch.ones((count, 4), dtype=torch.bool), torch.randint(0, 3, (count, LAYERS), generator=generator))
    before = {name: tensor.clone() for name, tensor in stack.state_dict().items()}
    with pytest.raises(ValueError, match="kind 'mlp', train.router_kind says 'toy_linear'"):
        train_routers(RouterStack(RouterConfig("tiny", LAYERS, DIM, windows=4)), cache, config)
    history = train_routers(stack, cache, config)
    assert len(history.epochs) == 2
    assert all(not torch.equal(before[name], tensor) for name, tensor in stack.state_dict().items())
    with torch.no_grad():  # confident routers, so prompts take different paths
        for router in stack.routers:
            router.proj.weight.mul_(40.0)
    stack.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert saved["kind"] == linear_kind and saved["training"]["router_kind"] == linear_kind
    loaded = RouterStack.from_pretrained(tmp_path, expected_model="tiny", expected_layers=LAYERS)
    assert isinstance(loaded.kind, LinearKind)
    assert all(torch.equal(a, b) for a, b in zip(stack.state_dict().values(), loaded.state_dict().values()))

    executor = PathExecutor(tiny_model("llama", layers=LAYERS))
    routed = RoutedModel(executor, loaded)
    prompts = random_prompts((4, 11, 17, 1, 9, 6))
    input_ids, mask = pad_left(prompts)
    paths = routed.route(input_ids, mask)
    assert paths == [reference_path(loaded, executor, ids) for ids in prompts]
    assert len(set(paths)) > 1, "the toy routers should route prompts differently"
