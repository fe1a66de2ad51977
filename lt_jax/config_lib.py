"""Shared config pieces: typed ``key=value`` arguments and the per-method defaults.

Config files call ``parse_arg(arg, **defaults)`` on the text after the colon of
``--config configs/x.py:key=value,flag``; every key must be one of the defaults
(an unknown key is an error listing the valid ones), and values are converted
to the default's type.
"""

import ml_collections

from lt_jax import methods


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
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r}; valid: {', '.join(sorted(defaults))}"
            )
        out[key] = _convert(key, value.strip() if "=" in item else "", defaults[key])
    return ml_collections.ConfigDict(out)


def loss_config(method, total_epochs, reference_epochs=200):
    """The method's loss hyper-parameters, epoch switches scaled to ``total_epochs``."""
    if method not in methods.LOSS_DEFAULTS:
        raise ValueError(
            f"unknown method {method!r}; valid: {', '.join(sorted(methods.LOSS_DEFAULTS))}"
        )
    cfg = dict(methods.LOSS_DEFAULTS[method])
    for key in methods.EPOCH_KEYS:
        if key not in cfg:
            continue
        if key == "offset":  # the FBL curriculum offset may become 0
            cfg[key] = round(cfg[key] * total_epochs / reference_epochs)
        else:  # epoch switches stay >= 1
            cfg[key] = scale_epochs(cfg[key], total_epochs, reference_epochs)
    return ml_collections.ConfigDict(cfg)


def base_config():
    """Fields every config has; dataset files fill them in."""
    c = ml_collections.ConfigDict()
    c.seed = 0
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
    c.eval_every_epochs = 10
    c.log_every_steps = 50
    c.checkpoint_every_epochs = 10
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
    """Stage-2 config from a preset name (``none``, ``gcl``, ``crt``, ``lws``, ``tau_norm``)."""
    if preset not in STAGE2_PRESETS:
        raise ValueError(
            f"unknown stage2 preset {preset!r}; valid: {', '.join(sorted(STAGE2_PRESETS))}"
        )
    c = ml_collections.ConfigDict(STAGE2_PRESETS[preset])
    loss = dict(methods.LOSS_DEFAULTS[c.method])
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
    """An epoch number of a 200-epoch recipe, moved to a run of ``total_epochs``."""
    return max(1, round(value * total_epochs / reference_epochs))


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
