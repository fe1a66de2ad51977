"""Flax NNX models. Every model maps images to ``(logits, features)``.

``create_model(name, *, num_classes, head, rngs)`` builds one by name; the
registry lists the valid names in its error message.
"""

from __future__ import annotations

import inspect

import jax
from flax import nnx

from lt_jax.models import kernels
from lt_jax.models.heads import HEADS, CosineHead, LinearHead, LWSScale, tau_normalize
from lt_jax.models.resnet import (
    ResNet,
    load_torchvision_weights,
    resnet50,
    resnet152_places,
    resnext50_32x4d,
)
from lt_jax.models.resnet_cifar import ResNetCifar, SmallCNN, resnet32

MODELS = {
    "small_cnn": SmallCNN,
    "resnet32": resnet32,
    "resnet50": resnet50,
    "resnext50_32x4d": resnext50_32x4d,
    "resnet152_places": resnet152_places,
}


def frozen_param_labels(model, params):
    """ "frozen" / "train" label of every parameter: a model's frozen trunk never updates
    (no weight decay either). Models without a frozen part train everything."""
    num_frozen = getattr(model, "num_frozen", 0)

    def label(path, _):
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        if not num_frozen:
            return "train"
        if keys[0] in ("stem", "stem_bn"):
            return "frozen"
        if keys[0] == "blocks" and int(keys[1]) < num_frozen:
            return "frozen"
        return "train"

    return jax.tree_util.tree_map_with_path(label, params)


def create_model(
    name: str,
    *,
    num_classes: int,
    head: str = "linear",
    rngs: nnx.Rngs,
    input_shape: tuple[int, int, int] | None = None,
    **kw,
):
    """Model ``name`` with a ``head`` classifier of ``num_classes``.

    ``input_shape`` (H, W, C) adapts the model to the data: every model takes C input
    channels; models with a fixed-size dense layer (the small CNN) also take the spatial
    size (their ``image_size`` argument), the ResNets pool globally and take any size.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(sorted(HEADS))}")
    build = MODELS[name]
    if input_shape is not None:
        kw["in_channels"] = int(input_shape[-1])
        init = build.__init__ if isinstance(build, type) else build  # nnx hides class signatures
        if "image_size" in inspect.signature(init).parameters:
            kw["image_size"] = int(input_shape[0])
    return build(num_classes=num_classes, head=head, rngs=rngs, **kw)


__all__ = [
    "HEADS",
    "MODELS",
    "CosineHead",
    "LWSScale",
    "LinearHead",
    "ResNet",
    "ResNetCifar",
    "SmallCNN",
    "create_model",
    "frozen_param_labels",
    "kernels",
    "load_torchvision_weights",
    "resnet152_places",
    "resnet32",
    "resnet50",
    "resnext50_32x4d",
    "tau_normalize",
]
