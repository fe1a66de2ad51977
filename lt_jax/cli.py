"""Shared pieces of the command-line entry points (no flags defined here)."""

import logging
import os

from absl import logging as absl_logging


def setup_logging():
    """lt_jax's progress lines on stderr; other libraries' INFO chatter (Orbax) hidden."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("lt_jax")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def result_rows(results):
    """Table rows: each stage's final epoch (the headline) and its best epoch, labelled."""
    rows = {}
    for stage in ("stage1", "stage2"):
        if stage in results:
            r = results[stage]
            tag = f" tau={r['final']['tau']}" if "tau" in r["final"] else ""
            rows[f"{stage} final (ep {r['final'].get('epoch', '-')}){tag}"] = r["final"]
            if "epoch" in r["best_epoch"]:
                rows[f"{stage} best epoch ({r['best_epoch']['epoch']})"] = r["best_epoch"]
    return rows


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_all_cpu_cores(batch_sizes) -> int | None:
    """Gives XLA:CPU one virtual device per host core, before JAX's backends start.

    XLA:CPU runs a convolution on one core; with one device per core, the data-parallel
    step shards the batch over all of them. Only the CPU platform is affected (a GPU/TPU
    run ignores it). Skipped when XLA_FLAGS already sets a device count or
    LT_JAX_CPU_DEVICES is set (``LT_JAX_CPU_DEVICES=1`` turns it off). The count is the
    largest one not above the core count that divides every batch size. Returns it.
    """
    from jax._src import xla_bridge  # importing JAX is fine; its backends start lazily

    if xla_bridge.backends_are_initialized():
        return None  # too late: XLA_FLAGS was read when the backends started
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return None
    wanted = int(os.environ.get("LT_JAX_CPU_DEVICES", host_cores()))
    n = max(d for d in range(1, max(wanted, 1) + 1) if all(b % d == 0 for b in batch_sizes))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n
