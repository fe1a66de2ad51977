"""Shared pieces of the loss library: input checks and the per-example CE kernel.

Per-class vectors (margins, scales, cloud sizes, ...) are pure functions of the
training-set class counts. Counts are host-side data: when they are concrete
(NumPy, a Python list, a concrete ``jax.Array``) they are validated here and the
vectors are computed once in float64 NumPy, so inside ``jax.jit`` they are
compile-time constants. Traced counts are accepted too (no validation is
possible then) and the same formulas run in ``jax.numpy``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def is_concrete(x: Any) -> bool:
    """True if ``x`` holds values on the host side (not a JAX tracer)."""
    return not isinstance(x, jax.core.Tracer)


def class_counts_array(class_counts: ArrayLike) -> Any:
    """Validates ``class_counts`` and returns them as float64 NumPy (or traced jnp).

    Raises:
      ValueError: if the counts are not a non-empty 1-D vector of positive
        integers. The message names the first offending class index.
    """
    if not is_concrete(class_counts):
        if jnp.ndim(class_counts) != 1:
            raise ValueError(f"class_counts must be 1-D, got shape {jnp.shape(class_counts)}")
        return jnp.asarray(class_counts, jnp.float32)
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D vector, got shape {counts.shape}")
    if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
        raise ValueError(f"class_counts must be numeric, got dtype {counts.dtype}")
    counts = counts.astype(np.float64)
    bad = ~np.isfinite(counts) | (counts != np.round(counts))
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"class_counts[{j}] = {counts[j]} is not an integer count")
    if (counts < 0).any():
        j = int(np.argmax(counts < 0))
        raise ValueError(f"class_counts[{j}] = {int(counts[j])} is negative")
    if (counts == 0).any():
        j = int(np.argmax(counts == 0))
        raise ValueError(
            f"class {j} has zero training examples (class_counts[{j}] = 0); every class needs at "
            "least one example for the per-class adjustments to be defined"
        )
    return counts


def xp_of(counts: Any):
    """NumPy for host-side counts, jax.numpy for traced ones."""
    return np if isinstance(counts, np.ndarray) else jnp


def as_vector(v: Any) -> Any:
    """Host-side float64 vectors are returned as float32 NumPy; traced ones as-is."""
    return v.astype(np.float32) if isinstance(v, np.ndarray) else v


def safe_ratio(num: Any, den: Any) -> Any:
    """num / den with the documented limit 0 where den == 0 (balanced counts)."""
    xp = xp_of(num)
    ok = den > 0
    return xp.where(ok, num / xp.where(ok, den, 1.0), 0.0)


def log_ratio_to_max(counts: Any) -> Any:
    """(ln n_max - ln n_j) / (ln n_max - ln n_min): 0 for the head, 1 for the tail.

    Balanced counts (n_max = n_min) give all zeros, never 0/0.
    """
    xp = xp_of(counts)
    gap = xp.log(counts.max()) - xp.log(counts)
    return safe_ratio(gap, gap.max())


def check_logits_labels(logits: ArrayLike, labels: ArrayLike, num_classes: int | None) -> None:
    """Shape, dtype and (where concrete) range checks shared by every loss."""
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {jnp.shape(logits)}")
    batch, classes = jnp.shape(logits)
    if jnp.shape(labels) != (batch,):
        raise ValueError(
            f"labels must have shape [batch] = ({batch},), got {jnp.shape(labels)}; "
            "lt_jax losses take integer class labels, not one-hot vectors"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    if num_classes is not None and num_classes != classes:
        raise ValueError(
            f"class_counts has {num_classes} classes but the logits have {classes} columns"
        )
    if is_concrete(labels) and batch:
        lab = np.asarray(labels)
        if lab.min() < 0 or lab.max() >= classes:
            bad = lab[(lab < 0) | (lab >= classes)][0]
            raise ValueError(f"label {int(bad)} is outside the class range [0, {classes})")


def check_class_weights(class_weights: ArrayLike | None, num_classes: int) -> Array | None:
    if class_weights is None:
        return None
    if jnp.shape(class_weights) != (num_classes,):
        raise ValueError(
            f"class_weights must have shape ({num_classes},), got {jnp.shape(class_weights)}"
        )
    return jnp.asarray(class_weights, jnp.float32)


def compute_dtype(x: ArrayLike) -> Any:
    """Losses are computed in at least float32 (bf16 logits stay finite)."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def ce_single(logits: Array, label: Array) -> Array:
    """-log softmax(logits)[label] for one example (logits [C], label [])."""
    return jax.nn.logsumexp(logits) - logits[label]


def weighted(loss: Array, label: Array, class_weights: Array | None) -> Array:
    return loss if class_weights is None else loss * class_weights[label]
