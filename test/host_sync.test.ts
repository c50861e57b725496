// No host synchronisation inside a training step (issue 13 §3), on the CPU and on CUDA when a GPU
// is visible: runtimeStats(device).hostSyncs stays put across the steps between logged ones, and a
// logged step waits once; gradient clipping on the device against a float64 reference (clip
// active, inactive and off); records with logEvery > 1 hold the target-weighted means of the
// per-step values a logEvery 1 run reports; building the next batch ahead (sync and async
// sources) changes no bit of training; a short `moma train` run's metrics.jsonl shows one host
// wait per record, however many steps it covers.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  AdamW, backward, disposeBatch, Generator, learningRate, makeBatch, runtimeStats, StepMetrics, SYNTHETIC_VOCAB_SIZE, SyntheticSource,
  syntheticVocab, tensor, tidy, TokenBatchSource, Trainer, Transformer, TransformerConfig, vocabFromSpec,
} from '../lib';
import type { DeviceName } from '../lib';
import { buildProgram } from '../lib/cli/main';
import { describeDevices } from './support/devices';
import { mulberry32, randomF32 } from './support/reference';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-host-sync-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const configOn = (device: DeviceName): TransformerConfig => ({
  vocabSize: SYNTHETIC_VOCAB_SIZE, dModel: 32, layers: 2, heads: 2, seed: 5, device,
  ffn: { kind: 'moe', dFF: 48, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }], gumbel: true },
  mod: { interval: 2, capacity: 0.5 },
});

const SCHEDULE = { peak: 3e-3, warmup: 2 };
const SOURCE = { batchSize: 2, seqLen: 32 };

async function parameters(model: Transformer): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, t] of model.namedParameters()) out.set(name, (await t.toArray()) as Float32Array);
  return out;
}

function expectSameBits(a: Map<string, Float32Array>, b: Map<string, Float32Array>): void {
  expect([...b.keys()]).toEqual([...a.keys()]);
  for (const [name, values] of a) expect(Buffer.from(b.get(name)!.buffer).equals(Buffer.from(values.buffer))).toBe(true);
}

const relClose = (got: number, want: number, tol: number): void => {
  expect(Math.abs(got - want)).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(want)));
};

/** Trains `steps` steps with `logEvery`; returns the records and the final parameters. */
async function train(device: DeviceName, options: { steps: number; logEvery: number; statsEvery?: number; data?: TokenBatchSource }): Promise<{ records: StepMetrics[]; params: Map<string, Float32Array> }> {
  const model = new Transformer(configOn(device));
  const trainer = new Trainer({
    model, data: options.data ?? new SyntheticSource(SOURCE), vocab: syntheticVocab, steps: options.steps, schedule: SCHEDULE, seed: 3,
    logEvery: options.logEvery, statsEvery: options.statsEvery ?? 0,
  });
  const records: StepMetrics[] = [];
  trainer.on('step', (m: StepMetrics) => records.push(m));
  await trainer.run();
  const params = await parameters(model);
  trainer.dispose();
  model.dispose();
  return { records, params };
}

describeDevices('host syncs in training', (device) => {
  test('steps between logged ones wait 0 times for the device; a logged step waits once (routing statistics in the same read)', async () => {
    const model = new Transformer(configOn(device));
    const trainer = new Trainer({ model, data: new SyntheticSource(SOURCE), vocab: syntheticVocab, steps: 12, schedule: SCHEDULE, logEvery: 4, statsEvery: 8 });
    const waits: number[] = [];
    const queued: number[] = [];
    const records: (StepMetrics | null)[] = [];
    for (let s = 0; s < 12; s++) {
      const before = runtimeStats(device);
      records.push(await trainer.trainStep());
      const after = runtimeStats(device);
      waits.push(after.hostSyncs - before.hostSyncs);
      queued.push(after.tasksSubmitted - before.tasksSubmitted);
    }
    expect(waits).toEqual([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    for (const n of queued) expect(n).toBeGreaterThan(50); // the steps did queue their work
    expect(records.map((r) => r?.step ?? null)).toEqual([null, null, null, 4, null, null, null, 8, null, null, null, 12]);
    const logged = records.filter((r): r is StepMetrics => r !== null);
    expect(logged.map((r) => r.interval)).toEqual([4, 4, 4]);
    expect(logged.map((r) => r.routing !== undefined)).toEqual([false, true, false]);
    expect(logged[1]!.routing).toHaveLength(2 * 8);
    for (const r of logged) {
      expect(r.hostSyncs).toBe(runtimeStats(device).hostSyncs - (logged.length - 1 - logged.indexOf(r)));
      for (const v of [r.loss, r.lossPerModality.text!, r.lossPerModality.image!, r.gradNorm, r.seconds, r.tokensPerSecond, r.dataWaitMs]) expect(Number.isFinite(v)).toBe(true);
      expect(r.dataWaitMs).toBeGreaterThanOrEqual(0);
    }
    // a read now is one host wait, and synchronize another
    const before = runtimeStats(device).hostSyncs;
    await model.parameters()[0]!.toArray();
    expect(runtimeStats(device).hostSyncs).toBe(before + 1);
    trainer.dispose();
    model.dispose();
  }, 120_000);

  test('clipping on the device equals a float64 reference: active, inactive, and off', async () => {
    const model = new Transformer(configOn(device));
    const rng = mulberry32(17);
    const grads = model.parameters().map((p) => Float32Array.from(randomF32(rng, p.numel, -0.05, 0.05)));
    let sumSquares = 0;
    for (const g of grads) for (const x of g) sumSquares += x * x;
    const norm64 = Math.sqrt(sumSquares);
    for (const clipNorm of [norm64 / 3, norm64 * 2, 0]) {
      model.parameters().forEach((p, i) => {
        p.grad?.dispose();
        p.grad = tensor(grads[i]!, { shape: p.shape as number[], device });
      });
      const opt = new AdamW(model, { clipNorm });
      const hostSyncs = runtimeStats(device).hostSyncs;
      const { gradNorm, clipScale } = opt.clipGradients();
      expect(runtimeStats(device).hostSyncs).toBe(hostSyncs);
      const scale64 = clipNorm > 0 ? Math.min(1, clipNorm / (norm64 + 1e-6)) : 1;
      relClose(await gradNorm.item(), norm64, 1e-5);
      relClose(await clipScale.item(), scale64, 1e-6);
      const params = model.parameters();
      for (let i = 0; i < params.length; i++) {
        const got = (await params[i]!.grad!.toArray()) as Float32Array;
        if (scale64 === 1) {
          expect(Buffer.from(got.buffer).equals(Buffer.from(grads[i]!.buffer))).toBe(true); // g · 1 is g
        } else {
          let worst = 0; // relative error of g · scale against float64
          got.forEach((v, k) => (worst = Math.max(worst, Math.abs(v - grads[i]![k]! * scale64) / (Math.abs(grads[i]![k]! * scale64) + 1e-30))));
          expect(worst).toBeLessThan(2e-6);
        }
      }
      gradNorm.dispose();
      clipScale.dispose();
      opt.zeroGrad();
      opt.dispose();
    }
    model.dispose();
  }, 60_000);

  test('logEvery 4 records hold the target-weighted means of the per-step values (logEvery 1), and change no bit of training', async () => {
    const every = await train(device, { steps: 8, logEvery: 1 });
    const four = await train(device, { steps: 8, logEvery: 4 });
    expectSameBits(every.params, four.params);
    expect(every.records.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(four.records.map((r) => [r.step, r.interval])).toEqual([[4, 4], [8, 4]]);
    // the valid targets of each step, overall and per modality, from the same batches
    const probe = new SyntheticSource(SOURCE);
    const vocab = vocabFromSpec(syntheticVocab);
    const counts = Array.from({ length: 8 }, () => {
      const batch = makeBatch(probe.next(), { padId: vocab.padId, bosId: vocab.bosId, modalityOf: (id) => vocab.modalityOf(id), modalities: 2 });
      disposeBatch(batch);
      return batch.counts;
    });
    for (const r of four.records) {
      const steps = every.records.slice(r.step - 4, r.step);
      const c = counts.slice(r.step - 4, r.step);
      const weighted = (value: (m: StepMetrics) => number, n: (k: number) => number): number => {
        const total = c.reduce((s, _, k) => s + n(k), 0);
        return steps.reduce((s, m, k) => s + value(m) * n(k), 0) / total;
      };
      relClose(r.loss, weighted((m) => m.loss, (k) => c[k]!.total), 2e-6);
      relClose(r.lossPerModality.text!, weighted((m) => m.lossPerModality.text!, (k) => c[k]!.perModality[0]!), 2e-6);
      relClose(r.lossPerModality.image!, weighted((m) => m.lossPerModality.image!, (k) => c[k]!.perModality[1]!), 2e-6);
      relClose(r.gradNorm, steps.reduce((s, m) => s + m.gradNorm, 0) / 4, 2e-6);
      const last = steps[3]!;
      expect([r.tokens, r.flops, r.lr]).toEqual([last.tokens, last.flops, last.lr]);
      expect(r.lr).toBe(learningRate(r.step - 1, { ...SCHEDULE, total: 8 }));
      relClose(r.tokensPerSecond, 4 * 2 * 32 / r.seconds, 1e-12);
    }
  }, 120_000);

  test('building the next batch ahead changes no bit: the Trainer equals a plain loop, for a sync and an async source', async () => {
    // the plain loop: build, step, read; no batch built ahead
    const model = new Transformer(configOn(device));
    const opt = new AdamW(model, { lr: SCHEDULE.peak });
    const generator = new Generator(3);
    const source = new SyntheticSource(SOURCE);
    const vocab = vocabFromSpec(syntheticVocab);
    const losses: number[] = [];
    for (let s = 0; s < 6; s++) {
      const batch = makeBatch(source.next(), { padId: vocab.padId, bosId: vocab.bosId, modalityOf: (id) => vocab.modalityOf(id), modalities: 2, device, vocabSize: SYNTHETIC_VOCAB_SIZE });
      const loss = tidy(() => {
        const out = model.loss(batch, { training: true, generator });
        backward(out.loss);
        return out.loss;
      });
      opt.update(learningRate(s, { ...SCHEDULE, total: 6 }));
      opt.zeroGrad();
      losses.push(await loss.item());
      loss.dispose();
      disposeBatch(batch);
    }
    const plain = await parameters(model);
    opt.dispose();
    model.dispose();

    const sync = await train(device, { steps: 6, logEvery: 1 });
    expectSameBits(plain, sync.params);
    sync.records.forEach((r, s) => relClose(r.loss, losses[s]!, 1e-6));

    const inner = new SyntheticSource(SOURCE);
    const later: TokenBatchSource = {
      next: () => new Promise<number[][]>((resolve) => setTimeout(() => resolve(inner.next()), 5)),
      state: () => inner.state(),
      restore: (state) => inner.restore(state),
    };
    const async = await train(device, { steps: 6, logEvery: 3, data: later });
    expectSameBits(plain, async.params);
    expect(async.records[0]!.dataWaitMs).toBeGreaterThanOrEqual(3); // step 1 waited for the source's 5 ms timer
    expect(async.records[1]!.dataWaitMs).toBeGreaterThanOrEqual(0);
  }, 120_000);

  test('a short `moma train` run: every record adds exactly one host wait, however many steps it covers', async () => {
    const config = path.join(tmp, `small-${device.replace(':', '')}.json`);
    fs.writeFileSync(config, JSON.stringify({ model: { dModel: 32, heads: 2, ffn: { dFF: 48 } }, evalBatches: 1 }));
    const out = path.join(tmp, `run-${device.replace(':', '')}`);
    const spy = jest.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      await buildProgram().exitOverride().parseAsync(['node', 'moma', 'train', '--steps', '20', '--log-every', '5', '--eval-every', '0', '--checkpoint-every', '0',
        '--preset', 'tiny-4t4i', '--batch-size', '2', '--seq-len', '64', '--warmup', '2', '--device', device, '--config', config, '--out', out]);
    } finally {
      spy.mockRestore();
    }
    const records = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l !== '')
      .map((l) => JSON.parse(l) as StepMetrics & { kind?: string }).filter((r) => r.kind === 'step');
    expect(records.map((r) => [r.step, r.interval])).toEqual([[5, 5], [10, 5], [15, 5], [20, 5]]);
    const added = records.slice(1).map((r, i) => r.hostSyncs - records[i]!.hostSyncs);
    expect(added).toEqual([1, 1, 1]);
    for (const r of records) expect(r.routing).toHaveLength(3 * 8); // statsEvery 2: in every record, in the same read
  }, 240_000);
});
