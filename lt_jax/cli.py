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


def absl_flags_parser(prog: str, help_text=None):
    """An ``app.run(..., flags_parser=)`` that turns every flag or config-file mistake into
    one line and exit status 2, instead of absl's traceback. ``--help`` / ``-h`` prints
    ``help_text(argv)`` (when given) and exits 0."""

    def parse(argv):
        from absl import flags

        if help_text and any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:]):
            try:
                print(help_text(argv))
            except Exception as e:  # noqa: BLE001 - a broken --config named with --help
                fail(prog, e, USAGE)
            raise SystemExit(0)
        try:
            check_overrides(argv)
            rest = flags.FLAGS(argv)
            for name in ("config",):  # force ml_collections' deferred config-file errors
                if name in flags.FLAGS and flags.FLAGS[name].present:
                    flags.FLAGS[name].value.keys()
        except Exception as e:  # noqa: BLE001 - every parse error, whatever absl raised
            fail(prog, e, USAGE)
        return rest

    return parse


def config_spec(argv) -> tuple[str, str] | None:
    """(path, argument) of the ``--config path[:argument]`` in ``argv``, if there is one."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            spec = a.removeprefix("--config=")
        elif a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        else:
            continue
        return split_config_spec(spec)
    return None


def split_config_spec(spec: str) -> tuple[str, str]:
    """``configs/x.py:a=1,b`` -> (``configs/x.py``, ``a=1,b``); no argument: ``""``."""
    path, colon, arg = spec.partition(".py:")
    return (path + ".py", arg) if colon else (spec, "")


def load_config_module(path: str):
    """The config file at ``path`` as a module (``get_config`` not called)."""
    import importlib.util

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"config file {path} does not exist (give the path of a configs/*.py file)"
        )
    spec = importlib.util.spec_from_file_location("lt_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_keys(config, prefix: str = "") -> list[str]:
    """Every leaf key of a ConfigDict, dotted (``optimizer.lr``)."""
    keys = []
    for k, v in config.items():
        if hasattr(v, "items"):
            keys += config_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return keys


# Names from other codebases for lt_jax's keys.
_SYNONYMS = {
    "learning_rate": "lr",
    "weight_decay": "wd",
    "num_epochs": "epochs",
    "warmup": "warmup_epochs",
    "batch": "batch_size",
    "arch": "model",
    "loss_type": "method",
}


def check_overrides(argv) -> None:
    """Every ``--config.KEY=VALUE`` names a key the config has; a misspelt one is a
    one-line error with the closest keys (before absl says ``AttributeError: 'x'``)."""
    import difflib

    overrides = [
        a.split("=")[0].removeprefix("--config.") for a in argv if a.startswith("--config.")
    ]
    spec = config_spec(argv)
    if not overrides or spec is None:
        return
    config = load_config_module(spec[0]).get_config(spec[1])
    keys = config_keys(config)
    for key in overrides:
        if key in keys or any(k.startswith(key + ".") for k in keys):
            continue
        leaf = key.split(".")[-1]
        leaf = _SYNONYMS.get(leaf, leaf)
        close = sorted((k for k in keys if k.split(".")[-1] == leaf), key=lambda k: k.count("."))
        close += [k for k in difflib.get_close_matches(key, keys, 3, 0.6) if k not in close]
        by_leaf = difflib.get_close_matches(leaf, [k.split(".")[-1] for k in keys], 3, 0.7)
        close += [k for k in keys if k.split(".")[-1] in by_leaf and k not in close]
        hint = f"; did you mean {' or '.join('--config.' + k for k in close[:3])}?" if close else ""
        raise ValueError(
            f"the config has no key {key!r}{hint} (python -m lt_jax.main --config "
            f"{spec[0]} --print_config lists them)"
        )


def _docstring_paragraph(doc: str, heading: str) -> str:
    """The paragraph of ``doc`` that starts with ``heading``, joined into one string."""
    for para in doc.split("\n\n"):
        if para.strip().startswith(heading):
            return " ".join(para.split())
    return ""


def _wrap(text: str, indent: str = "  ", hang: int = 2) -> str:
    """``text`` filled to 96 columns; continuation lines ``hang`` further in."""
    import textwrap

    return textwrap.fill(text, 96, initial_indent=indent, subsequent_indent=indent + " " * hang)


def catalog_text() -> str:
    """Methods, second stages and datasets, one line each."""
    from lt_jax import catalog

    width = max(map(len, [*catalog.METHODS, *catalog.STAGE2_PRESETS, *catalog.DATASETS]))
    out = []
    for title, table in (
        ("methods (config argument method=, or --config.method=):", catalog.METHODS),
        ("second stage (config argument stage2=):", catalog.STAGE2_PRESETS),
        ("datasets (--config.dataset.name=):", catalog.DATASETS),
    ):
        out.append(title)
        out += [_wrap(f"{name:<{width}}  {line}", hang=width + 2) for name, line in table.items()]
        out.append("")
    return "\n".join(out)


def config_help(path: str, arg: str = "") -> str:
    """A config file's first docstring line, its arguments with their defaults and the
    docstring's ``Arguments:`` paragraph."""
    from lt_jax import config_lib

    module = load_config_module(path)
    doc = module.__doc__ or ""
    out = [f"{path}: {doc.strip().splitlines()[0] if doc.strip() else ''}"]
    arguments = config_lib.config_arguments(module.get_config)
    if arguments:
        out.append("arguments (--config FILE:name=value,...; defaults shown):")
        out.append(_wrap(", ".join(f"{k}={v!r}" for k, v in arguments.items())))
        explained = _docstring_paragraph(doc, "Arguments:")
        if explained:
            out.append(_wrap(explained))
    out.append(
        f"every key: python -m lt_jax.main --config {path}{':' + arg if arg else ''} --print_config"
    )
    return "\n".join(out)


def main_help(argv) -> str:
    """``python -m lt_jax.main --help``."""
    import glob

    out = [
        "usage: python -m lt_jax.main --config configs/FILE.py[:name=value,...] "
        "[--config.KEY=VALUE ...] --workdir DIR",
        "       python -m lt_jax.main --config configs/FILE.py[:...] --print_config",
        "",
        "Trains and evaluates one long-tailed recognition run; the workdir gets config.json,",
        "checkpoints, metrics.jsonl, TensorBoard events and results.json. A rerun with the same",
        "workdir resumes; finished runs print their results.",
        "",
        "flags:",
        "  --config FILE.py[:args]  a config file and its arguments (listed below with --config)",
        "  --config.KEY=VALUE       set any key of the config after get_config (e.g. "
        "--config.lr=0.05)",
        "  --workdir DIR            where the run writes and resumes",
        "  --print_config           print the resolved config (as config.json will hold it), "
        "do not train",
        "  -h, --help               this text (with --config: that file's arguments too)",
        "",
    ]
    spec = config_spec(argv)
    if spec:
        out += [config_help(*spec), ""]
    else:
        files = sorted(glob.glob(os.path.join("configs", "*.py")))
        if files:
            out.append("config files (--config FILE --help lists one's arguments):")
            for f in files:
                with open(f, encoding="utf-8") as fh:
                    import ast

                    doc = ast.get_docstring(ast.parse(fh.read())) or ""
                out.append(_wrap(f"{f:<22} {doc.splitlines()[0] if doc else ''}", hang=23))
            out.append("")
    out.append(catalog_text())
    out += [
        "environment: LT_JAX_NATIVE (0/1: the native CPU kernels), LT_JAX_CPU_DEVICES,",
        "  LT_JAX_MULTIHOST=1 or LT_JAX_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID (several",
        "  processes, docs/scale.md), LT_JAX_CACHE (compiled programs, native kernels, split",
        "  lists; default ~/.cache/lt_jax), LT_JAX_COMPILATION_CACHE=0,",
        "  LT_JAX_KEEP_HOST_MEMORY=0.",
        "exit status: 0 done, 1 the run failed, 2 a usage mistake (flag, config or setting).",
    ]
    return "\n".join(out)


def setup_logging():
    """lt_jax's progress lines on stderr; other libraries' INFO chatter (Orbax) hidden."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logger = logging.getLogger("lt_jax")
    if not any(getattr(h, "lt_jax", False) for h in logger.handlers):  # once per process
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler.lt_jax = True
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
    ResNet-32 at batch 128 on the 2-core development machine, 554 images/s on one device
    against 330 on two (``benchmarks/throughput.py``'s scaling line); before them two
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


def enable_compilation_cache() -> str | None:
    """JAX's persistent compilation cache under ``$LT_JAX_CACHE/xla`` (default
    ``~/.cache/lt_jax/xla``), so a rerun, a resumed run or the next run of a sweep loads the
    compiled programs instead of compiling them again.

    Every program is cached, the per-op programs of eager model initialisation included
    (ResNet-32 on a 2-core CPU: 18 s of init compiles become 1.4 s). The folder is keyed by
    the host CPU (architecture, model, feature flags) and the jax/jaxlib versions, so a home
    directory shared by different machines never loads a program built for another CPU;
    it keeps at most 2 GB (least recently used entries go first). ``LT_JAX_COMPILATION_CACHE=0``
    turns it off. Returns the folder (None: off).
    """
    if os.environ.get("LT_JAX_COMPILATION_CACHE", "1") == "0":
        return None
    import hashlib

    import jax
    import jaxlib

    from lt_jax.models import native

    key = f"{native._cpu_identity()}|{jax.__version__}|{jaxlib.__version__}"
    path = os.path.join(native.cache_root(), "xla", hashlib.sha256(key.encode()).hexdigest()[:16])
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile as before
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", 2 * 1024**3)
    return path


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
