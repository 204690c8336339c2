"""The length-aware MCTS over layer paths, with scripted rewards (no model)."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from drllm.core.paths import LayerPath, PathError
from drllm.search.mcts import (Action, MCTSConfig, Node, Tree, early_stop_reached, legal_actions, run_search,
                               run_searches, search_steps, select_child, select_label, ucb_score, widening_limit)

L = 8
NO_STOP = dict(early_stop=False)


def P(text: str, num_layers: int = L) -> LayerPath:
    return LayerPath.parse(text, num_layers)


def children_of(text: str, num_layers: int, **config) -> list[str]:
    path = P(text, num_layers)
    return [str(action.apply(path)) for action in legal_actions(path, MCTSConfig(**config))]


class Counting:
    """A scripted reward that records every call."""

    def __init__(self, reward):
        self.reward = reward
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, path: LayerPath) -> float:
        self.calls.append(path.layers)
        return self.reward(path)


def hashed_reward(path: LayerPath) -> float:
    """A fixed pseudo-random binary reward per path (about 30% correct)."""
    return float(sum((i + 1) * (layer + 3) for i, layer in enumerate(path)) % 10 < 3)


# ---------------------------------------------------------------------------------------------------- actions
def test_legal_actions_on_hand_worked_examples():
    # L=3 default: skip 1 at 3 positions, skip 2 at 2 positions, repeat at 3 positions = 8 distinct children
    assert children_of("0-1-2", 3) == ["1-2", "2", "0-2", "0", "0-1", "0-0-1-2", "0-1-1-2", "0-1-2-2"]
    actions = legal_actions(P("0-1-2", 3), MCTSConfig())
    assert actions[0] == Action("skip", 0, 1) and actions[1] == Action("skip", 0, 2)
    assert actions[-1] == Action("repeat", 2, 1)
    assert len(legal_actions(LayerPath.default(L), MCTSConfig())) == 3 * L - 1
    # dedupe by child: skipping either copy of 0 gives 0-1 once; 0 cannot be repeated a third time
    assert children_of("0-0-1", 2) == ["0-1", "1", "0", "0-0", "0-0-1-1"]
    # never empty; a single layer can only be repeated, and then nothing is left to do but skip a copy
    assert children_of("0", 1) == ["0-0"]
    assert children_of("0-0", 1) == ["0"]
    assert children_of("0-1-1", 2, max_skip=1, max_repeat=0) == ["1-1", "0-1"]
    assert children_of("0-1-2", 3, max_skip=0, max_repeat=0) == []
    assert len(children_of("0-1-2-3", 4, max_skip=3)) == 4 + 3 + 2 + 4


def test_actions_apply_and_reject():
    path = P("0-1-2-3", 4)
    assert str(Action("skip", 1, 2).apply(path)) == "0-3"
    assert str(Action("repeat", 3).apply(path)) == "0-1-2-3-3"
    with pytest.raises(PathError, match="past the end"):
        Action("skip", 3, 2).apply(path)
    with pytest.raises(PathError, match="empty"):
        Action("skip", 0, 1).apply(P("2", 4))
    with pytest.raises(PathError, match="runs 3 times"):
        Action("repeat", 0).apply(P("1-1", 4))


def test_generated_paths_respect_the_constraints():
    result = run_search(hashed_reward, 5, MCTSConfig(simulations=300, length_penalty=0.0, **NO_STOP), seed=1)
    paths = [p for p, _ in result.evaluated] + [node.path for node in result.tree.nodes]
    assert len(result.evaluated) > 100 and max(len(p) for p in paths) > 5   # repeats were explored
    for path in paths:
        assert 1 <= len(path) <= 2 * 5
        assert max(path.counts()) <= 2
        assert list(path) == sorted(path)
    for node in result.tree.nodes[1:]:  # every node is its parent's path edited by its action
        assert node.action.apply(result.tree.nodes[node.parent].path) == node.path


# --------------------------------------------------------------------------------------------- tree shape
def test_branching_mode_builds_a_real_tree_with_depth():
    result = run_search(lambda p: 0.0, L, MCTSConfig(simulations=50, **NO_STOP), seed=0)
    assert result.max_fanout > 1
    assert sum(len(node.children) >= 2 for node in result.tree.nodes) >= 2
    assert result.max_depth > 1
    assert result.num_nodes == 51 and result.simulations == 50
    # widening: the root holds at most floor(sqrt(visits before the last expansion)) children
    assert len(result.tree.root.children) <= math.floor(math.sqrt(result.tree.root.visits))


def test_without_widening_the_root_expands_every_action_first():
    result = run_search(lambda p: 0.0, L, MCTSConfig(simulations=3 * L - 1, widening=None, **NO_STOP), seed=0)
    assert len(result.tree.root.children) == 3 * L - 1 and result.max_depth == 1
    assert MCTSConfig(widening="none").widening is None


def test_chain_mode_has_fanout_exactly_one():
    result = run_search(hashed_reward, L, MCTSConfig(simulations=40, mode="chain", **NO_STOP), seed=0)
    assert result.max_fanout == 1
    assert all(len(node.children) <= 1 for node in result.tree.nodes)
    assert result.num_nodes == 41 and result.max_depth == 40          # one long chain
    assert [n.depth for n in result.tree.nodes] == list(range(41))
    # UCB and lambda have no effect on the chain
    other = run_search(hashed_reward, L, MCTSConfig(simulations=40, mode="chain", exploration=0.0,
                                                     length_penalty=10.0, **NO_STOP), seed=0)
    assert other.evaluated == result.evaluated


def test_terminal_root_is_revisited_without_new_evaluations():
    calls = Counting(lambda p: 1.0)
    result = run_search(calls, 1, MCTSConfig(simulations=5, max_repeat=0, **NO_STOP), seed=0)
    assert calls.calls == [(0,)] and result.num_nodes == 1
    assert result.tree.root.visits == 6 and result.tree.root.value_sum == 6.0


def test_backpropagation_adds_raw_rewards_to_all_ancestors():
    result = run_search(hashed_reward, L, MCTSConfig(simulations=60, length_penalty=5.0, **NO_STOP), seed=3)
    nodes = result.tree.nodes
    assert nodes[0].visits == 61
    for node in nodes:  # no terminal nodes here: visits = own + children, values carry no length term
        assert node.visits == 1 + sum(nodes[c].visits for c in node.children)
        own = hashed_reward(node.path)
        assert node.value_sum == pytest.approx(own + sum(nodes[c].value_sum for c in node.children))


# -------------------------------------------------------------------------------------------- selection
def test_ucb_score_formula():
    config = MCTSConfig(exploration=1.8, length_penalty=3.0)
    child = Node(path=P("0-1-2-3"), parent=0, action=None, visits=4, value_sum=3.0)
    expected = 3 / 4 + 1.8 * math.sqrt(math.log(10) / 4) - 3.0 * 4 / L
    assert ucb_score(child, 10, config, L) == pytest.approx(expected)
    assert ucb_score(Node(path=P("0"), parent=0, action=None), 10, config, L) == math.inf


def two_children_tree(first: str, second: str) -> Tree:
    tree = Tree(L)
    tree.add(LayerPath.default(L), None, None)
    for text in (first, second):
        tree.nodes[tree.add(P(text), 0, None)].visits = 2
        tree.nodes[-1].value_sum = 1.0
    tree.nodes[0].visits = 5
    return tree


def test_select_child_length_penalty_and_tie_break():
    rng = np.random.default_rng(0)
    tree = two_children_tree("0-1-2-3-4-5-6", "0-1-2-3")
    greedy = dict(random_child_prob=0.0)
    assert select_child(tree, 0, MCTSConfig(length_penalty=0.0, **greedy), rng) == 1   # tie -> lowest index
    assert select_child(tree, 0, MCTSConfig(length_penalty=3.0, **greedy), rng) == 2   # shorter wins
    tree.nodes[2].visits = 0
    assert select_child(tree, 0, MCTSConfig(length_penalty=0.0, **greedy), rng) == 2   # unvisited = +inf
    # random_child_prob = 1: uniformly random children, both get picked
    picks = {select_child(tree, 0, MCTSConfig(random_child_prob=1.0), rng) for _ in range(50)}
    assert picks == {1, 2}


def test_exploration_changes_the_search():
    config = dict(simulations=50, random_child_prob=0.0, length_penalty=0.0, **NO_STOP)
    greedy = run_search(hashed_reward, L, MCTSConfig(exploration=0.0, **config), seed=0)
    explore = run_search(hashed_reward, L, MCTSConfig(exploration=5.0, **config), seed=0)
    assert [p for p, _ in greedy.evaluated] != [p for p, _ in explore.evaluated]
    # a greedy search concentrates its visits: the root's most visited child gets more of them
    assert (max(greedy.tree.nodes[c].visits for c in greedy.tree.root.children)
            > max(explore.tree.nodes[c].visits for c in explore.tree.root.children))


def test_length_penalty_steers_towards_shorter_paths():
    def mean_length(penalty: float) -> float:
        lengths = []
        for seed in range(4):
            result = run_search(lambda p: 0.5, L, MCTSConfig(simulations=50, length_penalty=penalty,
                                                             random_child_prob=0.0, **NO_STOP), seed=seed)
            lengths += [len(p) for p, _ in result.evaluated]
        return statistics.mean(lengths)

    short, long = mean_length(10.0), mean_length(0.0)
    assert short < long - 0.5


def test_widening_limit():
    config = MCTSConfig()
    assert [widening_limit(n, config) for n in (0, 1, 3, 4, 8, 9, 49)] == [1, 1, 1, 2, 2, 3, 7]
    assert widening_limit(5, MCTSConfig(widening=None)) == math.inf
    assert widening_limit(4, MCTSConfig(widening=1.0, widening_k=0.5)) == 2


# --------------------------------------------------------------------------------------------- early stop
def test_early_stop_wrong_to_correct():
    reward = lambda p: float(3 not in p)  # noqa: E731 - default wrong; any path without layer 3 fixes it
    result = run_search(reward, L, MCTSConfig(simulations=50), seed=0)
    assert not result.default_correct and result.stopped_early and result.wrong_to_correct
    assert result.simulations < 50
    rewards = [r for _, r in result.evaluated]
    assert rewards[-1] == 1.0 and not any(rewards[:-1])       # stopped at the first correct path
    assert result.best_path == result.evaluated[-1][0]
    assert result.layers_saved == L - len(result.best_path)


def test_early_stop_needs_min_saving_when_default_is_right():
    for min_saving in (2, 3):
        result = run_search(lambda p: 1.0, L, MCTSConfig(simulations=50, min_saving=min_saving), seed=0)
        assert result.default_correct and result.stopped_early and not result.wrong_to_correct
        paths = [p for p, _ in result.evaluated]
        assert len(paths[-1]) <= L - min_saving
        assert all(len(p) > L - min_saving for p in paths[:-1])  # shorter-by-one paths did not stop it
        assert result.layers_saved >= min_saving


def test_no_early_stop_when_disabled():
    result = run_search(lambda p: 1.0, L, MCTSConfig(simulations=30, early_stop=False), seed=0)
    assert result.simulations == 30 and not result.stopped_early
    assert result.evaluations > 5
    assert not early_stop_reached(True, P("0"), 1.0, MCTSConfig(early_stop=False))
    assert not early_stop_reached(False, P("0"), 0.5, MCTSConfig())       # 0.5 is not correct
    assert early_stop_reached(False, P("0-1-2-3-4-5-6-7-7"), 0.51, MCTSConfig())


def test_no_correct_path_gives_no_label():
    result = run_search(lambda p: 0.0, L, MCTSConfig(simulations=10), seed=0)
    assert result.best_path is None and not result.wrong_to_correct and result.layers_saved == 0
    assert result.simulations == 10 and not result.stopped_early


# ----------------------------------------------------------------------------------- memo and determinism
def test_memoisation_evaluates_each_path_once():
    calls = Counting(hashed_reward)
    result = run_search(calls, 4, MCTSConfig(simulations=200, **NO_STOP), seed=0)
    tree_paths = [node.path.layers for node in result.tree.nodes]
    assert len(tree_paths) > len(set(tree_paths))                 # some path was reached twice
    assert len(calls.calls) == len(set(calls.calls)) == result.evaluations == len(result.evaluated)
    assert set(calls.calls) == set(tree_paths)
    assert calls.calls[0] == (0, 1, 2, 3) and result.evaluated[0][0] == LayerPath.default(4)
    assert [p.layers for p, _ in result.evaluated] == calls.calls   # evaluation order


def test_same_seed_same_result_different_seed_different():
    def run(seed):
        result = run_search(hashed_reward, L, MCTSConfig(simulations=50, **NO_STOP), seed=seed)
        return result.evaluated, result.tree.to_records(), result.best_path

    assert run(7) == run(7)
    assert run(7)[0] != run(8)[0]


def test_label_tie_break():
    def ev(*items):
        return [(P(text, 4), reward) for text, reward in items]

    # shortest correct wins even when evaluated last; 0.5 is not correct
    assert str(select_label(ev(("0-1-2-3", 1.0), ("0-1", 0.5), ("0-1-3", 1.0)))) == "0-1-3"
    # equal length: fewer unique layers
    assert str(select_label(ev(("0-1-2", 1.0), ("0-0-1", 1.0)))) == "0-0-1"
    # equal length and unique layers: the earliest evaluated
    assert str(select_label(ev(("0-1-2-3", 0.0), ("0-2-3", 1.0), ("0-1-3", 1.0)))) == "0-2-3"
    assert select_label(ev(("0-1-2-3", 0.0), ("0-1", 0.2))) is None
    # a correct path longer than the default is a valid label (W->C through a repeat)
    assert str(select_label(ev(("0-1-2-3", 0.0), ("0-1-1-2-3", 1.0)))) == "0-1-1-2-3"


def test_random_expansion_is_unchanged():
    """expansion "random" / tie_break "first" (the defaults) reproduce the search as it was before the two options
    existed (these paths were recorded with that code)."""
    result = run_search(hashed_reward, L, MCTSConfig(simulations=50, **NO_STOP), seed=0)
    assert [str(path) for path, _ in result.evaluated[:8]] == [
        "0-1-2-3-4-5-6-7", "0-1-2-3-4-4-5-6-7", "0-1-2-3-4-4-5", "0-2-3-4-4-5", "0-1-2-2-3-4-5-6-7",
        "0-1-2-2-3-4-6-7", "0-1-2-2-3-4", "0-2-4-5"]
    assert str(result.best_path) == "2-2-3-4"
    explicit = run_search(hashed_reward, L, MCTSConfig(simulations=50, expansion="random", tie_break="first",
                                                       **NO_STOP), seed=0)
    assert (explicit.evaluated, explicit.best_path, explicit.tree.to_records()) == \
        (result.evaluated, result.best_path, result.tree.to_records())


@pytest.mark.parametrize("overrides", [dict(), NO_STOP, dict(mode="chain"), dict(widening=None, **NO_STOP),
                                       dict(random_child_prob=1.0, **NO_STOP)])
def test_ordered_expansion_does_not_depend_on_the_seed(overrides):
    """expansion "ordered": untried actions in legal_actions order and no random child, so seeds 0..4 give the
    identical search (tree, evaluations, label) -- even with random_child_prob 1, which it ignores."""
    config = MCTSConfig(simulations=50, expansion="ordered", tie_break="canonical", **overrides)
    results = [run_search(hashed_reward, L, config, seed=seed) for seed in range(5)]
    first = results[0]
    for other in results[1:]:
        assert (other.evaluated, other.best_path, other.tree.to_records(), other.simulations,
                other.stopped_early) == (first.evaluated, first.best_path, first.tree.to_records(),
                                         first.simulations, first.stopped_early)
    # the root's children come in legal_actions order
    root_actions = [first.tree.nodes[child].action for child in first.tree.root.children]
    assert root_actions == legal_actions(LayerPath.default(L), config)[:len(root_actions)]
    random = [run_search(hashed_reward, L, dataclasses.replace(config, expansion="random"), seed=seed)
              for seed in range(5)]
    assert len({tuple(p.layers for p, _ in r.evaluated) for r in random}) > 1  # the random search does vary


def test_canonical_tie_break_ignores_the_evaluation_order():
    """tie_break "canonical": shortest correct, then fewest layers with count != 1, then the smallest per-layer
    count vector -- whatever order the equally short correct paths were evaluated in."""
    import itertools

    from drllm.search.mcts import canonical_key, deviations

    def ev(items):
        return [(P(text, 4), reward) for text, reward in items]

    # length 3, correct: 0-0-1 (counts 2,1,0,0: 3 deviations), 0-1-3 (1,1,0,1), 1-2-3 (0,1,1,1), 0-2-3 (1,0,1,1)
    correct = [("0-0-1", 1.0), ("0-1-3", 1.0), ("1-2-3", 1.0), ("0-2-3", 1.0)]
    others = [("0-1-2-3", 0.0), ("0-1", 0.4), ("1-2", 0.0)]
    labels = {str(select_label(ev([others[0], *order, *others[1:]]), "canonical"))
              for order in itertools.permutations(correct)}
    assert labels == {"1-2-3"}                                  # 1 deviation, (0,1,1,1) is the smallest vector
    firsts = {str(select_label(ev([others[0], *order]), "first")) for order in itertools.permutations(correct)}
    assert firsts == {"0-0-1"}                                  # "first": fewer unique layers
    assert str(select_label(ev([others[0], *correct[1:]]), "first")) == "0-1-3"   # then the earliest evaluated
    # fewer deviations beats a smaller vector: the default path (0 deviations) over a skip + repeat
    same_length = [("0-0-2-3", 1.0), ("1-1-2-3", 1.0), ("0-1-2-3", 1.0)]
    assert {str(select_label(ev(order), "canonical")) for order in itertools.permutations(same_length)} == \
        {"0-1-2-3"}
    assert {str(select_label(ev(order), "canonical")) for order in itertools.permutations(same_length[:2])} == \
        {"1-1-2-3"}                                            # both 2 deviations: (0,2,1,1) < (2,0,1,1)
    assert deviations(P("0-0-2-3", 4)) == 2 and canonical_key(P("1-2-3", 4)) == (3, 1, (0, 1, 1, 1))
    assert select_label(ev(others), "canonical") is None
    with pytest.raises(ValueError, match="tie_break"):
        select_label(ev(correct), "last")


def test_run_search_uses_the_configured_tie_break():
    from drllm.search.mcts import canonical_key

    for expansion in ("random", "ordered"):
        result = run_search(hashed_reward, L, MCTSConfig(simulations=80, expansion=expansion, tie_break="canonical",
                                                         **NO_STOP), seed=2)
        correct = [path for path, reward in result.evaluated if reward > 0.5]
        assert correct and result.best_path == min(correct, key=canonical_key)


def test_run_search_label_matches_rule():
    result = run_search(hashed_reward, L, MCTSConfig(simulations=80, **NO_STOP), seed=2)
    correct = [(i, p) for i, (p, r) in enumerate(result.evaluated) if r > 0.5]
    assert correct
    best = min(correct, key=lambda item: (len(item[1]), item[1].unique_layers, item[0]))[1]
    assert result.best_path == best


def test_searches_in_lockstep_equal_each_search_alone():
    """Prompts searched side by side (one evaluate_many call per round) give each prompt's one-at-a-time result,
    whatever the width; searches of different lengths finish at different rounds."""
    def prompt_reward(prompt):  # each prompt has its own reward landscape
        return lambda path: float((sum((i + 1) * (layer + 3) for i, layer in enumerate(path)) + prompt) % 10 < 3)

    settings = [(MCTSConfig(simulations=30 + 7 * prompt, mode="chain" if prompt == 4 else "branching",
                            early_stop=prompt % 2 == 0), 100 + prompt) for prompt in range(6)]
    alone = [run_search(prompt_reward(prompt), L, config, seed) for prompt, (config, seed) in enumerate(settings)]
    for width in (1, 2, 6):
        rounds, results = [], []
        for start in range(0, len(settings), width):
            chunk = list(range(start, min(start + width, len(settings))))

            def evaluate_many(batch, chunk=chunk):
                rounds.append(len(batch))
                return [prompt_reward(chunk[index])(path) for index, path in batch]

            results += run_searches(evaluate_many, [search_steps(L, *settings[p]) for p in chunk])
        for got, want in zip(results, alone):
            assert (got.evaluated, got.best_path, got.simulations, got.stopped_early, got.tree.to_records()) == \
                (want.evaluated, want.best_path, want.simulations, want.stopped_early, want.tree.to_records())
        assert sum(rounds) == sum(result.evaluations for result in alone)
        if width == 6:
            assert rounds[0] == 6 and len(rounds) == max(result.evaluations for result in alone)


class LetterTokenizer:
    """Decodes a tiny model's tokens to letters and blanks, so its answers sometimes pass the strict letter regex."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join("ABCD    "[token % 8] for token in ids)


def tiny_prompts(seed=0):
    """Letter-format prompts of different lengths and limits, with a cloze prompt among them (rounds mix kinds)."""
    from drllm.core.executor import ChoiceBatch
    from drllm.formats.prompts import Encoded

    generator = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, 97, (n,), generator=generator).tolist()

    encoded = [Encoded(example_id=f"g{number}", kind="generate", prompt_text="", input_ids=ids(length), batch=None,
                       max_new_tokens=limit, gold=number % 4, format="letter", options=("a", "b", "c", "d"),
                       tokenizer=LetterTokenizer())
               for number, (length, limit) in enumerate([(9, 2), (14, 1), (11, 3), (5, 2), (12, 4), (10, 2)])]
    cloze = ChoiceBatch.build([(ids(7), ids(n)) for n in (1, 2, 3, 1)])
    encoded.insert(3, Encoded(example_id="c", kind="choices", prompt_text="", input_ids=None, batch=cloze,
                              max_new_tokens=0, gold=2, format="cloze", options=("a", "bb", "ccc", "d")))
    return encoded


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_lockstep_generation_rewards_equal_each_prompt_alone(kind, monkeypatch):
    """Searches whose rounds generate several prompts' answers as one mixed-path batch (each resumed from its own
    kept prefix) evaluate the same paths, with the same generated answers, rewards and statistics, as each
    prompt's search alone."""
    from conftest import tiny_model
    from drllm.core.executor import PathExecutor
    from drllm.search.rewards import PathRewarder, rewards_together
    from drllm.formats.answers import get_format

    from drllm.core import path_batch

    # compare the batch's own tokens: no near-tie is handed back to the one-prompt path
    monkeypatch.setitem(path_batch.TIE_TOLERANCE, torch.float32, 0.0)
    monkeypatch.setattr(path_batch, "GENERATION_COUNTS", {"batched": 0, "near_tie_alone": 0})
    executor = PathExecutor(tiny_model(kind, layers=6))
    config = MCTSConfig(simulations=14, early_stop=False)
    encoded = tiny_prompts()

    def rewarders():
        return [PathRewarder(executor, get_format(item.format), item, cache_size=4) for item in encoded]

    alone = rewarders()
    want = [run_search(rewarder, 6, config, seed) for seed, rewarder in enumerate(alone)]
    together = rewarders()
    calls = []

    def evaluate_many(batch):
        calls.append(len(batch))
        return rewards_together([(together[index], path) for index, path in batch])

    got = run_searches(evaluate_many, [search_steps(6, config, seed) for seed in range(len(encoded))])
    assert max(calls) == len(encoded)
    for mine, theirs, rewarder, reference in zip(got, want, together, alone):
        assert (mine.evaluated, mine.best_path, mine.tree.to_records()) == \
            (theirs.evaluated, theirs.best_path, theirs.tree.to_records())
        assert rewarder.stats == reference.stats
        assert rewarder.outcomes.keys() == reference.outcomes.keys()
        for path, outcome in rewarder.outcomes.items():
            other = reference.outcomes[path]
            assert (outcome.generation, outcome.prediction, outcome.correct, outcome.new_tokens,
                    outcome.layer_applications) == (other.generation, other.prediction, other.correct,
                                                    other.new_tokens, other.layer_applications)
    rewards = [reward for result in want for _, reward in result.evaluated]
    assert 0 < sum(rewards) < len(rewards)  # the searches saw both outcomes
    assert sum(rewarder.stats.reused_steps for rewarder in together) > 0
    assert path_batch.GENERATION_COUNTS["batched"] >= 40


def test_lockstep_rejects_a_wrong_number_of_rewards():
    with pytest.raises(ValueError, match="returned 1 rewards for 2 paths"):
        run_searches(lambda batch: [1.0], [search_steps(4, MCTSConfig(), 0), search_steps(4, MCTSConfig(), 1)])


def test_bad_rewards_are_rejected():
    with pytest.raises(ValueError, match=r"rewards must lie in \[0, 1\]"):
        run_search(lambda p: 2.0, L, MCTSConfig(), seed=0)
    with pytest.raises(ValueError, match="not a number"):
        run_search(lambda p: "yes", L, MCTSConfig(), seed=0)


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, field", [
    ({"simulations": 0}, "simulations"),
    ({"simulations": 2.5}, "simulations"),
    ({"random_child_prob": 1.5}, "random_child_prob"),
    ({"exploration": -1}, "exploration"),
    ({"length_penalty": float("nan")}, "length_penalty"),
    ({"mode": "tree"}, "mode"),
    ({"min_saving": 0}, "min_saving"),
    ({"max_skip": -1}, "max_skip"),
    ({"widening": 2.0}, "widening"),
    ({"widening_k": 0}, "widening_k"),
    ({"early_stop": "yes"}, "early_stop"),
    ({"expansion": "shuffled"}, "expansion"),
    ({"tie_break": "last"}, "tie_break"),
])
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        MCTSConfig(**overrides)
    with pytest.raises(ValueError, match=field):
        MCTSConfig.from_dict(overrides)
    with pytest.raises(ValueError, match=field):
        run_search(lambda p: 1.0, 4, MCTSConfig(**overrides), seed=0)


def test_from_dict_rejects_unknown_keys_and_reads_the_config_file():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['simulatons'\]"):
        MCTSConfig.from_dict({"simulatons": 10})
    block = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["search"]["mcts"]
    config = MCTSConfig.from_dict(block)
    assert config.simulations == block["simulations"] and config.mode == block["mode"]
    assert MCTSConfig.from_dict(None) == MCTSConfig()
    assert MCTSConfig.from_dict({"widening": "none"}).widening is None
    assert MCTSConfig.from_dict(config.to_dict()) == config


def test_evaluation_budget_caps_real_evaluations():
    from drllm.search.mcts import MCTSConfig, run_search

    calls = []
    config = MCTSConfig(simulations=500, early_stop=False, max_evaluations=12)
    result = run_search(lambda p: calls.append(p) or 0.0, 8, config, seed=0)
    assert result.evaluations == 12 == len(calls)
    with pytest.raises(ValueError, match="max_evaluations"):
        MCTSConfig(max_evaluations=0)


def probe_values(rule: dict) -> list:
    """Values on and just beside every bound, type and enum of one JSON-schema property."""
    types = rule.get("type", [])
    types = [types] if isinstance(types, str) else types
    values: list = [True, "text"] + (list(rule["enum"]) if "enum" in rule else [])
    step = 1 if "integer" in types else 0.25
    for key in ("minimum", "maximum", "exclusiveMinimum"):
        if key in rule:
            values += [rule[key] - step, rule[key], rule[key] + step]
    if "null" in types:
        values.append(None)
    if "integer" in types:
        values = [int(v) if isinstance(v, float) else v for v in values] + [-1, 0]
    return values


def test_config_schema_and_mcts_config_agree_on_every_bound():
    """workflow/schemas/config.schema.yaml's MCTS block (search.mcts and eval.oracle.mcts) accepts exactly what
    MCTSConfig does, so no config passes validation and then fails once a job starts."""
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    block = schema["$defs"]["mcts"]
    assert set(block["properties"]) == {field.name for field in dataclasses.fields(MCTSConfig)}
    validator = jsonschema.Draft202012Validator(block)
    for name, rule in block["properties"].items():
        for value in probe_values(rule):
            try:
                MCTSConfig.from_dict({name: value})
                accepted = True
            except ValueError:
                accepted = False
            assert validator.is_valid({name: value}) == accepted, f"search.mcts.{name}: {value!r}"
    for path in (("properties", "search", "properties", "mcts"),
                 ("properties", "eval", "properties", "oracle", "properties", "mcts")):
        node = schema
        for key in path:
            node = node[key]
        assert node == {"$ref": "#/$defs/mcts"}, path


def test_search_settings_are_validated_once_naming_the_field():
    from drllm.search.settings import SearchSettings

    manifest = {"name": "m", "num_layers": 4, "chat_template": False}
    settings = SearchSettings.from_dict({"mcts": {"simulations": 7}, "formats": {"cloze": {"normalize": "none"}}},
                                        manifest)
    # search.mcts is the mcts labeler's block (the default labeler): its settings object, built once
    assert settings.labeler_settings().simulations == 7 and settings.labeler_settings() is settings.labeler_settings()
    assert settings.chat_template is False and settings.prefix_cache == 8 and settings.reward_config().kind == "binary"
    assert json.loads(settings.to_json())["mcts"] == {"simulations": 7}  # search_config records the keys given
    assert SearchSettings.from_dict({"chat_template": True}, manifest).chat_template is True
    for block, message in [({"mcts_typo": {}}, r"search: unknown key\(s\) \['mcts_typo'\]"),
                           ({"mcts": {"min_saving": 0}}, "search.mcts.min_saving must be an integer >= 1"),
                           ({"prefix_cache": -1}, "search.prefix_cache must be an integer >= 0"),
                           ({"seed_check": -1}, "search.seed_check must be an integer >= 0"),
                           ({"mcts": {"expansion": "shuffled"}}, "expansion must be one of"),
                           ({"seed": "1"}, "search.seed must be an integer"),
                           ({"chat_template": "yes"}, "chat_template must be true or false"),
                           ({"formats": {"cloze": {"normalise": "chars"}}}, r"unknown option\(s\) \['normalise'\]"),
                           ({"reward": {"kind": "fuzzy"}}, r"search\.reward\.kind: unknown reward 'fuzzy'; known:")]:
        with pytest.raises(ValueError, match=message):
            SearchSettings.from_dict(block, manifest)


def test_config_schema_and_stage_settings_agree_on_every_bound():
    """The search and evaluation settings objects accept exactly what workflow/schemas/config.schema.yaml accepts
    for the keys they read (the MCTS block has its own test above)."""
    import jsonschema

    from drllm.evaluation.settings import EvalSettings
    from drllm.search.settings import SearchSettings

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    manifest = {"name": "m", "num_layers": 4}
    search, evaluation = schema["search"]["properties"], schema["eval"]["properties"]
    probes = [(f"search.{name}", search[name], lambda value, name=name: SearchSettings.from_dict({name: value},
                                                                                                 manifest))
              for name in ("seed", "prefix_cache", "chat_template", "seed_check")]
    probes += [(f"search.reward.{name}", rule,
                lambda value, name=name: SearchSettings.from_dict({"reward": {name: value}}, manifest))
               for name, rule in search["reward"]["properties"].items() if name != "kind"]
    probes += [("eval.seed", evaluation["seed"], lambda value: EvalSettings.from_dict({"seed": value})),
               ("eval.oracle.samples", evaluation["oracle"]["properties"]["samples"],
                lambda value: EvalSettings.from_dict({"oracle": {"samples": value}}))]
    for where, rule, build in probes:
        validator = jsonschema.Draft202012Validator(rule)
        for value in probe_values(rule):
            try:
                build(value)
                accepted = True
            except ValueError:
                accepted = False
            assert validator.is_valid(value) == accepted, f"{where}: {value!r}"
    # table names (plugins add some): the schema accepts every identifier, the settings the registered ones
    from drllm.search.labelers import LABELERS
    from drllm.search.rewards import REWARDS

    for where, rule, table in (("search.reward.kind", search["reward"]["properties"]["kind"], REWARDS),
                               ("search.labeler", search["labeler"], LABELERS)):
        validator = jsonschema.Draft202012Validator(rule)
        assert all(validator.is_valid(name) for name in table.names()), where
        assert not any(validator.is_valid(value) for value in (True, "", "two words", "9lives")), where


# ------------------------------------------------------------------------------------------ seed check (workers)
@pytest.mark.parametrize("expansion", ["random", "ordered"])
def test_seed_check_searches_again_with_a_second_seed(expansion):
    """search_prompts: rows marked seed_check get `labels_check`, the label of a second search seeded from
    (seed + 1, task, id) on the same rewarder; the row's other columns (costs included) are those of the search
    alone. With ordered expansion the second search finds the same label."""
    from conftest import tiny_model
    from test_tasks import byte_tokenizer, mc_example

    from drllm.core.executor import PathExecutor
    from drllm.core.seeds import derived_seed
    from drllm.formats.answers import get_format
    from drllm.search.rewards import PathRewarder
    from drllm.search.prompts import encode_prompt_row, select_prompts
    from drllm.search.shards import seed_check_ids
    from drllm.search.settings import SearchSettings
    from drllm.search.workers import search_prompts

    executor = PathExecutor(tiny_model("llama", layers=6, vocab_size=259))
    tokenizer = byte_tokenizer()
    records = [mc_example(id=f"q{i}", question=f"Question {i}: which one?", gold=i % 4).to_dict() for i in range(5)]
    prompts = select_prompts(records, "arc_easy", "cloze", 5, seed=0)
    mcts = {"simulations": 12, "early_stop": False, "expansion": expansion, "tie_break": "canonical"}

    def settings(seed_check):
        return SearchSettings(model="tiny", num_layers=6, labelers={"mcts": mcts}, seed=0, chat_template=False,
                              seed_check=seed_check)

    checked = seed_check_ids(prompts, 3)
    marked = [{**row, "seed_check": row["id"] in checked} for row in prompts]
    rows = search_prompts(executor, tokenizer, marked, settings(3))
    alone = search_prompts(executor, tokenizer, prompts, settings(0))
    assert sum(row["kept"] for row in rows) >= 2, "the tiny model should keep some prompts"
    def strip(row):
        return {k: v for k, v in row.items() if k not in ("wall_seconds", "search_config", "labels_check")}

    for row, other, prompt in zip(rows, alone, marked):
        assert strip(row) == strip(other) and other["labels_check"] is None
        if not prompt["seed_check"]:
            assert row["labels_check"] is None
            continue
        answer_format, encoded = encode_prompt_row(prompt, tokenizer, {}, False)
        second = run_search(PathRewarder(executor, answer_format, encoded), 6, MCTSConfig.from_dict(mcts),
                            derived_seed(1, prompt["task"], prompt["id"])).best_path
        assert row["labels_check"] == (second.counts() if second is not None else None)
        if expansion == "ordered":
            assert row["labels_check"] == row["labels"]
    assert sum(row["labels_check"] is not None for row in rows) >= 1
    assert [p["prompt_index"] for p in marked if p["seed_check"]] == [0, 1, 2]
