r"""CIFAR-10-LT / CIFAR-100-LT with ResNet-32: every method of the spec, 200-epoch recipes.

  python -m lt_jax.main --workdir /tmp/c10_fbl \
    --config configs/cifar_lt.py:method=fbl,data_dir=/data/cifar-10-batches-py
  python -m lt_jax.main --workdir /tmp/c100_gcl \
    --config configs/cifar_lt.py:dataset=cifar100,method=gcl,data_dir=/data/cifar-100-python

Data: ``data_dir`` is the CIFAR python archive (cifar-10-python.tar.gz /
cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), its
extracted folder, or an image folder ``root/{train,test}/<class>/*``; left empty
(or ``tfds`` / ``tfds:/path``) it reads TensorFlow Datasets' cifar10 / cifar100
(the [tfds] extra, network on first use). Use lossless pixels for accuracy results:
a JPEG copy costs points (CE, 40 epochs, seed 0: 59.08 on JPEG q75 vs 63.92 lossless,
issue 12's measurement at b1792e9).

The LT subset keeps n_i = int(n_max * (1/IF)^(i/(C-1))) images of class i (CIFAR-10 IF
100: [5000, 2997, ..., 50], 12,406 images). ``split_protocol=release`` (the default) draws
them exactly as the KPS, FBL and GCL releases do (the LDAM-DRW generator: NumPy's legacy
RNG seeded once with ``split_seed``, one shuffle per class in class order); the release
seeds are 0 (LDAM-DRW, FBL, GCL) and 666 (KPS), the default ``split_seed=-1`` picks the
method's. ``split_protocol=per_class`` seeds each class on its own (lt_jax's earlier split).

Recipes (spec sections 2-5), all SGD 0.9, wd 2e-4 on every parameter (cb_focal: all but the
head bias, as Cui et al.), lr 0.1, linear
warm-up over epochs 0-4 (0-based), decays from 0-based epochs 160 and 180 (the releases'
``epoch + 1 > 160``), each epoch's last partial batch kept:
  kps / kps_ga / kps_ga_optax: batch 64, x0.1 / x0.01, GA from 120;
  fbl: batch 64, x0.01 / x0.0001, lam 60, t = (e / 190)^2;
  gcl: batch 64, x0.1 / x0.01, mixup 1; stage 2: 30 epochs, CBEN,
       cosine lr from 0.002, mixup 1, focal GCL with s=20, m=0.1;
  ce / focal / cb_focal(_softmax) / ldam_drw / balanced_softmax / logit_adjusted(_posthoc):
       batch 128, x0.01 / x0.0001 (LDAM-DRW release; DRW from 160, weighted mean;
       the CB focal release uses the same schedule, beta 0.9999, gamma 1).
Published top-1 on CIFAR-10-LT IF 100 (spec section 7, best test epoch): FBL 82.46,
LDAM-DRW 77.03, CB focal 74.57.

Every epoch number in this file is for the 200-epoch recipe (``recipe_epochs``);
``epochs=N`` here or ``--config.epochs=N`` after it stretches all of them (warm-up, lr
decays, DRW / GA starts, the FBL curriculum, stage 2's length) to N when the run starts
(lt_jax.config_lib.resolve): both spellings give one run.

Arguments: dataset (cifar10|cifar100), imb, profile (exp|step), method, stage2
(auto|none|gcl|crt|lws|tau_norm), epochs, seed, split_protocol (release|per_class),
split_seed (-1: the method's release seed), eval_every (epochs between test
evaluations, not stretched; 0: epochs / 20; 1 gives the papers' best-epoch number),
data_dir, runlocal (2 epochs, stage 2 stretched to 1).
"""

from lt_jax import config_lib as common


def get_config(arg=None):
    a = common.parse_arg(
        arg,
        dataset="cifar10",
        imb=100.0,
        profile="exp",
        method="gcl",
        stage2="auto",
        epochs=200,
        seed=0,
        split_protocol="release",
        split_seed=-1,
        eval_every=0,
        data_dir="",
        runlocal=False,
    )
    if a.dataset not in ("cifar10", "cifar100"):
        raise common.unknown("dataset", a.dataset, ("cifar10", "cifar100"))
    c = common.base_config()
    c.seed = a.seed
    c.dataset.name = f"{a.dataset}_lt"
    c.dataset.data_dir = a.data_dir
    c.dataset.imb_factor = a.imb
    c.dataset.profile = a.profile
    c.dataset.split_protocol = a.split_protocol
    # The releases' split seeds: KPS 666, the others (LDAM-DRW, FBL, GCL) 0.
    release_seed = 666 if a.method.startswith("kps") else 0
    c.dataset.split_seed = release_seed if a.split_seed < 0 else a.split_seed
    c.dataset.augment = "crop_flip"
    c.model = "resnet32"
    c.method = a.method
    c.recipe_epochs = 200
    c.epochs = 2 if a.runlocal else a.epochs
    c.loss = common.loss_config(a.method, c.recipe_epochs)
    recipe = common.cifar_recipe(a.method)
    c.batch_size = recipe["batch_size"]
    c.mixup_alpha = recipe.get("mixup_alpha", 0.0)
    c.lr = 0.1
    c.warmup_epochs = 5
    c.lr_boundaries = recipe["lr_boundaries"]
    c.lr_factors = recipe["lr_factors"]
    c.evals_per_run = 20
    c.eval_every_epochs = a.eval_every  # 0: auto, max(1, epochs // evals_per_run)
    c.checkpoint_every_epochs = 0  # auto
    c.log_every_steps = 100
    preset = ("gcl" if a.method == "gcl" else "none") if a.stage2 == "auto" else a.stage2
    c.stage2 = common.stage2_config(
        preset,
        epochs=30,
        lr=0.002,
        batch_size=64,
        mixup_alpha=1.0 if preset == "gcl" else 0.0,
    )
    return c
