"""ImageNet-style ResNets for ImageNet-LT / iNaturalist / Places-LT (torchvision v1.5 layout).

ResNet-50 ([3, 4, 6, 3] bottlenecks), ResNeXt-50 32x4d (grouped 3x3 convs), and
ResNet-152 ([3, 8, 36, 3]) for the Places-LT protocol, where the pretrained
trunk is frozen (BatchNorm in inference mode) and only the last bottleneck and
the classifier learn. ``load_torchvision_weights`` reads a PyTorch
``state_dict`` exported to ``.npz``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lt_jax.models import kernels
from lt_jax.models.heads import HEADS

_KAIMING = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(cin, cout, k, stride, rngs, dtype, groups=1, impl="xla"):
    # kernels.Conv: the native CPU kernels for 3x3 ungrouped layers under impl "cpu".
    return kernels.Conv(
        cin,
        cout,
        (k, k),
        strides=stride,
        padding=k // 2,
        use_bias=False,
        feature_group_count=groups,
        kernel_init=_KAIMING,
        dtype=dtype,
        impl=impl,
        rngs=rngs,
    )


def _bn(c, rngs, dtype, impl="xla"):
    return kernels.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=dtype, impl=impl, rngs=rngs)


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, *, groups, base_width, rngs, dtype=None, impl="xla"):
        width = int(planes * (base_width / 64.0)) * groups
        cout = planes * self.expansion
        self.conv1 = _conv(cin, width, 1, 1, rngs, dtype)
        self.bn1 = _bn(width, rngs, dtype, impl)
        self.conv2 = _conv(width, width, 3, stride, rngs, dtype, groups, impl)
        self.bn2 = _bn(width, rngs, dtype, impl)
        self.conv3, self.bn3 = _conv(width, cout, 1, 1, rngs, dtype), _bn(cout, rngs, dtype, impl)
        # Projection shortcut (conv 1x1 + BN) where the shape changes; empty otherwise.
        needs = stride != 1 or cin != cout
        self.impl = impl
        self.downsample = nnx.List(
            [_conv(cin, cout, 1, stride, rngs, dtype), _bn(cout, rngs, dtype, impl)]
            if needs
            else []
        )

    def __call__(self, x, train: bool):
        ra = not train
        y = kernels.relu(self.bn1(self.conv1(x), use_running_average=ra), self.impl, train)
        y = kernels.relu(self.bn2(self.conv2(y), use_running_average=ra), self.impl, train)
        y = self.bn3(self.conv3(y), use_running_average=ra)
        if len(self.downsample):
            conv, bn = self.downsample
            x = bn(conv(x), use_running_average=ra)
        return kernels.relu(y + x, self.impl, train)


class ResNet(nnx.Module):
    def __init__(
        self,
        layers,
        *,
        num_classes: int,
        head: str = "linear",
        groups: int = 1,
        width_per_group: int = 64,
        in_channels: int = 3,
        trainable_blocks: int | None = None,
        dtype=None,
        impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        """``trainable_blocks``: if set, only the last that many bottlenecks (and the
        head) train; earlier ones run BatchNorm in inference mode (Places-LT)."""
        self.dtype = dtype
        # Backend-specific kernels (models/kernels.py); None: the default backend's.
        self.impl = kernels.resolve(impl)
        self.stem = _conv(in_channels, 64, 7, 2, rngs, dtype)
        self.stem_bn = _bn(64, rngs, dtype, self.impl)
        blocks, cin = [], 64
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            for i in range(n):
                stride = 2 if (i == 0 and stage > 0) else 1
                block = Bottleneck(
                    cin,
                    planes,
                    stride,
                    groups=groups,
                    base_width=width_per_group,
                    rngs=rngs,
                    dtype=dtype,
                    impl=self.impl,
                )
                blocks.append(block)
                cin = planes * Bottleneck.expansion
        self.blocks = nnx.List(blocks)
        self.layers = tuple(layers)
        self.num_frozen = 0 if trainable_blocks is None else len(blocks) - trainable_blocks
        self.head = HEADS[head](cin, num_classes, rngs=rngs)

    def features(self, x, train: bool):
        if self.dtype is not None:
            x = x.astype(self.dtype)
        trunk_train = train and self.num_frozen == 0
        x = self.stem_bn(self.stem(x), use_running_average=not trunk_train)
        x = kernels.relu(x, self.impl, trunk_train)
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, block in enumerate(self.blocks):
            if i < self.num_frozen:
                x = jax.lax.stop_gradient(block(x, train=False))
            else:
                x = block(x, train)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    def __call__(self, x, train: bool = False):
        f = self.features(x, train)
        return self.head(f), f


def resnet50(*, num_classes, head="linear", rngs, **kw):
    return ResNet((3, 4, 6, 3), num_classes=num_classes, head=head, rngs=rngs, **kw)


def resnext50_32x4d(*, num_classes, head="linear", rngs, **kw):
    return ResNet(
        (3, 4, 6, 3),
        num_classes=num_classes,
        head=head,
        groups=32,
        width_per_group=4,
        rngs=rngs,
        **kw,
    )


def resnet152_places(*, num_classes, head="linear", rngs, **kw):
    """ResNet-152 with a frozen trunk; the last bottleneck and the head train."""
    return ResNet(
        (3, 8, 36, 3), num_classes=num_classes, head=head, trainable_blocks=1, rngs=rngs, **kw
    )


# --- pretrained weights ------------------------------------------------------------------------


def _torch_names(model: ResNet):
    """(our module, torchvision prefix) pairs for every conv / bn of the trunk."""
    yield model.stem, "conv1"
    yield model.stem_bn, "bn1"
    i = 0
    for stage, n in enumerate(model.layers):
        for j in range(n):
            block, prefix = model.blocks[i], f"layer{stage + 1}.{j}"
            for k in (1, 2, 3):
                yield getattr(block, f"conv{k}"), f"{prefix}.conv{k}"
                yield getattr(block, f"bn{k}"), f"{prefix}.bn{k}"
            if len(block.downsample):
                yield block.downsample[0], f"{prefix}.downsample.0"
                yield block.downsample[1], f"{prefix}.downsample.1"
            i += 1


def load_torchvision_weights(model: ResNet, path: str, *, strict: bool = True) -> int:
    """Loads a torchvision ResNet ``state_dict`` saved as ``.npz`` into ``model``'s trunk.

    Export with::

      python -c "import torch, numpy as np; sd = torch.load('resnet152.pth');
                 np.savez('resnet152.npz', **{k: v.numpy() for k, v in sd.items()})"

    The classifier (``fc``) is not loaded. Returns the number of arrays loaded.
    Raises ``ValueError`` naming the first missing or mis-shaped tensor.
    """
    try:
        weights = dict(np.load(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read pretrained weights {path}: {e}") from None
    loaded = 0
    for module, prefix in _torch_names(model):
        if isinstance(module, nnx.Conv):
            pairs = [("kernel", f"{prefix}.weight", lambda w: np.transpose(w, (2, 3, 1, 0)))]
        else:
            ident = lambda w: w  # noqa: E731
            pairs = [
                ("scale", f"{prefix}.weight", ident),
                ("bias", f"{prefix}.bias", ident),
                ("mean", f"{prefix}.running_mean", ident),
                ("var", f"{prefix}.running_var", ident),
            ]
        for attr, name, convert in pairs:
            if name not in weights:
                if strict:
                    raise ValueError(f"{path} has no tensor {name!r}")
                continue
            variable = getattr(module, attr)
            value = convert(weights[name])
            if value.shape != variable[...].shape:
                raise ValueError(
                    f"{path}: {name} has shape {weights[name].shape}, expected a tensor for "
                    f"{variable[...].shape}"
                )
            variable[...] = jnp.asarray(value, variable[...].dtype)
            loaded += 1
    return loaded
