"""Router training: focal loss, class weights, warm-up, epoch selection, feature cache == teacher-forced full
forward, split, checks, CLI."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from conftest import REPO, tiny_model
from drllm.core.artifacts import ArtifactError, write_json
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.routing.pooling import window_mean_pool
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig
from drllm.training.features import FeatureCache, build_feature_cache, teacher_forced_features
from drllm.training.full_forward import train_full_forward
from drllm.training.samples import TrainingSample, read_samples, split_samples, validate_samples, write_samples
from drllm.training.train_settings import TrainConfig
from drllm.training.training import (METRIC_COLUMNS, METRICS_SCHEMA, class_weights, focal_loss, label_counts,
                                    lr_multiplier, read_metrics, resolve_warmup, train_class_weights, train_loop,
                                    train_routers, write_metrics)

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import train_routers as cli  # noqa: E402

LAYERS = 4
LABELS = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 2, 1, 1], [0, 1, 1, 2], [1, 1, 0, 0], [2, 1, 0, 1]]


def make_samples(count: int, seed: int = 0, layers: int = LAYERS, vocab: int = 97) -> list[TrainingSample]:
    """Random prompts of 2..24 tokens; paths cycle through LABELS so some share a path and some do not."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        length = int(torch.randint(2, 25, (1,), generator=generator))
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        labels = LABELS[index % len(LABELS)] if layers == LAYERS else [1] * layers
        samples.append(TrainingSample(f"q{index}", ids, list(labels)))
    return samples


@pytest.fixture(scope="module")
def executor():
    return PathExecutor(tiny_model("llama", LAYERS))


def new_stack(config: TrainConfig, layers: int = LAYERS, dim: int = 64) -> RouterStack:
    return RouterStack(RouterConfig("tiny", layers, dim, config.windows, config.hidden), seed=config.seed)


def synthetic_cache(count: int, seed: int = 0, dim: int = 16, windows: int = 8) -> FeatureCache:
    """Random window means (no model): labels cycle through LABELS; every window is valid."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([LABELS[i % len(LABELS)] for i in range(count)], dtype=torch.long)
    means = torch.randn((count, LAYERS, windows, dim), generator=generator)
    return FeatureCache([f"s{i}" for i in range(count)], means, torch.ones((count, windows), dtype=torch.bool),
                        labels)


def state_copy(stack: RouterStack) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in stack.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# -- loss ---------------------------------------------------------------------------------------------------

def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    targets = torch.tensor([0, 2])
    weights = torch.tensor([0.5, 1.0, 1.5])
    expected = 0.0
    for row, target in zip(logits.tolist(), targets.tolist()):
        p = math.exp(row[target]) / sum(math.exp(x) for x in row)
        expected += -weights[target].item() * (1 - p) ** 2 * math.log(p)
    expected /= 2
    loss = focal_loss(logits, targets, weights, gamma=2.0)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected) < 1e-6
    # row 0: p=0.8438, 0.5*(0.1562^2)*0.1698 = 0.00207; row 1: p=0.4519, 1.5*(0.5481^2)*0.7943 = 0.3579
    assert abs(loss.item() - (0.002072 + 0.357911) / 2) < 1e-4


def test_focal_loss_reduces_to_cross_entropy_and_handles_layers():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 3, dtype=torch.bfloat16)
    targets = torch.randint(0, 3, (5, 4))
    ce = torch.nn.functional.cross_entropy(logits.float().view(-1, 3), targets.view(-1))
    torch.testing.assert_close(focal_loss(logits, targets, None, gamma=0.0), ce)
    # gamma > 0 down-weights easy examples: never above CE
    assert focal_loss(logits, targets, None, gamma=2.0) < ce
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, targets, reduction="max")


def test_class_weights():
    weights = class_weights([4200, 114480, 1320], 0.999)  # the paper's 3.5/95.4/1.1% over 4,000 x 30 labels
    assert abs(weights.sum().item() - 3.0) < 1e-6
    assert weights.tolist() == pytest.approx([0.901, 0.888, 1.211], abs=2e-3)
    big = class_weights([1_000_000, 2_000_000, 500_000], 0.999)
    assert big.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)  # near-uniform for large counts
    # configurable beta: larger beta -> closer to inverse frequency
    sharper = class_weights([4200, 114480, 1320], 0.99999)
    assert sharper[2] > weights[2] and sharper[1] < weights[1]
    assert class_weights([5, 50, 500], 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # by hand, beta = 0.5: raw (0.5/0.5, 0.5/(1-0.5^2), 0.5/(1-0.5^3)) = (1, 2/3, 4/7)
    raw = [1.0, 2 / 3, 4 / 7]
    assert class_weights([1, 2, 3], 0.5).tolist() == pytest.approx([3 * r / sum(raw) for r in raw], abs=1e-6)
    # an absent class gets weight 0; the others share the sum of 3
    absent = class_weights([0, 1000, 10], 0.999)
    assert absent[0].item() == 0 and abs(absent.sum().item() - 3.0) < 1e-6
    with pytest.raises(ValueError, match="beta"):
        class_weights([1, 2, 3], 1.0)
    with pytest.raises(ValueError, match="all zero"):
        class_weights([0, 0, 0], 0.999)
    assert label_counts([[0, 1, 1], [2, 1, 1]]) == [1, 4, 1]


def test_class_weight_modes_on_small_counts():
    counts = [20, 500, 5]  # a few hundred labels: where beta = 0.999 turns into inverse frequency
    assert train_class_weights(counts, TrainConfig()).tolist() == [1.0, 1.0, 1.0]  # default "none"
    effective = train_class_weights(counts, TrainConfig(class_weights="effective", beta=0.999))
    assert torch.equal(effective, class_weights(counts, 0.999))
    inverse = [1 / n for n in counts]
    assert effective.tolist() == pytest.approx([3 * w / sum(inverse) for w in inverse], abs=0.01)
    assert effective[2] / effective[0] == pytest.approx(20 / 5, rel=0.02)
    assert effective[2] > 70 * effective[1]  # repeat outweighs execute by ~80x
    fixed = train_class_weights(counts, TrainConfig(class_weights="fixed", fixed_weights=[1, 2, 5]))
    assert fixed.tolist() == pytest.approx([0.375, 0.75, 1.875])  # normalised to sum 3
    assert train_class_weights(counts, TrainConfig(class_weights="fixed", fixed_weights=[0, 4, 2])).tolist() \
        == pytest.approx([0.0, 2.0, 1.0])
    for bad, match in (({"class_weights": "inverse"}, "class_weights"),
                       ({"class_weights": "fixed"}, "fixed_weights"),
                       ({"class_weights": "fixed", "fixed_weights": [1, 2]}, "fixed_weights"),
                       ({"class_weights": "fixed", "fixed_weights": [1, -1, 2]}, "fixed_weights"),
                       ({"class_weights": "fixed", "fixed_weights": [0, 0, 0]}, "fixed_weights"),
                       ({"class_weights": "fixed", "fixed_weights": [1, float("nan"), 1]}, "fixed_weights"),
                       ({"fixed_weights": [1, 1, 1]}, "fixed_weights is set but class_weights is 'none'")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


@pytest.mark.parametrize("mode, expected", [("none", [1.0, 1.0, 1.0]), ("fixed", [0.5, 1.0, 1.5]),
                                            ("effective", None)])
def test_training_uses_the_configured_class_weights(mode, expected):
    cache = synthetic_cache(12)
    config = TrainConfig(epochs=1, batch_size=4, hidden=8, class_weights=mode,
                         fixed_weights=[1, 2, 3] if mode == "fixed" else None)
    history = train_routers(new_stack(config, dim=16), cache, config)
    if expected is None:
        expected = class_weights(label_counts(cache.labels), 0.999).tolist()
    assert history.class_weights == pytest.approx(expected)
    assert history.class_counts == label_counts(cache.labels)


def test_lr_schedule():
    assert lr_multiplier(0, 4, 10) == 0.25 and lr_multiplier(3, 4, 10) == 1.0
    # the cosine runs from the peak at step 3 to 0 at step 10 (one past the last): 7 decay intervals
    assert lr_multiplier(4, 4, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 7)))
    assert lr_multiplier(7, 4, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 7)))
    assert lr_multiplier(9, 4, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 7)))
    assert lr_multiplier(10, 4, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(9, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 11)))


def test_warmup_fraction_resolves_and_the_lr_decays_to_zero():
    fraction = TrainConfig(warmup_fraction=0.1)
    assert resolve_warmup(fraction, 25) == (2, [])     # round(2.5) = 2
    assert resolve_warmup(fraction, 35) == (4, [])     # round(3.5) = 4
    assert resolve_warmup(fraction, 3) == (1, [])      # round(0.3) = 0, but at least 1 when the fraction is > 0
    assert resolve_warmup(TrainConfig(warmup_fraction=0.0), 25) == (0, [])
    warmup, notes = resolve_warmup(TrainConfig(warmup_fraction=0.9), 2)  # round(1.8) = 2 would never decay
    assert warmup == 1 and "cut to 1" in notes[0]
    assert TrainConfig().warmup_fraction == 0.05 and resolve_warmup(TrainConfig(), 400) == (20, [])
    multipliers = [lr_multiplier(s, 2, 25) for s in range(25)]
    assert multipliers[:2] == [0.5, 1.0]
    assert all(a > b for a, b in zip(multipliers[1:], multipliers[2:]))  # strictly decreasing after warm-up
    assert 0 < multipliers[-1] < 0.005 and lr_multiplier(25, 2, 25) == pytest.approx(0.0, abs=1e-12)


def test_training_schedule_follows_the_warmup_fraction():
    cache = synthetic_cache(5)  # batch 1: 5 steps per epoch, 25 in all
    config = TrainConfig(epochs=5, batch_size=1, hidden=8, warmup_fraction=0.1, lr=1e-2)
    history = train_routers(new_stack(config, dim=16), cache, config)
    assert (history.total_steps, history.warmup_steps, history.notes) == (25, 2, [history.notes[0]])
    assert "select_epoch" in history.notes[0]  # no validation split: the only note
    rates = [row["learning_rate"] for row in history.epochs]  # at each epoch's last step: 4, 9, ..., 24
    assert rates == pytest.approx([1e-2 * lr_multiplier(s, 2, 25) for s in (4, 9, 14, 19, 24)])
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 1e-2 * 0.005


def test_warmup_steps_capped_at_half_the_run_and_said():
    config = TrainConfig(epochs=5, batch_size=1, hidden=8, warmup_steps=500, warmup_fraction=None)
    assert resolve_warmup(config, 10_000) == (500, [])  # large runs keep the paper's 500 steps
    history = train_routers(new_stack(config, dim=16), synthetic_cache(5), config)
    assert history.total_steps == 25 and history.warmup_steps == 12
    assert any("warm-up capped from 500 to 12 steps (half of the run's 25 optimizer steps)" in note
               for note in history.notes)
    rates = [row["learning_rate"] for row in history.epochs]
    assert rates[0] < rates[1] < 1e-3  # steps 4 and 9: warm-up
    assert rates[2] > rates[3] > rates[4] and rates[4] < 1e-3 * 0.02  # then it decays, it does not only rise
    assert rates == pytest.approx([1e-3 * lr_multiplier(s, 12, 25) for s in (4, 9, 14, 19, 24)])


def test_warmup_config_errors_name_the_fields():
    with pytest.raises(ValueError, match=r"warmup_steps \(500\) and warmup_fraction \(0.05\) are both set"):
        TrainConfig(warmup_steps=500)
    with pytest.raises(ValueError, match="warmup_steps and warmup_fraction are both null"):
        TrainConfig(warmup_fraction=None)
    with pytest.raises(ValueError, match="train.warmup_fraction must be a number >= 0 and < 1 or null"):
        TrainConfig(warmup_fraction=1.0)
    with pytest.raises(ValueError, match="train.warmup_steps must be an integer >= 0 or null"):
        TrainConfig(warmup_steps=-1, warmup_fraction=None)
    assert TrainConfig(warmup_steps=0, warmup_fraction=None).warmup_steps == 0


# -- the feature cache is the teacher-forced forward ----------------------------------------------------------

def test_cache_features_match_single_unpadded_forwards(executor):
    samples = make_samples(9)
    cache = build_feature_cache(executor, samples, windows=8, batch_size=4)
    assert cache.means.shape == (9, LAYERS, 8, 64) and cache.labels.tolist() == [s.labels for s in samples]
    for index, sample in enumerate(samples):
        state = executor.prefill(torch.tensor([sample.input_ids]), None, LayerPath.from_counts(sample.labels),
                                 keep_hidden=True, logits="none")
        windows = min(8, len(sample.input_ids))
        assert cache.window_mask[index].sum().item() == windows
        for layer, hidden in enumerate(state.layer_inputs()):
            expected, _ = window_mean_pool(hidden, None, 8)
            torch.testing.assert_close(cache.means[index, layer, :windows], expected[0], atol=1e-5, rtol=1e-5)
    # a skipped layer's router sees what the next layer's sees; router 0 sees the embeddings
    skipped = 1  # LABELS[1] skips layer 1
    torch.testing.assert_close(cache.means[skipped, 1], cache.means[skipped, 2])
    embeddings = executor.embed(torch.tensor([samples[0].input_ids]))
    torch.testing.assert_close(cache.means[0, 0, :8], window_mean_pool(embeddings, None, 8)[0][0])


def test_cache_training_equals_full_forward_training(executor):
    samples = make_samples(14, seed=1)
    val = make_samples(5, seed=2)
    config = TrainConfig(epochs=3, batch_size=2, grad_accumulation=2, warmup_steps=3, warmup_fraction=None,
                         hidden=16, seed=7, cache_batch_size=3)
    cached_stack, full_stack = new_stack(config), new_stack(config)
    cache = build_feature_cache(executor, samples, config.windows, config.cache_batch_size)
    val_cache = build_feature_cache(executor, val, config.windows, config.cache_batch_size)
    cached = train_routers(cached_stack, cache, config, val_cache)
    full = train_full_forward(full_stack, executor, samples, config, val)
    assert len(cached.step_losses) == 3 * math.ceil(14 / 4) == len(full.step_losses)
    for step, (a, b) in enumerate(zip(cached.step_losses, full.step_losses)):
        assert abs(a - b) < 1e-5, f"step {step}: cache {a} vs full forward {b}"
    assert cached.step_losses[0] != cached.step_losses[-1]  # the routers did learn something
    for a, b in zip(cached.epochs, full.epochs):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5
        assert a["val_layer_accuracy"] == b["val_layer_accuracy"]
        assert a["val_macro_f1"] == b["val_macro_f1"] and a["selected"] == b["selected"]
    assert cached.selected_epoch == full.selected_epoch  # both kept the same epoch's routers
    for (name, a), (_, b) in zip(cached_stack.state_dict().items(), full_stack.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    assert not torch.equal(cached_stack[0].fc1.weight, new_stack(config)[0].fc1.weight)


def test_gradient_accumulation_matches_one_big_batch(executor):
    samples = make_samples(12, seed=3)
    cache = build_feature_cache(executor, samples, 8, 4)
    histories, stacks = [], []
    for batch_size, accumulation in ((4, 1), (2, 2), (1, 4)):
        config = TrainConfig(epochs=2, batch_size=batch_size, grad_accumulation=accumulation, warmup_steps=2,
                             warmup_fraction=None, hidden=16)
        stacks.append(new_stack(config))
        histories.append(train_routers(stacks[-1], cache, config))
    for other, stack in zip(histories[1:], stacks[1:]):
        assert other.step_losses == pytest.approx(histories[0].step_losses, abs=1e-6)
        for a, b in zip(stacks[0].parameters(), stack.parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_training_is_seeded_and_order_depends_on_seed(executor):
    samples = make_samples(10, seed=4)
    cache = build_feature_cache(executor, samples, 8, 4)
    run = lambda seed: train_routers(new_stack(TrainConfig(seed=seed, hidden=8)), cache,
                                     TrainConfig(epochs=2, batch_size=3, warmup_fraction=0.2, hidden=8, seed=seed))
    assert run(0).step_losses == run(0).step_losses
    assert run(0).step_losses != run(1).step_losses


def test_bf16_cache_halves_memory(executor):
    samples = make_samples(6)
    full = build_feature_cache(executor, samples, 8, 4)
    half = build_feature_cache(executor, samples, 8, 4, dtype="bfloat16")
    assert half.means.dtype == torch.bfloat16 and half.means.nbytes * 2 == full.means.nbytes
    torch.testing.assert_close(half.means.float(), full.means, atol=0.05, rtol=0.02)
    history = train_routers(new_stack(TrainConfig(hidden=8)), half, TrainConfig(epochs=1, hidden=8))
    assert math.isfinite(history.epochs[0]["train_loss"])


# -- epoch selection ----------------------------------------------------------------------------------------------

def scripted_run(metric: str, values: list[float], select: str):
    """train_loop on a synthetic cache with validation results scripted per epoch; returns (history, stack,
    the state after each epoch)."""
    cache = synthetic_cache(8)
    config = TrainConfig(epochs=len(values), batch_size=4, hidden=8, select_epoch=select, lr=1e-2)
    stack = new_stack(config, dim=16)
    snapshots, epoch = [], iter(range(len(values)))

    def loss_of(indices, weights):
        means, window_mask, labels = cache.batch(indices, stack.device)
        return focal_loss(stack(means, window_mask), labels, weights, config.gamma)

    def evaluate(weights):
        snapshots.append(state_copy(stack))  # evaluated right after the epoch's last step
        result = {"loss": 1.0, "macro_f1": 0.5, "recall": {"skip": None, "execute": None, "repeat": None},
                  "accuracy": 0.5, "accuracy_by_layer": [0.5] * LAYERS}
        result["loss" if metric == "val_loss" else "macro_f1"] = values[next(epoch)]
        return result

    history = train_loop(stack, cache.labels, loss_of, config, evaluate, 4, None)
    return history, stack, snapshots


@pytest.mark.parametrize("metric, values, expected", [
    ("val_macro_f1", [0.2, 0.5, 0.5, 0.3], 2),             # a tie goes to the earlier epoch
    ("val_macro_f1", [float("nan"), 0.1, 0.05], 2),        # NaN never wins
    ("val_loss", [0.9, 0.7, 0.7, 0.8], 2),
    ("val_loss", [0.9, 0.8, 0.7, 0.6], 4),
    ("val_loss", [float("nan"), float("nan")], 1),         # nothing better: the first
])
def test_selection_keeps_the_best_epochs_routers(metric, values, expected):
    history, stack, snapshots = scripted_run(metric, values, metric)
    assert history.selected_epoch == expected
    assert [row["selected"] for row in history.epochs] == [e == expected for e in range(1, len(values) + 1)]
    assert_same_state(state_copy(stack), snapshots[expected - 1])
    if expected != len(values):  # the routers did move after the kept epoch, and were put back
        final = state_copy(stack)
        assert any(not torch.equal(final[name], snapshots[-1][name]) for name in final)


def test_select_last_keeps_the_last_epoch():
    history, stack, snapshots = scripted_run("val_macro_f1", [0.9, 0.1, 0.2], "last")
    assert history.selected_epoch == 3 and [row["selected"] for row in history.epochs] == [False, False, True]
    assert_same_state(state_copy(stack), snapshots[-1])
    assert not any("select_epoch" in note for note in history.notes)


def test_selection_on_real_validation_metrics():
    cache, val_cache = synthetic_cache(24, seed=1), synthetic_cache(12, seed=2)
    config = TrainConfig(epochs=8, batch_size=4, hidden=8, lr=3e-2)
    stack = new_stack(config, dim=16)
    snapshots = []
    history = train_routers(stack, cache, config, val_cache,
                            log=lambda m: snapshots.append(state_copy(stack)) if m.startswith("epoch ") else None)
    scores = [row["val_macro_f1"] for row in history.epochs]
    best = scores.index(max(scores)) + 1  # first of the best
    assert history.selected_epoch == best < config.epochs  # this seed peaks early: the last epoch is not kept
    assert [row["selected"] for row in history.epochs] == [e == best for e in range(1, 9)]
    assert_same_state(state_copy(stack), snapshots[best - 1])
    assert evaluate_f1(stack, val_cache) == pytest.approx(max(scores))
    assert not history.notes


def evaluate_f1(stack, cache):
    from drllm.training.training import evaluate_cache

    return evaluate_cache(stack, cache)["macro_f1"]


def test_no_validation_falls_back_to_the_last_epoch():
    config = TrainConfig(epochs=3, batch_size=4, hidden=8)
    stack = new_stack(config, dim=16)
    snapshots = []
    history = train_routers(stack, synthetic_cache(8), config,
                            log=lambda m: snapshots.append(state_copy(stack)) if m.startswith("epoch ") else None)
    assert history.selected_epoch == 3 and [row["selected"] for row in history.epochs] == [False, False, True]
    assert any("select_epoch 'val_macro_f1' needs validation samples" in note for note in history.notes)
    assert_same_state(state_copy(stack), snapshots[-1])


def test_metrics_need_exactly_one_selected_row(tmp_path):
    from drllm.core.artifacts import write_parquet

    config = TrainConfig(epochs=2, batch_size=4, hidden=8)
    rows = train_routers(new_stack(config, dim=16), synthetic_cache(8), config).epochs
    write_metrics(tmp_path / "m.parquet", rows)
    assert [row["selected"] for row in read_metrics(tmp_path / "m.parquet")] == [False, True]
    for flags in ([False, False], [True, True]):
        bad = [dict(row, selected=flag) for row, flag in zip(rows, flags)]
        with pytest.raises(ArtifactError, match="'selected'"):
            write_metrics(tmp_path / "bad.parquet", bad)
        write_parquet(tmp_path / "bad.parquet", bad, METRICS_SCHEMA, "training metrics")
        with pytest.raises(ArtifactError, match="'selected' must be true on exactly one row"):
            read_metrics(tmp_path / "bad.parquet")
    with pytest.raises(ArtifactError, match="'selected'"):
        write_metrics(tmp_path / "bad.parquet", [{k: v for k, v in rows[0].items() if k != "selected"}])


def test_validation_metrics(executor):
    samples = make_samples(12)
    cache = build_feature_cache(executor, samples, 8, 4)
    history = train_routers(new_stack(TrainConfig(hidden=8)), cache.subset(range(8)),
                            TrainConfig(epochs=2, hidden=8, warmup_fraction=0.0), val_cache=cache.subset(range(8, 12)))
    row = history.epochs[-1]
    assert set(row) == set(METRIC_COLUMNS)
    assert 0 <= row["val_macro_f1"] <= 1 and 0 <= row["val_layer_accuracy"] <= 1
    assert len(row["val_accuracy_by_layer"]) == LAYERS
    assert row["val_layer_accuracy"] == pytest.approx(sum(row["val_accuracy_by_layer"]) / LAYERS)


def test_classification_metrics_by_hand():
    from drllm.training.training import classification_metrics

    labels = torch.tensor([[0, 1], [1, 1], [2, 1]])
    predictions = torch.tensor([[0, 1], [1, 0], [1, 1]])
    logits = torch.nn.functional.one_hot(predictions, 3).float()
    result = classification_metrics(logits, labels)
    assert result["recall"] == {"skip": 1.0, "execute": 0.75, "repeat": 0.0}
    # F1: skip 2*1/(1+2) = 2/3, execute 2*3/(4+4) = 3/4, repeat 0
    assert result["macro_f1"] == pytest.approx((2 / 3 + 3 / 4 + 0) / 3)
    assert result["accuracy"] == pytest.approx(4 / 6) and result["accuracy_by_layer"] == pytest.approx([2 / 3, 2 / 3])


# -- split, checks, config ------------------------------------------------------------------------------------

def test_split_by_prompt_is_deterministic_and_disjoint():
    samples = make_samples(40) + [TrainingSample("q3", [5, 6], [1] * LAYERS)]  # a second sample of prompt q3
    train, val = split_samples(samples, 0.25, seed=0)
    assert len({s.prompt_id for s in val}) == 10
    assert not {s.prompt_id for s in train} & {s.prompt_id for s in val}
    assert len(train) + len(val) == len(samples)
    assert split_samples(samples, 0.25, seed=0) == (train, val)
    again_train, again_val = split_samples(list(reversed(samples)), 0.25, seed=0)
    assert {s.prompt_id for s in again_val} == {s.prompt_id for s in val}  # order of the input does not matter
    in_val = [s for s in samples if s.prompt_id == "q3"]
    assert all(s in val for s in in_val) or not any(s in val for s in in_val)
    assert {s.prompt_id for s in split_samples(samples, 0.25, seed=1)[1]} != {s.prompt_id for s in val}
    assert split_samples(samples, 0.0, seed=0) == (samples, [])
    assert len(split_samples(samples[:2], 0.01, seed=0)[1]) == 1  # a requested split is never empty
    with pytest.raises(ValueError, match="val_fraction"):
        split_samples(samples, 1.0, seed=0)


def test_bad_samples_fail_clearly(executor):
    good = make_samples(3)
    with pytest.raises(ArtifactError, match="no training samples"):
        validate_samples([], LAYERS)
    with pytest.raises(ArtifactError, match="no training samples"):
        build_feature_cache(executor, [], 8, 4)
    with pytest.raises(ArtifactError, match=r"sample 'bad': layer 2 has label 3"):
        build_feature_cache(executor, good + [TrainingSample("bad", [4, 5], [1, 1, 3, 1])], 8, 4)
    with pytest.raises(ArtifactError, match=r"sample 'neg': layer 0 has label -1"):
        validate_samples([TrainingSample("neg", [4], [-1, 1, 1, 1])], LAYERS)
    with pytest.raises(ArtifactError, match="'short': 3 labels, but the model has 4 layers"):
        build_feature_cache(executor, good + [TrainingSample("short", [4, 5], [1, 1, 1])], 8, 4)
    with pytest.raises(ArtifactError, match="'empty': no input ids"):
        validate_samples([TrainingSample("empty", [], [1] * LAYERS)], LAYERS)
    with pytest.raises(ArtifactError, match="'oov': token id 500 is outside the vocabulary"):
        build_feature_cache(executor, [TrainingSample("oov", [4, 500], [1] * LAYERS)], 8, 4)
    with pytest.raises(ArtifactError, match="stack has 3 routers"):
        train_routers(new_stack(TrainConfig(hidden=8), layers=3), build_feature_cache(executor, good, 8, 4),
                      TrainConfig(hidden=8))


def test_train_config():
    config = TrainConfig()
    assert (config.lr, config.weight_decay, config.warmup_steps, config.warmup_fraction, config.epochs,
            config.effective_batch, config.gamma, config.beta, config.windows, config.hidden) == \
        (1e-3, 0.01, None, 0.05, 25, 16, 2.0, 0.999, 8, 128)
    assert (config.class_weights, config.fixed_weights, config.select_epoch) == ("none", None, "val_macro_f1")
    assert TrainConfig.from_dict(config.to_dict()) == config
    paper = TrainConfig.from_dict({"class_weights": "effective", "warmup_steps": 500, "warmup_fraction": None,
                                   "select_epoch": "last"})
    assert TrainConfig.from_dict(paper.to_dict()) == paper
    fixed = TrainConfig(class_weights="fixed", fixed_weights=(1, 2, 3))
    assert fixed.fixed_weights == [1.0, 2.0, 3.0] and TrainConfig.from_dict(fixed.to_dict()) == fixed
    assert TrainConfig.from_dict({"epochs": 3, "beta": 0.9}).epochs == 3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour', 'learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1e-3, "colour": "red"})
    for bad, match in (({"epochs": 0}, "epochs"), ({"batch_size": 1.5}, "batch_size"), ({"beta": 1.0}, "beta"),
                       ({"cache_dtype": "float16"}, "cache_dtype"), ({"lr": -1}, "lr"),
                       ({"val_fraction": 1.0}, "val_fraction"), ({"max_grad_norm": 0}, "max_grad_norm"),
                       ({"select_epoch": "best"}, "select_epoch"), ({"warmup_fraction": -0.1}, "warmup_fraction")):
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict(bad)


def test_samples_parquet_round_trip(tmp_path):
    samples = make_samples(4)
    write_samples(tmp_path / "s.parquet", samples)
    assert read_samples(tmp_path / "s.parquet") == samples
    with pytest.raises(ArtifactError, match="not found"):
        read_samples(tmp_path / "missing.parquet")


def test_features_are_in_sample_order(executor):
    samples = make_samples(7)
    means, window_mask = teacher_forced_features(executor, samples, 8, 2)
    cache = build_feature_cache(executor, samples, 8, 5)
    torch.testing.assert_close(means, cache.means, atol=1e-5, rtol=1e-5)
    assert torch.equal(window_mask, cache.window_mask)


# -- CLI --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model = tiny_model("llama", LAYERS)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    write_json(out / "drllm_model.json", {"name": "tiny-llama", "num_layers": LAYERS, "hidden_size": 64,
                                          "architecture": "LlamaForCausalLM", "source": "test"})
    return out


def run_cli(tiny_dir, samples_path, out_dir, config='{"epochs": 3, "batch_size": 4, "hidden": 16}'):
    return cli.main(["--model-dir", str(tiny_dir), "--samples", str(samples_path), "--config-json", config,
                     "--out-dir", str(out_dir), "--device", "cpu", "--dtype", "float32"])


def test_cli_end_to_end(tiny_dir, tmp_path, capsys):
    write_samples(tmp_path / "samples.parquet", make_samples(24))
    out = tmp_path / "routers"
    assert run_cli(tiny_dir, tmp_path / "samples.parquet", out) == 0
    for name in ("routers.safetensors", "router_config.json", "metrics.parquet", "train_summary.json",
                 "training_curves.png", "label_distribution.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    metrics = read_metrics(out / "metrics.parquet")
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]) for row in metrics)
    scores = [row["val_macro_f1"] for row in metrics]
    best = scores.index(max(scores)) + 1
    assert [row["selected"] for row in metrics] == [e == best for e in (1, 2, 3)]
    import json

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["selected_epoch"] == best and summary["selected"]["epoch"] == best
    assert summary["final"]["epoch"] == 3 and summary["config"]["class_weights"] == "none"
    assert summary["warmup_steps"] == 1 and summary["class_weights"] == [1.0, 1.0, 1.0]
    stack = RouterStack.from_pretrained(out, expected_model="tiny-llama", expected_layers=LAYERS)
    assert stack.config.label_counts is not None and sum(stack.config.label_counts) == 22 * LAYERS  # 10% val
    assert stack.config.training["epochs"] == 3
    logged = capsys.readouterr().out
    assert "class counts skip=" in logged and "class weights (none) skip=1.0000" in logged
    assert f"kept the routers of epoch {best}/3 (val_macro_f1" in logged


def test_cli_logs_effective_weights(tiny_dir, tmp_path, capsys):
    write_samples(tmp_path / "samples.parquet", make_samples(12))
    config = '{"epochs": 1, "batch_size": 4, "hidden": 8, "class_weights": "effective", "select_epoch": "last"}'
    assert run_cli(tiny_dir, tmp_path / "samples.parquet", tmp_path / "r", config) == 0
    assert "class weights (effective, beta 0.999) skip=" in capsys.readouterr().out


def test_training_curves_mark_the_selected_epoch(tmp_path, monkeypatch):
    figures = []
    import drllm.training.plots as plots

    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi: figures.append(fig))
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 0.5 + abs(e - 2) / 10, "val_macro_f1": 0.5,
             "val_layer_accuracy": 0.8, "val_recall_skip": None, "val_recall_execute": 0.9, "val_recall_repeat": None,
             "selected": e == 2} for e in (1, 2, 3, 4)]
    plots.plot_curves(tmp_path / "c.png", rows)
    for axis in figures[0].axes:
        vertical = [line for line in axis.lines if list(line.get_xdata()) == [2, 2]]
        assert len(vertical) == 1 and "epoch 2" in vertical[0].get_label()


def test_cli_errors_exit_2(tiny_dir, tmp_path, capsys):
    write_samples(tmp_path / "samples.parquet", make_samples(6))
    assert run_cli(tiny_dir, tmp_path / "samples.parquet", tmp_path / "o", '{"epochz": 2}') == 2
    assert "unknown key(s) ['epochz']" in capsys.readouterr().err
    assert run_cli(tiny_dir, tmp_path / "missing.parquet", tmp_path / "o") == 2
    assert "training samples not found" in capsys.readouterr().err
    write_samples(tmp_path / "bad.parquet", make_samples(3) + [TrainingSample("b", [5], [1, 1, 1, 1, 1])])
    assert run_cli(tiny_dir, tmp_path / "bad.parquet", tmp_path / "o") == 2
    assert "'b': 5 labels, but the model has 4 layers" in capsys.readouterr().err
    assert run_cli(tiny_dir, tmp_path / "samples.parquet", tmp_path / "o", "not-a-file.json") == 2
    assert "--config-json is neither valid JSON" in (err := capsys.readouterr().err) and "nor an existing file" in err
    assert not (tmp_path / "o").exists()


# -- the real model ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_trains_two_epochs(smollm2):
    model, tokenizer = smollm2
    executor = PathExecutor(model)
    questions = ["Which gas do plants take in for photosynthesis?", "What is 7 times 8?",
                 "Which planet is closest to the Sun?", "What freezes at 0 degrees Celsius?",
                 "Name the largest ocean on Earth.", "Which organ pumps blood through the body?"]
    generator = torch.Generator().manual_seed(0)
    samples = []
    for index, question in enumerate(questions):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        labels = [1] * 30
        for layer in torch.randperm(28, generator=generator)[:2].tolist():
            labels[layer + 1] = 0
        samples.append(TrainingSample(f"s{index}", list(ids), labels))
    config = TrainConfig(epochs=2, batch_size=2, warmup_steps=2, warmup_fraction=None, val_fraction=0.34)
    train, val = split_samples(samples, config.val_fraction, config.seed)
    cache = build_feature_cache(executor, train, config.windows, 4)
    val_cache = build_feature_cache(executor, val, config.windows, 4)
    stack = RouterStack(RouterConfig("smollm2-135m-instruct", 30, 576), seed=0)
    assert stack.num_parameters() == 30 * (576 * 128 + 128 + 128 * 3 + 3)
    history = train_routers(stack, cache, config, val_cache)
    assert len(history.epochs) == 2
    for row in history.epochs:
        for key in ("train_loss", "val_loss", "val_macro_f1", "val_layer_accuracy"):
            assert math.isfinite(row[key]), key
    assert history.epochs[1]["train_loss"] < history.epochs[0]["train_loss"]


def test_prior_validation_loss_is_the_soft_cross_entropy_of_the_training_rates():
    from drllm.training.samples import TrainingSample
    from drllm.training.training import prior_validation_loss

    train = [TrainingSample("a", [1], [1, 1], [1.0, 0.0]), TrainingSample("b", [1], [1, 1], [0.0, 0.0])]
    val = [TrainingSample("c", [1], [1, 1], [1.0, 1.0])]
    # layer 0: rate 0.5, target 1 -> -log 0.5; layer 1: rate 0 clipped to 1e-3, target 1 -> -log 1e-3
    assert prior_validation_loss([s.safety for s in train], [s.safety for s in val]) == \
        pytest.approx((math.log(2) - math.log(1e-3)) / 2)


def test_matched_threshold_skips_as_many_blocks_as_the_labels_on_average():
    from drllm.training.training import matched_threshold

    probs = torch.tensor([[0.9, 0.8, 0.3, 0.1], [0.95, 0.6, 0.5, 0.2], [0.7, 0.65, 0.55, 0.4]])
    tau = matched_threshold(probs, 1.0)  # one skip per prompt on average
    assert tau == pytest.approx(0.8) and float((probs >= tau).sum(-1).float().mean()) == 1.0
    tau = matched_threshold(probs, 2.0)
    assert float((probs >= tau).sum(-1).float().mean()) <= 2.0
    assert float((probs >= 0.5).sum(-1).float().mean()) > 2.0  # the next lower value would skip more
    assert matched_threshold(probs, 0.0) == 1.0  # no skips at all
