"""The epoch loop of one training stage: sampling, steps, logging, checkpoints, evaluation.

:func:`run_stage` resumes from the stage's latest checkpoint, so a run killed at any point
and started again ends bit-identical to an uninterrupted one (the sampler order is a
function of (seed, epoch), the step's randomness of the step number).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lt_jax import checkpoint, distributed, evaluation
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

    def summarize(self, scores, prob_scale: float, sigmoid: bool = False) -> dict:
        return evaluation.summarize(
            scores,
            self.data,
            shot_convention=self.config.shot_convention,
            prob_scale=prob_scale,
            sigmoid=sigmoid,
        )


class Stage(NamedTuple):
    """One training stage, for :func:`run_stage`."""

    name: str  # "stage1" / "stage2": checkpoint folder and metric prefix
    step: Callable  # jitted (state, batch, key) -> (state, metrics)
    state: Any  # one seed's state, or K seeds' stacked on a leading axis
    sampler: str
    epochs: int
    batch_size: int
    scores: Callable  # state -> (test scores [(K,) N, C], test features [(K,) N, D])
    prob_scale: float
    seeds: tuple[int, ...]  # one seed: the plain program; several: stacked and vmapped
    sigmoid_probs: bool = False  # calibration on sigmoid(scores) (Method.sigmoid_probs)

    @property
    def stacked(self) -> bool:
        return len(self.seeds) > 1


def stage_key(seed: int, name: str):
    """The base key of a stage's steps."""
    # Not hash(name): Python salts str hashes per process, which would break reproducibility.
    return jax.random.fold_in(jax.random.key(seed), int(name[-1]))


@functools.partial(jax.jit, static_argnames="stacked")
def _finite_per_seed(state, stacked: bool):
    """[K] bools: every float of each seed's state is finite ([1] for one seed)."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not stacked:
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))[None]
    per_leaf = [jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1) for x in leaves]
    return jnp.all(jnp.stack(per_leaf), axis=0)


class Health:
    """NaN/inf detection of a stage's seeds.

    One seed: a NaN/inf loss or state stops the run (the last good checkpoint kept). Several
    seeds: a seed that diverges is reported once and marked in the results, the others go
    on; only when every seed has diverged does the run stop. A save never writes a
    non-finite seed that is not marked (``save``: interval, end of stage, SIGTERM).
    """

    def __init__(self, stage: Stage, ckpt):
        self.stage, self.ckpt = stage, ckpt
        self.diverged: set[int] = set()

    def _mark(self, bad, what: str, where: str) -> None:
        seeds = self.stage.seeds
        if not self.stage.stacked and bad[0]:
            raise TrainingError(
                f"{what} at {where}; stopped, the last good checkpoint is kept in "
                f"{self.ckpt.directory}"
            )
        new = [s for s, b in zip(seeds, bad, strict=True) if b and s not in self.diverged]
        for s in new:
            log.warning("%s: seed %d diverged (%s at %s); marked, the others go on",
                        self.stage.name, s, what, where)  # fmt: skip
        self.diverged.update(new)
        if len(self.diverged) == len(seeds):
            raise TrainingError(
                f"every seed diverged ({what} at {where}); stopped, the last good checkpoint "
                f"is kept in {self.ckpt.directory}"
            )

    def loss(self, m, step: int, epoch: int) -> float:
        """The step's loss (the mean over the seeds that have not diverged)."""
        losses = np.atleast_1d(np.asarray(m["loss"], np.float64))
        bad = ~np.isfinite(losses)
        what = f"loss is {losses[bad][0]}" if bad.any() else ""
        self._mark(bad, what, f"step {step} (epoch {epoch})")
        return float(np.mean(losses[~bad]))

    def restored(self, state) -> None:
        finite = np.asarray(_finite_per_seed(state, self.stage.stacked))
        self.diverged = {s for s, f in zip(self.stage.seeds, finite, strict=True) if not f}

    def save(self, step: int, state) -> None:
        finite = np.asarray(_finite_per_seed(state, self.stage.stacked))
        if not self.stage.stacked and not finite[0]:
            raise TrainingError(
                f"{self.stage.name} state is not finite at step {step} (NaN/inf parameters or "
                f"optimizer state); not saved, the last good checkpoint is kept in "
                f"{self.ckpt.directory}"
            )
        self._mark(~finite, "non-finite state", f"step {step}")
        self.ckpt.save(step, state)


def _save(stage: Stage, ctx: RunContext, health: Health, step: int, state) -> None:
    """A checkpoint, and the run's wall time at it: a resumed run counts on from there."""
    health.save(step, state)
    ctx.writer.write(step, {f"{stage.name}/wall_time_s": round(ctx.writer.elapsed(), 1)})


def _step_of(state) -> int:
    return int(np.asarray(state["step"]).reshape(-1)[0])


def _restore(stage: Stage, ctx: RunContext, ckpt, total_steps: int):
    replicated = NamedSharding(ctx.mesh, P())
    state = jax.device_put(stage.state, replicated)
    if ckpt.latest_step() is not None:
        state = jax.device_put(ckpt.restore(state), replicated)
        step = _step_of(state)
        verb = "restored" if ctx.eval_only else "resumed from"
        log.info("%s: %s step %d of %d (checkpoint %s)", stage.name, verb, step, total_steps,
                 ckpt.directory)  # fmt: skip
        if not ctx.eval_only:
            ctx.writer.rewind(stage.name, step)
    elif not ctx.eval_only:
        ctx.writer.restart(stage.name)
    if ctx.eval_only and _step_of(state) != total_steps:
        raise checkpoint.CheckpointError(
            f"{ckpt.directory} has no finished {stage.name} checkpoint (found step "
            f"{ckpt.latest_step()}, the run has {total_steps} steps); train it first"
        )
    return state


class _Progress:
    """The periodic progress line and train metrics.

    Images/s and the ETA are measured over the last ``window`` progress lines (evaluations
    and checkpoints in between included, as they recur until the end), not since the stage
    started: the first step's compilation, a paused process or a burst of other work on the
    machine leave the figure after ``window`` lines instead of skewing it to the end."""

    def __init__(self, stage, ctx, health, step, total_steps, per_step, window=10):
        self.stage, self.ctx, self.health = stage, ctx, health
        self.total_steps, self.per_step = total_steps, per_step * len(stage.seeds)
        self.marks = collections.deque([(time.time(), step)], maxlen=window + 1)

    def rate(self, step: int) -> float:
        """Marks ``step`` now; images per second over the last ``window`` intervals."""
        now = time.time()
        self.marks.append((now, step))
        then, before = self.marks[0]
        return (step - before) * self.per_step / max(now - then, 1e-9)

    def __call__(self, m, step, epoch):
        """``epoch``: the 0-based epoch the step belongs to; logged 1-based, as the test
        lines and results.json count finished epochs."""
        loss = self.health.loss(m, step, epoch)
        rate = self.rate(step)
        eta = (self.total_steps - step) * self.per_step / max(rate, 1e-9)
        name, lr = self.stage.name, float(np.asarray(m["lr"]).reshape(-1)[0])
        log.info(
            "%s epoch %d/%d step %d/%d loss %.4f lr %.3g %.0f img/s ETA %s",
            *(name, epoch + 1, self.stage.epochs, step, self.total_steps, loss, lr, rate),
            _duration(eta),
        )
        self.ctx.writer.write(step, {f"{name}/train/loss": loss, f"{name}/train/lr": lr})


def _duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _summaries(stage, ctx, scores) -> list[dict]:
    """One test summary per seed."""
    per_seed = scores if stage.stacked else [scores]
    return [ctx.summarize(s, stage.prob_scale, stage.sigmoid_probs) for s in per_seed]


def _evaluate(stage, ctx, state, step, epoch, history, health):
    scores, feats = stage.scores(state)
    summaries = _summaries(stage, ctx, scores)
    for s in summaries:
        s["epoch"] = epoch
    history.append(summaries)
    keys = ("top1", "many", "medium", "few")
    kept = [s for seed, s in zip(stage.seeds, summaries, strict=True)
            if seed not in health.diverged] or summaries  # fmt: skip
    mean = {k: _mean([s[k] for s in kept]) for k in keys}
    values = {f"{stage.name}/test/{k}": mean[k] for k in keys}
    if stage.stacked:
        for seed, s in zip(stage.seeds, summaries, strict=True):
            values.update({f"{stage.name}/test/{k}/seed{seed}": s[k] for k in keys})
    ctx.writer.write(step, values)
    head = f"{stage.name} epoch {epoch}/{stage.epochs} test top-1 {100 * mean['top1']:.2f}%"
    if stage.stacked:
        top = [100 * s["top1"] for s in kept]
        log.info("%s (mean of %d seeds, %.2f to %.2f)", head, len(kept), min(top), max(top))
    else:
        log.info("%s", head)
    return feats


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def run_stage(stage: Stage, ctx: RunContext) -> tuple[Any, dict]:
    """Trains ``stage`` to its last epoch (resuming from its checkpoints) and evaluates it.

    Returns ``(state, results)``: ``evaluation.seed_results`` of the stage's seeds (the
    first seed's ``final`` and ``best_epoch``, ``per_seed``, ``aggregate``); each final
    entry also holds the per-class feature norms, and ``embedding_<stage>.npz`` the first
    seed's test features' PCA.
    """
    config, data = ctx.config, ctx.data
    sizes = ctx.input.epoch_sizes(stage.batch_size)
    ckpt = checkpoint.Checkpointer(os.path.join(ctx.workdir, "checkpoints", stage.name))
    health = Health(stage, ckpt)
    try:
        state, history, feats = _train(stage, ctx, ckpt, sizes, health)
    except BaseException as e:
        # A pending save's finalisation meets the other processes at a barrier: with a peer
        # gone, an unbounded wait would last until JAX's heartbeat timeout.
        if not distributed.peer_lost(e):
            ckpt.close()
        elif not ckpt.close(timeout=distributed.save_grace_s()):
            log.warning("%s: the pending checkpoint was not finished (the other processes did "
                        "not come); the newest finished one is kept", stage.name)  # fmt: skip
        raise
    ckpt.close()  # waits for a pending save; no Orbax thread outlives the stage
    if cost := getattr(ctx.preempted, "cost", str)():
        log.info("%s: the processes agreed on the stop flag after every step (%s)", stage.name,
                 cost)  # fmt: skip
    if not history:  # resumed after the end: evaluate once
        scores, feats = stage.scores(state)
        history.append(_summaries(stage, ctx, scores))
        for s in history[-1]:
            s["epoch"] = stage.epochs
    feats = feats if stage.stacked else feats[None]
    finals, bests = [], []
    for k in range(len(stage.seeds)):
        final = history[-1][k]
        final.update(evaluation.feature_summary(feats[k], data.test_labels, data.num_classes))
        finals.append(final)
        bests.append(max((h[k] for h in history), key=lambda h: h["top1"]))
    if jax.process_index() == 0:
        path = os.path.join(ctx.workdir, f"embedding_{stage.name}.npz")
        evaluation.save_embedding(path, feats[0], data.test_labels, config.seed)
    return state, evaluation.seed_results(stage.seeds, finals, bests, health.diverged)


def _train(stage: Stage, ctx: RunContext, ckpt, sizes, health: Health):
    """The epochs of a stage from its latest checkpoint: (state, evaluations, last features)."""
    config, data = ctx.config, ctx.data
    steps_per_epoch = len(sizes)
    total_steps = steps_per_epoch * stage.epochs
    state = _restore(stage, ctx, ckpt, total_steps)
    health.restored(state)
    keys = [stage_key(s, stage.name) for s in stage.seeds]
    key = jnp.stack(keys) if stage.stacked else keys[0]
    history, feats = [], None
    step = _step_of(state)
    progress = _Progress(stage, ctx, health, step, total_steps, sum(sizes) / steps_per_epoch)
    first, started = None, time.time()
    if step < total_steps:
        log.info("%s: compiling the train step (once per run) ...", stage.name)
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        orders = [
            samplers.epoch_indices(
                stage.sampler,
                data.train_labels,
                seed=seed,
                epoch=epoch,
                num_classes=data.num_classes,
                total_epochs=stage.epochs,
            )
            for seed in stage.seeds
        ]
        order = np.stack(orders) if stage.stacked else orders[0]
        batches = ctx.input.train(
            order,
            epoch=epoch,
            start_batch=offset,
            sizes=sizes,
            seed=list(stage.seeds) if stage.stacked else config.seed,
        )
        for batch in batches:
            state, m = stage.step(state, batch, key)
            step += 1
            if first is None:
                first = float(np.asarray(m["loss"]).reshape(-1)[0])  # waits for the step
                log.info("%s: step %d of %d compiled and ran in %.1f s", stage.name, step,
                         total_steps, time.time() - started)  # fmt: skip
            if step % config.log_every_steps == 0 or step == total_steps:
                progress(m, step, epoch)
            if ctx.preempted():
                who = getattr(ctx.preempted, "describe", str)()
                log.info("%s: SIGTERM%s, saving step %d ...", stage.name, who, step)
                _save(stage, ctx, health, step, state)
                ckpt.wait()
                raise TrainingError(
                    f"SIGTERM{who}: saved {stage.name} step {step} to {ckpt.directory}; rerun "
                    "to resume"
                )
        epoch += 1
        if epoch % config.checkpoint_every_epochs == 0 or step == total_steps:
            health.loss(m, step, epoch)  # names the step and loss of a NaN
            _save(stage, ctx, health, step, state)
        if epoch % config.eval_every_epochs == 0 or step == total_steps:
            feats = _evaluate(stage, ctx, state, step, epoch, history, health)
    ckpt.wait()
    return state, history, feats
