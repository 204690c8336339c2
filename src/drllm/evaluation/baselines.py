"""Layer-dropping baselines the routers are compared with.

* static (ShortGPT, Men et al. 2024): block influence BI_l = 1 - mean over prompt tokens of
  cos(h entering block l, h leaving block l), measured along the full path on calibration prompts; the k
  blocks with the lowest influence are removed for every input. k is matched to the router's mean savings
  on the same benchmark (round(L - mean routed path length), at least 0).
* random: per example, as many blocks as the router removed on that example (L - routed path length, at
  least 0), chosen uniformly with a seed derived from (seed, benchmark, example id).
* static@k / random@k: the same paths with a fixed budget of k removed blocks (every input, resp. per example),
  independent of the router: swept over k they trace the baselines' accuracy-vs-layers frontier.
* oracle (CoLa-style ceiling): the length-aware MCTS run on the evaluation item itself, rewarded by its
  gold answer under the search's reward (search.reward: robust by default, so a lucky 25% cloze hit is no
  "correct" path); the label path (shortest correct) if one exists, else the full path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from drllm.core.artifacts import ArtifactError, read_parquet, write_parquet
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.search.rewards import PathRewarder, RewardConfig
from drllm.search.mcts import MCTSConfig, run_search
from drllm.core.seeds import derived_seed

INFLUENCE_SCHEMA = pa.schema([
    pa.field("model", pa.string(), nullable=False),
    pa.field("layer", pa.int64(), nullable=False),
    pa.field("influence", pa.float64(), nullable=False),   # 1 - mean cosine(input, output) of the block
    pa.field("rank", pa.int64(), nullable=False),          # 0 = least influential (removed first)
    pa.field("prompts", pa.int64(), nullable=False),       # calibration prompts
    pa.field("tokens", pa.int64(), nullable=False),        # calibration tokens
])


@torch.no_grad()
def block_influence(executor: PathExecutor, prompts: Sequence[Sequence[int]]) -> tuple[list[float], int]:
    """ShortGPT block influence per layer over the prompts' tokens (one prompt at a time, no padding).

    Returns (influence per layer, number of tokens).
    """
    if not prompts:
        raise ValueError("block influence needs at least one calibration prompt")
    totals = torch.zeros(executor.num_layers, dtype=torch.float64)
    tokens = 0
    for ids in prompts:
        state = executor.prefill(torch.tensor([list(ids)], dtype=torch.long), None, None, keep_hidden=True,
                                 logits="none")
        for layer in range(executor.num_layers):
            entering, leaving = state.hidden[layer][0].float(), state.hidden[layer + 1][0].float()
            totals[layer] += torch.nn.functional.cosine_similarity(entering, leaving, dim=-1).double().sum()
        tokens += len(ids)
    return (1.0 - totals / tokens).tolist(), tokens


def influence_rows(model: str, influence: list[float], prompts: int, tokens: int) -> list[dict]:
    order = sorted(range(len(influence)), key=lambda layer: (influence[layer], layer))
    rank = {layer: position for position, layer in enumerate(order)}
    return [{"model": model, "layer": layer, "influence": float(value), "rank": rank[layer], "prompts": prompts,
             "tokens": tokens} for layer, value in enumerate(influence)]


def write_influence(path, rows: list[dict], provenance: dict | None = None) -> None:
    write_parquet(path, rows, INFLUENCE_SCHEMA, "block influence", provenance)


def read_influence(path, model: str, num_layers: int) -> list[dict]:
    rows = read_parquet(path, INFLUENCE_SCHEMA, "block influence").to_pylist()
    if {row["model"] for row in rows} != {model} or sorted(row["layer"] for row in rows) != list(range(num_layers)):
        raise ArtifactError(f"block influence {path} is not for {model} with {num_layers} layers")
    return sorted(rows, key=lambda row: row["layer"])


def static_path(influence_rows_: list[dict], remove: int) -> LayerPath:
    """The full path without the `remove` least influential blocks."""
    num_layers = len(influence_rows_)
    if not 0 <= remove < num_layers:
        raise ValueError(f"static baseline: cannot remove {remove} of {num_layers} layers")
    dropped = {row["layer"] for row in influence_rows_ if row["rank"] < remove}
    return LayerPath(tuple(layer for layer in range(num_layers) if layer not in dropped), num_layers)


def matched_removals(router_rows: list[dict]) -> int:
    """k for the static baseline: the router's mean savings on the benchmark, rounded, at least 0."""
    if not router_rows:
        raise ArtifactError("static baseline: the router cell has no rows to match")
    num_layers = router_rows[0]["num_layers"]
    mean_length = float(np.mean([row["path_length"] for row in router_rows]))
    return max(0, min(num_layers - 1, int(round(num_layers - mean_length))))


def fixed_removals(method: str, remove: int, num_layers: int) -> int:
    """k of static@k / random@k, checked against the model: 0 <= k < L (at least one block stays)."""
    if not 0 <= remove < num_layers:
        raise ValueError(f"method {method!r}: cannot remove {remove} of the model's {num_layers} layers "
                         f"(k must be in [0, {num_layers - 1}])")
    return remove


def random_path(num_layers: int, remove: int, seed: int) -> LayerPath:
    """The full path without `remove` blocks drawn uniformly (seeded)."""
    remove = max(0, min(num_layers - 1, remove))
    rng = np.random.default_rng(seed)
    dropped = set(rng.choice(num_layers, size=remove, replace=False).tolist())
    return LayerPath(tuple(layer for layer in range(num_layers) if layer not in dropped), num_layers)


def random_seed(seed: int, benchmark: str, example_id: str) -> int:
    return derived_seed(seed, "random", benchmark, example_id)


def oracle_search(executor: PathExecutor, answer_format, encoded, mcts: MCTSConfig, seed: int,
                  prefix_cache: int = 8, reward: RewardConfig | None = None):
    """The MCTS on one evaluation item with its gold answer, judged by `reward` (None: binary):
    (path, its outcome, search result)."""
    rewarder = PathRewarder(executor, answer_format, encoded, cache_size=prefix_cache,
                            reuse_prefix=prefix_cache > 0, reward=reward)
    result = run_search(rewarder, executor.num_layers, mcts, seed)
    path = result.best_path if result.best_path is not None else executor.default_path()
    return path, rewarder.outcome(path), result
