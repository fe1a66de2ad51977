"""The model's train state and the jitted steps: stage 1, stage 2 (frozen backbone), eval.

Every step draws its randomness from ``fold_in(base_key, step)`` (:func:`step_keys`), so a
resumed run draws exactly what the uninterrupted one would. A batch is a
:class:`~lt_jax.data.pipeline.GatherBatch` (in memory: gathered and augmented here) or an
:class:`~lt_jax.data.pipeline.ImageBatch` (streamed: augmented on the host); the train
state is a dict ``{"params", "batch_stats", "opt_state", "step"}`` (the checkpoint layout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lt_jax import methods, models, optim
from lt_jax.data import augment

MIXERS = {"mixup": augment.mixup, "cutmix": augment.cutmix}
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


# --- settings read from the config ------------------------------------------------------------


def kernels(config) -> str:
    """The model's kernel implementation (``config.kernels``: auto | xla | cpu)."""
    name = config.kernels
    if name == "auto":
        return models.kernels.implementation()
    if name not in models.kernels.IMPLEMENTATIONS:
        raise ValueError(f"unknown config.kernels {name!r}; valid: auto, xla, cpu")
    return name


def compute_dtype(name: str):
    """The trunk's compute dtype (None: float32)."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def mixing(config) -> tuple[str, float]:
    """("mixup" | "cutmix", alpha) from ``mixup_alpha`` / ``cutmix_alpha`` (one may be set)."""
    mixup, cutmix = config.mixup_alpha, config.cutmix_alpha
    if mixup > 0 and cutmix > 0:
        raise ValueError("set mixup_alpha or cutmix_alpha, not both")
    return ("cutmix", cutmix) if cutmix > 0 else ("mixup", mixup)


class Preprocess(NamedTuple):
    """What a train step does to a batch before the model.

    ``augment`` (crop | crop_flip | none) applies to in-memory batches only (streamed
    ones arrive augmented); ``mix`` is ``(kind, alpha)``, no mixing when alpha is 0;
    ``mean`` / ``std`` normalise every batch.
    """

    augment: str
    mix: tuple[str, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def preprocess(stage_config, augment_mode: str, mean, std) -> Preprocess:
    """The preprocessing of a stage whose config block (top level or ``stage2``) sets
    the mixing."""
    return Preprocess(augment_mode, mixing(stage_config), tuple(mean), tuple(std))


def jit_step(fn, kernels: str | None = None, **kw):
    """``jax.jit`` with the compiler options of ``kernels`` (``models.kernels``; None: the
    default backend's implementation)."""
    options = None if kernels == "xla" else models.kernels.compiler_options()
    return jax.jit(fn, compiler_options=options, **kw)


# --- state ------------------------------------------------------------------------------------


class InitialState(NamedTuple):
    """What :func:`init_state` builds: the train state and how to rebuild the model."""

    state: dict
    graphdef: Any  # the model's nnx graph definition
    head_graphdef: Any  # the classifier's (GA and stage 2 call the head alone)
    tx: optax.GradientTransformation  # the optimizer, a frozen trunk masked out


def init_state(
    config, num_classes: int, head: str, tx, *, input_shape, seed=None, head_bias=None
) -> InitialState:
    """Builds the model (``config.model`` with a ``head`` classifier, for images of
    ``input_shape`` (H, W, C)) and its train state, initialised from ``seed`` (default
    ``config.seed``). ``head_bias``: a constant the linear head's bias starts at
    (``Method.head_bias_init``).

    ``tx`` comes back wrapped so that a frozen trunk (Places-LT's ResNet-152) gets
    no update at all. ``config.pretrained`` (a torchvision ``.npz``) initialises
    the trunk.
    """
    model = models.create_model(
        config.model,
        num_classes=num_classes,
        head=head,
        rngs=nnx.Rngs(config.seed if seed is None else seed),
        dtype=compute_dtype(config.dtype),
        impl=kernels(config),
        input_shape=tuple(input_shape),
    )
    if config.pretrained:
        models.load_torchvision_weights(model, config.pretrained)
    if head_bias is not None:
        if getattr(model.head, "bias", None) is None:
            raise ValueError(f"a head bias init needs the linear head; the {head} head has none")
        model.head.bias[...] = jnp.full_like(model.head.bias[...], head_bias)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    labels = models.frozen_param_labels(model, params)
    if "frozen" in jax.tree.leaves(labels):
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    state = {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    return InitialState(state, graphdef, nnx.graphdef(model.head), tx)


def seeds_of(config) -> tuple[int, ...]:
    """The seeds a run trains: ``seed, seed + 1, ..., seed + num_seeds - 1``."""
    return tuple(config.seed + k for k in range(config.num_seeds))


def init_seeds(
    config, num_classes: int, head: str, tx, *, input_shape, head_bias=None
) -> InitialState:
    """:func:`init_state` of one seed, or with ``num_seeds`` K > 1 the K seeds' states
    stacked on a leading axis, each exactly as a run with that seed initialises it.

    The stacked state goes through :func:`over_seeds` (vmapped on accelerators, one seed
    after another inside the program on CPU).
    """
    seeds = seeds_of(config)
    kw = dict(input_shape=input_shape, head_bias=head_bias)
    if len(seeds) == 1:
        return init_state(config, num_classes, head, tx, **kw)
    inits = [init_state(config, num_classes, head, tx, seed=s, **kw) for s in seeds]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[i.state for i in inits])
    return inits[0]._replace(state=stacked)


def over_seeds(fn, axes, *, sequential: bool | None = None):
    """``fn`` over the leading seed axis. ``axes`` has one entry per argument: 0 (stacked
    per seed), None (shared by the seeds) or ``"batch"`` (the batch's own ``seed_axes()``:
    an in-memory batch shares the split and maps its indices).

    On accelerators the seeds are vmapped: one batched program, which fills a GPU that a
    ResNet-32 step alone leaves idle. On CPU (``sequential``, default: the CPU backend) the
    program holds the K seeds' steps one after another, unrolled (K times the compile time,
    native kernels included) and chained by an optimization barrier so that XLA runs them
    in order rather than interleaved: ResNet-32 at batch 64 on the 2-core AVX2 development
    CPU takes 1.83x (K=2) and 3.83x (K=4) the time of one seed's step, against 1.87x /
    3.89x unchained; vmapped and ``lax.map`` programs were several times slower there
    (``benchmarks/throughput.py --seeds``, docs/guide.md).
    """
    if sequential is None:
        sequential = jax.default_backend() == "cpu"

    def seeded(*args):
        in_axes = tuple(
            a.seed_axes() if ax == "batch" else ax for a, ax in zip(args, axes, strict=True)
        )
        if sequential:
            parts = [_split(a, ax) for a, ax in zip(args, in_axes, strict=True)]
            shared = [p[1] for p in parts]

            mapped = [p[0] for p in parts]
            num_seeds = jax.tree.leaves(mapped)[0].shape[0]
            outs = []
            for k in range(num_seeds):  # unrolled: XLA:CPU runs a lax.map of convs ~30x slower
                mine = jax.tree.map(lambda x, k=k: x[k], mapped)
                if outs:  # seed k starts when seed k-1 is done: one seed's buffers live
                    mine, _ = jax.lax.optimization_barrier((mine, outs[-1]))
                joined = zip(mine, shared, in_axes, strict=True)
                outs.append(fn(*[_join(m, s, ax) for m, s, ax in joined]))
            return jax.tree.map(lambda *x: jnp.stack(x), *outs)
        with models.kernels.without_native():  # no batching rule for the native calls
            return jax.vmap(fn, in_axes=in_axes)(*args)

    return seeded


def _split(arg, axes):
    """(the per-seed part, the shared part) of an argument under its ``in_axes`` entry."""
    if axes is None:
        return None, arg
    if isinstance(axes, int):
        return arg, None
    fields = zip(arg, axes, strict=True)  # a NamedTuple batch with per-field axes
    return (
        type(arg)(*[v if a == 0 else None for v, a in fields]),
        type(arg)(*[v if a is None else None for v, a in zip(arg, axes, strict=True)]),
    )


def _join(mapped, shared, axes):
    if axes is None:
        return shared
    if isinstance(axes, int):
        return mapped
    return type(shared)(*[m if a == 0 else s for m, s, a in zip(mapped, shared, axes, strict=True)])


# --- batches ----------------------------------------------------------------------------------


def step_keys(base_key, step):
    """The keys of one train step: (augmentation, mixing, loss, loss of the mixed-in target)."""
    return jax.random.split(jax.random.fold_in(base_key, step), 4)


class Prepared(NamedTuple):
    """A batch ready for the model."""

    images: jax.Array  # normalised (and mixed) [B, H, W, C]
    labels: jax.Array  # [B]
    mixed: augment.Mixed | None  # the mixing, None without
    loss_key: jax.Array
    loss_key_b: jax.Array  # the mixed-in target's loss key


def prepare_batch(batch, base_key, step, prep: Preprocess) -> Prepared:
    """Gathers, augments, normalises and (alpha > 0) mixes a batch."""
    k_aug, k_mix, k_loss, k_loss_b = step_keys(base_key, step)
    x, y = batch.take()
    if prep.augment != "none" and not batch.host_augmented:
        x = augment.random_crop_flip(k_aug, x, pad=4, flip=prep.augment == "crop_flip")
    x = augment.normalize(x, prep.mean, prep.std)
    kind, alpha = prep.mix
    mixed = MIXERS[kind](k_mix, x, y, alpha=alpha) if alpha > 0 else None
    return Prepared(x if mixed is None else mixed.images, y, mixed, k_loss, k_loss_b)


def batch_loss_fn(method: methods.Method, batch: Prepared, step):
    """The batch loss as a function of (logits, features), mixup-aware.

    With mixup the two targets get independent loss keys (the GCL release draws
    independent noise for them).
    """

    def loss(logits, feats, y, key):
        return method.reduce(method.loss(logits, feats, y, key, step), y, step)

    def batch_loss(logits, feats):
        if batch.mixed is None:
            return loss(logits, feats, batch.labels, batch.loss_key)
        m = batch.mixed
        la = loss(logits, feats, m.labels_a, batch.loss_key)
        lb = loss(logits, feats, m.labels_b, batch.loss_key_b)
        return m.lam * la + (1.0 - m.lam) * lb

    return batch_loss


# --- steps ------------------------------------------------------------------------------------


def make_train_step(graphdef, head_graphdef, method, tx, lr_fn, prep: Preprocess) -> Callable:
    """Stage 1, the whole network: ``(state, batch, base_key) -> (state, metrics)``."""

    def train_step(state, batch, base_key):
        step = state["step"]
        b = prepare_batch(batch, base_key, step, prep)
        batch_loss = batch_loss_fn(method, b, step)

        def objective(params):
            model = nnx.merge(graphdef, params, state["batch_stats"], copy=True)
            logits, feats = model(b.images, train=True)
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
            ga_labels = b.labels if b.mixed is None else b.mixed.labels_a
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


def make_stage2_step(graphdef, head_logits, method, tx, lr_fn, prep: Preprocess) -> Callable:
    """Stage 2: backbone frozen with BatchNorm in inference mode; only ``trainable`` learns.

    ``head_logits(frozen_head_params, trainable, feats) -> logits`` is the second-stage
    mode's classifier (``lt_jax.stage2``). Returns ``(state, frozen, batch, base_key) ->
    (state, metrics)`` with ``state = {"trainable", "opt_state", "step"}``; the frozen
    stage-1 ``{"params", "batch_stats"}`` is an argument, never updated.
    """

    def step_fn(state, frozen, batch, base_key):
        step = state["step"]
        b = prepare_batch(batch, base_key, step, prep)
        model = nnx.merge(graphdef, frozen["params"], frozen["batch_stats"], copy=True)
        feats = jax.lax.stop_gradient(model.features(b.images, train=False))
        batch_loss = batch_loss_fn(method, b, step)

        def objective(trainable):
            return batch_loss(head_logits(frozen["params"]["head"], trainable, feats), feats)

        loss, grads = jax.value_and_grad(objective)(state["trainable"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        new_state = {
            "trainable": optax.apply_updates(state["trainable"], updates),
            "opt_state": opt_state,
            "step": step + 1,
        }
        return new_state, {"loss": loss, "lr": lr_fn(step)}

    return step_fn


def make_eval_step(graphdef, mean, std) -> Callable:
    """``(params, batch_stats, batch) -> (logits, features)``, BatchNorm in inference mode."""

    def eval_step(params, batch_stats, batch):
        model = nnx.merge(graphdef, params, batch_stats)
        x, _ = batch.take()
        return model(augment.normalize(x, mean, std), train=False)

    return eval_step
