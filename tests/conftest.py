"""Test setup: 8 virtual CPU devices so mesh / data-parallel code runs on CPU CI."""

import os

# Must happen before JAX initialises its backends. A user-provided XLA_FLAGS wins.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The native CPU kernels are checked on every host, also where lt_jax leaves them off by
# default for speed (x86 without AVX-512).
os.environ.setdefault("LT_JAX_NATIVE", "1")
