"""The canonical trainer: ``train_and_evaluate(config, workdir)``.

Data-parallel over every device with ``jax.jit`` on a 1-D ``data`` mesh:
parameters and optimizer state are replicated (``P()``), batches sharded on
``data`` (``P("data")``); XLA inserts the gradient all-reduce. Small datasets
live on the device as uint8 and are augmented inside the jitted step from a key
``fold_in(base_key, step)``, so a resumed run draws the same randomness.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lt_jax import checkpoint, methods, metrics, models, optim
from lt_jax.data import augment, longtail, samplers, sources, splits, streaming

log = logging.getLogger(__name__)

# name -> (n_max of the LT profile, normalisation mean, std). In memory on the device.
DATASETS = {
    "mnist_lt": (400, (0.1307,), (0.3081,)),
    "cifar10_lt": (5000, augment.CIFAR_MEAN, augment.CIFAR_STD),
    "cifar100_lt": (500, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "image_folder": (0, augment.CIFAR_MEAN, augment.CIFAR_STD),  # root/{train,test}/<class>/*
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Streamed from disk: the standard split lists over an image root (lt_jax.data.splits).
STREAMED = ("imagenet_lt", "places_lt", "inat2018")


class TrainingError(RuntimeError):
    """A run that must stop (NaN loss, incompatible workdir, ...), with a one-line message."""


# --- input ----------------------------------------------------------------------------------


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


def load_dataset(cfg: ml_collections.ConfigDict):
    """(dataset, kept indices): the long-tailed training split and the balanced test split.

    In-memory datasets (``DATASETS``) are subsampled with the configured profile
    (``profile="none"`` keeps an image folder's own counts); streamed ones
    (``STREAMED``) use their standard split lists under ``cfg.data_dir``.
    """
    name = cfg.name
    if name in STREAMED:
        return _load_streamed(cfg)
    if name not in DATASETS:
        valid = sorted([*DATASETS, *STREAMED])
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(valid)}")
    if name == "mnist_lt":
        full = sources.load_mnist_5k()
    elif name == "image_folder" or os.path.isdir(os.path.join(cfg.data_dir, "train")):
        full = sources.load_image_folder(cfg.data_dir)
    elif not cfg.data_dir or cfg.data_dir.startswith("tfds"):
        # No local copy: TensorFlow Datasets ("tfds" or "tfds:/path/to/tfds_data_dir").
        tfds_dir = cfg.data_dir.partition(":")[2] or None
        full = sources.load_tfds(name.removesuffix("_lt"), data_dir=tfds_dir)
    else:
        full = sources.load_cifar_archive(cfg.data_dir, name.removesuffix("_lt"))
    if cfg.profile == "none":
        data, kept = full, np.arange(len(full.train_labels))
    else:
        protocol = cfg.get("split_protocol", "per_class")
        # The release protocol's n_max is the per-class count of the data (None: that one).
        default_n_max = None if protocol == "release" else DATASETS[name][0]
        data, kept = sources.make_long_tailed(
            full,
            n_max=cfg.n_max or default_n_max,
            imb_factor=cfg.imb_factor,
            profile=cfg.profile,
            seed=cfg.split_seed,
            protocol=protocol,
        )
    if not cfg.get("allow_constant_images", False):
        sources.check_no_constant_images(data.train_images, kept, where=cfg.data_dir or name)
    return data, kept


def _load_streamed(cfg):
    if not os.path.isdir(cfg.data_dir):
        raise FileNotFoundError(
            f"image root {cfg.data_dir!r} of {cfg.name} does not exist "
            "(set config.dataset.data_dir to the folder the split lists are relative to)"
        )
    spec = splits.SPLIT_LISTS[cfg.name]
    train_rel, train_y = splits.split_list(cfg.name, "train", lists_dir=cfg.lists_dir)
    test_rel, test_y = splits.split_list(cfg.name, spec.eval_split, lists_dir=cfg.lists_dir)
    if cfg.get("sort_classes", False):
        mapping = splits.sort_classes_by_frequency(train_y, spec.num_classes)
        train_y, test_y = mapping[train_y].astype(np.int32), mapping[test_y].astype(np.int32)
    root = cfg.data_dir
    first = os.path.join(root, train_rel[0])
    if not os.path.exists(first):
        raise FileNotFoundError(
            f"{first} (the first image of the {cfg.name} training list) does not exist; "
            f"config.dataset.data_dir must be the root the list paths are relative to"
        )
    data = StreamDataset(
        [os.path.join(root, p) for p in train_rel],
        train_y,
        [os.path.join(root, p) for p in test_rel],
        test_y,
        spec.num_classes,
    )
    return data, np.arange(len(train_y))


def create_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    # Auto axes: the batch-sharded gathers and vmapped per-example augmentation of the
    # step are resolved by the compiler (Explicit mode rejects vmaps over mixed shardings).
    return jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def shard_batch(mesh, local: np.ndarray) -> jax.Array:
    """Host-local rows -> a global array sharded on the ``data`` axis."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)


# --- model & optimizer ------------------------------------------------------------------------


def create_optimizer(config, steps_per_epoch: int, num_classes: int, method: methods.Method):
    """SGD + momentum + weight decay (PyTorch semantics), the recipe's lr schedule, and
    the GA transform first in the chain when the method uses it. ``config`` is the
    top-level config (stage 1) or ``config.stage2``."""
    if config.schedule == "step":
        lr = optim.warmup_step_decay(
            config.lr,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=config.warmup_epochs,
            boundaries=tuple(config.lr_boundaries),
            factors=tuple(config.lr_factors),
        )
    elif config.schedule == "cosine":
        lr = optim.warmup_cosine(
            config.lr,
            steps_per_epoch=steps_per_epoch,
            total_epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
        )
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: step, cosine")
    parts = []
    if method.ga_start_step is not None:  # GA acts on raw gradients, before weight decay
        parts.append(
            optim.gradient_adjustment(
                num_classes,
                head_path=("head",),
                alpha=config.ga.alpha,
                r_min=config.ga.r_min,
                decay=config.ga.decay,
                start_step=method.ga_start_step,
            )
        )
    parts += [optax.add_decayed_weights(config.wd), optax.sgd(lr, momentum=config.momentum)]
    return optax.chain(*parts), lr


def _kernels(config) -> str:
    """The model's kernel implementation (``config.kernels``: auto | xla | cpu)."""
    name = config.get("kernels", "auto")
    if name == "auto":
        return models.kernels.implementation()
    if name not in models.kernels.IMPLEMENTATIONS:
        raise ValueError(f"unknown config.kernels {name!r}; valid: auto, xla, cpu")
    return name


def _compute_dtype(name: str):
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"unknown dtype {name!r}; valid: float32, bfloat16")
    return None if name == "float32" else jnp.bfloat16


def init_state(config, num_classes, method, tx):
    """Builds the model and its train state; returns (state, graphdef, head_graphdef, tx).

    ``tx`` comes back wrapped so that a frozen trunk (Places-LT's ResNet-152) gets
    no update at all. ``config.pretrained`` (a torchvision ``.npz``) initialises
    the trunk.
    """
    model = models.create_model(
        config.model,
        num_classes=num_classes,
        head=method.head,
        rngs=nnx.Rngs(config.seed),
        dtype=_compute_dtype(config.get("dtype", "float32")),
        impl=_kernels(config),
        # MNIST is grey; every other dataset is decoded to RGB (whatever the model's default).
        in_channels=1 if config.dataset.name == "mnist_lt" else 3,
    )
    if config.get("pretrained"):
        models.load_torchvision_weights(model, config.pretrained)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    labels = models.frozen_param_labels(model, params)
    if "frozen" in jax.tree.leaves(labels):
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    head_graphdef = nnx.graphdef(model.head)
    state = {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    return state, graphdef, head_graphdef, tx


# --- steps ----------------------------------------------------------------------------------


def _augment(x, key, mode, mean, std):
    if mode != "none":
        x = augment.random_crop_flip(key, x, pad=4, flip=mode == "crop_flip")
    return augment.normalize(x, mean, std)


def _batch_loss_fn(method, y, mixed, k_loss, k_loss_b, step):
    """Mean loss of a batch as a function of (logits, features), mixup-aware.

    With mixup the two targets get independent loss keys (the GCL release draws
    independent noise for them).
    """

    def batch_loss(logits, feats):
        if mixed is None:
            return method.reduce(method.loss(logits, feats, y, k_loss, step), y, step)
        ya, yb = mixed.labels_a, mixed.labels_b
        la = method.reduce(method.loss(logits, feats, ya, k_loss, step), ya, step)
        lb = method.reduce(method.loss(logits, feats, yb, k_loss_b, step), yb, step)
        return mixed.lam * la + (1.0 - mixed.lam) * lb

    return batch_loss


def step_keys(base_key, step):
    """The keys of one train step: (augmentation, mixing, loss, loss of the mixed-in target)."""
    return jax.random.split(jax.random.fold_in(base_key, step), 4)


def _prepare_batch(images, labels, idx, key, step, augment_mode, mix, mean, std):
    """Gathers, augments and (with ``mix = (kind, alpha)``, alpha > 0) mixes a batch."""
    k_aug, k_mix, k_loss, k_loss_b = step_keys(key, step)
    # idx None: images/labels are already this step's batch (streamed, host-augmented).
    x = _augment(images if idx is None else images[idx], k_aug, augment_mode, mean, std)
    y = labels if idx is None else labels[idx]
    kind, alpha = mix
    mixer = {"mixup": augment.mixup, "cutmix": augment.cutmix}[kind]
    mixed = mixer(k_mix, x, y, alpha=alpha) if alpha > 0 else None
    return (x if mixed is None else mixed.images), y, mixed, k_loss, k_loss_b


def _mixing(config) -> tuple[str, float]:
    """("mixup" | "cutmix", alpha) from ``mixup_alpha`` / ``cutmix_alpha`` (one may be set)."""
    mixup, cutmix = config.get("mixup_alpha", 0.0), config.get("cutmix_alpha", 0.0)
    if mixup > 0 and cutmix > 0:
        raise ValueError("set mixup_alpha or cutmix_alpha, not both")
    return ("cutmix", cutmix) if cutmix > 0 else ("mixup", mixup)


def jit_step(fn, kernels: str | None = None, **kw):
    """``jax.jit`` with the compiler options of ``kernels`` (``models.kernels``; None: the
    default backend's implementation)."""
    options = None if kernels == "xla" else models.kernels.compiler_options()
    return jax.jit(fn, compiler_options=options, **kw)


def make_train_step(config, graphdef, head_graphdef, method, tx, lr_fn, mean, std):
    """Stage 1: the whole network. ``(state, images, labels, idx, key) -> (state, metrics)``."""

    def train_step(state, images, labels, idx, base_key):
        step = state["step"]
        aug = (config.dataset.augment, _mixing(config), mean, std)
        x, y, mixed, k_loss, k_loss_b = _prepare_batch(images, labels, idx, base_key, step, *aug)
        batch_loss = _batch_loss_fn(method, y, mixed, k_loss, k_loss_b, step)

        def objective(params):
            model = nnx.merge(graphdef, params, state["batch_stats"], copy=True)
            logits, feats = model(x, train=True)
            return batch_loss(logits, feats), (nnx.state(model, nnx.BatchStat), logits, feats)

        (loss, (batch_stats, logits, feats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state["params"]
        )
        extra = {}
        if method.ga_start_step is not None:
            dlogits = jax.grad(batch_loss)(logits, feats)
            _, head_vjp = jax.vjp(
                lambda hp: nnx.merge(head_graphdef, hp)(feats), state["params"]["head"]
            )
            ga_labels = y if mixed is None else mixed.labels_a
            extra = optim.split_head_gradient(dlogits, ga_labels, head_vjp)._asdict()
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"], **extra)
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": batch_stats,
            "opt_state": opt_state,
            "step": step + 1,
        }
        return new_state, {"loss": loss, "lr": lr_fn(step)}

    return train_step


def stage2_logits(head_graphdef, mode, head_params, trainable, feats):
    """Logits of the decoupled classifier: a re-trained head, or LWS scales on the old one."""
    if mode == "lws":
        return nnx.merge(head_graphdef, head_params)(feats) * trainable
    return nnx.merge(head_graphdef, trainable)(feats)


def make_stage2_step(s2, graphdef, head_graphdef, method, tx, lr_fn, mean, std, augment_mode):
    """Stage 2: backbone frozen with BatchNorm in inference mode; only the classifier
    (``retrain``) or per-class scales (``lws``) learn. The frozen stage-1 state is an
    argument, never updated."""

    def step_fn(state, frozen, images, labels, idx, base_key):
        step = state["step"]
        x, y, mixed, k_loss, k_loss_b = _prepare_batch(
            images, labels, idx, base_key, step, augment_mode, _mixing(s2), mean, std
        )
        model = nnx.merge(graphdef, frozen["params"], frozen["batch_stats"], copy=True)
        feats = jax.lax.stop_gradient(model.features(x, train=False))
        batch_loss = _batch_loss_fn(method, y, mixed, k_loss, k_loss_b, step)

        def objective(trainable):
            logits = stage2_logits(
                head_graphdef, s2.mode, frozen["params"]["head"], trainable, feats
            )
            return batch_loss(logits, feats)

        loss, grads = jax.value_and_grad(objective)(state["trainable"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        new_state = {
            "trainable": optax.apply_updates(state["trainable"], updates),
            "opt_state": opt_state,
            "step": step + 1,
        }
        return new_state, {"loss": loss, "lr": lr_fn(step)}

    return step_fn


def make_eval_step(graphdef, mean, std):
    def eval_step(params, batch_stats, images, idx):
        model = nnx.merge(graphdef, params, batch_stats)
        x = images if idx is None else images[idx]
        logits, feats = model(augment.normalize(x, mean, std), train=False)
        return logits, feats

    return eval_step


def evaluate(eval_step, params, batch_stats, batches):
    """Logits [N, C] and features [N, D] of every example, each counted once.

    ``batches`` yields ``(images, idx, mask)`` with global arrays and a host-side
    global mask of the padding rows.
    """
    logits, feats, pending = [], [], None

    def fetch(outputs, mask):
        logits.append(np.asarray(outputs[0])[mask])
        feats.append(np.asarray(outputs[1])[mask])

    for images, idx, mask in batches:
        # Dispatch batch i before waiting for batch i-1, so the device never idles on the host.
        outputs = eval_step(params, batch_stats, images, idx)
        if pending is not None:
            fetch(*pending)
        pending = (outputs, mask)
    if pending is not None:
        fetch(*pending)
    return np.concatenate(logits), np.concatenate(feats)


class InMemoryInput:
    """Images on the device; batches are index vectors gathered inside the step."""

    def __init__(self, data, mesh):
        rep = NamedSharding(mesh, P())
        self.data, self.mesh = data, mesh
        self.images = {
            "train": jax.device_put(data.train_images, rep),
            "test": jax.device_put(data.test_images, rep),
        }
        self.labels = jax.device_put(data.train_labels, rep)
        self.augment = None  # the config's on-device augmentation applies

    def train(self, order, *, epoch, start_batch, sizes, seed):
        del epoch, seed
        ends = np.cumsum(sizes)
        for b in range(start_batch, len(sizes)):
            idx = order[ends[b] - sizes[b] : ends[b]][streaming.host_rows(sizes[b])]
            yield self.images["train"], self.labels, shard_batch(self.mesh, idx)

    def infer(self, split, batch_size):
        n = len(self.data.test_labels if split == "test" else self.data.train_labels)
        rows = streaming.host_rows(batch_size)
        for idx, mask in augment.eval_batches(n, batch_size):
            yield self.images[split], shard_batch(self.mesh, idx[rows]), mask


class StreamedInput:
    """Images decoded from disk by Grain workers; host-side random-resized-crop + flip."""

    def __init__(self, data: StreamDataset, mesh, *, size: int = 224, resize: int = 256):
        self.data, self.mesh, self.size, self.resize = data, mesh, size, resize
        self.augment = "none"  # crops and flips already happened on the host

    def train(self, order, *, epoch, start_batch, sizes, seed):
        # Streamed epochs are whole batches (epoch_batches(drop_last=True), see _epoch_batches).
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
            yield shard_batch(self.mesh, x), shard_batch(self.mesh, y), None

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
            yield shard_batch(self.mesh, x), None, mask


# --- workdir bookkeeping ------------------------------------------------------------------------


# Config keys added after runs were first written, with the value that reproduces those runs:
# an older workdir without the key resumes when the key has this value.
_ADDED_KEYS = {
    "kernels": "auto",
    "drop_last": True,
    "dataset.split_protocol": "per_class",
    "dataset.allow_constant_images": False,
}


def _with_added_keys(old: dict, current: dict) -> dict:
    """``old`` with every ``_ADDED_KEYS`` entry it lacks (and ``current`` has) filled in."""
    old = json.loads(json.dumps(old))
    for dotted, value in _ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        src, dst = current, old
        for p in parents:
            src, dst = src.get(p), dst.get(p)
            if not isinstance(src, dict) or not isinstance(dst, dict):
                break
        else:
            if leaf in src and leaf not in dst:
                dst[leaf] = value
    return old


def check_workdir_config(workdir: str, config) -> None:
    """Refuses a workdir holding a run with a different config."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        old = _with_added_keys(old, current)
        if old != current:
            diff = sorted(k for k in set(old) | set(current) if old.get(k) != current.get(k))
            raise TrainingError(
                f"{workdir} holds a run with a different config (differs in: "
                f"{', '.join(diff)}); use a new --workdir"
            )
    elif jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(current, f, indent=1, sort_keys=True)


class MetricWriter:
    """JSON lines and TensorBoard event files in the workdir (process 0 only)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        self._tb = None
        if self.active:
            from tensorboardX import SummaryWriter  # light: protobuf + numpy, no TensorFlow

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        for k, v in values.items():
            if isinstance(v, int | float):
                self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


# --- the loop -----------------------------------------------------------------------------------


class Stage(NamedTuple):
    """One training stage, for :func:`run_stage`."""

    name: str  # "stage1" / "stage2": checkpoint folder and metric prefix
    step: Callable  # jitted (state, images, labels, idx, key) -> (state, metrics)
    state: Any
    sampler: str
    epochs: int
    batch_size: int
    scores: Callable  # state -> (test scores [N, C], test features [N, D])
    prob_scale: float


def _epoch_batches(config, num_examples: int, batch_size: int) -> list[int]:
    """Batch sizes of one epoch: the last partial batch kept unless ``config.drop_last``
    (streamed datasets always drop it)."""
    drop = config.dataset.name in STREAMED or config.get("drop_last", True)
    return samplers.epoch_batches(
        num_examples, batch_size, drop_last=drop, multiple=jax.device_count()
    )


def run_stage(stage: Stage, ctx: dict) -> tuple[Any, dict]:
    """Epoch loop with sampling, logging, checkpoints, resume, SIGTERM and evaluation."""
    config, data, mesh, writer = ctx["config"], ctx["data"], ctx["mesh"], ctx["writer"]
    replicated = NamedSharding(mesh, P())
    sizes = _epoch_batches(config, len(data.train_labels), stage.batch_size)
    steps_per_epoch = len(sizes)
    per_step = sum(sizes) / steps_per_epoch  # images per step, for the logged rate
    total_steps = steps_per_epoch * stage.epochs
    ckpt = checkpoint.Checkpointer(os.path.join(ctx["workdir"], "checkpoints", stage.name))
    state = jax.device_put(stage.state, replicated)
    if ckpt.latest_step() is not None:
        state = jax.device_put(ckpt.restore(state), replicated)
        log.info("%s: resumed from step %d", stage.name, int(state["step"]))
    if ctx.get("eval_only") and int(state["step"]) != total_steps:
        raise checkpoint.CheckpointError(
            f"{ckpt.directory} has no finished {stage.name} checkpoint (found step "
            f"{ckpt.latest_step()}, the run has {total_steps} steps); train it first"
        )
    # Not hash(name): Python salts str hashes per process, which would break reproducibility.
    key = jax.random.fold_in(jax.random.key(config.seed), int(stage.name[-1]))
    history = []
    step = int(state["step"])
    start_time, start_step = time.time(), step
    m = None
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = samplers.epoch_indices(
            stage.sampler,
            data.train_labels,
            seed=config.seed,
            epoch=epoch,
            num_classes=data.num_classes,
            total_epochs=stage.epochs,
        )
        batches = ctx["input"].train(
            order, epoch=epoch, start_batch=offset, sizes=sizes, seed=config.seed
        )
        for images, labels, idx in batches:
            state, m = stage.step(state, images, labels, idx, key)
            step += 1
            if step % config.log_every_steps == 0 or step == total_steps:
                loss = _checked_loss(m, step, epoch, ckpt)
                rate = (step - start_step) * per_step / (time.time() - start_time)
                eta = (total_steps - step) * per_step / max(rate, 1e-9)
                log.info(
                    "%s epoch %d step %d/%d loss %.4f lr %.5f %.0f img/s ETA %.0fs",
                    *(stage.name, epoch, step, total_steps, loss, float(m["lr"]), rate, eta),
                )
                writer.write(
                    step,
                    {f"{stage.name}/train/loss": loss, f"{stage.name}/train/lr": float(m["lr"])},
                )
            if ctx["preempted"]():
                ckpt.save(step, state)
                ckpt.wait()
                raise TrainingError(
                    f"SIGTERM: saved {stage.name} step {step} to {ckpt.directory}; rerun to resume"
                )
        epoch += 1
        if epoch % config.checkpoint_every_epochs == 0 or step == total_steps:
            _checked_loss(m, step, epoch, ckpt)  # never checkpoint NaN parameters
            ckpt.save(step, state)
        if epoch % config.eval_every_epochs == 0 or step == total_steps:
            scores, feats = stage.scores(state)
            summary = _summarize(scores, ctx, stage.prob_scale)
            summary["epoch"] = epoch
            history.append(summary)
            writer.write(
                step,
                {f"{stage.name}/test/{k}": summary[k] for k in ("top1", "many", "medium", "few")},
            )
            log.info("%s epoch %d test top1 %.4f", stage.name, epoch, summary["top1"])
    ckpt.wait()
    ckpt.close()
    if not history:  # resumed after the end: evaluate once
        scores, feats = stage.scores(state)
        history.append(_summarize(scores, ctx, stage.prob_scale))
        history[-1]["epoch"] = stage.epochs
    history[-1].update(feature_summary(feats, data.test_labels, data.num_classes))
    if jax.process_index() == 0:
        save_embedding(
            os.path.join(ctx["workdir"], f"embedding_{stage.name}.npz"),
            feats,
            data.test_labels,
            config.seed,
        )
    best = max(history, key=lambda h: h["top1"])
    return state, {"final": history[-1], "best_epoch": best}


def feature_summary(feats, labels, num_classes) -> dict:
    """Per-class mean L2 norm of the test features (the statistic that motivates FBL)."""
    norms = np.linalg.norm(np.asarray(feats, np.float64), axis=1)
    total = np.bincount(labels, weights=norms, minlength=num_classes)
    count = np.bincount(labels, minlength=num_classes)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return {"feature_norm_per_class": [None if np.isnan(v) else float(v) for v in mean]}


def save_embedding(path, feats, labels, seed, max_points: int = 2000) -> None:
    """A 2-D PCA projection of (up to ``max_points``) test features, for the report."""
    feats = np.asarray(feats, np.float64)
    pick = np.random.default_rng(seed).permutation(len(feats))[:max_points]
    x = feats[pick] - feats[pick].mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    np.savez(path, coords=(x @ vt[:2].T).astype(np.float32), labels=np.asarray(labels)[pick])


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, eval_only: bool = False
) -> dict:
    """Trains stage 1 (and stage 2 when configured), evaluates, checkpoints.

    Returns the results, also written to ``workdir/results.json``. With
    ``eval_only`` the finished checkpoints are evaluated and nothing is trained.
    """
    start_time = time.time()
    check_workdir_config(workdir, config)
    data, kept = load_dataset(config.dataset)
    counts = data.class_counts
    if jax.process_index() == 0:
        record = longtail.split_record(
            kept,
            counts,
            dataset=config.dataset.name,
            imb_factor=config.dataset.imb_factor,
            profile=config.dataset.profile,
            split_seed=config.dataset.split_seed,
            split_protocol=config.dataset.get("split_protocol", "per_class"),
            shot_convention=config.shot_convention,
        )
        longtail.write_or_verify_split(workdir, record)
    mesh = create_mesh()
    n_dev = jax.device_count()
    batch_sizes = [("batch_size", config.batch_size)]
    if config.stage2.mode in ("retrain", "lws"):
        batch_sizes.append(("stage2.batch_size", config.stage2.batch_size))
    for name, bs in batch_sizes:
        if bs % n_dev:
            raise ValueError(f"{name} {bs} is not divisible by the {n_dev} devices")
        if bs > len(data.train_labels):
            raise ValueError(f"{name} {bs} exceeds the {len(data.train_labels)} training images")
    if config.dataset.name in STREAMED:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        source = StreamedInput(data, mesh, size=config.dataset.image_size)
    else:
        _, mean, std = DATASETS[config.dataset.name]
        source = InMemoryInput(data, mesh)
    if source.augment is not None:  # host-side augmentation: only normalise on the device
        config = _with_augment(config, source.augment)
    ctx = {
        "input": source,
        "config": config,
        "data": data,
        "mesh": mesh,
        "workdir": workdir,
        "writer": MetricWriter(workdir),
        "preempted": _install_sigterm(),
        "eval_only": eval_only,
    }

    # Stage 1: the whole network.
    spe = len(_epoch_batches(config, len(data.train_labels), config.batch_size))
    method = methods.get_method(config.method, config.loss, counts, spe)
    stage2_method = _check_stage2(config, method.head, counts)  # before hours of stage 1
    kernels = _kernels(config)  # fails fast on an unknown name
    tx, lr_fn = create_optimizer(config, spe, data.num_classes, method)
    state, graphdef, head_graphdef, tx = init_state(config, data.num_classes, method, tx)
    eval_step = jit_step(
        make_eval_step(graphdef, mean, std), kernels, out_shardings=NamedSharding(mesh, P())
    )
    eval_batch = _eval_batch(config.eval_batch_size, n_dev)

    def infer(params, batch_stats, split="test"):
        return evaluate(eval_step, params, batch_stats, source.infer(split, eval_batch))

    step1 = jit_step(
        make_train_step(config, graphdef, head_graphdef, method, tx, lr_fn, mean, std),
        kernels,
        donate_argnums=(0,),
    )
    stage1 = Stage(
        name="stage1",
        step=step1,
        state=state,
        sampler=config.sampler,
        epochs=config.epochs,
        batch_size=config.batch_size,
        scores=lambda s: _predicted(method, *infer(s["params"], s["batch_stats"])),
        prob_scale=method.prob_scale,
    )
    state, results1 = run_stage(stage1, ctx)
    results = {
        **results1,
        "stage1": results1,
        "train_class_counts": counts.tolist(),
        "method": config.method,
        "dataset": config.dataset.name,
        "devices": f"{n_dev} x {jax.devices()[0].device_kind} ({platform.machine()}, "
        f"{os.cpu_count()} host cores)",
    }

    # Stage 2: decoupled classifier re-training / LWS / tau-norm.
    s2 = config.stage2
    if s2.mode == "tau_norm":
        results["stage2"] = tau_norm_search(state, infer, ctx, s2.tau_grid)
    elif s2.mode != "none":
        results["stage2"] = _run_stage2(
            s2, stage2_method, state, method.head, graphdef, head_graphdef, ctx, infer, mean, std
        )
    if "stage2" in results:
        results["final"], results["best_epoch"] = (
            results["stage2"]["final"],
            results["stage2"]["best_epoch"],
        )
    results["wall_time_s"] = time.time() - start_time
    ctx["writer"].close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f)
    return results


STAGE2_MODES = ("none", "retrain", "lws", "tau_norm")


def _check_stage2(config, head_kind, counts) -> methods.Method | None:
    """Validates the stage-2 settings up front; returns the stage-2 method (None if no
    stage 2 is trained)."""
    s2 = config.stage2
    if s2.mode not in STAGE2_MODES:
        raise ValueError(f"unknown stage2.mode {s2.mode!r}; valid: {', '.join(STAGE2_MODES)}")
    if s2.mode in ("none", "tau_norm"):
        return None
    spe = len(_epoch_batches(config, int(np.sum(counts)), s2.batch_size))
    method = methods.get_method(s2.method, s2.loss, counts, spe)
    if method.head != head_kind:
        raise ValueError(
            f"stage2.method {s2.method!r} trains a {method.head} head but stage 1 "
            f"({config.method!r}) built a {head_kind} head; pick a stage-2 method for "
            f"{head_kind} logits"
        )
    return method


def _run_stage2(
    s2, method, stage1_state, head_kind, graphdef, head_graphdef, ctx, infer, mean, std
):
    config, data = ctx["config"], ctx["data"]
    spe = len(_epoch_batches(config, len(data.train_labels), s2.batch_size))
    frozen = {"params": stage1_state["params"], "batch_stats": stage1_state["batch_stats"]}
    if s2.mode == "lws":
        trainable = jnp.ones((data.num_classes,), jnp.float32)
    elif s2.reinit_head:
        in_features = int(frozen["params"]["head"]["kernel"][...].shape[0])
        fresh = models.HEADS[head_kind](
            in_features, data.num_classes, rngs=nnx.Rngs(config.seed + 1)
        )
        trainable = nnx.state(fresh, nnx.Param)
    else:
        trainable = jax.tree.map(jnp.copy, frozen["params"]["head"])
    tx, lr_fn = create_optimizer(s2, spe, data.num_classes, method)
    state = {
        "trainable": trainable,
        "opt_state": tx.init(trainable),
        "step": jnp.zeros((), jnp.int32),
    }
    step2 = jit_step(
        make_stage2_step(
            s2, graphdef, head_graphdef, method, tx, lr_fn, mean, std, config.dataset.augment
        ),
        _kernels(config),
        donate_argnums=(0,),
    )

    def scores(s):
        if s2.mode == "lws":
            z, f = infer(frozen["params"], frozen["batch_stats"])
            return _predicted(method, z * np.asarray(s["trainable"]), f)
        return _predicted(
            method, *infer(_with_head(frozen["params"], s["trainable"]), frozen["batch_stats"])
        )

    stage2 = Stage(
        name="stage2",
        step=lambda s, images, labels, idx, key: step2(s, frozen, images, labels, idx, key),
        state=state,
        sampler=s2.sampler,
        epochs=s2.epochs,
        batch_size=s2.batch_size,
        scores=scores,
        prob_scale=method.prob_scale,
    )
    _, results = run_stage(stage2, ctx)
    results.update(mode=s2.mode, method=s2.method, sampler=s2.sampler)
    return results


def _predicted(method, logits, feats):
    """(prediction scores, features) of an evaluation pass."""
    return np.asarray(method.predict(logits)), feats


def _with_head(params, head):
    out = jax.tree.map(lambda x: x, params)  # a new State container, same leaves
    out["head"] = head
    return out


def tau_norm_search(state, infer, ctx, tau_grid):
    """tau-normalised classifiers (Kang et al. 2020) over a grid of tau.

    There is no validation split in the CIFAR/MNIST protocols, so tau is selected by
    the class-balanced (mean per-class) accuracy on the un-augmented *training*
    images; every tau's test result is reported too.
    """
    params, stats = state["params"], state["batch_stats"]
    head = params["head"]
    if "bias" not in head:
        raise ValueError(
            "stage2.mode='tau_norm' needs a linear head (a cosine head is already normalised)"
        )
    kernel = np.asarray(head["kernel"][...], np.float64)
    bias = np.asarray(head["bias"][...], np.float64)
    _, test_feats = infer(params, stats, "test")
    _, train_feats = infer(params, stats, "train")
    data = ctx["data"]
    norms = np.maximum(np.linalg.norm(kernel, axis=0, keepdims=True), 1e-12)
    per_tau = []
    for tau in tau_grid:
        w = kernel / norms**tau
        train_acc = metrics.per_class_accuracy(
            (train_feats @ w + bias).argmax(1), data.train_labels, data.num_classes
        )
        summary = _summarize(test_feats @ w + bias, ctx, 1.0)
        summary.update(tau=float(tau), train_balanced_accuracy=float(np.nanmean(train_acc)))
        per_tau.append(summary)
    chosen = max(per_tau, key=lambda s: s["train_balanced_accuracy"])
    best = max(per_tau, key=lambda s: s["top1"])
    return {"final": chosen, "best_epoch": best, "per_tau": per_tau, "mode": "tau_norm"}


def _checked_loss(m, step, epoch, ckpt) -> float:
    loss = float(m["loss"])
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss is {loss} at step {step} (epoch {epoch}); stopped, the last good "
            f"checkpoint is kept in {ckpt.directory}"
        )
    return loss


def _summarize(scores, ctx, prob_scale):
    data, config = ctx["data"], ctx["config"]
    z = prob_scale * np.asarray(scores, np.float64)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return metrics.summarize(
        scores, data.test_labels, data.class_counts, convention=config.shot_convention, probs=probs
    )


def _with_augment(config, mode):
    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset.augment = mode
    return config


def _eval_batch(batch_size: int, n_dev: int) -> int:
    return max(n_dev, batch_size // n_dev * n_dev)


def _install_sigterm():
    flag = {"set": False}

    def handler(signum, frame):
        del signum, frame
        flag["set"] = True

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. under a test runner thread)
        pass
    return lambda: flag["set"]
