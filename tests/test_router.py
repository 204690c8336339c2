"""Routers: windowed pooling, logit voting, initialisation, parameter count, control knob, persistence."""
from __future__ import annotations

import json
import math

import pytest
import torch

from drllm.core.artifacts import ArtifactError
from drllm.routing.decision import apply_knob, decide, decide_row, knob_affine, probabilities
from drllm.routing.kinds.mlp import Router, router_parameter_count
from drllm.routing.pooling import window_mean_pool
from drllm.routing.router import CONFIG_FILE, WEIGHTS_FILE, RouterStack
from drllm.routing.router_config import RouterConfig


def reference_pool(tokens: torch.Tensor, windows: int) -> torch.Tensor:
    """The authors' pooling of one unpadded sequence [T, d]: W_eff = min(W, T), size T // W_eff, drop the rest."""
    count = min(windows, tokens.shape[0])
    size = tokens.shape[0] // count
    return tokens[:count * size].reshape(count, size, -1).mean(1)


def test_pool_exact_division():
    hidden = torch.arange(16, dtype=torch.float32).view(1, 16, 1)
    means, mask = window_mean_pool(hidden, None, 8)
    assert means.shape == (1, 8, 1) and mask.all()
    assert means[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 14.5]


def test_pool_remainder_dropped():
    hidden = torch.arange(19, dtype=torch.float32).view(1, 19, 1)  # size 19 // 8 = 2; tokens 16..18 dropped
    means, _ = window_mean_pool(hidden, None, 8)
    assert means[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 14.5]
    hidden = torch.arange(23, dtype=torch.float32).view(1, 23, 1)  # still size 2: seven tokens dropped
    assert window_mean_pool(hidden, None, 8)[0][0, -1, 0].item() == 14.5


def test_pool_fewer_tokens_than_windows():
    hidden = torch.tensor([[[1.0], [2.0], [4.0]]])
    means, mask = window_mean_pool(hidden, None, 8)
    assert means.shape == (1, 3, 1) and mask.tolist() == [[True, True, True]]
    assert means[0, :, 0].tolist() == [1.0, 2.0, 4.0]
    one, _ = window_mean_pool(torch.tensor([[[7.0, -1.0]]]), None, 8)
    assert one.tolist() == [[[7.0, -1.0]]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_padding_masks_match_unpadded(side):
    torch.manual_seed(0)
    lengths, width, dim = [3, 11, 20, 17], 20, 5
    hidden = torch.randn(len(lengths), width, dim)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "left":
            mask[row, width - n:] = 1
        else:
            mask[row, :n] = 1
    hidden_padded = hidden.masked_fill(mask[..., None] == 0, 1e6)  # garbage in the pads must not leak
    means, window_mask = window_mean_pool(hidden_padded, mask, 8)
    assert means.shape == (4, 8, dim)
    assert window_mask.sum(-1).tolist() == [3, 8, 8, 8]
    for row, n in enumerate(lengths):
        real = hidden[row, width - n:] if side == "left" else hidden[row, :n]
        expected = reference_pool(real, 8)
        torch.testing.assert_close(means[row, :expected.shape[0]], expected)
        assert (means[row, expected.shape[0]:] == 0).all()


def test_pool_window_count_is_max_over_rows_and_errors():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    means, window_mask = window_mean_pool(hidden, mask, 8)
    assert means.shape == (2, 2, 3)
    assert window_mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(ValueError, match="no real tokens"):
        window_mean_pool(hidden, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]), 8)
    with pytest.raises(ValueError, match="windows"):
        window_mean_pool(hidden, None, 0)
    with pytest.raises(ValueError, match="mask shape"):
        window_mean_pool(hidden, torch.ones(2, 5), 8)


def test_pool_bf16_input_is_pooled_in_float32():
    hidden = torch.randn(1, 16, 4).bfloat16()
    means, _ = window_mean_pool(hidden, None, 8)
    assert means.dtype == torch.float32
    torch.testing.assert_close(means[0], reference_pool(hidden[0].float(), 8))


def test_router_init_xavier_uniform_zero_bias():
    router = Router(576, 128, torch.Generator().manual_seed(0))
    for linear in (router.fc1, router.fc2):
        fan_out, fan_in = linear.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert (linear.bias == 0).all()
        assert linear.weight.abs().max() <= bound
        assert linear.weight.abs().max() > 0.9 * bound  # uniform over the whole range, not a narrower init
        assert abs(linear.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert isinstance(router.act, torch.nn.GELU) and router.act.approximate == "tanh"
    assert router.fc1.in_features == 576 and router.fc2.out_features == 3


def test_logit_voting_is_mean_of_window_logits():
    torch.manual_seed(1)
    router = Router(6, 16)
    torch.nn.init.normal_(router.fc1.bias)
    torch.nn.init.normal_(router.fc2.bias)
    means = torch.randn(3, 5, 6)
    per_window = torch.stack([router.fc2(torch.nn.functional.gelu(router.fc1(means[:, w]), approximate="tanh"))
                              for w in range(5)], 1)
    torch.testing.assert_close(router(means), per_window.mean(1))
    window_mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] + [False] * 4])
    logits = router(means, window_mask)
    torch.testing.assert_close(logits[0], per_window[0].mean(0))
    torch.testing.assert_close(logits[1], per_window[1, :2].mean(0))
    torch.testing.assert_close(logits[2], per_window[2, 0])
    # voting averages logits, not probabilities
    assert not torch.allclose(torch.softmax(logits[0], -1), torch.softmax(per_window[0], -1).mean(0))


def random_stack(layers=4, dim=24, hidden=16, windows=3, seed=0):
    """Random routers with non-zero biases and confident logits (so decisions vary across rows and layers)."""
    stack = RouterStack(RouterConfig("tiny", layers, dim, windows=windows, hidden=hidden), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for router in stack.routers:
            router.fc1.bias.copy_(torch.randn(hidden, generator=generator))
            router.fc2.bias.copy_(torch.randn(3, generator=generator))
            router.fc2.weight.mul_(8.0)
    return stack


def padded_masks(length: int, rows: list[tuple[int, int]]) -> torch.Tensor:
    """[B, length] masks with (left, right) padding per row."""
    mask = torch.ones(len(rows), length, dtype=torch.long)
    for row, (left, right) in enumerate(rows):
        mask[row, :left] = 0
        mask[row, length - right:] = 0
    return mask


@pytest.mark.parametrize("length,rows", [
    (17, None),                                  # no mask, every window valid: the tiled vote
    (17, [(0, 0), (5, 0), (0, 4), (2, 3)]),      # left, right and both-sides padding, all rows >= 3 windows
    (12, [(0, 0), (10, 0), (0, 11), (4, 4)]),    # rows with 2 and 1 real tokens: per-row vote weights
    (3, [(0, 0), (1, 0), (0, 2)]),               # a few tokens: the first layer runs before the pooling
    (2, None),
])
def test_packed_routers_equal_the_reference(length, rows):
    """The routing hot path (PackedRouters) against window_mean_pool + Router.forward on each layer: logits equal up
    to float32 rounding, decisions (with and without the knob) exactly."""
    stack = random_stack()
    batch = 4 if rows is None else len(rows)
    mask = None if rows is None else padded_masks(length, rows)
    torch.manual_seed(length)
    prompt = stack.packed().prompt(mask, batch, length)
    assert prompt.pool_first == (length > 3)  # d = 24 > h = 16: on 3 tokens or fewer the first layer goes first
    assert (prompt.tiled is not None) == (rows is None or length == 17)
    decisions = set()
    for layer in range(stack.num_layers):
        hidden = torch.randn(batch, length, 24) * 3
        reference = stack.route(layer, hidden, mask)
        logits = prompt.logits(layer, hidden)
        torch.testing.assert_close(logits, reference, atol=2e-5, rtol=1e-5)
        for knob in (None, -0.75, -0.5, 0.0, 0.3):
            probs, ref_probs = torch.softmax(logits, -1), probabilities(reference)
            if knob is not None:
                probs, ref_probs = apply_knob(probs, knob), apply_knob(ref_probs, knob)
            assert decide(probs).tolist() == decide(ref_probs).tolist()
        decisions.update(decide(probabilities(reference)).tolist())
    assert decisions == {0, 1, 2}, "the test routers should take every action somewhere"


def test_packed_routers_follow_parameter_changes(tmp_path):
    stack = random_stack()
    packed = stack.packed()
    assert stack.packed() is packed  # unchanged parameters: built once
    assert "_packed" not in stack.state_dict() and set(stack.state_dict()) == set(random_stack().state_dict())
    hidden = torch.randn(2, 9, 24)
    with torch.no_grad():
        stack.routers[2].fc2.bias.add_(torch.tensor([5.0, -5.0, 0.0]))  # in place
    assert stack.packed() is not packed
    torch.testing.assert_close(stack.packed().prompt(None, 2, 9).logits(2, hidden), stack.route(2, hidden),
                               atol=2e-5, rtol=1e-5)
    other = random_stack(seed=7)
    stack.load_state_dict(other.state_dict())
    for layer in range(4):
        torch.testing.assert_close(stack.packed().prompt(None, 2, 9).logits(layer, hidden), other.route(layer, hidden),
                                   atol=2e-5, rtol=1e-5)
    # a saved stack loads and packs as before (the saved format does not know about packing)
    other.packed()
    other.save_pretrained(tmp_path)
    loaded = RouterStack.from_pretrained(tmp_path)
    for layer in range(4):
        assert torch.equal(loaded.packed().prompt(None, 2, 9).logits(layer, hidden),
                           other.packed().prompt(None, 2, 9).logits(layer, hidden))


def test_host_decision_equals_decide():
    """The routing pass decides row by row on the host (one sync per block) exactly as `decide` does on a tensor."""
    ties = torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [0.45, 0.1, 0.45], [0.5, 0.25, 0.25], [1 / 3] * 3])
    probs = torch.cat([ties, apply_knob(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), 0.0),
                       torch.rand(256, 3).softmax(-1)])
    assert [decide_row(row) for row in probs.tolist()] == decide(probs).tolist()


def test_stack_forward_equals_per_router_calls():
    config = RouterConfig("tiny", num_layers=4, hidden_size=8, windows=3, hidden=16)
    stack = RouterStack(config, seed=0)
    for router in stack.routers:  # non-zero biases so the stacked biases are exercised
        torch.nn.init.normal_(router.fc1.bias)
        torch.nn.init.normal_(router.fc2.bias)
    means = torch.randn(5, 4, 3, 8)
    window_mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]] + [[True] * 3] * 2)
    logits = stack(means, window_mask)
    assert logits.shape == (5, 4, 3)
    for layer in range(4):
        torch.testing.assert_close(logits[:, layer], stack[layer](means[:, layer], window_mask), atol=1e-6,
                                   rtol=1e-5)
    hidden = torch.randn(2, 10, 8)
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])
    pooled, pooled_mask = window_mean_pool(hidden, mask, 3)
    torch.testing.assert_close(stack.route(2, hidden, mask), stack[2](pooled, pooled_mask))


def test_seeded_init_is_reproducible():
    config = RouterConfig("tiny", num_layers=3, hidden_size=8, hidden=4)
    a, b, c = RouterStack(config, seed=5), RouterStack(config, seed=5), RouterStack(config, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].fc1.weight, c[0].fc1.weight)


@pytest.mark.parametrize("layers,dim", [(4, 64), (30, 576), (28, 3072), (32, 4096)])
def test_parameter_count_formula(layers, dim):
    formula = layers * (dim * 128 + 128 + 128 * 3 + 3)
    assert router_parameter_count(layers, dim) == formula
    if layers * dim <= 30 * 576:  # build only the small stacks
        assert RouterStack(RouterConfig("m", layers, dim)).num_parameters() == formula


def test_parameter_count_paper_models():
    assert router_parameter_count(28, 3072) == 11_024_468  # Llama-3.2-3B: "11.0M"
    assert router_parameter_count(32, 4096) == 16_793_696  # Llama-3.1-8B: "16.8M"
    assert RouterStack(RouterConfig("llama-3.2-3b", 28, 3072)).num_parameters() == 11_024_468


PROBS = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.05, 0.05, 0.9]])


def test_knob_endpoints_and_identities():
    eye = torch.eye(3)
    assert torch.equal(apply_knob(PROBS, -1.0), eye[0].expand(3, 3))
    assert torch.equal(apply_knob(PROBS, -0.5), PROBS)
    assert torch.equal(apply_knob(PROBS, 0.5), eye[1].expand(3, 3))
    assert torch.equal(apply_knob(PROBS, 1.0), eye[2].expand(3, 3))
    assert decide(apply_knob(PROBS, -1)).tolist() == [0, 0, 0]
    assert decide(apply_knob(PROBS, -0.5)).tolist() == [1, 0, 2]
    assert decide(apply_knob(PROBS, 0.5)).tolist() == [1, 1, 1]
    assert decide(apply_knob(PROBS, 1)).tolist() == [2, 2, 2]


def test_knob_interpolates_piecewise():
    torch.testing.assert_close(apply_knob(PROBS, -0.75), 0.5 * torch.eye(3)[0] + 0.5 * PROBS)
    torch.testing.assert_close(apply_knob(PROBS, 0.0), 0.5 * PROBS + 0.5 * torch.eye(3)[1])
    torch.testing.assert_close(apply_knob(PROBS, 0.75), torch.tensor([0.0, 0.5, 0.5]).expand(3, 3))
    for p in (-0.9, -0.3, 0.2, 0.7):
        torch.testing.assert_close(apply_knob(PROBS, p).sum(-1), torch.ones(3))


def knob_as_written(probs: torch.Tensor, p: float) -> torch.Tensor:
    """App. C's blend spelled out, as apply_knob computed it before it became an affine map (knob_affine)."""
    skip, execute, repeat = (torch.eye(3)[c].expand_as(probs) for c in range(3))
    if p <= -0.5:
        t = (p + 1.0) / 0.5
        return (1 - t) * skip + t * probs
    if p <= 0.5:
        t = p + 0.5
        return (1 - t) * probs + t * execute
    t = (p - 0.5) / 0.5
    return (1 - t) * execute + t * repeat


def test_knob_affine_is_the_blend_bit_for_bit():
    """The routing pass applies the knob as probs * scale + offset in place: the same float32 bits as the blend."""
    torch.manual_seed(0)
    probs = torch.cat([torch.rand(500, 3).softmax(-1), torch.eye(3), torch.full((1, 3), 1 / 3)])
    for p in [-1.0, -0.9, -0.75, -0.6, -0.5, -0.3, -1 / 3, 0.0, 0.1, 0.2, 0.5, 0.7, 0.75, 1.0]:
        expected = knob_as_written(probs, p)
        assert torch.equal(apply_knob(probs, p), expected), p
        scale, offset = knob_affine(p)
        assert (scale == 0.0) == (p in (-1.0, 0.5, 0.7, 0.75, 1.0)), p
        assert torch.equal(probs.clone().mul_(scale).add_(offset) if scale else offset.expand_as(probs), expected), p


@pytest.mark.parametrize("p", [-1.01, 1.5, float("nan"), float("inf")])
def test_knob_out_of_range(p):
    with pytest.raises(ValueError, match="knob"):
        apply_knob(PROBS, p)


def test_save_load_round_trip(tmp_path):
    config = RouterConfig("tiny-llama", num_layers=3, hidden_size=8, windows=4, hidden=16, label_counts=[1, 20, 2],
                          training={"lr": 0.001})
    stack = RouterStack(config, seed=3)
    stack.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files left
    raw = (tmp_path / WEIGHTS_FILE).read_bytes()  # header with sorted keys: equal routers, equal bytes
    header = raw[8:8 + int.from_bytes(raw[:8], "little")].rstrip(b" ")
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
    loaded = RouterStack.from_pretrained(tmp_path, expected_model="tiny-llama", expected_layers=3,
                                         expected_hidden_size=8)
    assert loaded.config == config
    for (name, a), (_, b) in zip(stack.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    means = torch.randn(2, 3, 4, 8)
    torch.testing.assert_close(loaded(means), stack(means))


def test_routers_are_tied_to_the_base_models_revision_and_weights(tmp_path, monkeypatch):
    config = RouterConfig("tiny-llama", num_layers=3, hidden_size=8, hidden=16, base_model_revision="abc123",
                          base_model_sha256="f" * 64)
    RouterStack(config).save_pretrained(tmp_path)
    manifest = {"name": "tiny-llama", "num_layers": 3, "hidden_size": 8, "revision": "abc123",
                "weights_sha256": "f" * 64}
    assert RouterStack.for_model(tmp_path, manifest).config == config
    assert RouterStack.for_model(tmp_path, {**manifest, "revision": None, "weights_sha256": None}).config == config
    with pytest.raises(ArtifactError, match="'tiny-llama' revision 'abc123', not 'def456'"):
        RouterStack.for_model(tmp_path, {**manifest, "revision": "def456"})
    with pytest.raises(ArtifactError, match=r"weights \(sha256\) 'f{64}', not '0{64}'"):
        RouterStack.for_model(tmp_path, {**manifest, "weights_sha256": "0" * 64})
    # not a local directory: an "owner/name" source is a hub repository, downloaded with huggingface_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="routers 'someone/no-such-routers': no such local directory"):
        RouterStack.from_pretrained("someone/no-such-routers")


def test_load_failures_are_clear(tmp_path):
    with pytest.raises(ArtifactError, match="router_config.json not found"):
        RouterStack.from_pretrained(tmp_path)
    stack = RouterStack(RouterConfig("tiny-llama", num_layers=3, hidden_size=8, hidden=16))
    stack.save_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="trained for model 'tiny-llama', not 'smollm2-135m-instruct'"):
        RouterStack.from_pretrained(tmp_path, expected_model="smollm2-135m-instruct")
    with pytest.raises(ArtifactError, match="trained for 3 layers, but the model has 30"):
        RouterStack.from_pretrained(tmp_path, expected_model="tiny-llama", expected_layers=30)
    with pytest.raises(ArtifactError, match="hidden size 8"):
        RouterStack.from_pretrained(tmp_path, expected_hidden_size=576)
    # a config that lies about the shape of the weights
    block = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**block, "num_layers": 4}))
    with pytest.raises(ArtifactError, match="do not match router_config.json"):
        RouterStack.from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**block, "colour": "red"}))
    with pytest.raises(ArtifactError, match="unknown key"):
        RouterStack.from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(block))
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="routers.safetensors not found"):
        RouterStack.from_pretrained(tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="num_layers"):
        RouterConfig("m", num_layers=0, hidden_size=8)
    with pytest.raises(ValueError, match="label_counts"):
        RouterConfig("m", num_layers=2, hidden_size=8, label_counts=[1, 2])
    with pytest.raises(ValueError, match="base_model"):
        RouterConfig("", num_layers=2, hidden_size=8)


def test_ties_with_execute_go_to_execute():
    saturated = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.4, 0.0]])
    # p = 0 blends half the router with execute: a saturated skip (or repeat) ties execute exactly
    assert decide(apply_knob(saturated, 0.0)).tolist() == [1, 1, 1]
    assert decide(apply_knob(saturated, -0.5)).tolist() == [0, 2, 0]
    assert decide(torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [0.45, 0.1, 0.45]])).tolist() == [1, 1, 0]
    # from p >= 0 on, skip (and repeat) can never win (App. C): only execute
    for p in (0.0, 0.1, 0.25):
        assert set(decide(apply_knob(torch.rand(64, 3).softmax(-1), p)).tolist()) == {1}
