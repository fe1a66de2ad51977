"""Optimisation pieces: gradient adjustment (GA) as an optax transform, schedules, and the
stage optimizer built from a config (``create_optimizer``)."""

from lt_jax.optim.factory import create_optimizer, learning_rate
from lt_jax.optim.gradient_adjustment import (
    GradientAdjustmentState,
    GradientParts,
    gradient_adjustment,
    inhibit_ratio,
    split_head_gradient,
)
from lt_jax.optim.schedules import (
    drw_weights,
    epoch_of,
    epoch_switch,
    start_step,
    warmup_cosine,
    warmup_step_decay,
)

__all__ = [
    "create_optimizer",
    "learning_rate",
    "GradientAdjustmentState",
    "GradientParts",
    "drw_weights",
    "epoch_of",
    "epoch_switch",
    "gradient_adjustment",
    "inhibit_ratio",
    "split_head_gradient",
    "start_step",
    "warmup_cosine",
    "warmup_step_decay",
]
