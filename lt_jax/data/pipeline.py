"""From a loaded dataset to sharded batches: the mesh, the two inputs, the batch types.

Data-parallel over every device on a 1-D ``data`` mesh: batches are sharded on ``data``
(``P("data")``), everything else replicated. Both inputs yield one of two batch types,
so a step sees explicitly what it got:

* :class:`GatherBatch` (in memory): the whole split lives on the device as uint8 and the
  batch is an index vector gathered inside the jitted step, where it is also augmented;
* :class:`ImageBatch` (streamed): the batch's own images, decoded and augmented on the
  host by Grain workers.

In a multi-process run every process contributes its own rows
(``streaming.host_rows``) and ``jax.make_array_from_process_local_data`` assembles the
global batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lt_jax.data import augment, datasets, samplers, streaming


def create_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    # Auto axes: the batch-sharded gathers and vmapped per-example augmentation of the
    # step are resolved by the compiler (Explicit mode rejects vmaps over mixed shardings).
    return jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def shard_batch(mesh, local: np.ndarray, *, seed_axis: bool = False) -> jax.Array:
    """Host-local rows -> a global array sharded on the ``data`` axis (the first axis, or
    the second after a leading seed axis: seeds replicated, each seed's batch sharded)."""
    spec = P(None, "data") if seed_axis else P("data")
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)


class GatherBatch(NamedTuple):
    """In memory: a whole split on the device (replicated) and this batch's rows of it."""

    images: jax.Array  # [N, H, W, C] uint8
    labels: jax.Array | None  # [N] int32; None when evaluating
    idx: jax.Array  # [B] int32, sharded on "data"

    host_augmented = False  # augmented on the device, inside the step

    def seed_axes(self):
        """``jax.vmap`` axes of a batch with one index vector per seed ([K, B]): the split
        is shared."""
        return GatherBatch(None, None, 0)

    def take(self):
        """(images [B, H, W, C], labels [B] or None) of the batch."""
        return self.images[self.idx], None if self.labels is None else self.labels[self.idx]


class ImageBatch(NamedTuple):
    """Streamed: the batch's images, already cropped and flipped on the host."""

    images: jax.Array  # [B, H, W, C] uint8, sharded on "data"
    labels: jax.Array | None  # [B] int32; None when evaluating

    host_augmented = True  # only normalised on the device

    def seed_axes(self):
        return ImageBatch(0, None if self.labels is None else 0)

    def take(self):
        return self.images, self.labels


def epoch_sizes(num_examples: int, batch_size: int, *, drop_last: bool) -> list[int]:
    """Batch sizes of one epoch (each a multiple of the device count; the last one partial
    unless ``drop_last``)."""
    return samplers.epoch_batches(
        num_examples, batch_size, drop_last=drop_last, multiple=jax.device_count()
    )


class InMemoryInput:
    """Images on the device; batches are index vectors gathered inside the step.

    Each epoch keeps its last partial batch unless ``drop_last`` (the releases'
    ``DataLoader(drop_last=False)``).
    """

    def __init__(self, data, mesh, *, drop_last: bool = False):
        rep = NamedSharding(mesh, P())
        self.data, self.mesh, self.drop_last = data, mesh, drop_last
        self.images = {
            "train": jax.device_put(data.train_images, rep),
            "test": jax.device_put(data.test_images, rep),
        }
        self.labels = jax.device_put(data.train_labels, rep)
        self.image_shape = tuple(data.train_images.shape[1:])  # (H, W, C)

    def epoch_sizes(self, batch_size: int) -> list[int]:
        return epoch_sizes(len(self.data.train_labels), batch_size, drop_last=self.drop_last)

    def train(self, order, *, epoch, start_batch, sizes, seed):
        """The batches ``start_batch..`` of an epoch visiting ``order`` ([N], or [K, N]: one
        order per seed, then each batch's indices are [K, B])."""
        del epoch, seed
        ends = np.cumsum(sizes)
        for b in range(start_batch, len(sizes)):
            idx = order[..., ends[b] - sizes[b] : ends[b]][..., streaming.host_rows(sizes[b])]
            idx = shard_batch(self.mesh, idx, seed_axis=order.ndim == 2)
            yield GatherBatch(self.images["train"], self.labels, idx)

    def infer(self, split, batch_size):
        """(batch, global mask of the real rows) over ``split`` ("train" | "test")."""
        n = len(self.data.test_labels if split == "test" else self.data.train_labels)
        rows = streaming.host_rows(batch_size)
        for idx, mask in augment.eval_batches(n, batch_size):
            yield GatherBatch(self.images[split], None, shard_batch(self.mesh, idx[rows])), mask


class StreamedInput:
    """Images decoded from disk by Grain workers; host-side random-resized-crop + flip.

    Streamed epochs are whole batches (a partial one would be a new shape to compile).
    """

    def __init__(self, data: datasets.StreamDataset, mesh, *, size: int = 224, resize: int = 256):
        self.data, self.mesh, self.size, self.resize = data, mesh, size, resize
        self.image_shape = (size, size, 3)  # decoded to RGB, cropped to size

    def epoch_sizes(self, batch_size: int) -> list[int]:
        return epoch_sizes(len(self.data.train_labels), batch_size, drop_last=True)

    def train(self, order, *, epoch, start_batch, sizes, seed):
        """The batches ``start_batch..`` of an epoch visiting ``order`` ([N] with ``seed``
        an int, or [K, N] with K seeds: then each batch is [K, B, ...])."""
        stacked = order.ndim == 2
        batches = streaming.train_batches(
            self.data.train_files,
            self.data.train_labels,
            order,
            batch_size=sizes[0],
            epoch=epoch,
            seed=seed,
            size=self.size,
            start_batch=start_batch,
        )
        for x, y in batches:
            yield ImageBatch(
                shard_batch(self.mesh, x, seed_axis=stacked),
                shard_batch(self.mesh, y, seed_axis=stacked),
            )

    def infer(self, split, batch_size):
        files, labels = (
            (self.data.test_files, self.data.test_labels)
            if split == "test"
            else (self.data.train_files, self.data.train_labels)
        )
        batches = streaming.eval_batches(
            files, labels, batch_size=batch_size, size=self.size, resize=self.resize
        )
        for b, (x, _, _) in enumerate(batches):
            mask = np.arange(b * batch_size, (b + 1) * batch_size) < len(files)
            yield ImageBatch(shard_batch(self.mesh, x), None), mask


def make_input(data, mesh, dataset_cfg, *, drop_last: bool):
    """The input of a loaded dataset: streamed or in memory, as its registry entry says."""
    if datasets.info(dataset_cfg.name).streamed:
        return StreamedInput(data, mesh, size=dataset_cfg.image_size)
    return InMemoryInput(data, mesh, drop_last=drop_last)
