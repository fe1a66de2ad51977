"""The story of a run: ``train_and_evaluate(config, workdir)``.

config (resolved once) -> data (the long-tailed split, recorded in ``split.json``) ->
input (in memory or streamed, sharded over a 1-D ``data`` mesh) -> model, optimizer and
jitted steps -> stage 1 -> the second stage, if any -> ``results.json``.

Data-parallel over every device with ``jax.jit``: parameters and optimizer state are
replicated, batches sharded on ``data``; XLA inserts the gradient all-reduce. Where each
piece lives: ``data.datasets`` (registry, loading), ``data.pipeline`` (mesh, inputs,
batch types), ``optim.factory`` (optimizer), ``steps`` (state, train/eval steps),
``loop`` (the epoch loop), ``stage2`` (second-stage modes), ``evaluation``, ``workdir``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time

import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lt_jax import distributed, evaluation, methods, models, optim, preflight, stage2, steps
from lt_jax.data import datasets, longtail, pipeline
from lt_jax.loop import RunContext, Stage, run_stage
from lt_jax.workdir import (
    MetricWriter,
    TrainingError,
    WorkdirLock,
    check_config,
    install_sigterm,
    record_config,
)
from lt_jax.workdir import write_results as _write_results

__all__ = ["TrainingError", "train_and_evaluate"]
log = logging.getLogger("lt_jax.train")


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, eval_only: bool = False
) -> dict:
    """Trains stage 1 (and stage 2 when configured), evaluates, checkpoints.

    Returns the results, also written to ``workdir/results.json``. With
    ``eval_only`` the finished checkpoints are evaluated, nothing is trained, and the
    results go to ``workdir/evaluation.json``. The workdir is locked for the run
    (``workdir.WorkdirLock``): a second run on it stops at once.
    """
    start_time = time.time()
    config = preflight.check(config)  # every mistake knowable without the data, in seconds
    with _cluster_lock(workdir):
        return _run(config, workdir, eval_only, start_time)


@contextlib.contextmanager
def _cluster_lock(workdir: str):
    """The workdir lock, held by process 0 for the whole cluster: the others wait for its
    verdict, so a second cluster on a locked workdir stops in every process."""
    if jax.process_count() == 1:
        with WorkdirLock(workdir):
            yield
        return
    lock, error = WorkdirLock(workdir), ""
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except TrainingError as e:
            error = str(e) or "the workdir lock was refused"
    (verdict,) = distributed.agree("workdir_lock", error, root=0)
    if verdict:
        raise TrainingError(verdict if jax.process_index() == 0 else f"process 0: {verdict}")
    try:
        yield
    finally:
        if jax.process_index() == 0:
            lock.release()


def _run(config, workdir: str, eval_only: bool, start_time: float) -> dict:
    check_config(workdir, config)
    where = f" from {config.dataset.data_dir}" if config.dataset.data_dir else ""
    log.info("reading %s%s ...", config.dataset.name, where)
    started = time.time()
    data, kept = datasets.load_dataset(config.dataset)
    log.info(
        "read %s: %d training images (long-tailed) in %d classes, %d test images, %.1f s",
        config.dataset.name, len(data.train_labels), data.num_classes, len(data.test_labels),
        time.time() - started,
    )  # fmt: skip
    second = stage2.mode(config)  # checked before hours of stage 1, with the batch sizes:
    _check_batch_sizes(config, len(data.train_labels), second.trains)
    if not eval_only:
        record_config(workdir, config)  # after the data loaded: a typo leaves nothing behind
    if jax.default_backend() == "cpu":  # after the lock and the data: their errors come first,
        # not after a native build (a compiler run on a fresh machine)
        log.info("CPU kernels: %s", models.kernels.describe(steps.kernels(config), config.model))
    _record_split(workdir, config, kept, data.class_counts)
    mesh = pipeline.create_mesh()
    source = pipeline.make_input(data, mesh, config.dataset, drop_last=config.drop_last)
    ctx = RunContext(
        config=config,
        data=data,
        input=source,
        mesh=mesh,
        workdir=workdir,
        writer=MetricWriter(workdir, started=start_time),
        preempted=distributed.StopFlag(install_sigterm()),  # agreed by every process
        eval_only=eval_only,
    )
    counts = data.class_counts
    spe = len(source.epoch_sizes(config.batch_size))
    method = methods.get_method(config.method, config.loss, counts, spe)
    stage2_method = second.check(config, method.head, counts, source.epoch_sizes)

    trained, results1 = train_stage1(ctx, method, spe)
    results = {
        **results1,
        "stage1": results1,
        "train_class_counts": counts.tolist(),
        "method": config.method,
        "dataset": config.dataset.name,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({platform.machine()}, {os.cpu_count()} host cores)",
    }
    results2 = second.run(trained, ctx, stage2_method)
    if results2 is not None:
        results["stage2"] = results2
        for key in ("final", "best_epoch", "per_seed", "aggregate"):  # stage 2 is the headline
            results[key] = results2[key]
    results["wall_time_s"] = ctx.writer.elapsed()  # earlier processes of a resumed run too
    ctx.writer.close()
    # lt_jax.evaluate writes its own file: the training record (best epoch, wall time) stays.
    _write_results(workdir, results, "evaluation.json" if eval_only else "results.json")
    return results


def train_stage1(ctx: RunContext, method: methods.Method, steps_per_epoch: int):
    """Builds the optimizer, model and jitted steps and trains the whole network.

    Returns ``(trained, results)``: what a second stage starts from, and stage 1's
    final and best-epoch evaluations.
    """
    config, data, source = ctx.config, ctx.data, ctx.input
    kernels = steps.kernels(config)  # fails fast on an unknown name
    tx, lr_fn = optim.create_optimizer(
        config,
        steps_per_epoch,
        ga_start_step=method.ga_start_step,
        num_classes=data.num_classes,
        head_bias_decay=method.head_bias_decay,
    )
    seeds = steps.seeds_of(config)  # several: one program vmapped over the seeds
    init = steps.init_seeds(
        config,
        data.num_classes,
        method.head,
        tx,
        input_shape=source.image_shape,
        head_bias=method.head_bias_init,
    )
    info = datasets.info(config.dataset.name)
    prep = steps.preprocess(config, config.dataset.augment, info.mean, info.std)
    eval_fn = steps.make_eval_step(init.graphdef, info.mean, info.std)
    if len(seeds) > 1:
        eval_fn = steps.over_seeds(eval_fn, (0, 0, None))  # every seed sees the same batch
    eval_step = steps.jit_step(eval_fn, kernels, out_shardings=NamedSharding(ctx.mesh, P()))
    eval_batch = _eval_batch(config.eval_batch_size, jax.device_count())

    def infer(params, batch_stats, split="test"):
        return evaluation.evaluate(eval_step, params, batch_stats, source.infer(split, eval_batch))

    train_step = steps.make_train_step(
        init.graphdef, init.head_graphdef, method, init.tx, lr_fn, prep
    )
    if len(seeds) > 1:
        train_step = steps.over_seeds(train_step, (0, "batch", 0))
    stage = Stage(
        name="stage1",
        step=steps.jit_step(train_step, kernels, donate_argnums=(0,)),
        state=init.state,
        sampler=config.sampler,
        epochs=config.epochs,
        batch_size=config.batch_size,
        scores=lambda s: evaluation.predicted(method, *infer(s["params"], s["batch_stats"])),
        prob_scale=method.prob_scale,
        sigmoid_probs=method.sigmoid_probs,
        seeds=seeds,
    )
    state, results = run_stage(stage, ctx)
    trained = stage2.Trained(state, init.graphdef, init.head_graphdef, method.head, infer, prep)
    return trained, results


def _record_split(workdir, config, kept, counts) -> None:
    """Writes ``split.json`` (or verifies it on a rerun): which source images trained."""
    if jax.process_index() != 0:
        return
    record = longtail.split_record(
        kept,
        counts,
        dataset=config.dataset.name,
        imb_factor=config.dataset.imb_factor,
        profile=config.dataset.profile,
        split_seed=config.dataset.split_seed,
        split_protocol=config.dataset.split_protocol,
        shot_convention=config.shot_convention,
    )
    longtail.write_or_verify_split(workdir, record)


def _check_batch_sizes(config, num_train: int, stage2_trains: bool) -> None:
    n_dev = jax.device_count()
    batch_sizes = [("batch_size", config.batch_size)]
    if stage2_trains:
        batch_sizes.append(("stage2.batch_size", config.stage2.batch_size))
    for name, bs in batch_sizes:
        if bs % n_dev:
            raise ValueError(f"{name} {bs} is not divisible by the {n_dev} devices")
        if bs > num_train:
            raise ValueError(f"{name} {bs} exceeds the {num_train} training images")


def _eval_batch(batch_size: int, n_dev: int) -> int:
    """The evaluation batch: a multiple of the device count, at least one row each."""
    return max(n_dev, batch_size // n_dev * n_dev)
