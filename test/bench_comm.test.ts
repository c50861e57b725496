// The pure parts of the `comm` bench suite (bench/comm.js): nccl-tests' bandwidth formulas against
// hand-computed values, sizes, the worker's command line, and the rows and table built from a
// measurement; and one real launch of the overlap worker (2 gloo ranks), whose JSON must carry
// every field the overlap row is built from as a finite number (values are not asserted: timings).

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PassThrough } from 'stream';
import { launch as launchRanks } from '../lib/distributed/launcher';
import { ensureDist } from './support/cli';
import { describeGloo } from './support/dist_train';

interface Measurement { collective: string; bytes: number; ms: number; opsPerRound: number; rounds: number[] }
interface Row { op: string; shape: string; ms: number; rate: number; unit: string; algbw_gbs: number; busbw_gbs: number; pct_measured?: number; bytes: number }
interface CommBench {
  parseSize(text: string): number;
  formatSize(bytes: number): string;
  commSizes(env: Record<string, string | undefined>, ranks: number): number[];
  opsPerRound(bytes: number): number;
  algBandwidth(bytes: number, ms: number): number;
  busBandwidth(collective: string, algbw: number, ranks: number): number;
  parseWorkerArgs(argv: string[]): { device: string; sizes: number[] | null; gradients: string | null; overlap: string | null; bucket: number; repeats: number; out: string };
  collectiveRow(m: Measurement, context: { device: string; ranks: number; ceilingGbs: number | null }): Row;
  copyCeiling(results: { device: string; op: string; rate: number }[], kind: string): number | null;
  collectiveTable(rows: Row[], context: { device: string; ranks: number; backend: string; ceilingGbs: number | null }): string[];
  DEFAULT_SIZES: number[];
  ROW_GROUPS: string[];
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
const comm = require('../bench/comm') as CommBench;

describe('bench comm: bandwidths as nccl-tests define them', () => {
  test('algbw is bytes per rank over time, in 1e9 bytes/s', () => {
    // 1 MiB in 1 ms: 1048576 B / 0.001 s = 1.048576e9 B/s
    expect(comm.algBandwidth(1048576, 1)).toBeCloseTo(1.048576, 12);
    // 256 MiB in 250 ms: 268435456 / 0.25 = 1.073741824e9
    expect(comm.algBandwidth(268435456, 250)).toBeCloseTo(1.073741824, 12);
  });

  test('all-reduce busbw = algbw * 2(n-1)/n', () => {
    expect(comm.busBandwidth('all_reduce', 10, 2)).toBeCloseTo(10, 12); // 2*1/2 = 1
    expect(comm.busBandwidth('all_reduce', 10, 4)).toBeCloseTo(15, 12); // 2*3/4 = 1.5
    expect(comm.busBandwidth('all_reduce', 10, 8)).toBeCloseTo(17.5, 12); // 2*7/8 = 1.75
    expect(comm.busBandwidth('all_reduce', 10, 1)).toBe(0);
  });

  test('all-to-all busbw = algbw * (n-1)/n', () => {
    expect(comm.busBandwidth('all_to_all', 10, 2)).toBeCloseTo(5, 12);
    expect(comm.busBandwidth('all_to_all', 10, 4)).toBeCloseTo(7.5, 12);
    expect(comm.busBandwidth('all_to_all', 8, 8)).toBeCloseTo(7, 12);
  });

  test('an unknown collective or a bad rank count throws', () => {
    expect(() => comm.busBandwidth('all_gather', 1, 2)).toThrow(/unknown collective 'all_gather'/);
    expect(() => comm.busBandwidth('all_reduce', 1, 0)).toThrow(/ranks must be an integer >= 1/);
  });
});

describe('bench comm: sizes', () => {
  test('parseSize takes bytes and binary units, formatSize gives them back', () => {
    expect(comm.parseSize('4096')).toBe(4096);
    expect(comm.parseSize('4KiB')).toBe(4096);
    expect(comm.parseSize('16MiB')).toBe(16 * 1024 * 1024);
    expect(comm.parseSize('1GiB')).toBe(1024 ** 3);
    expect(comm.parseSize('12B')).toBe(12);
    expect(comm.formatSize(4096)).toBe('4KiB');
    expect(comm.formatSize(256 * 1024 * 1024)).toBe('256MiB');
    expect(comm.formatSize(1000)).toBe('1000B');
    for (const bad of ['4kb', '-4', '1.5MiB', '', 'MiB', '0']) expect(() => comm.parseSize(bad)).toThrow(/comm: size/);
  });

  test('the default sizes are 4 KiB to 256 MiB in powers of 4', () => {
    expect(comm.DEFAULT_SIZES.map(comm.formatSize)).toEqual(['4KiB', '16KiB', '64KiB', '256KiB', '1MiB', '4MiB', '16MiB', '64MiB', '256MiB']);
    expect(comm.commSizes({}, 2)).toEqual(comm.DEFAULT_SIZES);
    expect(comm.commSizes({ MOMA_BENCH_COMM_SIZES: '' }, 2)).toEqual(comm.DEFAULT_SIZES);
  });

  test('MOMA_BENCH_COMM_SIZES overrides, and each size must split into float32 elements evenly over the ranks', () => {
    expect(comm.commSizes({ MOMA_BENCH_COMM_SIZES: '4KiB,1MiB' }, 2)).toEqual([4096, 1048576]);
    expect(() => comm.commSizes({ MOMA_BENCH_COMM_SIZES: '12' }, 2)).toThrow(/not a multiple of 8 bytes/);
    expect(() => comm.commSizes({ MOMA_BENCH_COMM_SIZES: '4KiB,x' }, 2)).toThrow(/size 'x'/);
  });

  test('a round moves about 64 MiB, 1 to 100 collectives', () => {
    expect(comm.opsPerRound(4096)).toBe(100);
    expect(comm.opsPerRound(1024 * 1024)).toBe(64);
    expect(comm.opsPerRound(16 * 1024 * 1024)).toBe(4);
    expect(comm.opsPerRound(256 * 1024 * 1024)).toBe(1);
  });
});

describe('bench comm: worker arguments', () => {
  test('parses the launched rank command line', () => {
    const MiB4 = 4 * 1024 * 1024;
    expect(comm.parseWorkerArgs(['--worker', '--device', 'cpu', '--sizes', '4KiB,4096', '--repeats', '3', '--out', '/tmp/x.json']))
      .toEqual({ device: 'cpu', sizes: [4096, 4096], gradients: null, overlap: null, bucket: MiB4, repeats: 3, out: '/tmp/x.json' });
    expect(comm.parseWorkerArgs(['--worker', '--gradients', 'tiny-4t4i', '--repeats', '2', '--out', 'o']))
      .toEqual({ device: 'cpu', sizes: null, gradients: 'tiny-4t4i', overlap: null, bucket: MiB4, repeats: 2, out: 'o' });
    expect(comm.parseWorkerArgs(['--worker', '--overlap', 'd512-4t4i', '--bucket', '1MiB', '--repeats', '2', '--out', 'o']))
      .toEqual({ device: 'cpu', sizes: null, gradients: null, overlap: 'd512-4t4i', bucket: 1024 * 1024, repeats: 2, out: 'o' });
    expect(comm.parseWorkerArgs(['--worker', '--sizes', '1MiB', '--repeats', '1', '--out', 'o', '--device', 'cuda']).device).toBe('cuda');
  });

  test('rejects what it cannot run', () => {
    const base = ['--sizes', '4096', '--repeats', '2', '--out', 'o'];
    expect(() => comm.parseWorkerArgs(base)).toThrow(/first argument must be --worker/);
    expect(() => comm.parseWorkerArgs(['--worker', '--device', 'tpu', ...base])).toThrow(/--device must be cpu or cuda, got 'tpu'/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--repeats', '0'])).toThrow(/--repeats must be an integer >= 1, got '0'/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--repeats', '2.5'])).toThrow(/--repeats must be an integer >= 1/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--fast'])).toThrow(/unknown argument --fast/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--out'])).toThrow(/--out needs a value/);
    expect(() => comm.parseWorkerArgs(['--worker', '--sizes', '4096', '--out', 'o'])).toThrow(/--repeats is required/);
    expect(() => comm.parseWorkerArgs(['--worker', '--repeats', '2', '--out', 'o'])).toThrow(/give one of --sizes, --gradients and --overlap/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--gradients', 'tiny-4t4i'])).toThrow(/give one of --sizes, --gradients and --overlap/);
    expect(() => comm.parseWorkerArgs(['--worker', ...base, '--overlap', 'tiny-4t4i'])).toThrow(/give one of --sizes, --gradients and --overlap/);
    expect(() => comm.parseWorkerArgs(['--worker', '--gradients', 'huge', '--repeats', '2', '--out', 'o'])).toThrow(/--gradients must name a scaling model \(tiny-4t4i, d512-4t4i\), got 'huge'/);
    expect(() => comm.parseWorkerArgs(['--worker', '--overlap', 'huge', '--repeats', '2', '--out', 'o'])).toThrow(/--overlap must name a scaling model/);
    expect(() => comm.parseWorkerArgs(['--worker', '--overlap', 'tiny-4t4i', '--bucket', '1.5MiB', '--repeats', '2', '--out', 'o'])).toThrow(/comm: size '1.5MiB'/);
  });
});

describe('bench comm: rows and table', () => {
  const results = [
    { device: 'cpu', op: 'ceiling.fma_avx512', rate: 300 },
    { device: 'cpu', op: 'ceiling.copy', rate: 40 },
    { device: 'cuda', op: 'ceiling.copy_d2d', rate: 3000 },
  ];

  test('the ceiling is the measured copy bandwidth of the device kind', () => {
    expect(comm.copyCeiling(results, 'cpu')).toBe(40);
    expect(comm.copyCeiling(results, 'cuda')).toBe(3000);
    expect(comm.copyCeiling([], 'cpu')).toBeNull();
  });

  test('a row carries algbw, busbw (as its rate) and % of the copy ceiling', () => {
    // 4 MiB all-to-all on 2 ranks in 2 ms: algbw = 4194304 / 0.002 / 1e9 = 2.097152 GB/s, busbw half of it.
    const m = { collective: 'all_to_all', bytes: 4 * 1024 * 1024, ms: 2, opsPerRound: 16, rounds: [2, 2.1, 1.9] };
    const row = comm.collectiveRow(m, { device: 'cpu', ranks: 2, ceilingGbs: 40 });
    expect(row).toMatchObject({ op: 'comm.all_to_all_f32', shape: '4MiB per rank, 2 ranks', ms: 2, unit: 'GB/s busbw', bytes: 4194304 });
    expect(row.algbw_gbs).toBeCloseTo(2.097152, 12);
    expect(row.busbw_gbs).toBeCloseTo(1.048576, 12);
    expect(row.rate).toBe(row.busbw_gbs);
    expect(row.pct_measured).toBeCloseTo((100 * 1.048576) / 40, 10);
    expect(comm.collectiveRow(m, { device: 'cpu', ranks: 2, ceilingGbs: null }).pct_measured).toBeUndefined();
  });

  test('the table lists both collectives per size', () => {
    const ar = comm.collectiveRow({ collective: 'all_reduce', bytes: 4096, ms: 0.5, opsPerRound: 100, rounds: [0.5] }, { device: 'cpu', ranks: 2, ceilingGbs: 40 });
    const a2a = comm.collectiveRow({ collective: 'all_to_all', bytes: 4096, ms: 0.25, opsPerRound: 100, rounds: [0.25] }, { device: 'cpu', ranks: 2, ceilingGbs: 40 });
    const text = comm.collectiveTable([ar, a2a], { device: 'cpu', ranks: 2, backend: 'gloo', ceilingGbs: 40 }).join('\n');
    // all-reduce: 4096 B / 0.5 ms = 0.008192 GB/s = busbw (n = 2); all-to-all: 0.016384 algbw, 0.008192 busbw;
    // 0.008192 / 40 GB/s = 0.02048 %
    expect(text).toContain('| 4KiB | 0.500 | 0.00819 | 0.00819 | 0.0205 | 0.250 | 0.0164 | 0.00819 | 0.0205 |');
    expect(text).toContain('gloo, 2 ranks');
    expect(text).not.toMatch(/not measured yet/);
    expect(comm.ROW_GROUPS).toEqual(['collectives', 'scaling', 'overlap']);
  });
});

interface Speed { tokensPerS: number; stepMs: number; steps: number }
interface Gradients { ranks: number; model: string; parameters: number; bytes: number; buckets: number[]; ms: number; rounds: number[] }
interface ScalingMeasurement { model: string; threads: number; half: number; one: Speed; two: Speed; alone: Speed & { runs: Speed[] }; gradients: Gradients }
interface ScalingRow { op: string; shape: string; ms: number; rate: number; unit: string; efficiency?: number; dp_efficiency?: number; all_reduce_share?: number; in_place_share?: number }
interface OverlapMeasurement {
  backend: string; ranks: number; threads: number; model: string; batch: number; seqLen: number; parameters: number; bytes: number;
  bucketBytes: number; buckets: number[]; computeMs: number; sequentialMs: number; overlappedMs: number;
  rounds: { compute: number[]; sequential: number[]; overlapped: number[] };
}
type OverlapRow = ScalingRow & Record<string, unknown>;
interface ScalingBench {
  commGroups(env: Record<string, string | undefined>): string[];
  scalingModels(env: Record<string, string | undefined>): { name: string }[];
  gradientBuckets(numels: number[], bucketBytes?: number): number[];
  runSpeed(records: { step: number; tokensPerSecond: number; seconds: number }[], warmup: number): Speed;
  scalingRows(s: ScalingMeasurement): ScalingRow[];
  scalingTables(measured: ScalingMeasurement[], context: { backend: string }): string[];
  overlapModels(env: Record<string, string | undefined>): { name: string }[];
  overlapBucketBytes(env: Record<string, string | undefined>): number;
  overlapFigures(m: { computeMs: number; sequentialMs: number; overlappedMs: number }): { commMs: number; exposedMs: number; hiddenFraction: number; hiddenShown: number | null };
  overlapRow(m: OverlapMeasurement): OverlapRow;
  overlapTable(measured: OverlapMeasurement[], context: { backend: string }): string[];
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const scaling = require('../bench/comm') as ScalingBench;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const report = require('../bench/report') as { markdown(report: Record<string, unknown>): string };

describe('bench comm: scaling', () => {
  test('row groups and models from the environment', () => {
    expect(scaling.commGroups({})).toEqual(['collectives', 'scaling', 'overlap']);
    expect(scaling.commGroups({ MOMA_BENCH_COMM_GROUPS: 'overlap, scaling' })).toEqual(['scaling', 'overlap']);
    expect(scaling.commGroups({ MOMA_BENCH_COMM_GROUPS: 'overlap' })).toEqual(['overlap']);
    expect(() => scaling.commGroups({ MOMA_BENCH_COMM_GROUPS: 'collectives,speed' })).toThrow(/unknown name\(s\) speed/);
    expect(scaling.scalingModels({}).map((m) => m.name)).toEqual(['tiny-4t4i', 'd512-4t4i']);
    expect(scaling.scalingModels({ MOMA_BENCH_SCALING_MODELS: 'd512-4t4i' }).map((m) => m.name)).toEqual(['d512-4t4i']);
  });

  test('gradient buckets as the Trainer flushes them: last parameters first, closed at >= the bucket size', () => {
    // numels 10, 20, 30, 40 (float32: 40, 80, 120, 160 bytes), bucket 200 bytes:
    // reversed 160 (open), +120 = 280 >= 200 -> flush 280; 80 (open), +40 = 120 -> the rest
    expect(scaling.gradientBuckets([10, 20, 30, 40], 200)).toEqual([280, 120]);
    expect(scaling.gradientBuckets([50, 50], 200)).toEqual([200, 200]);
    expect(scaling.gradientBuckets([1, 2], 1000)).toEqual([12]);
    // the default is torch DDP's 25 MiB: 13.4 MiB of tiny gradients make one bucket
    expect(scaling.gradientBuckets([3_504_768])).toEqual([14_019_072]);
  });

  test('run speed: medians after the warm-up steps', () => {
    const records = [1, 2, 3, 4, 5, 6].map((step) => ({ step, tokensPerSecond: step * 100, seconds: 1 / step }));
    const speed = scaling.runSpeed(records, 3);
    // steps 4, 5, 6: median tokens/s 500, median seconds 1/5
    expect(speed).toEqual({ tokensPerS: 500, stepMs: 200, steps: 3 });
    expect(() => scaling.runSpeed(records, 6)).toThrow(/no logged step after the 6 warm-up steps/);
  });

  const measured: ScalingMeasurement = {
    model: 'tiny-4t4i', threads: 2, half: 1,
    one: { tokensPerS: 8000, stepMs: 256, steps: 9 },
    two: { tokensPerS: 6400, stepMs: 640, steps: 9 },
    alone: { tokensPerS: 8000, stepMs: 512, steps: 9, runs: [{ tokensPerS: 4000, stepMs: 512, steps: 9 }, { tokensPerS: 4000, stepMs: 500, steps: 9 }] },
    gradients: { ranks: 2, model: 'tiny-4t4i', parameters: 3_000_000, bytes: 12_000_000, buckets: [9_000_000, 3_000_000], ms: 160, rounds: [160, 170, 150] },
  };

  test('rows: tokens/s per configuration, efficiencies and the all-reduce share on the 2-rank row, the all-reduce row', () => {
    const rows = scaling.scalingRows(measured);
    expect(rows.map((r) => [r.op, r.unit])).toEqual([
      ['scaling.tiny-4t4i', 'tokens/s'], ['scaling.tiny-4t4i', 'tokens/s'], ['scaling.tiny-4t4i', 'tokens/s'],
      ['scaling.tiny-4t4i.grad_all_reduce', 'GB/s busbw'],
    ]);
    expect(rows[0]).toMatchObject({ shape: '1 rank × 2 threads, B8 S256 per rank', rate: 8000, ms: 256 });
    // 6400 / 8000 = 0.8 of one rank, of the two independent runs too; 160 / 640 = 25 %; (640 - 512) / 640 = 20 %
    expect(rows[1]).toMatchObject({ shape: '2 ranks × 1 thread, B8 S256 per rank', rate: 6400, efficiency: 0.8, dp_efficiency: 0.8, all_reduce_share: 0.25, in_place_share: 0.2 });
    // 12e6 bytes in 160 ms = 0.075 GB/s algbw = busbw on 2 ranks
    expect(rows[3]!.rate).toBeCloseTo(0.075, 12);
    expect(rows[3]!.shape).toBe('11.4 MiB in 2 bucket(s), 2 ranks × 1 thread');
  });

  test('table: one line per model with the computed ratios', () => {
    const text = scaling.scalingTables([measured], { backend: 'gloo' }).join('\n');
    expect(text).toContain('1 rank × 2 threads vs 2 ranks × 1');
    expect(text).toContain('| tiny-4t4i | 3.00 M | 8000 | 6400 | 8000 | 0.80 | 0.80 | 256 | 640 | 512 | 160 | 25 | 20 |');
    expect(text).not.toMatch(/Overlap/);
    expect(scaling.scalingTables([], { backend: 'gloo' })).toEqual([]);
  });
});

describe('bench comm: overlap', () => {
  test('models and bucket size from the environment', () => {
    expect(scaling.overlapModels({}).map((m) => m.name)).toEqual(['tiny-4t4i']);
    expect(scaling.overlapModels({ MOMA_BENCH_OVERLAP_MODELS: 'd512-4t4i,tiny-4t4i' }).map((m) => m.name)).toEqual(['tiny-4t4i', 'd512-4t4i']);
    expect(() => scaling.overlapModels({ MOMA_BENCH_OVERLAP_MODELS: 'huge' })).toThrow(/MOMA_BENCH_OVERLAP_MODELS: unknown name\(s\) huge/);
    expect(scaling.overlapBucketBytes({})).toBe(4 * 1024 * 1024);
    expect(scaling.overlapBucketBytes({ MOMA_BENCH_OVERLAP_BUCKET: '1MiB' })).toBe(1024 * 1024);
    expect(() => scaling.overlapBucketBytes({ MOMA_BENCH_OVERLAP_BUCKET: '1 MB' })).toThrow(/comm: size '1 MB'/);
  });

  test('comm = (ii) − (i), exposed = (iii) − (i), hidden = ((ii) − (iii)) / ((ii) − (i)), raw, and shown clamped', () => {
    // 200, 360, 280 ms: comm 160, exposed 80, hidden 80 / 160 = 0.5
    expect(scaling.overlapFigures({ computeMs: 200, sequentialMs: 360, overlappedMs: 280 })).toEqual({ commMs: 160, exposedMs: 80, hiddenFraction: 0.5, hiddenShown: 0.5 });
    // slower overlapped than not: -40 / 160 = -0.25, kept as it is, shown 0; faster than compute alone: 210 / 160
    expect(scaling.overlapFigures({ computeMs: 200, sequentialMs: 360, overlappedMs: 400 })).toMatchObject({ hiddenFraction: -0.25, hiddenShown: 0 });
    expect(scaling.overlapFigures({ computeMs: 200, sequentialMs: 360, overlappedMs: 150 })).toMatchObject({ hiddenFraction: 1.3125, hiddenShown: 1 });
    // no all-reduce time (noise): (190 − 210) / −10 = 2, not shown
    expect(scaling.overlapFigures({ computeMs: 200, sequentialMs: 190, overlappedMs: 210 })).toMatchObject({ commMs: -10, hiddenFraction: 2, hiddenShown: null });
  });

  const measured: OverlapMeasurement = {
    backend: 'gloo', ranks: 2, threads: 1, model: 'tiny-4t4i', batch: 8, seqLen: 256, parameters: 3_504_768, bytes: 14_019_072,
    bucketBytes: 4 * 1024 * 1024, buckets: [4_200_000, 4_300_000, 4_400_000, 1_119_072], computeMs: 200, sequentialMs: 360, overlappedMs: 400,
    rounds: { compute: [200, 210, 190], sequential: [360, 350, 370], overlapped: [400, 390, 410] },
  };

  test('the row keeps the raw hidden fraction and shows it clamped', () => {
    const row = scaling.overlapRow(measured);
    expect(row).toMatchObject({
      op: 'overlap.tiny-4t4i.grad_all_reduce', unit: '% hidden', ms: 200, rate: 0, compute_ms: 200, sequential_ms: 360, overlapped_ms: 400,
      comm_ms: 160, exposed_ms: 200, hidden_fraction: -0.25, bucket_bytes: 4194304, bucket_count: 4, ranks: 2, threads: 1,
    });
    expect(row.gradient_mib).toBeCloseTo(14_019_072 / 1048576, 12);
    expect(row.shape).toBe('13.4 MiB in 4 bucket(s) of 4MiB, 2 ranks × 1 thread, B8 S256 per rank');
    expect(scaling.overlapRow({ ...measured, overlappedMs: 280 }).rate).toBe(50);
    expect(scaling.overlapRow({ ...measured, overlappedMs: 150 })).toMatchObject({ rate: 100, hidden_fraction: 1.3125 });
  });

  test('the table: one line per model, hidden clamped to [0, 100] %', () => {
    const text = scaling.overlapTable([measured, { ...measured, model: 'd512-4t4i', overlappedMs: 280 }], { backend: 'gloo' }).join('\n');
    expect(text).toContain('### Overlap of the gradient all-reduce with the backward (cpu, gloo; 2 ranks × 1 thread, micro-batch 8 × 256 tokens per rank)');
    expect(text).toContain('| tiny-4t4i | 13.4 | 4MiB | 4 | 200 | 360 | 400 | 160 | 200 | 0% |');
    expect(text).toContain('| d512-4t4i | 13.4 | 4MiB | 4 | 200 | 360 | 280 | 160 | 80 | 50% |');
    expect(scaling.overlapTable([{ ...measured, sequentialMs: 190 }], { backend: 'gloo' }).join('\n')).toContain('| tiny-4t4i | 13.4 | 4MiB | 4 | 200 | 190 | 400 | -10 | 200 | - |');
    expect(scaling.overlapTable([], { backend: 'gloo' })).toEqual([]);
  });
});

describeGloo('bench comm overlap worker')('bench comm: the overlap worker on 2 ranks', () => {
  test('writes every field of the overlap row, as finite numbers', async () => {
    ensureDist();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-bench-overlap-'));
    try {
      const out = path.join(dir, 'overlap.json');
      const log = new PassThrough();
      let text = '';
      log.on('data', (chunk: Buffer) => (text += chunk.toString()));
      const result = await launchRanks({
        command: [process.execPath, path.join(__dirname, '..', 'bench', 'comm.js'), '--worker', '--device', 'cpu', '--overlap', 'tiny-4t4i', '--repeats', '1', '--out', out],
        nprocPerNode: 2, masterPort: 0, timeoutGraceMs: 5000, forwardSignals: false, stdout: log, stderr: log,
        env: { MOMA_NUM_THREADS: '1', MOMA_DIST_TIMEOUT_S: '60' },
      });
      if (!result.ok) throw new Error(`${result.message}\n${text}`);
      const m = JSON.parse(fs.readFileSync(out, 'utf8')) as OverlapMeasurement;
      expect(m).toMatchObject({ backend: 'gloo', ranks: 2, threads: 1, model: 'tiny-4t4i', batch: 8, seqLen: 256, bucketBytes: 4 * 1024 * 1024 });
      for (const name of ['compute', 'sequential', 'overlapped'] as const) expect(m.rounds[name]).toHaveLength(1);
      const row = scaling.overlapRow(m);
      for (const field of ['ms', 'rate', 'compute_ms', 'sequential_ms', 'overlapped_ms', 'comm_ms', 'exposed_ms', 'hidden_fraction', 'bucket_bytes', 'bucket_count', 'gradient_mib', 'parameters']) {
        expect([field, Number.isFinite(row[field])]).toEqual([field, true]);
      }
      expect(row.bucket_count).toBe(m.buckets.length);
      expect(m.buckets.reduce((a, b) => a + b, 0)).toBe(m.bytes);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);
});

describe('bench report: the comm section', () => {
  const base = {
    date: '2026-12-07T00:00:00.000Z', device: 'cpu x2', devices: ['cpu'], suites: ['ceiling', 'comm'], load: [1, 1, 1],
    notes: ['moma 2 CPU threads'], results: [{ device: 'cpu', op: 'ceiling.copy', shape: '256MiB', ms: 17, rate: 30, unit: 'GB/s' }], breakdowns: [],
  };

  test('the comm tables come last, under their own heading, after the result table and its notes', () => {
    const text = report.markdown({ ...base, comm: ['', '### Collectives (cpu, gloo)', '| a |'] });
    const lines = text.split('\n');
    expect(lines.slice(-4)).toEqual(['## Collectives and data-parallel scaling (comm suite)', '', '### Collectives (cpu, gloo)', '| a |']);
    expect(text.indexOf('| cpu | ceiling.copy |')).toBeLessThan(text.indexOf('## Collectives'));
    expect(text.indexOf('Notes: rates are FLOPs')).toBeLessThan(text.indexOf('## Collectives'));
    expect(text).toMatch(/`comm\.\*`: rates are nccl-tests bus bandwidth in GB\/s, and "% measured ceiling" is that as % of the memory-copy ceiling/);
  });

  test('without comm tables (or from an older report) there is no comm section', () => {
    expect(report.markdown(base)).not.toMatch(/comm suite/);
    expect(report.markdown({ ...base, comm: [] })).not.toMatch(/comm suite/);
  });
});
