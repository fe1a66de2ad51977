r"""ImageNet-LT and iNaturalist 2018 with ResNet-50 / ResNeXt-50, streamed from disk.

  python -m lt_jax.main --workdir /mnt/runs/inlt_fbl \
    --config configs/imagenet_lt.py:dataset=imagenet_lt,method=fbl,data_dir=/data/imagenet
  python -m lt_jax.main --workdir /tmp/inat_gcl \
    --config configs/imagenet_lt.py:dataset=inat2018,method=gcl,data_dir=/data/inat2018

``data_dir`` is the image root the standard split lists are relative to
(ImageNet_LT_{train,test}.txt: train/n01440764/...; iNaturalist18_{train,val}.txt:
train_val2018/...). The lists come from ``lists_dir`` if given, else from the
cache or their public location (lt_jax.data.splits). ImageNet-LT: 1000 classes,
115,846 training images (1280..5 per class), evaluated on the 50,000-image test
list; iNaturalist 2018: 8142 classes, 437,513 images, evaluated on val.

Recipe (spec section 4, FBL on ImageNet-LT / iNat): batch 512, lr 0.2, SGD 0.9,
wd 5e-4, x0.1 at 120 and 160 of 200 epochs (lr scales with batch/512), lam 150;
random-resized-crop 224 + flip, test resize 256 / centre crop 224. Published
top-1 (spec section 7): ImageNet-LT R50 GCL 52.93 / 54.88 (stage 2), iNat R50
GCL 70.33 / 72.01, MiSLAS 52.7 / 71.6. Runs on a TPU pod or GPU box
(launch/); a 200-epoch ImageNet-LT run is about 23M images.

Every epoch number in this file is for the 200-epoch recipe (``recipe_epochs``), stage
2's 10 epochs included; ``epochs=N`` or ``--config.epochs=N`` stretches all of them to N
when the run starts (lt_jax.config_lib.resolve). Evaluation every epochs / 10, a
checkpoint every epoch.

Arguments: dataset (imagenet_lt|inat2018), model (resnet50|resnext50_32x4d),
method, stage2, epochs, batch, seed, data_dir, lists_dir, bf16, runlocal (1 + 1 epochs).
"""

from lt_jax import config_lib as common


def get_config(arg=None):
    a = common.parse_arg(
        arg,
        dataset="imagenet_lt",
        model="resnet50",
        method="fbl",
        stage2="auto",
        epochs=200,
        batch=512,
        seed=0,
        data_dir="",
        lists_dir="",
        bf16=True,
        runlocal=False,
    )
    if a.dataset not in ("imagenet_lt", "inat2018"):
        raise common.unknown("dataset", a.dataset, ("imagenet_lt", "inat2018"))
    c = common.base_config()
    c.seed = a.seed
    c.dataset.name = a.dataset
    c.dataset.data_dir = a.data_dir
    c.dataset.lists_dir = a.lists_dir
    c.dataset.augment = "none"  # random-resized-crop + flip happen in the Grain workers
    c.dataset.image_size = 224
    c.model = a.model
    c.dtype = "bfloat16" if a.bf16 else "float32"
    c.method = a.method
    c.recipe_epochs = 200
    c.epochs = 1 if a.runlocal else a.epochs
    c.loss = common.loss_config(a.method, c.recipe_epochs)
    if a.method == "fbl":
        c.loss.lam = 150.0
    if a.method == "gcl":
        c.loss.noise_mul = 0.5
    c.batch_size = 16 if a.runlocal else a.batch
    c.lr = 0.2 * c.batch_size / 512
    c.wd = 5e-4
    c.warmup_epochs = 5
    c.lr_boundaries = (120, 160)
    c.lr_factors = (0.1, 0.01)
    c.eval_batch_size = 16 if a.runlocal else 1024
    c.evals_per_run = 10
    c.eval_every_epochs = 0  # auto, max(1, epochs // evals_per_run)
    c.checkpoint_every_epochs = 1
    c.log_every_steps = 100
    preset = ("gcl" if a.method == "gcl" else "none") if a.stage2 == "auto" else a.stage2
    c.stage2 = common.stage2_config(
        preset,
        epochs=10,
        lr=0.05 * c.batch_size / 512,
        batch_size=c.batch_size,
    )
    if preset == "gcl":
        c.stage2.loss.s, c.stage2.loss.m = 30.0, 0.0  # ImageNet-LT stage 2 (release)
    return c
