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
