"""Shared config pieces: typed ``key=value`` arguments, per-method defaults, ``resolve``.

Config files call ``parse_arg(arg, **defaults)`` on the text after the colon of
``--config configs/x.py:key=value,flag``; every key must be one of the defaults
(an unknown key is an error listing the valid ones), and values are converted
to the default's type.

Epoch numbers in a config are written for a recipe of ``recipe_epochs`` epochs and
stretched to ``epochs`` by ``resolve``, which the trainer calls once when a run starts:
``configs/x.py:epochs=5`` and ``--config.epochs=5`` (set after ``get_config``) are then
one run. Config files import this module only, never JAX, so reading one is cheap.
"""

import copy
import difflib
import threading
from collections.abc import Iterable, Mapping

import ml_collections

# Per-method loss hyper-parameters (spec defaults, CIFAR recipes), with the epoch-valued
# entries (EPOCH_KEYS) written for a LOSS_DEFAULTS_EPOCHS-epoch run. They live here, not
# in lt_jax.methods, so that config files can use them without importing JAX.
LOSS_DEFAULTS = {
    "ce": {},
    "focal": {"gamma": 1.0},
    # form: "sigmoid" (Cui et al.'s release) or "softmax". A cb_focal workdir from before
    # 2026-12-02 (softmax, no form key) differs in ``loss``, so it is refused, not resumed
    # with the other loss.
    "cb_focal": {"gamma": 1.0, "beta": 0.9999, "form": "sigmoid"},
    "cb_focal_softmax": {"gamma": 1.0, "beta": 0.9999, "form": "softmax"},
    "ldam_drw": {"max_m": 0.5, "s": 30.0, "beta": 0.9999, "drw_epoch": 160},
    "balanced_softmax": {},
    "logit_adjusted": {"tau": 1.0},
    "logit_adjust_posthoc": {"tau": 1.0},
    "kps": {"s": 15.0, "max_m": 0.2, "margin": "closed_form"},
    "kps_ga": {"s": 15.0, "max_m": 0.2, "margin": "closed_form", "ga_epoch": 120},
    "kps_ga_optax": {"s": 15.0, "max_m": 0.2, "margin": "closed_form", "ga_epoch": 120},
    "fbl": {"lam": 60.0, "total_epochs": 200, "offset": 10, "clamp": False},
    "gcl": {"s": 30.0, "m": 0.0, "noise_mul": 0.5, "focal_gamma": 0.0},
}
EPOCH_KEYS = ("drw_epoch", "ga_epoch", "total_epochs", "offset")
LOSS_DEFAULTS_EPOCHS = 200

# Config keys added after runs were first written, with the value that reproduces those runs:
# ``resolve`` fills them in when a config (an older workdir's config.json) lacks them.
COMPAT_DEFAULTS = {
    "kernels": "auto",
    "drop_last": True,
    "dataset.split_protocol": "per_class",
    "dataset.allow_constant_images": False,
    "num_seeds": 1,
}

# Intervals whose 0 means "auto": max(1, epochs // evals_per_run).
INTERVAL_KEYS = ("eval_every_epochs", "checkpoint_every_epochs")
# Keys that only tell ``resolve`` how to scale; the resolved config has none of them.
HELPER_KEYS = ("recipe_epochs", "evals_per_run")


def unknown(what: str, value, valid: Iterable) -> ValueError:
    """The one-line error for an unknown name: the close matches first, then every valid one.

    ``unknown("method", "gcll", METHODS)`` -> ``unknown method 'gcll' (did you mean 'gcl'?);
    valid: ...``.
    """
    valid = [str(v) for v in valid]  # in the caller's order
    close = difflib.get_close_matches(str(value), valid, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return ValueError(f"unknown {what} {value!r}{hint}; valid: {', '.join(valid)}")


_capture = threading.local()


class _Arguments(Exception):
    """Raised by ``parse_arg`` inside :func:`config_arguments` to hand its defaults out."""

    def __init__(self, defaults):
        super().__init__("config arguments")
        self.defaults = defaults


def config_arguments(get_config) -> dict:
    """The ``key=value`` arguments a config file's ``get_config`` takes, with their defaults
    (what ``parse_arg`` was given); empty when it takes none."""
    _capture.on = True
    try:
        get_config("")
    except _Arguments as e:
        return dict(e.defaults)
    finally:
        _capture.on = False
    return {}


def _convert(key, text, default):
    if isinstance(default, bool):
        if text.lower() in ("", "1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"config argument {key}={text!r} is not a boolean")
    try:
        return type(default)(text) if default is not None else text
    except ValueError:
        raise ValueError(
            f"config argument {key}={text!r} is not a {type(default).__name__}"
        ) from None


def parse_arg(arg, **defaults):
    """Parses ``"a=1,b=x,flag"`` into a ConfigDict of ``defaults`` updated and typed."""
    if getattr(_capture, "on", False):
        raise _Arguments(defaults)
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise unknown("config argument", key, sorted(defaults))
        out[key] = _convert(key, value.strip() if "=" in item else "", defaults[key])
    return ml_collections.ConfigDict(out)


def loss_config(method, total_epochs, reference_epochs=LOSS_DEFAULTS_EPOCHS):
    """The method's loss hyper-parameters, epoch switches scaled to ``total_epochs``.

    Config files pass their ``recipe_epochs``, so the loss's epoch switches are in recipe
    units like every other epoch number; ``resolve`` then stretches them to the run's
    ``epochs`` with the rest (a second rounding when the recipe is not 200 epochs long).
    """
    if method not in LOSS_DEFAULTS:
        raise unknown("method", method, sorted(LOSS_DEFAULTS))
    loss = _scale_loss(LOSS_DEFAULTS[method], total_epochs, reference_epochs)
    return ml_collections.ConfigDict(loss)


def _scale_loss(loss, epochs, written_for):
    """``loss`` (a dict) with its EPOCH_KEYS moved from a ``written_for``-epoch run."""
    out = dict(loss)
    for key in EPOCH_KEYS:
        if key not in out:
            continue
        if key == "offset":  # the FBL curriculum offset may become 0
            out[key] = round(out[key] * epochs / written_for)
        else:  # epoch switches stay >= 1 (0, from the start, stays 0)
            out[key] = scale_epochs(out[key], epochs, written_for)
    return out


def base_config():
    """Fields every config has; dataset files fill them in."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Seeds seed, seed + 1, ..., seed + num_seeds - 1 trained together by one vmapped step
    # (streamed datasets decode each seed's batch): per-seed results, mean / sample std.
    c.num_seeds = 1
    c.dataset = ml_collections.ConfigDict(
        dict(
            name="mnist_lt",
            data_dir="",
            imb_factor=100.0,
            profile="exp",
            n_max=0,  # 0: the dataset's own (400 MNIST, 5000 CIFAR-10, 500 CIFAR-100)
            split_seed=0,
            # How the LT subset is drawn: release (the LDAM-DRW generator the KPS, FBL and
            # GCL releases use; CIFAR-LT's default) | per_class (one RNG per class).
            split_protocol="per_class",
            allow_constant_images=False,  # refuse blanked/corrupt training images
            augment="crop",  # crop | crop_flip | none (in-memory datasets, on the device)
            lists_dir="",  # local folder with the split lists (streamed datasets)
            sort_classes=False,  # re-index so class 0 is the most frequent
            image_size=224,  # streamed datasets: crop size
        )
    )
    c.model = "small_cnn"
    c.method = "ce"
    c.loss = ml_collections.ConfigDict()
    c.sampler = "instance"
    c.batch_size = 64
    c.eval_batch_size = 500
    # Keep each epoch's last partial batch, as the releases' DataLoader(drop_last=False)
    # does (in-memory datasets; streamed ones always drop it).
    c.drop_last = False
    c.epochs = 200
    # > 0: every epoch number in the config (warm-up, lr boundaries, the loss's epoch
    # switches, stage2.epochs) is written for a recipe of this many epochs and stretched to
    # ``epochs`` by ``resolve``; 0: they are absolute.
    c.recipe_epochs = 0
    c.lr = 0.1
    c.momentum = 0.9
    c.wd = 2e-4
    c.schedule = "step"  # step | cosine
    c.warmup_epochs = 5
    c.lr_boundaries = (160, 180)
    c.lr_factors = (0.1, 0.01)
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0  # CutMix instead of mixup when > 0
    c.dtype = "float32"  # or "bfloat16": trunk compute in bf16, head/losses/BN stats in f32
    # auto: lt_jax.models.kernels' CPU fixes on the CPU backend, plain XLA elsewhere;
    # xla: the plain XLA program everywhere (cpu: the CPU fixes everywhere, for tests).
    c.kernels = "auto"
    c.pretrained = ""  # torchvision state_dict as .npz for the trunk (Places-LT ResNet-152)
    c.ga = ml_collections.ConfigDict(dict(alpha=1.0, r_min=0.1, decay=1.0))
    c.shot_convention = "paper"
    # Intervals in epochs, used as given; 0: auto, max(1, epochs // evals_per_run).
    c.eval_every_epochs = 10
    c.log_every_steps = 50
    c.checkpoint_every_epochs = 10
    c.evals_per_run = 0
    c.stage2 = stage2_config("none", epochs=30)
    return c


# Second-stage presets (classifier re-training on the frozen stage-1 backbone).
STAGE2_PRESETS = {
    "none": dict(mode="none", method="ce", sampler="instance", reinit_head=False),
    # GCL stage 2 (spec section 5): CBEN sampling, focal-modulated clouded logits.
    "gcl": dict(mode="retrain", method="gcl", sampler="cben", reinit_head=False),
    # cRT (Kang et al. 2020): re-initialised classifier, class-balanced sampling.
    "crt": dict(mode="retrain", method="ce", sampler="class_balanced", reinit_head=True),
    # LWS: one learnable scale per class, class-balanced sampling.
    "lws": dict(mode="lws", method="ce", sampler="class_balanced", reinit_head=False),
    # tau-norm: no training, w_j / |w_j|^tau over a grid.
    "tau_norm": dict(mode="tau_norm", method="ce", sampler="instance", reinit_head=False),
}


def stage2_config(preset, *, epochs, lr=0.002, batch_size=64, mixup_alpha=0.0):
    """Stage-2 config from a preset name (``none``, ``gcl``, ``crt``, ``lws``, ``tau_norm``).

    Its epoch numbers (warm-up, lr boundaries, the loss's epoch switches) are written for
    the ``epochs`` given; ``resolve`` stretches them with ``stage2.epochs``.
    """
    if preset not in STAGE2_PRESETS:
        raise unknown("stage2 preset", preset, sorted(STAGE2_PRESETS))
    c = ml_collections.ConfigDict(STAGE2_PRESETS[preset])
    loss = loss_config(c.method, epochs).to_dict()
    if preset == "gcl":
        loss.update(s=20.0, m=0.1, focal_gamma=1.0)  # spec section 5, stage 2 (CIFAR)
    c.loss = ml_collections.ConfigDict(loss)
    c.epochs = epochs
    c.batch_size = batch_size
    c.lr = lr
    c.schedule = "cosine"
    c.warmup_epochs = 0
    c.lr_boundaries = ()
    c.lr_factors = ()
    c.momentum = 0.9
    c.wd = 2e-4
    c.mixup_alpha = mixup_alpha
    c.cutmix_alpha = 0.0
    c.tau_grid = tuple(round(0.1 * i, 1) for i in range(21))
    return c


def scale_epochs(value, total_epochs, reference_epochs=200):
    """An epoch number of a ``reference_epochs`` recipe, moved to a run of ``total_epochs``.

    Rounded (half to even), and at least 1 so that a short run never pulls a switch or a
    decay onto epoch 0; 0 (no warm-up, a switch from the start) stays 0.
    """
    if value == 0:
        return 0
    return max(1, round(value * total_epochs / reference_epochs))


def resolve(config) -> ml_collections.ConfigDict:
    """The config a run uses: completed, stretched to ``epochs``, auto intervals filled in.

    Pure and idempotent (the input is not changed; a resolved config resolves to itself),
    and the result has exactly the keys the trainer saved in config.json before
    ``recipe_epochs`` / ``evals_per_run`` existed, so older workdirs keep matching.
    ``config`` is a ConfigDict or a config.json-like dict.
    """
    d = _completed(config)
    recipe_epochs, evals_per_run = (d.pop(k) for k in HELPER_KEYS)
    if recipe_epochs > 0:
        _stretch(d, recipe_epochs)
    for key in INTERVAL_KEYS:
        if d[key] == 0:
            d[key] = _auto_interval(key, d["epochs"], evals_per_run)
    return ml_collections.ConfigDict(d)


def _completed(config) -> dict:
    """A deep copy of ``config`` as plain dicts, with every key of ``base_config()`` it lacks
    (a config.json written before the key existed) filled in: COMPAT_DEFAULTS' value where
    there is one (what those runs did), ``base_config()``'s otherwise."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    d = copy.deepcopy(dict(config))
    _fill(d, base_config().to_dict(), prefix="")
    return d


def _fill(d, base, prefix):
    """Fills ``d`` in place from ``base``, recursing into sub-configs both have."""
    for key, value in base.items():
        if key not in d:
            d[key] = copy.deepcopy(COMPAT_DEFAULTS.get(prefix + key, value))
        elif isinstance(value, dict) and isinstance(d[key], Mapping):
            d[key] = dict(d[key])
            _fill(d[key], value, prefix=f"{prefix}{key}.")


def _stretch(d, recipe_epochs):
    """Moves stage 1's and stage 2's epoch numbers from the recipe to ``d["epochs"]``.

    Stage 2's own numbers are written for its length as written, so they follow
    ``stage2.epochs`` after it is stretched.
    """
    _stretch_stage(d, d["epochs"], recipe_epochs)
    s2 = d["stage2"]
    written = s2["epochs"]
    s2["epochs"] = scale_epochs(written, d["epochs"], recipe_epochs)
    if written > 0:
        _stretch_stage(s2, s2["epochs"], written)


def _stretch_stage(stage, epochs, written_for):
    """One stage's warm-up, lr boundaries and loss epoch switches, moved to ``epochs``."""
    stage["warmup_epochs"] = scale_epochs(stage["warmup_epochs"], epochs, written_for)
    stage["lr_boundaries"] = tuple(
        scale_epochs(b, epochs, written_for) for b in stage["lr_boundaries"]
    )
    stage["loss"] = _scale_loss(stage["loss"], epochs, written_for)


def _auto_interval(key, epochs, evals_per_run):
    """``max(1, epochs // evals_per_run)``: about ``evals_per_run`` evaluations whatever
    the run length."""
    if evals_per_run <= 0:
        raise ValueError(
            f"config.{key}=0 (auto) needs config.evals_per_run > 0; "
            f"set --config.evals_per_run=N or --config.{key}=N"
        )
    return max(1, epochs // evals_per_run)


# CIFAR-LT recipes of the spec (sections 2-5): batch size, lr decay epochs and factors,
# mixup. Boundaries are 0-based epochs: the releases' adjust_learning_rate does
# `epoch = epoch + 1` before `elif epoch > 160`, so the first decayed epoch is 0-based 160
# (its 161st), the same epoch as GCL's `epoch >= 160` and the DRW switch `epoch // 160`.
CIFAR_RECIPES = {
    "kps": dict(batch_size=64, lr_boundaries=(160, 180), lr_factors=(0.1, 0.01)),
    "fbl": dict(batch_size=64, lr_boundaries=(160, 180), lr_factors=(0.01, 0.0001)),
    "gcl": dict(batch_size=64, lr_boundaries=(160, 180), lr_factors=(0.1, 0.01), mixup_alpha=1.0),
    # The LDAM-DRW release (and the baselines run with its code): batch 128.
    "baseline": dict(batch_size=128, lr_boundaries=(160, 180), lr_factors=(0.01, 0.0001)),
}


def cifar_recipe(method):
    if method.startswith("kps"):
        return CIFAR_RECIPES["kps"]
    return CIFAR_RECIPES.get(method, CIFAR_RECIPES["baseline"])
