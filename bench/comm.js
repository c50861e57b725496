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
// Row group `overlap`: the gradient all-reduce overlapped with the backward, measured. Per model
// (MOMA_BENCH_OVERLAP_MODELS: scaling models, default tiny-4t4i alone, as d512-4t4i's 275 MiB
// all-reduce takes seconds), 2 ranks × half the threads each, one fixed micro-batch of
// the built-in data (8 × 256 tokens), three ways per round, interleaved:
//   (i)   forward + backward alone;
//   (ii)  forward + backward, then allReduceGradients (lib/train/data_parallel.ts: not overlapped);
//   (iii) forward + backward with GradientReducer's hook (overlap: true: a bucket starts, beside
//         the compute, as soon as its gradients are final), then finish().
// Each is timed from a barrier to the end of the device work (moma.synchronize), the slowest
// rank's time per round; medians of MOMA_BENCH_REPEATS rounds after one warm-up round. Buckets of
// MOMA_BENCH_OVERLAP_BUCKET bytes (default 4 MiB, so that the tiny model's 13 MiB of gradients make
// several buckets; the Trainer's 25 MiB would make one, and a single bucket has nothing to hide).
// comm = (ii) − (i), exposed comm = (iii) − (i), hidden fraction = ((ii) − (iii)) / ((ii) − (i))
// (raw in the JSON, clamped to [0, 1] in the tables).
//
// MOMA_BENCH_COMM_GROUPS=collectives,scaling,overlap picks row groups (default all). Run as
// `node bench/comm.js --worker …` this file is one rank of the suite (launched by it).
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
const WORKER_USAGE = 'usage: node bench/comm.js --worker --device cpu|cuda (--sizes BYTES[,BYTES…] | --gradients MODEL | --overlap MODEL [--bucket BYTES]) --repeats N --out FILE';
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

/** The row groups to run: MOMA_BENCH_COMM_GROUPS or all. */
function commGroups(env) {
  return namesFromEnv(env, 'MOMA_BENCH_COMM_GROUPS', ROW_GROUPS);
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

/**
 * The overlap group's models: MOMA_BENCH_OVERLAP_MODELS (scaling models' names) or tiny-4t4i alone
 * (d512-4t4i's 275 MiB of gradients take seconds per all-reduce on a CPU: minutes per round).
 */
function overlapModels(env) {
  const raw = env.MOMA_BENCH_OVERLAP_MODELS;
  const names = raw === undefined || raw.trim() === '' ? ['tiny-4t4i'] : namesFromEnv(env, 'MOMA_BENCH_OVERLAP_MODELS', SCALING_MODELS.map((m) => m.name));
  return SCALING_MODELS.filter((m) => names.includes(m.name));
}

/** Gradient bucket of the overlap group unless MOMA_BENCH_OVERLAP_BUCKET says otherwise. */
const OVERLAP_BUCKET_BYTES = 4 * MiB;

/** The overlap group's bucket size: MOMA_BENCH_OVERLAP_BUCKET (e.g. "4MiB") or 4 MiB. */
function overlapBucketBytes(env) {
  const raw = env.MOMA_BENCH_OVERLAP_BUCKET;
  return raw === undefined || raw.trim() === '' ? OVERLAP_BUCKET_BYTES : parseSize(raw);
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
 * name | null, overlap: model name | null, bucket: bytes, repeats, out }; exactly one of sizes
 * (time the collectives), gradients (time a scaling model's gradient all-reduce) and overlap (time
 * a scaling model's backward with and without the all-reduce, overlapped or not, in `bucket`-byte
 * buckets).
 */
function parseWorkerArgs(argv) {
  const args = { device: 'cpu', sizes: null, gradients: null, overlap: null, bucket: OVERLAP_BUCKET_BYTES, repeats: null, out: null };
  if (argv[0] !== '--worker') throw new Error(`comm: the first argument must be --worker\n${WORKER_USAGE}`);
  const scalingModel = (flag, name) => {
    if (!SCALING_MODELS.some((m) => m.name === name)) throw new Error(`comm: ${flag} must name a scaling model (${SCALING_MODELS.map((m) => m.name).join(', ')}), got '${name}'`);
    return name;
  };
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
      args.gradients = scalingModel(a, value());
    } else if (a === '--overlap') {
      args.overlap = scalingModel(a, value());
    } else if (a === '--bucket') {
      args.bucket = parseSize(value());
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
  if ([args.sizes, args.gradients, args.overlap].filter((x) => x !== null).length !== 1) throw new Error(`comm: give one of --sizes, --gradients and --overlap\n${WORKER_USAGE}`);
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
  return lines.map((l) => JSON.parse(l)).filter((r) => (r.kind === undefined || r.kind === 'step') && typeof r.step === 'number');
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

/** Rows of the report from one model's scaling measurement (tokens/s rows and the all-reduce row). */
function scalingRows(s) {
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
  return rows;
}

/** The scaling table, as markdown lines. */
function scalingTables(measured, { backend }) {
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
  return lines;
}

/**
 * The derived numbers of one overlap measurement { computeMs (i), sequentialMs (ii), overlappedMs
 * (iii) }: comm = (ii) − (i), exposed = (iii) − (i), hidden fraction = ((ii) − (iii)) / ((ii) − (i)),
 * raw (noise can put it outside [0, 1], and it means nothing when comm ≤ 0), and the hidden share
 * shown: that fraction clamped to [0, 1], null when comm ≤ 0 (no all-reduce time to hide).
 */
function overlapFigures({ computeMs, sequentialMs, overlappedMs }) {
  const commMs = sequentialMs - computeMs;
  const hiddenFraction = (sequentialMs - overlappedMs) / commMs;
  return { commMs, exposedMs: overlappedMs - computeMs, hiddenFraction, hiddenShown: commMs > 0 ? Math.min(1, Math.max(0, hiddenFraction)) : null };
}

/** A shown hidden share as a whole percentage, '-' when null. */
const percentShown = (f) => (f === null ? '-' : `${(100 * f).toFixed(0)}%`);

/**
 * The report row of one model's overlap measurement (from the worker's JSON): ms is the exposed
 * communication, rate the hidden share in % clamped to [0, 100], hidden_fraction the raw value.
 */
function overlapRow(o) {
  const { commMs, exposedMs, hiddenFraction, hiddenShown } = overlapFigures(o);
  const threads = `${o.threads} thread${o.threads === 1 ? '' : 's'}`;
  return {
    device: 'cpu', op: `overlap.${o.model}.grad_all_reduce`,
    shape: `${(o.bytes / MiB).toFixed(1)} MiB in ${o.buckets.length} bucket(s) of ${formatSize(o.bucketBytes)}, ${o.ranks} ranks × ${threads}, B${o.batch} S${o.seqLen} per rank`,
    ms: exposedMs, rate: hiddenShown === null ? 0 : 100 * hiddenShown, unit: '% hidden',
    compute_ms: o.computeMs, sequential_ms: o.sequentialMs, overlapped_ms: o.overlappedMs, comm_ms: commMs, exposed_ms: exposedMs,
    hidden_fraction: hiddenFraction, bucket_bytes: o.bucketBytes, bucket_count: o.buckets.length, buckets: o.buckets,
    gradient_mib: o.bytes / MiB, parameters: o.parameters, ranks: o.ranks, threads: o.threads,
    round_ms: { compute: o.rounds.compute, sequential: o.rounds.sequential, overlapped: o.rounds.overlapped },
    note: `(i) fwd+bwd ${fmt(o.computeMs, 0)} ms, (ii) + all-reduce ${fmt(o.sequentialMs, 0)} ms, (iii) overlapped ${fmt(o.overlappedMs, 0)} ms: `
      + `comm ${fmt(commMs, 0)} ms, exposed ${fmt(exposedMs, 0)} ms, hidden ${percentShown(hiddenShown)} (raw ${fmt(hiddenFraction, 2)})`,
  };
}

/** The overlap table, as markdown lines. */
function overlapTable(measured, { backend }) {
  if (measured.length === 0) return [];
  const { ranks, threads, batch, seqLen } = measured[0];
  return [
    '',
    `### Overlap of the gradient all-reduce with the backward (cpu, ${backend}; ${ranks} ranks × ${threads} thread${threads === 1 ? '' : 's'}, micro-batch ${batch} × ${seqLen} tokens per rank)`,
    '',
    '| model | gradient MiB | bucket | buckets | (i) fwd+bwd ms | (ii) + all-reduce ms | (iii) overlapped ms | comm ms (ii − i) | exposed ms (iii − i) | hidden ((ii − iii) / (ii − i)) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...measured.map((o) => {
      const { commMs, exposedMs, hiddenShown } = overlapFigures(o);
      return `| ${o.model} | ${fmt(o.bytes / MiB, 1)} | ${formatSize(o.bucketBytes)} | ${o.buckets.length} | ${fmt(o.computeMs, 0)} | ${fmt(o.sequentialMs, 0)} | `
        + `${fmt(o.overlappedMs, 0)} | ${fmt(commMs, 0)} | ${fmt(exposedMs, 0)} | ${percentShown(hiddenShown)} |`;
    }),
    '',
    '(i) forward + backward; (ii) then allReduceGradients (all buckets after the backward); (iii) with GradientReducer\'s',
    'hook (overlap: true), each bucket starting on the communication thread as soon as its gradients are final, then',
    'finish(). Each timed from a barrier to the end of the device work, slowest rank, median of the rounds after a warm-up',
    '(the three interleaved per round). Hidden is clamped to [0, 100]% here (\'-\' when comm ≤ 0); the JSON keeps the raw',
    'fraction. The last bucket (the first parameters, whose gradients come last) cannot be hidden, and on the CPU the',
    'communication thread competes with the compute threads for the same cores.',
  ];
}

/** The overlap group on the CPU: per scaling model, the worker's three timings on 2 ranks × `half` threads. */
async function overlapGroup(moma, { threads, repeats, tmp }) {
  const half = Math.max(1, Math.floor(threads / 2));
  const bucket = overlapBucketBytes(process.env);
  const measured = [];
  for (const m of overlapModels(process.env)) {
    console.error(`comm overlap ${m.name}: 2 ranks × ${half} thread(s), ${formatSize(bucket)} buckets …`);
    const out = path.join(tmp, m.name, 'overlap.json');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    await launchRanks(moma, [process.execPath, __filename, '--worker', '--device', 'cpu', '--overlap', m.name, '--bucket', String(bucket), '--repeats', String(repeats), '--out', out], { ranks: 2, threads: half });
    measured.push(JSON.parse(fs.readFileSync(out, 'utf8')));
  }
  return measured;
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
    if (isCuda(device) && (groups.includes('scaling') || groups.includes('overlap'))) {
      notes.push('', `scaling and overlap on ${device}: not run, this suite trains the scaling models on the CPU only`);
    } else {
      const threads = moma.inspect().cpu.threads;
      if (groups.includes('scaling')) {
        const measured = await scalingGroup(moma, { threads, repeats, tmp });
        for (const s of measured) rows.push(...scalingRows(s));
        notes.push(...scalingTables(measured, { backend }));
      }
      if (groups.includes('overlap')) {
        const measured = await overlapGroup(moma, { threads, repeats, tmp });
        rows.push(...measured.map(overlapRow));
        notes.push(...overlapTable(measured, { backend: measured[0]?.backend ?? backend }));
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

/** One fixed micro-batch of the built-in data (as bench/train_step.js packs it, half image tokens) on `device`. */
async function fixedBatch(moma, layout, dataset, device) {
  const packer = new moma.SequencePacker(dataset.store('train', 0), {
    batchSize: SCALING_BATCH, seqLen: SCALING_SEQ, isImage: (id) => moma.modalityOfId(layout, id) === 1, imageFraction: 0.5,
  });
  const vocab = moma.vocabFromSpec(layout);
  return moma.makeBatch(packer.next(), { padId: vocab.padId, bosId: vocab.bosId, modalityOf: vocab.modalityOf, modalities: 2, vocabSize: layout.size, device });
}

/**
 * One rank of the overlap group: a scaling model on one fixed micro-batch, per round (round 0 the
 * warm-up) (i) forward + backward, (ii) the same then allReduceGradients, (iii) the same with
 * GradientReducer's hook then finish(), each from zeroed gradients, timed from a barrier to the
 * end of the device work; returns the medians of the slowest rank's rounds.
 */
async function overlapWorker(moma, world, args) {
  const { allReduceGradients, GradientReducer } = require(path.join(root, 'dist', 'train', 'data_parallel'));
  const m = SCALING_MODELS.find((x) => x.name === args.overlap);
  const dataset = await moma.builtinDataset({ seed: 0 });
  const { layout } = dataset;
  const model = new moma.Transformer(moma.preset(m.preset, { ...m.model, vocabSize: layout.size, device: world.device, seed: 0 }));
  const parameters = model.parameters();
  const batch = await fixedBatch(moma, layout, dataset, world.device);
  const reducer = new GradientReducer([{ parameters }], { bucketBytes: args.bucket, overlap: true });
  const forwardBackward = (options) => moma.tidy(() => {
    const out = model.loss(batch, { training: true, generator: new moma.Generator(1) });
    moma.backward(out.loss, undefined, options);
  });
  const variants = {
    compute: () => forwardBackward({}),
    sequential: () => {
      forwardBackward({});
      allReduceGradients(parameters, args.bucket);
    },
    overlapped: () => {
      forwardBackward({ onGradReady: reducer.hook });
      reducer.finish();
    },
  };
  const local = { compute: [], sequential: [], overlapped: [] };
  for (let round = 0; round <= args.repeats; round++) {
    for (const [name, run] of Object.entries(variants)) {
      moma.zeroGrad(parameters);
      await moma.synchronize(world.device);
      await moma.distributed.barrier();
      const t0 = process.hrtime.bigint();
      run();
      await moma.synchronize(world.device);
      if (round > 0) local[name].push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  }
  const rounds = {};
  for (const name of Object.keys(local)) rounds[name] = await slowestRounds(moma, local[name], world.device);
  const numels = parameters.map((p) => p.numel);
  const total = numels.reduce((a, b) => a + b, 0);
  moma.zeroGrad(parameters);
  moma.disposeBatch(batch);
  model.dispose();
  return {
    backend: world.backend, ranks: world.worldSize, threads: moma.inspect().cpu.threads, model: m.name, batch: SCALING_BATCH, seqLen: SCALING_SEQ,
    parameters: total, bytes: total * FLOAT32_BYTES, bucketBytes: args.bucket, buckets: gradientBuckets(numels, args.bucket),
    computeMs: median(rounds.compute), sequentialMs: median(rounds.sequential), overlappedMs: median(rounds.overlapped), rounds,
  };
}

/** One rank of the suite: times every collective at every size, a model's gradient all-reduce or its overlap; rank 0 writes the measurements to `out`. */
async function worker(args) {
  const moma = require(path.join(root, 'dist'));
  const world = await moma.distributed.init(args.device === 'cpu' ? { device: 'cpu' } : {});
  if (args.gradients !== null || args.overlap !== null) {
    const result = await (args.gradients !== null ? gradientWorker : overlapWorker)(moma, world, args);
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
  copyCeiling, collectiveTable, commGroups, scalingModels, gradientBuckets, runSpeed, scalingRows, scalingTables,
  overlapModels, overlapBucketBytes, overlapFigures, overlapRow, overlapTable, DEFAULT_SIZES, ROW_GROUPS, SCALING_MODELS,
};
