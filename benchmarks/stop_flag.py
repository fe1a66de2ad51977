"""The cost of agreeing on the SIGTERM flag across processes, per training step.

  python benchmarks/stop_flag.py [--processes 2] [--calls 2000]

Starts a local cluster (``lt_jax.distributed``, gloo on CPU) and times, in every process:
``StopFlag`` (what the loop calls after every step: a barrier and a key listing at the
coordinator, no device work) and, for comparison, the same agreement as a device collective
(``multihost_utils.process_allgather`` of the flag, which also waits for the queued work).
Idle processes: this is the exchange itself, not the wait for a slower peer.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(calls: int) -> None:
    from lt_jax import distributed

    distributed.initialize()
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    flag = distributed.StopFlag(lambda: False)
    for _ in range(20):
        flag()
    started = time.perf_counter()
    for _ in range(calls):
        flag()
    kv_ms = 1000 * (time.perf_counter() - started) / calls
    multihost_utils.process_allgather(np.zeros(1, np.int32))  # compile
    started = time.perf_counter()
    for _ in range(calls // 10):
        bool(np.any(multihost_utils.process_allgather(np.zeros(1, np.int32))))
    gather_ms = 1000 * (time.perf_counter() - started) / (calls // 10)
    print(json.dumps({"process": jax.process_index(), "kv_ms": kv_ms, "allgather_ms": gather_ms}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.calls)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(args.processes):
        env = dict(
            os.environ,
            LT_JAX_COORDINATOR=f"127.0.0.1:{port}",
            LT_JAX_NUM_PROCESSES=str(args.processes),
            LT_JAX_PROCESS_ID=str(i),
            XLA_FLAGS="--xla_force_host_platform_device_count=1",
            PYTHONPATH=ROOT,
        )
        cmd = [sys.executable, __file__, "--worker", "--calls", str(args.calls)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=600)
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"process {r['process']}: StopFlag {r['kv_ms']:.3f} ms per step, "
            f"process_allgather {r['allgather_ms']:.3f} ms"
        )


if __name__ == "__main__":
    main()
