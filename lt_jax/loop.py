"""The epoch loop of one training stage: sampling, steps, logging, checkpoints, evaluation.

:func:`run_stage` resumes from the stage's latest checkpoint, so a run killed at any point
and started again ends bit-identical to an uninterrupted one (the sampler order is a
function of (seed, epoch), the step's randomness of the step number).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lt_jax import checkpoint, evaluation
from lt_jax.data import samplers
from lt_jax.workdir import MetricWriter, TrainingError

log = logging.getLogger("lt_jax.train")


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every stage of a run shares."""

    config: Any  # the resolved config (``config_lib.resolve``)
    data: Any  # ``ArrayDataset`` (in memory) or ``StreamDataset``
    input: Any  # ``pipeline.InMemoryInput`` / ``pipeline.StreamedInput``
    mesh: jax.sharding.Mesh
    workdir: str
    writer: MetricWriter
    preempted: Callable[[], bool]  # True once SIGTERM arrived
    eval_only: bool = False  # restore the finished checkpoints, train nothing

    def summarize(self, scores, prob_scale: float) -> dict:
        return evaluation.summarize(
            scores, self.data, shot_convention=self.config.shot_convention, prob_scale=prob_scale
        )


class Stage(NamedTuple):
    """One training stage, for :func:`run_stage`."""

    name: str  # "stage1" / "stage2": checkpoint folder and metric prefix
    step: Callable  # jitted (state, batch, key) -> (state, metrics)
    state: Any
    sampler: str
    epochs: int
    batch_size: int
    scores: Callable  # state -> (test scores [N, C], test features [N, D])
    prob_scale: float


def stage_key(seed: int, name: str):
    """The base key of a stage's steps."""
    # Not hash(name): Python salts str hashes per process, which would break reproducibility.
    return jax.random.fold_in(jax.random.key(seed), int(name[-1]))


@jax.jit
def _all_finite(state):
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def save_checked(ckpt, step: int, state, stage: str) -> None:
    """Saves ``state`` unless any of its floats is NaN/inf: then the run stops, the last good
    checkpoint kept. Every save goes through here (interval, end of stage, SIGTERM)."""
    if not bool(_all_finite(state)):
        raise TrainingError(
            f"{stage} state is not finite at step {step} (NaN/inf parameters or optimizer "
            f"state); not saved, the last good checkpoint is kept in {ckpt.directory}"
        )
    ckpt.save(step, state)


def checked_loss(m, step, epoch, ckpt) -> float:
    """The step's loss as a float; a NaN/inf loss stops the run (no checkpoint of it)."""
    loss = float(m["loss"])
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss is {loss} at step {step} (epoch {epoch}); stopped, the last good "
            f"checkpoint is kept in {ckpt.directory}"
        )
    return loss


def _restore(stage: Stage, ctx: RunContext, ckpt, total_steps: int):
    replicated = NamedSharding(ctx.mesh, P())
    state = jax.device_put(stage.state, replicated)
    if ckpt.latest_step() is not None:
        state = jax.device_put(ckpt.restore(state), replicated)
        log.info("%s: resumed from step %d", stage.name, int(state["step"]))
    if ctx.eval_only and int(state["step"]) != total_steps:
        raise checkpoint.CheckpointError(
            f"{ckpt.directory} has no finished {stage.name} checkpoint (found step "
            f"{ckpt.latest_step()}, the run has {total_steps} steps); train it first"
        )
    return state


class _Progress:
    """The periodic progress line and train metrics."""

    def __init__(self, stage, ctx, ckpt, step, total_steps, per_step):
        self.stage, self.ctx, self.ckpt = stage, ctx, ckpt
        self.total_steps, self.per_step = total_steps, per_step
        self.start_time, self.start_step = time.time(), step

    def __call__(self, m, step, epoch):
        loss = checked_loss(m, step, epoch, self.ckpt)
        rate = (step - self.start_step) * self.per_step / (time.time() - self.start_time)
        eta = (self.total_steps - step) * self.per_step / max(rate, 1e-9)
        name, lr = self.stage.name, float(m["lr"])
        log.info(
            "%s epoch %d step %d/%d loss %.4f lr %.5f %.0f img/s ETA %.0fs",
            *(name, epoch, step, self.total_steps, loss, lr, rate, eta),
        )
        self.ctx.writer.write(step, {f"{name}/train/loss": loss, f"{name}/train/lr": lr})


def _evaluate(stage, ctx, state, step, epoch, history):
    scores, feats = stage.scores(state)
    summary = ctx.summarize(scores, stage.prob_scale)
    summary["epoch"] = epoch
    history.append(summary)
    ctx.writer.write(
        step, {f"{stage.name}/test/{k}": summary[k] for k in ("top1", "many", "medium", "few")}
    )
    log.info("%s epoch %d test top1 %.4f", stage.name, epoch, summary["top1"])
    return feats


def run_stage(stage: Stage, ctx: RunContext) -> tuple[Any, dict]:
    """Trains ``stage`` to its last epoch (resuming from its checkpoints) and evaluates it.

    Returns ``(state, {"final": ..., "best_epoch": ...})``; the final entry also holds the
    per-class feature norms, and ``embedding_<stage>.npz`` the test features' PCA.
    """
    config, data = ctx.config, ctx.data
    sizes = ctx.input.epoch_sizes(stage.batch_size)
    ckpt = checkpoint.Checkpointer(os.path.join(ctx.workdir, "checkpoints", stage.name))
    try:
        state, history, feats = _train(stage, ctx, ckpt, sizes)
    finally:
        ckpt.close()  # waits for a pending save; no Orbax thread outlives the stage
    if not history:  # resumed after the end: evaluate once
        scores, feats = stage.scores(state)
        history.append(ctx.summarize(scores, stage.prob_scale))
        history[-1]["epoch"] = stage.epochs
    history[-1].update(evaluation.feature_summary(feats, data.test_labels, data.num_classes))
    if jax.process_index() == 0:
        path = os.path.join(ctx.workdir, f"embedding_{stage.name}.npz")
        evaluation.save_embedding(path, feats, data.test_labels, config.seed)
    best = max(history, key=lambda h: h["top1"])
    return state, {"final": history[-1], "best_epoch": best}


def _train(stage: Stage, ctx: RunContext, ckpt, sizes):
    """The epochs of a stage from its latest checkpoint: (state, evaluations, last features)."""
    config, data = ctx.config, ctx.data
    steps_per_epoch = len(sizes)
    total_steps = steps_per_epoch * stage.epochs
    state = _restore(stage, ctx, ckpt, total_steps)
    key = stage_key(config.seed, stage.name)
    history, feats, m = [], None, None
    step = int(state["step"])
    progress = _Progress(stage, ctx, ckpt, step, total_steps, sum(sizes) / steps_per_epoch)
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
        batches = ctx.input.train(
            order, epoch=epoch, start_batch=offset, sizes=sizes, seed=config.seed
        )
        for batch in batches:
            state, m = stage.step(state, batch, key)
            step += 1
            if step % config.log_every_steps == 0 or step == total_steps:
                progress(m, step, epoch)
            if ctx.preempted():
                save_checked(ckpt, step, state, stage.name)
                ckpt.wait()
                raise TrainingError(
                    f"SIGTERM: saved {stage.name} step {step} to {ckpt.directory}; rerun to resume"
                )
        epoch += 1
        if epoch % config.checkpoint_every_epochs == 0 or step == total_steps:
            checked_loss(m, step, epoch, ckpt)  # the step and loss in the message
            save_checked(ckpt, step, state, stage.name)
        if epoch % config.eval_every_epochs == 0 or step == total_steps:
            feats = _evaluate(stage, ctx, state, step, epoch, history)
    ckpt.wait()
    return state, history, feats
