#!/usr/bin/env bash
# GPU check for a machine with CMake, nvcc and a GPU but no npm (the lent H200): builds the native
# core for sm_90, runs the native test (every CUDA kernel against the CPU kernel) and the kernel
# benchmark, and — when a Node binary was carried — builds the addon and runs a Node smoke test.
# Writes logs and results under $OUT (or ./gpu-check-out). Meant to finish in under 10 minutes.
#
# Node smoke run: carry .node/ holding node.xz (xz -c "$(command -v node)"), include/ (copies of
# node_modules/node-api-headers/include and node_modules/node-addon-api/*.h) and modules/
# (node_modules/node-gyp-build and node_modules/commander), plus dist/ (npm run build:ts).
# scripts/gpu-carry.sh prepares .node/ here.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
archs="${MOMA_CUDA_ARCHS:-90}"
jobs="$(nproc)"
status=0

echo "== gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/device.txt"

echo "== build (native only, CUDA $archs)"
cmake -S . -B build-gpu -DMOMA_NATIVE_ONLY=ON -DMOMA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$archs" >"$out/cmake.log" 2>&1 &&
  cmake --build build-gpu -j "$jobs" >>"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }

echo "== native test"
timeout 300 ./build-gpu/moma_native_test 2>&1 | tee "$out/native-test.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== kernel bench (CUDA only: the CPU numbers come from the CPU machines)"
timeout 240 ./build-gpu/moma_kernel_bench cuda >"$out/kernel-bench.txt" 2>&1 || status=1
grep -v '^{' "$out/kernel-bench.txt" | tail -40
grep '^{' "$out/kernel-bench.txt" >"$out/kernel-bench.jsonl" || true

if [ -f .node/node.xz ] && [ -d dist ]; then
  echo "== node smoke run"
  xz -dc .node/node.xz >/tmp/moma-node && chmod +x /tmp/moma-node
  cmake -S . -B build-gpu-addon -DMOMA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$archs" \
    -DMOMA_ADDON_INCLUDE="$PWD/.node/include" >"$out/addon.log" 2>&1 &&
    cmake --build build-gpu-addon -j "$jobs" --target moma >>"$out/addon.log" 2>&1 || { tail -30 "$out/addon.log"; exit 1; }
  mkdir -p build/Release && cp build-gpu-addon/moma.node build/Release/moma.node
  NODE_PATH="$PWD/.node/modules" timeout 120 /tmp/moma-node scripts/gpu-smoke.js 2>&1 | tee "$out/node-smoke.log" || status=1
fi
echo "== gpu-check done (status $status)"
exit $status
