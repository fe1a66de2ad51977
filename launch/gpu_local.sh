#!/usr/bin/env bash
# Single host, all local GPUs, data parallel (one process; the batch is sharded over
# every visible GPU by the mesh). Choose GPUs with CUDA_VISIBLE_DEVICES.
#
#   bash launch/setup_worker.sh cuda
#   CONFIG='configs/cifar_lt.py:method=gcl,data_dir=/data/cifar-10-python.tar.gz' \
#   WORKDIR=/tmp/c10_gcl bash launch/gpu_local.sh
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."
. ~/lt_jax_venv/bin/activate
# Let XLA pre-allocate less than all GPU memory so the Grain workers' pinned buffers fit.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
python -c "import jax; print('devices:', jax.devices())"
exec python -m lt_jax.main --config "$CONFIG" --workdir "$WORKDIR" ${EXTRA_FLAGS:-}
