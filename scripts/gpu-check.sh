#!/usr/bin/env bash
# One command for the first GPU that comes: see scripts/gpu_check.py (what it runs, where
# the results go). From a checkout, no install: torch, triton, numpy and pytest must be
# importable by $PYTHON (default python3).
#
#   scripts/gpu-check.sh              # everything, under gpu-check/<gpu>-<time>/ (< 8 min)
#   scripts/gpu-check.sh --dry-run    # list the steps, check their imports (no GPU needed)
#   scripts/gpu-check.sh --only cuda-tests kernel-bench --out /tmp/gc
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
