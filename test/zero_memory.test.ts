/**
 * The per-rank memory estimate of `moma model info --world-size N --sharding …`
 * (lib/train/zero.ts memoryPerRank) against the CPU allocator of 2 ranks training a
 * parameter-heavy model (test/support/zero_memory_rank.js): the state part, within 10%, where it
 * is measured exactly: between steps (parameters + AdamW moments: 8N/R bytes sharded, 8N not) and
 * after the backward (the full gradients added). The step's peak is not compared: on the CPU it
 * holds the kernels' temporaries (the LM head's logits and their gradient, the embedding's dense
 * gradient, the reductions' copies) that the activation estimate does not model; it is printed.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ensureDist, runCli } from './support/cli';
import { describeGloo } from './support/dist_train';

const root = path.join(__dirname, '..');
const script = path.join(__dirname, 'support', 'zero_memory_rank.js');

interface Measured {
  rank: number;
  afterBackward: number;
  held: number;
  peak: number;
  estimate: { parameters: number; gradients: number; optimizer: number; activations: number; total: number };
}

describeGloo('ZeRO memory tests')('per-rank memory of ZeRO training against the estimate (2 ranks, gloo)', () => {
  let dir: string;
  beforeAll(() => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-zero-memory-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test.each(['none', 'zero1', 'zero2'])('%s: parameters + optimizer between steps, + gradients after the backward, within 10%%', async (sharding) => {
    const run = await runCli(dir, ['launch', '--nproc-per-node', '2', '--master-port', '0', '--grace-seconds', '5', '--no-moma', 'node', script, path.join(root, 'dist'), sharding]);
    expect(run.code).toBe(0);
    const lines = run.stdout.split('\n').map((l) => l.replace(/^\[rank \d+\] /, '')).filter((l) => l.startsWith('{'));
    const measured = lines.map((l) => JSON.parse(l) as Measured);
    expect(measured.map((m) => m.rank).sort()).toEqual([0, 1]);
    for (const m of measured) {
      const e = m.estimate;
      const within = (got: number, want: number): void => expect(Math.abs(got - want) / want).toBeLessThanOrEqual(0.1);
      within(m.held, e.parameters + e.optimizer);
      within(m.afterBackward, e.parameters + e.optimizer + e.parameters);
      expect(e.optimizer).toBe(sharding === 'none' ? 2 * e.parameters : e.parameters);
      console.log(`${sharding} rank ${m.rank}: held ${m.held} B (estimate ${e.parameters + e.optimizer}), after the backward ${m.afterBackward} B, step peak ${m.peak} B (estimate ${e.total})`);
    }
  }, 60_000);
});
