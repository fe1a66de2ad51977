"""Learning-rate schedules and epoch switches of the long-tailed recipes.

All are functions of the optimizer step (a traced int scalar inside the train
step) given ``steps_per_epoch``, so they drop into ``optax`` and into a jitted
step without retracing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lt_jax.losses import class_balanced_weights

Array = jax.Array


def _check_spe(steps_per_epoch: int) -> None:
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")


def epoch_of(step, steps_per_epoch: int):
    """0-indexed epoch of a 0-indexed step."""
    _check_spe(steps_per_epoch)
    return step // steps_per_epoch


def warmup_step_decay(
    base_lr: float,
    *,
    steps_per_epoch: int,
    warmup_epochs: int = 5,
    boundaries: Sequence[int] = (160, 180),
    factors: Sequence[float] = (0.1, 0.01),
) -> optax.Schedule:
    """Linear warm-up by epoch, then step decay (LDAM-DRW / KPS / GCL / FBL recipes).

    ``lr(e) = base_lr * (e + 1) / warmup_epochs`` for epoch ``e < warmup_epochs``
    (epochs 1..5 in the papers' 1-indexed wording), then ``base_lr * factors[k]``
    from epoch ``boundaries[k]`` on (factors are relative to ``base_lr``).

    Examples:
      >>> lr = warmup_step_decay(0.1, steps_per_epoch=10)
      >>> [round(float(lr(s)), 4) for s in (0, 40, 50, 1600, 1800)]
      [0.02, 0.1, 0.1, 0.01, 0.001]
    """
    _check_spe(steps_per_epoch)
    if len(boundaries) != len(factors):
        raise ValueError("boundaries and factors must have the same length")
    if list(boundaries) != sorted(boundaries):
        raise ValueError(f"boundaries must be increasing, got {boundaries}")

    def schedule(step):
        epoch = step // steps_per_epoch
        lr = jnp.asarray(base_lr, jnp.float32)
        for boundary, factor in zip(boundaries, factors, strict=True):
            lr = jnp.where(epoch >= boundary, base_lr * factor, lr)
        if warmup_epochs > 0:
            warm = base_lr * (epoch + 1) / warmup_epochs
            lr = jnp.where(epoch < warmup_epochs, warm, lr)
        return lr

    return schedule


def warmup_cosine(
    base_lr: float,
    *,
    steps_per_epoch: int,
    total_epochs: int,
    warmup_epochs: int = 0,
    end_lr: float = 0.0,
) -> optax.Schedule:
    """Per-step cosine decay from ``base_lr`` to ``end_lr``, after an optional linear warm-up.

    Examples:
      >>> lr = warmup_cosine(0.002, steps_per_epoch=10, total_epochs=30)
      >>> [round(float(lr(s)), 5) for s in (0, 150, 300)]
      [0.002, 0.001, 0.0]
    """
    _check_spe(steps_per_epoch)
    total = total_epochs * steps_per_epoch
    warmup = warmup_epochs * steps_per_epoch
    if total <= warmup:
        raise ValueError(f"total_epochs ({total_epochs}) must exceed warmup_epochs")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else base_lr,
        peak_value=base_lr,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=end_lr,
    )


def epoch_switch(start_epoch: int, *, steps_per_epoch: int) -> Callable[[Array], Array]:
    """Boolean function of the step: True from epoch ``start_epoch`` (0-indexed) on.

    Used for the DRW switch (epoch 160 of 200) and the released GA start (epoch 120).

    Examples:
      >>> on = epoch_switch(2, steps_per_epoch=10)
      >>> bool(on(19)), bool(on(20))
      (False, True)
    """
    _check_spe(steps_per_epoch)
    return lambda step: jnp.asarray(step) >= start_epoch * steps_per_epoch


def drw_weights(
    class_counts,
    *,
    start_epoch: int = 160,
    steps_per_epoch: int,
    beta: float = 0.9999,
) -> Callable[[Array], Array]:
    """Deferred re-weighting (Cao et al. 2019): class weights as a function of the step.

    Uniform weights before ``start_epoch``, class-balanced weights
    (``class_balanced_weights(class_counts, beta=beta)``) from then on.
    """
    weights = jnp.asarray(class_balanced_weights(class_counts, beta=beta))
    on = epoch_switch(start_epoch, steps_per_epoch=steps_per_epoch)
    ones = jnp.ones_like(weights)
    return lambda step: jnp.where(on(step), weights, ones)


def start_step(start_epoch: int, *, steps_per_epoch: int) -> int:
    """First step of epoch ``start_epoch``, e.g. for ``gradient_adjustment(start_step=...)``."""
    _check_spe(steps_per_epoch)
    return int(np.int64(start_epoch) * steps_per_epoch)
