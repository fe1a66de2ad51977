"""On-device augmentation for small datasets, run inside the jitted train step.

Images stay on the accelerator as uint8; each step crops, flips, normalises and
(optionally) mixes them from a PRNG key, so the step never waits for the host.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def normalize(images, mean, std):
    """uint8 [..., H, W, C] -> float32 ((x / 255) - mean) / std."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def crop_flip_draws(key, batch_size: int, *, pad: int = 4):
    """The random draws of :func:`random_crop_flip`: per image the crop offsets
    ``dy, dx`` in ``[0, 2 * pad]`` and whether it is flipped; three [B] arrays.

    Exposed so that another implementation (the PyTorch lockstep reference in
    ``benchmarks/``) can apply exactly the augmentation this key gives.
    """

    def one(k):
        k_y, k_x, k_flip = jax.random.split(k, 3)
        dy = jax.random.randint(k_y, (), 0, 2 * pad + 1)
        dx = jax.random.randint(k_x, (), 0, 2 * pad + 1)
        return dy, dx, jax.random.bernoulli(k_flip)

    return jax.vmap(one)(jax.random.split(key, batch_size))


def _crop_flip_one(image, dy, dx, flipped, pad, flip):
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    crop = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
    if not flip:
        return crop
    return jnp.where(flipped, crop[:, ::-1, :], crop)


def random_crop_flip(key, images, *, pad: int = 4, flip: bool = True):
    """Zero-pad by ``pad``, random crop back to H x W, random horizontal flip; [B, H, W, C]."""
    dy, dx, flipped = crop_flip_draws(key, images.shape[0], pad=pad)
    one = jax.vmap(_crop_flip_one, in_axes=(0, 0, 0, 0, None, None))
    return one(images, dy, dx, flipped, pad, flip)


class Mixed(NamedTuple):
    images: jax.Array  # float32 [B, H, W, C]
    labels_a: jax.Array  # int32 [B]
    labels_b: jax.Array  # int32 [B]
    lam: jax.Array  # float32 []: weight of labels_a


def mixup(key, images, labels, *, alpha: float) -> Mixed:
    """Mixup (Zhang et al. 2018) with one lam ~ Beta(alpha, alpha) per batch, as the releases.

    The loss is ``lam * L(labels_a) + (1 - lam) * L(labels_b)``.
    """
    lam, perm = mixup_draws(key, images.shape[0], alpha=alpha)
    mixed = lam * images + (1.0 - lam) * images[perm]
    return Mixed(mixed, labels, labels[perm], lam)


def mixup_draws(key, batch_size: int, *, alpha: float):
    """The random draws of :func:`mixup`: ``lam ~ Beta(alpha, alpha)`` and the partner
    permutation (image i is mixed with image ``perm[i]``)."""
    k_lam, k_perm = jax.random.split(key)
    return jax.random.beta(k_lam, alpha, alpha), jax.random.permutation(k_perm, batch_size)


def cutmix(key, images, labels, *, alpha: float) -> Mixed:
    """CutMix (Yun et al. 2019): paste a random box from a shuffled batch; lam = kept area."""
    k_lam, k_perm, k_y, k_x = jax.random.split(key, 4)
    b, h, w, _ = images.shape
    lam = jax.random.beta(k_lam, alpha, alpha)
    cut_h = jnp.floor(h * jnp.sqrt(1.0 - lam)).astype(jnp.int32)
    cut_w = jnp.floor(w * jnp.sqrt(1.0 - lam)).astype(jnp.int32)
    cy = jax.random.randint(k_y, (), 0, h)
    cx = jax.random.randint(k_x, (), 0, w)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    box = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))[None, :, :, None]
    perm = jax.random.permutation(k_perm, b)
    mixed = jnp.where(box, images[perm], images)
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return Mixed(mixed, labels, labels[perm], kept.astype(jnp.float32))


def eval_batches(num_examples: int, batch_size: int):
    """Yields (indices [batch_size], mask [batch_size]) covering every example exactly once.

    The last batch is padded with index 0 and masked out, so every batch has the
    same shape and the eval step compiles once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, num_examples, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < num_examples
        yield np.where(mask, idx, 0), mask
