"""The optimizer of a stage, from its config block.

SGD with momentum and weight decay in PyTorch's semantics (the decay added to the
gradient before momentum), the recipe's learning-rate schedule, and the gradient
adjustment transform first in the chain when a method uses it (GA acts on the raw
gradients, before weight decay).
"""

from __future__ import annotations

import jax
import optax

from lt_jax.optim import gradient_adjustment as ga_lib
from lt_jax.optim import schedules

SCHEDULES = ("step", "cosine")


def learning_rate(opt, steps_per_epoch: int):
    """The schedule of ``opt`` (``schedule``, ``lr``, ``warmup_epochs`` and the step
    schedule's ``lr_boundaries`` / ``lr_factors`` or the cosine's ``epochs``)."""
    if opt.schedule == "step":
        return schedules.warmup_step_decay(
            opt.lr,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=opt.warmup_epochs,
            boundaries=tuple(opt.lr_boundaries),
            factors=tuple(opt.lr_factors),
        )
    if opt.schedule == "cosine":
        return schedules.warmup_cosine(
            opt.lr,
            steps_per_epoch=steps_per_epoch,
            total_epochs=opt.epochs,
            warmup_epochs=opt.warmup_epochs,
        )
    raise ValueError(f"unknown schedule {opt.schedule!r}; valid: {', '.join(SCHEDULES)}")


def _all_but_head_bias(head_path: tuple[str, ...]):
    """Weight-decay mask: every parameter but the bias of the head at ``head_path`` in the
    parameter tree (``("head",)`` in a model's, ``()`` when the tree is the head)."""
    bias = [*head_path, "bias"]

    def mask(params):
        def keep(path, _):
            keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
            return keys[: len(bias)] != bias

        return jax.tree_util.tree_map_with_path(keep, params)

    return mask


def create_optimizer(
    opt,
    steps_per_epoch: int,
    *,
    ga_start_step: int | None = None,
    num_classes: int = 0,
    head_bias_decay: bool = True,
    head_path: tuple[str, ...] = ("head",),
):
    """``(tx, lr_fn)`` of a stage; ``opt`` is the top-level config (stage 1) or
    ``config.stage2``. With ``ga_start_step`` the chain starts with
    ``gradient_adjustment(num_classes, ...)`` over the ``head`` parameters, configured by
    ``opt.ga`` (``alpha``, ``r_min``, ``decay``). ``head_bias_decay=False`` exempts the
    bias of the head at ``head_path`` from weight decay (``Method.head_bias_decay``)."""
    lr = learning_rate(opt, steps_per_epoch)
    parts = []
    if ga_start_step is not None:
        parts.append(
            ga_lib.gradient_adjustment(
                num_classes,
                head_path=("head",),
                alpha=opt.ga.alpha,
                r_min=opt.ga.r_min,
                decay=opt.ga.decay,
                start_step=ga_start_step,
            )
        )
    mask = None if head_bias_decay else _all_but_head_bias(tuple(head_path))
    parts += [
        optax.add_decayed_weights(opt.wd, mask=mask),
        optax.sgd(lr, momentum=opt.momentum),
    ]
    return optax.chain(*parts), lr
