#!/usr/bin/env bash
# Creates ~/lt_jax_venv on this machine and installs lt_jax with an accelerator extra.
#   bash launch/setup_worker.sh tpu|cuda|cpu
set -euo pipefail
extra="${1:-cpu}"
cd "$(dirname "$0")/.."
python3 -m venv ~/lt_jax_venv
. ~/lt_jax_venv/bin/activate
pip install -q --upgrade pip
case "$extra" in
  tpu) pip install -q -e '.[tpu]' ;;
  cuda) pip install -q -e '.[cuda]' ;;
  cpu) pip install -q -e . ;;
  *) echo "unknown accelerator $extra (tpu|cuda|cpu)" >&2; exit 2 ;;
esac
python -c "import jax; print(jax.devices())"
