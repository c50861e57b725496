/**
 * Expert parallel training on the CPU through the real stack: `moma launch` starts the ranks of
 * `moma train --expert-parallel 2` (gloo over loopback); each rank keeps half the experts of every
 * MoE layer and routes over its expert-parallel (EP) group with the all-gather dispatch
 * (lib/moe/gather_dispatch.ts). Checked against one process (ratio control off, so the packer's
 * 2b sequences are exactly the group's two ranks' b in rank order):
 * - 2 ranks (D 1 × N 2) against one process with batch size 2b: the loss and gradient norm of
 *   every step and the final parameters agree to 1e-5 (relative);
 * - 4 ranks (D 2 × N 2: EP groups {0, 1} and {2, 3}, data-parallel groups {0, 2} and {1, 3})
 *   against one process with batch size 2b and --grad-accum 2. Why that is the reference: the
 *   data source yields batches of N·b = 2b sequences (lib/run/run.ts); a step of the 4 ranks pulls
 *   D = 2 of them and replica k (ranks 2k, 2k + 1) trains batch k, rank j of it the j-th b
 *   sequences (Trainer.toStep with dataSplit() = { rank: replica, ranks: D }); the reference's
 *   step pulls the same 2 batches and trains them as its micro-batches 0 and 1, in that order.
 *   Both scale each backward by 1/2 (the EP rank's loss also by its share of the group's
 *   targets) and draw micro-batch k's routing noise from microBatchGenerator(seed, step, k, 2);
 * - a checkpoint written by 2 ranks resumes on 1 rank and ends where an unbroken run does;
 * - bad settings fail with a clear error (exit 1).
 *
 * Real routing over several steps: with capacity factor c = 1 (each of the 4 experts of a group
 * takes a quarter of the group's rows) the two sides agree exactly on the first step, but after
 * it only to float32 summation order (the replicated parameters' gradients add the group's rows
 * in two halves, ~1e-7 relative; AdamW then moves parameters whose gradient nearly cancels by
 * up to the learning rate either way), and that flips a near-tied top-k pick within a step or
 * two: the losses then differ by 1e-5 to 1e-3 (measured on tiny-4t4i, seq-len 64, seeds 1–3,
 * c = 1 and 2: a flip by step 2 or 3 in each). The multi-step comparisons therefore use a
 * configuration picked to route really (c = 2: every expert takes half of its group's rows) and
 * found free of near ties over their steps on this machine: one 32-token sequence per rank, seed
 * 2 (seed 1 stayed tied-free over 4 steps on 2 ranks but flipped at step 3 on 4 ranks). A
 * different seed or size may flip a pick and fail for that reason alone. The c = 1 first step
 * is checked too, where both sides start from the same parameters.
 * Needs the gloo plugin (built when libgloo-dev is installed; .ci/run installs it).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ensureDist, runCli } from './support/cli';
import { describeGloo, expectClose, expectSameParams, params, steps } from './support/dist_train';
import { C2_CONFIG, epBase, epMulti } from './support/expert_parallel_flags';

const BASE = epBase('cpu');
/** The multi-step runs (see the top of this file): real routing, c = 2, sequences of 32 tokens, one sequence per rank, seed 2. */
const MULTI = epMulti('cpu');

describeGloo('expert parallel training tests')('expert parallel training (gloo, loopback)', () => {
  let dir: string;
  beforeAll(() => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-ep-'));
    fs.writeFileSync(path.join(dir, 'c2.json'), JSON.stringify(C2_CONFIG));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const launch = (args: string[], ranks = 2) => runCli(dir, ['launch', '--nproc-per-node', String(ranks), '--master-port', '0', '--grace-seconds', '5', 'train', ...args]);

  const expectSameRun = (a: ReturnType<typeof steps>, b: ReturnType<typeof steps>, count: number): void => {
    expect(a.map((r) => r.step)).toEqual(Array.from({ length: count }, (_, i) => i + 1));
    expect(b.map((r) => r.step)).toEqual(a.map((r) => r.step));
    a.forEach((r, i) => {
      expectClose(r.loss, b[i]!.loss, `step ${r.step} loss`);
      expectClose(r.gradNorm, b[i]!.gradNorm, `step ${r.step} gradient norm`);
      expect(r.tokens).toBe(b[i]!.tokens);
    });
  };

  test('2 ranks with --expert-parallel 2 equal 1 process with batch size 2b, with real routing: every step\'s loss and gradient norm, the final parameters', async () => {
    const two = await launch([...MULTI, '--batch-size', '1', '--expert-parallel', '2', '--steps', '4', '--checkpoint-every', '0', '--out', 'two']);
    expect(two.stderr).toBe('');
    expect(two.code).toBe(0);
    expect(two.stdout).toContain('experts spread over groups of 2 ranks');
    const one = await runCli(dir, ['train', ...MULTI, '--batch-size', '2', '--steps', '4', '--checkpoint-every', '0', '--out', 'one']);
    expect(one.code).toBe(0);
    expectSameRun(steps(path.join(dir, 'two')), steps(path.join(dir, 'one')), 4);
    // one consolidated checkpoint, written by rank 0 as one process writes it
    expectSameParams(await params(path.join(dir, 'two'), 4), await params(path.join(dir, 'one'), 4));
    const run = JSON.parse(fs.readFileSync(path.join(dir, 'two', 'run.json'), 'utf8')) as { parallel: unknown; config: { expertParallel: number } };
    expect(run.parallel).toEqual({ worldSize: 2, gradAccum: 1, globalBatch: 2 });
    expect(run.config.expertParallel).toBe(2);
  }, 120_000);

  test('4 ranks = 2 data-parallel replicas × expert-parallel groups of 2 equal 1 process with batch size 2b and --grad-accum 2', async () => {
    const four = await launch([...MULTI, '--batch-size', '1', '--expert-parallel', '2', '--steps', '3', '--checkpoint-every', '0', '--out', 'four'], 4);
    expect(four.stderr).toBe('');
    expect(four.code).toBe(0);
    const ref = await runCli(dir, ['train', ...MULTI, '--batch-size', '2', '--grad-accum', '2', '--steps', '3', '--checkpoint-every', '0', '--out', 'accum']);
    expect(ref.code).toBe(0);
    expectSameRun(steps(path.join(dir, 'four')), steps(path.join(dir, 'accum')), 3);
    expectSameParams(await params(path.join(dir, 'four'), 3), await params(path.join(dir, 'accum'), 3));
    const run = JSON.parse(fs.readFileSync(path.join(dir, 'four', 'run.json'), 'utf8')) as { parallel: unknown };
    expect(run.parallel).toEqual({ worldSize: 4, gradAccum: 1, globalBatch: 4 });
  }, 120_000);

  test('capacity factor 1: the first step routes over the group\'s rows as 1 process with batch size 2b does', async () => {
    const two = await launch([...BASE, '--batch-size', '2', '--expert-parallel', '2', '--steps', '1', '--checkpoint-every', '0', '--out', 'two-c1']);
    expect(two.code).toBe(0);
    const one = await runCli(dir, ['train', ...BASE, '--batch-size', '4', '--steps', '1', '--checkpoint-every', '0', '--out', 'one-c1']);
    expect(one.code).toBe(0);
    expectSameRun(steps(path.join(dir, 'two-c1')), steps(path.join(dir, 'one-c1')), 1);
    expectSameParams(await params(path.join(dir, 'two-c1'), 1), await params(path.join(dir, 'one-c1'), 1));
  }, 120_000);

  test('a checkpoint written by 2 expert-parallel ranks resumes on 1 rank with batch size 2b and ends where an unbroken run does', async () => {
    const first = await launch([...MULTI, '--batch-size', '1', '--expert-parallel', '2', '--steps', '2', '--checkpoint-every', '2', '--out', 'split']);
    expect(first.code).toBe(0);
    const resumed = await runCli(dir, ['train', '--resume', 'split', '--steps', '4']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('4 steps × 2 × 32 tokens');
    const run = JSON.parse(fs.readFileSync(path.join(dir, 'split', 'run.json'), 'utf8')) as { parallel: unknown; config: { expertParallel: number; batchSize: number } };
    expect(run.parallel).toEqual({ worldSize: 1, gradAccum: 1, globalBatch: 2 });
    expect([run.config.expertParallel, run.config.batchSize]).toEqual([1, 2]);
    const unbroken = path.join(dir, 'one');
    if (!fs.existsSync(path.join(unbroken, 'checkpoints', 'step-000004'))) {
      const one = await runCli(dir, ['train', ...MULTI, '--batch-size', '2', '--steps', '4', '--checkpoint-every', '0', '--out', 'one']);
      expect(one.code).toBe(0);
    }
    expectSameRun(steps(path.join(dir, 'split')), steps(unbroken), 4);
    expectSameParams(await params(path.join(dir, 'split'), 4), await params(unbroken, 4));
  }, 120_000);

  test('bad settings fail with a clear error and exit 1', async () => {
    const alone = await runCli(dir, ['train', ...BASE, '--batch-size', '2', '--expert-parallel', '2', '--steps', '1', '--out', 'alone']);
    expect(alone.code).toBe(1);
    expect(alone.stderr).toMatch(/ERR_DIST.*expertParallel 2 needs a process group/);
    const badFlag = await runCli(dir, ['train', ...BASE, '--expert-parallel', '0', '--steps', '1', '--out', 'zero']);
    expect(badFlag.code).toBe(1);
    expect(badFlag.stderr).toMatch(/--expert-parallel/);
    const dense = await launch([...BASE, '--preset', 'tiny-dense', '--batch-size', '2', '--expert-parallel', '2', '--steps', '1', '--out', 'dense']);
    expect(dense.code).toBe(1);
    expect(dense.stdout + dense.stderr).toMatch(/ERR_ARG.*needs a model with MoE layers/);
    const mod = await launch([...BASE, '--preset', 'tiny-4t4i-mod', '--batch-size', '2', '--expert-parallel', '2', '--steps', '1', '--out', 'mod']);
    expect(mod.code).toBe(1);
    expect(mod.stdout + mod.stderr).toMatch(/ERR_ARG.*mixture-of-depths/);
    const zero3 = await launch([...BASE, '--batch-size', '2', '--expert-parallel', '2', '--sharding', 'zero3', '--steps', '1', '--out', 'zero3']);
    expect(zero3.code).toBe(1);
    expect(zero3.stdout + zero3.stderr).toMatch(/ERR_ARG.*does not combine with sharding 'zero3'/);
  }, 120_000);
});
