#!/usr/bin/env bash
# Cloud TPU VM helper: create a TPU VM (or pod slice), copy lt_jax to every worker, set it
# up, start a run on all workers at once, and delete it. Every setting comes from the
# environment; nothing project-specific or secret is stored in the repository.
#
#   export PROJECT=my-project ZONE=us-central2-b TPU_NAME=lt-jax ACCEL_TYPE=v4-32
#   export CONFIG='configs/imagenet_lt.py:method=fbl,data_dir=/mnt/data/imagenet'
#   export WORKDIR=/mnt/runs/inlt_fbl          # shared disk or gcsfuse mount on every worker
#   bash launch/tpu_vm.sh create && bash launch/tpu_vm.sh copy && bash launch/tpu_vm.sh setup
#   bash launch/tpu_vm.sh run                  # starts python -m lt_jax.main on all workers
#   bash launch/tpu_vm.sh delete
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${TPU_NAME:?set TPU_NAME}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-lt_jax}"
here="$(cd "$(dirname "$0")/.." && pwd)"

tpu() { gcloud compute tpus tpu-vm "$@" --project="$PROJECT" --zone="$ZONE"; }

case "${1:-}" in
  create)
    : "${ACCEL_TYPE:?set ACCEL_TYPE, e.g. v4-8 or v5litepod-16}"
    tpu create "$TPU_NAME" --accelerator-type="$ACCEL_TYPE" --version="$RUNTIME_VERSION"
    ;;
  copy)
    # Ship the working tree (no venvs, no workdirs) to every worker.
    tar -C "$here" --exclude='.git' --exclude='.venv' --exclude='venv' --exclude='workdir*' \
      -czf /tmp/lt_jax_src.tgz .
    tpu scp /tmp/lt_jax_src.tgz "$TPU_NAME":~/ --worker=all
    tpu ssh "$TPU_NAME" --worker=all \
      --command="mkdir -p ~/$REMOTE_DIR && tar -xzf ~/lt_jax_src.tgz -C ~/$REMOTE_DIR"
    ;;
  setup)
    tpu ssh "$TPU_NAME" --worker=all --command="cd ~/$REMOTE_DIR && bash launch/setup_worker.sh tpu"
    ;;
  run)
    : "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
    tpu ssh "$TPU_NAME" --worker=all \
      --command="cd ~/$REMOTE_DIR && CONFIG='$CONFIG' WORKDIR='$WORKDIR' bash launch/run.sh"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    echo "usage: $0 create|copy|setup|run|delete (settings from the environment)" >&2
    exit 2
    ;;
esac
