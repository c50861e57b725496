#!/usr/bin/env bash
# GPU check for a machine with CMake, nvcc and a GPU but no npm (the lent H200), kept under
# 10 minutes: every stage after the build gets at most what is left of MOMA_GPU_CHECK_BUDGET
# (default 570 s, counted from the start) and is skipped, saying so, when too little is left.
#   1. build the native core for sm_90 (one build folder; with Node carried, the addon too)
#   2. native test (every CUDA kernel against the CPU kernel)
#   3. kernel bench, CUDA only (the CPU numbers come from the CPU machines)
#   with Node carried (scripts/gpu-carry.sh: carry `.node` and `dist`):
#   4. Node smoke run: cpu vs cuda:0 through the public API, then trainRun: 50 steps of tiny-4t4i
#      on the built-in data on cuda:0 (losses, tokens/s), then causal inference: train-aux, eval
#      --causal, KV-cache decode vs full forward, a generated image   (scripts/gpu-smoke.js)
#   5. `npm run bench -- layers step` on cuda:0 (FFN layers, MoD block, breakdown, training steps)
# Logs and results go to $OUT (or ./gpu-check-out). `bash scripts/gpu-check.sh --cpu` runs stages
# 4-5 on the CPU from the carried archive (no GPU, no build: the dry run of the Node part).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
export OUT="$out"
archs="${MOMA_CUDA_ARCHS:-90}"
jobs="$(nproc)"
budget="${MOMA_GPU_CHECK_BUDGET:-570}"
cpu_only=0
[ "${1:-}" = "--cpu" ] && cpu_only=1
status=0
node_bin=""

# seconds a stage may take: its own cap, or what is left of the budget (0: skip the stage)
allow() {
  local left=$((budget - SECONDS - 10))
  if [ "$left" -lt "$2" ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
stage() {  # stage NAME CAP MIN COMMAND...: runs COMMAND under a timeout, or skips it
  local name="$1" cap="$2" min="$3"; shift 3
  local t; t=$(allow "$cap" "$min")
  if [ "$t" -eq 0 ]; then
    echo "== $name: SKIPPED (${SECONDS}s used of the ${budget}s budget)"; status=1; return
  fi
  echo "== $name (up to ${t}s; ${SECONDS}s used)"
  timeout "$t" "$@"
  local rc=$?
  [ "$rc" -eq 0 ] || { echo "== $name: exit $rc"; status=1; }
}

echo "== gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
have_node=0
[ -f .node/node.xz ] && [ -f .node/modules.tar.xz ] && [ -f dist/index.js ] && have_node=1

if [ "$have_node" -eq 1 ]; then
  echo "== node runtime (carried)"
  node_bin="$PWD/.node/bin/node"
  mkdir -p .node/bin
  [ -x "$node_bin" ] || { xz -dc .node/node.xz >"$node_bin" && chmod +x "$node_bin"; }
  # dist/ resolves its dependencies from ./node_modules (there is none on the device machine)
  [ -d node_modules ] || tar -xJf .node/modules.tar.xz
  "$node_bin" --version
fi

if [ "$cpu_only" -eq 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/device.txt"
  echo "== build (CUDA $archs$([ "$have_node" -eq 1 ] && echo ', with the addon'))"
  addon=()
  [ "$have_node" -eq 1 ] && addon=(-DMOMA_ADDON_INCLUDE="$PWD/.node/include")
  cmake -S . -B build-gpu -DMOMA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$archs" \
    -DMOMA_NATIVE_ONLY="$([ "$have_node" -eq 1 ] && echo OFF || echo ON)" "${addon[@]}" >"$out/cmake.log" 2>&1 &&
    cmake --build build-gpu -j "$jobs" >>"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
  echo "   built in ${SECONDS}s"

  stage "native test" 240 30 bash -c './build-gpu/moma_native_test 2>&1 | tee "$OUT/native-test.log" | tail -25; exit ${PIPESTATUS[0]}'
  stage "kernel bench (CUDA)" 150 30 bash -c './build-gpu/moma_kernel_bench cuda >"$OUT/kernel-bench.txt" 2>&1; rc=$?; grep -v "^{" "$OUT/kernel-bench.txt" | tail -40; exit $rc'
  grep '^{' "$out/kernel-bench.txt" >"$out/kernel-bench.jsonl" 2>/dev/null || true
  if [ "$have_node" -eq 1 ]; then
    mkdir -p build/Release && cp build-gpu/moma.node build/Release/moma.node
  fi
fi

if [ "$have_node" -eq 1 ]; then
  device=cuda:0
  [ "$cpu_only" -eq 1 ] && device=cpu
  stage "node smoke + trainRun + causal ($device)" 240 60 bash -c "'$node_bin' scripts/gpu-smoke.js --device $device --train-steps 50 2>&1 | tee \"\$OUT/node-smoke.log\"; exit \${PIPESTATUS[0]}"
  # the bench on the chosen device only; small repeats keep it inside the budget
  [ "$cpu_only" -eq 0 ] && export MOMA_KERNEL_BENCH="${MOMA_KERNEL_BENCH:-$PWD/build-gpu/moma_kernel_bench}"
  stage "bench layers step ($device)" 240 60 env MOMA_BENCH_REPEATS="${MOMA_BENCH_REPEATS:-3}" \
    bash -c "'$node_bin' bench/run.js layers step --devices $device >\"\$OUT/bench.log\" 2>&1; rc=\$?; tail -60 \"\$OUT/bench.log\"; exit \$rc"
  cp bench/results/"$(date -u +%Y-%m-%d)"-*layers_step* "$out/" 2>/dev/null || true
else
  echo "== node runs: SKIPPED (no .node/node.xz, .node/modules.tar.xz and dist/: run scripts/gpu-carry.sh and carry .node and dist)"
fi
echo "== gpu-check done in ${SECONDS}s (status $status)"
exit $status
