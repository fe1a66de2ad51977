"""FBL, the feature-balanced loss (spec section 4).

M. Li, Y.-M. Cheung, J. Jiang, "Feature-Balanced Loss for Long-Tailed Visual
Recognition", ICME 2022. Released code: juyongjiang/FBL.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lt_jax.losses import _common as c

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_NORM_EPS = 1e-12


def fbl_stimulus_weights(class_counts: ArrayLike) -> np.ndarray:
    r"""Class-based stimulus weights of FBL, 0 for the head and 1 for the tail.

    .. math:: \lambda_j = \frac{\ln n_{\max} - \ln n_j}{\ln n_{\max} - \ln n_{\min}}

    Balanced counts give all zeros (FBL reduces to cross-entropy).

    Examples:
      >>> from lt_jax import losses
      >>> print(losses.fbl_stimulus_weights([100, 10, 1]))
      [0.  0.5 1. ]
    """
    counts = c.class_counts_array(class_counts)
    return c.as_vector(c.log_ratio_to_max(counts))


def fbl_curriculum(epoch: ArrayLike, total_epochs: int, *, offset: int = 10, clamp: bool = False):
    r"""Curriculum factor t(e) of FBL: grows quadratically over training.

    .. math:: t(e) = \left(\frac{e}{E - \mathrm{offset}}\right)^2

    ``e`` is the 0-indexed epoch (may be fractional or a traced scalar), ``E``
    the total number of epochs. The release does not clamp (t(199) = 1.097 for
    E = 200); ``clamp=True`` caps t at 1.

    Examples:
      >>> from lt_jax import losses
      >>> round(losses.fbl_curriculum(100, 200), 4)
      0.277
      >>> losses.fbl_curriculum(199, 200, clamp=True)
      1.0
    """
    denom = total_epochs - offset
    if denom <= 0:
        raise ValueError(
            f"FBL curriculum needs total_epochs > offset, got total_epochs={total_epochs}, "
            f"offset={offset}"
        )
    t = (epoch / denom) ** 2
    if clamp:
        t = min(t, 1.0) if isinstance(t, int | float) else jnp.minimum(t, 1.0)
    return t


def _safe_norm(x: Array) -> Array:
    """|x| with a zero (not NaN) gradient at x = 0."""
    sq = jnp.sum(x * x)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _fbl_single(z, f, y, stimulus, lam, t):
    adjusted = z - t * lam * stimulus / (_safe_norm(f) + _NORM_EPS)
    return c.ce_single(adjusted, y)


def fbl_loss(
    logits: ArrayLike,
    features: ArrayLike,
    labels: ArrayLike,
    *,
    class_counts: ArrayLike,
    lam: float = 60.0,
    t: float | ArrayLike = 1.0,
) -> Array:
    r"""Feature-balanced loss: a class stimulus divided by the feature norm.

    .. math:: \hat z_{ij} = z_{ij} - t\,\lambda\,\frac{\lambda_j}{\lVert f_i \rVert + 10^{-12}},
              \qquad \ell_i = -\log \mathrm{softmax}(\hat z_i)_{y_i}

    for every class j, with ``lambda_j = fbl_stimulus_weights(class_counts)``.
    The gradient flows into the features (not detached), which pushes tail
    examples towards larger feature norms. Predict with the raw logits.

    Args:
      logits: [B, C] linear logits.
      features: [B, D] penultimate features.
      labels: [B] integer labels.
      class_counts: [C] training-set counts.
      lam: stimulus strength (60 for CIFAR, 150 for ImageNet-LT/iNat/Places-LT).
      t: curriculum factor, usually ``fbl_curriculum(epoch, total_epochs)``.

    Returns:
      [B] per-example losses.

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> z, f = jnp.zeros((1, 2)), jnp.array([[3.0, 4.0]])
      >>> print(losses.fbl_loss(z, f, jnp.array([0]), class_counts=[10, 1], lam=5.0).round(4))
      [0.3133]
    """
    c.check_logits_labels(logits, labels, len(class_counts))
    if jnp.ndim(features) != 2 or jnp.shape(features)[0] != jnp.shape(logits)[0]:
        raise ValueError(
            f"features must be [batch, dim] with batch {jnp.shape(logits)[0]}, "
            f"got shape {jnp.shape(features)}"
        )
    stimulus = jnp.asarray(fbl_stimulus_weights(class_counts))
    dtype = c.compute_dtype(logits)
    logits = jnp.asarray(logits, dtype)
    features = jnp.asarray(features, dtype)
    single = functools.partial(_fbl_single, stimulus=stimulus, lam=lam, t=t)
    return jax.vmap(single)(logits, features, labels)
