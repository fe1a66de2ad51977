"""Second stages on the frozen stage-1 backbone, one object per ``config.stage2.mode``.

* ``retrain``: re-trains the classifier (GCL's CBEN stage, cRT) on frozen features;
* ``lws``: learns one scale per class on the stage-1 classifier (Kang et al. 2020);
* ``tau_norm``: no training, ``w_j / |w_j|^tau`` over a grid of tau;
* ``none``: no second stage.

Each mode has ``check(config, head, counts, epoch_sizes)`` (run before stage 1 trains,
so a bad setting fails in seconds, not after hours; ``epoch_sizes(batch_size)`` are the
input's batch sizes of one epoch) returning the stage-2 method (``None`` if it trains
nothing), and ``run(trained, ctx, method)`` returning the stage's results.
Adding a mode is one class and one :data:`MODES` entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lt_jax import config_lib, evaluation, methods, metrics, models, optim, steps
from lt_jax.loop import RunContext, Stage, run_stage


class Trained(NamedTuple):
    """Stage 1's outcome, what a second stage starts from."""

    state: dict  # stage 1's train state ({"params", "batch_stats", ...})
    graphdef: Any
    head_graphdef: Any
    head: str  # the classifier kind: "linear" | "cosine"
    infer: Callable  # (params, batch_stats, split="test") -> (logits, features)
    prep: steps.Preprocess  # stage 1's preprocessing (its augmentation and normalisation)


class NoStage2:
    trains = False  # no stage-2 steps (no batch size to check)

    def check(self, config, head, counts, epoch_sizes):
        return None

    def run(self, trained: Trained, ctx: RunContext, method) -> dict | None:
        return None


class Retrain:
    """Classifier re-training: the stage-1 head copied (or re-initialised with
    ``reinit_head``) and trained with ``stage2.method`` / ``stage2.sampler``."""

    trains = True

    def check(self, config, head, counts, epoch_sizes) -> methods.Method:
        s2 = config.stage2
        spe = len(epoch_sizes(s2.batch_size))
        method = methods.get_method(s2.method, s2.loss, counts, spe)
        if method.head != head:
            raise ValueError(
                f"stage2.method {s2.method!r} trains a {method.head} head but stage 1 "
                f"({config.method!r}) built a {head} head; pick a stage-2 method for "
                f"{head} logits"
            )
        return method

    def trainable(self, trained: Trained, config, num_classes: int, head_bias=None):
        """The stage-1 head copied, or fresh heads from each seed + 1 (stacked over seeds),
        their bias starting at ``head_bias`` where given (``Method.head_bias_init``)."""
        head = trained.state["params"]["head"]
        if not config.stage2.reinit_head:
            return jax.tree.map(jnp.copy, head)
        in_features = int(head["kernel"][...].shape[-2])

        def fresh_head(seed):
            module = models.HEADS[trained.head](in_features, num_classes, rngs=nnx.Rngs(seed))
            if head_bias is not None:
                module.bias[...] = jnp.full_like(module.bias[...], head_bias)
            return nnx.state(module, nnx.Param)

        fresh = [fresh_head(seed + 1) for seed in steps.seeds_of(config)]
        return fresh[0] if len(fresh) == 1 else jax.tree.map(lambda *x: jnp.stack(x), *fresh)

    def head_logits(self, head_graphdef) -> Callable:
        """``(frozen_head_params, trainable, feats) -> logits`` inside the step."""
        return lambda head_params, trainable, feats: nnx.merge(head_graphdef, trainable)(feats)

    def logits(self, trained: Trained, trainable):
        """Test (logits, features) of the stage-2 classifier."""
        params = _with_head(trained.state["params"], trainable)
        return trained.infer(params, trained.state["batch_stats"])

    def run(self, trained: Trained, ctx: RunContext, method) -> dict:
        config, data = ctx.config, ctx.data
        s2 = config.stage2
        spe = len(ctx.input.epoch_sizes(s2.batch_size))
        frozen = {"params": trained.state["params"], "batch_stats": trained.state["batch_stats"]}
        trainable = self.trainable(trained, config, data.num_classes, method.head_bias_init)
        # The trainable tree is the head itself: its bias sits at the root.
        tx, lr_fn = optim.create_optimizer(
            s2, spe, head_bias_decay=method.head_bias_decay, head_path=()
        )

        def init(trainable):
            return {
                "trainable": trainable,
                "opt_state": tx.init(trainable),
                "step": jnp.zeros((), jnp.int32),
            }

        state = init(trainable) if config.num_seeds == 1 else jax.vmap(init)(trainable)
        prep = steps.preprocess(s2, trained.prep.augment, trained.prep.mean, trained.prep.std)
        seeds = steps.seeds_of(config)
        step_fn = steps.make_stage2_step(
            trained.graphdef, self.head_logits(trained.head_graphdef), method, tx, lr_fn, prep
        )
        if len(seeds) > 1:
            step_fn = steps.over_seeds(step_fn, (0, 0, "batch", 0))
        step2 = steps.jit_step(step_fn, steps.kernels(config), donate_argnums=(0,))
        stage = Stage(
            name="stage2",
            step=lambda s, batch, key: step2(s, frozen, batch, key),
            state=state,
            sampler=s2.sampler,
            epochs=s2.epochs,
            batch_size=s2.batch_size,
            scores=lambda s: evaluation.predicted(method, *self.logits(trained, s["trainable"])),
            prob_scale=method.prob_scale,
            sigmoid_probs=method.sigmoid_probs,
            seeds=seeds,
        )
        _, results = run_stage(stage, ctx)
        results.update(mode=s2.mode, method=s2.method, sampler=s2.sampler)
        return results


class LWS(Retrain):
    """Learnable weight scaling: logits of the frozen stage-1 head times one learned scale
    per class (initialised to 1)."""

    def trainable(self, trained: Trained, config, num_classes: int, head_bias=None):
        del trained, head_bias  # one scale per class, from 1; the head stays as trained
        k = config.num_seeds
        return jnp.ones((num_classes,) if k == 1 else (k, num_classes), jnp.float32)

    def head_logits(self, head_graphdef) -> Callable:
        def logits(head_params, scales, feats):
            return nnx.merge(head_graphdef, head_params)(feats) * scales

        return logits

    def logits(self, trained: Trained, scales):
        z, f = trained.infer(trained.state["params"], trained.state["batch_stats"])
        return z * np.asarray(scales)[..., None, :], f  # [(K,) N, C] * [(K,) 1, C]


class TauNorm:
    """tau-normalised classifiers (Kang et al. 2020) over ``stage2.tau_grid``.

    There is no validation split in the CIFAR/MNIST protocols, so tau is selected by
    the class-balanced (mean per-class) accuracy on the un-augmented *training*
    images; every tau's test result is reported too.
    """

    trains = False

    def check(self, config, head, counts, epoch_sizes):
        return None

    def run(self, trained: Trained, ctx: RunContext, method) -> dict:
        params, stats = trained.state["params"], trained.state["batch_stats"]
        head = params["head"]
        if "bias" not in head:
            raise ValueError(
                "stage2.mode='tau_norm' needs a linear head (a cosine head is already normalised)"
            )
        seeds = steps.seeds_of(ctx.config)
        kernels = np.asarray(head["kernel"][...], np.float64).reshape(
            len(seeds), *head["kernel"][...].shape[-2:]
        )
        biases = np.asarray(head["bias"][...], np.float64).reshape(len(seeds), -1)
        test_feats = trained.infer(params, stats, "test")[1].reshape(
            len(seeds), -1, kernels.shape[1]
        )
        train_feats = trained.infer(params, stats, "train")[1].reshape(
            len(seeds), -1, kernels.shape[1]
        )
        per_seed = [
            self._search(ctx, kernels[k], biases[k], train_feats[k], test_feats[k])
            for k in range(len(seeds))
        ]
        results = evaluation.seed_results(
            seeds, [r["final"] for r in per_seed], [r["best_epoch"] for r in per_seed]
        )
        return {**results, "per_tau": per_seed[0]["per_tau"], "mode": "tau_norm"}

    @staticmethod
    def _search(ctx, kernel, bias, train_feats, test_feats) -> dict:
        data = ctx.data
        norms = np.maximum(np.linalg.norm(kernel, axis=0, keepdims=True), 1e-12)
        per_tau = []
        for tau in ctx.config.stage2.tau_grid:
            w = kernel / norms**tau
            train_acc = metrics.per_class_accuracy(
                (train_feats @ w + bias).argmax(1), data.train_labels, data.num_classes
            )
            summary = ctx.summarize(test_feats @ w + bias, 1.0)
            summary.update(tau=float(tau), train_balanced_accuracy=float(np.nanmean(train_acc)))
            per_tau.append(summary)
        chosen = max(per_tau, key=lambda s: s["train_balanced_accuracy"])
        best = max(per_tau, key=lambda s: s["top1"])
        return {"final": chosen, "best_epoch": best, "per_tau": per_tau}


MODES = {"none": NoStage2(), "retrain": Retrain(), "lws": LWS(), "tau_norm": TauNorm()}


def mode(config):
    """The :data:`MODES` object of ``config.stage2.mode``."""
    name = config.stage2.mode
    if name not in MODES:
        raise config_lib.unknown("stage2.mode", name, MODES)
    return MODES[name]


def _with_head(params, head):
    out = jax.tree.map(lambda x: x, params)  # a new State container, same leaves
    out["head"] = head
    return out
