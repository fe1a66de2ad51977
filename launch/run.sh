#!/usr/bin/env bash
# Runs on every worker of a TPU pod (started by launch/tpu_vm.sh run): multi-host JAX
# initialisation, then the trainer. Only process 0 writes logs and results.
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."
. ~/lt_jax_venv/bin/activate
export LT_JAX_MULTIHOST=1   # lt_jax.main calls jax.distributed.initialize()
exec python -m lt_jax.main --config "$CONFIG" --workdir "$WORKDIR" ${EXTRA_FLAGS:-}
