"""launch/ scripts: settings from the environment, commands on all workers (gcloud faked)."""

import os
import subprocess

ROOT = os.path.join(os.path.dirname(__file__), "..")


def run_script(tmp_path, args, env_extra):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    log = tmp_path / "gcloud.log"
    (fake / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (fake / "gcloud").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "HOME": str(tmp_path), **env_extra}
    out = subprocess.run(
        ["bash", "launch/tpu_vm.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    return out, (log.read_text() if log.exists() else "")


def test_tpu_run_starts_every_worker(tmp_path):
    env = dict(PROJECT="p", ZONE="z", TPU_NAME="t", CONFIG="configs/x.py:a=1", WORKDIR="/w")
    out, log = run_script(tmp_path, ["run"], env)
    assert out.returncode == 0, out.stderr
    assert "tpu-vm ssh t --worker=all" in log and "--project=p --zone=z" in log
    assert "CONFIG='configs/x.py:a=1' WORKDIR='/w' bash launch/run.sh" in log


def test_tpu_script_requires_settings(tmp_path):
    out, log = run_script(tmp_path, ["create"], {"PROJECT": "p", "ZONE": "z"})
    assert out.returncode != 0 and "TPU_NAME" in out.stderr and log == ""
    out, _ = run_script(tmp_path, ["frobnicate"], dict(PROJECT="p", ZONE="z", TPU_NAME="t"))
    assert out.returncode == 2 and "usage" in out.stderr


def run_worker(tmp_path, env_extra):
    """launch/run.sh with a fake venv whose python prints the LT_JAX_ variables it got."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").write_text('#!/bin/sh\nenv | grep "^LT_JAX_" | sort\necho "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LT_JAX_VENV": str(venv)}
    env.update(CONFIG="configs/x.py", WORKDIR="/w", **env_extra)
    return subprocess.run(
        ["bash", "launch/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_worker_script_sets_the_cluster_variables(tmp_path):
    tpu = run_worker(tmp_path, {})
    assert tpu.returncode == 0, tpu.stderr
    assert "LT_JAX_MULTIHOST=1" in tpu.stdout and "LT_JAX_COORDINATOR" not in tpu.stdout
    assert "-m lt_jax.main --config configs/x.py --workdir /w" in tpu.stdout
    cluster = dict(LT_JAX_COORDINATOR="10.0.0.2:8476", LT_JAX_NUM_PROCESSES="4")
    gpu = run_worker(tmp_path, {**cluster, "LT_JAX_PROCESS_ID": "3"})
    assert gpu.returncode == 0, gpu.stderr
    assert "LT_JAX_COORDINATOR=10.0.0.2:8476" in gpu.stdout and "LT_JAX_PROCESS_ID=3" in gpu.stdout
    assert "LT_JAX_MULTIHOST" not in gpu.stdout
    partial = run_worker(tmp_path, cluster)
    assert partial.returncode != 0 and "LT_JAX_PROCESS_ID" in partial.stderr
