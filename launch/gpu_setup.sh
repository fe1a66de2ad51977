# Sourced by the launch/gpu_*.sh scripts on a lent GPU: RUNS and OUT folders, a `say`
# with the seconds since start, the packed CIFAR-10 extracted (unless DATA_DIR is set),
# the carried wheels installed, and a check that lt_jax imports (exits 1 with the fix).
RUNS="${RUNS:-/tmp/runs}"
OUT="${OUT:-/tmp/out}"
start=$(date +%s)
say() { echo "[t+$(($(date +%s) - start))s] $*"; }
mkdir -p "$RUNS" "$OUT"

if [ -z "${DATA_DIR:-}" ]; then
  mkdir -p /tmp/data && tar -xJf .pack/cifar-10-batches-py.tar.xz -C /tmp/data
  DATA_DIR=/tmp/data/cifar-10-batches-py
fi
if [ -d .whl ]; then
  python3 -m pip install -q --no-deps --no-index --target /tmp/wheels .whl/*.whl && \
    export PYTHONPATH="/tmp/wheels:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
if ! python3 -c "import lt_jax.train" 2> /tmp/import_error; then
  echo "lt_jax does not import on this machine: $(tail -1 /tmp/import_error); carry the missing" \
    "packages as wheels in .whl (see launch/gpu_reproduce_cifar_lt.sh's header)"
  exit 1
fi
