"""Backend-specific building blocks: plain XLA ops on GPU/TPU, CPU fixes and kernels on XLA:CPU.

Four measured XLA:CPU problems slow the ResNet train step (jax 0.10.2; numbers from
``benchmarks/throughput.py`` and ``benchmarks/conv_kernels.py`` in the README's
"Benchmarks" section):

1. **Slow convolutions.** XLA:CPU's own (Eigen) convolutions were most of the step, their
   weight gradients at half the speed of the forward pass. :class:`Conv` runs 3x3,
   padding-1 layers on :mod:`lt_jax.models.native`'s direct convolutions (an XLA FFI
   library compiled for the host on first use): 355 -> 157 ms for all convolution passes
   of a ResNet-32 step at batch 128. Without a C++ compiler, XLA's convolutions are used.
2. **Re-computed residual streams.** A convolution's weight gradient wants its
   input transposed (channels major). XLA:CPU fuses the cheap elementwise ops that
   produced that input (BatchNorm affine, residual add, ReLU) into the transpose
   and, because each block's input is itself such an elementwise function of the
   previous block's, re-computes the whole chain of a stage inside every transpose,
   reading with a stride of one image per element. On ResNet-32 those transposes
   took about half of the step. ``jax.lax.optimization_barrier`` does not help: the
   CPU pipeline expands it before fusion. XLA never duplicates a *reduction* into
   several consumers, so :func:`relu` computes the training-mode ReLU as a maximum
   over ``[z, 0]``: the same values and the same gradient as ``jax.nn.relu``, but
   the result is materialised once and every consumer reads it. (It still matters
   where XLA's convolutions run: other kernel sizes, grouped layers, no compiler.)
3. **Slow reductions.** XLA:CPU splits each BatchNorm sum into a reduce-window that
   cannot fuse its input (``x * x`` is written out first). The CPU
   :func:`batch_norm_train` has a hand-written gradient and takes every per-channel sum
   of the forward and the backward pass with :func:`_channel_sums`: the native kernel
   (float32 per image, double across images) where it applies, else matrix products
   with a ones vector or a Gram diagonal, per image.
4. **Library fusions.** With YNNPACK fusions on (the jaxlib default) the convolutions
   and their gradients ran slower than XLA's Eigen kernels; the CPU train step is
   compiled with :func:`compiler_options`, which turns them off.

(A fifth cost is outside the program: glibc returning each step's buffers to the OS;
see :func:`lt_jax.cli.keep_host_memory`.)

``implementation(backend)`` picks ``"cpu"`` only for the CPU backend; GPU and
TPU keep exactly the plain XLA program (``conv_general_dilated``, ``jax.nn.relu``,
``nnx.BatchNorm``, the default compiler options); ``config.kernels = "xla"`` asks for it
on CPU too. The native kernels also need a single device (:func:`native_enabled`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding

from lt_jax.models import native

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


def resolve(impl: str | None) -> str:
    """A model's ``impl`` argument: None means the default backend's implementation."""
    return check_implementation(impl or implementation())


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


_NATIVE_OFF = contextvars.ContextVar("lt_jax_native_off", default=False)


@contextlib.contextmanager
def without_native():
    """Traces inside this block use the XLA ops instead of the native kernels (a vmapped
    program: the native custom calls have no batching rule)."""
    token = _NATIVE_OFF.set(True)
    try:
        yield
    finally:
        _NATIVE_OFF.reset(token)


def native_enabled() -> bool:
    """Whether the CPU implementation may use :mod:`lt_jax.models.native`'s kernels now: the
    CPU backend with a single device (XLA would replicate a custom call across a sharded
    batch, so data-parallel programs over virtual CPU devices keep the XLA ops), the
    library built, and not inside :func:`without_native`."""
    if _NATIVE_OFF.get():
        return False
    return jax.default_backend() == "cpu" and jax.device_count() == 1 and native.available()


# Models whose programs are XLA's whatever ``impl`` says (their step is dominated by
# compilation and dispatch, not by kernels): no native build is started for them.
XLA_ONLY_MODELS = frozenset({"small_cnn"})


def describe(impl: str, model: str | None = None) -> str:
    """One line for a run's log: which kernels the CPU programs of implementation ``impl``
    (of ``model``, where given) use, and why not the native ones where they do not."""
    if model in XLA_ONLY_MODELS:
        return f"XLA's ({model} has no native ones)"
    if impl != "cpu":
        return "XLA's (config.kernels = 'xla')"
    if jax.device_count() > 1:
        return f"XLA's: the native kernels need a single CPU device ({jax.device_count()} here)"
    if not native.available():
        return f"XLA's: {native.unavailable_reason()}"
    if native.convolutions_enabled():
        return "native 3x3 convolutions and BatchNorm sums"
    return f"native BatchNorm sums, XLA's convolutions: {native.convolutions_off_reason()}"


def _use_native(shape, dtype) -> bool:
    return native.channel_sums_supported(shape, dtype) and native_enabled()


def _rows(x):
    """``x`` as (blocks, rows, C): the per-channel sums below add each block of rows
    separately (one image of an NHWC batch), then the block totals."""
    if x.ndim >= 3:
        return x.reshape(x.shape[0], -1, x.shape[-1])
    return x.reshape(1, -1, x.shape[-1])


def _channel_sums(a, b=None):
    """Per-channel ``sum(a)`` and ``sum(a * b)`` (``b = a`` if None) over all but the last
    axis. With the native kernels (:func:`native_enabled`, float32, channels in 16s): one
    pass, float32 per image and double across images. Otherwise as matrix products, which
    XLA:CPU runs faster than its split reductions:
    ``sum(a * b)`` is the diagonal of ``a.T @ b`` up to 128 channels (C times the work of
    a sum, but it reads the inputs where they are), beyond that a ones-vector product with
    ``a * b``. A matrix product adds its long dimension in one running float32 sum, whose
    error grows with its length, so the products run per image (batched) and only the
    per-image partial sums are added up: float32 accuracy like ``jnp.sum``'s."""
    if _use_native(a.shape, a.dtype) and (b is None or b.dtype == a.dtype):
        return native.channel_sums(a, a if b is None else b)
    a3 = _rows(a)
    b3 = a3 if b is None else _rows(b)
    ones = jnp.ones(a3.shape[:2], a3.dtype)
    batched = (((1,), (1,)), ((0,), (0,)))
    total = jax.lax.dot_general(ones, a3, batched).sum(0)
    if a3.shape[-1] <= 128:
        gram = jax.lax.dot_general(a3, b3, batched)  # (blocks, C, C)
        return total, jnp.diagonal(gram, axis1=1, axis2=2).sum(0)
    return total, jax.lax.dot_general(ones, a3 * b3, batched).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
    """Training-mode BatchNorm over all but the last axis: ``(y, batch mean, batch var)``.

    The numbers of ``flax.nnx.BatchNorm`` (float32, ``use_fast_variance``: var =
    E[x^2] - E[x]^2 clipped at 0, biased), with the per-channel sums computed by
    :func:`_channel_sums`.
    """
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
    n = x.size // x.shape[-1]
    total, squares = _channel_sums(x)
    mean = total / n
    var = jnp.maximum(0.0, squares / n - mean * mean)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (x - mean) * (rstd * scale) + bias
    return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_bwd(epsilon, res, cotangents):
    del epsilon
    x, mean, rstd, scale = res
    g, g_mean, g_var = cotangents
    n = x.size // x.shape[-1]
    sum_g, sum_gx = _channel_sums(g, x)
    d_bias = sum_g
    d_scale = rstd * (sum_gx - mean * sum_g)  # sum(g * x_hat)
    x_hat = (x - mean) * rstd
    dx = (scale * rstd / n) * (n * g - sum_g - x_hat * d_scale)
    # Direct use of the batch statistics (zero when they only feed the running averages).
    dx = dx + g_mean / n + (2.0 / n) * g_var * (x - mean)
    return dx, d_scale, d_bias


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` (same variables and running averages) that trains with
    :func:`batch_norm_train` when ``impl == "cpu"`` and the input is float32.

    ``unbiased_running_var=True`` keeps PyTorch's running variance: the batch variance
    enters the running average with Bessel's correction n / (n - 1) (n = the values per
    channel), while the batch itself is normalised with the biased variance, as in both.
    """

    def __init__(self, *args, impl: str = "xla", unbiased_running_var: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.impl = impl
        self.unbiased_running_var = unbiased_running_var

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        old_var = self.var[...]
        y = self._call(x, use_running_average, mask=mask)
        training = not (
            self.use_running_average if use_running_average is None else use_running_average
        )
        if self.unbiased_running_var and training and mask is None:
            n = x.size // x.shape[-1]
            m = self.momentum
            # The running update added (1 - m) * var_biased; add its Bessel share too.
            added = self.var[...] - m * old_var
            self.var[...] = jax.lax.stop_gradient(self.var[...] + added / max(n - 1, 1))
        return y

    def _call(self, x, use_running_average, *, mask):
        plain = (
            self.impl != "cpu"
            or use_running_average
            or mask is not None
            or self.axis not in (-1, x.ndim - 1)
            or self.axis_name is not None
            or x.dtype != jnp.float32
            or (self.dtype not in (None, jnp.float32))
            or self.scale is None
            or self.bias is None
        )
        if plain:
            return super().__call__(x, use_running_average, mask=mask)
        y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], self.epsilon)
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
        self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
        return y


def _pair(v, default):
    if v is None:
        return (default, default)
    if isinstance(v, int):
        return (v, v)
    return tuple(v)


class Conv(nnx.Conv):
    """``nnx.Conv`` (same variables) whose 3x3, padding-1 convolutions run on
    :mod:`lt_jax.models.native`'s kernels when ``impl == "cpu"``.

    Every other case is ``nnx.Conv`` itself: other implementations, kernel sizes,
    paddings, dilations and groups, non-float32 inputs, output channels not a multiple
    of 16, whenever :func:`native_enabled` is False, and on hosts where XLA's
    convolutions are the faster ones (:func:`lt_jax.models.native.convolutions_enabled`).
    """

    def __init__(self, *args, impl: str = "xla", **kwargs):
        super().__init__(*args, **kwargs)
        self.impl = impl

    def _native_stride(self, x) -> int | None:
        strides = _pair(self.strides, 1)
        padding = canonicalize_padding(self.padding, 2)  # as nnx.Conv reads it
        if (
            self.impl != "cpu"
            or tuple(self.kernel_size) != (3, 3)
            or strides[0] != strides[1]
            or isinstance(padding, str)
            or [tuple(p) for p in padding] != [(1, 1), (1, 1)]
            or _pair(self.input_dilation, 1) != (1, 1)
            or _pair(self.kernel_dilation, 1) != (1, 1)
            or self.feature_group_count != 1
            or self.mask is not None
            or self.dtype not in (None, jnp.float32)
            or self.kernel[...].dtype != jnp.float32
            or x.dtype != jnp.float32
            or not native.supports(x.shape, self.kernel_shape, strides[0], x.dtype)
            or not native_enabled()
            or not native.convolutions_enabled()
        ):
            return None
        return strides[0]

    def __call__(self, x):
        stride = self._native_stride(x)
        if stride is None:
            return super().__call__(x)
        y = native.conv3x3(x, self.kernel[...], stride)
        if self.bias is not None:
            y = y + self.bias[...]
        return y
