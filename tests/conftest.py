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
# no test ever sees a program compiled by an earlier version of the code. The processes the
# tests start (lt_jax.main, clusters) get a fresh LT_JAX_CACHE of the session too: their
# compiled programs and the native library are built in it, as on a new machine, and the
# user's own cache is left alone. Removed when the session ends.
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from tests import run_sweep  # noqa: E402

_session = os.environ.setdefault("LT_JAX_TEST_SESSION", f"{os.getpid()}")
_caches = os.path.join(tempfile.gettempdir(), f"lt_jax_test_{_session}")
os.environ.setdefault("LT_JAX_CACHE", os.path.join(_caches, "lt_jax"))
jax.config.update("jax_compilation_cache_dir", os.path.join(_caches, "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# Session scope: kept until the worker ends, not torn down when another module's test runs in
# between. Its users carry @pytest.mark.xdist_group("sweep_root"), so one worker builds it once.
# Three runs of the default config at runlocal size, shared by the tests that need a finished
# run: CE seeds 0 and 1 (the report's mean and std; seed 0 is also copied, tests.copy_run, by
# the checkpoint tests that change a finished run) and GCL seed 1, which is also
# test_train.py's end-to-end run and test_seeds.py's single-seed run to compare seed 1 of a
# 2-seed run with.
@pytest.fixture(scope="session")
def sweep_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    run_sweep(root, "ce", "0,1")
    run_sweep(root, "gcl", "1")
    return root


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller, after its workers
        shutil.rmtree(_caches, ignore_errors=True)
