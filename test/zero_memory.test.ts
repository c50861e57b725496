/**
 * The per-rank memory model of `moma model info --world-size N --sharding …`
 * (lib/train/memory_model.ts memoryPerRank) against the CPU allocator (test/support/
 * zero_memory_rank.js): dense, MoE (4t4i), MoD and bf16 models at different batch sizes and
 * sequence lengths, on one rank and on two (none, zero1, zero2, zero3, gloo). Each step runs
 * behind a stall of the CPU worker, so the whole forward and backward (then the whole update) are
 * queued before anything is freed: the queued regime the model describes, measured
 * deterministically. Checked, within 10% both ways: the state between steps (parameters +
 * optimizer), after the backward (+ the gradients it leaves), the peak of the forward and
 * backward, the update's peak, and the step's peak (the larger of the two). Under zero3 the FSDP
 * units' sizes must equal the model's count of them (unitParameters).
 */
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ensureDist, runCli } from './support/cli';
import { describeGloo } from './support/dist_train';
import { unitParameters } from '../lib/train/memory_model';
import { TransformerConfig } from '../lib/model/transformer';

const root = path.join(__dirname, '..');
const dist = path.join(root, 'dist');
const script = path.join(__dirname, 'support', 'zero_memory_rank.js');

interface Measured {
  rank: number;
  afterBackward: number;
  held: number;
  backwardPeak: number;
  updatePeak: number;
  stalled: boolean;
  units: number[] | null;
  estimate: { parameters: number; backwardGradients: number; gradients: number; optimizer: number; activations: number; backward: number; backwardMoment: number; updateMoment: number; total: number };
}

const groups = [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }];
const CASES: Record<string, { config: object; batchSize: number; seqLen: number }> = {
  dense: { config: { vocabSize: 512, dModel: 64, layers: 2, heads: 4, ffn: { kind: 'dense', dFF: 256 } }, batchSize: 4, seqLen: 64 },
  moe4t4i: { config: { vocabSize: 512, dModel: 64, layers: 2, heads: 4, ffn: { kind: 'moe', dFF: 128, groups } }, batchSize: 2, seqLen: 96 },
  mod: { config: { vocabSize: 384, dModel: 48, layers: 3, heads: 4, ffn: { kind: 'dense', dFF: 192 }, mod: { interval: 2, capacity: 0.25 } }, batchSize: 3, seqLen: 80 },
  moeMod: { config: { vocabSize: 512, dModel: 64, layers: 3, heads: 4, ffn: { kind: 'moe', dFF: 128, groups }, mod: { interval: 2, capacity: 0.25 } }, batchSize: 2, seqLen: 96 },
  bf16: { config: { vocabSize: 512, dModel: 64, layers: 2, heads: 2, ffn: { kind: 'moe', dFF: 128, groups }, computeDtype: 'bfloat16', zLoss: 1e-4 }, batchSize: 1, seqLen: 128 },
};

function within(got: number, want: number, what: string): void {
  const ratio = got / want;
  if (!(ratio >= 1 / 1.1 && ratio <= 1.1)) throw new Error(`${what}: measured ${got} B, estimated ${want} B (ratio ${ratio.toFixed(4)})`);
}

function check(m: Measured, what: string): void {
  const e = m.estimate;
  expect(m.stalled).toBe(true);
  within(m.held, e.parameters + e.optimizer, `${what}: parameters + optimizer`);
  within(m.afterBackward, e.parameters + e.optimizer + e.backwardGradients, `${what}: after the backward`);
  within(m.backwardPeak, e.backwardMoment, `${what}: forward and backward peak`);
  within(m.updatePeak, e.updateMoment, `${what}: update peak`);
  within(Math.max(m.backwardPeak, m.updatePeak), e.total, `${what}: step peak`);
  console.log(`${what} rank ${m.rank}: backward peak ${m.backwardPeak} B (estimate ${e.backwardMoment}), update peak ${m.updatePeak} B (estimate ${e.updateMoment})`);
}

/** The environment without the launcher's variables: the rank script then runs alone. */
function oneRankEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of ['WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']) delete env[key];
  return env;
}

function parse(stdout: string): Measured[] {
  return stdout.split('\n').map((l) => l.replace(/^\[rank \d+\] /, '')).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Measured);
}

describe('per-rank memory model against the CPU allocator (one rank)', () => {
  beforeAll(() => ensureDist());
  test.each(Object.keys(CASES))('%s', async (name) => {
    const stdout = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [script, dist, 'none', JSON.stringify(CASES[name])], { env: oneRankEnv() }, (err, out, errText) => (err ? reject(new Error(`${err.message}\n${errText}`)) : resolve(out)));
    });
    const measured = parse(stdout);
    expect(measured).toHaveLength(1);
    check(measured[0]!, name);
  }, 60_000);
});

describeGloo('ZeRO memory tests')('per-rank memory of data-parallel training against the estimate (2 ranks, gloo)', () => {
  let dir: string;
  beforeAll(() => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-zero-memory-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test.each([['none', 'dense'], ['zero1', 'dense'], ['zero2', 'moe4t4i'], ['zero3', 'dense'], ['zero3', 'moeMod']])('%s, %s', async (sharding, name) => {
    const run = await runCli(dir, ['launch', '--nproc-per-node', '2', '--master-port', '0', '--grace-seconds', '5', '--no-moma', 'node', script, dist, sharding, JSON.stringify(CASES[name])]);
    expect(run.code).toBe(0);
    const measured = parse(run.stdout);
    expect(measured.map((m) => m.rank).sort()).toEqual([0, 1]);
    const units = unitParameters(CASES[name]!.config as TransformerConfig);
    for (const m of measured) {
      if (sharding === 'zero3') {
        expect(m.units).toEqual([units.root, ...units.blocks]);
        expect(m.estimate.optimizer).toBe(8 * [units.root, ...units.blocks].reduce((sum, n) => sum + Math.ceil(n / 2), 0));
      } else {
        expect(m.estimate.optimizer).toBe(sharding === 'none' ? 2 * m.estimate.parameters : Math.ceil(m.estimate.parameters / 4 / 2) * 8);
      }
      check(m, `${sharding} ${name}`);
    }
  }, 60_000);
});
