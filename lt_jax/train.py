"""The canonical trainer: ``train_and_evaluate(config, workdir)``.

Data-parallel over every device with ``jax.jit`` on a 1-D ``data`` mesh:
parameters and optimizer state are replicated (``P()``), batches sharded on
``data`` (``P("data")``); XLA inserts the gradient all-reduce. Small datasets
live on the device as uint8 and are augmented inside the jitted step from a key
``fold_in(base_key, step)``, so a resumed run draws the same randomness.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lt_jax import checkpoint, methods, metrics, models, optim
from lt_jax.data import augment, longtail, samplers, sources

log = logging.getLogger(__name__)

# name -> (n_max of the LT profile, normalisation mean, std)
DATASETS = {
    "mnist_lt": (400, (0.1307,), (0.3081,)),
    "cifar10_lt": (5000, augment.CIFAR_MEAN, augment.CIFAR_STD),
    "cifar100_lt": (500, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class TrainingError(RuntimeError):
    """A run that must stop (NaN loss, incompatible workdir, ...), with a one-line message."""


# --- input ----------------------------------------------------------------------------------


def load_dataset(cfg: ml_collections.ConfigDict) -> tuple[sources.ArrayDataset, np.ndarray]:
    """The long-tailed training split and the balanced test split, plus the kept indices."""
    name = cfg.name
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    if name == "mnist_lt":
        full = sources.load_mnist_5k()
    elif os.path.isdir(os.path.join(cfg.data_dir, "train")):
        full = sources.load_image_folder(cfg.data_dir)
    else:
        full = sources.load_cifar_archive(cfg.data_dir, name.removesuffix("_lt"))
    n_max = cfg.n_max or DATASETS[name][0]
    return sources.make_long_tailed(
        full, n_max=n_max, imb_factor=cfg.imb_factor, profile=cfg.profile, seed=cfg.split_seed
    )


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
    if method.ga_start_step is not None:
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


def init_state(config, num_classes, method, tx):
    model = models.create_model(
        config.model,
        num_classes=num_classes,
        head=method.head,
        rngs=nnx.Rngs(config.seed),
        **({"in_channels": 1} if config.dataset.name == "mnist_lt" else {}),
    )
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    head_graphdef = nnx.graphdef(model.head)
    state = {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    return state, graphdef, head_graphdef


# --- steps ----------------------------------------------------------------------------------


def make_train_step(config, graphdef, head_graphdef, method, tx, lr_fn, mean, std):
    augment_mode = config.dataset.augment
    alpha = config.mixup_alpha

    def train_step(state, images, labels, idx, base_key):
        step = state["step"]
        key = jax.random.fold_in(base_key, step)
        k_aug, k_mix, k_loss, k_loss_b = jax.random.split(key, 4)
        x, y = images[idx], labels[idx]
        if augment_mode != "none":
            x = augment.random_crop_flip(k_aug, x, pad=4, flip=augment_mode == "crop_flip")
        x = augment.normalize(x, mean, std)
        mixed = augment.mixup(k_mix, x, y, alpha=alpha) if alpha > 0 else None
        if mixed is not None:
            x = mixed.images

        def batch_loss(logits, feats):
            if mixed is None:
                return jnp.mean(method.loss(logits, feats, y, k_loss, step))
            la = jnp.mean(method.loss(logits, feats, mixed.labels_a, k_loss, step))
            lb = jnp.mean(method.loss(logits, feats, mixed.labels_b, k_loss_b, step))
            return mixed.lam * la + (1.0 - mixed.lam) * lb

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


def make_eval_step(graphdef, mean, std):
    def eval_step(params, batch_stats, images, idx):
        model = nnx.merge(graphdef, params, batch_stats)
        logits, feats = model(augment.normalize(images[idx], mean, std), train=False)
        return logits, feats

    return eval_step


def evaluate(eval_fn, state, mesh, images, labels, batch_size, predict):
    """Scores [N, C] and features [N, D] of every test example, each counted once."""
    n = len(labels)
    scores, feats = [], []
    for idx, mask in augment.eval_batches(n, batch_size):
        logits, f = eval_fn(state["params"], state["batch_stats"], images, shard_batch(mesh, idx))
        scores.append(np.asarray(predict(logits))[mask])
        feats.append(np.asarray(f)[mask])
    return np.concatenate(scores), np.concatenate(feats)


# --- workdir bookkeeping ------------------------------------------------------------------------


def check_workdir_config(workdir: str, config) -> None:
    """Refuses a workdir holding a run with a different config."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
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
    """JSON lines in the workdir (process 0 only)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0

    def write(self, step: int, values: dict[str, Any]) -> None:
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": int(step), **values}) + "\n")


# --- the loop -----------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, evaluates, checkpoints; returns the final results (also written as JSON)."""
    check_workdir_config(workdir, config)
    data, kept = load_dataset(config.dataset)
    counts = data.class_counts
    num_classes = data.num_classes
    if jax.process_index() == 0:
        record = longtail.split_record(
            kept,
            counts,
            dataset=config.dataset.name,
            imb_factor=config.dataset.imb_factor,
            profile=config.dataset.profile,
            split_seed=config.dataset.split_seed,
            shot_convention=config.shot_convention,
        )
        longtail.write_or_verify_split(workdir, record)

    mesh = create_mesh()
    n_dev = jax.device_count()
    if config.batch_size % n_dev:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {n_dev} devices")
    steps_per_epoch = len(data.train_labels) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {len(data.train_labels)} training images"
        )
    total_steps = steps_per_epoch * config.epochs
    method = methods.get_method(config.method, config.loss, counts, steps_per_epoch)
    tx, lr_fn = create_optimizer(config, steps_per_epoch, num_classes, method)
    state, graphdef, head_graphdef = init_state(config, num_classes, method, tx)
    _, mean, std = DATASETS[config.dataset.name]

    replicated = NamedSharding(mesh, P())
    state = jax.device_put(state, replicated)
    train_x = jax.device_put(data.train_images, replicated)
    train_y = jax.device_put(data.train_labels, replicated)
    test_x = jax.device_put(data.test_images, replicated)

    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is not None:
        state = jax.device_put(ckpt.restore(state), replicated)
        log.info("resumed from step %d", int(state["step"]))

    train_step = jax.jit(
        make_train_step(config, graphdef, head_graphdef, method, tx, lr_fn, mean, std),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(make_eval_step(graphdef, mean, std))
    base_key = jax.random.key(config.seed)
    writer = MetricWriter(workdir)
    eval_fn = functools.partial(
        evaluate,
        eval_step,
        mesh=mesh,
        images=test_x,
        labels=data.test_labels,
        batch_size=_eval_batch(config.eval_batch_size, n_dev),
        predict=method.predict,
    )
    preempted = _install_sigterm()
    best, history = None, []
    step = int(state["step"])
    start_time, start_step = time.time(), step
    local = slice(
        jax.process_index() * config.batch_size // jax.process_count(),
        (jax.process_index() + 1) * config.batch_size // jax.process_count(),
    )
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = samplers.epoch_indices(
            config.sampler,
            data.train_labels,
            seed=config.seed,
            epoch=epoch,
            num_classes=num_classes,
            total_epochs=config.epochs,
        )
        for b in range(offset, steps_per_epoch):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size][local]
            state, m = train_step(state, train_x, train_y, shard_batch(mesh, idx), base_key)
            step += 1
            if step % config.log_every_steps == 0 or step == total_steps:
                loss = _checked_loss(m, step, epoch, ckpt)
                rate = (step - start_step) * config.batch_size / (time.time() - start_time)
                eta = (total_steps - step) * config.batch_size / max(rate, 1e-9)
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.5f %.0f img/s ETA %.0fs",
                    *(epoch, step, total_steps, loss, float(m["lr"]), rate, eta),
                )
                writer.write(step, {"train/loss": loss, "train/lr": float(m["lr"])})
            if preempted():
                ckpt.save(step, state)
                ckpt.wait()
                raise TrainingError(
                    f"SIGTERM: saved step {step} to {ckpt.directory}; rerun to resume"
                )
        epoch += 1
        if epoch % config.checkpoint_every_epochs == 0 or step == total_steps:
            _checked_loss(m, step, epoch, ckpt)  # never checkpoint NaN parameters
            ckpt.save(step, state)
        if epoch % config.eval_every_epochs == 0 or step == total_steps:
            scores, _ = eval_fn(state)
            summary = _summarize(scores, data.test_labels, counts, config, method)
            summary["epoch"] = epoch
            history.append(summary)
            writer.write(step, {f"test/{k}": summary[k] for k in ("top1", "many", "medium", "few")})
            log.info("epoch %d test top1 %.4f", epoch, summary["top1"])
            if best is None or summary["top1"] > best["top1"]:
                best = summary
    ckpt.wait()
    ckpt.close()
    if not history:  # resumed after the end: evaluate once
        scores, _ = eval_fn(state)
        history.append(_summarize(scores, data.test_labels, counts, config, method))
        history[-1]["epoch"] = config.epochs
        best = history[-1]
    results = {
        "final": history[-1],
        "best_epoch": best,
        "train_class_counts": counts.tolist(),
        "method": config.method,
        "dataset": config.dataset.name,
        "devices": f"{n_dev} x {jax.devices()[0].device_kind}",
        "wall_time_s": time.time() - start_time,
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f)
    return results


def _checked_loss(m, step, epoch, ckpt) -> float:
    loss = float(m["loss"])
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss is {loss} at step {step} (epoch {epoch}); stopped, the last good "
            f"checkpoint is kept in {ckpt.directory}"
        )
    return loss


def _summarize(scores, labels, counts, config, method):
    z = method.prob_scale * scores.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return metrics.summarize(scores, labels, counts, convention=config.shot_convention, probs=probs)


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
