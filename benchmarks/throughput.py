"""Training throughput of the ResNet-32 CIFAR step: lt_jax vs the same network in PyTorch eager.

Usage: python benchmarks/throughput.py [--batch 128] [--steps 10] [--rounds 3]
           [--kernels auto|xla|cpu] [--compiler-options auto|none] [--host-memory keep|default]
           [--seeds 1,2,4,8 [--seed-program auto|vmap|unrolled]]
       (needs the [bench] extra: pip install -e '.[bench]')

Both sides run forward + backward + SGD-momentum (wd 2e-4) on random 32x32x3 batches of
the same size, float32, in one process, alternating rounds; each round times ``--steps``
steady-state steps after warm-up, and the median round is reported. lt_jax's step is the
real one of ``lt_jax.train`` (softmax CE, linear head, no augmentation so both sides do
the same work). Also reported: lt_jax compile time, peak host memory (RSS) and a
1/2/8-device scaling line on virtual CPU devices (run in subprocesses, since the device
count is fixed at JAX start-up; with more than one device the native kernels are off).
``--host-memory keep`` (the default) applies ``lt_jax.cli.keep_host_memory()`` as the
training CLI does, to both frameworks alike since they share the process. ``--kernels`` /
``--compiler-options`` switch off the CPU fixes of ``lt_jax.models.kernels`` (``xla`` /
``none``: the plain XLA program) to measure each one's share; ``LT_JAX_NATIVE=0`` switches
off the native kernels alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

SCALING_SNIPPET = r"""
import json, sys, time
sys.argv = ["x"]
sys.path.insert(0, {root!r})
from lt_jax import cli
if {keep!r}:
    cli.keep_host_memory()
import jax, numpy as np
from benchmarks.throughput import JaxStep
step = JaxStep({batch}, devices=jax.devices(), impl={impl!r}, options={options!r})
print(json.dumps(step.images_per_second({steps}, rounds=2)))
"""


class JaxStep:
    """lt_jax's functional train step on a ResNet-32 with a batch of random images."""

    def __init__(
        self, batch: int, devices=None, impl="auto", options="auto", seeds=1, sequential=None
    ):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from lt_jax import methods, models, steps
        from lt_jax.data import pipeline

        method = methods.get_method("ce", None, np.ones(10), 1)
        model = models.create_model(
            "resnet32",
            num_classes=10,
            rngs=nnx.Rngs(0),
            impl=None if impl == "auto" else impl,
        )
        graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        tx = optax.chain(optax.add_decayed_weights(2e-4), optax.sgd(0.1, momentum=0.9))
        state = {
            "params": params,
            "batch_stats": stats,
            "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
        }
        prep = steps.Preprocess("none", ("mixup", 0.0), (0.5,), (0.25,))
        fn = steps.make_train_step(
            graphdef, nnx.graphdef(model.head), method, tx, lambda s: 0.1, prep
        )
        self.mesh = pipeline.create_mesh(devices)
        rep = NamedSharding(self.mesh, P())
        rng = np.random.default_rng(0)
        # K seeds: K stacked states and K different batches through one vmapped step, as
        # config.num_seeds trains them (lt_jax.steps.over_seeds).
        lead = (seeds,) if seeds > 1 else ()
        images = rng.integers(0, 255, (*lead, batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, (*lead, batch)).astype(np.int32)
        self.key = jax.random.key(0)
        if seeds > 1:
            state = jax.tree.map(lambda x: jnp.stack([x] * seeds), state)
            fn = steps.over_seeds(fn, (0, "batch", 0), sequential=sequential)
            self.key = jax.random.split(self.key, seeds)
        self.state = jax.device_put(state, rep)
        shard = lambda x: pipeline.shard_batch(self.mesh, x, seed_axis=seeds > 1)  # noqa: E731
        # Host-augmented images: the step only normalises.
        self.batch_arrays = pipeline.ImageBatch(shard(images), shard(labels))
        self.batch = batch * seeds
        self.impl = model.impl
        # kernels "xla" = jax.jit without compiler options; None = the backend's options.
        kernels = "xla" if options == "none" else None
        self.step = steps.jit_step(fn, kernels, donate_argnums=(0,))
        start = time.perf_counter()
        self.state, m = self.step(self.state, self.batch_arrays, self.key)
        jax.block_until_ready(m)
        self.compile_s = time.perf_counter() - start

    def run(self, steps: int) -> float:
        import jax

        start = time.perf_counter()
        for _ in range(steps):
            self.state, m = self.step(self.state, self.batch_arrays, self.key)
        jax.block_until_ready((self.state, m))
        return steps * self.batch / (time.perf_counter() - start)

    def images_per_second(self, steps: int, rounds: int = 3) -> float:
        self.run(2)
        return float(np.median([self.run(steps) for _ in range(rounds)]))


def torch_resnet32(num_classes=10):
    """The LDAM-DRW release's ResNet-32 (option-A shortcuts) in PyTorch, returning logits, for
    the reference timing (``benchmarks/torch_reference.release_resnet32``)."""
    from torch import nn

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.torch_reference import release_resnet32

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = release_resnet32(num_classes)

        def forward(self, x):
            return self.net(x)[0]

    return Logits()


class TorchStep:
    """The same step in PyTorch eager, on the CPU or (``device="cuda"``) the GPU."""

    def __init__(self, batch: int, threads: int, device: str = "cpu"):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        self.model = torch_resnet32().to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        self.x = torch.randn(batch, 3, 32, 32, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.batch = batch

    def _sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def run(self, steps: int) -> float:
        F = self.torch.nn.functional
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(self.x), self.y).backward()
            self.opt.step()
        self._sync()
        return steps * self.batch / (time.perf_counter() - start)


def scaling_line(batch: int, steps: int, impl, options, keep=True, counts=(1, 2, 8)) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for n in counts:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        code = SCALING_SNIPPET.format(
            root=root, batch=batch, steps=steps, impl=impl, options=options, keep=keep
        )
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        out[n] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def seeds_line(args, counts) -> None:
    """K seeds in one program against one seed: aggregate images/s, seconds per step, and
    the cost per seed relative to K separate runs."""
    base = None
    for k in counts:
        sequential = {"auto": None, "vmap": False, "unrolled": True}[args.seed_program]
        step = JaxStep(
            args.batch, impl=args.kernels, options=args.compiler_options, seeds=k,
            sequential=sequential,
        )  # fmt: skip
        rate = step.images_per_second(args.steps, rounds=args.rounds)
        per_step = step.batch / rate
        base = base or (per_step if k == 1 else None)
        rel = f", {per_step / base:.2f}x the step time of K=1 ({k} separate runs: {k:.2f}x)"
        print(
            f"seeds K={k:2d}, batch {args.batch}: {rate:8.1f} images/s in all, "
            f"{per_step * 1e3:7.1f} ms/step (compile {step.compile_s:.1f} s)"
            + (rel if base else "")
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument(
        "--seeds",
        default="",
        help="comma-separated seed counts K (e.g. 1,2,4,8): K seeds in one vmapped step "
        "(config.num_seeds) against K=1, aggregate images/s and seconds per step",
    )
    parser.add_argument(
        "--seed-program",
        choices=("auto", "vmap", "unrolled"),
        default="auto",
        help="how K seeds share the program (lt_jax.steps.over_seeds; auto: unrolled on CPU)",
    )
    parser.add_argument("--kernels", choices=("auto", "xla", "cpu"), default="auto")
    parser.add_argument("--compiler-options", choices=("auto", "none"), default="auto")
    parser.add_argument(
        "--host-memory",
        choices=("keep", "default"),
        default="keep",
        help="keep: lt_jax.cli.keep_host_memory() as the training CLI does (applies to "
        "both frameworks, they share the process); default: glibc's malloc settings",
    )
    args = parser.parse_args()
    from lt_jax import cli

    kept = args.host_memory == "keep" and cli.keep_host_memory()
    import jax

    cores = os.cpu_count()
    print(
        f"host: {platform.machine()} {cores} cores; jax {jax.__version__} "
        f"({jax.device_count()} x {jax.devices()[0].platform}); host memory kept: {kept}"
    )
    if args.seeds:
        return seeds_line(args, [int(k) for k in args.seeds.split(",")])
    ours = JaxStep(args.batch, impl=args.kernels, options=args.compiler_options)
    try:
        # PyTorch on the GPU when JAX runs on one (and torch was built with CUDA).
        device = "cpu"
        if jax.devices()[0].platform == "gpu":
            import torch

            if not torch.cuda.is_available():
                raise ImportError("torch was built without CUDA")
            device = "cuda"
        theirs = TorchStep(args.batch, threads=cores, device=device)
    except ImportError:
        theirs = None
        print("torch not installed (pip install -e '.[bench]'): lt_jax only")
    ours.run(2)
    if theirs:
        theirs.run(2)
    jax_rates, torch_rates = [], []
    for _ in range(args.rounds):  # alternate, so background load hits both alike
        jax_rates.append(ours.run(args.steps))
        if theirs:
            torch_rates.append(theirs.run(args.steps))
    j = float(np.median(jax_rates))
    from lt_jax.models import kernels
    from lt_jax.models import native as native_lib

    native = ""
    if ours.impl == "cpu" and kernels.native_enabled():
        native = " + native" if native_lib.convolutions_enabled() else " + native sums"
    print(
        f"lt_jax  ResNet-32 train step, batch {args.batch}: {j:8.1f} images/s "
        f"(compile {ours.compile_s:.1f} s; kernels {ours.impl}{native}, compiler options "
        f"{args.compiler_options})"
    )
    if theirs:
        t = float(np.median(torch_rates))
        where = "GPU" if theirs.device != "cpu" else f"{cores} threads"
        print(f"PyTorch {theirs.torch.__version__} eager, {where}: {t:8.1f} images/s")
        print(f"ratio lt_jax / PyTorch: {j / t:.2f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak host memory (RSS, both frameworks): {peak_mb:.0f} MiB")
    if not args.no_scaling:
        lines = scaling_line(
            args.batch, args.steps, args.kernels, args.compiler_options, keep=bool(kept)
        )
        for n, rate in lines.items():
            print(f"scaling: {n} virtual CPU device(s): {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
