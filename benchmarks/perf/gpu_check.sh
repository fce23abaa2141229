#!/usr/bin/env bash
# The GPU check, sized for a ~10-minute slot on one card. Needs torch, timm, transformers and
# this checkout importable (pip install -e . or PYTHONPATH); never needed for CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
[ -e aligncore_plugins ] || ln -s plugins aligncore_plugins 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 540 python benchmarks/perf/gpu_check.py --seconds "${SECONDS_PER_CONFIG:-6}" "$@"
