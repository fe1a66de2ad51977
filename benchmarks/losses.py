"""Forward+backward time of every lt_jax loss under jit, relative to plain cross-entropy.

Usage: python benchmarks/losses.py [--repeats 50]

Each loss is timed as jit(grad(mean loss)) w.r.t. its inputs, at (B=128, C=100)
and (B=512, C=1000), median over repeats, in the same process as the CE
baseline. The acceptance bar (issue 2) is <= 3x cross-entropy.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from lt_jax import losses


def make_losses(counts, key):
    return {
        "ce": lambda z, f, y: losses.softmax_cross_entropy(z, y),
        "focal": lambda z, f, y: losses.focal_loss(z, y, gamma=1.0),
        "cb_focal": lambda z, f, y: losses.sigmoid_focal_loss(
            z, y, class_weights=losses.class_balanced_weights(counts)
        ),
        "cb_focal_softmax": lambda z, f, y: losses.focal_loss(
            z, y, class_weights=losses.class_balanced_weights(counts)
        ),
        "ldam_drw": lambda z, f, y: losses.ldam_loss(
            z, y, class_counts=counts, class_weights=losses.class_balanced_weights(counts)
        ),
        "balanced_softmax": lambda z, f, y: losses.balanced_softmax_loss(z, y, class_counts=counts),
        "logit_adjusted": lambda z, f, y: losses.logit_adjusted_loss(z, y, class_counts=counts),
        "kps": lambda z, f, y: losses.kps_loss(z, y, class_counts=counts),
        "kps_ga": lambda z, f, y: losses.kps_loss(z, y, class_counts=counts, ga=True),
        "fbl": lambda z, f, y: losses.fbl_loss(z, f, y, class_counts=counts, t=0.5),
        "gcl": lambda z, f, y: losses.gcl_loss(z, y, class_counts=counts, key=key),
        "gcl_stage2": lambda z, f, y: losses.gcl_loss(
            z, y, class_counts=counts, key=key, s=20.0, m=0.1, focal_gamma=1.0
        ),
    }


def time_fn(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {cpu}")
    print(f"{'loss':<18}{'B=128,C=100 us':>16}{'x CE':>7}{'B=512,C=1000 us':>17}{'x CE':>7}")
    results = {}
    for batch, num_classes in ((128, 100), (512, 1000)):
        rng = np.random.default_rng(0)
        counts = np.floor(500 * 100 ** (-np.arange(num_classes) / (num_classes - 1))).astype(int)
        z = jnp.asarray(rng.uniform(-1, 1, (batch, num_classes)), jnp.float32)
        f = jnp.asarray(rng.normal(size=(batch, 64)), jnp.float32)
        y = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
        for name, loss in make_losses(counts, jax.random.key(0)).items():
            step = jax.jit(jax.grad(lambda z, f, y, loss=loss: jnp.mean(loss(z, f, y)), (0, 1)))
            results.setdefault(name, []).append(time_fn(step, (z, f, y), args.repeats))
    worst = 0.0
    for name, (small, large) in results.items():
        r_small, r_large = small / results["ce"][0], large / results["ce"][1]
        worst = max(worst, r_small, r_large)
        print(f"{name:<18}{small * 1e6:>16.1f}{r_small:>7.2f}{large * 1e6:>17.1f}{r_large:>7.2f}")
    print(f"worst ratio to CE: {worst:.2f} (bar: 3.00)")


if __name__ == "__main__":
    main()
