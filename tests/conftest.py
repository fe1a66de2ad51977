"""Test setup: 8 virtual CPU devices so mesh / data-parallel code runs on CPU CI."""

import os

# Must happen before JAX initialises its backends. A user-provided XLA_FLAGS wins.
# The tests train tiny models for a few steps, so their time is mostly XLA compiling:
# LLVM's optimisation level 0 halves it (the programs compute the same values; the
# suite checks values, benchmarks/ the speed). Subprocesses the tests start inherit it.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
)
# The native CPU kernels are checked on every host, also where lt_jax leaves them off by
# default for speed (x86 without AVX-512).
os.environ.setdefault("LT_JAX_NATIVE", "1")

# One persistent compilation cache for the session, shared by the xdist workers: the many
# tests that train the same tiny configs compile each program once (lt_jax.main does the
# same for its runs, lt_jax.cli.enable_compilation_cache). A fresh folder per session, so
# no test ever sees a program compiled by an earlier version of the code.
import tempfile  # noqa: E402

import jax  # noqa: E402

_session = os.environ.setdefault("LT_JAX_TEST_SESSION", f"{os.getpid()}")
jax.config.update(
    "jax_compilation_cache_dir",
    os.path.join(tempfile.gettempdir(), f"lt_jax_test_xla_cache_{_session}"),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
