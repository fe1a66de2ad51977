"""lt_jax's tests."""


def xla_flags(devices: int, *, fast_compile: bool = True) -> str:
    """``XLA_FLAGS`` for a test's subprocess: ``devices`` virtual CPU devices, compiled at
    LLVM's optimisation level 0 as in conftest.py (tiny programs: compiling dominates)
    unless not ``fast_compile``."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return f"{flags} --xla_backend_optimization_level=0" if fast_compile else flags
