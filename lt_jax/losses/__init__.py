"""Long-tailed classification losses.

Every loss is a pure function returning the per-example loss of shape [B]:
the math is written once per example and vmapped over the batch; there is no
``jax.jit`` inside the library. Hyper-parameters are keyword-only. Per-class
vectors are public helpers that take the training-set class counts first.

``get_loss(name)`` maps the names used in configs to the functions.
"""

from lt_jax.losses.baselines import (
    balanced_softmax_loss,
    class_balanced_weights,
    focal_loss,
    ldam_loss,
    ldam_margins,
    logit_adjust,
    logit_adjusted_loss,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    weighted_mean,
)
from lt_jax.losses.fbl import fbl_curriculum, fbl_loss, fbl_stimulus_weights
from lt_jax.losses.gcl import gcl_cloud_sizes, gcl_loss
from lt_jax.losses.kps import kps_class_scale, kps_ga_scale, kps_loss, kps_margins

_LOSSES = {
    "ce": softmax_cross_entropy,
    "focal": focal_loss,
    "sigmoid_focal": sigmoid_focal_loss,
    "ldam": ldam_loss,
    "balanced_softmax": balanced_softmax_loss,
    "logit_adjusted": logit_adjusted_loss,
    "kps": kps_loss,
    "fbl": fbl_loss,
    "gcl": gcl_loss,
}


def loss_names() -> tuple[str, ...]:
    """The names ``get_loss`` accepts."""
    return tuple(_LOSSES)


def get_loss(name: str):
    """Returns the loss function registered under ``name``.

    Examples:
      >>> from lt_jax import losses
      >>> losses.get_loss("kps") is losses.kps_loss
      True

    Raises:
      ValueError: for an unknown name; the message lists the valid names.
    """
    try:
        return _LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss {name!r}; valid names: {', '.join(sorted(_LOSSES))}"
        ) from None


__all__ = [
    "balanced_softmax_loss",
    "class_balanced_weights",
    "fbl_curriculum",
    "fbl_loss",
    "fbl_stimulus_weights",
    "focal_loss",
    "gcl_cloud_sizes",
    "gcl_loss",
    "get_loss",
    "kps_class_scale",
    "kps_ga_scale",
    "kps_loss",
    "kps_margins",
    "ldam_loss",
    "ldam_margins",
    "logit_adjust",
    "logit_adjusted_loss",
    "loss_names",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "weighted_mean",
]
