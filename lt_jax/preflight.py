"""Everything about a config that is knowable before any data is read, checked in seconds.

``check(config)`` resolves the config (``config_lib.resolve``) and raises ``ValueError``
with one line naming the setting and its valid values for the first mistake: an unknown
name (method, dataset, model, sampler, schedule, stage-2 mode, ...), a count that is not
positive, mixup and CutMix together, a stage-2 method whose head differs from stage 1's.
``lt_jax.main``, ``lt_jax.evaluate`` and ``lt_jax.sweep`` call it before training (a sweep
for every run of its grid before the first), and ``train_and_evaluate`` again.
"""

from __future__ import annotations

import numpy as np

from lt_jax import config_lib, methods, models, stage2, steps
from lt_jax.data import datasets, longtail, samplers
from lt_jax.optim import factory

AUGMENTATIONS = ("crop", "crop_flip", "none")
KERNELS = ("auto", *models.kernels.IMPLEMENTATIONS)


def _choice(key: str, value, valid) -> None:
    if value not in valid:
        raise config_lib.unknown(key, value, valid)


def _positive(key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.{key} must be a positive integer, got {value!r}")


def _stage(config, prefix: str) -> None:
    """The settings both stages have (``prefix``: "" or "stage2.")."""
    for key in ("epochs", "batch_size"):
        _positive(prefix + key, config[key])
    _choice(f"config.{prefix}method", config.method, methods.METHODS)
    _choice(f"config.{prefix}sampler", config.sampler, samplers.SAMPLERS)
    _choice(f"config.{prefix}schedule", config.schedule, factory.SCHEDULES)
    steps.mixing(config)  # mixup and CutMix together is an error


def _head(method: str, loss) -> str:
    """The classifier kind of ``method`` (built on placeholder class counts)."""
    return methods.get_method(method, loss, np.array([2, 1]), 1).head


def check(config):
    """The resolved config, or ``ValueError`` naming the first mistake."""
    config = config_lib.resolve(config)
    _stage(config, "")
    counts = ("eval_batch_size", "log_every_steps", "eval_every_epochs", "checkpoint_every_epochs")
    for key in (*counts, "num_seeds"):
        _positive(key, config[key])
    d = config.dataset
    _choice("dataset", d.name, datasets.DATASETS)
    _choice("config.dataset.profile", d.profile, (*longtail.PROFILES, "none"))
    _choice("config.dataset.split_protocol", d.split_protocol, longtail.SPLIT_PROTOCOLS)
    _choice("config.dataset.augment", d.augment, AUGMENTATIONS)
    _choice("model", config.model, models.MODELS)
    _choice("config.kernels", config.kernels, KERNELS)
    _choice("dtype", config.dtype, steps.DTYPES)
    _choice("config.shot_convention", config.shot_convention, longtail.SHOT_CONVENTIONS)
    if d.imb_factor < 1:
        raise ValueError(f"config.dataset.imb_factor must be >= 1, got {d.imb_factor}")
    mode = stage2.mode(config)
    if mode.trains:
        s2 = config.stage2
        _stage(s2, "stage2.")
        head1, head2 = _head(config.method, config.loss), _head(s2.method, s2.loss)
        if head1 != head2:
            raise ValueError(
                f"stage2.method {s2.method!r} trains a {head2} head but stage 1 "
                f"({config.method!r}) built a {head1} head; pick a stage-2 method for "
                f"{head1} logits"
            )
    return config
