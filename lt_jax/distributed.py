"""Several cooperating processes (TPU pod hosts, GPU nodes, or local CPU processes).

:func:`initialize` starts JAX's distributed runtime from the environment, before anything
else touches a device:

* ``LT_JAX_COORDINATOR=host:port LT_JAX_NUM_PROCESSES=N LT_JAX_PROCESS_ID=i``: an explicit
  cluster (process 0 runs the coordinator at ``host:port``; on CPU the processes' collectives
  go through gloo over TCP). Used for a multi-node GPU cluster without SLURM and for the local
  multi-process simulation (``docs/scale.md``).
* ``LT_JAX_MULTIHOST=1`` alone: ``jax.distributed.initialize()`` with JAX's own detection
  (Cloud TPU VMs, SLURM, Open MPI).
* neither: one process, nothing to start.

``LT_JAX_INIT_TIMEOUT`` (seconds, default 120) bounds the wait for the coordinator and the
peers; ``LT_JAX_PEER_TIMEOUT`` (default 300) the wait for a peer at an agreement point
(:class:`StopFlag`, :func:`agree`).

:class:`StopFlag` makes the SIGTERM flag a cluster decision: every process learns at the
same step that one of them was told to stop, so all save the same checkpoint and stop
together. It rides on the coordinator's key-value store (one small RPC per check, no
device work), not on a device collective that would wait for the queued steps.
"""

from __future__ import annotations

import os
import socket
import time

import jax

ENV = ("LT_JAX_COORDINATOR", "LT_JAX_NUM_PROCESSES", "LT_JAX_PROCESS_ID")


class DistributedError(RuntimeError):
    """A cluster that cannot start or whose processes no longer agree (one line)."""


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not a number of seconds") from None


def settings(environ=None) -> dict | None:
    """The explicit cluster of the environment: ``{coordinator, num_processes, process_id}``,
    ``{}`` for ``LT_JAX_MULTIHOST=1`` (JAX detects), None for one process. A partial or
    inconsistent setting is a :class:`DistributedError`."""
    environ = os.environ if environ is None else environ
    given = {k: environ.get(k, "").strip() for k in ENV}
    if not any(given.values()):
        return {} if environ.get("LT_JAX_MULTIHOST", "") not in ("", "0") else None
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise DistributedError(
            f"{', '.join(missing)} not set: an explicit cluster needs all of {', '.join(ENV)}"
        )
    coordinator = given["LT_JAX_COORDINATOR"]
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(
            f"LT_JAX_COORDINATOR={coordinator!r} is not host:port (e.g. 10.0.0.2:1234)"
        )
    try:
        n, i = int(given["LT_JAX_NUM_PROCESSES"]), int(given["LT_JAX_PROCESS_ID"])
    except ValueError:
        raise DistributedError(
            f"LT_JAX_NUM_PROCESSES={given['LT_JAX_NUM_PROCESSES']!r} and LT_JAX_PROCESS_ID="
            f"{given['LT_JAX_PROCESS_ID']!r} must be integers"
        ) from None
    if n < 1 or not 0 <= i < n:
        raise DistributedError(
            f"LT_JAX_PROCESS_ID={i} is outside 0..{n - 1} (LT_JAX_NUM_PROCESSES={n})"
        )
    return {"coordinator": coordinator, "num_processes": n, "process_id": i}


def initialize(environ=None) -> bool:
    """Starts the distributed runtime the environment asks for; returns whether it did.

    Must run before the first device use. Raises :class:`DistributedError` (one line) for
    an inconsistent environment or a coordinator / peers not reached within
    ``LT_JAX_INIT_TIMEOUT`` seconds.
    """
    cluster = settings(environ)
    if cluster is None:
        return False
    timeout = int(_seconds("LT_JAX_INIT_TIMEOUT", 120.0))
    # gloo is JAX 0.10's default for CPU collectives; set it so a changed default, or an
    # MPI-less host, never leaves a CPU cluster without cross-process collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not cluster:  # LT_JAX_MULTIHOST=1: TPU VM / SLURM / MPI detection
        try:
            jax.distributed.initialize(initialization_timeout=timeout)
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"jax.distributed.initialize() failed: {_first(e)}") from None
        return True
    if cluster["num_processes"] == 1:
        return False
    if cluster["process_id"] != 0:
        # JAX's client aborts the process (a fatal log and a stack dump) when it cannot
        # register; a coordinator that is not there is told in one line first.
        _wait_for_coordinator(cluster, timeout)
    try:
        jax.distributed.initialize(
            coordinator_address=cluster["coordinator"],
            num_processes=cluster["num_processes"],
            process_id=cluster["process_id"],
            cluster_detection_method="deactivate",  # the environment said it all
            initialization_timeout=timeout,
        )
    except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError
        raise DistributedError(
            f"process {cluster['process_id']} of {cluster['num_processes']}: no cluster at "
            f"coordinator {cluster['coordinator']} within {timeout} s ({_first(e)[:200]})"
        ) from None
    return True


def _wait_for_coordinator(cluster: dict, timeout: float) -> None:
    host, _, port = cluster["coordinator"].rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=min(5.0, timeout)).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"process {cluster['process_id']} of {cluster['num_processes']}: cannot "
                    f"reach the coordinator {cluster['coordinator']} within {timeout:.0f} s "
                    f"({e.strerror or e}); start process 0 there, or check "
                    "LT_JAX_COORDINATOR / the firewall"
                ) from None
            time.sleep(0.5)


def _first(e: BaseException) -> str:
    """The first line of an error, without gRPC's ``[type.googleapis.com/...]`` payloads."""
    text = str(e).strip()
    return text.splitlines()[0].split(" [type.googleapis.com")[0] if text else type(e).__name__


def collective_failed(error: BaseException) -> str:
    """The one line for a device computation of a cluster that failed (gloo reports a
    peer's closed connection at once)."""
    return (
        f"process {jax.process_index()}: a computation across the processes failed "
        f"({_first(error)[:200]}); a peer process stopped or is unreachable"
    )


def peer_lost(error: BaseException) -> bool:
    """Whether ``error`` means this process can no longer count on its peers: a failed
    agreement (:class:`DistributedError`) or a failed device computation of a cluster (a
    peer gone, or the same failure in every process). Waiting for the peers then (JAX's
    shutdown barrier, a pending checkpoint's finalisation) can last until JAX's heartbeat
    timeout, about 100 s: :func:`abandon` skips the one, :func:`save_grace_s` bounds the
    other."""
    return isinstance(error, DistributedError) or (
        isinstance(error, jax.errors.JaxRuntimeError) and jax.process_count() > 1
    )


def save_grace_s() -> float:
    """How long a process whose peers may be gone (:func:`peer_lost`) still waits for its
    pending checkpoint save, which meets the other processes at a barrier: long enough for
    live peers to finish it (every process failing alike), short of JAX's heartbeat
    timeout. ``LT_JAX_PEER_TIMEOUT``, at most 30 s."""
    return min(30.0, _seconds("LT_JAX_PEER_TIMEOUT", 300.0))


def abandon(message: str, status: int = 1) -> None:
    """Exits at once with ``lt_jax: error: <message>``, skipping JAX's shutdown barrier,
    which would wait for a peer that is gone until the heartbeat timeout and then abort
    with a stack dump."""
    import logging
    import sys

    logging.shutdown()
    print(f"lt_jax: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def _client():
    from jax._src import distributed as _dist

    return _dist.global_state.client


def agree(name: str, value: str = "", *, root: int | None = None) -> list[str]:
    """Every process's ``value`` at the agreement point ``name`` (unique per use), in
    process order; with ``root`` only that process publishes and every process gets its
    value (as a one-element list). One process: ``[value]``. A peer that does not arrive
    within ``LT_JAX_PEER_TIMEOUT`` seconds is a :class:`DistributedError`."""
    if jax.process_count() == 1:
        return [value]
    client, me = _client(), jax.process_index()
    timeout_ms = int(1000 * _seconds("LT_JAX_PEER_TIMEOUT", 300.0))
    senders = [root] if root is not None else range(jax.process_count())
    if me in senders:
        client.key_value_set(f"lt_jax/{name}/{me}", value)
    values = []
    for p in senders:
        if p == me:
            values.append(value)
            continue
        try:
            values.append(client.blocking_key_value_get(f"lt_jax/{name}/{p}", timeout_ms))
        except Exception as e:  # noqa: BLE001 - XlaRuntimeError(DEADLINE_EXCEEDED) and kin
            raise DistributedError(
                f"process {p} did not reach {name} within {timeout_ms / 1000:.0f} s (stopped, "
                f"hung or unreachable: {_first(e)[:160]}); stopping process {me} too"
            ) from None
    return values


class StopFlag:
    """``() -> bool``, called once per training step by every process: True, on every
    process at the same call, once any process's ``local()`` said True.

    One process: ``local()`` itself. Several: every ``every`` calls the processes meet at a
    barrier of the coordinator, a process told to stop having left a key first, and read
    the round's keys (two RPCs per process, whatever the number of processes); between
    exchanges it says False.
    ``seconds`` accumulates the time spent exchanging (its cost, ``benchmarks/``).
    """

    def __init__(self, local, every: int = 1):
        self.local, self.every = local, max(1, int(every))
        self.calls, self.exchanges, self.seconds, self.stopped = 0, 0, 0.0, False
        self.who: list[int] = []  # the processes that asked to stop

    def cost(self) -> str:
        """``"N exchanges, X ms each"`` so far (empty with one process)."""
        if not self.exchanges:
            return ""
        return f"{self.exchanges} exchanges, {1000 * self.seconds / self.exchanges:.2f} ms each"

    def describe(self) -> str:
        """``" (process 1)"`` when the stop came from a process of a cluster, else ``""``."""
        return f" (process {', '.join(map(str, self.who))})" if self.who else ""

    def __call__(self) -> bool:
        if jax.process_count() == 1:
            return self.local()
        self.calls += 1
        if self.stopped:
            return True
        if self.calls % self.every:
            return False
        started = time.perf_counter()
        rnd, me = self.calls // self.every, jax.process_index()
        # Two RPCs whatever the process count: a process told to stop leaves a key, all
        # meet at a barrier, then each lists the keys of the round.
        client, timeout_ms = _client(), int(1000 * _seconds("LT_JAX_PEER_TIMEOUT", 300.0))
        if self.local():
            client.key_value_set(f"lt_jax/stop/{rnd}/{me}", "1")
        try:
            client.wait_at_barrier(f"lt_jax_stop_{rnd}", timeout_ms)
        except Exception as e:  # noqa: BLE001 - XlaRuntimeError(DEADLINE_EXCEEDED) and kin
            raise DistributedError(
                f"process {me}: a peer did not reach step check {rnd} within "
                f"{timeout_ms / 1000:.0f} s (stopped, hung or unreachable: {_first(e)[:160]})"
            ) from None
        keys = client.key_value_dir_get(f"lt_jax/stop/{rnd}/")
        self.who = sorted(int(k.rsplit("/", 1)[-1]) for k, _ in keys)
        self.stopped = bool(self.who)
        self.seconds += time.perf_counter() - started
        self.exchanges += 1
        return self.stopped
