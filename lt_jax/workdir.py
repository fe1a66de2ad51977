"""A run's workdir: its lock, config record, metric files, results, and the SIGTERM flag.

Layout: ``lock`` (while a run holds it), ``config.json`` (the resolved config; a rerun must
match it), ``split.json`` (``lt_jax.data.longtail``), ``metrics.jsonl`` and ``tensorboard/``,
``checkpoints/<stage>/`` (damaged ones moved to ``checkpoints/<stage>.damaged/``),
``embedding_<stage>.npz``, ``results.json`` (training) and ``evaluation.json``
(``lt_jax.evaluate``). Only process 0 writes these files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

import jax

from lt_jax import events
from lt_jax.config_lib import resolve

log = logging.getLogger("lt_jax.workdir")


class TrainingError(RuntimeError):
    """A run that must stop (NaN loss, incompatible workdir, ...), with a one-line message."""


class WorkdirLocked(TrainingError):
    """Another live run holds the workdir."""


class WorkdirLock:
    """``workdir/lock``, held for the life of a run: one run per workdir.

    The file records the holder (host, pid, start time, a random token); the holder touches
    it every ``heartbeat_s`` from a daemon thread. A lock is stale, and is taken over with a
    warning, when its process is gone (same host) or its heartbeat is older than
    ``stale_s`` (any host: a shared filesystem seen from another machine, a frozen
    process). Creation is atomic (``O_EXCL``); a takeover first renames the stale file away,
    so of two runs racing for one stale lock only one creates the new lock.
    """

    def __init__(self, workdir: str, *, heartbeat_s: float = 10.0, stale_s: float = 60.0):
        self.path = os.path.join(workdir, "lock")
        self.workdir, self.heartbeat_s, self.stale_s = workdir, heartbeat_s, stale_s
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": uuid.uuid4().hex,
        }
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self) -> None:
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            raise TrainingError(f"cannot create workdir {self.workdir}: {e.strerror}") from None
        for _ in range(3):  # a takeover can race with another run's; retry a few times
            if self._create():
                self._thread = threading.Thread(target=self._beat, daemon=True)
                self._thread.start()
                return
            holder, age = self._read()
            why = self._stale(holder, age)
            if why is None:
                raise WorkdirLocked(
                    f"{self.workdir} is in use by {_describe(holder)} (heartbeat {age:.0f} s "
                    "ago); wait for that run to end or use another --workdir"
                )
            log.warning("taking over the lock of %s: %s", _describe(holder), why)
            try:
                os.rename(self.path, f"{self.path}.stale-{self.record['token']}")
                os.remove(f"{self.path}.stale-{self.record['token']}")
            except FileNotFoundError:
                pass  # another run took it over first; look again
        raise WorkdirLocked(f"could not take over the lock {self.path}; try again")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise TrainingError(f"cannot write to workdir {self.workdir}: {e.strerror}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
        return True

    def _read(self):
        """(holder record or {}, seconds since its heartbeat)."""
        try:
            age = time.time() - os.path.getmtime(self.path)
            with open(self.path) as f:
                return json.load(f), age
        except FileNotFoundError:
            return {}, float("inf")
        except (OSError, ValueError):  # half-written by a process killed while creating it
            return {}, age

    def _stale(self, holder: dict, age: float) -> str | None:
        """Why the lock of ``holder`` is stale, or None if it is held."""
        if holder.get("host") == self.record["host"] and holder.get("pid"):
            if not _pid_alive(holder["pid"]):
                return f"process {holder['pid']} is gone"
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a full or read-only disk must not kill the run; the lock ages

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            with open(self.path) as f:
                mine = json.load(f).get("token") == self.record["token"]
            if mine:
                os.remove(self.path)
        except (OSError, ValueError):
            pass


def _describe(holder: dict) -> str:
    if not holder:
        return "a run whose lock file is unreadable"
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def check_config(workdir: str, config) -> None:
    """Refuses a workdir holding a run with a different config (reads only)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    current = json.loads(resolve(config).to_json_best_effort())
    try:
        with open(path) as f:
            # resolve() fills the keys a workdir from before them lacks (COMPAT_DEFAULTS).
            old = json.loads(resolve(json.load(f)).to_json_best_effort())
    except ValueError:
        raise TrainingError(f"{path} is corrupt; delete it or use a new --workdir") from None
    if old != current:
        diff = sorted(k for k in set(old) | set(current) if old.get(k) != current.get(k))
        raise TrainingError(
            f"{workdir} holds a run with a different config (differs in: "
            f"{', '.join(diff)}); use a new --workdir"
        )


def record_config(workdir: str, config) -> None:
    """Writes ``workdir/config.json`` if absent (after the data loaded: a run that fails on
    a typo leaves no config behind to refuse the corrected rerun)."""
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0 and not os.path.exists(path):
        write_json(path, json.loads(config.to_json_best_effort()), indent=1, sort_keys=True)


def write_json(path: str, value, **kw) -> None:
    """Atomically (a temporary file renamed): a crash or a full disk never leaves half a
    file where a good one was."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, **kw)
    os.replace(tmp, path)


def write_results(workdir: str, results: dict, name: str = "results.json") -> None:
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, name), results)


class MetricWriter:
    """JSON lines and TensorBoard event files in the workdir (process 0 only).

    TensorBoard gets one run directory per stage (``tensorboard/stage1``,
    ``tensorboard/stage2``: the first part of each tag), so stage 2's step count, which
    starts again at 0, never runs backwards inside one event stream.

    It also keeps the run's wall time across resumes: :meth:`elapsed` is this process's
    time since ``started`` plus what the earlier processes on the workdir had spent when
    they saved the checkpoint it resumed from (the ``<stage>/wall_time_s`` line written
    with each checkpoint, :meth:`rewind`). Time spent past that checkpoint by a killed
    process is not counted: its work is done again and counted then.
    """

    def __init__(self, workdir: str, started: float | None = None):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.root = os.path.join(workdir, "tensorboard")
        self.active = jax.process_index() == 0
        self._tb = {}
        self.started = time.time() if started is None else started
        self.before = 0.0  # seconds spent by earlier processes, up to the resumed checkpoint

    def elapsed(self) -> float:
        """Wall time of the run so far, earlier processes on the workdir included."""
        return self.before + time.time() - self.started

    @staticmethod
    def _run_of(key: str) -> str:
        """The stage a metric key belongs to: its first part (``stage1/test/top1``)."""
        return key.split("/")[0]

    def _board(self, run: str):
        if run not in self._tb:
            self._tb[run] = events.EventWriter(os.path.join(self.root, run))
        return self._tb[run]

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        runs = {}
        for k, v in values.items():
            if isinstance(v, int | float):
                runs.setdefault(self._run_of(k), {})[k] = float(v)
        for run, scalars in runs.items():
            self._board(run).scalars(step, scalars)

    def rewind(self, run: str, step: int) -> None:
        """Drops the lines of ``run`` (a stage: the first part of their keys) past ``step``:
        a run killed after its last checkpoint wrote them, and resumed from that checkpoint
        it writes those steps again. A torn line (killed mid-write) goes too. The file is
        replaced whole, never left half-written. The wall time recorded with the newest
        kept checkpoint line becomes the time of the earlier processes (:meth:`elapsed`)."""
        kept = self._drop(run, step)
        spent = [v for entry in kept for k, v in entry.items() if k.endswith("/wall_time_s")]
        self.before = max(spent, default=0.0)

    def restart(self, run: str) -> None:
        """Drops every line of ``run``: it starts from step 0 (no checkpoint), so the lines
        of an earlier process killed before its first checkpoint would come twice. The wall
        time stays: the run's earlier stages are counted as they were."""
        self._drop(run, 0)

    def _drop(self, run: str, step: int) -> list[dict]:
        """Removes the lines of ``run`` past ``step`` and torn lines; the kept entries."""
        if not self.active or not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            lines = f.readlines()

        def entry_of(line: str) -> dict | None:
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None  # the torn last line of a killed write

        def later(entry: dict) -> bool:
            ours = any(self._run_of(k) == run for k in entry if k != "step")
            return ours and entry["step"] > step

        parsed = [(line, entry_of(line)) for line in lines if line.strip()]
        kept = [(line, e) for line, e in parsed if e is not None and not later(e)]
        if len(kept) < len(lines):
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                f.writelines(line for line, _ in kept)
            os.replace(tmp, self.path)
            log.info("%s: dropped %d metric lines past step %d", run, len(lines) - len(kept), step)
        return [e for _, e in kept]

    def close(self) -> None:
        for board in self._tb.values():
            board.close()
        self._tb = {}


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
