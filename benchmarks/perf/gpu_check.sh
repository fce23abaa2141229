#!/usr/bin/env bash
# The GPU check, sized for one ~10-minute slot on one card:
#   1. gpu_pipeline.py: `alignctl run` end to end (DINOv2-L/14 @336, random weights, 3000 JPEGs of 1-2 MP)
#      against the bare model, and the decode rate per CPU core: does the data path keep up?
#   2. gpu_check.py: DINOv2-L and Qwen2.5-VL-7B alone (images/s per batch size, memory, FLOPs).
# `bash benchmarks/perf/gpu_check.sh --smoke` runs both on tiny sizes on any device (seconds; a test does).
# Results go to $GPU_CHECK_OUT (default benchmarks/results). Needs torch, timm, transformers and this
# checkout importable (pip install -e . or PYTHONPATH); never needed for CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
# without an install, the built-in plugins import as aligncore_plugins through a link to plugins/
python -c "import aligncore_plugins" 2>/dev/null || [ -e aligncore_plugins ] || ln -s plugins aligncore_plugins 2>/dev/null || true
OUT="${GPU_CHECK_OUT:-benchmarks/results}"
SMOKE=()
[ "${1:-}" = "--smoke" ] && SMOKE=(--smoke)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
status=0
timeout "${PIPELINE_TIMEOUT_S:-240}" python benchmarks/perf/gpu_pipeline.py "${SMOKE[@]}" --out "$OUT/gpu_pipeline" || status=$?
timeout "${MODELS_TIMEOUT_S:-330}" python benchmarks/perf/gpu_check.py "${SMOKE[@]}" --seconds "${SECONDS_PER_CONFIG:-6}" \
  --out "$OUT/gpu_check" || status=$?
exit $status
