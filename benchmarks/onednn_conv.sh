#!/usr/bin/env bash
# Builds and runs benchmarks/onednn_conv.cpp against oneDNN 3.2 (the CPU-only GNU OpenMP build
# from PyPI); needs pip (network), g++ and libgomp. Nothing is installed into the environment.
set -euo pipefail
cd "$(dirname "$0")"
work="$(mktemp -d)"
python -m pip download -q --no-deps -d "$work" onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0
(cd "$work" && for w in *.whl; do python -m zipfile -e "$w" .; done)
inc="$work/onednn_devel_cpu_gomp-2023.2.0.data/data/include"
lib="$work/onednn_cpu_gomp-2023.2.0.data/data/lib"
g++ -O2 -std=c++17 onednn_conv.cpp -I"$inc" -L"$lib" -ldnnl -Wl,-rpath,"$lib" -o "$work/onednn_conv"
threads="${OMP_NUM_THREADS:-$(nproc)}"
echo "== plain layouts (NHWC / HWIO), $threads threads"
OMP_NUM_THREADS="$threads" "$work/onednn_conv"
echo "== oneDNN's blocked layouts, reorders not counted"
OMP_NUM_THREADS="$threads" "$work/onednn_conv" any
rm -rf "$work"
