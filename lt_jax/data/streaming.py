"""Streaming input for large datasets (ImageNet-LT, Places-LT, iNaturalist, big folders).

Built on Grain (``grain.MapDataset``): pure Python, no TensorFlow, random access
so that an epoch is any index order our samplers produce, and threaded
decoding with a prefetch buffer. Each host reads only its rows of every global
batch (``jax.process_index``); the trainer stitches them into a global array
with ``jax.make_array_from_process_local_data``.

Augmentation is host-side and deterministic: example ``k`` of epoch ``e`` uses
``np.random.default_rng([seed, e, k])``, so a resumed run sees the same crops.
Train: random-resized-crop (scale 0.08-1, ratio 3/4-4/3) to ``size`` + flip.
Eval: resize the short side to ``resize``, centre crop ``size``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import grain
import jax
import numpy as np
from PIL import Image

from lt_jax.data import sources


def random_resized_crop_params(rng, height, width, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: centre crop with the ratio clamped.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _open_rgb(path: str) -> Image.Image:
    try:
        im = Image.open(path)
        return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot decode image file {path}: {e}") from None


def train_transform(path: str, rng: np.random.Generator, size: int) -> np.ndarray:
    im = _open_rgb(path)
    top, left, h, w = random_resized_crop_params(rng, im.height, im.width)
    im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    x = np.asarray(im, np.uint8)
    return x[:, ::-1] if rng.random() < 0.5 else x


def eval_transform(path: str, size: int, resize: int) -> np.ndarray:
    im = _open_rgb(path)
    scale = resize / min(im.width, im.height)
    im = im.resize(
        (max(resize, round(im.width * scale)), max(resize, round(im.height * scale))),
        Image.BILINEAR,
    )
    top, left = (im.height - size) // 2, (im.width - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)


def host_rows(batch_size: int) -> slice:
    """This process's rows of a global batch (hosts hold equal, contiguous slices)."""
    per_host = batch_size // jax.process_count()
    return slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)


def train_batches(
    files: Sequence[str],
    labels: np.ndarray,
    order: np.ndarray,
    *,
    batch_size: int,
    epoch: int,
    seed: int | Sequence[int],
    size: int = 224,
    start_batch: int = 0,
    num_threads: int = 16,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This host's rows of every global batch of one epoch, from ``start_batch`` on.

    ``order`` is the epoch's global index order (from ``lt_jax.data.samplers``);
    the last partial batch is dropped. Several seeds trained together (``config.num_seeds``)
    pass one order per seed ([K, N]) and their seeds: each batch is then [K, rows, ...],
    seed k's rows exactly those a run with ``seed[k]`` alone reads and augments, all
    decoded by one pool of threads.
    """
    orders = np.asarray(order)
    stacked = orders.ndim == 2
    orders = orders if stacked else orders[None]
    seeds = [int(s) for s in np.atleast_1d(seed)]
    if len(seeds) != len(orders):
        raise ValueError(f"{len(orders)} index orders but {len(seeds)} seeds")
    rows = host_rows(batch_size)
    num_batches = orders.shape[1] // batch_size
    items = [
        (int(o[b * batch_size + r]), b * batch_size + r, s)
        for b in range(start_batch, num_batches)
        for o, s in zip(orders, seeds, strict=True)
        for r in range(rows.start, rows.stop)
    ]

    def load(item):
        index, position, s = item
        rng = np.random.default_rng([s, epoch, position])
        return train_transform(files[index], rng, size), labels[index]

    per_batch = len(seeds) * (rows.stop - rows.start)
    ds = (
        grain.MapDataset.source(items)
        .map(load)
        .batch(per_batch, drop_remainder=True)
        .to_iter_dataset(
            grain.ReadOptions(
                num_threads=num_threads, prefetch_buffer_size=4 * len(seeds) * batch_size
            )
        )
    )
    for x, y in ds:
        if stacked:
            x, y = x.reshape(len(seeds), -1, *x.shape[1:]), y.reshape(len(seeds), -1)
        yield x, y


def eval_batches(
    files: Sequence[str],
    labels: np.ndarray,
    *,
    batch_size: int,
    size: int = 224,
    resize: int = 256,
    num_threads: int = 16,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images, labels, mask) host rows of padded global batches; every example once."""
    rows = host_rows(batch_size)
    n = len(files)
    num_batches = -(-n // batch_size)
    items = [b * batch_size + r for b in range(num_batches) for r in range(rows.start, rows.stop)]

    def load(position):
        index = position if position < n else 0
        return eval_transform(files[index], size, resize), labels[index], position < n

    ds = (
        grain.MapDataset.source(items)
        .map(load)
        .batch(rows.stop - rows.start)
        .to_iter_dataset(
            grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size)
        )
    )
    yield from ds


def folder_file_lists(root: str, split: str):
    """(files, labels, class names) of ``root/split/<class>/*`` for streaming."""
    return sources.list_image_folder(f"{root}/{split}")
