// The `comm` suite: collectives between ranks on one machine, and data-parallel training on them,
// started by the suite itself through moma's launcher (lib/distributed/launcher.ts).
//
// Row group `collectives`: all-reduce (sum) and all-to-all (equal splits) of a float32 buffer of S
// bytes per rank, S = 4 KiB … 256 MiB in powers of 4 (MOMA_BENCH_COMM_SIZES overrides, e.g.
// "4KiB,1MiB"), on MOMA_BENCH_COMM_RANKS ranks (default 2), each rank on MOMA_NUM_THREADS=1. A
// timed round: barrier (the ranks start together, nothing queued), N back-to-back collectives,
// then moma.synchronize (resolves when the queued collectives have run: gloo runs them on the CPU
// queue's worker, NCCL on the device stream), time / N. N grows as S shrinks so a round moves about
// 64 MiB (1 ≤ N ≤ 100). A round's time is the slowest rank's (an all-reduce of the per-round times
// with max); the row's time is the median of MOMA_BENCH_REPEATS rounds (default 5) after one
// warm-up round. The last result of each size is checked against its known value.
// Bandwidths as nccl-tests define them (doc/PERFORMANCE.md): algbw = S / t, S the per-rank buffer;
// busbw = algbw · 2(n−1)/n for all-reduce and algbw · (n−1)/n for all-to-all, n ranks. The ceiling
// is the machine's memory-copy bandwidth from the native benchmark's `ceiling` suite (row
// ceiling.copy: memcpy of 256 MiB over all cores, read + write bytes; ceiling.copy_d2d on a GPU),
// measured in the same run; rows give busbw as % of it.
//
// Row group `scaling` (CPU): weak scaling of `moma train` (the CLI, through the launcher) from 1 to
// 2 ranks at the same micro-batch per rank (8 × 256 tokens of the built-in data), on the same cores:
// each rank gets its share of the machine's threads (1 rank × all threads, 2 ranks × half each).
// Models: tiny-4t4i and d512-4t4i (d 512, 4 layers, as bench/train_step.js describes it);
// MOMA_BENCH_SCALING_MODELS picks. Each run logs every step (--log-every 1); its tokens/s is the
// median of metrics.jsonl's per-step tokensPerSecond (global over the ranks) after the warm-up
// steps, its step time the median of the per-step seconds. Three runs per model:
//   1 rank    one rank with all threads;
//   2 ranks   data parallel, half the threads each;
//   2 alone   two independent single-rank runs at once, half the threads each: the same compute
//             on the same cores without the gradient all-reduce (nor any other collective).
// The gradient all-reduce is measured two ways: (a) alone, the model's gradients through the
// Trainer's own allReduceGradients (lib/train/data_parallel.ts: the same 25 MiB buckets, concat,
// all-reduce, slices) on 2 ranks of the same threads, timed like a collective above (median of
// min(MOMA_BENCH_REPEATS, 3) rounds after a warm-up, slowest rank); (b) in place, the 2-rank step
// time minus the `2 alone` step time. Efficiency = tokens/s of 2 ranks ÷ tokens/s of 1 rank (ideal 1:
// both use the same cores; on separate devices the ideal would be 2 ×), and the data-parallel
// efficiency = 2 ranks ÷ (sum of the 2 alone runs).
//
// Row group `overlap`: the gradient all-reduce is queued after the backward on the device queue
// (the CPU queue runs one op at a time), so none of it is hidden: measured overlap 0. Its rows give
// the time an overlapped all-reduce could hide: all buckets but the last one flushed (the bucket of
// the first parameters, whose gradients come last in the backward), as a share of the all-reduce
// time in proportion to bytes.
//
// MOMA_BENCH_COMM_GROUPS=collectives,scaling,overlap picks row groups (default all; overlap needs
// scaling). Run as `node bench/comm.js --worker …` this file is one rank of the suite (launched by it).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { Writable } = require('stream');
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
const WORKER_USAGE = 'usage: node bench/comm.js --worker --device cpu|cuda (--sizes BYTES[,BYTES…] | --gradients MODEL) --repeats N --out FILE';
const CLI = path.join(root, 'dist', 'cli', 'main.js');

/** The collectives timed, with nccl-tests' bus-bandwidth factor for n ranks. */
const COLLECTIVES = {
  all_reduce: { op: 'comm.all_reduce_sum_f32', label: 'all-reduce (sum)', busFactor: (n) => (2 * (n - 1)) / n },
  all_to_all: { op: 'comm.all_to_all_f32', label: 'all-to-all (equal splits)', busFactor: (n) => (n - 1) / n },
};

/** Row groups of the suite, in report order (MOMA_BENCH_COMM_GROUPS picks some). */
const ROW_GROUPS = ['collectives', 'scaling', 'overlap'];

/** d 512, 4 layers: the 90M tier's width, as bench/train_step.js's d512 models. */
const D512 = { dModel: 512, layers: 4, heads: 8, ffn: { dFF: 1368 } };
/** The models of the scaling group: `steps` per run, the first `warmup` of them not counted. */
const SCALING_MODELS = [
  { name: 'tiny-4t4i', preset: 'tiny-4t4i', model: {}, steps: 12, warmup: 3 },
  { name: 'd512-4t4i', preset: 'tiny-4t4i', model: D512, steps: 8, warmup: 3 },
];
/** Micro-batch of every rank in the scaling runs: sequences × tokens. */
const SCALING_BATCH = 8;
const SCALING_SEQ = 256;
/** The Trainer's gradient bucket (lib/train/data_parallel.ts DEFAULT_BUCKET_BYTES, torch DDP's default). */
const GRADIENT_BUCKET_BYTES = 25 * MiB;
/** Timed rounds of the gradient all-reduce alone (at most; MOMA_BENCH_REPEATS when smaller). */
const GRADIENT_ROUNDS = 3;

/** A comma-separated list from the environment, each name checked against `known`; all of `known` when unset. */
function namesFromEnv(env, variable, known) {
  const raw = env[variable];
  if (raw === undefined || raw.trim() === '') return [...known];
  const names = raw.split(',').map((x) => x.trim()).filter(Boolean);
  const unknown = names.filter((n) => !known.includes(n));
  if (unknown.length) throw new Error(`${variable}: unknown name(s) ${unknown.join(', ')}; known: ${known.join(', ')}`);
  return known.filter((n) => names.includes(n));
}

/** The row groups to run: MOMA_BENCH_COMM_GROUPS or all; `overlap` needs `scaling`'s measurements. */
function commGroups(env) {
  const groups = namesFromEnv(env, 'MOMA_BENCH_COMM_GROUPS', ROW_GROUPS);
  if (groups.includes('overlap') && !groups.includes('scaling')) throw new Error('MOMA_BENCH_COMM_GROUPS: overlap needs scaling (it reports the all-reduce the scaling runs measure)');
  return groups;
}

/** The scaling group's models: MOMA_BENCH_SCALING_MODELS or all. */
function scalingModels(env) {
  const names = namesFromEnv(env, 'MOMA_BENCH_SCALING_MODELS', SCALING_MODELS.map((m) => m.name));
  return SCALING_MODELS.filter((m) => names.includes(m.name));
}

/**
 * The byte sizes of the gradient buckets in the order the Trainer flushes them (as
 * allReduceGradients in lib/train/data_parallel.ts: parameters last to first, a bucket closes once
 * it holds at least `bucketBytes`, the rest is the last bucket). `numels`: parameters in model order.
 */
function gradientBuckets(numels, bucketBytes = GRADIENT_BUCKET_BYTES) {
  const buckets = [];
  let bytes = 0;
  for (const n of [...numels].reverse()) {
    bytes += n * FLOAT32_BYTES;
    if (bytes >= bucketBytes) {
      buckets.push(bytes);
      bytes = 0;
    }
  }
  if (bytes > 0) buckets.push(bytes);
  return buckets;
}

/** The backward's share of a training step's compute: 2 of the 3 forward-equivalents (SPEC §6). */
const BACKWARD_SHARE = 2 / 3;

/**
 * The all-reduce time an overlapped backward could hide: every bucket but the last one flushed
 * (its gradients are the backward's last), taking time in proportion to bytes, and no more than
 * the backward lasts (`backwardMs`).
 */
function hideableMs(allReduceMs, buckets, backwardMs) {
  const total = buckets.reduce((a, b) => a + b, 0);
  const early = total === 0 ? 0 : (allReduceMs * (total - buckets[buckets.length - 1])) / total;
  return Math.min(early, backwardMs);
}

/** Median tokens/s and step time of a run's per-step records after its first `warmup` steps. */
function runSpeed(records, warmup) {
  const timed = records.filter((r) => r.step > warmup);
  if (timed.length === 0) throw new Error(`comm: no logged step after the ${warmup} warm-up steps (steps logged: ${records.map((r) => r.step).join(', ') || 'none'})`);
  return { tokensPerS: median(timed.map((r) => r.tokensPerSecond)), stepMs: 1000 * median(timed.map((r) => r.seconds)), steps: timed.length };
}

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

/**
 * The worker's command line: { device: 'cpu' | 'cuda', sizes: bytes[] | null, gradients: model
 * name | null, repeats, out }; exactly one of sizes (time the collectives) and gradients (time a
 * scaling model's gradient all-reduce).
 */
function parseWorkerArgs(argv) {
  const args = { device: 'cpu', sizes: null, gradients: null, repeats: null, out: null };
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
    } else if (a === '--gradients') {
      args.gradients = value();
      if (!SCALING_MODELS.some((m) => m.name === args.gradients)) throw new Error(`comm: --gradients must name a scaling model (${SCALING_MODELS.map((m) => m.name).join(', ')}), got '${args.gradients}'`);
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
  if ((args.sizes === null) === (args.gradients === null)) throw new Error(`comm: give one of --sizes and --gradients\n${WORKER_USAGE}`);
  for (const name of ['repeats', 'out']) if (args[name] === null) throw new Error(`comm: --${name} is required\n${WORKER_USAGE}`);
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
    '',
  ];
}

/** A stream that drops what is written to it (the training runs' progress lines). */
const discard = () => new Writable({ write: (_chunk, _encoding, done) => done() });

/** Launches `command` on `ranks` ranks with `threads` CPU threads each; throws with the launcher's message when a rank fails. */
async function launchRanks(moma, command, { ranks, threads, stdout = process.stderr }) {
  const launched = await moma.distributed.launch({
    command, nprocPerNode: ranks, masterPort: 0, env: { MOMA_NUM_THREADS: String(threads) }, cwd: root, stdout, stderr: process.stderr,
  });
  if (!launched.ok) throw new Error(`comm: the ranks failed: ${launched.message}`);
}

/**
 * One `moma train` run of a scaling model on `ranks` ranks × `threads` threads into `dir`; returns
 * its per-step records (metrics.jsonl, every step logged).
 */
async function trainRun(moma, m, { ranks, threads, dir }) {
  const args = [
    'train', '--device', 'cpu', '--preset', m.preset, '--steps', String(m.steps), '--batch-size', String(SCALING_BATCH),
    '--seq-len', String(SCALING_SEQ), '--log-every', '1', '--eval-every', '0', '--eval-batches', '1', '--checkpoint-every', '0',
    '--out', path.join(dir, 'run'),
  ];
  fs.mkdirSync(dir, { recursive: true });
  if (Object.keys(m.model).length > 0) {
    const config = path.join(dir, 'config.json');
    fs.writeFileSync(config, JSON.stringify({ model: m.model }));
    args.push('--config', config);
  }
  await launchRanks(moma, [process.execPath, CLI, ...args], { ranks, threads, stdout: discard() });
  const lines = fs.readFileSync(path.join(dir, 'run', 'metrics.jsonl'), 'utf8').split('\n').filter(Boolean);
  return lines.map((l) => JSON.parse(l)).filter((r) => r.kind === undefined && typeof r.step === 'number');
}

/**
 * The scaling group on the CPU: per model, the three training runs and the gradient all-reduce
 * alone; returns one measurement per model.
 */
async function scalingGroup(moma, { threads, repeats, tmp }) {
  const half = Math.max(1, Math.floor(threads / 2));
  const measured = [];
  for (const m of scalingModels(process.env)) {
    const dir = (name) => path.join(tmp, m.name, name);
    console.error(`comm scaling ${m.name}: 1 rank × ${threads} threads …`);
    const one = runSpeed(await trainRun(moma, m, { ranks: 1, threads, dir: dir('1rank') }), m.warmup);
    console.error(`comm scaling ${m.name}: 2 ranks × ${half} thread(s) …`);
    const two = runSpeed(await trainRun(moma, m, { ranks: 2, threads: half, dir: dir('2ranks') }), m.warmup);
    console.error(`comm scaling ${m.name}: 2 single-rank runs at once × ${half} thread(s) …`);
    const alone = (await Promise.all([0, 1].map((i) => trainRun(moma, m, { ranks: 1, threads: half, dir: dir(`alone${i}`) }))))
      .map((records) => runSpeed(records, m.warmup));
    console.error(`comm scaling ${m.name}: gradient all-reduce alone, 2 ranks × ${half} thread(s) …`);
    const out = path.join(tmp, m.name, 'gradients.json');
    const rounds = Math.min(repeats, GRADIENT_ROUNDS);
    await launchRanks(moma, [process.execPath, __filename, '--worker', '--device', 'cpu', '--gradients', m.name, '--repeats', String(rounds), '--out', out], { ranks: 2, threads: half });
    const gradients = JSON.parse(fs.readFileSync(out, 'utf8'));
    measured.push({
      model: m.name, threads, half, one, two, alone: { tokensPerS: alone[0].tokensPerS + alone[1].tokensPerS, stepMs: Math.max(alone[0].stepMs, alone[1].stepMs), runs: alone },
      gradients,
    });
  }
  return measured;
}

/** Rows of the report from one model's scaling measurement (tokens/s rows, the all-reduce row, and the overlap row when asked). */
function scalingRows(s, { overlap }) {
  const batch = `B${SCALING_BATCH} S${SCALING_SEQ} per rank`;
  const threadsText = (n) => `${n} thread${n === 1 ? '' : 's'}`;
  const g = s.gradients;
  const efficiency = s.two.tokensPerS / s.one.tokensPerS;
  const dpEfficiency = s.two.tokensPerS / s.alone.tokensPerS;
  const share = g.ms / s.two.stepMs;
  const inPlaceShare = (s.two.stepMs - s.alone.stepMs) / s.two.stepMs;
  const speed = (shape, run) => ({ device: 'cpu', op: `scaling.${s.model}`, shape: `${shape}, ${batch}`, ms: run.stepMs, rate: run.tokensPerS, unit: 'tokens/s', steps: run.steps });
  const rows = [
    speed(`1 rank × ${threadsText(s.threads)}`, s.one),
    {
      ...speed(`2 ranks × ${threadsText(s.half)}`, s.two), efficiency, dp_efficiency: dpEfficiency, all_reduce_ms: g.ms, all_reduce_share: share, in_place_share: inPlaceShare,
      note: `weak scaling on the same ${s.threads} threads: ${efficiency.toFixed(2)} × the 1-rank tokens/s (ideal 1), ${dpEfficiency.toFixed(2)} × two independent runs; gradient all-reduce ${fmt(g.ms, 0)} ms = ${(100 * share).toFixed(0)}% of the step (in place: ${(100 * inPlaceShare).toFixed(0)}%)`,
    },
    { ...speed(`2 independent 1-rank runs at once × ${threadsText(s.half)} (no all-reduce)`, s.alone), steps: s.alone.runs.map((r) => r.steps) },
  ];
  const algbw = algBandwidth(g.bytes, g.ms);
  rows.push({
    device: 'cpu', op: `scaling.${s.model}.grad_all_reduce`, shape: `${(g.bytes / MiB).toFixed(1)} MiB in ${g.buckets.length} bucket(s), 2 ranks × ${threadsText(s.half)}`,
    ms: g.ms, rate: busBandwidth('all_reduce', algbw, g.ranks), unit: 'GB/s busbw', algbw_gbs: algbw, bytes: g.bytes, buckets: g.buckets, round_ms: g.rounds,
  });
  if (overlap) {
    const hide = hideableMs(g.ms, g.buckets, BACKWARD_SHARE * s.alone.stepMs);
    rows.push({
      device: 'cpu', op: `overlap.${s.model}.grad_all_reduce`, shape: `${g.buckets.length} bucket(s), 2 ranks`, ms: g.ms, rate: 0, unit: '% hidden',
      hideable_ms: hide, note: `measured overlap 0 (the all-reduce is queued after the backward); an overlapped backward could hide up to ${fmt(hide, 0)} ms of the ${fmt(g.ms, 0)} ms`,
    });
  }
  return rows;
}

/** The scaling table (and the overlap table when asked), as markdown lines. */
function scalingTables(measured, { backend, overlap }) {
  if (measured.length === 0) return [];
  const { threads, half } = measured[0];
  const lines = [
    '',
    `### Data-parallel scaling (cpu, ${backend}; \`moma train\`, micro-batch ${SCALING_BATCH} × ${SCALING_SEQ} tokens per rank; 1 rank × ${threads} threads vs 2 ranks × ${half})`,
    '',
    '| model | parameters | 1 rank tokens/s | 2 ranks tokens/s | 2 alone tokens/s | 2 ranks / 1 rank | 2 ranks / 2 alone | step ms: 1 rank | 2 ranks | 2 alone | grad all-reduce ms | % of 2-rank step | in place: (2 ranks − 2 alone) / 2 ranks |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...measured.map((s) => {
      const g = s.gradients;
      return `| ${s.model} | ${(g.parameters / 1e6).toFixed(2)} M | ${fmt(s.one.tokensPerS, 0)} | ${fmt(s.two.tokensPerS, 0)} | ${fmt(s.alone.tokensPerS, 0)} | `
        + `${fmt(s.two.tokensPerS / s.one.tokensPerS, 2)} | ${fmt(s.two.tokensPerS / s.alone.tokensPerS, 2)} | ${fmt(s.one.stepMs, 0)} | ${fmt(s.two.stepMs, 0)} | ${fmt(s.alone.stepMs, 0)} | `
        + `${fmt(g.ms, 0)} | ${fmt((100 * g.ms) / s.two.stepMs, 0)} | ${fmt((100 * (s.two.stepMs - s.alone.stepMs)) / s.two.stepMs, 0)} |`;
    }),
    '',
    `Weak scaling on one machine: the ranks share its ${threads} threads (each rank its share, MOMA_NUM_THREADS), so the ideal of`,
    '2 ranks / 1 rank is 1, not 2. "2 alone": two independent single-rank runs at once, the same compute on the same cores',
    'without any collective; 2 ranks / 2 alone is the cost of data parallelism itself. tokens/s: median over the steps after',
    'the warm-up of metrics.jsonl\'s tokensPerSecond (global over the ranks; 2 alone: the sum of both runs); step ms: median',
    'of the per-step seconds. grad all-reduce ms: the model\'s float32 gradients through the Trainer\'s allReduceGradients',
    '(25 MiB buckets) on 2 ranks with no training alongside, median of the slowest rank\'s rounds; "in place" estimates the',
    'same cost from the step times, with the compute contention of the real step. The runs follow each other, so a load',
    'that changes between them (other jobs on a shared machine: see the load average above) moves these ratios.',
  ];
  if (overlap) {
    lines.push(
      '',
      '### Overlap of the gradient all-reduce with the backward (cpu)',
      '',
      '| model | gradient MiB | buckets | all-reduce ms | measured overlap | backward ms (est.) | could hide ms | % of 2-rank step |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...measured.map((s) => {
        const g = s.gradients;
        const backward = BACKWARD_SHARE * s.alone.stepMs;
        const hide = hideableMs(g.ms, g.buckets, backward);
        return `| ${s.model} | ${(g.bytes / MiB).toFixed(1)} | ${g.buckets.length} | ${fmt(g.ms, 0)} | 0% | ${fmt(backward, 0)} | ${fmt(hide, 0)} | ${fmt((100 * hide) / s.two.stepMs, 0)} |`;
      }),
      '',
      'Measured overlap is 0: the Trainer queues the bucketed all-reduce after the whole backward, and the CPU queue runs one',
      'op at a time on its thread. With DDP-style overlap each bucket would reduce while the backward computes the earlier',
      'layers\' gradients; only the last bucket flushed (the first parameters, the embedding) would stay exposed, and a model',
      'whose gradients fit one 25 MiB bucket has nothing to hide. "Could hide": all buckets but the last, time in proportion',
      'to bytes, at most the backward (2/3 of the "2 alone" step, SPEC §6: backward = 2 × forward FLOPs).',
    );
  }
  return lines;
}

/**
 * Runs the suite on `device` ('cpu', or 'cuda' with one GPU per rank): launches the ranks, reads
 * rank 0's measurements, returns { rows, notes } (rows in the house format, notes: the markdown tables).
 */
async function commSuite(moma, device, results) {
  const ranks = envInt('MOMA_BENCH_COMM_RANKS', 2);
  if (ranks < 2) throw new Error('MOMA_BENCH_COMM_RANKS must be at least 2');
  const groups = commGroups(process.env);
  const kind = deviceKind(device);
  if (isCuda(device) && moma.cudaDeviceCount() < ranks) {
    return { rows: [], notes: [`comm on ${device}: skipped, NCCL needs one GPU per rank (${ranks} ranks, ${moma.cudaDeviceCount()} visible)`] };
  }
  const repeats = envInt('MOMA_BENCH_REPEATS', 5);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-bench-comm-'));
  const rows = [];
  const notes = [];
  try {
    let backend = kind === 'cpu' ? 'gloo' : 'nccl';
    if (groups.includes('collectives')) {
      const sizes = commSizes(process.env, ranks);
      const out = path.join(tmp, 'rank0.json');
      await launchRanks(moma, [process.execPath, __filename, '--worker', '--device', kind, '--sizes', sizes.join(','), '--repeats', String(repeats), '--out', out], { ranks, threads: 1 });
      const measured = JSON.parse(fs.readFileSync(out, 'utf8'));
      backend = measured.backend;
      const ceilingGbs = copyCeiling(results, kind);
      const collectiveRows = measured.collectives.map((m) => collectiveRow(m, { device: kind, ranks, ceilingGbs }));
      rows.push(...collectiveRows);
      notes.push(...collectiveTable(collectiveRows, { device: kind, ranks, backend, ceilingGbs }));
    }
    if (groups.includes('scaling')) {
      if (isCuda(device)) {
        notes.push('', `scaling and overlap on ${device}: not run, this suite trains the scaling models on the CPU only`);
      } else {
        const overlap = groups.includes('overlap');
        const measured = await scalingGroup(moma, { threads: moma.inspect().cpu.threads, repeats, tmp });
        for (const s of measured) rows.push(...scalingRows(s, { overlap }));
        notes.push(...scalingTables(measured, { backend, overlap }));
      }
    }
    return { rows, notes };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
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

/** The slowest rank's time of each round (an all-reduce with max over the ranks). */
async function slowestRounds(moma, roundMs, device) {
  const local = moma.tensor(roundMs, { device });
  const slowest = moma.distributed.allReduce(local, { op: 'max' });
  const rounds = Array.from(await slowest.toArray());
  local.dispose();
  slowest.dispose();
  return rounds;
}

/**
 * One rank timing a scaling model's gradient all-reduce: the model as `moma train` builds it (the
 * built-in data's vocabulary), its gradients through the Trainer's allReduceGradients (zeros the
 * first time, then the reduced ones again), each round barrier → all-reduce → synchronize.
 */
async function gradientWorker(moma, world, args) {
  const { allReduceGradients } = require(path.join(root, 'dist', 'train', 'data_parallel'));
  const m = SCALING_MODELS.find((x) => x.name === args.gradients);
  const { layout } = await moma.builtinDataset({ seed: 0 });
  const model = new moma.Transformer(moma.preset(m.preset, { ...m.model, vocabSize: layout.size, device: world.device, seed: 0 }));
  const parameters = model.parameters();
  const roundMs = [];
  for (let round = 0; round <= args.repeats; round++) {
    await moma.distributed.barrier();
    const t0 = process.hrtime.bigint();
    allReduceGradients(parameters);
    await moma.synchronize(world.device);
    if (round > 0) roundMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const rounds = await slowestRounds(moma, roundMs, world.device);
  const numels = parameters.map((p) => p.numel);
  const result = {
    backend: world.backend, ranks: world.worldSize, model: m.name, parameters: numels.reduce((a, b) => a + b, 0),
    bytes: numels.reduce((a, b) => a + b, 0) * FLOAT32_BYTES, buckets: gradientBuckets(numels), ms: median(rounds), rounds,
  };
  model.dispose();
  return result;
}

/** One rank of the suite: times every collective at every size, or a model's gradient all-reduce; rank 0 writes the measurements to `out`. */
async function worker(args) {
  const moma = require(path.join(root, 'dist'));
  const world = await moma.distributed.init(args.device === 'cpu' ? { device: 'cpu' } : {});
  if (args.gradients !== null) {
    const result = await gradientWorker(moma, world, args);
    if (world.rank === 0) fs.writeFileSync(args.out, JSON.stringify(result, null, 2));
    await moma.distributed.barrier();
    moma.distributed.destroy();
    return;
  }
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
      const rounds = await slowestRounds(moma, roundMs, world.device);
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
  copyCeiling, collectiveTable, commGroups, scalingModels, gradientBuckets, hideableMs, runSpeed, scalingRows, scalingTables,
  DEFAULT_SIZES, ROW_GROUPS, SCALING_MODELS,
};
