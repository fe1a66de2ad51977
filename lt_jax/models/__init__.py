"""Flax NNX models. Every model maps images to ``(logits, features)``.

``create_model(name, *, num_classes, head, rngs)`` builds one by name; the
registry lists the valid names in its error message.
"""

from __future__ import annotations

from flax import nnx

from lt_jax.models.heads import HEADS, CosineHead, LinearHead, LWSScale, tau_normalize
from lt_jax.models.resnet_cifar import ResNetCifar, SmallCNN, resnet32

MODELS = {
    "small_cnn": SmallCNN,
    "resnet32": resnet32,
}


def create_model(name: str, *, num_classes: int, head: str = "linear", rngs: nnx.Rngs, **kw):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(sorted(HEADS))}")
    return MODELS[name](num_classes=num_classes, head=head, rngs=rngs, **kw)


__all__ = [
    "HEADS",
    "MODELS",
    "CosineHead",
    "LWSScale",
    "LinearHead",
    "ResNetCifar",
    "SmallCNN",
    "create_model",
    "resnet32",
    "tau_normalize",
]
