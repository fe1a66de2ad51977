"""Per-layer timings of lt_jax's native CPU 3x3 convolution against XLA:CPU's own.

For every distinct convolution of ResNet-32 at batch 128 (NHWC, float32): the forward
pass, the input gradient and the weight gradient, each jitted alone, best of
``--repeats`` runs, in milliseconds, plus the step total weighted by how often each
layer occurs in ResNet-32 (stem, 10 + 9 + 9 stride-1 convolutions, 2 stride-2 ones).

    python benchmarks/conv_kernels.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lt_jax.models import native

# (H, Cin, Cout, stride, occurrences in ResNet-32)
LAYERS = [
    (32, 3, 16, 1, 1),
    (32, 16, 16, 1, 10),
    (32, 16, 32, 2, 1),
    (16, 32, 32, 1, 9),
    (16, 32, 64, 2, 1),
    (8, 64, 64, 1, 9),
]


def _best(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def _passes(conv, x, w, g, stride):
    fwd = jax.jit(lambda x, w: conv(x, w, stride))
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w, stride), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_, stride), w)[1](g)[0])
    return fwd, dx, dw


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not native.available():
        raise SystemExit(f"native convolution unavailable: {native.unavailable_reason()}")
    rng = np.random.default_rng(0)
    print(
        f"batch {args.batch}, {jax.device_count()} x {jax.devices()[0].platform}; ms, best of "
        f"{args.repeats}"
    )
    print(
        f"{'layer':>22} | {'XLA fwd':>7} {'dx':>6} {'dw':>6} | {'native fwd':>10} {'dx':>6} "
        f"{'dw':>6}"
    )
    totals = {"xla": 0.0, "native": 0.0}
    for h, cin, cout, stride, count in LAYERS:
        x = jnp.asarray(rng.standard_normal((args.batch, h, h, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.1, jnp.float32)
        ho = (h - 1) // stride + 1
        g = jnp.asarray(rng.standard_normal((args.batch, ho, ho, cout)), jnp.float32)
        row = {}
        for name, conv in (("xla", native._xla_conv), ("native", native.conv3x3)):
            fwd, dx, dw = _passes(conv, x, w, g, stride)
            t = [_best(fwd, x, w, repeats=args.repeats)]
            t.append(_best(dx, x, w, g, repeats=args.repeats) if cin > 3 else 0.0)
            t.append(_best(dw, x, w, g, repeats=args.repeats))
            row[name] = t
            totals[name] += count * sum(t)
        label = f"{h}x{h} {cin}->{cout} s{stride} x{count}"
        xt, nt = row["xla"], row["native"]
        print(
            f"{label:>22} | {xt[0]:7.2f} {xt[1]:6.2f} {xt[2]:6.2f} | {nt[0]:10.2f} {nt[1]:6.2f} "
            f"{nt[2]:6.2f}"
        )
    print(
        f"ResNet-32 step, all convolution passes: XLA {totals['xla']:.1f} ms, "
        f"native {totals['native']:.1f} ms"
    )


if __name__ == "__main__":
    main()
