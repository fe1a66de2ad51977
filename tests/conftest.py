"""Test setup: 8 virtual CPU devices so mesh / data-parallel code runs on CPU CI."""

import os

# Must happen before JAX initialises its backends. A user-provided XLA_FLAGS wins.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
