"""Long-tailed subsampling, shot groups, and the split bookkeeping kept in the workdir.

Protocol (spec section 1, the Cao et al. 2019 lineage): class ``i`` keeps
``n_i = floor(n_max * IF^(-i / (C - 1)))`` examples, class 0 is the head. Which
examples are kept is one of two named protocols (``SPLIT_PROTOCOLS``):

- ``release``: the LDAM-DRW generator that the KPS, FBL and GCL releases all use:
  NumPy's legacy global RNG seeded once with the split seed, then for each class in
  order its indices (in dataset order) shuffled with ``np.random.shuffle`` and the
  first ``n_i`` kept. One RNG stream across classes, so class c's subset depends on
  every class before it. The default for CIFAR-LT: the papers' splits exactly.
- ``per_class``: each class shuffled by its own ``default_rng([seed, c])``, so one
  class's subset does not depend on the others' counts (lt_jax's original protocol).

Everything here is NumPy on the host and a pure function of its arguments (the
release protocol uses a private ``RandomState``, never the global one), so every
host of a multi-host job computes the same split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

SHOT_CONVENTIONS = ("paper", "oltr")
SPLIT_PROTOCOLS = ("release", "per_class")
GROUPS = ("many", "medium", "few")


def _check_imbalance(num_classes: int, n_max: int, imb_factor: float) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if not imb_factor >= 1:
        raise ValueError(f"imbalance factor must be >= 1 (n_max / n_min), got {imb_factor}")


def exp_profile(num_classes: int, n_max: int, imb_factor: float) -> np.ndarray:
    """Exponential profile: ``n_i = floor(n_max * IF^(-i / (C - 1)))``, class 0 the head.

    Examples:
      >>> exp_profile(10, 5000, 100).tolist()
      [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    _check_imbalance(num_classes, n_max, imb_factor)
    if num_classes == 1:
        return np.array([n_max], np.int64)
    # Written as the release computes it (int(n_max * (1/IF)^(i/(C-1)))), so the
    # floor falls on the same side for every class.
    i = np.arange(num_classes, dtype=np.float64)
    counts = np.floor(n_max * (1.0 / float(imb_factor)) ** (i / (num_classes - 1.0)))
    return np.maximum(counts, 1).astype(np.int64)


def step_profile(num_classes: int, n_max: int, imb_factor: float) -> np.ndarray:
    """Step profile: the first half of the classes keep ``n_max``, the rest ``n_max / IF``.

    Examples:
      >>> step_profile(4, 500, 10).tolist()
      [500, 500, 50, 50]
    """
    _check_imbalance(num_classes, n_max, imb_factor)
    counts = np.full(num_classes, n_max, np.int64)
    counts[num_classes // 2 :] = max(int(n_max / imb_factor), 1)
    return counts


PROFILES = {"exp": exp_profile, "step": step_profile}


def profile_counts(profile: str, num_classes: int, n_max: int, imb_factor: float) -> np.ndarray:
    if profile not in PROFILES:
        raise ValueError(f"unknown imbalance profile {profile!r}; valid: {', '.join(PROFILES)}")
    return PROFILES[profile](num_classes, n_max, imb_factor)


def subsample_indices(labels: np.ndarray, counts: Sequence[int], *, seed: int) -> np.ndarray:
    """Indices of a long-tailed subset keeping ``counts[j]`` examples of class j.

    Per class j, the indices of class j (in dataset order) are shuffled with
    ``np.random.default_rng([seed, j])`` and the first ``counts[j]`` kept; the
    result is grouped by class. Deterministic on every host.

    Raises:
      ValueError: if a class has fewer examples than requested, or a label is
        outside ``[0, len(counts))``.
    """
    labels = np.asarray(labels)
    counts = np.asarray(counts, np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(counts)):
        raise ValueError(
            f"labels must lie in [0, {len(counts)}), got {labels.min()}..{labels.max()}"
        )
    shuffle = lambda j, idx: np.random.default_rng([seed, j]).shuffle(idx)  # noqa: E731
    return _first_of_each_class(labels, counts, shuffle, "lower n_max or the imbalance factor")


def _first_of_each_class(labels, counts, shuffle, hint: str) -> np.ndarray:
    """For each class j in order: its indices in dataset order, ``shuffle(j, idx)`` in
    place, the first ``counts[j]`` kept; grouped by class."""
    kept = []
    for j, n_j in enumerate(counts):
        idx = np.flatnonzero(labels == j)
        if n_j > len(idx):
            raise ValueError(
                f"the imbalance profile asks for {n_j} examples of class {j} but the dataset "
                f"has only {len(idx)}; {hint}"
            )
        shuffle(j, idx)
        kept.append(idx[:n_j])
    return np.concatenate(kept) if kept else np.zeros((0,), np.int64)


def release_split(
    labels: np.ndarray,
    *,
    imb_factor: float,
    seed: int = 0,
    profile: str = "exp",
    num_classes: int | None = None,
) -> np.ndarray:
    """Sorted positions kept by the LDAM-DRW release's CIFAR-LT generator.

    ``labels`` are the training labels in the dataset's original order. As in the
    release (``IMBALANCECIFAR10``): ``n_max`` is the per-class count
    ``len(labels) / C``; class c keeps ``int(n_max * (1/IF) ** (c / (C - 1)))``
    (``exp``) or, for ``step``, ``n_max`` for the first half and
    ``int(n_max * (1/IF))`` after; ``RandomState(seed)`` then shuffles each class's
    indices in class order and the first ``n_c`` are kept. Equal to seeding NumPy's
    global RNG once with ``np.random.seed(seed)`` as the release does.

    Examples:
      >>> labels = np.tile(np.arange(3), 4)  # 4 images of each of 3 classes: 4, 2, 1 kept
      >>> release_split(labels, imb_factor=4, seed=0).tolist()
      [0, 1, 3, 6, 7, 9, 11]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    if not imb_factor >= 1:
        raise ValueError(f"imbalance factor must be >= 1 (n_max / n_min), got {imb_factor}")
    n_max = len(labels) / num_classes  # a float, as in the release
    ratio = 1.0 / float(imb_factor)  # the release passes imb_factor as 1/IF (0.01 for 100)
    if profile == "exp":
        counts = [int(n_max * ratio ** (c / (num_classes - 1.0))) for c in range(num_classes)]
        if num_classes == 1:
            counts = [int(n_max)]
    elif profile == "step":
        half = num_classes // 2
        counts = [int(n_max)] * half + [int(n_max * ratio)] * (num_classes - half)
    else:
        raise ValueError(f"unknown imbalance profile {profile!r}; valid: exp, step")
    rng = np.random.RandomState(seed)  # one stream through all classes, as the release's
    shuffle = lambda c, idx: rng.shuffle(idx)  # noqa: E731
    return np.sort(_first_of_each_class(labels, counts, shuffle, "is the training set balanced?"))


def shot_groups(class_counts: Sequence[int], *, convention: str = "paper") -> np.ndarray:
    """Shot group of every class: "many", "medium" or "few".

    ``paper``: many > 100, medium 20..100, few < 20 training images.
    ``oltr`` (OLTR reference code): many >= 100, few <= 20.

    Examples:
      >>> shot_groups([500, 100, 20, 19]).tolist()
      ['many', 'medium', 'medium', 'few']
      >>> shot_groups([500, 100, 20, 19], convention="oltr").tolist()
      ['many', 'many', 'few', 'few']
    """
    if convention not in SHOT_CONVENTIONS:
        raise ValueError(f"unknown shot convention {convention!r}; valid: paper, oltr")
    n = np.asarray(class_counts)
    if convention == "paper":
        many, few = n > 100, n < 20
    else:
        many, few = n >= 100, n <= 20
    return np.where(many, "many", np.where(few, "few", "medium")).astype("<U6")


def split_record(indices: np.ndarray, class_counts: np.ndarray, **meta) -> dict:
    """The JSON-able description of a split that is written to the workdir."""
    groups = shot_groups(class_counts, convention=meta.get("shot_convention", "paper"))
    return {
        **meta,
        "class_counts": np.asarray(class_counts).tolist(),
        "shot_groups": groups.tolist(),
        "num_examples": int(len(indices)),
        "indices": np.asarray(indices).tolist(),
    }


def write_or_verify_split(workdir: str, record: dict, *, name: str = "split.json") -> str:
    """Writes ``record`` to ``workdir/name``; on a rerun checks it is identical.

    Returns the path. Raises ``ValueError`` if a different split is already there
    (a changed seed, profile or dataset must not silently mix with old results).
    """
    path = os.path.join(workdir, name)
    if os.path.exists(path):
        with open(path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is corrupt ({e}); delete it or use a new workdir") from e
        # A split written before protocols were named was drawn per class.
        old, new = ({"split_protocol": "per_class", **r} for r in (old, record))
        if old != new:
            differs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(
                f"{path} holds a different split (differs in: {', '.join(differs)}); "
                "use a new workdir or the original data settings"
            )
        return path
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)
    return path
