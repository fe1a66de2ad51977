"""Classifier heads. The class axis of every head parameter is last (GA relies on it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _normalize(x, axis):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-24))


# Initialisations of the linear head's (kernel, bias).
# lecun: LeCun normal kernel, zero bias (Flax's convention).
# release: the CIFAR releases' ResNet-32 (LDAM-DRW's models/resnet_cifar.py): kaiming_normal_
#   (fan-in, gain sqrt 2, untruncated) on the kernel, PyTorch nn.Linear's default
#   U(-1/sqrt(D), 1/sqrt(D)) bias, which their _weights_init leaves in place.
LINEAR_INITS = ("lecun", "release")


class LinearHead(nnx.Module):
    """z = f W + b with W [D, C], b [C]."""

    def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs, init: str = "lecun"):
        shape = (in_features, num_classes)
        if init == "lecun":
            kernel = nnx.initializers.lecun_normal()(rngs.params(), shape)
            bias = jnp.zeros((num_classes,))
        elif init == "release":
            kernel = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")(
                rngs.params(), shape
            )
            bound = 1.0 / in_features**0.5
            bias = jax.random.uniform(rngs.params(), (num_classes,), minval=-bound, maxval=bound)
        else:
            raise ValueError(f"unknown linear head init {init!r}; valid: {', '.join(LINEAR_INITS)}")
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias)

    def __call__(self, features):
        return features @ self.kernel[...] + self.bias[...]


class CosineHead(nnx.Module):
    """c = <f / |f|, w_j / |w_j|>, no bias; the loss applies the scale (LDAM/KPS/GCL)."""

    def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
        # The releases' NormedLinear: uniform(-1, 1) then renormed columns.
        w = jax.random.uniform(rngs.params(), (in_features, num_classes), minval=-1.0, maxval=1.0)
        self.kernel = nnx.Param(_normalize(w, 0))

    def __call__(self, features):
        return _normalize(features, -1) @ _normalize(self.kernel[...], 0)


class LWSScale(nnx.Module):
    """Learnable weight scaling (Kang et al. 2020): one scale per class, applied to logits."""

    def __init__(self, num_classes: int):
        self.scale = nnx.Param(jnp.ones((num_classes,)))

    def __call__(self, logits):
        return logits * self.scale[...]


def tau_normalize(kernel, tau: float):
    """tau-norm (Kang et al. 2020): w_j / |w_j|^tau for a [D, C] kernel."""
    norms = jnp.linalg.norm(kernel, axis=0, keepdims=True)
    return kernel / jnp.maximum(norms, 1e-12) ** tau


HEADS = {"linear": LinearHead, "cosine": CosineHead}
