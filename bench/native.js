// The `ceiling` and `kernels` suites: runs the native kernel benchmark (build/moma_kernel_bench,
// native/bench/*: ceilings first, then every kernel with time, GB/s or GFLOP/s and % of the
// measured ceiling) and times one GEMM through the Node API (queue and binding overhead
// included), the GEMM-rate row of the ceilings.
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
const { median, deviceKind, isCuda, flopUnit, withCeiling } = require('./common');

const root = path.resolve(__dirname, '..');

/** The kernel bench executable, or null (a package installed from a prebuilt binary has none). */
function findKernelBench() {
  if (process.env.MOMA_KERNEL_BENCH) {
    if (!fs.existsSync(process.env.MOMA_KERNEL_BENCH)) throw new Error(`MOMA_KERNEL_BENCH=${process.env.MOMA_KERNEL_BENCH} does not exist`);
    return process.env.MOMA_KERNEL_BENCH;
  }
  for (const rel of ['build/moma_kernel_bench', 'build/Release/moma_kernel_bench', 'build-native/moma_kernel_bench', 'build-gpu/moma_kernel_bench']) {
    const file = path.join(root, rel);
    if (fs.existsSync(file)) return file;
  }
  return null;
}

/**
 * Runs the native benchmark for the device kinds in `kinds` ('cpu', 'cuda'): the ceilings always,
 * the kernels when `kernels` is set (restricted by `filters`, substrings of "device.op"). Without
 * the executable the ceilings are left out (rates then have no % of ceiling), saying so.
 * Returns { notes, results }.
 */
function nativeSuites(kinds, { kernels, filters }) {
  const bench = findKernelBench();
  if (bench === null) {
    const why = 'moma_kernel_bench not found (npm run build:native builds it; or set MOMA_KERNEL_BENCH)';
    if (kernels) throw new Error(`the kernels suite needs the native benchmark: ${why}`);
    return { notes: [`no measured ceilings: ${why}`], results: [] };
  }
  const args = kinds.map((k) => `${k}.ceiling`);
  if (kernels) args.push(...(filters.length ? filters : kinds.map((k) => `${k}.`)));
  const out = execFileSync(bench, ['--json', ...new Set(args)], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const records = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  return { notes: records.filter((r) => r.note).map((r) => r.note), results: records.filter((r) => !r.note) };
}

/** n³ matmul through the public API (float32 on the CPU, bfloat16 on a GPU): median of `repeats` after 2 warm-ups. */
async function apiMatmul(moma, device, n, repeats, results) {
  const dtype = isCuda(device) ? 'bfloat16' : 'float32';
  const gen = new moma.Generator(7);
  const a = moma.randn([n, n], { generator: gen, device, dtype });
  const b = moma.randn([n, n], { generator: gen, device, dtype });
  await moma.synchronize(device);
  const times = [];
  for (let i = 0; i < repeats + 2; i++) {
    const t0 = process.hrtime.bigint();
    const c = a.matmul(b);
    await moma.synchronize(device);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    c.dispose();
    if (i >= 2) times.push(ms);
  }
  a.dispose();
  b.dispose();
  const ms = median(times);
  const [unit, scale] = flopUnit(device);
  const row = { device: deviceKind(device), op: `api.matmul_${dtype === 'float32' ? 'f32' : 'bf16'}`, shape: `${n}x${n}x${n}`, ms, rate: (2 * n ** 3) / ms / scale, unit };
  return withCeiling(row, results);
}

module.exports = { nativeSuites, apiMatmul };
