"""The dataset registry: what a run's ``config.dataset.name`` means, and loading it.

``load_dataset(cfg)`` returns ``(dataset, kept)``: the long-tailed training split with the
balanced test split, and the positions of the kept training images in the source (written
to ``split.json``). Two kinds of dataset:

* in memory (:class:`~lt_jax.data.sources.ArrayDataset`, uint8 arrays on the device):
  MNIST-LT, CIFAR-10/100-LT, any image folder; the long-tailed subset is drawn here with
  the configured profile and split protocol;
* streamed (:class:`StreamDataset`, file paths decoded during training): ImageNet-LT,
  Places-LT, iNaturalist 2018 over their standard split lists.

Adding a dataset is one :data:`DATASETS` entry (and, for a new file format, a loader in
``sources``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from lt_jax import config_lib
from lt_jax.data import augment, sources, splits

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class StreamDataset(NamedTuple):
    """A dataset read from disk during training (file paths + labels)."""

    train_files: list[str]
    train_labels: np.ndarray
    test_files: list[str]
    test_labels: np.ndarray
    num_classes: int

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.train_labels, minlength=self.num_classes)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset.

    ``load(cfg)`` reads the full source (in memory: an ``ArrayDataset`` to subsample;
    streamed: the ``StreamDataset`` of its split lists). ``n_max`` is the head-class count
    of the ``per_class`` long-tailed profile (0: the source's own); ``mean``/``std``
    normalise the images on the device (one value per channel).
    """

    load: Callable[..., sources.ArrayDataset | StreamDataset]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_max: int = 0
    streamed: bool = False


def _cifar(cfg) -> sources.ArrayDataset:
    """A CIFAR python archive / its folder, an image folder, or TensorFlow Datasets."""
    if os.path.isdir(os.path.join(cfg.data_dir, "train")):
        return sources.load_image_folder(cfg.data_dir)
    if not cfg.data_dir or cfg.data_dir.startswith("tfds"):
        # No local copy: TensorFlow Datasets ("tfds" or "tfds:/path/to/tfds_data_dir").
        tfds_dir = cfg.data_dir.partition(":")[2] or None
        return sources.load_tfds(cfg.name.removesuffix("_lt"), data_dir=tfds_dir)
    accepted = (
        "the CIFAR python archive (e.g. cifar-10-python.tar.gz), its extracted folder "
        "(cifar-10-batches-py), or an image folder root/{train,test}/<class>/*"
    )
    if not os.path.exists(cfg.data_dir):
        raise FileNotFoundError(
            f"data_dir {cfg.data_dir!r} does not exist; set it to {accepted}, or leave it "
            "empty for TensorFlow Datasets"
        )
    try:
        return sources.load_cifar_archive(cfg.data_dir, cfg.name.removesuffix("_lt"))
    except FileNotFoundError:
        raise FileNotFoundError(f"data_dir {cfg.data_dir!r} exists but is not {accepted}") from None


def _split_lists(cfg) -> StreamDataset:
    """The standard split lists (``lt_jax.data.splits``) over the image root ``data_dir``."""
    if not os.path.isdir(cfg.data_dir):
        raise FileNotFoundError(
            f"image root {cfg.data_dir!r} of {cfg.name} does not exist "
            "(set config.dataset.data_dir to the folder the split lists are relative to)"
        )
    spec = splits.SPLIT_LISTS[cfg.name]
    train_rel, train_y = splits.split_list(cfg.name, "train", lists_dir=cfg.lists_dir)
    test_rel, test_y = splits.split_list(cfg.name, spec.eval_split, lists_dir=cfg.lists_dir)
    if cfg.sort_classes:
        mapping = splits.sort_classes_by_frequency(train_y, spec.num_classes)
        train_y, test_y = mapping[train_y].astype(np.int32), mapping[test_y].astype(np.int32)
    root = cfg.data_dir
    first = os.path.join(root, train_rel[0])
    if not os.path.exists(first):
        raise FileNotFoundError(
            f"{first} (the first image of the {cfg.name} training list) does not exist; "
            f"config.dataset.data_dir must be the root the list paths are relative to"
        )
    return StreamDataset(
        [os.path.join(root, p) for p in train_rel],
        train_y,
        [os.path.join(root, p) for p in test_rel],
        test_y,
        spec.num_classes,
    )


_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
_STREAMED = dict(load=_split_lists, mean=IMAGENET_MEAN, std=IMAGENET_STD, streamed=True)

DATASETS: dict[str, DatasetInfo] = {
    "mnist_lt": DatasetInfo(lambda cfg: sources.load_mnist_5k(), (0.1307,), (0.3081,), n_max=400),
    "cifar10_lt": DatasetInfo(_cifar, augment.CIFAR_MEAN, augment.CIFAR_STD, n_max=5000),
    "cifar100_lt": DatasetInfo(_cifar, _CIFAR100_MEAN, _CIFAR100_STD, n_max=500),
    # root/{train,test}/<class>/*, normalised with the CIFAR statistics.
    "image_folder": DatasetInfo(
        lambda cfg: sources.load_image_folder(cfg.data_dir), augment.CIFAR_MEAN, augment.CIFAR_STD
    ),
    "imagenet_lt": DatasetInfo(**_STREAMED),
    "places_lt": DatasetInfo(**_STREAMED),
    "inat2018": DatasetInfo(**_STREAMED),
}


def info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; an unknown name is a one-line error listing them."""
    if name not in DATASETS:
        raise config_lib.unknown("dataset", name, sorted(DATASETS))
    return DATASETS[name]


def load_dataset(cfg):
    """(dataset, kept indices) of ``cfg`` (a config's ``dataset`` block).

    In-memory datasets are subsampled with the configured profile (``profile="none"``
    keeps an image folder's own counts); streamed ones keep their split lists whole.
    """
    spec = info(cfg.name)
    full = spec.load(cfg)
    if spec.streamed:
        return full, np.arange(len(full.train_labels))
    if cfg.profile == "none":
        data, kept = full, np.arange(len(full.train_labels))
    else:
        data, kept = _long_tailed(full, cfg, spec)
    if not cfg.allow_constant_images:
        sources.check_no_constant_images(data.train_images, kept, where=cfg.data_dir or cfg.name)
    return data, kept


def _long_tailed(full, cfg, spec):
    # The release protocol's n_max is the per-class count of the data (None: that one).
    default_n_max = None if cfg.split_protocol == "release" else spec.n_max
    return sources.make_long_tailed(
        full,
        n_max=cfg.n_max or default_n_max,
        imb_factor=cfg.imb_factor,
        profile=cfg.profile,
        seed=cfg.split_seed,
        protocol=cfg.split_protocol,
    )
