"""Where lt_jax's BatchNorm statistics part (within rounding) from the float32 release's.

Usage: python benchmarks/lockstep_bn_trace.py [--method ce] [--phase 0] [--steps 3]
           [--data-dir ../shared/data/cifar-10-batches-py] [--threads 1]
       (needs PyTorch: pip install -e '.[bench]')

In the lockstep report (``benchmarks/lockstep.py``) lt_jax's BatchNorm statistics sit a few
times further from the float64 reference than the float32 release's, though far under the
rounding floor. This runs the same synced lockstep phase three times, removing one float32
difference at a time from lt_jax, and prints the BatchNorm column of each:

  as is          lt_jax unchanged;
  release input  lt_jax fed the float32 release's exact input bits: XLA turns the divisions
                 of ``augment.normalize`` by constants into multiplications by rounded
                 reciprocals, so lt_jax's inputs differ from ``(x / 255 - mean) / std``
                 computed in float32 in the last bit (a bias that the stem BatchNorm's
                 running mean, an average of values near zero, shows most);
  + two-pass variance  also Flax's two-pass batch variance (mean of squared deviations)
                 instead of its default one-pass E[x^2] - E[x]^2, which lt_jax uses (as its
                 native kernels do: one pass over the activations) and which rounds worse.

With both removed lt_jax's statistics are as close to the reference as the float32
release's. Last, the input rounding of both sides on random images. Nothing here changes
lt_jax: the patches live in this process only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def release_input_bits():
    """``augment.normalize`` as a per-channel table of PyTorch's float32 results for the 256
    uint8 values: bit for bit the release's ``ToTensor`` + ``Normalize``."""
    import jax.numpy as jnp
    import torch

    from benchmarks.lockstep import _torch_normalize
    from lt_jax.data import augment

    plain = augment.normalize
    values = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1).expand(256, 3, 1, 1)
    table = jnp.asarray(_torch_normalize(values, torch.float32).numpy().reshape(256, 3))

    def normalize(images, mean, std):  # the release's constants (the lockstep's CIFAR-10)
        x = jnp.asarray(images).astype(jnp.int32)
        return jnp.stack([table[:, c][x[..., c]] for c in range(3)], axis=-1)

    augment.normalize = normalize
    try:
        yield
    finally:
        augment.normalize = plain


@contextlib.contextmanager
def two_pass_variance():
    """Every ``flax.nnx.BatchNorm`` built inside computes its batch variance in two passes
    (``use_fast_variance=False``); lt_jax's models then take the plain Flax path
    (``--kernels xla``)."""
    from flax import nnx

    plain = nnx.BatchNorm.__init__

    @functools.wraps(plain)
    def init(self, *args, **kwargs):
        kwargs["use_fast_variance"] = False
        plain(self, *args, **kwargs)

    nnx.BatchNorm.__init__ = init
    try:
        yield
    finally:
        nnx.BatchNorm.__init__ = plain


def input_rounding(batch: int = 128, seed: int = 0) -> dict:
    """Error of lt_jax's jitted ``augment.normalize`` and of PyTorch's float32 divisions
    against the float64 value, on random uint8 images: rms and mean per channel."""
    import jax
    import numpy as np
    import torch

    from benchmarks.lockstep import _torch_normalize
    from lt_jax.data import augment

    mean, std = augment.CIFAR_MEAN, augment.CIFAR_STD
    u8 = np.random.default_rng(seed).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    exact = (u8 / 255.0 - np.asarray(mean)) / np.asarray(std)
    ours = np.asarray(jax.jit(lambda x: augment.normalize(x, mean, std))(u8))
    nchw = torch.from_numpy(u8).permute(0, 3, 1, 2)
    theirs = _torch_normalize(nchw, torch.float32).permute(0, 2, 3, 1).numpy()
    out = {}
    for name, x in (("lt_jax", ours), ("pytorch float32", theirs)):
        err = x.astype(np.float64) - exact
        out[name] = {"rms": float(np.sqrt(np.mean(err**2))), "bias": err.reshape(-1, 3).mean(0)}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="ce")
    parser.add_argument("--phase", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import numpy as np

    sys.path.insert(0, ROOT)  # benchmarks.lockstep when run as a script
    from benchmarks import lockstep

    common = [
        *("--methods", args.method, "--phases", str(args.phase), "--steps", str(args.steps)),
        *("--modes", "synced", "--free-methods", "", "--threads", str(args.threads)),
        # The plain Flax BatchNorm in every variant (the two-pass one only exists there).
        *("--kernels", "xla"),
        *(("--data-dir", args.data_dir) if args.data_dir else ()),
    ]
    variants = {
        "as is": (),
        "release input": (release_input_bits,),
        "release input + two-pass variance": (release_input_bits, two_pass_variance),
    }
    table = []
    for name, patches in variants.items():
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch())
            (result,) = lockstep.main(common)
        for row in result["rows"]:
            table.append((name, row))
    print("\n| lt_jax | step | BN stats err lt_jax (worst) | release32 (worst) |")
    print("|---|---:|---|---|")
    for name, row in table:
        print(
            f"| {name} | {row['step']} | {row['bn_stats_err_lt_jax']:.2e} "
            f"({row['bn_stats_worst_lt_jax']}) | {row['bn_stats_err_release32']:.2e} "
            f"({row['bn_stats_worst_release32']}) |"
        )
    print("\nInput rounding, 128 random uint8 images (error against float64):")
    for name, e in input_rounding().items():
        bias = np.array2string(e["bias"], precision=2)
        print(f"  {name}: rms {e['rms']:.2e}, mean per channel {bias}")
    return table


if __name__ == "__main__":
    main()
