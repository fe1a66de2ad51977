"""Which kernels lt_jax picks on this machine's backend, and how its gradients compare.

Usage: python benchmarks/backend_check.py [--batch 32]

Prints the backend, ``kernels.implementation(backend)``, the compiler options the train
step gets, the kernels a default ResNet-32 is built with, whether its traced program
(jaxpr) is exactly the plain-XLA one (``impl="xla"``), and the largest per-leaf gradient
difference between this backend's program and the CPU program with the CPU kernels, on
one batch of random images (training-mode BatchNorm), at JAX's default matmul/conv
precision and at ``highest``. On a GPU the default float32 precision is TF32, so the
first number is large and the second small; on a CPU both compare the CPU kernels with
the plain XLA program. Not a test: GPU reductions are not bitwise reproducible.
"""

from __future__ import annotations

import argparse
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lt_jax import config_lib, steps
from lt_jax.models import kernels
from lt_jax.models.resnet_cifar import ResNetCifar


def model_loss(impl, device):
    """A seeded ResNet-32 with kernels ``impl`` on ``device``: (cross-entropy of (params,
    BatchNorm stats, images, labels), params, stats)."""
    with jax.default_device(device):
        model = ResNetCifar(num_classes=10, depth=32, impl=impl, rngs=nnx.Rngs(3))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def loss(params, stats, x, y):
        logits, _ = nnx.merge(graphdef, params, stats, copy=True)(x, train=True)
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.mean(lse - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])

    return loss, params, stats


def loss_and_grad(impl, device, x, y):
    """The loss and its parameter gradients, compiled for ``device`` with the compiler
    options lt_jax uses on that device's backend."""
    loss, params, stats = model_loss(impl, device)
    options = kernels.compiler_options(device.platform)
    fn = jax.jit(jax.value_and_grad(loss), compiler_options=options)
    value, grads = fn(*jax.device_put((params, stats, x, y), device))
    return float(value), [np.asarray(g) for g in jax.tree.leaves(grads)]


def program(impl, device, x, y) -> str:
    """The traced program (jaxpr) of the loss: what the kernels choice changes."""
    loss, params, stats = model_loss(impl, device)
    return str(jax.make_jaxpr(loss)(params, stats, x, y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    backend = jax.default_backend()
    print(f"jax {jax.__version__}, backend {backend}: {jax.devices()}")
    print(f"kernels.implementation({backend!r}) = {kernels.implementation(backend)!r}")
    print(f"compiler options of the train step: {kernels.compiler_options(backend)}")
    print(f"config.kernels='auto' resolves to {steps.kernels(config_lib.base_config())!r}")
    model = ResNetCifar(num_classes=10, depth=32, rngs=nnx.Rngs(0))
    print(f"default ResNet-32 kernels: {model.impl!r}")

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    here, cpu = jax.devices()[0], jax.devices("cpu")[0]
    same = program(None, here, x, y) == program("xla", here, x, y)
    print(f"default program == plain XLA program (jaxpr): {same}")
    for precision in ("default", "highest"):
        ctx = (
            jax.default_matmul_precision("highest")
            if precision == "highest"
            else contextlib.nullcontext()
        )
        with ctx:
            v_here, g_here = loss_and_grad(None, here, x, y)
            v_ref, g_ref = loss_and_grad("cpu" if backend != "cpu" else "xla", cpu, x, y)
        worst = max(
            float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
            for a, b in zip(g_here, g_ref, strict=True)
        )
        print(
            f"precision {precision}: loss {v_here:.6f} here vs {v_ref:.6f} reference; "
            f"largest per-leaf max|dg| / max|g|: {worst:.2e}"
        )


if __name__ == "__main__":
    main()
