#!/usr/bin/env bash
# Every GPU path in one unattended run (<= ~8 min); skips cleanly (exit 0) without an NVIDIA GPU.
# Usage: bash tools/gpu_check.sh [OUT.json]   (default tools/results/gpu_check.json). See tools/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" tools/gpu_check.py "$@"
