"""A run's workdir: its config record, metric files, results, and the SIGTERM flag.

Layout: ``config.json`` (the resolved config; a rerun must match it), ``split.json``
(``lt_jax.data.longtail``), ``metrics.jsonl`` and ``tensorboard/``, ``checkpoints/<stage>/``,
``embedding_<stage>.npz``, ``results.json``. Only process 0 writes these files.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax

from lt_jax.config_lib import COMPAT_DEFAULTS


class TrainingError(RuntimeError):
    """A run that must stop (NaN loss, incompatible workdir, ...), with a one-line message."""


def _with_compat_keys(old: dict, current: dict) -> dict:
    """``old`` with every ``COMPAT_DEFAULTS`` entry it lacks (and ``current`` has) filled in:
    a workdir written before a key existed ran with that key's compat value."""
    old = json.loads(json.dumps(old))
    for dotted, value in COMPAT_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        src, dst = current, old
        for p in parents:
            src, dst = src.get(p), dst.get(p)
            if not isinstance(src, dict) or not isinstance(dst, dict):
                break
        else:
            if leaf in src and leaf not in dst:
                dst[leaf] = value
    return old


def check_config(workdir: str, config) -> None:
    """Records ``config`` in ``workdir/config.json``, or refuses a workdir holding a run
    with a different config."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            old = _with_compat_keys(json.load(f), current)
        if old != current:
            diff = sorted(k for k in set(old) | set(current) if old.get(k) != current.get(k))
            raise TrainingError(
                f"{workdir} holds a run with a different config (differs in: "
                f"{', '.join(diff)}); use a new --workdir"
            )
    elif jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(current, f, indent=1, sort_keys=True)


def write_results(workdir: str, results: dict) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f)


class MetricWriter:
    """JSON lines and TensorBoard event files in the workdir (process 0 only)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        self._tb = None
        if self.active:
            from tensorboardX import SummaryWriter  # light: protobuf + numpy, no TensorFlow

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        for k, v in values.items():
            if isinstance(v, int | float):
                self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def install_sigterm():
    """A SIGTERM handler that only raises a flag; returns ``() -> bool`` reading it. The
    loop checks it after every step and stops with a checkpoint."""
    flag = {"set": False}

    def handler(signum, frame):
        del signum, frame
        flag["set"] = True

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. under a test runner thread)
        pass
    return lambda: flag["set"]
