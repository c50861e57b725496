#!/usr/bin/env node
// npm run bench [-- filter...]: the native kernel benchmark (device ceilings first, then every
// kernel with time, GB/s or GFLOP/s and % of the measured ceiling), plus the same matmul timed
// through the Node API (queue and binding overhead included), and with `moe` (or no filter) the
// MoE layers forward + backward against the dense FFN (bench/layers.js). Prints a table and writes
// bench/results/<date>-<device>.json and .md.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');
const { layerResults } = require('./layers');

const root = path.resolve(__dirname, '..');
const filters = process.argv.slice(2);

function findBench() {
  for (const rel of ['build/moma_kernel_bench', 'build/Release/moma_kernel_bench', 'build-native/moma_kernel_bench']) {
    const file = path.join(root, rel);
    if (fs.existsSync(file)) return file;
  }
  throw new Error('moma_kernel_bench not found: run npm install (or npm run build:native) first');
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function apiMatmul(moma, device, n, repeats) {
  const gen = new moma.Generator(7);
  const a = moma.randn([n, n], { generator: gen, device });
  const b = moma.randn([n, n], { generator: gen, device });
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
  return { device: device.startsWith('cuda') ? 'cuda' : 'cpu', op: 'api.matmul_f32', shape: `${n}x${n}x${n}`, ms, rate: (2 * n ** 3) / ms / 1e6, unit: 'GFLOP/s' };
}

async function main() {
  const bench = findBench();
  // The ceilings are always measured: every fraction refers to them.
  const nativeFilters = filters.length ? [...filters, 'ceiling'] : [];
  const lines = execFileSync(bench, ['--json', ...nativeFilters], { encoding: 'utf8', maxBuffer: 64 << 20 }).split('\n');
  const records = lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  const notes = records.filter((r) => r.note).map((r) => r.note);
  const results = records.filter((r) => !r.note);

  const moma = require(path.join(root, 'dist'));
  if (filters.length === 0 || filters.some((f) => 'api.matmul'.includes(f) || f === 'api')) {
    const cpuPeak = results.find((r) => r.device === 'cpu' && r.op.startsWith('ceiling.fma'));
    const api = await apiMatmul(moma, 'cpu', 1024, 10);
    if (cpuPeak) api.pct_measured = (100 * api.rate) / cpuPeak.rate;
    api.pct_nominal = (100 * api.rate) / Number(process.env.MOMA_CPU_PEAK_GFLOPS || 256);
    results.push(api);
    if (moma.cudaAvailable()) results.push(await apiMatmul(moma, 'cuda:0', 4096, 10));
  }
  if (filters.length === 0 || filters.some((f) => 'moe'.includes(f) || f.startsWith('layer'))) {
    const T = Number(process.env.MOMA_BENCH_T || 8192);
    const fma = results.find((r) => r.device === 'cpu' && r.op.startsWith('ceiling.fma'));
    for (const r of await layerResults(moma, 'cpu', T, 5)) {
      if (fma) r.pct_measured = (100 * r.rate) / fma.rate;
      r.pct_nominal = (100 * r.rate) / Number(process.env.MOMA_CPU_PEAK_GFLOPS || 256);
      results.push(r);
    }
    if (moma.cudaAvailable()) {
      const ceiling = results.find((r) => r.device === 'cuda' && r.op === 'ceiling.gemm_bf16');
      for (const Tg of [8192, 32768]) {
        for (const r of await layerResults(moma, 'cuda:0', Tg, 5)) {
          if (ceiling) r.pct_measured = (100 * r.rate) / (ceiling.unit === 'TFLOP/s' ? ceiling.rate : ceiling.rate / 1000);
          results.push(r);
        }
      }
    }
  }

  const info = moma.inspect();
  const date = new Date().toISOString();
  const deviceName = info.cuda.devices.length ? info.cuda.devices[0].name : `${os.cpus()[0].model.trim()} x${os.cpus().length}`;
  const fmt = (v, d = 1) => (v === null || v === undefined || v < 0 ? '-' : Number(v).toFixed(d));
  const table = [
    `moma bench — ${date} — ${deviceName}`,
    ...notes,
    '',
    '| device | op | shape | ms | rate | unit | % measured ceiling | % nominal peak |',
    '| --- | --- | --- | ---: | ---: | --- | ---: | ---: |',
    ...results.map((r) => `| ${r.device} | ${r.op} | ${r.shape} | ${fmt(r.ms, 3)} | ${fmt(r.rate)} | ${r.unit} | ${fmt(r.pct_measured)} | ${fmt(r.pct_nominal)} |`),
    ...results.filter((r) => r.note).map((r, i) => `${i === 0 ? '\n' : ''}- ${r.device} ${r.op}: ${r.note}`),
  ].join('\n');
  console.log(table);

  const dir = path.join(root, 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const rows = process.env.MOMA_BENCH_T ? `-T${Number(process.env.MOMA_BENCH_T)}` : '';
  const slug = `${date.slice(0, 10)}-${info.cuda.devices.length ? 'cuda' : 'cpu'}${filters.length ? `-${filters.join('_').replace(/[^a-zA-Z0-9_.-]/g, '')}` : ''}${rows}`;
  fs.writeFileSync(path.join(dir, `${slug}.json`), JSON.stringify({ date, device: deviceName, inspect: info, notes, results }, null, 2) + '\n');
  fs.writeFileSync(path.join(dir, `${slug}.md`), table + '\n');
  console.log(`\nwrote bench/results/${slug}.json and .md`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
