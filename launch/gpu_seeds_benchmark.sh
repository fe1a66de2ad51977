#!/usr/bin/env bash
# Issue 16's GPU measurement, in one go on ONE lent GPU: K seeds in one program
# (config.num_seeds) against one seed, then one 200-epoch CIFAR-10-LT recipe with K seeds timed
# end to end. Prints everything; the run's results.json and log go to $OUT.
#
# Prepare here exactly as for launch/gpu_reproduce_cifar_lt.sh (its header): the packed
# split in .pack/ and the missing wheels in .whl/; carry both. Then, there:
#   bash launch/gpu_seeds_benchmark.sh
# Settings (environment): BATCHES (64,128), SEED_COUNTS (1,2,4,8,16), STEPS (20 per round),
# ROUNDS (3), METHOD (ce), NUM_SEEDS (3), EPOCHS (200), RUN_S (300: the timed run is stopped
# after this many seconds, checkpoint kept, and its images/s so far is the measurement; a
# 15-minute slot holds the throughput lines and about 5 minutes of the run), DATA_DIR,
# RUNS (/tmp/runs), OUT (/tmp/out).
# Goal (issue 16): K=4 seeds in at most 1.5x the wall time of one seed.
set -uo pipefail
cd "$(dirname "$0")/.."
BATCHES="${BATCHES:-64,128}"
SEED_COUNTS="${SEED_COUNTS:-1,2,4,8,16}"
STEPS="${STEPS:-20}"
ROUNDS="${ROUNDS:-3}"
METHOD="${METHOD:-ce}"
NUM_SEEDS="${NUM_SEEDS:-3}"
EPOCHS="${EPOCHS:-200}"
RUN_S="${RUN_S:-300}"
# shellcheck source=launch/gpu_setup.sh
. launch/gpu_setup.sh

IFS=, read -r -a batches <<< "$BATCHES"
for b in "${batches[@]}"; do
  say "ResNet-32 train step, batch $b, K = $SEED_COUNTS seeds in one program"
  python3 benchmarks/throughput.py --batch "$b" --steps "$STEPS" --rounds "$ROUNDS" \
    --seeds "$SEED_COUNTS" --no-scaling 2>&1 | grep -v -i warning
done

name="${METHOD}_k${NUM_SEEDS}"
say "timing the $EPOCHS-epoch CIFAR-10-LT $METHOD recipe with $NUM_SEEDS seeds ($name)"
python3 -m lt_jax.main \
  --config "configs/cifar_lt.py:method=$METHOD,epochs=$EPOCHS,data_dir=$DATA_DIR" \
  --config.num_seeds="$NUM_SEEDS" --workdir "$RUNS/$name" > "$RUNS/$name.log" 2>&1 &
pid=$!
began=$(date +%s)
while kill -0 "$pid" 2> /dev/null; do
  if [ $(($(date +%s) - began)) -ge "$RUN_S" ]; then
    say "$RUN_S s: stopping the run (SIGTERM saves a checkpoint)"
    kill -TERM "$pid"
    wait "$pid"
    break
  fi
  sleep 10
done
wait "$pid" 2> /dev/null
took=$(($(date +%s) - began))
grep -E "compiled and ran|epoch [0-9]+/[0-9]+ step|test top-1|SIGTERM" "$RUNS/$name.log" | tail -8
say "$name: $took s wall (compile included; the last step line above has the images/s)"
cp "$RUNS/$name.log" "$OUT/" 2> /dev/null
cp "$RUNS/$name/results.json" "$OUT/${name}_results.json" 2> /dev/null
tail -12 "$RUNS/$name.log"
