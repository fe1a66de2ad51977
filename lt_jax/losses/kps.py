"""KPS loss: class-dependent cosine scale plus tail-larger margins (spec section 3).

M. Li et al., "Key Point Sensitive Loss for Long-tailed Visual Recognition",
TPAMI 2022; M. Li, *Advances in Long-Tailed Visual Recognition*, thesis, 2022.
Released code: Keke921/KPSLoss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lt_jax.losses import _common as c

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_LN50 = float(np.log(50.0))
MARGIN_FORMS = ("closed_form", "mirror")


def kps_class_scale(class_counts: ArrayLike) -> np.ndarray:
    r"""Per-class cosine scale of KPS: 1 for the rarest class, larger for the head.

    .. math:: \tilde s_j = \ln(50\, n_j / n_{\min}) / \ln 50

    Examples:
      >>> from lt_jax import losses
      >>> print(losses.kps_class_scale([5000, 50]).round(4))
      [2.1772 1.    ]
    """
    counts = c.class_counts_array(class_counts)
    xp = c.xp_of(counts)
    return c.as_vector(xp.log(50.0 * counts / counts.min()) / _LN50)


def _check_margin_form(margin: str, counts) -> None:
    if margin not in MARGIN_FORMS:
        raise ValueError(f"unknown KPS margin form {margin!r}; valid: {', '.join(MARGIN_FORMS)}")
    if margin == "mirror" and isinstance(counts, np.ndarray) and (np.diff(counts) > 0).any():
        raise ValueError(
            "margin='mirror' reverses the class vector as the release does and is only "
            "meaningful for counts sorted head first (non-increasing); use "
            "margin='closed_form' for any class order"
        )


def _mirror_factor(class_counts: ArrayLike, margin: str):
    """g_j = s~ of the mirrored class: 1 for the head, s~_max for the tail.

    Closed form (any class order): g_j = 1 + ln(n_max / n_j) / ln 50.
    Mirror (release, sorted head first): g_j = s~_{C-1-j}.
    """
    counts = c.class_counts_array(class_counts)
    _check_margin_form(margin, counts)
    xp = c.xp_of(counts)
    if margin == "mirror":
        return (xp.log(50.0 * counts / counts.min()) / _LN50)[::-1]
    return 1.0 + xp.log(counts.max() / counts) / _LN50


def kps_margins(
    class_counts: ArrayLike, *, max_m: float = 0.2, margin: str = "closed_form"
) -> np.ndarray:
    r"""KPS margins, larger for tail classes; the rarest class gets ``max_m``.

    Closed form (default, any class order):

    .. math:: m_j = \mathrm{max\_m}\,
              \frac{\ln 50 + \ln(n_{\max}/n_j)}{\ln 50 + \ln(n_{\max}/n_{\min})}

    ``margin="mirror"``: the release's ``m_j = max_m * s~_{C-1-j} / max_k s~_k``
    (classes sorted head first). Balanced counts give ``max_m`` everywhere.

    Examples:
      >>> from lt_jax import losses
      >>> print(losses.kps_margins([5000, 50], max_m=0.2).round(4))
      [0.0919 0.2   ]
    """
    g = _mirror_factor(class_counts, margin)
    return c.as_vector(max_m * g / g.max())


def kps_ga_scale(
    class_counts: ArrayLike, *, s: float = 15.0, cap: float = 50.0, margin: str = "closed_form"
) -> np.ndarray:
    r"""Per-class logit scale of the released ("logit-scale") gradient adjustment.

    .. math:: S_j = \mathrm{clip}(s\, g_j,\ s,\ \mathrm{cap}), \quad
              g_j = 1 + \ln(n_{\max}/n_j)/\ln 50

    (``margin="mirror"``: ``g_j = s~_{C-1-j}``, bit-parity with the release on
    sorted counts.) Head classes keep ``s``; the rarest class gets ``s * s~_max``.

    Examples:
      >>> from lt_jax import losses
      >>> print(losses.kps_ga_scale([5000, 50]).round(3))
      [15.    32.658]
    """
    if cap < s:
        raise ValueError(f"GA cap ({cap}) must be >= the base scale s ({s})")
    g = _mirror_factor(class_counts, margin)
    xp = c.xp_of(g)
    return c.as_vector(xp.clip(s * g, s, cap))


def _kps_single(cos, y, class_scale, margins, sample_scale):
    adjusted = class_scale * cos - margins[y] * jax.nn.one_hot(y, cos.shape[0], dtype=cos.dtype)
    return c.ce_single(sample_scale[y] * adjusted, y)


def kps_loss(
    cosines: ArrayLike,
    labels: ArrayLike,
    *,
    class_counts: ArrayLike,
    s: float = 15.0,
    max_m: float = 0.2,
    ga: bool | ArrayLike = False,
    ga_cap: float = 50.0,
    margin: str = "closed_form",
) -> Array:
    r"""KPS loss on cosine logits, with the released logit-scale GA as an option.

    .. math:: u_{ij} = \tilde s_j c_{ij} - m_j [j = y_i], \qquad
              \ell_i = -\log \mathrm{softmax}(S_i u_i)_{y_i}

    with ``S_i = s`` and, when ``ga`` is true, ``S_i = kps_ga_scale(...)[y_i]``
    (the release switches it on from epoch 120 of 200). Predict with the raw
    cosines. Balanced counts give the additive-margin softmax
    ``CE(s (c - max_m e_y))``.

    Args:
      cosines: [B, C] cosine logits.
      labels: [B] integer labels.
      class_counts: [C] training-set counts.
      s: base logit scale.
      max_m: margin of the rarest class.
      ga: Python bool, or a traced boolean scalar (so one compiled step serves
        both phases of the schedule).
      ga_cap: upper clip of the GA scale.
      margin: ``"closed_form"`` or ``"mirror"`` (see ``kps_margins``).

    Returns:
      [B] per-example losses.

    Examples:
      >>> import jax.numpy as jnp
      >>> from lt_jax import losses
      >>> cos = jnp.array([[0.5, 0.1]])
      >>> print(losses.kps_loss(cos, jnp.array([1]), class_counts=[100, 2]).round(4))
      [16.5]
    """
    c.check_logits_labels(cosines, labels, len(class_counts))
    class_scale = jnp.asarray(kps_class_scale(class_counts))
    margins = jnp.asarray(kps_margins(class_counts, max_m=max_m, margin=margin))
    num_classes = class_scale.shape[0]
    if isinstance(ga, bool) and not ga:
        sample_scale = jnp.full((num_classes,), s, jnp.float32)
    else:
        ga_scale = jnp.asarray(kps_ga_scale(class_counts, s=s, cap=ga_cap, margin=margin))
        sample_scale = ga_scale if isinstance(ga, bool) else jnp.where(ga, ga_scale, s)
    cosines = jnp.asarray(cosines, c.compute_dtype(cosines))
    single = functools.partial(
        _kps_single, class_scale=class_scale, margins=margins, sample_scale=sample_scale
    )
    return jax.vmap(single)(cosines, labels)
