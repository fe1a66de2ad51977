#!/usr/bin/env bash
# The 200-epoch CIFAR-10-LT (IF 100) recipes, several methods x seeds at once on ONE GPU
# (CUDA MPS shares it between the processes), within a deadline; results tarred to $OUT.
#
# Made for a lent GPU that takes at most 64 MiB of files and reaches no network:
#   1. here:  python benchmarks/pack_cifar_lt.py --split-seeds 0            # .pack/, ~51 MiB
#             python -m pip download --only-binary=:all: -d .whl --python-version 3.12 \
#               --platform manylinux_2_28_x86_64 ml-collections grain
#             (what lt_jax imports and the device image lacks; keep .whl under ~10 MiB by
#             deleting wheels the image already has, e.g. numpy, protobuf)
#   2. there: bash launch/gpu_reproduce_cifar_lt.sh   (carry .pack and .whl)
# Settings (environment): METHODS (fbl,ldam_drw,cb_focal: the issue's three published
# targets first), SEEDS (0,1,2), EPOCHS (200), EVAL_EVERY (1: every epoch, so the best
# epoch is the papers' number; the final epoch stays the headline), DEADLINE_S (520: runs
# still going then are stopped, their checkpoints kept), DATA_DIR (default: the packed
# archive extracted to /tmp), RUNS (/tmp/runs), OUT (where runs.tar.gz and the report go),
# NUM_SEEDS (unset: one process per seed; K: one process per method training the K seeds
# from the first of SEEDS in one vmapped program, config.num_seeds=K, workdir <method>_kK).
# REFERENCE (unset: none; e.g. fbl or fbl,ldam_drw): those methods' released recipes also run
# whole in PyTorch beside lt_jax (benchmarks/torch_reference.py: the releases' model, init,
# schedule and criteria, written independently, same data and seeds, own draws), one process
# per method and seed, results in $RUNS/torch_<method>_s<seed>.json and reference.md: whether
# the releases' own recipe reaches the published number on this data. They keep no
# checkpoint: a reference run still going at the deadline is lost. REFERENCE_DEVICE: cuda.
# The pack holds the split-seed-0 images only, so a KPS run here uses split seed 0 (its
# release used 666; lt_jax refuses a split that would select a blanked image).
set -uo pipefail
cd "$(dirname "$0")/.."
METHODS="${METHODS:-fbl,ldam_drw,cb_focal}"
SEEDS="${SEEDS:-0,1,2}"
EPOCHS="${EPOCHS:-200}"
EVAL_EVERY="${EVAL_EVERY:-1}"
DEADLINE_S="${DEADLINE_S:-520}"

IFS=, read -r -a methods <<< "$METHODS"
IFS=, read -r -a seeds <<< "$SEEDS"
extra=()
if [ -n "${NUM_SEEDS:-}" ]; then
  seeds=("${seeds[0]}")
  extra=(--config.num_seeds="$NUM_SEEDS")
fi
IFS=, read -r -a references <<< "${REFERENCE:-}"
IFS=, read -r -a ref_seeds <<< "$SEEDS"
for m in "${references[@]}"; do
  case ",ce,cb_focal,ldam_drw,kps_ga,fbl,gcl," in
    *",$m,"*) ;;
    *) echo "REFERENCE=$REFERENCE: no PyTorch reference of $m (ce, cb_focal, ldam_drw," \
      "kps_ga, fbl, gcl)"; exit 2 ;;
  esac
done
# shellcheck source=launch/gpu_setup.sh
. launch/gpu_setup.sh
n=$(( ${#methods[@]} * ${#seeds[@]} ))
n_all=$(( n + ${#references[@]} * ${#ref_seeds[@]} ))
if command -v nvidia-cuda-mps-control > /dev/null && nvidia-smi > /dev/null 2>&1; then
  nvidia-cuda-mps-control -d && say "MPS on"
  # Each process takes its share of the GPU's memory instead of XLA's default 75%.
  export XLA_PYTHON_CLIENT_MEM_FRACTION
  XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / $n_all, 3))")
fi

say "training $n runs: methods $METHODS x seeds $SEEDS, $EPOCHS epochs, deadline ${DEADLINE_S}s"
pids=()
for m in "${methods[@]}"; do
  for s in "${seeds[@]}"; do
    args="method=$m,seed=$s,epochs=$EPOCHS,eval_every=$EVAL_EVERY,data_dir=$DATA_DIR"
    case "$m" in kps*) args="$args,split_seed=0" ;; esac
    name="${m}_s$s"
    [ -n "${NUM_SEEDS:-}" ] && name="${m}_k${NUM_SEEDS}"
    python3 -m lt_jax.main --config "configs/cifar_lt.py:$args" "${extra[@]}" \
      --workdir "$RUNS/$name" > "$RUNS/$name.log" 2>&1 &
    pids+=($!)
  done
done
for m in "${references[@]}"; do
  for s in "${ref_seeds[@]}"; do
    name="torch_${m}_s$s"
    python3 benchmarks/torch_reference.py --method "$m" --seed "$s" --epochs "$EPOCHS" \
      --eval-every "$EVAL_EVERY" --device "${REFERENCE_DEVICE:-cuda}" --threads 2 --data-dir "$DATA_DIR" \
      --out "$RUNS/$name.json" > "$RUNS/$name.log" 2>&1 &
    pids+=($!)
  done
done
[ ${#references[@]} -gt 0 ] && say "and the PyTorch reference: $REFERENCE x seeds $SEEDS"
while :; do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2> /dev/null && alive=$((alive + 1)); done
  [ "$alive" -eq 0 ] && break
  if [ $(($(date +%s) - start)) -ge "$DEADLINE_S" ]; then
    say "deadline: stopping $alive runs (SIGTERM saves a checkpoint)"
    for p in "${pids[@]}"; do kill -TERM "$p" 2> /dev/null; done
    sleep 20
    break
  fi
  sleep 20
  line=""
  for d in "$RUNS"/*/; do
    last=$(tail -c 200 "$d/metrics.jsonl" 2> /dev/null | tail -1 | cut -c1-60)
    line="$line $(basename "$d"):${last}"
  done
  say "$line"
done
say "training ended"
finished=$(ls -d "$RUNS"/*/results.json 2> /dev/null | xargs -r -n1 dirname)
if [ -n "$finished" ]; then
  # shellcheck disable=SC2086
  # The figures stay in /tmp (a lent GPU sends back at most 8 files).
  python3 -m lt_jax.report $finished --out /tmp/report > /dev/null && cp /tmp/report/report.md "$OUT/"
  cat "$OUT/report.md"
fi
if ls "$RUNS"/torch_*.json > /dev/null 2>&1; then
  python3 benchmarks/torch_reference.py --summarize "$RUNS"/torch_*.json | tee "$OUT/reference.md"
fi
tar -czf "$OUT/runs.tar.gz" -C "$RUNS" --exclude=checkpoints --exclude=tensorboard .
say "wrote $OUT/runs.tar.gz ($(du -h "$OUT/runs.tar.gz" | cut -f1)) and the report"
