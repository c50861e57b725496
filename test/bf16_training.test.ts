/**
 * bf16 training end to end on the CPU (`moma train --dtype bfloat16`): a 300-step tiny-4t4i run in
 * bfloat16 (bf16 activations and GEMMs, float32 parameters, gradients and AdamW state) tracks the
 * float32 run of the same seed, data and schedule.
 *
 * Tolerances. Two runs of this tiny MoE never follow one trajectory: expert-choice routing is a
 * discrete top-k, so any perturbation flips some choices and the runs part within a few steps. The
 * yardstick is float32 against itself with the peak learning rate scaled by 1 + 1e-6 (measured at
 * these settings, seeds 0 and 1): mean |Δloss| over the last 50 steps 0.039 and 0.038, largest
 * relative gap of the 20-step running means 5.0% and 4.5%, gaps of 0.01–0.02 already in the first
 * 10 steps. bf16 measured 0.041 / 6.2% (seed 0, this test) and 0.089 / 13.3% (seed 1). The bounds
 * below are 2.5× the seed-0 bf16 numbers, so the test stays within the spread such a run has
 * while a bf16 model that learns worse (a lost gradient, a wrong scale, stalled routing: the loss
 * stays near its start of 6.2, or ends visibly above float32's 0.79) fails it.
 * Batch 4 × 32 tokens keeps both runs under a minute here (about 20 s each on 2 loaded cores).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { trainRun } from '../lib/run/run';
import { ensureDist, runCli } from './support/cli';

const STEPS = 300;
const TAIL = 50;
const SMOOTH = 20;
/** Mean |loss_bf16 − loss_f32| over the last TAIL steps (float32 against itself: 0.039; bf16: 0.041). */
const MAX_TAIL_GAP = 0.1;
/** Largest |smoothed bf16 − smoothed f32| / smoothed f32 over all steps (float32 against itself: 5.0%; bf16: 6.2%). */
const MAX_SMOOTHED_RELATIVE_GAP = 0.15;
/** How much higher the bf16 mean loss of the last TAIL steps may end than float32's. */
const MAX_TAIL_EXCESS = 0.1;

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-bf16-train-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The per-step losses of a seed-0 tiny-4t4i run of STEPS steps in `dtype`, and its run.json. */
async function lossCurve(dtype: 'float32' | 'bfloat16'): Promise<{ losses: number[]; run: { config: { dtype: string }; model: { computeDtype: string } } }> {
  const out = path.join(dir, dtype);
  const losses: number[] = [];
  await trainRun({
    values: {
      preset: 'tiny-4t4i', steps: STEPS, batchSize: 4, seqLen: 32, seed: 0, device: 'cpu', dtype,
      logEvery: 1, evalEvery: 0, evalBatches: 1, checkpointEvery: 0, out,
    },
  }, { onStep: (r) => losses.push(r.loss) });
  return { losses, run: JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8')) };
}

const mean = (v: number[]): number => v.reduce((s, x) => s + x, 0) / v.length;

/** Trailing running mean over `width` steps (fewer at the start). */
function smoothed(v: number[], width: number): number[] {
  return v.map((_, i) => mean(v.slice(Math.max(0, i - width + 1), i + 1)));
}

test('a 300-step tiny-4t4i run in bfloat16 tracks the float32 loss curve', async () => {
  const f32 = await lossCurve('float32');
  const bf16 = await lossCurve('bfloat16');
  expect(f32.run.config.dtype).toBe('float32');
  expect(f32.run.model.computeDtype).toBe('float32');
  expect(bf16.run.config.dtype).toBe('bfloat16');
  expect(bf16.run.model.computeDtype).toBe('bfloat16');
  const a = f32.losses;
  const b = bf16.losses;
  expect(a).toHaveLength(STEPS);
  expect(b).toHaveLength(STEPS);
  expect(b.every(Number.isFinite)).toBe(true);
  // the same start: the same initial weights and batch, only the rounding differs
  expect(Math.abs(b[0]! - a[0]!)).toBeLessThan(0.01);

  const tailGap = mean(a.slice(-TAIL).map((x, i) => Math.abs(x - b[STEPS - TAIL + i]!)));
  const sa = smoothed(a, SMOOTH);
  const sb = smoothed(b, SMOOTH);
  const relativeGap = Math.max(...sa.map((x, i) => Math.abs(x - sb[i]!) / x));
  const excess = mean(b.slice(-TAIL)) - mean(a.slice(-TAIL));
  expect(mean(a.slice(-TAIL))).toBeLessThan(1.2); // float32 learned: from 6.2 to about 0.8
  expect(tailGap).toBeLessThan(MAX_TAIL_GAP);
  expect(relativeGap).toBeLessThan(MAX_SMOOTHED_RELATIVE_GAP);
  expect(excess).toBeLessThan(MAX_TAIL_EXCESS);
}, 600_000);

test('moma train refuses a bad --dtype with ERR_ARG (exit 1)', async () => {
  ensureDist();
  for (const value of ['bf16', 'float16']) {
    const r = await runCli(dir, ['train', '--dtype', value, '--steps', '1', '--out', 'bad-dtype']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^moma: ERR_ARG: .*--dtype must be 'float32' or 'bfloat16', got "/);
    expect(fs.existsSync(path.join(dir, 'bad-dtype'))).toBe(false);
  }
}, 120_000);
