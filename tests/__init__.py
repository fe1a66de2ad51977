"""lt_jax's tests."""

import os
import shutil


def xla_flags(devices: int, *, fast_compile: bool = False) -> str:
    """``XLA_FLAGS`` for a test's subprocess: ``devices`` virtual CPU devices, at XLA's
    default optimisation unless ``fast_compile`` (LLVM level 0, as the test processes
    themselves compile: conftest.py). A subprocess that trains several steps runs faster
    optimised, and the persistent compilation cache of the session spares the processes
    after the first most of the compiling: measured on the 2-core machine, a 2-device,
    8-step ``runlocal`` run took 20.2 s (cold cache) / 14.4 s (warm) at level 0 and 16.4 s
    / 8.6 s optimised (2026-12-02)."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return f"{flags} --xla_backend_optimization_level=0" if fast_compile else flags


def run_sweep(root, methods, seeds):
    """``lt_jax.sweep`` in this process: ``configs/default.py:runlocal``, ``methods`` x ``seeds``
    under ``root``."""
    from lt_jax import sweep  # here: this package is imported before conftest.py sets XLA_FLAGS

    config = os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")
    sweep.main(
        ["--config", config, "--root", str(root), "--methods", methods, "--seeds", seeds]
        + ["--args", "runlocal"]
    )


def copy_run(sweep_root, name, dest):
    """A copy of the shared sweep run ``name`` (conftest.py's ``sweep_root``) at ``dest``, for a
    test that changes a finished run's workdir; returns ``dest``."""
    shutil.copytree(os.path.join(sweep_root, name), dest)
    return dest
