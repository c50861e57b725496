/**
 * The distributed suites on CUDA through NCCL (backend 'nccl', csrc/dist/nccl_backend.cc): what
 * test/dist_groups.test.ts, data_parallel.test.ts, zero3.test.ts and expert_parallel_train.test.ts
 * check on CPU ranks over gloo, on GPU ranks.
 * - 1 GPU: a one-rank NCCL world (launcher with 1 process on cuda:0): every collective (allReduce
 *   sum / avg / max in float32 and bfloat16, reduceScatter, allGather, allToAll with uneven counts,
 *   broadcast, barrier, allReduceAsync / reduceScatterAsync + wait) on the world and on
 *   newGroup([0]), against a plain-TS reference of the inputs; `moma launch --nproc-per-node 1
 *   train --device cuda` equals the same run without the launcher.
 * - 2 GPUs: the same collectives on 2 ranks (cuda:0, cuda:1; also on the group [1, 0]); data
 *   parallel (2 ranks = 1 rank accumulating 2 micro-batches), ZeRO-3 (2 sharded ranks = 1 rank
 *   accumulating 2) and expert parallel (2 ranks with --expert-parallel 2 = 1 process with batch
 *   size 2b): the loss and gradient norm of every step and the final parameters within 1e-5.
 * Without a GPU the suite is skipped with one notice; with GPUs but no loadable NCCL (ERR_LOAD)
 * likewise, the notice saying what to install; a case that needs more GPUs than are visible is
 * skipped, its name saying how many it needs.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PassThrough } from 'stream';
import { launch } from '../lib/distributed/launcher';
import { ensureDist } from './support/cli';
import { COMMON, expectClose, expectSameParams, params, steps } from './support/dist_train';
import { C2_CONFIG, epMulti } from './support/expert_parallel_flags';
import { describeNccl, runMoma, testOnGpus, visibleGpus, withFlag } from './support/nccl';

const gpus = visibleGpus();

interface Case {
  collective: 'allReduce' | 'reduceScatter' | 'allGather' | 'allToAll' | 'broadcast';
  op?: 'sum' | 'avg' | 'max';
  dtype: 'float32' | 'bfloat16';
  root?: number;
  sendCounts?: number[];
  recvCounts?: number[];
  ranks: number[];
  input: number[];
  output: number[];
  shape: number[];
  device: string;
}

interface RankResult {
  rank: number;
  worldSize: number;
  backend: string;
  device: string;
  groups: [string, number | null][];
  cases: Record<string, Case>;
}

const COLS = 3;

/** float32 → bfloat16 (round to nearest even), as a number. */
function bf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] = (u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) & 0xffff0000;
  return f[0]!;
}

/**
 * What group rank `me` must get from the case whose members' records (in group-rank order) are
 * `members`. Sums and averages are taken in float32 and rounded once to the dtype, as the backend
 * documents; the inputs (k / 8) make them exact for groups of 1 and 2 ranks, so results compare
 * exactly.
 */
function reference(members: Case[], me: number): number[] {
  const c = members[me]!;
  const n = members.length;
  const round = (x: number): number => (c.dtype === 'bfloat16' ? bf16(Math.fround(x)) : Math.fround(x));
  const reduce = (): number[] => c.input.map((_, i) => {
    const column = members.map((m) => m.input[i]!);
    if (c.op === 'max') return Math.max(...column);
    const sum = column.reduce((a, b) => a + b, 0);
    return round(c.op === 'avg' ? Math.fround(sum) / n : sum);
  });
  switch (c.collective) {
    case 'allReduce':
      return reduce();
    case 'reduceScatter': {
      const chunk = c.input.length / n;
      return reduce().slice(me * chunk, (me + 1) * chunk);
    }
    case 'allGather':
      return members.flatMap((m) => m.input);
    case 'broadcast':
      return members[c.root!]!.input;
    case 'allToAll':
      // member s's rows for `me` follow its rows for the members before `me`
      return members.flatMap((m) => {
        const start = m.sendCounts!.slice(0, me).reduce((a, b) => a + b, 0);
        return m.input.slice(start * COLS, (start + m.sendCounts![me]!) * COLS);
      });
  }
}

/** The cases collectives_rank.js runs on a group of `size` ranks. */
function caseNames(size: number): string[] {
  return [
    ...['float32', 'bfloat16'].flatMap((dtype) => [...['sum', 'avg', 'max'].map((op) => `allReduce-${op}-${dtype}`), `reduceScatter-sum-${dtype}`, `allGather-${dtype}`]),
    'allToAll',
    ...Array.from({ length: size }, (_, root) => `broadcast-root${root}`),
    'allReduceAsync-sum-float32', 'allReduceAsync-avg-bfloat16', 'reduceScatterAsync-sum-float32',
  ];
}

describeNccl(gpus)(`distributed suites on CUDA through NCCL (${gpus.count} GPU(s))`, () => {
  let dir: string;
  beforeAll(() => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-nccl-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** Runs collectives_rank.js on `ranks` GPUs and checks every case of every rank against the reference. */
  const checkCollectives = async (ranks: number): Promise<void> => {
    const out = path.join(dir, `collectives-${ranks}`);
    fs.mkdirSync(out);
    const sink = new PassThrough();
    let text = '';
    sink.on('data', (chunk: Buffer) => (text += chunk.toString()));
    const env: Record<string, string> = { MOMA_DIST_TIMEOUT_S: '60' };
    const result = await launch({
      command: [process.execPath, path.join(__dirname, 'fixtures', 'dist_nccl', 'collectives_rank.js'), out],
      nprocPerNode: ranks, masterPort: 0, timeoutGraceMs: 5000, forwardSignals: false, stdout: sink, stderr: sink, env,
    });
    if (!result.ok) throw new Error(`${result.message}\n${text}`);
    const results = Array.from({ length: ranks }, (_, r) => JSON.parse(fs.readFileSync(path.join(out, `rank${r}.json`), 'utf8')) as RankResult);
    const reversed = Array.from({ length: ranks }, (_, i) => ranks - 1 - i);
    for (const got of results) {
      const r = got.rank;
      expect([got.worldSize, got.backend, got.device]).toEqual([ranks, 'nccl', `cuda:${r}`]);
      // the cases each rank must have run: the world's, [0]'s on rank 0, the reversed world's with 2+ ranks
      const groups: [string, number][] = [['world', ranks], ...(r === 0 ? [['[0]', 1] as [string, number]] : []),
        ...(ranks >= 2 ? [[`[${reversed.join(',')}]`, ranks] as [string, number]] : [])];
      expect(Object.keys(got.cases).sort()).toEqual(groups.flatMap(([tag, size]) => caseNames(size).map((name) => `${tag}/${name}`)).sort());
      for (const [key, c] of Object.entries(got.cases)) {
        const members = c.ranks.map((w) => results[w]!.cases[key]!);
        const me = c.ranks.indexOf(r);
        expect({ key, device: c.device, output: c.output }).toEqual({ key, device: `cuda:${r}`, output: reference(members, me) });
        expect(c.shape).toEqual([c.output.length / COLS, COLS]);
      }
    }
  };

  testOnGpus(1, gpus.count, 'one rank on cuda:0: every collective on the world and on newGroup([0]) equals the reference', () => checkCollectives(1), 120_000);

  testOnGpus(2, gpus.count, 'two ranks on cuda:0 and cuda:1: every collective on the world, [0] and [1, 0] equals the reference', () => checkCollectives(2), 120_000);

  /** The small CPU run of the data-parallel tests (support/dist_train.ts COMMON), on the GPUs. */
  const ON_CUDA = withFlag(COMMON, '--device', 'cuda');
  const launchTrain = (ranks: number, args: string[]) => runMoma(dir, ['launch', '--nproc-per-node', String(ranks), '--master-port', '0', '--grace-seconds', '5', 'train', ...args]);
  const expectSameRun = async (a: string, b: string, count: number): Promise<void> => {
    const x = steps(path.join(dir, a));
    const y = steps(path.join(dir, b));
    expect(x.map((s) => s.step)).toEqual(Array.from({ length: count }, (_, i) => i + 1));
    expect(y.map((s) => s.step)).toEqual(x.map((s) => s.step));
    x.forEach((s, i) => {
      expectClose(s.loss, y[i]!.loss, `${a} vs ${b}: step ${s.step} loss`);
      expectClose(s.gradNorm, y[i]!.gradNorm, `${a} vs ${b}: step ${s.step} gradient norm`);
      expect(s.tokens).toBe(y[i]!.tokens);
    });
    expectSameParams(await params(path.join(dir, a), count), await params(path.join(dir, b), count));
  };
  const trained = (run: { code: number | null; stdout: string; stderr: string }, what: string): void => {
    if (run.code !== 0) throw new Error(`${what} exited ${String(run.code)}:\n${run.stdout}\n${run.stderr}`);
  };
  const deviceOf = (run: string): string => (JSON.parse(fs.readFileSync(path.join(dir, run, 'run.json'), 'utf8')) as { config: { device: string } }).config.device;

  testOnGpus(1, gpus.count, '`moma launch --nproc-per-node 1 train --device cuda` trains as `moma train --device cuda` does, 3 steps', async () => {
    trained(await launchTrain(1, [...ON_CUDA, '--steps', '3', '--checkpoint-every', '0', '--out', 'launched-1']), 'moma launch (1 rank)');
    trained(await runMoma(dir, ['train', ...ON_CUDA, '--steps', '3', '--checkpoint-every', '0', '--out', 'alone-1']), 'moma train');
    expect([deviceOf('launched-1'), deviceOf('alone-1')]).toEqual(['cuda:0', 'cuda:0']);
    await expectSameRun('launched-1', 'alone-1', 3);
  }, 180_000);

  /** One process on cuda:0 accumulating 2 micro-batches of `args`: the reference of data parallel and ZeRO-3 on 2 GPUs. */
  const accumulated = async (name: string, args: string[]): Promise<string> => {
    trained(await runMoma(dir, ['train', ...args, '--steps', '4', '--checkpoint-every', '0', '--grad-accum', '2', '--out', name]), 'moma train --grad-accum 2');
    return name;
  };

  testOnGpus(2, gpus.count, 'data parallel: 2 ranks on cuda:0 and cuda:1 equal 1 rank accumulating 2 micro-batches', async () => {
    const two = await launchTrain(2, [...ON_CUDA, '--steps', '4', '--checkpoint-every', '0', '--out', 'dp-2']);
    trained(two, 'moma launch (2 ranks)');
    expect(two.stdout).toContain('4 steps × (2 ranks × 2) × 64 tokens');
    expect(deviceOf('dp-2')).toBe('cuda:0');
    await expectSameRun('dp-2', await accumulated('dp-accum', ON_CUDA), 4);
    const run = JSON.parse(fs.readFileSync(path.join(dir, 'dp-2', 'run.json'), 'utf8')) as { parallel: unknown };
    expect(run.parallel).toEqual({ worldSize: 2, gradAccum: 1, globalBatch: 4 });
  }, 300_000);

  // tiny-dense: ZeRO-3 gathers, recomputes and reduce-scatters, so its sums run in another order;
  // with expert choice (tiny-4t4i) that last-bit difference flips a near-tied top-k pick within a
  // few steps (on CPU ranks: 4e-4 relative at step 4), a dense model has no picks to flip
  testOnGpus(2, gpus.count, 'ZeRO-3: 2 sharded ranks on cuda:0 and cuda:1 equal 1 rank accumulating 2 micro-batches (tiny-dense)', async () => {
    const dense = withFlag(ON_CUDA, '--preset', 'tiny-dense');
    const two = await launchTrain(2, [...dense, '--steps', '4', '--checkpoint-every', '0', '--sharding', 'zero3', '--out', 'zero3-2']);
    trained(two, 'moma launch --sharding zero3 (2 ranks)');
    expect(two.stdout).toContain('optimizer state sharded (zero3)');
    await expectSameRun('zero3-2', await accumulated('zero3-accum', dense), 4);
    const index = JSON.parse(fs.readFileSync(path.join(dir, 'zero3-2', 'checkpoints', 'step-000004', 'optimizer.index.json'), 'utf8')) as { sharding: string; ranks: number };
    expect(index).toMatchObject({ sharding: 'zero3', ranks: 2 });
  }, 300_000);

  testOnGpus(2, gpus.count, 'expert parallel: 2 ranks with --expert-parallel 2 equal 1 process with batch size 2b', async () => {
    fs.writeFileSync(path.join(dir, 'c2.json'), JSON.stringify(C2_CONFIG));
    const multi = epMulti('cuda');
    const two = await launchTrain(2, [...multi, '--batch-size', '1', '--expert-parallel', '2', '--steps', '4', '--checkpoint-every', '0', '--out', 'ep-2']);
    trained(two, 'moma launch --expert-parallel 2 (2 ranks)');
    expect(two.stdout).toContain('experts spread over groups of 2 ranks');
    trained(await runMoma(dir, ['train', ...multi, '--batch-size', '2', '--steps', '4', '--checkpoint-every', '0', '--out', 'ep-1']), 'moma train --batch-size 2');
    await expectSameRun('ep-2', 'ep-1', 4);
  }, 300_000);
});
