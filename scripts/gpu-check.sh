#!/usr/bin/env bash
# Runs the GPU parity checks, the C++ harness and the CUDA benchmarks on a machine that has only the NVIDIA driver, given
# an addon and dist/ built elsewhere:  scripts/gpu-check.sh [path/to/node]
# Uses LONGCAT_ADDON (default build/Release/longcat.node).
set -uo pipefail
cd "$(dirname "$0")/.."
NODE="${1:-node}"
export LONGCAT_ADDON="${LONGCAT_ADDON:-build/Release/longcat.node}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || cat .device/commit 2>/dev/null || echo unknown)"
status=0
if [ -x build/Release/longcat_native_test ]; then
  echo "== C++ GEMM harness (test/native)"
  build/Release/longcat_native_test || status=1
fi
echo "== CUDA vs CPU parity and timings (scripts/gpu-check.mjs)"
"$NODE" scripts/gpu-check.mjs || status=1
echo "== CUDA microbenchmarks (bench/gpu.mjs)"
"$NODE" bench/gpu.mjs --out "${OUT:-bench/out}/gpu.json" || status=1
echo "== end-to-end decode, LongCat-Flash width (bench/gpu-model.mjs)"
"$NODE" bench/gpu-model.mjs --out "${OUT:-bench/out}/gpu-model.json" || status=1
exit $status
