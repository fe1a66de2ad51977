r"""The offline default: MNIST-LT (IF 100, real digits shipped with the install), GCL.

  python -m lt_jax.main --config configs/default.py --workdir /tmp/lt_jax_default
  python -m lt_jax.main --config configs/default.py:method=ce --workdir /tmp/lt_jax_ce

Data: the 5,000 MNIST digits shipped in lt_jax (lt_jax/data/mnist_5k.npz), 100 per
class held out as the balanced test set, the exponential profile with IF 100 on the
remaining 400 per class: train counts [400, 239, 143, 86, 51, 30, 18, 11, 6, 4] (988 images).
Model: a small CNN, 30 epochs, batch 64, SGD 0.9, lr 0.05 with 2 warm-up epochs
and x0.1 / x0.01 at epochs 24 / 27. Runs in about 1.5 minutes on a 2-core CPU and
prints the many / medium / few table. With method=gcl (default) a second stage
re-trains the cosine classifier on the frozen backbone for 6 epochs with
CBEN sampling (focal GCL, s=20, m=0.1, cosine lr from 0.01). Arguments: method
(any of lt_jax.methods.METHODS), stage2 (auto|none|gcl|crt|lws|tau_norm),
epochs, seed, imb, runlocal (2 + 1 epochs without the partial last batch, so each
train step compiles once: for tests and smoke runs).

Every epoch number in this file is for the 30-epoch recipe (``recipe_epochs``; the
methods' 200-epoch loss switches are moved to 30 here); ``epochs=N`` or
``--config.epochs=N`` stretches all of them to N when the run starts
(lt_jax.config_lib.resolve), and evaluations / checkpoints come every epochs / 3.
"""

from lt_jax import config_lib as common


def get_config(arg=None):
    a = common.parse_arg(
        arg, method="gcl", stage2="auto", epochs=30, seed=0, imb=100.0, runlocal=False
    )
    c = common.base_config()
    c.seed = a.seed
    c.dataset.name = "mnist_lt"
    c.dataset.imb_factor = a.imb
    c.dataset.augment = "crop"  # no flips for digits
    c.model = "small_cnn"
    c.method = a.method
    c.recipe_epochs = 30
    c.epochs = 2 if a.runlocal else a.epochs
    c.drop_last = a.runlocal  # runlocal: one batch shape, one compile per train step
    c.loss = common.loss_config(a.method, c.recipe_epochs)
    c.batch_size = 64
    c.lr = 0.05
    c.warmup_epochs = 2
    c.lr_boundaries = (24, 27)
    c.evals_per_run = 3
    c.eval_every_epochs = 0  # auto, max(1, epochs // evals_per_run)
    c.checkpoint_every_epochs = 0
    c.log_every_steps = 50
    # Two-stage GCL by default (stage 2 with CBEN); stage2=crt|lws|tau_norm|none for others.
    preset = ("gcl" if a.method == "gcl" else "none") if a.stage2 == "auto" else a.stage2
    c.stage2 = common.stage2_config(preset, epochs=6, lr=0.01, batch_size=64)
    return c
