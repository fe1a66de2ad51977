"""Shared pieces of the command-line entry points (no flags defined here)."""

import logging
import os
import re
import sys

from absl import logging as absl_logging

USAGE = 2  # exit status of a usage error (a bad flag, config argument or setting)
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception): (.+)$")


def one_line(error) -> str:
    """The message of ``error`` as one line: the innermost ``XError: message`` line of a
    wrapped traceback (absl wraps config-file errors in one), whitespace collapsed."""
    text = str(error).strip() or type(error).__name__
    if "Failed loading config file" in text:  # ml_collections' deferred missing-file error
        tried = re.findall(r"\[Errno \d+\] ([^\n]+)", text)
        why = tried[-1] if tried else text.splitlines()[-1].strip()
        return f"cannot load the config file: {why} (give the path of a configs/*.py file)"
    if isinstance(error, AttributeError) and re.fullmatch(r"\W*'?\w+'?\W*", text):
        key = text.strip("\"' ")
        return f"the config has no key {key!r}: an --config.{key} override names a setting it lacks"
    matches = [m.group(1) for line in text.splitlines() if (m := _ERROR_LINE.match(line))]
    text = matches[-1] if matches else text
    return " ".join(text.split())[:1000]


def fail(prog: str, error, status: int = 1):
    """Exits with ``prog: error: <one line>`` on stderr."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    raise SystemExit(status)


def absl_flags_parser(prog: str):
    """An ``app.run(..., flags_parser=)`` that turns every flag or config-file mistake into
    one line and exit status 2, instead of absl's traceback."""

    def parse(argv):
        from absl import flags

        try:
            rest = flags.FLAGS(argv)
            for name in ("config",):  # force ml_collections' deferred config-file errors
                if name in flags.FLAGS and flags.FLAGS[name].present:
                    flags.FLAGS[name].value.keys()
        except Exception as e:  # noqa: BLE001 - every parse error, whatever absl raised
            fail(prog, e, USAGE)
        return rest

    return parse


def setup_logging():
    """lt_jax's progress lines on stderr; other libraries' INFO chatter (Orbax) hidden."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("lt_jax")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # Orbax's asyncio tasks report an already-reported failure (a full disk, a garbled
    # checkpoint) again as "exception was never retrieved" tracebacks at exit.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def result_rows(results):
    """Table rows: each stage's final epoch (the headline) and its best epoch, labelled."""
    rows = {}
    for stage in ("stage1", "stage2"):
        if stage in results:
            r = results[stage]
            tag = f" tau={r['final']['tau']}" if "tau" in r["final"] else ""
            seed = f" seed {r['per_seed'][0]['seed']}" if len(r.get("per_seed", ())) > 1 else ""
            tag += seed
            rows[f"{stage} final (ep {r['final'].get('epoch', '-')}){tag}"] = r["final"]
            if "epoch" in r["best_epoch"]:
                rows[f"{stage} best epoch ({r['best_epoch']['epoch']}){seed}"] = r["best_epoch"]
            agg = r.get("aggregate", {})
            if len(agg.get("seeds", ())) > 1:  # several seeds: the first one's rows, then these
                n = len(agg["seeds"])
                for part, name in (("final", "final"), ("best_epoch", "best ep.")):
                    stat = agg[part]
                    rows[f"{stage} {name} mean/{n}"] = _stat(stat, "mean", r["final"])
                    rows[f"{stage} {name} std"] = _stat(stat, "std", r["final"])
    return rows


def _stat(stat: dict, which: str, like: dict) -> dict:
    """A table row of the mean or standard deviation of each aggregated metric."""
    return {
        **{k: v[which] for k, v in stat.items()},
        "shot_convention": like.get("shot_convention", "paper"),
    }


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_all_cpu_cores(batch_sizes) -> int | None:
    """Opt-in (``LT_JAX_CPU_DEVICES=N``): N virtual XLA:CPU devices before JAX's backends start.

    The data-parallel step then shards the batch over the devices. Since the native CPU
    kernels (``lt_jax.models.native``, single device only) this is slower for the ResNets:
    ResNet-32 at batch 128 on the 2-core development machine, 593 images/s on one device
    against 388 on two (``benchmarks/throughput.py``'s scaling line); before them two
    devices added about 7% (287 -> 308). It may still help models without native kernels
    (the small CNN) on many-core hosts. Opt-in also because XLA:CPU's all-reduce
    rendezvous aborted runs (40 s termination
    timeout) when the CPU was oversubscribed: 3 of 12 default runs with 2 devices, three
    processes at a time; with ``--xla_cpu_collective_call_terminate_timeout_seconds=600``
    0 of 21 failed and none even reported a stuck thread, so that flag is added here unless
    XLA_FLAGS sets it. Only the CPU platform is affected; skipped when XLA_FLAGS already sets
    a device count. The count used is the largest one not above N that divides every batch
    size. Returns it (None: unchanged).
    """
    from jax._src import xla_bridge  # importing JAX is fine; its backends start lazily

    wanted = os.environ.get("LT_JAX_CPU_DEVICES")
    if not wanted or xla_bridge.backends_are_initialized():
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return None
    wanted = host_cores() if wanted == "all" else int(wanted)
    n = max(d for d in range(1, max(wanted, 1) + 1) if all(b % d == 0 for b in batch_sizes))
    flags = f"{flags} --xla_force_host_platform_device_count={n}"
    if "xla_cpu_collective_call_terminate_timeout_seconds" not in flags:
        flags += " --xla_cpu_collective_call_terminate_timeout_seconds=600"
    os.environ["XLA_FLAGS"] = flags.strip()
    return n


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")


def keep_host_memory() -> bool:
    """Let glibc's malloc keep freed memory, so XLA:CPU's per-step buffers reuse mapped pages.

    XLA:CPU allocates the buffers of every execution anew and frees them at its end. With
    glibc's defaults the large ones are mapped and unmapped each time (and per-thread heaps
    trimmed), so every step first-touches fresh pages: on the 2-core development machine
    78,500 page faults per ResNet-32 step of batch 128, 315 -> 272 ms per step once they
    are gone. This sets, before JAX starts its threads (best before importing JAX, which
    starts one): no mmap for large blocks, one
    malloc arena, no trimming, i.e. memory stays with the process up to its peak use (what
    the step needs anyway). Only on Linux with glibc, only for CPU-only JAX installs
    (a CUDA/ROCm/TPU plugin means the host is not where the work runs), and not when
    ``LT_JAX_KEEP_HOST_MEMORY=0``. Returns whether it was applied.
    """
    import ctypes
    import importlib.util
    import platform
    import sys

    if (
        os.environ.get("LT_JAX_KEEP_HOST_MEMORY", "1") == "0"
        or platform.system() != "Linux"
        or platform.libc_ver()[0] != "glibc"
        or any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS)
    ):
        return False
    if "jax" in sys.modules:  # else not imported yet: no JAX thread has an arena of its own
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(
        libc.mallopt(param, value) == 1
        for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))
    )
