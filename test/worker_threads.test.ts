/**
 * The addon is context-aware: the main thread and worker_threads Workers each get their own
 * instance data (TensorHandle class, MomaError class), so using moma in the main thread, then in
 * Workers (in sequence and several at once), then in the main thread again works, with values and
 * errors right in every environment. Before, process-wide JS references were overwritten by the
 * last environment that loaded the addon and the process aborted or crashed.
 * Workers run the built package (dist/, rebuilt by ensureDist when lib/ is newer).
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import * as moma from '../lib';
import { MomaError } from '../lib/errors';
import { ensureDist } from './support/cli';

const dist = path.join(__dirname, '..', 'dist');

/** What a worker does: a matmul and a reduction read back, a MomaError from bad input, its tensors freed. */
const WORKER = `
const { parentPort, workerData } = require('worker_threads');
const moma = require(workerData.dist);
(async () => {
  const n = workerData.n;
  const a = moma.full([n, n], 0.5);
  const b = moma.full([n, n], 2);
  const s = moma.matmul(a, b).sum();
  const value = (await s.toArray())[0];
  let code = null;
  try { moma.full([-1], 0); } catch (e) { code = (e instanceof moma.MomaError) ? e.code : 'not a MomaError: ' + e; }
  for (const t of [a, b, s]) t.dispose();
  parentPort.postMessage({ value, code, live: moma.memoryStats('cpu').liveStorages });
})().catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
`;

interface WorkerResult { value?: number; code?: string | null; live?: number; error?: string }

function runWorker(n: number): Promise<WorkerResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER, { eval: true, workerData: { dist, n } });
    let result: WorkerResult | null = null;
    w.on('message', (m: WorkerResult) => (result = m));
    w.on('error', reject);
    w.on('exit', (code) => (code === 0 && result !== null ? resolve(result) : reject(new Error(`worker exited with ${code}: ${JSON.stringify(result)}`))));
  });
}

async function useMain(n: number): Promise<void> {
  const a = moma.full([n, n], 0.5);
  const b = moma.full([n, n], 2);
  const s = moma.matmul(a, b).sum();
  expect((await s.toArray())[0]).toBe(n * n * n);
  expect(() => moma.full([-1], 0)).toThrow(MomaError);
  for (const t of [a, b, s]) t.dispose();
}

describe('worker_threads', () => {
  beforeAll(() => ensureDist(), 120_000);

  test('main, then a worker, then main again, then 4 workers at once while main computes', async () => {
    await useMain(7);
    const one = await runWorker(9);
    expect(one).toEqual({ value: 9 * 9 * 9, code: 'ERR_SHAPE', live: expect.any(Number) });
    await useMain(11);
    const sizes = [5, 13, 17, 31];
    const [results] = await Promise.all([Promise.all(sizes.map(runWorker)), useMain(23)]);
    results.forEach((r, i) => expect(r).toEqual({ value: sizes[i]! ** 3, code: 'ERR_SHAPE', live: expect.any(Number) }));
    await useMain(3);
  }, 120_000);

  test('workers started one after another, 10 times, each loading the addon afresh', async () => {
    for (let i = 0; i < 10; i++) {
      const r = await runWorker(4 + i);
      expect(r.error).toBeUndefined();
      expect(r.value).toBe((4 + i) ** 3);
    }
    await useMain(5);
  }, 120_000);
});
