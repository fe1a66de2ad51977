"""Samplers of the long-tailed recipes: which training examples an epoch visits.

Every sampler is a pure function of ``(labels, seed, epoch)``: the order of an
epoch is ``np.random.default_rng([seed, epoch, ...])``'s, so a resumed run
recomputes the interrupted epoch and continues mid-epoch with the same
examples, and every host computes the same global order.

Class probabilities (the probability that a drawn example belongs to class j)
are exposed as functions of the class counts, e.g. ``cben_class_probs``; the
per-example probability is ``class_prob[y] / n_y``.

| name | class probability p_j | reference |
|---|---|---|
| instance | n_j / N (a shuffled pass, no replacement) | |
| class_balanced | 1 / C | Kang et al. 2020 (cRT) |
| sqrt | sqrt(n_j) / sum sqrt(n_k) | Mahajan et al. 2018 |
| progressive | (1 - e/E) n_j/N + (e/E) / C | Kang et al. 2020 |
| effective_number | n_j w_j / sum, w_j = (1-b)/(1-b^n_j) | Cui et al. 2019 |
| cben | as effective_number with b_j = 0.9999 + 1e-5 d_j | GCL (spec section 5) |
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SAMPLERS = ("instance", "class_balanced", "sqrt", "progressive", "effective_number", "cben")


def _counts(class_counts: Sequence[int]) -> np.ndarray:
    n = np.asarray(class_counts, np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D vector, got shape {n.shape}")
    if (n <= 0).any():
        j = int(np.argmax(n <= 0))
        raise ValueError(f"class {j} has no training examples; a sampler cannot draw from it")
    return n


def instance_class_probs(class_counts: Sequence[int]) -> np.ndarray:
    n = _counts(class_counts)
    return n / n.sum()


def class_balanced_class_probs(class_counts: Sequence[int]) -> np.ndarray:
    n = _counts(class_counts)
    return np.full_like(n, 1.0 / len(n))


def sqrt_class_probs(class_counts: Sequence[int]) -> np.ndarray:
    n = np.sqrt(_counts(class_counts))
    return n / n.sum()


def progressive_class_probs(
    class_counts: Sequence[int], *, epoch: float, total_epochs: int
) -> np.ndarray:
    """Linear interpolation from instance-balanced (epoch 0) to class-balanced (last epoch)."""
    if total_epochs < 1:
        raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
    frac = min(max(epoch / total_epochs, 0.0), 1.0)
    return (1 - frac) * instance_class_probs(class_counts) + frac * class_balanced_class_probs(
        class_counts
    )


def _effective_number_probs(n: np.ndarray, beta: np.ndarray) -> np.ndarray:
    # Per-example weight w_j = (1 - b_j) / (1 - b_j^n_j); class mass n_j w_j.
    w = (1.0 - beta) / -np.expm1(n * np.log(beta))
    mass = n * w
    return mass / mass.sum()


def effective_number_class_probs(
    class_counts: Sequence[int], *, beta: float = 0.9999
) -> np.ndarray:
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    n = _counts(class_counts)
    return _effective_number_probs(n, np.full_like(n, beta))


def cben_class_probs(class_counts: Sequence[int]) -> np.ndarray:
    r"""Class-based effective number (CBEN) sampling of GCL stage 2.

    ``d_j = ln n_max - ln n_j`` normalised to [0, 1], ``beta_j = 0.9999 + 1e-5 d_j``,
    per-example weight ``(1 - beta_y) / (1 - beta_y^{n_y})``.

    Examples:
      >>> counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
      >>> cben_class_probs(counts).round(4).tolist()[:3]
      [0.1194, 0.1086, 0.1025]
    """
    n = _counts(class_counts)
    gap = np.log(n.max()) - np.log(n)
    d = gap / gap.max() if gap.max() > 0 else np.zeros_like(gap)
    return _effective_number_probs(n, 0.9999 + 1e-5 * d)


def class_probs(
    name: str,
    class_counts: Sequence[int],
    *,
    epoch: float = 0,
    total_epochs: int = 1,
    beta: float = 0.9999,
) -> np.ndarray:
    """Class probabilities of sampler ``name`` (see the module table)."""
    if name == "instance":
        return instance_class_probs(class_counts)
    if name == "class_balanced":
        return class_balanced_class_probs(class_counts)
    if name == "sqrt":
        return sqrt_class_probs(class_counts)
    if name == "progressive":
        return progressive_class_probs(class_counts, epoch=epoch, total_epochs=total_epochs)
    if name == "effective_number":
        return effective_number_class_probs(class_counts, beta=beta)
    if name == "cben":
        return cben_class_probs(class_counts)
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def epoch_batches(
    num_examples: int, batch_size: int, *, drop_last: bool = False, multiple: int = 1
) -> list[int]:
    """The sizes of one epoch's batches: full ones, then the last partial batch.

    ``drop_last=False`` keeps the remainder as a last, smaller batch, as PyTorch's
    ``DataLoader(drop_last=False)`` in the releases does (CIFAR-10-LT IF 100 at batch
    128: 96 batches of 128 and one of 118). Its size is rounded down to a
    ``multiple`` of the device count so it shards evenly (nothing is lost on one device).

    Examples:
      >>> epoch_batches(12406, 128)[-2:], len(epoch_batches(12406, 128))
      ([128, 118], 97)
      >>> len(epoch_batches(12406, 128, drop_last=True)), epoch_batches(10, 4, multiple=4)
      (96, [4, 4])
    """
    if batch_size < 1 or num_examples < batch_size:
        raise ValueError(f"batch size {batch_size} must be in [1, {num_examples}] (the examples)")
    full, rest = divmod(num_examples, batch_size)
    rest = 0 if drop_last else rest - rest % multiple
    return [batch_size] * full + ([rest] if rest else [])


def epoch_indices(
    name: str,
    labels: np.ndarray,
    *,
    seed: int,
    epoch: int,
    num_classes: int | None = None,
    total_epochs: int = 1,
    beta: float = 0.9999,
) -> np.ndarray:
    """The dataset indices visited in ``epoch``, in order (length = number of examples).

    ``instance`` is a permutation; the others draw N indices with replacement,
    example i with probability ``class_prob[y_i] / n_{y_i}``.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = np.bincount(labels, minlength=num_classes)
    rng = np.random.default_rng([seed, epoch, SAMPLERS.index(name) if name in SAMPLERS else 0])
    if name == "instance":
        return rng.permutation(len(labels))
    probs = class_probs(
        name, counts, epoch=epoch, total_epochs=total_epochs, beta=beta
    )  # validates the name and the counts
    per_example = probs[labels] / counts[labels]
    return rng.choice(
        len(labels), size=len(labels), replace=True, p=per_example / per_example.sum()
    )
