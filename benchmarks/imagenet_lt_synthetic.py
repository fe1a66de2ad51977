r"""The streamed ImageNet-LT path at full size on this machine: a synthetic ImageNet-LT.

  python benchmarks/imagenet_lt_synthetic.py --root /tmp/inlt_syn --stored 72 --size 64
  python benchmarks/imagenet_lt_synthetic.py --root /tmp/inlt_syn256 --stored 256 --size 224 \
      --batches 20        # 224 px: a timed part of the epoch, the epoch time extrapolated

1. Generates 1,000 classes x ImageNet-LT's training counts (115,846 JPEGs) under ``--root``:
   ``train/nXXXXX/i.jpg``, CIFAR-10 training images (``--cifar``) upscaled to ``--stored``
   px (or noise without CIFAR), and the split lists ``ImageNet_LT_{train,test}.txt`` in the
   OLTR format (``train/n00000/0.jpg 0``); the test list names 10 images per class of the
   training folders (this benchmark reads the training split only).
2. Starts ``--processes`` processes as one JAX cluster (``LT_JAX_COORDINATOR`` ...,
   ``lt_jax.distributed``); each loads the lists through lt_jax's own loader
   (``datasets.load_dataset``: ``splits.split_list`` with its statistics check) and reads its
   rows of every global batch of one epoch through Grain (``streaming.train_batches``:
   decode, random-resized-crop to ``--size``, flip), exactly what ``StreamedInput`` feeds a
   train step, without the step.
3. Prints images/s per process, the epoch time, each process's peak RSS, and checks that
   the processes' rows together are the epoch's order, each image once. ``--keep`` keeps
   the generated data; by default it is deleted.

The counts: the real per-class counts of ImageNet_LT_train.txt are not available offline
(the list is downloaded from the classifier-balancing release), so :func:`imagenet_lt_counts`
builds counts with the published statistics that ``splits.check_train_statistics`` checks
(1,000 classes, 115,846 images, largest class 1,280, smallest 5) and the shot groups reported
for ImageNet-LT (385 classes with more than 100 images, 479 with 20-100, 136 with fewer than
20), Pareto-like (a power-law head) as the OLTR paper describes its sampling (Pareto, alpha=6).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar-10-batches-py")
TOTAL, LARGEST, SMALLEST = 115_846, 1280, 5
MANY, MEDIUM, FEW = 385, 479, 136  # > 100, 20..100, < 20 training images


def imagenet_lt_counts() -> np.ndarray:
    """1,000 class sizes, largest first: 1,280 .. 5, 115,846 in all, 385 / 479 / 136 classes
    in the many / medium / few groups. Many: ``101 + 1179 (1 - r/385)^g`` with ``g`` solved
    for the total; medium: log-linear 100 -> 20; few: log-linear 19 -> 5."""
    medium = np.round(np.exp(np.linspace(np.log(100), np.log(20), MEDIUM))).astype(int)
    few = np.round(np.exp(np.linspace(np.log(19), np.log(SMALLEST), FEW))).astype(int)
    want = TOTAL - medium.sum() - few.sum()
    x = np.arange(MANY) / MANY

    def many(g):
        return np.round(101 + (LARGEST - 101) * (1 - x) ** g).astype(int)

    lo, hi = 0.1, 100.0
    for _ in range(100):  # the sum falls as g grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if many(mid).sum() > want else (lo, mid)
    head = many(hi)
    head[1 : 1 + want - head.sum()] += 1  # the rounding remainder (< 385) to the head
    counts = np.concatenate([head, medium, few])
    assert counts.sum() == TOTAL and counts.max() == LARGEST and counts.min() == SMALLEST
    assert (counts > 100).sum() == MANY and (counts < 20).sum() == FEW
    return counts


def _cifar_images():
    import pickle

    try:
        with open(os.path.join(CIFAR, "data_batch_1"), "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except OSError:
        return None
    return d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _write_class(job):
    """Writes one class's JPEGs (a worker of the generator's pool)."""
    from PIL import Image

    root, cls, count, stored, images = job
    rng = np.random.default_rng(cls)
    folder = os.path.join(root, "train", f"n{cls:05d}")
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        if images is not None:
            im = Image.fromarray(images[(cls * 7919 + i) % len(images)])
            im = im.resize((stored, stored), Image.BILINEAR)
        else:
            im = Image.fromarray(rng.integers(0, 256, (stored, stored, 3), dtype=np.uint8))
        im.save(os.path.join(folder, f"{i}.jpg"), quality=90)
    return count


def generate(root, counts, stored=72, *, workers=2, test_per_class=10, use_cifar=True):
    """The images and the OLTR-format split lists of ``counts`` under ``root``; seconds."""
    from multiprocessing import Pool

    started = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    images = _cifar_images() if use_cifar else None
    jobs = [(root, c, int(n), stored, images) for c, n in enumerate(counts)]
    with Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_class, jobs, chunksize=8):
            pass
    with open(os.path.join(root, "ImageNet_LT_train.txt"), "w") as f:
        for c, n in enumerate(counts):
            f.writelines(f"train/n{c:05d}/{i}.jpg {c}\n" for i in range(n))
    with open(os.path.join(root, "ImageNet_LT_test.txt"), "w") as f:
        for c, n in enumerate(counts):
            f.writelines(f"train/n{c:05d}/{i % n}.jpg {c}\n" for i in range(test_per_class))
    return time.perf_counter() - started


def small_spec(counts):
    """A ``ListSpec`` for an ImageNet-LT-shaped list of other ``counts`` (tests)."""
    from lt_jax.data import splits

    spec = splits.SPLIT_LISTS["imagenet_lt"]
    return spec._replace(
        num_classes=len(counts),
        train_images=int(np.sum(counts)),
        train_max=int(np.max(counts)),
        train_min=int(np.min(counts)),
    )


def worker(args) -> None:
    """One process of the cluster: its rows of one epoch, timed; a JSON line on stdout."""
    from lt_jax import config_lib, distributed

    distributed.initialize()  # from LT_JAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID
    import jax

    from lt_jax.data import datasets, samplers, splits, streaming

    if args.counts:  # a small ImageNet-LT-shaped list (the test, --train)
        counts = json.loads(args.counts)
        splits.SPLIT_LISTS["imagenet_lt"] = small_spec(counts)
    if args.train:
        return train_worker(args)
    cfg = config_lib.base_config().dataset
    cfg.name, cfg.data_dir, cfg.lists_dir = "imagenet_lt", args.root, args.root
    started = time.perf_counter()
    data, _ = datasets.load_dataset(cfg)
    load_s = time.perf_counter() - started
    order = samplers.epoch_indices("instance", data.train_labels, seed=0, epoch=0)
    num_batches = len(order) // args.batch
    stop = min(num_batches, args.batches) if args.batches else num_batches
    batches = streaming.train_batches(
        data.train_files,
        data.train_labels,
        order[: stop * args.batch],
        batch_size=args.batch,
        epoch=0,
        seed=0,
        size=args.size,
        num_threads=args.threads,
    )
    seen, images, first_s = [], 0, None
    started = time.perf_counter()
    for b, (x, y) in enumerate(batches):
        if b == 0:
            first_s = time.perf_counter() - started
            started = time.perf_counter()
        else:
            images += len(x)
        if args.record:  # the image ids, written into the pixels by the test's generator
            ids = x[:, 0, 0, :2].astype(np.int64)
            seen.extend(int(v) for v in ids[:, 0] + 256 * ids[:, 1])
            assert x.shape[1:] == (args.size, args.size, 3) and len(y) == len(x)
    seconds = time.perf_counter() - started
    rows = streaming.host_rows(args.batch)
    result = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "load_s": load_s,
        "first_batch_s": first_s,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds else None,
        "rows_per_epoch": num_batches * (rows.stop - rows.start),
        "num_batches": num_batches,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.record:
        result["seen"] = seen
        result["order"] = [int(i) for i in order[: stop * args.batch]]
    print(json.dumps(result), flush=True)


def train_worker(args) -> None:
    """One process of ``configs/imagenet_lt.py:runlocal`` (ResNet-50, bf16, streamed input,
    FBL) trained by ``lt_jax.train`` on the small list: the pod's code path, end to end."""
    import importlib.util

    import jax

    from lt_jax import train

    spec = importlib.util.spec_from_file_location("imagenet_lt", f"{ROOT}/configs/imagenet_lt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(f"runlocal=True,data_dir={args.root},lists_dir={args.root}")
    config.dataset.image_size = args.size
    config.log_every_steps = 1
    started = time.perf_counter()
    results = train.train_and_evaluate(config, args.train)
    print(json.dumps({
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": results["devices"],
        "model": config.model,
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "top1": results["final"]["top1"],
        "seconds": time.perf_counter() - started,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }), flush=True)  # fmt: skip


def run_cluster(root, *, processes=2, batch=256, size=64, batches=0, threads=8, counts=None,
                record=False, train=None, timeout=3600):  # fmt: skip
    """Starts ``processes`` workers as one cluster on a free localhost port; their results."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--root", root]
    cmd += ["--batch", str(batch), "--size", str(size), "--batches", str(batches)]
    cmd += ["--threads", str(threads)] + (["--record"] if record else [])
    cmd += ["--counts", json.dumps([int(c) for c in counts])] if counts is not None else []
    cmd += ["--train", train] if train else []
    procs = []
    for i in range(processes):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LT_JAX_")}
        env.update(
            LT_JAX_COORDINATOR=f"127.0.0.1:{port}",
            LT_JAX_NUM_PROCESSES=str(processes),
            LT_JAX_PROCESS_ID=str(i),
            XLA_FLAGS="--xla_force_host_platform_device_count=1",
            PYTHONPATH=ROOT,
        )
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"worker failed with status {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return sorted(results, key=lambda r: r["process"])


def check_once_per_epoch(results, batch) -> None:
    """The processes' rows together are the epoch's order, each image exactly once."""
    order = results[0]["order"]
    per_host = batch // len(results)
    for r in results:
        p = r["process"]
        mine = [
            order[b * batch + p * per_host + k]
            for b in range(len(order) // batch)
            for k in range(per_host)
        ]
        assert r["seen"] == mine, f"process {p} read other rows than its share"
    seen = sorted(i for r in results for i in r["seen"])
    assert seen == sorted(order), "an image was read twice or never"


TRAIN_COUNTS = [24, 16, 12, 8, 4]  # 64 images: 4 steps of runlocal's batch 16


def train_main(args) -> None:
    """``--train``: the ResNet-50 ImageNet-LT code path on a 2-process CPU cluster."""
    generate(args.root, TRAIN_COUNTS, args.stored, workers=1, test_per_class=4)
    try:
        results = run_cluster(
            args.root, processes=args.processes, size=args.size, counts=TRAIN_COUNTS,
            train=args.train,
        )  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)
    for r in results:
        print(json.dumps(r))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/lt_jax_inlt_synthetic")
    parser.add_argument("--stored", type=int, default=72, help="side of the stored JPEGs")
    parser.add_argument("--size", type=int, default=64, help="random-resized-crop size")
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--batches", type=int, default=0, help="0: the whole epoch")
    parser.add_argument("--threads", type=int, default=8, help="Grain threads per process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--noise", action="store_true", help="noise images instead of CIFAR")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument(
        "--train",
        default="",
        metavar="WORKDIR",
        help="instead: train configs/imagenet_lt.py:runlocal (ResNet-50, bf16, streamed) for "
        "one epoch of a 64-image ImageNet-LT-shaped list at --size px with the cluster",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--counts", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.train:
        return train_main(args)
    counts = imagenet_lt_counts()
    if not os.path.exists(os.path.join(args.root, "ImageNet_LT_train.txt")):
        seconds = generate(args.root, counts, args.stored, use_cifar=not args.noise)
        print(f"generated {counts.sum()} JPEGs of {args.stored} px in {seconds:.0f} s")
    size_mib = int(subprocess.check_output(["du", "-sm", args.root]).split()[0])
    print(f"{args.root}: {size_mib} MiB, {len(counts)} classes, {counts.max()}..{counts.min()}")
    try:
        results = run_cluster(
            args.root,
            processes=args.processes,
            batch=args.batch,
            size=args.size,
            batches=args.batches,
            threads=args.threads,
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)
    for r in results:
        epoch_s = r["rows_per_epoch"] / r["images_per_s"]
        print(
            f"process {r['process']}/{r['processes']}: lists loaded in {r['load_s']:.1f} s, "
            f"first batch {r['first_batch_s']:.1f} s, {r['images_per_s']:.0f} images/s "
            f"at {args.size} px ({r['images']} images in {r['seconds']:.1f} s), epoch "
            f"{epoch_s:.0f} s ({r['rows_per_epoch']} rows), peak RSS {r['max_rss_mib']:.0f} MiB"
        )
    total = sum(r["images_per_s"] for r in results)
    print(f"all processes: {total:.0f} images/s, epoch of {counts.sum()} images "
          f"{counts.sum() // args.batch * args.batch / total:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
