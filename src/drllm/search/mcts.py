"""Length-aware MCTS over layer paths (docs/method.md#the-search), as plain data and functions.

Style of DeepMind's mctx: the configuration (`MCTSConfig`) and the search tree (`Tree` of `Node`s) are plain
data; the algorithm is a set of small functions, one per rule. This module knows nothing about models: it gets a
callback `evaluate(path: LayerPath) -> float` returning a reward in [0, 1] (correct means reward > 0.5).

State and actions
  A state is a path; the root is the default path [0..L-1]. An action edits positions of the current path: skip
  1..max_skip consecutive entries, or repeat one entry (insert a copy right after it). A child path must be a
  valid `LayerPath` (block order kept, each layer at most twice, so |path| <= 2L) and non-empty. Actions that
  give the same child path count once (the first in the deterministic order of `legal_actions` is kept).

One simulation (mode "branching")
  Descend from the root. At each node: if it may expand (see widening) and has untried actions, expand one of
  them (see expansion), evaluate the child path (memoised: path -> reward, so a path reached again through another
  edit sequence costs no evaluation), back-propagate the RAW reward (no length term) to it and all its ancestors,
  and end the simulation. Otherwise pick a child: with probability random_child_prob a uniformly random one
  (expansion "random" only), else argmax of
      UCB(child) = Q/v + c * sqrt(ln V_parent / v) - lambda * |child path| / L
  (unvisited child = +inf; ties -> lowest index) and descend. A node with no children and no legal actions is
  terminal: its own reward is back-propagated and the simulation ends. The root is evaluated first and counts as
  the root's first visit.

Expansion (`expansion`)
  "random" (the paper's and the authors' code: they shuffle the actions): the untried action is drawn uniformly
  (seeded numpy Generator) and a random child is taken with probability random_child_prob.
  "ordered": the untried actions are expanded in the fixed order of `legal_actions` (skips by position, then
  length, then repeats by position; so the earliest positions are tried first), and there is no random child
  (random_child_prob is ignored). Nothing then draws a random number: the result does not depend on the seed.

Progressive widening (our choice; the paper is silent)
  "Expand every untried action first" with ~3L actions per node and 50 simulations only ever builds depth 1, so a
  node with N visits may hold at most max(1, floor(widening_k * N ** widening)) children (widening=0.5, k=1: the
  root gets its 2nd child at N=4, 3rd at N=9, ..., 7 children after 49 visits; new nodes may grow their first
  child at once). widening=None (or "none") restores "expand every untried action first".

Mode "chain" (the authors' released code)
  Expansion happens only at childless nodes, so every node gets at most one child and the "tree" is a random chain
  of cumulative edits (with expansion "ordered": each time the first legal edit); selection just walks down the
  chain (UCB, lambda, random_child_prob and widening have no effect). Kept to compare against the branching search.

Early stop (early_stop=True)
  Default path wrong: stop at the first correct path ("W->C"). Default right: stop once a correct path with
  |path| <= L - min_saving is found. Only real evaluations are checked.

Budget
  max_evaluations (optional) ends the search once that many distinct paths were evaluated: the chain revisits
  known paths often, so comparing modes by simulations would favour the branching search.

Label (`tie_break`)
  The shortest correct path over every evaluated path; None when no path is correct (such prompts are dropped
  from training data). Ties among equally short correct paths:
  "first" (the paper's rule, then evaluation order): fewer unique layers, then the earliest evaluated.
  "canonical": fewer deviations from the default path (layers whose count != 1), then the lexicographically
  smallest per-layer count vector (e.g. (0,1,1,1) before (1,0,1,1): the earliest layer skipped). A total order
  on paths, so among the correct paths found the label does not depend on the order they were evaluated in.

Determinism: the same callback, config and seed give the identical result; all randomness comes from one
`numpy.random.default_rng(seed)`, which expansion "ordered" never draws from.

Driving it: `search_steps` is the search as a coroutine (it yields each path to evaluate and takes the reward
back), so its whole state is the suspended search; `run_search` drives one with a callback, `run_searches`
drives several in lockstep with one batched callback per round, each giving exactly its `run_search` result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Generator, Mapping, Sequence

import numpy as np

from drllm.core.settings import check_fields, from_block, setting
from drllm.core.paths import MAX_REPEATS, LayerPath, PathError

MODES = ("branching", "chain")
EXPANSIONS = ("random", "ordered")   # untried action drawn at random (paper) | in legal_actions order
TIE_BREAKS = ("first", "canonical")  # equally short correct paths: earliest evaluated | a fixed order on paths
ACTION_KINDS = ("skip", "repeat")
CORRECT_THRESHOLD = 0.5

Evaluate = Callable[[LayerPath], float]


# ----------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class MCTSConfig:
    """The search's settings (config `search.mcts`, `eval.oracle.mcts`), checked once when made."""

    simulations: int = setting(50, "int", low=1)             # paper; authors' code 200
    exploration: float = setting(1.8, "number", low=0)      # c in UCB
    length_penalty: float = setting(3.0, "number", low=0)   # lambda
    random_child_prob: float = setting(0.1, "number", low=0, high=1)
    max_skip: int = setting(2, "int", low=0)                # skip 1..max_skip consecutive entries
    # copies one repeat inserts, 1..max_repeat (each layer still runs at most twice)
    max_repeat: int = setting(1, "int", low=0)
    early_stop: bool = setting(True, "bool")
    min_saving: int = setting(2, "int", low=1)              # default right: stop at a correct path >= this shorter
    # "branching" (real MCTS) | "chain" (authors' released behaviour)
    mode: str = setting("branching", "str", choices=MODES)
    # progressive widening exponent alpha; None = expand every untried action first
    widening: float | None = setting(0.5, "number", low=0, high=1, nullable=True)
    widening_k: float = setting(1.0, "number", low=0, low_open=True)
    # optional budget of real evaluations (compare modes at equal cost)
    max_evaluations: int | None = setting(None, "int", low=1, nullable=True)
    # "random" (paper) | "ordered" (legal_actions order, no random child: seedless)
    expansion: str = setting("random", "str", choices=EXPANSIONS)
    # label ties: "first" (fewer unique layers, earliest evaluated) | "canonical"
    tie_break: str = setting("first", "str", choices=TIE_BREAKS)

    def __post_init__(self) -> None:
        if isinstance(self.widening, str) and self.widening.strip().lower() in ("none", "null", ""):
            object.__setattr__(self, "widening", None)
        check_fields(self, "search.mcts")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "search.mcts") -> "MCTSConfig":
        """Build and validate a config from a mapping (e.g. the `search.mcts` block); unknown keys are errors."""
        return from_block(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Action:
    """An edit of a path. skip: drop `length` consecutive entries from `position`; repeat: insert `length`
    copies of the entry at `position` right after it."""

    kind: str
    position: int
    length: int = 1

    def apply(self, path: LayerPath) -> LayerPath:
        """The edited path; PathError if the edit is out of range or gives an invalid or empty path."""
        layers = path.layers
        if self.kind not in ACTION_KINDS:
            raise PathError(f"unknown action kind {self.kind!r}")
        if self.length < 1 or not 0 <= self.position < len(layers):
            raise PathError(f"action {self} does not fit path {path} of length {len(layers)}")
        if self.kind == "skip":
            if self.position + self.length > len(layers):
                raise PathError(f"action {self} runs past the end of path {path}")
            edited = layers[:self.position] + layers[self.position + self.length:]
        else:
            entry = layers[self.position]
            edited = layers[:self.position + 1] + (entry,) * self.length + layers[self.position + 1:]
        if not edited:
            raise PathError(f"action {self} leaves an empty path")
        return LayerPath(edited, path.num_layers)

    def __str__(self) -> str:
        return f"{self.kind}@{self.position}x{self.length}"


def candidate_actions(path: LayerPath, config: MCTSConfig) -> list[Action]:
    """Every edit in deterministic order (skips by position then length, then repeats), legal or not."""
    n = len(path)
    skips = [Action("skip", p, k) for p in range(n) for k in range(1, config.max_skip + 1)]
    repeats = [Action("repeat", p, k) for p in range(n) for k in range(1, config.max_repeat + 1)]
    return skips + repeats


def legal_children(path: LayerPath, config: MCTSConfig) -> list[tuple[Action, LayerPath]]:
    """Legal (action, child path) pairs, deduplicated by child path (the first action giving a path wins)."""
    children: dict[tuple[int, ...], tuple[Action, LayerPath]] = {}
    counts = path.counts()
    for action in candidate_actions(path, config):
        if action.kind == "skip" and (action.position + action.length > len(path) or action.length >= len(path)):
            continue
        if action.kind == "repeat" and counts[path[action.position]] + action.length > MAX_REPEATS:
            continue
        try:
            child = action.apply(path)
        except PathError:
            continue
        children.setdefault(child.layers, (action, child))
    return list(children.values())


def legal_actions(path: LayerPath, config: MCTSConfig) -> list[Action]:
    """The legal edits of `path`, one per distinct child path, in deterministic order."""
    return [action for action, _ in legal_children(path, config)]


# -------------------------------------------------------------------------------------------------------- tree
@dataclass
class Node:
    path: LayerPath
    parent: int | None
    action: Action | None            # the edit that made this node from its parent (None at the root)
    depth: int = 0
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    untried: list[Action] | None = None   # legal actions not yet expanded; None until first needed


@dataclass
class Tree:
    """The search tree as plain data: node 0 is the root; nodes refer to each other by index."""

    num_layers: int
    nodes: list[Node] = field(default_factory=list)

    def add(self, path: LayerPath, parent: int | None, action: Action | None) -> int:
        depth = 0 if parent is None else self.nodes[parent].depth + 1
        self.nodes.append(Node(path=path, parent=parent, action=action, depth=depth))
        index = len(self.nodes) - 1
        if parent is not None:
            self.nodes[parent].children.append(index)
        return index

    @property
    def root(self) -> Node:
        return self.nodes[0]

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def max_fanout(self) -> int:
        return max((len(node.children) for node in self.nodes), default=0)

    @property
    def max_depth(self) -> int:
        return max((node.depth for node in self.nodes), default=0)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per node."""
        return [{"id": i, "path": str(n.path), "parent": n.parent, "children": list(n.children),
                 "action": str(n.action) if n.action else None, "depth": n.depth, "visits": n.visits,
                 "value_sum": n.value_sum} for i, n in enumerate(self.nodes)]


# ------------------------------------------------------------------------------------------------------- rules
def is_correct(reward: float) -> bool:
    return reward > CORRECT_THRESHOLD


def widening_limit(visits: int, config: MCTSConfig) -> float:
    """How many children a node with `visits` visits may hold (inf without widening)."""
    if config.widening is None:
        return math.inf
    return max(1, math.floor(config.widening_k * visits ** config.widening))


def untried_actions(tree: Tree, index: int, config: MCTSConfig) -> list[Action]:
    node = tree.nodes[index]
    if node.untried is None:
        node.untried = legal_actions(node.path, config)
    return node.untried


def may_expand(tree: Tree, index: int, config: MCTSConfig) -> bool:
    """Expansion rule: chain mode only at childless nodes; branching mode while under the widening limit."""
    node = tree.nodes[index]
    if not untried_actions(tree, index, config):
        return False
    if config.mode == "chain":
        return not node.children
    return len(node.children) < widening_limit(node.visits, config)


def ucb_score(child: Node, parent_visits: int, config: MCTSConfig, num_layers: int) -> float:
    """Q/v + c*sqrt(ln V_parent / v) - lambda*|path|/L; +inf for an unvisited child."""
    if child.visits == 0:
        return math.inf
    exploit = child.value_sum / child.visits
    explore = config.exploration * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)
    return exploit + explore - config.length_penalty * len(child.path) / num_layers


def select_child(tree: Tree, index: int, config: MCTSConfig, rng: np.random.Generator) -> int:
    """The child to descend into (the node must have children)."""
    node = tree.nodes[index]
    if config.mode == "chain":
        return node.children[0]
    if config.expansion == "random" and rng.random() < config.random_child_prob:
        return node.children[int(rng.integers(len(node.children)))]
    scores = [ucb_score(tree.nodes[c], node.visits, config, tree.num_layers) for c in node.children]
    return node.children[int(np.argmax(scores))]  # argmax returns the first (lowest index) maximum


def expand(tree: Tree, index: int, config: MCTSConfig, rng: np.random.Generator) -> int:
    """Add one untried action of node `index`: chosen uniformly at random (expansion "random"), or the first in
    `legal_actions` order (expansion "ordered"); returns the new node."""
    untried = untried_actions(tree, index, config)
    action = untried.pop(0 if config.expansion == "ordered" else int(rng.integers(len(untried))))
    return tree.add(action.apply(tree.nodes[index].path), index, action)


def backpropagate(tree: Tree, index: int, reward: float) -> None:
    """Add one visit and the raw reward (no length term) to node `index` and all its ancestors."""
    current: int | None = index
    while current is not None:
        node = tree.nodes[current]
        node.visits += 1
        node.value_sum += reward
        current = node.parent


def early_stop_reached(default_correct: bool, path: LayerPath, reward: float, config: MCTSConfig) -> bool:
    """W->C: first correct path when the default is wrong; else a correct path >= min_saving layers shorter."""
    if not config.early_stop or not is_correct(reward):
        return False
    if not default_correct:
        return True
    return len(path) <= path.num_layers - config.min_saving


def label_key(item: tuple[int, tuple[LayerPath, float]]) -> tuple[int, int, int]:
    """tie_break "first": length, then unique layers, then evaluation order."""
    order, (path, _) = item
    return len(path), path.unique_layers, order


def deviations(path: LayerPath) -> int:
    """Layers whose count differs from the default path's 1 (skipped or repeated)."""
    return sum(count != 1 for count in path.counts())


def canonical_key(path: LayerPath) -> tuple[int, int, tuple[int, ...]]:
    """tie_break "canonical": length, then deviations from the default, then the per-layer count vector."""
    return len(path), deviations(path), tuple(path.counts())


def select_label(evaluated: list[tuple[LayerPath, float]], tie_break: str = "first") -> LayerPath | None:
    """Shortest correct path; ties by `tie_break` ("first": fewer unique layers, then the earliest evaluated;
    "canonical": fewer deviations from the default, then the smallest count vector). None if none is correct."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {list(TIE_BREAKS)}, got {tie_break!r}")
    correct = [(order, item) for order, item in enumerate(evaluated) if is_correct(item[1])]
    if not correct:
        return None
    if tie_break == "canonical":
        return min((path for _, (path, _) in correct), key=canonical_key)
    return min(correct, key=label_key)[1][0]


class Memo:
    """path -> reward, asking for each distinct path's reward once and keeping the evaluation order."""

    def __init__(self) -> None:
        self.rewards: dict[tuple[int, ...], float] = {}
        self.evaluated: list[tuple[LayerPath, float]] = []

    def reward(self, path: LayerPath) -> Generator[LayerPath, float, tuple[float, bool]]:
        """(reward, whether it was really evaluated): a new path is yielded and its reward sent back."""
        if path.layers in self.rewards:
            return self.rewards[path.layers], False
        reward = check_reward((yield path), path)
        self.rewards[path.layers] = reward
        self.evaluated.append((path, reward))
        return reward, True


def check_reward(value: Any, path: LayerPath) -> float:
    try:
        reward = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"evaluate({path}) returned {value!r}, not a number") from exc
    if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
        raise ValueError(f"evaluate({path}) returned {reward!r}; rewards must lie in [0, 1]")
    return reward


# ------------------------------------------------------------------------------------------------------ search
@dataclass
class SearchResult:
    default_correct: bool
    best_path: LayerPath | None
    evaluated: list[tuple[LayerPath, float]]   # every evaluated path with its reward, evaluation order, root first
    simulations: int                           # simulations actually run
    evaluations: int                           # real calls to evaluate
    stopped_early: bool
    tree: Tree

    @property
    def num_layers(self) -> int:
        return self.tree.num_layers

    @property
    def wrong_to_correct(self) -> bool:
        return not self.default_correct and self.best_path is not None

    @property
    def layers_saved(self) -> int:
        return self.num_layers - len(self.best_path) if self.best_path is not None else 0

    @property
    def max_fanout(self) -> int:
        return self.tree.max_fanout

    @property
    def max_depth(self) -> int:
        return self.tree.max_depth

    @property
    def num_nodes(self) -> int:
        return self.tree.num_nodes


def simulate(tree: Tree, memo: Memo, config: MCTSConfig,
             rng: np.random.Generator) -> Generator[LayerPath, float, tuple[LayerPath, float, bool]]:
    """One simulation: select, expand one node (or stop at a terminal one), back-propagate.
    Returns (path evaluated or revisited, its reward, whether it was really evaluated)."""
    index = 0
    while True:
        if may_expand(tree, index, config):
            child = expand(tree, index, config, rng)
            path = tree.nodes[child].path
            reward, fresh = yield from memo.reward(path)
            backpropagate(tree, child, reward)
            return path, reward, fresh
        if not tree.nodes[index].children:  # terminal: no children and no legal actions
            path = tree.nodes[index].path
            reward = memo.rewards[path.layers]
            backpropagate(tree, index, reward)
            return path, reward, False
        index = select_child(tree, index, config, rng)


SearchSteps = Generator[LayerPath, float, SearchResult]


def search_steps(num_layers: int, config: MCTSConfig, seed: int) -> SearchSteps:
    """The search as a coroutine: yields each path it needs evaluated, takes the path's reward back through
    `send`, and returns the `SearchResult`. The search's state lives in the suspended coroutine, so a driver
    can advance many prompts' searches side by side (`run_searches`)."""
    rng = np.random.default_rng(seed)
    memo = Memo()
    tree = Tree(num_layers)
    root = LayerPath.default(num_layers)
    tree.add(root, None, None)
    root_reward, _ = yield from memo.reward(root)
    backpropagate(tree, 0, root_reward)
    default_correct = is_correct(root_reward)
    simulations, stopped = 0, False
    while simulations < config.simulations:
        path, reward, fresh = yield from simulate(tree, memo, config, rng)
        simulations += 1
        if fresh and early_stop_reached(default_correct, path, reward, config):
            stopped = True
            break
        if config.max_evaluations is not None and len(memo.evaluated) >= config.max_evaluations:
            break
    return SearchResult(default_correct=default_correct, best_path=select_label(memo.evaluated, config.tie_break),
                        evaluated=list(memo.evaluated), simulations=simulations,
                        evaluations=len(memo.evaluated), stopped_early=stopped, tree=tree)


def run_search(evaluate: Evaluate, num_layers: int, config: MCTSConfig, seed: int) -> SearchResult:
    """Length-aware MCTS from the default path of a `num_layers`-block model; see the module docstring."""
    steps = search_steps(num_layers, config, seed)
    try:
        path = next(steps)
        while True:
            path = steps.send(evaluate(path))
    except StopIteration as done:
        return done.value


EvaluateMany = Callable[[list[tuple[int, LayerPath]]], Sequence[float]]


def run_searches(evaluate_many: EvaluateMany, searches: Sequence[SearchSteps]) -> list[SearchResult]:
    """Advance several searches in lockstep: each round, the next path of every unfinished search is evaluated
    in one call `evaluate_many([(search index, path), ...]) -> rewards` (e.g. one batched forward pass over
    several prompts). Each search sees exactly the rewards it would see alone, so its result is the same as
    `run_search` with the same seed, whatever the number of searches run together."""
    results: list[SearchResult | None] = [None] * len(searches)
    pending: dict[int, LayerPath] = {}

    def advance(index: int, reward: float | None) -> None:
        try:
            pending[index] = next(searches[index]) if reward is None else searches[index].send(reward)
        except StopIteration as done:
            pending.pop(index, None)
            results[index] = done.value

    for index in range(len(searches)):
        advance(index, None)
    while pending:
        batch = sorted(pending.items())
        rewards = list(evaluate_many(batch))
        if len(rewards) != len(batch):
            raise ValueError(f"evaluate_many returned {len(rewards)} rewards for {len(batch)} paths")
        for (index, _), reward in zip(batch, rewards):
            advance(index, reward)
    return results  # type: ignore[return-value]
