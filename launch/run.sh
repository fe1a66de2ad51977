#!/usr/bin/env bash
# Runs on every host of a cluster, one process per host: a TPU pod worker (started by
# launch/tpu_vm.sh run), a node of a multi-node GPU cluster (by hand, pdsh or srun). Only
# process 0 writes logs and results; every process writes its part of the checkpoints.
#
#   TPU VM pod, SLURM, Open MPI: nothing to set, JAX detects the cluster (LT_JAX_MULTIHOST=1).
#   Any other cluster, on each of N hosts (process 0's host runs the coordinator):
#     LT_JAX_COORDINATOR=10.0.0.2:8476 LT_JAX_NUM_PROCESSES=N LT_JAX_PROCESS_ID=i \
#     CONFIG=... WORKDIR=/shared/run bash launch/run.sh
# LT_JAX_INIT_TIMEOUT (s, default 120) bounds the wait for the peers at start;
# LT_JAX_PEER_TIMEOUT (s, default 300) the wait for a peer at the per-step stop check.
# See docs/scale.md.
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."
. "${LT_JAX_VENV:-$HOME/lt_jax_venv}/bin/activate"
if [ -n "${LT_JAX_COORDINATOR:-}" ]; then
  : "${LT_JAX_NUM_PROCESSES:?set LT_JAX_NUM_PROCESSES with LT_JAX_COORDINATOR}"
  : "${LT_JAX_PROCESS_ID:?set LT_JAX_PROCESS_ID (0..N-1) with LT_JAX_COORDINATOR}"
  export LT_JAX_COORDINATOR LT_JAX_NUM_PROCESSES LT_JAX_PROCESS_ID
elif [ -n "${SLURM_PROCID:-}" ] && [ -z "${LT_JAX_MULTIHOST:-}" ]; then
  export LT_JAX_MULTIHOST=1  # srun: JAX reads SLURM_* (one task per node)
else
  export LT_JAX_MULTIHOST="${LT_JAX_MULTIHOST:-1}"  # TPU VM: JAX reads the TPU metadata
fi
exec python -m lt_jax.main --config "$CONFIG" --workdir "$WORKDIR" ${EXTRA_FLAGS:-}
