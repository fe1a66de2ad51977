"""Baseline long-tailed losses (spec section 2).

Every loss takes ``logits`` (or cosine logits) of shape [B, C] and integer
``labels`` of shape [B] and returns the per-example loss of shape [B]; the
caller reduces. The math is written once per example and vmapped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lt_jax.losses import _common as c

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def softmax_cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, class_weights: ArrayLike | None = None
) -> Array:
    r"""Softmax cross-entropy, optionally weighted per class.

    .. math:: \ell_i = -w_{y_i} \log \mathrm{softmax}(z_i)_{y_i}

    Args:
      logits: [B, C] logits.
      labels: [B] integer labels.
      class_weights: optional [C] weights ``w``; the loss of example i is scaled
        by ``w[y_i]``. (PyTorch's weighted mean divides by the sum of the weights
        in the batch: reduce with :func:`weighted_mean` for that.)

    Returns:
      [B] per-example losses.

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> print(losses.softmax_cross_entropy(jnp.zeros((1, 4)), jnp.array([2])))
      [1.3862944]
    """
    c.check_logits_labels(logits, labels, None)
    num_classes = jnp.shape(logits)[1]
    weights = c.check_class_weights(class_weights, num_classes)
    logits = jnp.asarray(logits, c.compute_dtype(logits))

    def single(z, y):
        return c.weighted(c.ce_single(z, y), y, weights)

    return jax.vmap(single)(logits, labels)


def weighted_mean(per_example: ArrayLike, labels: ArrayLike, class_weights: ArrayLike) -> Array:
    r"""PyTorch's weighted mean of already weighted per-example losses.

    .. math:: L = \frac{\sum_i w_{y_i} \ell_i}{\sum_i w_{y_i}}

    ``per_example`` holds :math:`w_{y_i} \ell_i` (what the class-weighted losses here
    return); this is the reduction of ``F.cross_entropy(z, y, weight=w)``, which the
    LDAM-DRW and CE-DRW releases use. Focal losses average over the batch instead
    (their releases take ``reduction='none'`` and then ``.mean()``).

    Examples:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([1.0, 3.0])
      >>> print(weighted_mean(jnp.array([2.0, 3.0, 6.0]), jnp.array([0, 0, 1]), w))
      2.2
    """
    w = jnp.asarray(class_weights)[jnp.asarray(labels)]
    return jnp.sum(jnp.asarray(per_example)) / jnp.sum(w)


def _focal_inputs(logits, labels, gamma, class_weights):
    """The focal losses' checks: (logits in the compute dtype, checked class weights)."""
    if not gamma >= 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    c.check_logits_labels(logits, labels, None)
    weights = c.check_class_weights(class_weights, jnp.shape(logits)[1])
    return jnp.asarray(logits, c.compute_dtype(logits)), weights


def _focal_modulation(log_p: Array, gamma: float) -> Array:
    """(1 - p)^gamma computed from log p; finite gradient also when p -> 1."""
    one_minus_p = jnp.maximum(-jnp.expm1(log_p), 1e-30)
    return one_minus_p**gamma


def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 1.0,
    class_weights: ArrayLike | None = None,
) -> Array:
    r"""Focal loss (Lin et al., ICCV 2017), optionally class weighted.

    .. math:: \ell_i = -w_{y_i} (1 - p_{i y_i})^\gamma \log p_{i y_i},
              \quad p_i = \mathrm{softmax}(z_i)

    With ``class_weights=class_balanced_weights(counts)`` this is the CB focal
    loss of Cui et al. (CVPR 2019). ``gamma = 0`` is cross-entropy.

    Args:
      logits: [B, C] logits.
      labels: [B] integer labels.
      gamma: focusing parameter, >= 0.
      class_weights: optional [C] per-class weights.

    Returns:
      [B] per-example losses.

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> print(losses.focal_loss(jnp.zeros((1, 2)), jnp.array([0]), gamma=1.0).round(4))
      [0.3466]
    """
    logits, weights = _focal_inputs(logits, labels, gamma, class_weights)

    def single(z, y):
        log_p = jax.nn.log_softmax(z)[y]
        loss = -log_p if gamma == 0 else -_focal_modulation(log_p, gamma) * log_p
        return c.weighted(loss, y, weights)

    return jax.vmap(single)(logits, labels)


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 1.0,
    class_weights: ArrayLike | None = None,
) -> Array:
    r"""Sigmoid focal loss over every class, optionally class weighted: the CB focal loss
    of Cui et al. (CVPR 2019) as its release computes it.

    .. math:: \ell_i = w_{y_i} \sum_j (1 - p^t_{ij})^\gamma
              \, \mathrm{BCE}(z_{ij}, \mathbb{1}[j = y_i]),
              \quad p^t_{ij} = \sigma(z_{ij}) \text{ if } j = y_i
              \text{ else } 1 - \sigma(z_{ij})

    One independent sigmoid per class (not a softmax): every non-target class adds its
    own modulated term, and the example's class weight scales all of them. In log space,
    as the release does: :math:`\mathrm{BCE} = \log(1 + e^{z}) - t z` and
    :math:`(1 - p^t)^\gamma = \exp(-\gamma t z - \gamma \log(1 + e^{-z}))` with
    :math:`t = \mathbb{1}[j = y_i]`, finite for any logit. The release divides the batch
    sum by the batch size: reduce with the mean. Pair it with the prior bias
    initialisation :math:`b_j = -\log(C - 1)` (``Method.head_bias_init``).

    Args:
      logits: [B, C] logits.
      labels: [B] integer labels.
      gamma: focusing parameter, >= 0 (0: class-weighted sigmoid cross-entropy).
      class_weights: optional [C] per-class weights (e.g. :func:`class_balanced_weights`).

    Returns:
      [B] per-example losses.

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> # zero logits, 2 classes: each term is 0.5 * log 2, two of them
      >>> print(losses.sigmoid_focal_loss(jnp.zeros((1, 2)), jnp.array([0])).round(4))
      [0.6931]
    """
    logits, weights = _focal_inputs(logits, labels, gamma, class_weights)

    def single(z, y):
        # One exp and one log1p per logit (at C = 1000 the loss is bound by them):
        # e = exp(-|z|) gives log(1 + e^z), sigma(z) and sigma(-z), each without cancellation.
        t = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)
        e = jnp.exp(-jnp.abs(z))
        softplus = jnp.maximum(z, 0) + jnp.log1p(e)
        bce = softplus - t * z
        if gamma == 0:
            return c.weighted(jnp.sum(bce), y, weights)
        if gamma == 1:  # 1 - p^t: sigma(-z) for the target, sigma(z) for the others
            r = 1 / (1 + e)
            modulator = jnp.where((t > 0) == (z >= 0), e * r, r)
        else:  # (1 - p^t)^gamma = exp(-gamma (t z + log(1 + e^-z))), finite for any z
            modulator = jnp.exp(-gamma * (softplus - (1 - t) * z))
        return c.weighted(jnp.sum(modulator * bce), y, weights)

    return jax.vmap(single)(logits, labels)


def class_balanced_weights(class_counts: ArrayLike, *, beta: float = 0.9999) -> np.ndarray:
    r"""Class-balanced weights from the effective number of samples (Cui et al. 2019).

    .. math:: w_j \propto \frac{1 - \beta}{1 - \beta^{n_j}}, \qquad \sum_j w_j = C

    ``beta = 0`` gives uniform weights; ``beta -> 1`` approaches inverse frequency.

    Args:
      class_counts: [C] training-set counts (host-side).
      beta: in [0, 1).

    Returns:
      [C] float32 weights summing to C.

    Examples:
      >>> from lt_jax import losses
      >>> print(losses.class_balanced_weights([100, 10], beta=0.9).round(4))
      [0.7889 1.2111]
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced beta must be in [0, 1), got {beta}")
    counts = c.class_counts_array(class_counts)
    xp = c.xp_of(counts)
    if beta == 0.0:
        return c.as_vector(xp.ones_like(counts))
    # 1 - beta^n without cancellation: -expm1(n log beta).
    effective = -xp.expm1(counts * np.log(beta)) / (1.0 - beta)
    w = 1.0 / effective
    return c.as_vector(w * counts.shape[0] / w.sum())


def ldam_margins(class_counts: ArrayLike, *, max_m: float = 0.5) -> np.ndarray:
    r"""LDAM margins (Cao et al., NeurIPS 2019).

    .. math:: m_j = \mathrm{max\_m} \cdot n_j^{-1/4} / \max_k n_k^{-1/4}

    Balanced counts give ``max_m`` for every class.

    Examples:
      >>> from lt_jax import losses
      >>> print(losses.ldam_margins([10000, 1], max_m=0.5))
      [0.05 0.5 ]
    """
    counts = c.class_counts_array(class_counts)
    m = counts**-0.25
    return c.as_vector(m * (max_m / m.max()))


def _margin_ce_single(cos, y, margins, scale, weights):
    adjusted = cos - margins[y] * jax.nn.one_hot(y, cos.shape[0], dtype=cos.dtype)
    return c.weighted(c.ce_single(scale * adjusted, y), y, weights)


def ldam_loss(
    cosines: ArrayLike,
    labels: ArrayLike,
    *,
    class_counts: ArrayLike,
    max_m: float = 0.5,
    s: float = 30.0,
    class_weights: ArrayLike | None = None,
) -> Array:
    r"""Label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

    .. math:: \ell_i = -w_{y_i} \log \mathrm{softmax}\big(s\,(c_i - m_{y_i} e_{y_i})\big)_{y_i}

    with ``m = ldam_margins(class_counts, max_m=max_m)`` on cosine logits ``c``.
    DRW (deferred re-weighting) passes ``class_weights=class_balanced_weights(...)``
    from epoch 160 of 200 (see ``lt_jax.optim.drw_weights``).

    Args:
      cosines: [B, C] cosine logits in [-1, 1].
      labels: [B] integer labels.
      class_counts: [C] training-set counts.
      max_m: largest margin (rarest class).
      s: logit scale.
      class_weights: optional [C] per-class weights.

    Returns:
      [B] per-example losses.

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> loss = losses.ldam_loss(jnp.zeros((1, 2)), jnp.array([1]), class_counts=[16, 1])
      >>> print(loss.round(4))
      [15.]
    """
    c.check_logits_labels(cosines, labels, len(class_counts))
    margins = jnp.asarray(ldam_margins(class_counts, max_m=max_m))
    weights = c.check_class_weights(class_weights, len(class_counts))
    cosines = jnp.asarray(cosines, c.compute_dtype(cosines))
    single = functools.partial(_margin_ce_single, margins=margins, scale=s, weights=weights)
    return jax.vmap(single)(cosines, labels)


def _log_counts(class_counts: ArrayLike) -> np.ndarray:
    counts = c.class_counts_array(class_counts)
    return c.as_vector(c.xp_of(counts).log(counts))


def _shifted_ce(logits, labels, shift):
    logits = jnp.asarray(logits, c.compute_dtype(logits))
    return jax.vmap(c.ce_single)(logits + jnp.asarray(shift, logits.dtype), labels)


def balanced_softmax_loss(
    logits: ArrayLike, labels: ArrayLike, *, class_counts: ArrayLike
) -> Array:
    r"""Balanced Softmax (Ren et al., NeurIPS 2020): CE on logits shifted by log n_j.

    .. math:: \ell_i = -\log \mathrm{softmax}(z_i + \log n)_{y_i}

    Predict with the raw logits. Balanced counts give plain cross-entropy.

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> z = jnp.zeros((1, 2))
      >>> print(losses.balanced_softmax_loss(z, jnp.array([1]), class_counts=[3, 1]).round(4))
      [1.3863]
    """
    c.check_logits_labels(logits, labels, len(class_counts))
    return _shifted_ce(logits, labels, _log_counts(class_counts))


def _log_prior(class_counts: ArrayLike) -> np.ndarray:
    counts = c.class_counts_array(class_counts)
    xp = c.xp_of(counts)
    return c.as_vector(xp.log(counts / counts.sum()))


def logit_adjusted_loss(
    logits: ArrayLike, labels: ArrayLike, *, class_counts: ArrayLike, tau: float = 1.0
) -> Array:
    r"""Logit-adjusted loss (Menon et al., ICLR 2021).

    .. math:: \ell_i = -\log \mathrm{softmax}(z_i + \tau \log \pi)_{y_i},
              \quad \pi = n / \textstyle\sum_k n_k

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> z = jnp.zeros((1, 2))
      >>> print(losses.logit_adjusted_loss(z, jnp.array([1]), class_counts=[3, 1]).round(4))
      [1.3863]
    """
    c.check_logits_labels(logits, labels, len(class_counts))
    return _shifted_ce(logits, labels, tau * _log_prior(class_counts))


def logit_adjust(logits: ArrayLike, *, class_counts: ArrayLike, tau: float = 1.0) -> Array:
    r"""Post-hoc logit adjustment (Menon et al., ICLR 2021): z - tau log pi.

    Predict with ``argmax`` of the result. Shape [..., C] -> [..., C].

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> print(losses.logit_adjust(jnp.zeros((1, 2)), class_counts=[1, 1]).round(4))
      [[0.6931 0.6931]]
    """
    log_prior = _log_prior(class_counts)
    if jnp.shape(logits)[-1] != len(log_prior):
        raise ValueError(
            f"class_counts has {len(log_prior)} classes but the logits have "
            f"{jnp.shape(logits)[-1]} columns"
        )
    logits = jnp.asarray(logits, c.compute_dtype(logits))
    return logits - tau * jnp.asarray(log_prior, logits.dtype)
