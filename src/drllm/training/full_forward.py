"""The literal teacher-forced trainer, the reference the feature cache is checked against (tests, bench/train.py):
every step reruns the frozen model along the labelled paths and pools on the fly. Same losses as
`drllm.training.training.train_routers` on the cache; 50-86x slower per epoch (BENCHMARKS.md)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from drllm.training.features import teacher_forced_features
from drllm.routing.router import RouterStack
from drllm.training.samples import TrainingSample, validate_samples
from drllm.training.train_settings import TrainConfig
from drllm.training.training import TrainHistory, check_stack, classification_metrics, focal_loss, train_loop


def teacher_forced_step(stack: RouterStack, executor, samples: Sequence[TrainingSample], weights: torch.Tensor,
                        gamma: float = 2.0, windows: int | None = None, batch_size: int = 8) -> torch.Tensor:
    """The reference computation: run the frozen model along each sample's labelled path, pool every layer's input
    over the prompt tokens on the fly and return the focal loss of `stack` (with gradients for the routers only)."""
    means, window_mask = teacher_forced_features(executor, samples, windows or stack.config.windows, batch_size)
    labels = torch.tensor([[int(c) for c in s.labels] for s in samples], dtype=torch.long, device=stack.device)
    logits = stack(means.to(stack.device), window_mask.to(stack.device))
    return focal_loss(logits, labels, weights, gamma)


def train_full_forward(stack: RouterStack, executor, samples: Sequence[TrainingSample], config: TrainConfig,
                       val_samples: Sequence[TrainingSample] | None = None,
                       log: Callable[[str], None] | None = None) -> TrainHistory:
    """`train_routers` without the cache: every micro-batch (and every validation pass) reruns the frozen model.

    Same order, schedule and loss as `train_routers`, so the two give the same history up to float rounding;
    it is only the slow reference that proves the cache changes nothing.
    """
    validate_samples(samples, executor.num_layers, getattr(executor.config, "vocab_size", None))
    check_stack(stack, executor.num_layers, config.windows, config)
    labels = torch.tensor([[int(c) for c in s.labels] for s in samples], dtype=torch.long)

    def loss_of(indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return teacher_forced_step(stack, executor, [samples[i] for i in indices.tolist()], weights, config.gamma,
                                   config.windows, config.cache_batch_size)

    evaluate = None
    if val_samples:
        validate_samples(val_samples, executor.num_layers, getattr(executor.config, "vocab_size", None))
        val_labels = torch.tensor([[int(c) for c in s.labels] for s in val_samples], dtype=torch.long)

        def evaluate(weights):
            means, window_mask = teacher_forced_features(executor, val_samples, config.windows,
                                                         config.cache_batch_size)
            logits = stack(means.to(stack.device), window_mask.to(stack.device))
            target = val_labels.to(logits.device)
            return {"loss": float(focal_loss(logits, target, weights, config.gamma)),
                    **classification_metrics(logits, target)}

    return train_loop(stack, labels, loss_of, config, evaluate, len(val_samples or []), log)
