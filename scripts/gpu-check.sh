#!/usr/bin/env bash
# One call on a GPU machine gives a true verdict (docs/GPU.md):
#   bash scripts/gpu-check.sh [OUT_DIR] [--cpu]
# Made for the lent H100 / H200 (CMake, nvcc, python3 with PyTorch, no npm, no network); the whole
# run keeps to MOMA_GPU_CHECK_BUDGET seconds (default 480, counted from the start): every stage
# runs under `timeout` with at most its cap or what is left, and is skipped (a failure) when too
# little is left; the summary always runs.
#   0. preflight, before anything is built, within 45 s (timeouts 15 + 10 + 20): a CUDA device is
#      visible (nvidia-smi, then the driver API itself through libcuda, which also gives device 0's
#      compute capability and honours CUDA_VISIBLE_DEVICES) and the driver supports the CUDA
#      version of the nvcc that builds (same major version: CUDA's minor-version compatibility).
#      Otherwise exits 2 with one line saying what is wrong.
#   1. build the native core for the device's compute capability (MOMA_CUDA_ARCHS overrides;
#      with Node carried, the addon too)
#   2. native test --require-cuda: every CUDA kernel against the CPU kernel; a skipped CUDA case
#      fails. Its one-rank NCCL case says whether NCCL (libnccl.so.2) loaded: recorded as the stage
#      "NCCL loaded" (ok) or "NCCL not loaded" (failed; native-test.log has the ERR_LOAD message)
#   3. kernel bench, CUDA only (JSON lines)
#   4. the same shapes in PyTorch on the same GPU       (bench/reference/gpu_kernels.py)
#   5. PyTorch's eager reference FFN layers on the GPU   (bench/reference/run.py --layers)
#   with Node carried (scripts/gpu-carry.sh: carry `.node` and `dist`):
#   6. Node smoke run: cpu vs cuda:0 through the public API, trainRun, causal inference
#                                                      (scripts/gpu-smoke.js)
#   7. `bench/run.js layers step` on cuda:0 at T 8192
#   7b. the NCCL copies of the distributed suites: jest test/dist_nccl.test.ts (what `npx jest
#      test/dist_nccl.test.ts` runs, with the carried node) when node_modules has jest and ts-jest
#      (gpu-carry.sh carries the runtime dependencies only) and at least 60 s of the budget are
#      left; otherwise recorded as not run (absent), with the reason
#   8. summary (scripts/gpu_summary.py): cases passed / failed / skipped, each kernel's rate, % of
#      the measured ceiling and ratio to PyTorch, the issue's targets PASS / MISS; it writes
#      <date>-<gpu>-gpu-check.md and .json (every result, with device, driver, CUDA and date) for
#      bench/results/.
# Output folder: OUT_DIR, else $OUT when set, else ./gpu-check-out. At the end the raw logs and
# JSON lines are packed into raw.tar.gz beside the summary files (the device tool returns at most
# 8 files). Exit status 0 only when every stage ran and passed (the Node stages count only when
# Node is carried); the targets are reported, not enforced. `--cpu` runs stages 6-7 on the CPU
# from the carried archive (no GPU, no build: the dry run of the Node part).
set -uo pipefail
export PATH="/usr/local/cuda/bin:$PATH"
cpu_only=0
out=""
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu_only=1 ;;
    -*) echo "gpu-check: unknown option $arg; usage: bash scripts/gpu-check.sh [OUT_DIR] [--cpu]" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
out="${out:-${OUT:-$(dirname "$0")/../gpu-check-out}}"
mkdir -p "$out" && out="$(cd "$out" && pwd)" || { echo "gpu-check: cannot create the output folder $out" >&2; exit 2; }
export OUT="$out"
cd "$(dirname "$0")/.." || exit 2
# what an interrupted earlier run into this folder left loose (a finished run packs it)
rm -f "$out"/preflight.txt "$out"/meta.json "$out"/*.jsonl "$out"/*.log "$out"/*layers_step*.json "$out"/train-run.json
python="${MOMA_TORCH_PYTHON:-python3}"  # runs the PyTorch stages; plain python3 the probe and the summary
budget="${MOMA_GPU_CHECK_BUDGET:-480}"
reserve=20  # kept back for the summary and the packing
status=0

fail() {  # one line, then exit 2: the preflight verdict
  echo "gpu-check: FAIL: $*" | tee "$out/preflight.txt" >&2
  exit 2
}

# ---- 0. preflight ------------------------------------------------------------------------------
gpu_name="" driver="" driver_cuda="" cc="" memory=""
if [ "$cpu_only" -eq 0 ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    smi=$(timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)
    rc=$?
    [ "$rc" -eq 0 ] && [ -n "$smi" ] ||
      fail "no CUDA device visible: nvidia-smi exited $rc: $(echo "${smi:-no output}" | head -1)"
    IFS=',' read -r gpu_name driver memory <<<"$(echo "$smi" | head -1)"
    gpu_name="$(echo "$gpu_name" | xargs)" driver="$(echo "$driver" | xargs)" memory="$(echo "$memory" | xargs)"
    driver_cuda=$(timeout 10 nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9]*\.[0-9]*' | grep -o '[0-9]*\.[0-9]*' | head -1)
  fi
  command -v nvcc >/dev/null 2>&1 || fail "nvcc not found (looked in /usr/local/cuda/bin and PATH): cannot build the CUDA backend"
  nvcc_cuda=$(nvcc --version | grep -o 'release [0-9]*\.[0-9]*' | grep -o '[0-9]*\.[0-9]*' | head -1)
  if [ -n "$driver_cuda" ] && [ "${driver_cuda%%.*}" -lt "${nvcc_cuda%%.*}" ]; then
    fail "the NVIDIA driver $driver supports CUDA up to $driver_cuda, older than CUDA $nvcc_cuda of $(command -v nvcc): update the driver or build with a CUDA $driver_cuda toolkit"
  fi
  # The driver API itself (honours CUDA_VISIBLE_DEVICES): device count, its CUDA version, device 0.
  probe=$(timeout 20 python3 - 2>&1 <<'PY'
import ctypes
try:
    cu = ctypes.CDLL('libcuda.so.1')
except OSError:
    print('error no NVIDIA driver (libcuda.so.1 not loadable)')
    raise SystemExit
version, count, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
cu.cuDriverGetVersion(ctypes.byref(version))
rc = cu.cuInit(0)
if rc != 0:
    text = ctypes.c_char_p()
    cu.cuGetErrorName(rc, ctypes.byref(text))
    print(f'error cuInit failed with {text.value.decode() if text.value else "error"} ({rc})')
    raise SystemExit
cu.cuDeviceGetCount(ctypes.byref(count))
if count.value == 0:
    print('error the CUDA driver sees no device')
    raise SystemExit
device = ctypes.c_int()
cu.cuDeviceGet(ctypes.byref(device), 0)
cu.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
name = ctypes.create_string_buffer(256)
cu.cuDeviceGetName(name, 256, device)
print(f'ok {count.value} {version.value // 1000}.{version.value % 1000 // 10} {major.value}.{minor.value} {name.value.decode()}')
PY
  )
  case "$probe" in
    ok\ *) read -r _ device_count probe_cuda probe_cc probe_name <<<"$probe" ;;
    error\ *)
      if command -v nvidia-smi >/dev/null 2>&1; then fail "no CUDA device visible to CUDA: ${probe#error }"
      else fail "no CUDA device visible: nvidia-smi not found and ${probe#error }"; fi ;;
    *) fail "no CUDA device visible: the CUDA driver probe (python3) failed: $(echo "${probe:-no output}" | tail -1)" ;;
  esac
  driver_cuda="$probe_cuda" cc="$probe_cc" gpu_name="$probe_name"
  [ "${driver_cuda%%.*}" -ge "${nvcc_cuda%%.*}" ] ||
    fail "the NVIDIA driver ${driver:-?} supports CUDA up to $driver_cuda, older than CUDA $nvcc_cuda of $(command -v nvcc): update the driver or build with a CUDA $driver_cuda toolkit"
  archs="${MOMA_CUDA_ARCHS:-${cc/./}}"
fi

date_utc="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
GPU_NAME="$gpu_name" DRIVER="$driver" DRIVER_CUDA="$driver_cuda" NVCC_CUDA="${nvcc_cuda:-}" CC="$cc" MEMORY="$memory" \
  ARCHS="${archs:-}" COUNT="${device_count:-0}" DATE="$date_utc" COMMIT="$commit" BUDGET="$budget" CPU_ONLY="$cpu_only" \
  python3 -c 'import json, os, socket
e = os.environ
print(json.dumps({"date": e["DATE"], "host": socket.gethostname(), "commit": e["COMMIT"], "gpu": e["GPU_NAME"] or None,
                  "gpus_visible": int(e["COUNT"]), "driver": e["DRIVER"] or None, "driver_cuda": e["DRIVER_CUDA"] or None,
                  "nvcc_cuda": e["NVCC_CUDA"] or None, "compute_capability": e["CC"] or None, "memory": e["MEMORY"] or None,
                  "cuda_archs": e["ARCHS"] or None, "budget_s": int(e["BUDGET"]), "cpu_only": e["CPU_ONLY"] == "1"}, indent=2))' \
  >"$out/meta.json" || fail "python3 cannot write $out/meta.json"
if [ "$cpu_only" -eq 0 ]; then
  echo "== gpu-check $date_utc: $gpu_name (sm_$archs, $memory), driver $driver (CUDA $driver_cuda), nvcc CUDA $nvcc_cuda; budget ${budget}s"
else
  echo "== gpu-check $date_utc --cpu: the Node stages on the CPU; budget ${budget}s"
fi
: >"$out/stages.jsonl"

# ---- stage machinery ---------------------------------------------------------------------------
# seconds a stage may take: its cap, or what is left of the budget (0: too little left)
allow() {
  local left=$((budget - reserve - SECONDS))
  if [ "$left" -lt "$2" ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
record() {  # record NAME STATUS RC SECONDS LIMIT
  printf '{"stage":"%s","status":"%s","rc":%s,"seconds":%s,"limit_s":%s}\n' "$1" "$2" "$3" "$4" "$5" >>"$out/stages.jsonl"
}
skip() {  # skip NAME WHY: a stage that cannot run fails the check
  echo "== $1: SKIPPED ($2)"
  record "$1" skipped null 0 0
  status=1
}
stage() {  # stage NAME CAP MIN COMMAND...: runs COMMAND under a timeout, or skips it; returns its rc
  local name="$1" cap="$2" min="$3"; shift 3
  local t; t=$(allow "$cap" "$min")
  if [ "$t" -eq 0 ]; then
    skip "$name" "${SECONDS}s used of the ${budget}s budget"
    return 1
  fi
  echo "== $name (up to ${t}s; ${SECONDS}s used)"
  local t0=$SECONDS
  timeout "$t" "$@"
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    record "$name" ok 0 $((SECONDS - t0)) "$t"
  else
    [ "$rc" -eq 124 ] && echo "== $name: timed out after ${t}s" || echo "== $name: exit $rc"
    record "$name" "$([ "$rc" -eq 124 ] && echo timeout || echo failed)" "$rc" $((SECONDS - t0)) "$t"
    status=1
  fi
  return "$rc"
}

# ---- Node runtime (carried) ---------------------------------------------------------------------
have_node=0
node_bin=""
[ -f .node/node.xz ] && [ -f .node/modules.tar.xz ] && [ -f dist/index.js ] && have_node=1
if [ "$have_node" -eq 1 ]; then
  node_bin="$PWD/.node/bin/node"
  mkdir -p .node/bin
  [ -x "$node_bin" ] || { xz -dc .node/node.xz >"$node_bin" && chmod +x "$node_bin"; }
  # dist/ resolves its dependencies from ./node_modules (there is none on the device machine)
  [ -d node_modules ] || tar -xJf .node/modules.tar.xz
  echo "== node runtime (carried): $("$node_bin" --version)"
fi

# ---- stages 1-7, each a function run under `timeout` in a child bash ----------------------------
build_native() {
  local addon=()
  [ "$have_node" -eq 1 ] && addon=(-DMOMA_ADDON_INCLUDE="$PWD/.node/include")
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMOMA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$archs" \
    -DMOMA_NATIVE_ONLY="$([ "$have_node" -eq 1 ] && echo OFF || echo ON)" "${addon[@]}" >"$OUT/cmake.log" 2>&1 &&
    cmake --build build-gpu -j "$(nproc)" >>"$OUT/cmake.log" 2>&1 || { tail -40 "$OUT/cmake.log"; return 1; }
}
native_test() {
  ./build-gpu/moma_native_test --require-cuda >"$OUT/native-test.log" 2>&1
  local rc=$?
  grep -E '^(FAIL|moma_native_test:)' "$OUT/native-test.log" | head -20
  tail -1 "$OUT/native-test.log"
  return $rc
}
kernel_bench() {
  ./build-gpu/moma_kernel_bench --json cuda >"$OUT/kernel-bench.jsonl" 2>"$OUT/kernel-bench.log"
  local rc=$?
  echo "   $(grep -c '"op"' "$OUT/kernel-bench.jsonl") results"
  tail -5 "$OUT/kernel-bench.log"
  return $rc
}
torch_kernels() {
  PYTHONUNBUFFERED=1 "$python" bench/reference/gpu_kernels.py --device cuda >"$OUT/torch-kernels.jsonl" 2>"$OUT/torch-kernels.log"
  local rc=$?
  echo "   $(grep -c '"op"' "$OUT/torch-kernels.jsonl") results"
  tail -5 "$OUT/torch-kernels.log"
  return $rc
}
torch_layers() {
  PYTHONUNBUFFERED=1 "$python" bench/reference/run.py --layers 8192 --device cuda --dtype bfloat16 \
    >"$OUT/torch-layers.jsonl" 2>"$OUT/torch-layers.log"
  local rc=$?
  grep '"op"' "$OUT/torch-layers.jsonl"
  tail -5 "$OUT/torch-layers.log"
  return $rc
}
node_smoke() {
  "$node_bin" scripts/gpu-smoke.js --device "$device" --train-steps 50 >"$OUT/node-smoke.log" 2>&1
  local rc=$?
  grep -E '^(ok|FAIL) |passed, ' "$OUT/node-smoke.log"
  return $rc
}
node_bench() {  # on the chosen device only, at the 435M FFN shape's T 8192; few repeats keep it in the budget
  MOMA_BENCH_REPEATS="${MOMA_BENCH_REPEATS:-3}" MOMA_BENCH_T="${MOMA_BENCH_T:-8192}" \
    "$node_bin" bench/run.js layers step --devices "$device" >"$OUT/bench.log" 2>&1
  local rc=$?
  tail -30 "$OUT/bench.log"
  return $rc
}
node_nccl_tests() {  # one-rank NCCL collectives and launch on cuda:0; the 2-GPU cases skip on one GPU
  PATH="$(dirname "$node_bin"):$PATH" "$node_bin" node_modules/jest/bin/jest.js test/dist_nccl.test.ts >"$OUT/jest-dist-nccl.log" 2>&1
  local rc=$?
  grep -E 'moma tests:|✓|✕|○|^Tests:' "$OUT/jest-dist-nccl.log"
  return $rc
}
# Whether NCCL loaded, from the native test's one-rank NCCL case (native/test/dist_checks.cc).
nccl_state() {
  local log="$out/native-test.log" line
  if grep -q '^moma_native_test: NCCL loaded' "$log" 2>/dev/null; then
    echo "== NCCL: loaded (one-rank communicator on cuda:0 checked by the native test)"
    record "NCCL loaded" ok null 0 0
  elif line=$(grep -m1 '^moma_native_test: NCCL not loaded' "$log" 2>/dev/null); then
    echo "== NCCL: NOT loaded: ${line#*is skipped: }"
    record "NCCL not loaded" failed null 0 0
    status=1
  else
    echo "== NCCL: unknown (the native test did not report its NCCL case)"
    record "NCCL unknown" failed null 0 0
    status=1
  fi
}
export -f build_native native_test kernel_bench torch_kernels torch_layers node_smoke node_bench node_nccl_tests
export python have_node node_bin

built=0
if [ "$cpu_only" -eq 0 ]; then
  export archs
  stage "build (sm_$archs$([ "$have_node" -eq 1 ] && echo ', with the addon'))" 300 60 bash -c build_native && built=1
  if [ "$built" -eq 1 ]; then
    stage "native test" 120 30 bash -c native_test
    nccl_state
    stage "kernel bench (CUDA)" 120 30 bash -c kernel_bench
    [ "$have_node" -eq 1 ] && mkdir -p build/Release && cp build-gpu/moma.node build/Release/moma.node
  else
    skip "native test" "no build"
    skip "kernel bench (CUDA)" "no build"
  fi
  stage "PyTorch kernels (same shapes)" 90 20 bash -c torch_kernels
  stage "PyTorch reference FFN layers" 90 20 bash -c torch_layers
fi

if [ "$have_node" -eq 1 ] && { [ "$cpu_only" -eq 1 ] || [ "$built" -eq 1 ]; }; then
  export device=cuda:0
  [ "$cpu_only" -eq 1 ] && device=cpu
  [ "$cpu_only" -eq 0 ] && export MOMA_KERNEL_BENCH="${MOMA_KERNEL_BENCH:-$PWD/build-gpu/moma_kernel_bench}"
  stage "node smoke + trainRun + causal ($device)" 150 45 bash -c node_smoke
  touch "$out/.bench-start"
  stage "bench layers step ($device)" 150 45 bash -c node_bench
  find bench/results -maxdepth 1 -name '*layers_step*.json' -newer "$out/.bench-start" -exec cp {} "$out/" \;
  rm -f "$out/.bench-start"
  if [ ! -f node_modules/jest/bin/jest.js ] || [ ! -d node_modules/ts-jest ]; then
    echo "== jest test/dist_nccl.test.ts: not run (no jest / ts-jest in node_modules: gpu-carry.sh carries the runtime dependencies only)"
    record "jest dist_nccl" absent null 0 0
  elif [ "$(allow 180 60)" -eq 0 ]; then
    echo "== jest test/dist_nccl.test.ts: not run (${SECONDS}s used of the ${budget}s budget; raise MOMA_GPU_CHECK_BUDGET)"
    record "jest dist_nccl" absent null 0 0
  else
    stage "jest dist_nccl ($device)" 180 60 bash -c node_nccl_tests
  fi
elif [ "$have_node" -eq 1 ]; then
  skip "node runs" "no build"
else  # a run without Node is complete without them (not a failure); the summary says they did not run
  echo "== node runs: not run (no .node/node.xz, .node/modules.tar.xz and dist/: run scripts/gpu-carry.sh and carry .node and dist)"
  record "node runs" absent null 0 0
fi

# ---- 8: summary, then pack the raw files --------------------------------------------------------
echo "== summary (${SECONDS}s used)"
record "total" "$([ "$status" -eq 0 ] && echo ok || echo failed)" "$status" "$SECONDS" "$budget"
timeout 60 python3 scripts/gpu_summary.py "$out" || { echo "== summary: failed"; status=1; }
(
  cd "$out" || exit 1
  raw=$(ls -1 | grep -Ev '(-gpu-check\.(md|json)|^raw\.tar\.gz|\.png)$')
  [ -n "$raw" ] && tar -czf raw.tar.gz $raw && rm -f $raw
)
echo "== gpu-check done in ${SECONDS}s: $([ "$status" -eq 0 ] && echo PASS || echo FAIL) (results in $out)"
exit $status
