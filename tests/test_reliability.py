"""Nothing lost, nothing cryptic: the workdir lock, NaN-free checkpoints, checkpoint fallback,
the evaluation record, one-line errors for config and workdir mistakes."""

import glob
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types

import jax
import numpy as np
import pytest
from PIL import Image

from lt_jax import checkpoint, distributed, loop, sweep, train
from lt_jax.data import datasets
from lt_jax.workdir import WorkdirLock, WorkdirLocked
from tests import copy_run, xla_flags
from tests.test_train import ROOT, sigterm_at_step, tiny

CLI_ENV = dict(os.environ, XLA_FLAGS=xla_flags(1))


def _write_lock(workdir, **record):
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "lock")
    with open(path, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": "x", **record}, f)
    return path


# --- the workdir lock ---------------------------------------------------------------------------


def test_a_second_run_on_a_locked_workdir_stops_at_once(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a: loads.append(a))
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(WorkdirLocked, match=f"in use by pid {os.getpid()} on "):
            train.train_and_evaluate(tiny("ce"), str(tmp_path))
    assert loads == []  # refused before reading any data
    assert not os.path.exists(tmp_path / "lock")  # released by its holder


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    path = _write_lock(str(tmp_path), pid=int(dead.stdout))
    lock = WorkdirLock(str(tmp_path))
    with caplog.at_level("WARNING", logger="lt_jax.workdir"):
        lock.acquire()
    assert f"process {int(dead.stdout)} is gone" in caplog.text
    assert json.load(open(path))["token"] == lock.record["token"]
    lock.release()
    assert not os.path.exists(path)


def test_lock_from_another_host_is_stale_only_without_heartbeat(tmp_path):
    path = _write_lock(str(tmp_path), host="elsewhere.example", pid=1)
    with pytest.raises(WorkdirLocked, match="in use by pid 1 on elsewhere.example"):
        WorkdirLock(str(tmp_path), stale_s=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    lock = WorkdirLock(str(tmp_path), stale_s=60)
    lock.acquire()
    lock.release()


def test_the_holder_keeps_its_heartbeat_fresh(tmp_path):
    lock = WorkdirLock(str(tmp_path), heartbeat_s=0.05)
    lock.acquire()
    old = time.time() - 100
    os.utime(lock.path, (old, old))
    time.sleep(0.5)
    assert time.time() - os.path.getmtime(lock.path) < 5
    lock.release()


def test_cli_second_process_on_a_locked_workdir_exits_with_one_line(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lt_jax.workdir import WorkdirLock; "
         f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run(
            [sys.executable, "-m", "lt_jax.main", "--config", "configs/default.py:runlocal",
             "--workdir", str(tmp_path)],
            cwd=ROOT, env=CLI_ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert (
        errors
        == [
            line
            for line in errors
            if line.startswith("lt_jax: error: ") and "in use by pid" in line
        ]
        and len(errors) == 1
    ), out.stderr


# --- checkpoints --------------------------------------------------------------------------------


def test_sigterm_never_checkpoints_a_nan_state(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "install_sigterm", sigterm_at_step(3))
    config = tiny("ce", lr=float("nan"), log_every_steps=1000)  # no loss check before step 3
    with pytest.raises(train.TrainingError, match="stage1 state is not finite at step 3"):
        train.train_and_evaluate(config, str(tmp_path))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints" / "stage1"))
    assert ckpt.latest_step() is None
    ckpt.close()


def _corrupt(step_dir):
    for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True):
        if os.path.isfile(f) and "metadata" not in os.path.basename(f):
            with open(f, "wb") as fh:
                fh.write(b"garbage")


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixture
def test_a_corrupt_latest_checkpoint_falls_back_to_the_intact_one(sweep_root, tmp_path):
    config = tiny("ce")  # 2 epochs of 15 steps, a checkpoint after each: the sweep's ce_s0
    run = copy_run(sweep_root, "ce_s0", tmp_path / "run")
    first = json.load(open(run / "results.json"))
    stage1 = run / "checkpoints" / "stage1"
    assert sorted(os.listdir(stage1)) == ["15", "30"]
    _corrupt(str(stage1 / "30"))
    again = train.train_and_evaluate(config, str(run))  # resumes from 15, trains epoch 2
    assert again["final"]["per_class_accuracy"] == first["final"]["per_class_accuracy"]
    kept = glob.glob(str(run / "checkpoints" / "stage1.damaged" / "30-*"))
    assert len(kept) == 1 and os.listdir(kept[0])  # the damaged one set aside, not deleted
    assert sorted(os.listdir(stage1)) == ["15", "30"]


@pytest.mark.parametrize(
    "error, processes, bounded",
    [
        (TimeoutError("disk"), 2, False),  # any other failure: the pending save is finished
        (train.TrainingError("SIGTERM"), 2, False),
        (KeyboardInterrupt(), 2, False),
        (jax.errors.JaxRuntimeError("INTERNAL: out of memory"), 1, False),  # one process
        (jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed"), 2, True),
        (distributed.DistributedError("process 1 did not reach check"), 2, True),
    ],
    ids=["oserror", "sigterm", "ctrl-c", "one-process", "collective", "agreement"],
)
def test_a_stage_waits_for_its_pending_save_boundedly_when_peers_may_be_gone(
    monkeypatch, error, processes, bounded
):
    """A save's finalisation meets the other processes at a barrier: a process whose peers
    may be gone waits for it at most LT_JAX_PEER_TIMEOUT, capped at 30 s (unbounded, it
    waited for JAX's heartbeat timeout, 85 s in the cluster test's SIGKILL phase); any other
    failure waits until the save is finished, so it is not lost."""
    closes = []

    class Checkpointer:
        def __init__(self, directory):
            pass

        def close(self, timeout=None):
            closes.append(timeout)
            return True

    def fail(*args):
        raise error

    monkeypatch.setattr(loop.checkpoint, "Checkpointer", Checkpointer)
    monkeypatch.setattr(loop, "_train", fail)
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setenv("LT_JAX_PEER_TIMEOUT", "12")
    stage = types.SimpleNamespace(name="stage1", batch_size=64)
    ctx = types.SimpleNamespace(
        config=None, data=None, workdir="w", input=types.SimpleNamespace(epoch_sizes=lambda b: [b])
    )
    with pytest.raises(type(error)):
        loop.run_stage(stage, ctx)
    assert closes == [12.0 if bounded else None]
    monkeypatch.delenv("LT_JAX_PEER_TIMEOUT")
    assert distributed.save_grace_s() == 30.0  # the default peer timeout (300 s), capped


def test_a_bounded_close_gives_up_on_a_save_that_waits_for_absent_peers(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
    ckpt.close()
    released = threading.Event()

    class Waiting:  # a save whose finalisation waits at a barrier
        def close(self):
            released.wait(60)

    class Failing:  # the barrier reports the peer's heartbeat timeout
        def close(self):
            raise RuntimeError("Barrier failed")

    ckpt._manager = Waiting()
    start = time.monotonic()
    assert ckpt.close(timeout=0.5) is False
    assert time.monotonic() - start < 5
    released.set()
    ckpt._manager = Failing()
    assert ckpt.close(timeout=5) is False
    ckpt._manager = types.SimpleNamespace(close=lambda: None)
    assert ckpt.close(timeout=5) is True


# --- the evaluation record ----------------------------------------------------------------------


@pytest.mark.xdist_group("sweep_root")  # one worker builds the shared fixture
def test_evaluate_leaves_the_training_record_as_it_was(sweep_root, tmp_path):
    run = copy_run(sweep_root, "ce_s0", tmp_path / "run")  # tiny("ce") trained
    before = (run / "results.json").read_bytes()
    trained = json.loads(before)
    evaluated = train.train_and_evaluate(tiny("ce"), str(run), eval_only=True)
    assert (run / "results.json").read_bytes() == before
    record = json.load(open(run / "evaluation.json"))
    assert record["final"]["top1"] == evaluated["final"]["top1"] == trained["final"]["top1"]


# --- one-line errors ----------------------------------------------------------------------------


def _cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "lt_jax.main", *args], cwd=cwd, env=CLI_ENV,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "config_args, message",
    [
        (["configs/default.py:method=nosuch"], "unknown method 'nosuch'; valid: "),
        (["configs/default.py:methd=ce"], "unknown config argument 'methd'"),
        (["configs/default.py", "--config.learning_rate=0.1"], "no key 'learning_rate'"),
        (["configs/default.py:epochs=ten"], "epochs='ten' is not a int"),
        (["configs/default.py", "--config.epochs=ten"], "--config.epochs=ten"),
        (["configs/default.py:stage2=nosuch"], "unknown stage2 preset 'nosuch'"),
        (["configs/nosuch.py"], "No such file or directory: 'configs/nosuch.py'"),
        (["configs/default.py:epochs=0"], "config.epochs must be a positive integer, got 0"),
        (["configs/default.py", "--config.epochs=-3"], "must be a positive integer, got -3"),
        (["configs/default.py", "--config.sampler=cbn"], "unknown config.sampler 'cbn'"),
        (["configs/default.py", "--config.mixup_alpha=1", "--config.cutmix_alpha=1"], "not both"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(tmp_path, config_args, message):
    config, *overrides = config_args
    out = _cli("--config", config, *overrides, "--workdir", str(tmp_path / "w"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
    assert out.stderr.startswith("lt_jax: error: ") and message in out.stderr, out.stderr
    assert not os.path.exists(tmp_path / "w")  # nothing written


def test_settings_knowable_before_training_fail_before_the_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a: pytest.fail("data was read"))
    for overrides, message in (
        (dict(sampler="cbn"), "unknown config.sampler"),
        (dict(mixup_alpha=1.0, cutmix_alpha=1.0), "not both"),
        (dict(epochs=0), "positive integer"),
        (dict(model="resnet99"), "unknown model 'resnet99'"),
    ):
        with pytest.raises(ValueError, match=message):
            train.train_and_evaluate(tiny("ce", **overrides), str(tmp_path))
    assert not os.listdir(tmp_path)


def test_workdir_mistakes_are_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = _cli("--config", "configs/default.py:runlocal", "--workdir", str(tmp_path / "afile/w"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"lt_jax: error: cannot create workdir {tmp_path / 'afile/w'}: Not a directory"
    )
    assert "Traceback" not in out.stderr


def test_a_corrupt_cifar_folder_is_one_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"\x80\x04garbage\nmore\nlines")
    out = _cli(
        "--config", f"configs/cifar_lt.py:method=ce,runlocal,data_dir={folder}",
        "--workdir", str(tmp_path / "w"),
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("lt_jax: error: ") and "not a readable CIFAR batch file" in last
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "w" / "config.json")  # the fixed rerun is not refused


def test_sweep_checks_every_run_before_the_first(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: calls.append(a))
    with pytest.raises(SystemExit) as e:
        sweep.main(["--config", os.path.join(ROOT, "configs", "default.py"),
                    "--root", str(tmp_path), "--methods", "ce,nosuch"])  # fmt: skip
    assert e.value.code == 2 and calls == []


# --- data the model adapts to -------------------------------------------------------------------


def test_an_rgb_image_folder_trains_on_the_default_small_cnn(tmp_path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", (40, 20, 8)), ("test", (8, 8, 8))):
        for c, n in enumerate(per_class):
            os.makedirs(tmp_path / split / f"c{c}")
            for k in range(n):
                image = rng.integers(0, 255, (32, 32, 3), np.uint8)
                Image.fromarray(image).save(tmp_path / split / f"c{c}" / f"{k}.png")
    config = tiny("ce", epochs=1, batch_size=8)
    config.dataset.name, config.dataset.data_dir = "image_folder", str(tmp_path)
    config.dataset.profile = "none"
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["train_class_counts"] == [40, 20, 8]
    assert np.isfinite(results["final"]["top1"])


def test_resuming_drops_the_metric_lines_written_after_the_checkpoint(tmp_path):
    """A run killed after its last checkpoint (step 20) wrote lines up to step 30 and a torn
    one; resumed from step 20 it writes 21-30 again, so those go: each step once."""
    from lt_jax.workdir import MetricWriter

    writer = MetricWriter(str(tmp_path))
    for step in (10, 20, 30):
        writer.write(step, {"stage1/train/loss": step / 10})
        writer.write(step, {"stage1/test/top1": step / 100})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "stage1/tr')
    writer = MetricWriter(str(tmp_path))
    writer.rewind("stage1", 20)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [10, 10, 20, 20]
    writer.write(25, {"stage1/train/loss": 2.5})
    writer.write(3, {"stage2/train/loss": 0.3})
    writer.write(6, {"stage2/train/loss": 0.6})
    writer.rewind("stage2", 4)  # stage 2 counts from 0 again: stage 1's later steps stay
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(d["step"], next(k for k in d if k != "step")) for d in lines] == [
        (10, "stage1/train/loss"),
        (10, "stage1/test/top1"),
        (20, "stage1/train/loss"),
        (20, "stage1/test/top1"),
        (25, "stage1/train/loss"),
        (3, "stage2/train/loss"),
    ]
    writer.close()


def test_a_resumed_run_counts_the_wall_time_of_the_process_before_it(tmp_path, monkeypatch):
    """results.json's wall time of a run stopped by SIGTERM and resumed is the time of both
    processes (each timed here around its call), not only the last one's. Without the
    first process's time it would be short by at least that process's compiling, seconds."""
    config = tiny("ce", epochs=2)
    monkeypatch.setattr(train, "install_sigterm", sigterm_at_step(20))
    started = time.time()
    with pytest.raises(train.TrainingError, match="SIGTERM: saved stage1 step 20"):
        train.train_and_evaluate(config, str(tmp_path))
    first = time.time() - started
    monkeypatch.undo()
    saved = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    at_sigterm = next(d["stage1/wall_time_s"] for d in saved[::-1] if d["step"] == 20)
    assert 0 < at_sigterm <= first + 0.1
    started = time.time()
    results = train.train_and_evaluate(config, str(tmp_path))
    second = time.time() - started
    # The second process's part is all of its call but writing results.json (well under 1 s).
    assert at_sigterm + second - 1.0 < results["wall_time_s"] <= at_sigterm + second + 0.1
    assert json.load(open(tmp_path / "results.json"))["wall_time_s"] == results["wall_time_s"]


def test_a_stage_started_again_without_a_checkpoint_drops_its_earlier_lines(tmp_path):
    """Stage 1 finished (its checkpoint line says 100 s); a process killed in stage 2 before
    stage 2's first checkpoint wrote a loss line. The next process restores stage 1 (its
    time counts on from 100 s) and starts stage 2 from step 0: that line goes, stage 1's
    stay, and the time is still stage 1's."""
    from lt_jax.workdir import MetricWriter

    writer = MetricWriter(str(tmp_path))
    writer.write(10, {"stage1/train/loss": 1.0})
    writer.write(20, {"stage1/wall_time_s": 100.0})
    writer.write(3, {"stage2/train/loss": 0.3})
    writer.close()
    started = time.time()
    writer = MetricWriter(str(tmp_path), started=started)
    writer.rewind("stage1", 20)
    writer.restart("stage2")
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert lines == [
        {"step": 10, "stage1/train/loss": 1.0},
        {"step": 20, "stage1/wall_time_s": 100.0},
    ]
    assert 100.0 <= writer.elapsed() <= 100.0 + time.time() - started
    writer.close()
