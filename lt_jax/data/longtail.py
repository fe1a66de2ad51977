"""Long-tailed subsampling, shot groups, and the split bookkeeping kept in the workdir.

Protocol (spec section 1, the Cao et al. 2019 lineage): class ``i`` keeps
``n_i = floor(n_max * IF^(-i / (C - 1)))`` examples, class 0 is the head; per class,
that class's indices are shuffled with a seeded RNG and the first ``n_i`` kept.
Everything here is NumPy on the host and a pure function of its arguments, so
every host of a multi-host job computes the same split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

SHOT_CONVENTIONS = ("paper", "oltr")
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
    kept = []
    for j, n_j in enumerate(counts):
        idx = np.flatnonzero(labels == j)
        if n_j > len(idx):
            raise ValueError(
                f"the imbalance profile asks for {n_j} examples of class {j} but the dataset "
                f"has only {len(idx)}; lower n_max or the imbalance factor"
            )
        np.random.default_rng([seed, j]).shuffle(idx)
        kept.append(idx[:n_j])
    return np.concatenate(kept) if kept else np.zeros((0,), np.int64)


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
        if old != record:
            differs = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
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
