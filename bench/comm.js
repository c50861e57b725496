// The `comm` suite: collectives between ranks on one machine, started by the suite itself through
// moma's launcher (lib/distributed/launcher.ts), each rank on MOMA_NUM_THREADS=1.
//
// Row group `collectives`: all-reduce (sum) and all-to-all (equal splits) of a float32 buffer of S
// bytes per rank, S = 4 KiB … 256 MiB in powers of 4 (MOMA_BENCH_COMM_SIZES overrides, e.g.
// "4KiB,1MiB"), on MOMA_BENCH_COMM_RANKS ranks (default 2). A timed round: barrier (the ranks start
// together, nothing queued), N back-to-back collectives, then moma.synchronize (resolves when the
// queued collectives have run: gloo runs them on the CPU queue's worker, NCCL on the device
// stream), time / N. N grows as S shrinks so a round moves about 64 MiB (1 ≤ N ≤ 100). A round's
// time is the slowest rank's (an all-reduce of the per-round times with max); the row's time is the
// median of MOMA_BENCH_REPEATS rounds (default 5) after one warm-up round. The last result of each
// size is checked against its known value.
// Bandwidths as nccl-tests define them (doc/PERFORMANCE.md): algbw = S / t, S the per-rank buffer;
// busbw = algbw · 2(n−1)/n for all-reduce and algbw · (n−1)/n for all-to-all, n ranks. The ceiling
// is the machine's memory-copy bandwidth from the native benchmark's `ceiling` suite (row
// ceiling.copy: memcpy of 256 MiB over all cores, read + write bytes; ceiling.copy_d2d on a GPU),
// measured in the same run; rows give busbw as % of it.
//
// Row groups still to come (ROW_GROUPS below): `scaling` (training tokens/s from 1 to 2 ranks) and
// `overlap` (communication hidden behind the backward) need data-parallel training in the Trainer.
//
// Run as `node bench/comm.js --worker …` this file is one rank of the suite (launched by it).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { median, envInt, isCuda, deviceKind } = require('./common');

const root = path.resolve(__dirname, '..');
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const FLOAT32_BYTES = 4;
/** 4 KiB, 16 KiB, …, 256 MiB. */
const DEFAULT_SIZES = Array.from({ length: 9 }, (_, i) => 4 * KiB * 4 ** i);
const ROUND_BYTES = 64 * MiB;
const MAX_OPS_PER_ROUND = 100;
const WORKER_USAGE = 'usage: node bench/comm.js --worker --device cpu|cuda --sizes BYTES[,BYTES…] --repeats N --out FILE';

/** The collectives timed, with nccl-tests' bus-bandwidth factor for n ranks. */
const COLLECTIVES = {
  all_reduce: { op: 'comm.all_reduce_sum_f32', label: 'all-reduce (sum)', busFactor: (n) => (2 * (n - 1)) / n },
  all_to_all: { op: 'comm.all_to_all_f32', label: 'all-to-all (equal splits)', busFactor: (n) => (n - 1) / n },
};

/** Row groups of the suite, in report order; each measures with the launched ranks. */
const ROW_GROUPS = ['collectives'];
const NOT_YET_MEASURED = [
  'not measured yet: row group `scaling` (training tokens/s from 1 to 2 ranks) and row group `overlap` (share of',
  'the gradient all-reduce hidden behind the backward) need data-parallel training in the Trainer, which moma does',
  'not have yet; they join ROW_GROUPS in bench/comm.js when it does.',
];

/** '4KiB', '1MiB', '4096', '2GiB' → bytes; anything else throws. */
function parseSize(text) {
  const m = /^(\d+)\s*(B|KiB|MiB|GiB)?$/.exec(String(text).trim());
  if (m === null) throw new Error(`comm: size '${text}' is not a byte count like 4096, 4KiB, 16MiB or 1GiB`);
  const bytes = Number(m[1]) * { B: 1, KiB, MiB, GiB }[m[2] ?? 'B'];
  if (!Number.isSafeInteger(bytes) || bytes < 1) throw new Error(`comm: size '${text}' must be a positive byte count`);
  return bytes;
}

/** 4096 → '4KiB', 3 MiB → '3MiB', 1000 → '1000B'. */
function formatSize(bytes) {
  for (const [unit, scale] of [['GiB', GiB], ['MiB', MiB], ['KiB', KiB]]) if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  return `${bytes}B`;
}

/**
 * The per-rank buffer sizes to time: MOMA_BENCH_COMM_SIZES (comma-separated) or 4 KiB … 256 MiB.
 * Each must hold whole float32 elements split evenly over the ranks (all-to-all's equal splits).
 */
function commSizes(env, ranks) {
  const raw = env.MOMA_BENCH_COMM_SIZES;
  const sizes = raw === undefined || raw === '' ? DEFAULT_SIZES : raw.split(',').map(parseSize);
  for (const s of sizes) {
    if (s % (FLOAT32_BYTES * ranks) !== 0) throw new Error(`comm: size ${formatSize(s)} is not a multiple of ${FLOAT32_BYTES * ranks} bytes (float32 elements split over ${ranks} ranks)`);
  }
  return sizes;
}

/** Collectives per timed round: enough to move about 64 MiB, 1 to 100. */
function opsPerRound(bytes) {
  return Math.max(1, Math.min(MAX_OPS_PER_ROUND, Math.floor(ROUND_BYTES / bytes)));
}

/** nccl-tests' algorithm bandwidth in GB/s (1e9 bytes/s): the per-rank buffer over the time. */
function algBandwidth(bytes, ms) {
  return bytes / (ms * 1e-3) / 1e9;
}

/** nccl-tests' bus bandwidth in GB/s of `collective` ('all_reduce' | 'all_to_all') on `ranks` ranks. */
function busBandwidth(collective, algbw, ranks) {
  const c = COLLECTIVES[collective];
  if (c === undefined) throw new Error(`comm: unknown collective '${collective}' (${Object.keys(COLLECTIVES).join(', ')})`);
  if (!Number.isInteger(ranks) || ranks < 1) throw new Error(`comm: ranks must be an integer >= 1, got ${ranks}`);
  return algbw * c.busFactor(ranks);
}

/** The worker's command line: { device: 'cpu' | 'cuda', sizes: bytes[], repeats, out }. */
function parseWorkerArgs(argv) {
  const args = { device: 'cpu', sizes: null, repeats: null, out: null };
  if (argv[0] !== '--worker') throw new Error(`comm: the first argument must be --worker\n${WORKER_USAGE}`);
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`comm: ${a} needs a value\n${WORKER_USAGE}`);
      return argv[++i];
    };
    if (a === '--device') {
      args.device = value();
      if (args.device !== 'cpu' && args.device !== 'cuda') throw new Error(`comm: --device must be cpu or cuda, got '${args.device}'`);
    } else if (a === '--sizes') {
      args.sizes = value().split(',').map(parseSize);
    } else if (a === '--repeats') {
      const text = value();
      args.repeats = Number(text);
      if (!/^\d+$/.test(text) || args.repeats < 1) throw new Error(`comm: --repeats must be an integer >= 1, got '${text}'`);
    } else if (a === '--out') {
      args.out = value();
    } else {
      throw new Error(`comm: unknown argument ${a}\n${WORKER_USAGE}`);
    }
  }
  for (const name of ['sizes', 'repeats', 'out']) if (args[name] === null) throw new Error(`comm: --${name} is required\n${WORKER_USAGE}`);
  return args;
}

/** A row of the report from one rank-0 measurement { collective, bytes, ms, opsPerRound, rounds }. */
function collectiveRow(m, { device, ranks, ceilingGbs }) {
  const algbw = algBandwidth(m.bytes, m.ms);
  const busbw = busBandwidth(m.collective, algbw, ranks);
  const row = {
    device, op: COLLECTIVES[m.collective].op, shape: `${formatSize(m.bytes)} per rank, ${ranks} ranks`, ms: m.ms,
    rate: busbw, unit: 'GB/s busbw', algbw_gbs: algbw, busbw_gbs: busbw, bytes: m.bytes, ranks,
    ops_per_round: m.opsPerRound, round_ms: m.rounds,
  };
  if (ceilingGbs) row.pct_measured = (100 * busbw) / ceilingGbs;
  return row;
}

/** The measured memory-copy ceiling (GB/s) of a device kind among the results, or null. */
function copyCeiling(results, kind) {
  const op = kind === 'cuda' ? 'ceiling.copy_d2d' : 'ceiling.copy';
  return results.find((r) => r.device === kind && r.op === op)?.rate ?? null;
}

const fmt = (v, d) => (v === undefined || v === null || !Number.isFinite(v) ? '-' : v.toFixed(d));
/** Three significant digits (bandwidths span 1e-3 to 1e2 GB/s). */
const sig = (v) => (v === undefined || v === null || !Number.isFinite(v) ? '-' : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));

/** The collectives table (both collectives side by side, one line per size) and its notes, as markdown lines. */
function collectiveTable(rows, { device, ranks, backend, ceilingGbs }) {
  const sizes = [...new Set(rows.map((r) => r.bytes))];
  const cell = (op, bytes) => {
    const r = rows.find((x) => x.op === op && x.bytes === bytes);
    return r ? `${fmt(r.ms, 3)} | ${sig(r.algbw_gbs)} | ${sig(r.busbw_gbs)} | ${sig(r.pct_measured)}` : '- | - | - | -';
  };
  const [ar, a2a] = [COLLECTIVES.all_reduce, COLLECTIVES.all_to_all];
  return [
    '',
    `### Collectives (${device}, ${backend}, ${ranks} ranks × 1 thread, float32; bandwidths as nccl-tests define them)`,
    '',
    `| bytes per rank | ${ar.label} ms | algbw GB/s | busbw GB/s | % copy | ${a2a.label} ms | algbw GB/s | busbw GB/s | % copy |`,
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...sizes.map((b) => `| ${formatSize(b)} | ${cell(ar.op, b)} | ${cell(a2a.op, b)} |`),
    '',
    `algbw = S / t (S: bytes per rank); busbw = algbw · 2(n−1)/n (all-reduce), algbw · (n−1)/n (all-to-all), n = ${ranks}.`,
    `% copy: busbw as % of the measured memory-copy ceiling (${ceilingGbs ? `${fmt(ceilingGbs, 1)} GB/s, ` : 'not measured in this run, '}`
      + 'read + write bytes of a 256 MiB memcpy over all cores, row ceiling.copy). t: median of the rounds\' slowest rank, per collective.',
    ...NOT_YET_MEASURED,
    '',
  ];
}

/**
 * Runs the suite on `device` ('cpu', or 'cuda' with one GPU per rank): launches the ranks, reads
 * rank 0's measurements, returns { rows, notes } (rows in the house format, notes: the markdown table).
 */
async function commSuite(moma, device, results) {
  const ranks = envInt('MOMA_BENCH_COMM_RANKS', 2);
  if (ranks < 2) throw new Error('MOMA_BENCH_COMM_RANKS must be at least 2');
  const kind = deviceKind(device);
  if (isCuda(device) && moma.cudaDeviceCount() < ranks) {
    return { rows: [], notes: [`comm on ${device}: skipped, NCCL needs one GPU per rank (${ranks} ranks, ${moma.cudaDeviceCount()} visible)`] };
  }
  const sizes = commSizes(process.env, ranks);
  const repeats = envInt('MOMA_BENCH_REPEATS', 5);
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moma-bench-comm-')), 'rank0.json');
  try {
    const launched = await moma.distributed.launch({
      command: [process.execPath, __filename, '--worker', '--device', kind, '--sizes', sizes.join(','), '--repeats', String(repeats), '--out', out],
      nprocPerNode: ranks,
      masterPort: 0,
      env: { MOMA_NUM_THREADS: '1' },
      cwd: root,
      stdout: process.stderr,
      stderr: process.stderr,
    });
    if (!launched.ok) throw new Error(`comm: the ranks failed: ${launched.message}`);
    const measured = JSON.parse(fs.readFileSync(out, 'utf8'));
    const ceilingGbs = copyCeiling(results, kind);
    const rows = [];
    for (const group of ROW_GROUPS) {
      if (group === 'collectives') rows.push(...measured.collectives.map((m) => collectiveRow(m, { device: kind, ranks, ceilingGbs })));
    }
    return { rows, notes: collectiveTable(rows, { device: kind, ranks, backend: measured.backend, ceilingGbs }) };
  } finally {
    fs.rmSync(path.dirname(out), { recursive: true, force: true });
  }
}

/** Issues one collective of `name` on x (1-D float32, numel divisible by the world size). */
function issue(moma, name, x, ranks) {
  if (name === 'all_reduce') return moma.distributed.allReduce(x, { op: 'sum' });
  const counts = Array(ranks).fill(x.shape[0] / ranks);
  return moma.distributed.allToAll(x, { sendCounts: counts, recvCounts: counts });
}

/** Checks the result of `name` when every rank r sent all (r + 1): its first and last elements of each rank's block. */
async function check(moma, name, y, ranks) {
  const block = y.shape[0] / ranks;
  const ends = y.reshape([ranks, block]);
  const first = Array.from(await ends.slice(1, 0, 1).toArray());
  const last = Array.from(await ends.slice(1, block - 1, block).toArray());
  const expected = Array.from({ length: ranks }, (_, p) => (name === 'all_reduce' ? (ranks * (ranks + 1)) / 2 : p + 1));
  if (first.join() !== expected.join() || last.join() !== expected.join()) {
    throw new Error(`comm: ${name} of ${y.shape[0]} float32 gave block ends ${first} … ${last}, expected ${expected}`);
  }
}

/** One rank of the suite: times every collective at every size; rank 0 writes the measurements to `out`. */
async function worker(args) {
  const moma = require(path.join(root, 'dist'));
  const world = await moma.distributed.init(args.device === 'cpu' ? { device: 'cpu' } : {});
  const ranks = world.worldSize;
  const collectives = [];
  for (const name of Object.keys(COLLECTIVES)) {
    for (const bytes of args.sizes) {
      const x = moma.full([bytes / FLOAT32_BYTES], world.rank + 1, { device: world.device });
      const n = opsPerRound(bytes);
      const roundMs = [];
      let y = null;
      for (let round = 0; round <= args.repeats; round++) {
        await moma.distributed.barrier();
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < n; i++) {
          const next = issue(moma, name, x, ranks);
          y?.dispose();
          y = next;
        }
        await moma.synchronize(world.device);
        if (round > 0) roundMs.push(Number(process.hrtime.bigint() - t0) / 1e6 / n);
      }
      await check(moma, name, y, ranks);
      y.dispose();
      x.dispose();
      const local = moma.tensor(roundMs, { device: world.device });
      const slowest = moma.distributed.allReduce(local, { op: 'max' });
      const rounds = Array.from(await slowest.toArray());
      local.dispose();
      slowest.dispose();
      const m = { collective: name, bytes, ms: median(rounds), opsPerRound: n, rounds };
      collectives.push(m);
      if (world.rank === 0) {
        console.log(`comm ${name} ${formatSize(bytes)}: ${m.ms.toFixed(3)} ms, algbw ${algBandwidth(bytes, m.ms).toFixed(2)} GB/s (${n} per round)`);
      }
    }
  }
  if (world.rank === 0) fs.writeFileSync(args.out, JSON.stringify({ backend: world.backend, ranks, collectives }, null, 2));
  await moma.distributed.barrier();
  moma.distributed.destroy();
}

if (require.main === module) {
  Promise.resolve()
    .then(() => worker(parseWorkerArgs(process.argv.slice(2))))
    .catch((e) => {
      console.error(e instanceof Error ? e.message : e);
      process.exit(1);
    });
}

module.exports = {
  commSuite, parseSize, formatSize, commSizes, opsPerRound, algBandwidth, busBandwidth, parseWorkerArgs, collectiveRow,
  copyCeiling, collectiveTable, DEFAULT_SIZES, ROW_GROUPS,
};
