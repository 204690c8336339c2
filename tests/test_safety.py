"""Issue 19: the agreement reward, the safety labeler (equal to brute force), safety training targets, the
threshold decision and pooling without the first token."""
from __future__ import annotations

import pytest
import torch

from conftest import random_prompts, tiny_model
from drllm.core.executor import ChoiceBatch, PathExecutor
from drllm.core.paths import LayerPath
from drllm.formats.answers import get_format
from drllm.formats.grading import Outcome
from drllm.formats.prompts import Encoded
from drllm.search.mcts import run_searches
from drllm.search.rewards import PathRewarder, RewardConfig, agrees, rewards_together
from drllm.search.safety import SafetyConfig, skip_path, sweep_steps
from test_rewards import choices, cloze, generated

AGREE = RewardConfig(kind="agreement", margin=0.05, min_f1=0.5)


@pytest.mark.parametrize("scores, kept", [
    ([-1.0, -1.3, -1.5, -2.0], True),      # the full model's option still wins by 0.3
    ([-3.0, -3.2, -3.5, -4.0], True),      # every score fell, the same option still wins by 0.2: agreement
    ([-1.05, -1.06, -1.5, -2.0], False),   # the same option, but by 0.01 < margin: a near tie is not kept
    ([-1.3, -1.0, -1.5, -2.0], False),     # another option wins
])
def test_agreement_reward_on_constructed_score_vectors(scores, kept):
    full = cloze([-1.0, -1.3, -1.5, -2.0], gold=3)  # the full model is wrong (gold 3): agreement ignores gold
    assert AGREE.correct(cloze(scores, gold=3), choices(gold=3), full) is kept


def test_agreement_with_epsilon_rejects_a_broken_path_that_keeps_the_option():
    """A path that collapses every score but still ranks the full model's option first (a broken model keeping it by
    chance) is rejected once the kept option must keep its score within epsilon; a healthy one is not."""
    full = cloze([-1.0, -1.3, -1.5, -2.0], gold=3)
    strict = RewardConfig(kind="agreement", margin=0.05, epsilon=0.2, min_f1=0.5)
    broken, healthy = cloze([-3.0, -3.2, -3.5, -4.0], gold=3), cloze([-1.15, -1.4, -1.5, -2.0], gold=3)
    assert AGREE.correct(broken, choices(gold=3), full)
    assert not strict.correct(broken, choices(gold=3), full)
    assert strict.correct(healthy, choices(gold=3), full)
    assert strict.describe() == "agreement(margin=0.05,epsilon=0.2,min_f1=0.5)"


def answer(text):
    return Outcome(correct=False, prediction=text, layer_applications=1, new_tokens=2)


@pytest.mark.parametrize("fmt, routed, full, kept", [
    ("qa", "the red fox", "red fox", True),          # F1 0.8 >= 0.5 against the full model's answer
    ("qa", "a dog", "red fox", False),
    ("boxed", "42", "42", True),
    ("boxed", "41", "42", False),
    ("letter", "B", "b", True),                      # normalised like SQuAD answers
])
def test_agreement_reward_on_generations(fmt, routed, full, kept):
    assert AGREE.correct(answer(routed), generated(fmt), answer(full)) is kept
    with pytest.raises(ValueError, match="needs the full model's outcome"):
        AGREE.correct(answer(routed), generated(fmt), None)


def tiny_cloze(tokens, seed):
    generator = torch.Generator().manual_seed(seed)
    context = torch.randint(3, 97, (tokens,), generator=generator).tolist()
    options = [torch.randint(3, 97, (2,), generator=generator).tolist() for _ in range(4)]
    batch = ChoiceBatch.build([(context, option) for option in options])
    return Encoded(example_id=f"p{seed}", kind="choices", prompt_text="x", input_ids=None, batch=batch,
                   max_new_tokens=0, gold=0, format="cloze", options=("aa", "bb", "cc", "dd"))


def brute_force_labels(executor, encoded, reward, joint_checks):
    """The safety labels computed naively: every path run from scratch, no prefix reuse, no coroutine."""
    fmt = get_format("cloze")
    full = fmt.evaluate(executor, encoded, executor.default_path())[0]
    L = executor.num_layers
    margins, safety = {}, [0.0] * L
    for layer in range(L):
        out = fmt.evaluate(executor, encoded, skip_path(L, [layer]))[0]
        if reward.correct(out, encoded, full):
            safety[layer] = 1.0
            others = [s for i, s in enumerate(out.scores) if i != full.choice]
            margins[layer] = out.scores[full.choice] - max(others)
    kept, tries = [], 0
    for layer in sorted(margins, key=lambda l: (-margins[l], l)):
        if tries >= joint_checks or len(kept) + 1 >= L:
            break
        if not kept:
            kept.append(layer)
            continue
        tries += 1
        if reward.correct(fmt.evaluate(executor, encoded, skip_path(L, kept + [layer]))[0], encoded, full):
            kept.append(layer)
    return safety, skip_path(L, kept)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_safety_labeler_equals_brute_force_on_a_tiny_model(kind):
    from drllm.search.labelers import margin_reader

    executor = PathExecutor(tiny_model(kind, layers=6))
    reward = RewardConfig(kind="agreement", margin=0.0)
    config = SafetyConfig(joint_checks=3)
    prompts = [tiny_cloze(5 + i, seed=i) for i in range(5)]
    rewarders = [PathRewarder(executor, get_format("cloze"), enc, cache_size=4, reward=reward) for enc in prompts]
    # several prompts in lockstep, one batched evaluation per round, as the search stage drives them
    results = run_searches(lambda batch: rewards_together([(rewarders[i], path) for i, path in batch]),
                           [sweep_steps(6, config, margin_reader(r)) for r in rewarders])
    deviating = 0
    for encoded, result, rewarder in zip(prompts, results, rewarders):
        safety, path = brute_force_labels(executor, encoded, reward, config.joint_checks)
        assert result.layer_safety == safety
        assert result.best_path == path
        assert result.evaluations == 1 + 6 + result.joint_tries  # default, every single skip, the joint tries
        assert rewarder.stats.layer_applications < rewarder.stats.layer_applications_full  # prefix reuse
        deviating += len(path) < 6
    assert deviating  # the constructed prompts exercise the joint checks


def test_safety_sweep_is_seed_free_and_labels_hard_prompts_all_execute():
    def never(path):  # every skip changes the answer: a hard prompt
        return 1.0 if len(path) == 6 else 0.0

    steps = sweep_steps(6, SafetyConfig(joint_checks=4))
    path = next(steps)
    try:
        while True:
            path = steps.send(never(path))
    except StopIteration as done:
        result = done.value
    assert result.best_path == LayerPath.default(6) and result.layer_safety == [0.0] * 6
    assert result.default_correct and result.evaluations == 7
    with pytest.raises(ValueError, match="joint_checks"):
        SafetyConfig(joint_checks=-1)


def test_pooling_can_leave_out_the_first_token():
    from drllm.routing.pooling import window_assignment, window_mean_pool

    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    hidden[:, 0] = 1e4  # a huge constant first state, as BOS is at middle layers
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # the second row left-padded
    means, _ = window_mean_pool(hidden, mask, windows=2, exclude_first=True)
    assert means.max() < 100  # the constant state never enters a window
    assert means[0, :, 0].tolist() == [1.5, 3.5]  # tokens 1-2 and 3-4
    assert means[1, :, 0].tolist() == [8.0, 9.0]  # the first real token (position 2) left out
    one = torch.tensor([[0, 0, 0, 0, 1]])  # a single real token is kept (nothing else to pool)
    assign, window_mask = window_assignment(one, 1, 5, 2, exclude_first=True)
    assert assign[0, 0, 4] == 1.0 and window_mask.tolist() == [[True]]


def test_threshold_decision_skips_where_p_skip_passes_and_respects_the_budget():
    from drllm.routing.inference import RoutedModel
    from drllm.routing.decision import Decision
    from drllm.routing.router import RouterStack
    from drllm.routing.router_config import RouterConfig

    executor = PathExecutor(tiny_model("llama", layers=6))
    stack = RouterStack(RouterConfig(base_model="tiny", num_layers=6, hidden_size=64, hidden=8,
                                     decision={"rule": "threshold", "threshold": 0.5}))
    wanted = [0.9, 0.2, 0.7, 0.95, 0.4, 0.6]  # P(skip) per block, whatever the input
    with torch.no_grad():
        for router, p in zip(stack.routers, wanted):
            router.fc1.weight.zero_(); router.fc1.bias.zero_(); router.fc2.weight.zero_()
            router.fc2.bias.copy_(torch.tensor([torch.log(torch.tensor(p)), torch.log(torch.tensor(1 - p)), -30.0]))
    ids = [random_prompts((7,))[0]]
    for tau, budget, skipped in [(0.5, None, {0, 2, 3, 5}), (0.8, None, {0, 3}), (0.5, 2, {0, 2}),
                                 (0.99, None, set())]:
        decision = Decision("threshold", tau, budget)
        path = RoutedModel(executor, stack, decision=decision).route_ids(ids)[0]
        assert {l for l, c in enumerate(path.counts()) if c == 0} == skipped, (tau, budget)
        assert max(path.counts()) == 1  # the threshold decision never repeats
    assert RoutedModel(executor, stack).decision == Decision("threshold", 0.5)  # the routers' own
    with pytest.raises(ValueError, match="threshold must be"):
        Decision("threshold", 1.5)


def test_safety_target_trains_routers_to_the_per_layer_rate():
    from drllm.training.features import FeatureCache
    from drllm.routing.router import RouterStack
    from drllm.routing.router_config import RouterConfig
    from drllm.training.train_settings import TrainConfig
    from drllm.training.training import safety_loss, train_routers

    torch.manual_seed(0)
    n, L, W, d = 64, 3, 2, 8
    means = torch.randn(n, L, W, d)
    safety = torch.zeros(n, L)
    safety[:, 0] = (means[:, 0, :, 0].mean(-1) > 0).float()  # layer 0: safe when a feature is positive
    safety[:, 1] = 1.0                                        # layer 1: always safe
    cache = FeatureCache([f"s{i}" for i in range(n)], means, torch.ones(n, W, dtype=torch.bool),
                         torch.ones(n, L, dtype=torch.long), safety)
    stack = RouterStack(RouterConfig(base_model="t", num_layers=L, hidden_size=d, windows=W, hidden=16), seed=0)
    with torch.no_grad():
        before = float(safety_loss(stack(means, cache.window_mask), safety))
    config = TrainConfig(target="safety", epochs=40, batch_size=16, windows=W, hidden=16, val_fraction=0.0,
                         select_epoch="last", lr=1e-2)
    history = train_routers(stack, cache, config)
    with torch.no_grad():
        probs = torch.softmax(stack(means, cache.window_mask), -1)[..., 0]
        assert float(safety_loss(stack(means, cache.window_mask), safety)) < before / 3
    assert ((probs[:, 0] > 0.5).float() == safety[:, 0]).float().mean() > 0.9
    assert probs[:, 1].min() > 0.9 and probs[:, 2].max() < 0.1
    assert history.class_counts == [int(safety.sum()), int(n * L - safety.sum()), 0]
    no_targets = FeatureCache(cache.prompt_ids, means, cache.window_mask, cache.labels)
    with pytest.raises(Exception, match="search.labeler: safety"):
        train_routers(stack, no_targets, config)


def test_standardised_training_folds_into_the_first_layer_exactly():
    from drllm.training.features import FeatureCache
    from drllm.routing.router import RouterStack
    from drllm.routing.router_config import RouterConfig
    from drllm.training.train_settings import TrainConfig
    from drllm.training.training import feature_statistics, fold_standardization, standardized, train_routers

    torch.manual_seed(1)
    n, L, W, d = 32, 2, 2, 6
    means = torch.randn(n, L, W, d) * 300 + 1000  # residual-stream scale: norms in the hundreds
    mask = torch.ones(n, W, dtype=torch.bool)
    mask[:3, 1] = False
    safety = (torch.rand(n, L) > 0.5).float()
    cache = FeatureCache([f"s{i}" for i in range(n)], means, mask, torch.ones(n, L, dtype=torch.long), safety)
    mean, std = feature_statistics(cache)
    scaled = standardized(cache, mean, std)
    valid = scaled.means[mask[:, None, :, None].expand_as(scaled.means)].view(-1)
    assert abs(float(valid.mean())) < 1e-4
    stack = RouterStack(RouterConfig(base_model="t", num_layers=L, hidden_size=d, windows=W, hidden=8), seed=0)
    with torch.no_grad():
        on_scaled = stack(scaled.means, mask)
        fold_standardization(stack, mean, std)
        assert torch.allclose(stack(means, mask), on_scaled, atol=1e-3, rtol=1e-4)
    # training with standardize leaves routers that take raw features
    config = TrainConfig(target="safety", standardize=True, epochs=3, batch_size=8, windows=W, hidden=8,
                         val_fraction=0.0, select_epoch="last")
    fresh = RouterStack(RouterConfig(base_model="t", num_layers=L, hidden_size=d, windows=W, hidden=8), seed=0)
    history = train_routers(fresh, cache, config)
    assert len(history.epochs) == 3
    with torch.no_grad():
        assert torch.isfinite(fresh(means, mask)).all() and fresh(means, mask).abs().max() < 50
