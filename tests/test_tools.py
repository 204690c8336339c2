"""tools/: the prior-gap measure (safety routers vs each layer's safe rate)."""
from __future__ import annotations

import math
import sys

import pytest

from conftest import REPO
from drllm.routing.samples import TrainingSample

sys.path.insert(0, str(REPO / "tools"))
from prior_gap import prior_validation_loss  # noqa: E402


def test_prior_validation_loss_is_the_soft_cross_entropy_of_the_training_rates():
    train = [TrainingSample("a", [1], [1, 1], [1.0, 0.0]), TrainingSample("b", [1], [1, 1], [0.0, 0.0])]
    val = [TrainingSample("c", [1], [1, 1], [1.0, 1.0])]
    # layer 0: rate 0.5, target 1 -> -log 0.5; layer 1: rate 0 clipped to 1e-3, target 1 -> -log 1e-3
    assert prior_validation_loss(train, val) == pytest.approx((math.log(2) - math.log(1e-3)) / 2)
