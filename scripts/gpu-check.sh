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
# Each stage in its own process with its own time limit (a first run of an untested kernel may
# fault or hang; the next stage still runs): 9.6 minutes at most in all, about 6 expected.
step() {
  local limit=$1 title=$2
  shift 2
  echo "== $title"
  if command -v timeout >/dev/null; then
    timeout --kill-after=5 "$limit" "$@" || { echo "== $title: exit $? (124: over its ${limit} s)"; status=1; }
  else
    "$@" || { echo "== $title: exit $?"; status=1; }
  fi
}
OUTDIR="${OUT:-bench/out}"
mkdir -p "$OUTDIR"
[ -x build/Release/longcat_native_test ] && step 90 "C++ GEMM harness (test/native)" build/Release/longcat_native_test
step 150 "CUDA vs CPU: every op, then the whole model (scripts/gpu-check.mjs)" "$NODE" scripts/gpu-check.mjs
step 120 "CUDA microbenchmarks (bench/gpu.mjs)" "$NODE" bench/gpu.mjs --only gemm,moe,mla --out "$OUTDIR/gpu.json"
step 110 "end-to-end decode, LongCat-Flash width (bench/gpu-model.mjs)" "$NODE" bench/gpu-model.mjs --out "$OUTDIR/gpu-model.json"
step 60 "expert parallelism: flag-protocol dispatch / combine, 4 virtual ranks spinning on each other (bench/cpu-ep.mjs --device cuda:0)" "$NODE" bench/cpu-ep.mjs --device cuda:0 --tokens 1,128,4096 --out "$OUTDIR/ep.json"
step 45 "opt-in TMA + wgmma GEMM (bench/gpu.mjs --only wgmma)" "$NODE" bench/gpu.mjs --only wgmma --out "$OUTDIR/gpu-wgmma.json"
exit $status
