"""GCL, Gaussian clouded logits (spec section 5).

M. Li, Y.-M. Cheung, Y. Lu, "Long-tailed Visual Recognition via Gaussian Clouded
Logit Adjustment", CVPR 2022. Released code: Keke921/GCLLoss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lt_jax.losses import _common as c

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def gcl_cloud_sizes(class_counts: ArrayLike) -> np.ndarray:
    r"""Cloud size of every class: 0 for the head, 1 for the rarest class.

    .. math:: a_j = \frac{\ln n_{\max} - \ln n_j}{\max_k (\ln n_{\max} - \ln n_k)}

    Balanced counts give all zeros (no noise: GCL reduces to scaled cosine CE).

    Examples:
      >>> from lt_jax import losses
      >>> print(losses.gcl_cloud_sizes([100, 10, 1]))
      [0.  0.5 1. ]
    """
    counts = c.class_counts_array(class_counts)
    return c.as_vector(c.log_ratio_to_max(counts))


def cloud_noise(key: Array, shape, *, sigma: float = 1.0 / 3.0) -> Array:
    """|e| with e ~ N(0, sigma^2) clipped to [-1, 1] (float32)."""
    return jnp.abs(jnp.clip(sigma * jax.random.normal(key, shape, jnp.float32), -1.0, 1.0))


def gcl_noise(key: ArrayLike, shape, *, sigma: float = 1.0 / 3.0) -> Array:
    """The [B, C] one-sided noise |e| that :func:`gcl_loss` draws from ``key``.

    Example i uses ``jax.random.split(key, B)[i]``. Exposed so that a reference
    implementation can be fed exactly the noise of a step.
    """
    batch, num_classes = shape
    keys = jax.random.split(key, batch)
    return jax.vmap(lambda k: cloud_noise(k, (num_classes,), sigma=sigma))(keys)


def _gcl_single(cos, y, noise, clouds, s, m, noise_mul, focal_gamma):
    noise = noise.astype(cos.dtype)
    margin = m * jax.nn.one_hot(y, cos.shape[0], dtype=cos.dtype)
    loss = c.ce_single(s * (cos - noise_mul * noise * clouds - margin), y)
    if focal_gamma:
        p = jax.lax.stop_gradient(jnp.exp(-loss))
        loss = (1.0 - p) ** focal_gamma * loss
    return loss


def gcl_loss(
    cosines: ArrayLike,
    labels: ArrayLike,
    *,
    class_counts: ArrayLike,
    key: ArrayLike,
    s: float = 30.0,
    m: float = 0.0,
    noise_mul: float = 0.5,
    sigma: float = 1.0 / 3.0,
    focal_gamma: float = 0.0,
) -> Array:
    r"""Gaussian clouded logit loss on cosine logits.

    .. math:: \ell_i = (1 - p_i)^\gamma\,
              \mathrm{CE}\big(s\,(c_i - \kappa\,|e_i| \odot a - m\,e_{y_i}),\ y_i\big),
              \quad e_{ij} = \mathrm{clip}(\mathcal N(0, \sigma^2), -1, 1)

    The one-sided noise is applied to **all** classes (target included), scaled
    by the cloud size ``a = gcl_cloud_sizes(class_counts)``, so tail classes get
    larger clouds. ``p = exp(-CE)`` under stop-gradient (stage 2 uses
    ``focal_gamma = 1``). Noise is fresh per (example, class) and fully
    determined by ``key``: fold the step into the key for a fresh draw per
    step. Predict with the raw cosines.

    Args:
      cosines: [B, C] cosine logits.
      labels: [B] integer labels.
      class_counts: [C] training-set counts.
      key: a PRNG key (typed or raw uint32). Example i uses
        ``jax.random.split(key, B)[i]`` and draws ``normal(k, (C,))`` from it.
      s: logit scale (30 stage 1, 20 stage 2 on CIFAR).
      m: target margin (0 stage 1, 0.1 stage 2).
      noise_mul: kappa, the cloud strength (0.5 CIFAR, 1 Places-LT).
      sigma: noise standard deviation before clipping.
      focal_gamma: focal modulation exponent (0 = plain CE).

    Returns:
      [B] per-example losses.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from lt_jax import losses
      >>> cos = jnp.zeros((2, 3))
      >>> loss = losses.gcl_loss(cos, jnp.array([0, 2]), class_counts=[100, 10, 1],
      ...                        key=jax.random.key(0))
      >>> print(loss.shape, bool((loss > 0).all()))
      (2,) True
    """
    c.check_logits_labels(cosines, labels, len(class_counts))
    if not focal_gamma >= 0:
        raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
    clouds = jnp.asarray(gcl_cloud_sizes(class_counts))
    cosines = jnp.asarray(cosines, c.compute_dtype(cosines))
    noise = gcl_noise(key, cosines.shape, sigma=sigma)
    single = functools.partial(
        _gcl_single, clouds=clouds, s=s, m=m, noise_mul=noise_mul, focal_gamma=focal_gamma
    )
    return jax.vmap(single)(cosines, labels, noise)
