"""Gradient adjustment (GA) of KPS as an optax gradient transformation.

The KPS paper's GA re-balances, per class, the gradient signals that a
classifier column receives from *stimulus* samples (examples of that class,
positive signals) and *inhibit* samples (examples of other classes, negative
signals), so that tail classifiers are not flooded by negative signals.

lt_jax implements it as an ``optax.GradientTransformationExtraArgs``:

1. The train step splits the classifier gradient in two with
   :func:`split_head_gradient`: the gradient w.r.t. the logits, masked by the
   one-hot labels (stimulus) or by their complement (inhibit), is pulled back
   through the head separately. It also returns the per-class logit-space
   magnitudes ``P_j = sum_i |g_ij| [y_i = j]`` and ``N_j = sum_i |g_ij| [y_i != j]``.
2. :func:`gradient_adjustment` receives those as keyword extra args, keeps the
   running magnitudes in its ``NamedTuple`` state and replaces the head's
   update by ``stimulus + r_j * inhibit`` per class column, with
   ``r_j = clip((P_j / N_j)^alpha, r_min, 1)``. Every other parameter passes
   through unchanged.

Why logit-space magnitudes: for softmax cross-entropy ``sum_i (p_ij - y_ij)``
is zero at a fit of class j's logit, so a class that receives as much positive
as negative signal has ``P_j = N_j`` and ``r_j = 1``; with balanced data and
uniform predictions this holds exactly, which makes GA the identity there. Tail
classes, whose few positives are outweighed by the negatives from every head
example, get ``P_j < N_j`` and a damped inhibit part.

Example::

  tx = optax.chain(
      gradient_adjustment(num_classes, head_path=("head",), start_step=120 * spe),
      optax.add_decayed_weights(2e-4),
      optax.sgd(lr, momentum=0.9),
  )
  parts = split_head_gradient(dlogits, labels, head_vjp)
  updates, opt_state = tx.update(grads, opt_state, params, **parts._asdict())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class GradientParts(NamedTuple):
    """The classifier gradient split by the sign of the signal, per class.

    Field names are the keyword extra args of :func:`gradient_adjustment`, so
    ``tx.update(grads, state, params, **parts._asdict())`` feeds the transform.
    """

    ga_stimulus: Any  # head-structured pytree: gradient from examples of class j.
    ga_inhibit: Any  # head-structured pytree: gradient from the other examples.
    ga_stimulus_mag: Array  # float32 [C]: sum_i |dL/dz_ij| [y_i = j].
    ga_inhibit_mag: Array  # float32 [C]: sum_i |dL/dz_ij| [y_i != j].


def split_head_gradient(
    logits_grad: Array, labels: Array, head_vjp: Callable[[Array], tuple[Any, ...]]
) -> GradientParts:
    """Splits the head's gradient into stimulus and inhibit parts.

    Args:
      logits_grad: [B, C] gradient of the (reduced) loss w.r.t. the logits.
      labels: [B] integer labels.
      head_vjp: the pullback returned by ``jax.vjp(lambda hp: head(hp, feats), head_params)``;
        it maps a [B, C] cotangent to a 1-tuple holding the head-params gradient.

    Returns:
      ``GradientParts``; ``ga_stimulus + ga_inhibit`` equals the plain head gradient.
    """
    onehot = jax.nn.one_hot(labels, logits_grad.shape[-1], dtype=logits_grad.dtype)
    stimulus_g = logits_grad * onehot
    inhibit_g = logits_grad - stimulus_g
    (stimulus,) = head_vjp(stimulus_g)
    (inhibit,) = head_vjp(inhibit_g)
    magnitude = jnp.abs(logits_grad).astype(jnp.float32)
    return GradientParts(
        ga_stimulus=stimulus,
        ga_inhibit=inhibit,
        ga_stimulus_mag=jnp.sum(magnitude * onehot, axis=0),
        ga_inhibit_mag=jnp.sum(magnitude * (1.0 - onehot), axis=0),
    )


class GradientAdjustmentState(NamedTuple):
    """State of :func:`gradient_adjustment`."""

    count: Array  # int32 []: number of updates seen.
    stimulus_mag: Array  # float32 [C]: running P_j.
    inhibit_mag: Array  # float32 [C]: running N_j.


def inhibit_ratio(state: GradientAdjustmentState, *, alpha: float, r_min: float) -> Array:
    """r_j = clip((P_j / N_j)^alpha, r_min, 1); 1 where nothing was accumulated."""
    seen = state.inhibit_mag > 0
    ratio = jnp.where(seen, state.stimulus_mag / jnp.where(seen, state.inhibit_mag, 1.0), 1.0)
    return jnp.clip(ratio**alpha, r_min, 1.0)


def _path_keys(path) -> tuple[Any, ...]:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def _leaves_by_keys(tree) -> dict[tuple[Any, ...], Array]:
    return {_path_keys(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def gradient_adjustment(
    num_classes: int,
    *,
    head_path: Sequence[Any] = ("head",),
    alpha: float = 1.0,
    r_min: float = 0.1,
    decay: float = 1.0,
    start_step: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """KPS gradient adjustment acting on the classifier parameters only.

    Args:
      num_classes: C; every head leaf has the class axis last ([D, C] kernel,
        [C] bias or per-class scale).
      head_path: keys leading from the root of the parameter tree to the
        classifier's subtree, e.g. ``("head",)``.
      alpha: exponent of the ratio P_j / N_j.
      r_min: smallest factor applied to the inhibit part.
      decay: running-magnitude decay; 1.0 accumulates over all of training,
        < 1 keeps an exponential moving average (the ratio is unaffected by
        the EMA's bias).
      start_step: updates before this step pass through unchanged (the
        magnitudes are accumulated from step 0 on).

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update`` requires the
      keyword extra args of :class:`GradientParts`.
    """
    if not 0.0 <= r_min <= 1.0:
        raise ValueError(f"r_min must be in [0, 1], got {r_min}")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    head_path = tuple(head_path)

    def init_fn(params):
        del params
        # Two distinct buffers: a state holding one array twice cannot be donated.
        return GradientAdjustmentState(
            count=jnp.zeros([], jnp.int32),
            stimulus_mag=jnp.zeros((num_classes,), jnp.float32),
            inhibit_mag=jnp.zeros((num_classes,), jnp.float32),
        )

    def update_fn(
        updates,
        state,
        params=None,
        *,
        ga_stimulus,
        ga_inhibit,
        ga_stimulus_mag,
        ga_inhibit_mag,
        **extra_args,
    ):
        del params, extra_args
        if jnp.shape(ga_stimulus_mag) != (num_classes,):
            raise ValueError(
                f"GA: got per-class magnitudes of shape {jnp.shape(ga_stimulus_mag)} for "
                f"num_classes={num_classes}; the class axis of the head must be last"
            )
        state = GradientAdjustmentState(
            count=optax.safe_increment(state.count),
            stimulus_mag=decay * state.stimulus_mag + ga_stimulus_mag,
            inhibit_mag=decay * state.inhibit_mag + ga_inhibit_mag,
        )
        ratio = inhibit_ratio(state, alpha=alpha, r_min=r_min)
        ratio = jnp.where(state.count > start_step, ratio, 1.0)
        stimulus = _leaves_by_keys(ga_stimulus)
        inhibit = _leaves_by_keys(ga_inhibit)
        found = []

        def adjust(path, update):
            keys = _path_keys(path)
            if keys[: len(head_path)] != head_path:
                return update
            rest = keys[len(head_path) :]
            if rest not in stimulus:
                raise ValueError(f"GA: no stimulus/inhibit gradient for head parameter {keys}")
            if update.shape[-1:] != (num_classes,):
                raise ValueError(
                    f"GA: head parameter {keys} has shape {update.shape}; the class axis "
                    f"({num_classes}) must be last"
                )
            found.append(keys)
            new = stimulus[rest] + ratio.astype(update.dtype) * inhibit[rest]
            return new.astype(update.dtype)

        updates = jax.tree_util.tree_map_with_path(adjust, updates)
        if not found:
            raise ValueError(f"GA: no parameter under head_path {head_path} in the updates")
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
