#!/usr/bin/env bash
# The CIFAR-100-LT (IF 100) twin of reproduce_cifar10_lt.sh: the same recipes, methods and
# report on the lossless cifar-100-python folder (../shared/data/cifar-100-python once it is
# there, or the official archive cifar-100-python.tar.gz). Published top-1 (best epoch):
# FBL 45.22, LDAM-DRW 42.04, CB focal 39.60, CE 38.32 (LDAM-DRW paper).
set -euo pipefail
DATA_DIR="${DATA_DIR:-../shared/data/cifar-100-python}" DATASET=cifar100 \
  exec bash "$(dirname "$0")/reproduce_cifar10_lt.sh"
