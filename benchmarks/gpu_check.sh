#!/usr/bin/env bash
# The device check in one command: every CUDA test, CAM time against pytorch-grad-cam, each transform
# against a per-sample loop and v2.CutMix, the default step against a plain step, and peak memory, as one
# Markdown table (benchmarks/results/gpu_check.md). About 8 minutes at most on one GPU (a hard limit below).
#
#   bash benchmarks/gpu_check.sh              # on a GPU machine, from anywhere in the checkout
#   bash benchmarks/gpu_check.sh --dry-run    # on the CPU at tiny sizes: the same code paths and table
#
# Further options go to benchmarks/gpu_check.py (--out FILE, --skip SECTION..., --test-workers N).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
LIMIT="${GPU_CHECK_LIMIT:-480}"  # seconds: the whole check must fit in 8 minutes
exec timeout --signal=INT --kill-after=20 "$LIMIT" "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
