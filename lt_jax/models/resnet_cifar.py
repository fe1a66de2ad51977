"""ResNet-32 for CIFAR (LDAM-DRW lineage) and a small CNN for the embedded MNIST-LT.

ResNet-32: 3x3 conv 16, then 3 stages of 5 basic blocks with widths 16/32/64
(stride 2 at the first block of stages 2 and 3), option-A shortcuts (stride-2
subsampling plus zero-padded channels, no parameters), global average pool,
then the head. Models return ``(logits, features)``; ``train`` switches
BatchNorm between batch statistics and running averages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lt_jax.models import kernels
from lt_jax.models.heads import HEADS

# PyTorch's kaiming_normal_ (fan-in, gain sqrt 2) as the releases apply it: a plain normal,
# not Flax's kaiming_normal (a truncated normal with the same variance).
_KAIMING = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(cin, cout, stride, rngs, dtype=None, impl="xla"):
    return kernels.Conv(
        cin,
        cout,
        (3, 3),
        strides=stride,
        padding=1,
        use_bias=False,
        kernel_init=_KAIMING,
        dtype=dtype,
        impl=impl,
        rngs=rngs,
    )


def _bn(c, rngs, dtype=None, impl="xla"):
    # momentum 0.9 = PyTorch's BatchNorm momentum 0.1, and its unbiased running variance, as
    # the releases' ResNet-32 trains. Statistics stay float32.
    return kernels.BatchNorm(
        c,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        impl=impl,
        unbiased_running_var=True,
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs, dtype=None, impl: str = "xla"
    ):
        self.conv1 = _conv(cin, cout, stride, rngs, dtype, impl)
        self.bn1 = _bn(cout, rngs, dtype, impl)
        self.conv2 = _conv(cout, cout, 1, rngs, dtype, impl)
        self.bn2 = _bn(cout, rngs, dtype, impl)
        self.stride = stride
        self.pad = cout - cin
        self.impl = impl

    def shortcut(self, x):
        # Option A: subsample spatially, zero-pad the new channels on both sides.
        if self.stride != 1 or self.pad:
            x = x[:, :: self.stride, :: self.stride, :]
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (self.pad // 2, self.pad - self.pad // 2)))
        return x

    def __call__(self, x, train: bool):
        y = self.bn1(self.conv1(x), use_running_average=not train)
        y = kernels.relu(y, self.impl, train)
        y = self.bn2(self.conv2(y), use_running_average=not train)
        return kernels.relu(y + self.shortcut(x), self.impl, train)


class ResNetCifar(nnx.Module):
    def __init__(
        self,
        *,
        num_classes: int,
        depth: int = 32,
        head: str = "linear",
        in_channels: int = 3,
        dtype=None,
        impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.dtype = dtype
        # Backend-specific kernels (models/kernels.py); None: the default backend's.
        self.impl = kernels.resolve(impl)
        self.stem = _conv(in_channels, 16, 1, rngs, dtype, self.impl)
        self.stem_bn = _bn(16, rngs, dtype, self.impl)
        blocks, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                stride_i = stride if i == 0 else 1
                blocks.append(
                    BasicBlock(cin, width, stride_i, rngs=rngs, dtype=dtype, impl=self.impl)
                )
                cin = width
        self.blocks = nnx.List(blocks)
        # The linear head is initialised as the releases' ResNet-32 initialises it.
        extra = {"init": "release"} if head == "linear" else {}
        self.head = HEADS[head](64, num_classes, rngs=rngs, **extra)

    def features(self, x, train: bool):
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = self.stem_bn(self.stem(x), use_running_average=not train)
        x = kernels.relu(x, self.impl, train)
        for block in self.blocks:
            x = block(x, train)
        # The head and the losses run in float32 (bf16 compute stays in the trunk).
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    def __call__(self, x, train: bool = False):
        f = self.features(x, train)
        return self.head(f), f


def resnet32(*, num_classes: int, head: str = "linear", rngs: nnx.Rngs, **kw):
    return ResNetCifar(num_classes=num_classes, depth=32, head=head, rngs=rngs, **kw)


class SmallCNN(nnx.Module):
    """conv32-bn-relu-pool, conv64-bn-relu-pool, dense128-bn-relu, head: for 28x28 MNIST-LT
    (``image_size`` x ``image_size`` images with ``in_channels`` channels in general)."""

    def __init__(
        self,
        *,
        num_classes: int,
        head: str = "linear",
        in_channels: int = 1,
        image_size: int = 28,
        dtype=None,
        impl: str | None = None,
        rngs,
    ):
        self.dtype = dtype
        # Always the plain ops, whatever ``impl`` asks for (it is still checked; listed in
        # kernels.XLA_ONLY_MODELS, so no run builds the native library for it): without a
        # residual stream XLA:CPU has nothing to re-compute, and this net's step is dominated
        # by compilation and dispatch, not by its kernels.
        if impl is not None:
            kernels.check_implementation(impl)
        self.impl = "xla"
        self.conv1 = nnx.Conv(in_channels, 32, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)
        self.bn1 = _bn(32, rngs, dtype)
        self.conv2 = nnx.Conv(32, 64, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)
        self.bn2 = _bn(64, rngs, dtype)
        # BatchNorm before the feature ReLU, as in the ResNets: without it the 128 feature
        # units can all die, and FBL's 1/|f| stimulus then diverges (seen on MNIST-LT).
        pooled = image_size // 4  # two 2x2 max-pools
        self.dense = nnx.Linear(64 * pooled**2, 128, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn3 = _bn(128, rngs, dtype)
        self.head = HEADS[head](128, num_classes, rngs=rngs)

    def features(self, x, train: bool):
        pool = lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2))  # noqa: E731
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = pool(jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train)))
        x = pool(jax.nn.relu(self.bn2(self.conv2(x), use_running_average=not train)))
        x = self.bn3(self.dense(x.reshape(x.shape[0], -1)), use_running_average=not train)
        return jax.nn.relu(x).astype(jnp.float32)

    def __call__(self, x, train: bool = False):
        f = self.features(x, train)
        return self.head(f), f
