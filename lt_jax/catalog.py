"""One line about each method, second stage and dataset, for ``--help`` and the README.

JAX-free (``--help`` answers in a fraction of a second). ``tests/test_cli.py`` checks that
every name here is registered (``methods.METHODS``, ``config_lib.STAGE2_PRESETS``,
``stage2.MODES``, ``datasets.DATASETS``) and every registered name is here.
"""

METHODS = {
    "ce": "cross-entropy, the baseline",
    "focal": "focal loss, gamma 1 (Lin et al., ICCV 2017, arXiv:1708.02002)",
    "cb_focal": "class-balanced focal loss as Cui et al. released it: a sigmoid per class, "
    "effective-number weights, prior bias init (CVPR 2019, arXiv:1901.05555)",
    "cb_focal_softmax": "softmax focal loss with class-balanced weights (lt_jax's cb_focal "
    "before 2026-12-02)",
    "ldam_drw": "label-distribution-aware margins + deferred re-weighting "
    "(Cao et al., NeurIPS 2019, arXiv:1906.07413)",
    "balanced_softmax": "softmax with log class priors added to the logits in training "
    "(Ren et al., NeurIPS 2020, arXiv:2007.10740)",
    "logit_adjusted": "logit-adjusted loss, tau log prior (Menon et al., ICLR 2021, "
    "arXiv:2007.07314)",
    "logit_adjust_posthoc": "cross-entropy training, tau log prior subtracted at prediction "
    "(Menon et al.)",
    "kps": "key point sensitive loss, cosine head, count-dependent margins "
    "(Li, Cheung, Hu, TPAMI 2023, doi:10.1109/TPAMI.2022.3196044)",
    "kps_ga": "KPS + gradient adjustment as released (re-weighted per-class gradients "
    "from epoch 120 of 200)",
    "kps_ga_optax": "KPS + gradient adjustment as an optax transform "
    "(lt_jax.optim.gradient_adjustment)",
    "fbl": "feature-balanced loss, tail stimulus on the feature norm with a curriculum "
    "(Li, Cheung, Jiang, ICME 2022, github.com/juyongjiang/FBL)",
    "gcl": "Gaussian clouded logits, stage 1 of GCL (Li, Cheung, Lu, CVPR 2022, "
    "github.com/Keke921/GCLLoss)",
}

# Config-file ``stage2=`` presets (config_lib.STAGE2_PRESETS).
STAGE2_PRESETS = {
    "auto": "the method's own: gcl for method=gcl, else none",
    "none": "one stage only",
    "gcl": "GCL stage 2: classifier re-trained with class-balanced sampling (CBEN) "
    "and focal GCL, backbone frozen",
    "crt": "classifier re-training: fresh head, class-balanced sampling "
    "(Kang et al., ICLR 2020, arXiv:1910.09217)",
    "lws": "learnable weight scaling of the frozen head, class-balanced sampling (Kang et al.)",
    "tau_norm": "tau-normalised classifier, no training: w / |w|^tau over a grid (Kang et al.)",
}

# ``config.stage2.mode`` (stage2.MODES), what the presets set.
STAGE2_MODES = {
    "none": "no second stage",
    "retrain": "train a classifier on the frozen backbone (stage2.method, stage2.sampler)",
    "lws": "one learned scale per class on the frozen classifier",
    "tau_norm": "tau-normalisation of the classifier weights over stage2.tau_grid",
}

DATASETS = {
    "mnist_lt": "5,000 real MNIST digits shipped with the install, long-tailed (offline)",
    "cifar10_lt": "CIFAR-10-LT: the python archive or folder, an image folder, or TFDS",
    "cifar100_lt": "CIFAR-100-LT: as cifar10_lt",
    "image_folder": "your own root/{train,test}/<class>/* images (profile=none keeps "
    "the counts as they are)",
    "imagenet_lt": "ImageNet-LT from the OLTR split lists, streamed from disk",
    "places_lt": "Places-LT from the OLTR split lists, streamed from disk",
    "inat2018": "iNaturalist 2018 from its split lists, streamed from disk",
}
