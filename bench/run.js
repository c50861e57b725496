#!/usr/bin/env node
// npm run bench [-- suite... | kernel-filter...] [--devices cpu,cuda:0]
//
// Suites (default: all of them, in this order; the ceilings are always measured first):
//   ceiling  copy bandwidth and FMA peak (CPU) / bf16 GEMM (GPU) from the native benchmark, and a
//            GEMM through the Node API                                            (bench/native.js)
//   kernels  every native kernel against those ceilings (routing, dispatch, grouped expert GEMM,
//            combine, attention, norms, AdamW, …); any other word is a kernel filter, e.g. `moe`,
//            `nn`, `cpu.gemm` (substrings of device.op), and implies this suite   (bench/native.js)
//   layers   FFN layers dense vs moma 4t4i vs moe 8x, a block with and without MoD, and the
//            breakdown of the MoE layer's time                        (bench/layers.js, breakdown.js)
//   step     full training steps of tiny and d-512 models                           (bench/train_step.js)
//   torch    the same layers, steps (and kernels, when run) in PyTorch, paired with moma's rows;
//            alone it implies layers and step                                       (bench/torch.js)
//   comm     all-reduce and all-to-all time, algorithm and bus bandwidth (nccl-tests' definitions)
//            from 4 KiB to 256 MiB per rank on 2 ranks started through the launcher, against the
//            copy ceiling; tokens/s of `moma train` on 1 vs 2 ranks, the gradient all-reduce's
//            share of the step, and the measured overlap of the gradient all-reduce with the
//            backward                                                                 (bench/comm.js)
// Devices: the CPU, plus cuda:0 when a GPU is visible (--devices picks; the torch suite is CPU only).
// Environment: MOMA_BENCH_T (layer rows), MOMA_BENCH_REPEATS (timed rounds, default 5),
// MOMA_BENCH_STEP_BATCH / _SEQ / _MODELS, MOMA_TORCH_PYTHON, MOMA_KERNEL_BENCH, MOMA_CPU_PEAK_GFLOPS,
// MOMA_BENCH_COMM_SIZES (e.g. 4KiB,1MiB) / _RANKS (default 2) / _GROUPS (collectives,scaling,overlap),
// MOMA_BENCH_SCALING_MODELS (tiny-4t4i,d512-4t4i), MOMA_BENCH_OVERLAP_MODELS (default tiny-4t4i) /
// MOMA_BENCH_OVERLAP_BUCKET (default 4MiB).
// Prints the report and writes bench/results/<date>-<cpu|cuda>-<suites and filters, or all>[-T<rows>].{json,md}.
'use strict';
const os = require('os');
const path = require('path');
const { nativeSuites, apiMatmul } = require('./native');
const { layerSuite, modalityPattern } = require('./layers');
const { layerBreakdown } = require('./breakdown');
const { stepSuite } = require('./train_step');
const { torchSuite } = require('./torch');
const { commSuite } = require('./comm');
const { markdown, saveReport } = require('./report');
const { envInt, deviceKind, isCuda } = require('./common');

const root = path.resolve(__dirname, '..');
const SUITES = ['ceiling', 'kernels', 'layers', 'step', 'torch', 'comm'];
const USAGE = 'usage: npm run bench [-- [ceiling|kernels|layers|step|torch|comm|all|<kernel filter>]... [--devices cpu,cuda:0]]';

function parseArgs(argv, moma) {
  const suites = new Set();
  const filters = [];
  let devices = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (a === '--devices' || a === '--device') {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value, e.g. cpu,cuda:0`);
      devices = argv[++i].split(',').map((d) => d.trim()).filter(Boolean);
    } else if (a === 'all') {
      SUITES.forEach((s) => suites.add(s));
    } else if (SUITES.includes(a)) {
      suites.add(a);
    } else if (a.startsWith('-')) {
      throw new Error(`unknown option ${a}\n${USAGE}`);
    } else {
      filters.push(a);
      suites.add('kernels');
    }
  }
  const explicit = suites.size > 0;
  if (!explicit) SUITES.forEach((s) => suites.add(s));
  if (suites.has('torch') && !suites.has('layers') && !suites.has('step') && !suites.has('kernels')) {
    suites.add('layers');
    suites.add('step');
  }
  suites.add('ceiling');
  devices ??= moma.cudaAvailable() ? ['cpu', 'cuda:0'] : ['cpu'];
  for (const d of devices) {
    if (d !== 'cpu' && !/^cuda(:\d+)?$/.test(d)) throw new Error(`--devices: '${d}' is not cpu, cuda or cuda:N`);
    if (isCuda(d) && !moma.cudaAvailable()) throw new Error(`--devices: ${d} asked for, but no CUDA device is visible`);
  }
  return { suites: SUITES.filter((s) => suites.has(s)), filters, devices, explicit };
}

function deviceName(moma, devices) {
  const info = moma.inspect();
  if (devices.some(isCuda) && info.cuda.devices.length) return info.cuda.devices[0].name;
  return `${os.cpus()[0].model.trim()} x${os.cpus().length}`;
}

async function main() {
  const moma = require(path.join(root, 'dist'));
  const { suites, filters, devices, explicit } = parseArgs(process.argv.slice(2), moma);
  const has = (s) => suites.includes(s);
  const load = os.loadavg();
  const date = new Date().toISOString();
  const kinds = [...new Set(devices.map(deviceKind))];
  const info = moma.inspect();
  console.error(`moma bench: suites ${suites.join(', ')} on ${devices.join(', ')}; load average ${load.map((l) => l.toFixed(2)).join(' ')}`);

  const native = nativeSuites(kinds, { kernels: has('kernels'), filters });
  const notes = [`moma ${info.cpu.threads} CPU threads, GEMM ${info.cpu.gemm}`, ...native.notes];
  const results = native.results;
  for (const device of devices) results.push(await apiMatmul(moma, device, isCuda(device) ? 4096 : 1024, 10, results));

  const jobs = [];
  const breakdowns = [];
  if (has('layers')) {
    for (const device of devices) {
      console.error(`layers on ${device} …`);
      const suite = await layerSuite(moma, device, results);
      results.push(...suite.rows);
      jobs.push(...suite.jobs);
      const denseRow = suite.rows.find((r) => r.op === 'layer.dense_swiglu.fwd_bwd');
      const T = Number(/^T(\d+)/.exec(denseRow.shape)[1]);
      const b = await layerBreakdown(moma, device, T, Math.min(3, envInt('MOMA_BENCH_REPEATS', 5)), modalityPattern(T));
      const whole = (op) => suite.rows.find((r) => r.op === op && r.shape.startsWith(`T${T} `))?.ms;
      b.whole = { dense: whole('layer.dense_swiglu.fwd_bwd'), 'moma 4t4i': whole('layer.moma_4t4i.fwd_bwd'), 'moe 8x': whole('layer.moe_8x.fwd_bwd') };
      breakdowns.push(b);
    }
  }
  if (has('step')) {
    for (const device of devices) {
      console.error(`step on ${device} …`);
      const suite = await stepSuite(moma, device, results);
      results.push(...suite.rows);
      jobs.push(...suite.jobs);
    }
  }
  let torch = null;
  if (has('torch')) {
    console.error('torch …');
    const t = torchSuite(jobs, results, { threads: info.cpu.threads, kernels: has('kernels') });
    notes.push(...t.notes);
    results.push(...t.rows);
    torch = t.info;
  }
  const comm = [];
  if (has('comm')) {
    for (const device of devices) {
      console.error(`comm on ${device} …`);
      const suite = await commSuite(moma, device, results);
      results.push(...suite.rows);
      comm.push(...suite.notes);
    }
  }

  const report = { date, device: deviceName(moma, devices), devices, suites, filters, load, inspect: info, notes, results, breakdowns, torch, comm };
  console.log(markdown(report));
  const parts = explicit ? [...suites.filter((s) => s !== 'ceiling' || suites.length === 1), ...filters] : ['all'];
  const suffix = `-${parts.join('_').replace(/[^a-zA-Z0-9_.-]/g, '')}` + (process.env.MOMA_BENCH_T ? `-T${envInt('MOMA_BENCH_T', 1)}` : '');
  const slug = saveReport(report, { root, suffix });
  console.log(`\nwrote bench/results/${slug}.json and .md`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
