/**
 * Helpers of the tests that train through `moma launch … train` on CPU ranks (gloo over loopback):
 * the gloo plugin check, the common small-run flags, reading a run's step records and a
 * checkpoint's parameters, and comparisons to 1e-5 relative.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadSafetensors } from '../../lib/io/safetensors';

const root = path.join(__dirname, '..', '..');
export const GLOO_PLUGIN = path.join(root, 'build', 'Release', 'libmoma_gloo.so');

/** describe when the gloo plugin is built, else describe.skip with a note saying why. */
export function describeGloo(what: string): jest.Describe {
  if (fs.existsSync(GLOO_PLUGIN)) return describe;
  console.log(`${what} skipped: no gloo plugin at ${GLOO_PLUGIN} (apt-get install libgloo-dev, then npm run build:native)`);
  return describe.skip;
}

/** Flags of a small CPU run: tiny-4t4i, micro-batches of 2 × 64 tokens, a record every step, no held-out evaluation. */
export const COMMON = ['--batch-size', '2', '--seq-len', '64', '--log-every', '1', '--eval-every', '0', '--device', 'cpu', '--preset', 'tiny-4t4i'];

export interface Step { step: number; loss: number; gradNorm: number; tokens: number }

/** The step records of a run's metrics.jsonl. */
export function steps(runDir: string): Step[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Step & { kind?: string })
    .filter((r) => r.kind === 'step');
}

/** The parameters of a checkpoint folder, as float32 arrays by name. */
export async function checkpointParams(dir: string): Promise<Map<string, Float32Array>> {
  const file = loadSafetensors(path.join(dir, 'model.safetensors'));
  const out = new Map<string, Float32Array>();
  for (const [name, t] of file.tensors) {
    out.set(name, Float32Array.from(await t.astype('float32').toArray()));
    t.dispose();
  }
  return out;
}

/** The parameters of a run's checkpoint of `step`. */
export function params(runDir: string, step: number): Promise<Map<string, Float32Array>> {
  return checkpointParams(path.join(runDir, 'checkpoints', `step-${String(step).padStart(6, '0')}`));
}

export function expectClose(a: number, b: number, what: string): void {
  const rel = Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
  if (!(rel <= 1e-5)) throw new Error(`${what}: ${a} vs ${b} (relative ${rel})`);
}

/** Same names and, per tensor, a largest difference within 1e-5 of its largest value. */
export function expectSameParams(a: Map<string, Float32Array>, b: Map<string, Float32Array>): void {
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  for (const [name, x] of a) {
    const y = b.get(name)!;
    expect(x.length).toBe(y.length);
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < x.length; i++) {
      worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
      scale = Math.max(scale, Math.abs(y[i]!));
    }
    if (!(worst <= 1e-5 * Math.max(scale, 1e-12))) throw new Error(`parameter ${name}: max difference ${worst} (largest value ${scale})`);
  }
}
