"""Backend-specific building blocks: plain XLA ops on GPU/TPU, a few CPU fixes on XLA:CPU.

Two measured XLA:CPU problems slow the ResNet train step (jax 0.10.2, see
``benchmarks/throughput.py`` and the README's "CPU speed" section):

1. **Re-computed residual streams.** A convolution's weight gradient wants its
   input transposed (channels major). XLA:CPU fuses the cheap elementwise ops that
   produced that input (BatchNorm affine, residual add, ReLU) into the transpose
   and, because each block's input is itself such an elementwise function of the
   previous block's, re-computes the whole chain of a stage inside every transpose,
   reading with a stride of one image per element. On ResNet-32 those transposes
   took about half of the step. ``jax.lax.optimization_barrier`` does not help: the
   CPU pipeline expands it before fusion. XLA never duplicates a *reduction* into
   several consumers, so :func:`relu` computes the training-mode ReLU as a maximum
   over ``[z, 0]``: the same values and the same gradient as ``jax.nn.relu``, but
   the result is materialised once and every consumer reads it.
2. **Library convolutions.** With YNNPACK fusions on (the jaxlib default) the
   convolutions and their gradients ran slower than XLA's Eigen kernels; the CPU
   train step is compiled with :func:`compiler_options`, which turns them off.

``implementation(backend)`` picks ``"cpu"`` only for the CPU backend; GPU and
TPU keep exactly the plain XLA program (``jax.nn.relu``, no compiler options).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cpu")

# Empty list = no YNNPACK library fusions; XLA's own (Eigen) convolutions instead.
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def implementation(backend: str | None = None) -> str:
    """``"cpu"`` on the CPU backend, ``"xla"`` (the plain XLA ops) on GPU, TPU, anything else."""
    backend = jax.default_backend() if backend is None else backend
    return "cpu" if backend == "cpu" else "xla"


def check_implementation(impl: str) -> str:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown kernel implementation {impl!r}; valid: xla, cpu")
    return impl


def compiler_options(backend: str | None = None) -> dict | None:
    """XLA options for jitting a train/eval step on ``backend`` (None: no options).

    On CPU: YNNPACK fusions off, unless the user chose them in ``XLA_FLAGS``.
    """
    if implementation(backend) != "cpu":
        return None
    user = os.environ.get("XLA_FLAGS", "")
    return {k: v for k, v in _CPU_COMPILER_OPTIONS.items() if k not in user} or None


@jax.custom_jvp
def materialized_relu(z):
    """``max(z, 0)`` computed as a reduction, so XLA:CPU stores it instead of re-computing it."""
    return jnp.max(jnp.stack([z, jnp.zeros_like(z)]), axis=0)


@materialized_relu.defjvp
def _materialized_relu_jvp(primals, tangents):
    # jax.nn.relu's derivative: 1 where z > 0, 0 elsewhere (also at z == 0, where the
    # reduction's own rule would split the tangent between the two equal entries).
    (z,), (t,) = primals, tangents
    return materialized_relu(z), jnp.where(z > 0, t, jnp.zeros_like(t))


def relu(x, impl: str, train: bool):
    """The ReLU of a residual network's blocks for the implementation ``impl``.

    Only training on CPU needs the materialised form (the weight gradients are what
    re-compute); evaluation and the other backends use ``jax.nn.relu``.
    """
    if impl == "cpu" and train:
        return materialized_relu(x)
    return jax.nn.relu(x)
