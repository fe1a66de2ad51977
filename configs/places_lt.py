r"""Places-LT: ImageNet-pretrained ResNet-152, trunk frozen, last bottleneck + classifier train.

  python -c "import numpy as np, torchvision as tv; sd = tv.models.resnet152(
      weights='IMAGENET1K_V1').state_dict();
      np.savez('r152.npz', **{k: v.numpy() for k, v in sd.items()})"
  python -m lt_jax.main --workdir /tmp/places_gcl \
    --config configs/places_lt.py:method=gcl,data_dir=/data/places365,pretrained=r152.npz

``data_dir`` is the Places-365 image root the Places_LT_{train,test}.txt lists are
relative to (365 classes, 62,500 training images, 4980..5 per class, 36,500 test).
The OLTR protocol: 30 epochs, batch 256, lr 0.01 (x0.1 every 10 epochs), GCL
kappa (noise_mul) = 1. Published (spec section 7): GCL 34.59 / 40.64 (stage 2),
MiSLAS 40.4.

Every epoch number in this file is for the 30-epoch recipe (``recipe_epochs``; the
methods' 200-epoch loss switches are moved to 30 here), stage 2's 10 epochs included;
``epochs=N`` or ``--config.epochs=N`` stretches all of them to N when the run starts
(lt_jax.config_lib.resolve). Evaluation every epochs / 5, a checkpoint every epoch.

Arguments: method, stage2, epochs, batch, seed, data_dir, lists_dir, pretrained, runlocal
(1 epoch, the recipe stretched to it; batch 16).
"""

from lt_jax import config_lib as common


def get_config(arg=None):
    a = common.parse_arg(
        arg,
        method="gcl",
        stage2="auto",
        epochs=30,
        batch=256,
        seed=0,
        data_dir="",
        lists_dir="",
        pretrained="",
        runlocal=False,
    )
    c = common.base_config()
    c.seed = a.seed
    c.dataset.name = "places_lt"
    c.dataset.data_dir = a.data_dir
    c.dataset.lists_dir = a.lists_dir
    c.dataset.augment = "none"
    c.dataset.image_size = 224
    c.model = "resnet152_places"
    c.pretrained = a.pretrained
    c.dtype = "bfloat16"
    c.method = a.method
    c.recipe_epochs = 30
    c.epochs = 1 if a.runlocal else a.epochs
    c.loss = common.loss_config(a.method, c.recipe_epochs)
    if a.method == "gcl":
        c.loss.noise_mul = 1.0
    c.batch_size = 16 if a.runlocal else a.batch
    c.lr = 0.01 * c.batch_size / 256
    c.wd = 5e-4
    c.warmup_epochs = 0
    c.lr_boundaries = (10, 20)  # x0.1 every third of the run
    c.lr_factors = (0.1, 0.01)
    c.eval_batch_size = 16 if a.runlocal else 512
    c.evals_per_run = 5
    c.eval_every_epochs = 0  # auto, max(1, epochs // evals_per_run)
    c.checkpoint_every_epochs = 1
    preset = ("gcl" if a.method == "gcl" else "none") if a.stage2 == "auto" else a.stage2
    c.stage2 = common.stage2_config(preset, epochs=10, lr=0.01, batch_size=c.batch_size)
    return c
