"""lt_jax: long-tailed visual recognition in JAX/Flax NNX."""

import setuptools

# One pinned stack, known to work together (see README "Install").
INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "jaxlib>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "chex>=0.1.90",
    "ml-collections>=1.0",
    "orbax-checkpoint>=0.11",
    "numpy>=1.26",
    "absl-py>=2.0",
    # JAX's persistent compilation cache evicts (and locks) with it (lt_jax.cli).
    "filelock>=3.12",
    "pillow>=10",  # image-folder datasets
    "grain>=0.2.12,<0.3",  # streamed input (ImageNet-LT, Places-LT, iNaturalist), no TensorFlow
    "matplotlib>=3.8",  # lt_jax.report figures
]

EXTRAS_REQUIRE = {
    "test": [
        # The lockstep test runs the releases' recipe in PyTorch (the CPU build on this
        # project's machines; a GPU box may take its own build).
        "torch==2.13.0",
        # pytest 9.2 keeps node ids where pytest-xdist 3.8's --dist loadgroup cannot mark
        # them, so the xdist_group tests scatter and their shared fixtures are built on
        # every worker (pytest-dev/pytest-xdist#1386, open).
        "pytest>=8,<9.2",
        "pytest-xdist>=3",
        "hypothesis>=6",
        "ruff>=0.6",
        # Reads the TensorBoard event files lt_jax.events writes, as an independent check.
        "tensorboardX>=2.6",
    ],
    # Benchmarks compare against the same network written in PyTorch (CPU build).
    "bench": ["torch==2.13.0"],
    # Remote datasets (CIFAR via TFDS, ImageNet-LT/iNat/Places through TFDS).
    # tfds needs importlib_resources but does not declare it on Python 3.11.
    "tfds": ["tensorflow-datasets>=4.9,<4.10", "importlib_resources"],
    # The `tensorboard` command, to view the event files a run writes (lt_jax.events).
    "tensorboard": ["tensorboard>=2.20"],
    "cuda": ["jax[cuda12]>=0.10,<0.11"],
    "tpu": ["jax[tpu]>=0.10,<0.11"],
}

setuptools.setup(
    name="lt_jax",
    version="0.1.0",
    description="Long-tailed visual recognition in JAX: KPS+GA, FBL, GCL+CBEN and baselines.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["lt_jax", "lt_jax.*"]),
    package_data={
        # The native CPU convolution's source, compiled for the host on first use.
        "lt_jax": ["csrc/*.cc"],
        # The offline default dataset's 5,000 real MNIST digits, and their source and licence.
        "lt_jax.data": ["mnist_5k.npz", "MNIST_5K_NOTICE.md"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
