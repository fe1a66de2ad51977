"""The standard split lists of ImageNet-LT, Places-LT and iNaturalist 2018.

Each list has lines ``relative/path label``. A list is taken, in order, from a
local folder the user names (``lists_dir``), from the cache
(``$LT_JAX_CACHE/splits``, default ``~/.cache/lt_jax/splits``), or downloaded from its public
location (the lists as released with Kang et al.'s classifier-balancing code).
A downloaded list is accepted only if its content matches the protocol's
published statistics (classes, images, largest and smallest class; spec
section 1); its SHA-256 is then recorded next to it and checked on every later
read, so a changed or truncated cache file is caught.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from typing import NamedTuple

import numpy as np

_BASE = "https://github.com/facebookresearch/classifier-balancing/raw/main/data/"


class ListSpec(NamedTuple):
    folder: str  # folder of the lists at the public location
    files: dict  # split -> file name
    num_classes: int
    train_images: int
    train_max: int
    train_min: int
    eval_split: str  # the split results are reported on


SPLIT_LISTS = {
    "imagenet_lt": ListSpec(
        "ImageNet_LT",
        {s: f"ImageNet_LT_{s}.txt" for s in ("train", "val", "test")},
        1000,
        115_846,
        1280,
        5,
        "test",
    ),
    "places_lt": ListSpec(
        "Places_LT",
        {s: f"Places_LT_{s}.txt" for s in ("train", "val", "test")},
        365,
        62_500,
        4980,
        5,
        "test",
    ),
    "inat2018": ListSpec(
        "iNaturalist18",
        {s: f"iNaturalist18_{s}.txt" for s in ("train", "val")},
        8142,
        437_513,
        1000,
        2,
        "val",
    ),
}

DOWNLOAD_TIMEOUT_S = 4.0


def cache_dir() -> str:
    """``splits`` in lt_jax's cache folder (:func:`lt_jax.models.native.cache_root`:
    ``$LT_JAX_CACHE``, default ``~/.cache/lt_jax``), beside the compiled programs and the
    native library."""
    from lt_jax.models import native  # the one definition of the cache folder

    return os.path.join(native.cache_root(), "splits")


def parse_split_list(path: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Reads ``relative/path label`` lines; names the file and line of any bad entry."""
    paths, labels = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(
                    f"{path}:{n}: expected 'relative/path label', got {line.strip()!r}"
                )
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise ValueError(
                    f"{path}:{n}: label {label} is outside the class range [0, {num_classes})"
                )
            paths.append(parts[0])
            labels.append(label)
    if not paths:
        raise ValueError(f"{path} lists no images")
    return paths, np.asarray(labels, np.int32)


def check_train_statistics(dataset: str, labels: np.ndarray, source: str) -> None:
    """The training list must have the protocol's published statistics."""
    spec = SPLIT_LISTS[dataset]
    counts = np.bincount(labels, minlength=spec.num_classes)
    got = (len(labels), int(counts.max()), int(counts.min()))
    want = (spec.train_images, spec.train_max, spec.train_min)
    if got != want:
        raise ValueError(
            f"{source} is not the standard {dataset} training list: (images, largest, smallest "
            f"class) = {got}, expected {want}"
        )


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            data = r.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise FileNotFoundError(
            f"could not download {url} ({getattr(e, 'reason', e)}); without network, put the "
            f"file in a folder and set config.dataset.lists_dir to it"
        ) from None
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)


def split_list(dataset: str, split: str, *, lists_dir: str = "", download: bool = True):
    """(relative paths, labels) of ``split`` of ``dataset``'s standard list."""
    if dataset not in SPLIT_LISTS:
        raise ValueError(f"no split lists for {dataset!r}; valid: {', '.join(SPLIT_LISTS)}")
    spec = SPLIT_LISTS[dataset]
    if split not in spec.files:
        raise ValueError(f"{dataset} has no {split!r} list; valid: {', '.join(spec.files)}")
    name = spec.files[split]
    if lists_dir:
        path = os.path.join(lists_dir, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found (config.dataset.lists_dir)")
        paths, labels = parse_split_list(path, spec.num_classes)
        if split == "train":
            check_train_statistics(dataset, labels, path)
        return paths, labels
    path = os.path.join(cache_dir(), dataset, name)
    digest_file = path + ".sha256"
    if os.path.exists(path) and os.path.exists(digest_file):
        with open(digest_file) as f:
            if f.read().strip() != _sha256(path):
                raise ValueError(
                    f"{path} does not match its recorded SHA-256; delete it to refetch"
                )
        return parse_split_list(path, spec.num_classes)
    if not download:
        raise FileNotFoundError(f"{name} is not in {os.path.dirname(path)} and downloads are off")
    _download(_BASE + f"{spec.folder}/{name}", path)
    paths, labels = parse_split_list(path, spec.num_classes)
    if split == "train":
        try:
            check_train_statistics(dataset, labels, path)
        except ValueError:
            os.remove(path)
            raise
    with open(digest_file, "w") as f:
        f.write(_sha256(path))
    return paths, labels


def sort_classes_by_frequency(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Old -> new label map so that class 0 is the most frequent (stable on ties).

    The ImageNet-LT / Places-LT releases re-index this way; apply the same map to
    every split: ``new_labels = mapping[old_labels]``.
    """
    counts = np.bincount(labels, minlength=num_classes)
    order = np.argsort(-counts, kind="stable")
    mapping = np.empty(num_classes, np.int64)
    mapping[order] = np.arange(num_classes)
    return mapping
