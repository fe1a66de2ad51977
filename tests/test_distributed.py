"""Several processes through JAX's distributed runtime (gloo collectives on CPU), against
one process with the same global batch and device count.

Each cluster is 2 processes of ``python -m lt_jax.main`` on a free localhost port
(``LT_JAX_COORDINATOR`` / ``LT_JAX_NUM_PROCESSES`` / ``LT_JAX_PROCESS_ID``), training
``configs/default.py:runlocal`` (MNIST-LT, small CNN) with batch 448 and no second stage:
2 steps an epoch, a checkpoint and an evaluation after each.

Tolerances: 2 processes x 1 device run the same program as 1 process x 2 devices, and a sum
of two partial gradients is the same float in either order, so parameters, optimizer state
and metrics must be bit-identical. With 2 x 2 devices the four partial sums meet in another
order than inside one 4-device process (local pairs first, then gloo), so they differ in
float rounding. After the first epoch (2 steps) that is at most 2.1e-6 of each array's largest
magnitude (measured on a 2-core EPYC with AVX-512, 2026-12-02); the test allows 1e-4. Two
more steps amplify rounding a lot in the optimizer's momentum of a few arrays (the dense
layer under the cosine head, the last BatchNorm bias: small gradients left after
cancellation), and by how much depends on the CPU: after 4 steps 2.4e-6 on an AVX2 EPYC but
1.9e-2 of one array's largest magnitude on the AVX-512 one, where the same run on 1 process
x 2 devices, a legitimately different reduction order with no second process, is as far
from 1 x 4 (2.3e-2 already after 2 steps). So after 4 steps each part of the state is
compared at its own scale (the largest magnitude over all its arrays): measured at most
1.3e-4 (params, BatchNorm statistics) and 4.8e-3 (optimizer state) on the AVX-512 machine,
1x2 against 1x4 3.9e-4 and 7.0e-3; the test allows 1e-3 and 5e-2. A wrong shard, a missing
all-reduce or another process's epoch order trains on other data: its gradients, and so
the momentum, are off by a sizeable fraction of their scale, and the loss and accuracies by
far more than their 3e-7 and 0.002.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lt_jax import distributed
from tests import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [
    "--config",
    "configs/default.py:runlocal=True",
    "--config.stage2.mode=none",
    "--config.batch_size=448",
    "--config.drop_last=True",
]
EPOCHS4 = ["--config.epochs=4"]  # 8 steps: room to stop and resume in the middle
TIMEOUT_S = 400  # one run, compile included, on a loaded 2-core machine


def _gloo_available() -> bool:
    try:
        from jax._src.lib import _jax

        return hasattr(_jax, "make_gloo_tcp_collectives")
    except ImportError:
        return False


pytestmark = pytest.mark.skipif(not _gloo_available(), reason="jaxlib without gloo collectives")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    own = (*distributed.ENV, "LT_JAX_MULTIHOST", "LT_JAX_CPU_DEVICES", "LT_JAX_NATIVE")
    env = {k: v for k, v in os.environ.items() if k not in own and k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = xla_flags(devices)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _start(workdir, args, *, processes=2, devices=1, port=None, **env):
    """``processes`` Popen objects of one cluster (one process: no cluster variables)."""
    port = port or _free_port()
    procs = []
    for i in range(processes):
        cluster = (
            {}
            if processes == 1
            else {
                "LT_JAX_COORDINATOR": f"127.0.0.1:{port}",
                "LT_JAX_NUM_PROCESSES": str(processes),
                "LT_JAX_PROCESS_ID": str(i),
            }
        )
        out = open(f"{workdir}.p{i}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "lt_jax.main", "--workdir", str(workdir), *args],
                cwd=ROOT,
                env=_env(devices, **cluster, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
        out.close()
    return procs


def _finish(procs, timeout=TIMEOUT_S):
    """Each process's (return code, output); a process that outlives ``timeout`` is killed
    and fails the test."""
    deadline = time.monotonic() + timeout
    results = []
    for i, p in enumerate(procs):
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"process {i} still running after {timeout} s")
        workdir = p.args[p.args.index("--workdir") + 1]
        with open(f"{workdir}.p{i}.log") as f:
            results.append((p.returncode, f.read()))
    return results


def _run(workdir, args, **kw):
    results = _finish(_start(workdir, args, **kw))
    for i, (rc, out) in enumerate(results):
        assert rc == 0, f"process {i} failed:\n{out[-3000:]}"
    return results


def _wait_for(path_or_fn, what, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path_or_fn():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _log_says(workdir, i, text):
    def check():
        try:
            with open(f"{workdir}.p{i}.log") as f:
                return text in f.read()
        except FileNotFoundError:
            return False

    return check


def _state(workdir, step):
    """Every leaf of a stage-1 checkpoint as NumPy (no device topology needed)."""
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", "stage1", str(step), "default")
    ckpt = ocp.PyTreeCheckpointer()
    meta = ckpt.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    tree = ckpt.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    return [(jax.tree_util.keystr(k), np.asarray(v)) for k, v in jax.tree.leaves_with_path(tree)]


def _assert_same_state(a, b, rtol=0.0):
    """Equal leaves; or each floating leaf within ``rtol`` of a scale: a float ``rtol`` of
    the leaf's own largest magnitude, a ``{part: rtol}`` of the largest magnitude over all
    floating leaves of its part of the state (``params``, ``opt_state``, ...). Other leaves
    equal."""
    per_part = isinstance(rtol, dict)
    assert [k for k, _ in a] == [k for k, _ in b]
    errors, scales = {}, {}
    for (key, x), (_, y) in zip(a, b, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype, key
        if rtol == 0.0 or not (x.size and np.issubdtype(x.dtype, np.floating)):
            np.testing.assert_array_equal(x, y, err_msg=key)
            continue
        group = key.split("'")[1] if per_part else key
        errors[group] = max(errors.get(group, 0.0), float(np.max(np.abs(x.astype(np.float64) - y))))
        scales[group] = max(scales.get(group, 1e-30), float(np.max(np.abs(y))))
    if per_part:
        assert set(errors) == set(rtol), sorted(errors)
    for group, err in errors.items():
        limit = rtol[group] if per_part else rtol
        assert err <= limit * scales[group], (group, err / scales[group])


def _results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _metric_lines(workdir):
    """metrics.jsonl's lines without the wall times (which differ between any two runs),
    and the wall times in file order."""
    lines, wall = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            entry = json.loads(line)
            wall += [v for k, v in entry.items() if k.endswith("/wall_time_s")]
            entry = {k: v for k, v in entry.items() if not k.endswith("/wall_time_s")}
            if len(entry) > 1:
                lines.append(json.dumps(entry))
    return lines, wall


# Session scope: kept until the worker ends, not torn down when another module's test runs
# in between (its users are one xdist_group, so one worker builds it once).
@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """1 process x 2 devices, 8 steps, the run the clusters are compared with."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    _run(workdir, TRAIN + EPOCHS4, processes=1, devices=2)
    return workdir


@pytest.mark.xdist_group("cluster_reference")  # one worker builds the shared fixture
def test_a_cluster_stopped_by_sigterm_then_a_lost_peer_resumes_as_one_process(reference, tmp_path):
    """2 processes x 1 device, started three times on one workdir (one chain, so the suite
    starts one cluster fewer):

    1. SIGTERM to process 1 while compiling: both stop at step 1 with one checkpoint.
    2. Restarted, it resumes from step 1; SIGKILL to process 1 after the next checkpoint:
       process 0 stops with one line in bounded time (no wait for JAX's heartbeat timeout,
       no abort).
    3. Restarted again, it ends bit-identical to 1 process x 2 devices; only process 0
       writes logs and results, each metric line once; both processes wrote their
       checkpoint part.
    """
    workdir = tmp_path / "run"
    procs = _start(workdir, TRAIN + EPOCHS4)
    # Signalled while compiling: the flag is up before step 1, so the stop is at step 1.
    _wait_for(_log_says(workdir, 1, "compiling the train step"), "process 1 to compile")
    procs[1].send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    results = _finish(procs)
    assert time.monotonic() - signalled < 120
    for rc, out in results:
        assert rc == 1
        last = out.strip().splitlines()[-1]
        assert "SIGTERM (process 1): saved stage1 step 1 to" in last, out[-2000:]
    assert os.listdir(workdir / "checkpoints" / "stage1") == ["1"]

    procs = _start(workdir, TRAIN + EPOCHS4, LT_JAX_PEER_TIMEOUT="15")
    second = workdir / "checkpoints" / "stage1" / "2" / "commit_success.txt"
    _wait_for(second.exists, "the checkpoint after the resumed step")
    procs[1].kill()
    killed = time.monotonic()
    (rc0, out0), (rc1, _) = _finish(procs)
    assert "resumed from step 1 of 8" in out0
    assert rc1 == -signal.SIGKILL
    assert rc0 == 1 and time.monotonic() - killed < 60, out0[-3000:]
    last = out0.strip().splitlines()[-1]
    assert last.startswith(  # gloo notices the closed connection, or the stop flag times out
        (
            "lt_jax: error: process 0: a computation across the processes failed",
            "lt_jax: error: process 0: a peer did not reach step check",
        )
    ), out0[-3000:]

    results = _run(workdir, TRAIN + EPOCHS4)
    assert "resumed from step" in results[0][1]
    _assert_same_state(_state(workdir, 8), _state(reference, 8))
    mine, ref = _results(workdir), _results(reference)
    assert mine["final"] == ref["final"] and mine["best_epoch"] == ref["best_epoch"]
    assert mine["devices"] == ref["devices"]  # "2 x cpu", as the 2-device process
    # Only process 0 writes, and a resume drops the lines past its checkpoint: each line
    # once, each one the reference's.
    (lines, wall), (reference_lines, _) = _metric_lines(workdir), _metric_lines(reference)
    assert len(set(lines)) == len(lines) and set(lines) <= set(reference_lines)
    # A wall time with each kept checkpoint, counted on by each resumed process.
    assert len(wall) >= 4 and wall == sorted(wall), wall
    assert "results:" in results[0][1] and "results:" not in results[1][1]
    shards = os.listdir(workdir / "checkpoints" / "stage1" / "8" / "default")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(shards)


def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
    """2 processes x 2 virtual devices against 1 process x 4 devices, 4 steps: equal up to
    float rounding, after 2 steps array by array, after 4 at the scale of each part of the
    state (module docstring)."""
    cluster, single = tmp_path / "cluster", tmp_path / "single"
    # At XLA's default optimisation, as every cluster here (at LLVM level 0 the two
    # programs' rounding differs by up to 1.5e-3 of an optimizer trace's magnitude).
    results = _run(cluster, TRAIN, devices=2)
    assert "CpuDevice(id=2049)" in results[1][1]  # 4 global devices, 2 per process
    _run(single, TRAIN, processes=1, devices=4)
    _assert_same_state(_state(cluster, 2), _state(single, 2), rtol=1e-4)
    tolerance = {"params": 1e-3, "batch_stats": 1e-3, "opt_state": 5e-2}
    _assert_same_state(_state(cluster, 4), _state(single, 4), rtol=tolerance)
    a, b = _results(cluster), _results(single)
    for key in ("top1", "many", "medium", "few"):
        assert abs(a["final"][key] - b["final"][key]) <= 0.002, key  # 2 of 1000 test images


def test_a_second_cluster_on_a_locked_workdir_stops_in_every_process(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": "now", "token": "x"}
    (workdir / "lock").write_text(json.dumps(holder))  # this live test process holds it
    results = _finish(_start(workdir, TRAIN), timeout=200)
    for i, (rc, out) in enumerate(results):
        last = out.strip().splitlines()[-1]
        assert rc == 1 and "is in use by pid" in last, out[-2000:]
        assert last.startswith("lt_jax: error: process 0: " if i else "lt_jax: error: ")
    assert not (workdir / "config.json").exists()


def test_unreachable_coordinator_is_one_line_in_bounded_time(tmp_path):
    address = f"127.0.0.1:{_free_port()}"  # nobody listens
    started = time.monotonic()
    env = {"LT_JAX_NUM_PROCESSES": "2", "LT_JAX_PROCESS_ID": "1", "LT_JAX_INIT_TIMEOUT": "3"}
    with open(tmp_path / "w.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "lt_jax.main", "--workdir", str(tmp_path / "w"), *TRAIN],
            cwd=ROOT,
            env=_env(1, LT_JAX_COORDINATOR=address, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    out = (tmp_path / "w.log").read_text()
    assert proc.returncode == 1 and time.monotonic() - started < 90
    assert "Traceback" not in out and "Fatal" not in out, out
    assert out.strip().splitlines()[-1] == (
        f"lt_jax: error: process 1 of 2: cannot reach the coordinator {address} within 3 s "
        "(Connection refused); start process 0 there, or check LT_JAX_COORDINATOR / the firewall"
    ), out


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LT_JAX_COORDINATOR": "h:1"}, "LT_JAX_NUM_PROCESSES, LT_JAX_PROCESS_ID not set"),
        (
            {"LT_JAX_COORDINATOR": "h", "LT_JAX_NUM_PROCESSES": "2", "LT_JAX_PROCESS_ID": "0"},
            "is not host:port",
        ),
        (
            {"LT_JAX_COORDINATOR": "h:1", "LT_JAX_NUM_PROCESSES": "2", "LT_JAX_PROCESS_ID": "2"},
            "outside 0..1",
        ),
        (
            {"LT_JAX_COORDINATOR": "h:1", "LT_JAX_NUM_PROCESSES": "two", "LT_JAX_PROCESS_ID": "0"},
            "must be integers",
        ),
    ],
)
def test_inconsistent_cluster_variables_are_one_line(env, message):
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.settings(env)


def test_cluster_variables():
    assert distributed.settings({}) is None
    assert distributed.settings({"LT_JAX_MULTIHOST": "1"}) == {}
    assert distributed.settings({"LT_JAX_MULTIHOST": "0"}) is None
    env = {"LT_JAX_COORDINATOR": "10.0.0.2:1234", "LT_JAX_NUM_PROCESSES": "4"}
    assert distributed.settings({**env, "LT_JAX_PROCESS_ID": "3"}) == {
        "coordinator": "10.0.0.2:1234",
        "num_processes": 4,
        "process_id": 3,
    }


def _benchmark():
    import importlib.util

    path = os.path.join(ROOT, "benchmarks", "imagenet_lt_synthetic.py")
    spec = importlib.util.spec_from_file_location("imagenet_lt_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_streamed_image_is_read_once_per_epoch_across_two_processes(tmp_path):
    """A small ImageNet-LT-shaped list (OLTR format, lt_jax's loader and Grain) read by a
    2-process cluster: each process reads its half of every global batch, together every
    image exactly once. Each image is one flat colour that encodes its line in the list, so
    the check reads what was decoded, after the random-resized-crop and the flip."""
    from PIL import Image

    bench = _benchmark()
    counts = [30, 20, 14, 10, 8, 6, 4, 4]  # 96 images: 12 global batches of 8
    lines, k = [], 0
    for c, n in enumerate(counts):
        os.makedirs(tmp_path / "train" / f"n{c:05d}")
        for i in range(n):
            colour = (k % 256, k // 256, 7)
            Image.new("RGB", (20, 24), colour).save(tmp_path / "train" / f"n{c:05d}" / f"{i}.png")
            lines.append(f"train/n{c:05d}/{i}.png {c}\n")
            k += 1
    (tmp_path / "ImageNet_LT_train.txt").write_text("".join(lines))
    (tmp_path / "ImageNet_LT_test.txt").write_text("".join(lines[::10]))
    results = bench.run_cluster(
        str(tmp_path), batch=8, size=16, threads=2, counts=counts, record=True, timeout=300
    )
    assert [r["process"] for r in results] == [0, 1] and results[0]["processes"] == 2
    assert [len(r["seen"]) for r in results] == [48, 48]
    assert results[0]["order"] == results[1]["order"]  # one epoch order on both hosts
    bench.check_once_per_epoch(results, 8)
