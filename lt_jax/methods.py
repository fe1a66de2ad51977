"""Every method of the spec as a recipe: head type, loss as a function of the step, prediction.

``get_method(name, loss_config, class_counts, steps_per_epoch)`` returns a :class:`Method`:

* ``head``: ``"linear"`` or ``"cosine"``;
* ``loss(logits, features, labels, key, step) -> [B]``: per-example loss, with any
  epoch-dependent part (DRW switch, KPS logit-scale GA, FBL curriculum) a
  function of the traced step, so one compiled train step serves the whole run;
* ``reduce(per_example, labels, step) -> scalar``: the batch loss (the mean; for the
  class-weighted losses PyTorch's weighted mean, ``sum(w_y l) / sum(w_y)``, as the
  releases' ``F.cross_entropy(..., weight=w)`` computes it);
* ``predict(logits) -> scores`` for evaluation (post-hoc logit adjustment);
* ``ga_start_step``: start of the optax gradient adjustment (``None``: off);
* ``prob_scale``: cosine heads' logit scale, so that calibration is measured on
  the probabilities the loss trains (``softmax(s * cos)``); ``sigmoid_probs``: the loss
  trains one sigmoid per class, calibration is measured on ``sigmoid(scores)``;
* ``head_bias_init``: a constant for the linear head's initial bias (``None``: the
  model's own initialisation), and ``head_bias_decay``: whether weight decay acts on
  that bias (the sigmoid CB focal release starts it at the prior -log(C - 1) and
  leaves it undecayed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from lt_jax import losses, optim

# The per-method loss defaults live in config_lib (config files read them without JAX);
# importable from here too.
from lt_jax.config_lib import EPOCH_KEYS, LOSS_DEFAULTS  # noqa: F401


def _mean(per_example, labels, step):
    del labels, step
    return jnp.mean(per_example)


class Method(NamedTuple):
    head: str
    loss: Callable
    predict: Callable = lambda logits: logits
    reduce: Callable = _mean
    ga_start_step: int | None = None
    prob_scale: float = 1.0  # softmax(prob_scale * scores) are the probabilities (ECE)
    head_bias_init: float | None = None
    head_bias_decay: bool = True
    sigmoid_probs: bool = False  # calibration on sigmoid(scores), one per class


def get_method(name: str, cfg, class_counts: np.ndarray, steps_per_epoch: int) -> Method:
    """Builds method ``name`` from the ``cfg.loss`` hyper-parameters (a ConfigDict/namespace)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](cfg, np.asarray(class_counts), steps_per_epoch)


def _ce(cfg, counts, spe):
    return Method("linear", lambda z, f, y, key, step: losses.softmax_cross_entropy(z, y))


def _focal(cfg, counts, spe):
    return Method("linear", lambda z, f, y, key, step: losses.focal_loss(z, y, gamma=cfg.gamma))


def _cb_focal(cfg, counts, spe):
    """Class-balanced focal loss. ``form="sigmoid"`` (``cb_focal``): Cui et al.'s release
    (richardaecn/class-balanced-loss, the published CIFAR-LT numbers), one sigmoid per
    class, the batch mean of the weighted sums, the head bias starting at the prior
    -log(C - 1) with no weight decay on it, calibration on the sigmoids.
    ``form="softmax"`` (``cb_focal_softmax``, lt_jax's ``cb_focal`` before 2026-12-02):
    ``w_y (1 - p_y)^gamma (-log p_y)`` over a softmax, averaged over the batch."""
    w = losses.class_balanced_weights(counts, beta=cfg.beta)
    if cfg.form == "softmax":
        return Method(
            "linear",
            lambda z, f, y, key, step: losses.focal_loss(z, y, gamma=cfg.gamma, class_weights=w),
        )
    if cfg.form != "sigmoid":
        raise ValueError(f"cb_focal form must be 'sigmoid' or 'softmax', got {cfg.form!r}")
    return Method(
        "linear",
        lambda z, f, y, key, step: losses.sigmoid_focal_loss(
            z, y, gamma=cfg.gamma, class_weights=w
        ),
        head_bias_init=-float(np.log(len(counts) - 1)),
        head_bias_decay=False,
        sigmoid_probs=True,
    )


def _ldam_drw(cfg, counts, spe):
    weights = optim.drw_weights(
        counts, start_epoch=cfg.drw_epoch, steps_per_epoch=spe, beta=cfg.beta
    )
    return Method(
        "cosine",
        lambda z, f, y, key, step: losses.ldam_loss(
            z, y, class_counts=counts, max_m=cfg.max_m, s=cfg.s, class_weights=weights(step)
        ),
        # The release's F.cross_entropy(s * z, y, weight=w): divided by the batch's sum of
        # w_y, not by B (in the DRW phase sum(w_y) / B averages about 0.17 on CIFAR-10-LT
        # IF 100, so a plain mean would cut the re-weighted gradient about six-fold).
        reduce=lambda per_example, y, step: losses.weighted_mean(per_example, y, weights(step)),
        prob_scale=cfg.s,
    )


def _balanced_softmax(cfg, counts, spe):
    return Method(
        "linear", lambda z, f, y, key, step: losses.balanced_softmax_loss(z, y, class_counts=counts)
    )


def _logit_adjusted(cfg, counts, spe):
    return Method(
        "linear",
        lambda z, f, y, key, step: losses.logit_adjusted_loss(
            z, y, class_counts=counts, tau=cfg.tau
        ),
    )


def _logit_adjust_posthoc(cfg, counts, spe):
    return _ce(cfg, counts, spe)._replace(
        predict=lambda z: losses.logit_adjust(z, class_counts=counts, tau=cfg.tau)
    )


def _kps(cfg, counts, spe, ga=False):
    ga_on = optim.epoch_switch(cfg.ga_epoch, steps_per_epoch=spe) if ga else None
    return Method(
        "cosine",
        lambda z, f, y, key, step: losses.kps_loss(
            z,
            y,
            class_counts=counts,
            s=cfg.s,
            max_m=cfg.max_m,
            ga=False if ga_on is None else ga_on(step),
            margin=cfg.margin,
        ),
        prob_scale=cfg.s,
    )


def _kps_ga(cfg, counts, spe):
    return _kps(cfg, counts, spe, ga=True)


def _kps_ga_optax(cfg, counts, spe):
    return _kps(cfg, counts, spe)._replace(
        ga_start_step=optim.start_step(cfg.ga_epoch, steps_per_epoch=spe)
    )


def _fbl(cfg, counts, spe):
    def loss(z, f, y, key, step):
        t = losses.fbl_curriculum(
            optim.epoch_of(step, spe).astype(jnp.float32),
            cfg.total_epochs,
            offset=cfg.offset,
            clamp=cfg.clamp,
        )
        return losses.fbl_loss(z, f, y, class_counts=counts, lam=cfg.lam, t=t)

    return Method("linear", loss)


def _gcl(cfg, counts, spe):
    return Method(
        "cosine",
        lambda z, f, y, key, step: losses.gcl_loss(
            z,
            y,
            class_counts=counts,
            key=key,
            s=cfg.s,
            m=cfg.m,
            noise_mul=cfg.noise_mul,
            focal_gamma=cfg.focal_gamma,
        ),
        prob_scale=cfg.s,
    )


METHODS = {
    "ce": _ce,
    "focal": _focal,
    "cb_focal": _cb_focal,
    "cb_focal_softmax": _cb_focal,
    "ldam_drw": _ldam_drw,
    "balanced_softmax": _balanced_softmax,
    "logit_adjusted": _logit_adjusted,
    "logit_adjust_posthoc": _logit_adjust_posthoc,
    "kps": _kps,
    "kps_ga": _kps_ga,
    "kps_ga_optax": _kps_ga_optax,
    "fbl": _fbl,
    "gcl": _gcl,
}
