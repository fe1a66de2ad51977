"""Packs the CIFAR-LT training images a run needs into a small ``cifar-*-python`` archive.

Usage: python benchmarks/pack_cifar_lt.py [--data-dir ../shared/data/cifar-10-batches-py]
           [--dataset cifar10] [--imb 100] [--split-seeds 0,666] [--out .pack]

For machines that can take only a few tens of MiB of files (a lent GPU: 64 MiB in all). The
archive keeps the standard layout, the official order and every label, the whole test split,
and the training images of the release splits (``lt_jax.data.longtail.release_split``) for
the given seeds; every other training image is set to zero, which costs nothing once
compressed. lt_jax reads it like the original (``data_dir=`` the extracted folder) and draws
the same split, and its constant-image check refuses a run whose split would select one of
the blanked images (a different seed, IF or protocol). Writes ``OUT/<folder>.tar.xz`` and
prints its size and the md5 of the selected pixels.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import sys
import tarfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    parser.add_argument("--imb", type=float, default=100.0)
    parser.add_argument("--split-seeds", default="0,666")
    parser.add_argument("--out", default=os.path.join(ROOT, ".pack"))
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from lt_jax.data import longtail, sources

    data = sources.load_cifar_archive(args.data_dir, args.dataset)
    keep = np.zeros(len(data.train_labels), bool)
    for seed in (int(s) for s in args.split_seeds.split(",")):
        keep[longtail.release_split(data.train_labels, imb_factor=args.imb, seed=seed)] = True
    train = np.where(keep[:, None, None, None], data.train_images, 0).astype(np.uint8)
    rows = lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)  # noqa: E731

    names = [n.encode() for n in data.class_names]
    if args.dataset == "cifar10":
        folder, key = "cifar-10-batches-py", b"labels"
        parts = {
            f"data_batch_{k + 1}": slice(10000 * k, 10000 * (k + 1)) for k in range(5)
        }  # the official five batches of 10,000
        meta = ("batches.meta", {b"label_names": names})
        test_name = "test_batch"
    else:
        folder, key = "cifar-100-python", b"fine_labels"
        parts = {"train": slice(0, len(train))}
        meta = ("meta", {b"fine_label_names": names})
        test_name = "test"
    files = {
        name: {b"data": rows(train[part]), key: data.train_labels[part].tolist()}
        for name, part in parts.items()
    }
    files[test_name] = {b"data": rows(data.test_images), key: data.test_labels.tolist()}
    files[meta[0]] = meta[1]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{folder}.tar.xz")
    with tarfile.open(path, "w:xz") as tar:
        for name, content in files.items():
            blob = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    digest = hashlib.md5(train[keep].tobytes()).hexdigest()
    print(
        f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB; {int(keep.sum())} of {len(keep)} "
        f"training images kept (IF {args.imb:g}, split seeds {args.split_seeds}), "
        f"{len(data.test_labels)} test images; md5 of the kept pixels {digest}"
    )
    return path


if __name__ == "__main__":
    main()
