// The Trainer end to end on the CPU: falling per-modality losses with MoMa 4t4i + MoD, metrics
// (tokens, FLOPs, learning rate, routing statistics), exact resume through a Trainer checkpoint
// with Gumbel routing, `moma eval`, and upcycling a 1t1i checkpoint.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  evaluate, learningRate, SYNTHETIC_VOCAB_SIZE, SyntheticSource, syntheticVocab, Trainer, trainingFlops, Transformer, TransformerConfig,
  upcycleCheckpoint, vocabFromSpec, StepMetrics,
} from '../lib';
import { buildProgram } from '../lib/cli/main';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-trainer-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const moma44 = (extra: Partial<TransformerConfig> = {}): TransformerConfig => ({
  vocabSize: SYNTHETIC_VOCAB_SIZE, dModel: 32, layers: 2, heads: 2, seed: 3,
  ffn: { kind: 'moe', dFF: 48, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }] },
  mod: { interval: 2, capacity: 0.5 }, ...extra,
});

async function params(model: Transformer): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const [name, t] of model.namedParameters()) out.set(name, Array.from(await t.toArray()));
  return out;
}

describe('Trainer', () => {
  test('4t4i + MoD: both modality losses fall; metrics add up', async () => {
    const model = new Transformer(moma44());
    const data = new SyntheticSource({ batchSize: 4, seqLen: 48 });
    const trainer = new Trainer({ model, data, vocab: syntheticVocab, steps: 80, schedule: { peak: 3e-3, warmup: 5 }, optimizer: { weightDecay: 0 }, statsEvery: 40, logEvery: 1 });
    const log: StepMetrics[] = [];
    trainer.on('step', (m: StepMetrics) => log.push(m));
    const summary = await trainer.run();
    expect(summary.steps).toBe(80);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    for (const m of ['text', 'image']) {
      const first = mean(log.slice(0, 5).map((x) => x.lossPerModality[m]!));
      const last = mean(log.slice(-10).map((x) => x.lossPerModality[m]!));
      expect(last).toBeLessThan(0.6 * first);
    }
    // tokens: 4 x 48 rows per step, no padding; FLOPs: the per-step formula summed
    expect(log[79]!.tokens).toBe(80 * 4 * 48);
    const probe = new SyntheticSource({ batchSize: 4, seqLen: 48 });
    let total = 0;
    for (let s = 0; s < 80; s++) {
      const seqs = probe.next();
      const modality: number[] = [];
      const segStart: number[] = [];
      seqs.forEach((seq, b) => {
        let start = b * 48;
        seq.forEach((id, i) => {
          if (i > 0 && id === 1) start = b * 48 + i;
          segStart.push(start);
          modality.push(id >= 64 ? 1 : 0);
        });
      });
      total += trainingFlops(model.config, { modality, segStart }).total;
    }
    expect(log[79]!.flops.total).toBeCloseTo(total, -3);
    expect(log[79]!.flops.perModality.text! + log[79]!.flops.perModality.image!).toBeCloseTo(total, -3);
    expect(log[0]!.lr).toBeCloseTo(learningRate(0, { peak: 3e-3, warmup: 5, total: 80 }), 12);
    expect(log[40]!.lr).toBeCloseTo(learningRate(40, { peak: 3e-3, warmup: 5, total: 80 }), 12);
    // routing statistics: every expert of the MoE layers reported; expert choice at c = 1 gives
    // each expert ceil(n_g / 4) rows of its group
    const routing = log[39]!.routing!;
    expect(routing.length).toBe(2 * 8);
    for (const r of routing) expect(r.meanGate).toBeGreaterThan(0);
    trainer.dispose();
    model.dispose();
  }, 60000);

  test('resume through a Trainer checkpoint (Gumbel routing on) equals an uninterrupted run, bit for bit', async () => {
    const config = moma44({ ffn: { ...moma44().ffn, gumbel: true } });
    const opts = { vocab: syntheticVocab, steps: 8, schedule: { peak: 2e-3, warmup: 2, total: 8 }, seed: 11 };
    const straight = new Transformer(config);
    const t1 = new Trainer({ ...opts, model: straight, data: new SyntheticSource({ batchSize: 2, seqLen: 32 }) });
    await t1.run();

    const dir = path.join(tmp, 'resume');
    const first = new Transformer(config);
    const t2 = new Trainer({ ...opts, steps: 4, model: first, data: new SyntheticSource({ batchSize: 2, seqLen: 32 }), checkpointDir: dir });
    await t2.run();
    expect(fs.existsSync(path.join(dir, 'vocab.json'))).toBe(true);

    const resumed = new Transformer({ ...config, seed: 77 });
    const t3 = new Trainer({ ...opts, model: resumed, data: new SyntheticSource({ batchSize: 2, seqLen: 32 }) });
    t3.resume(dir);
    expect(t3.step).toBe(4);
    await t3.run();
    expect(t3.step).toBe(8);
    const a = await params(straight);
    const b = await params(resumed);
    for (const [name, values] of a) expect(b.get(name)).toEqual(values);
    for (const t of [t1, t2, t3]) t.dispose();
    for (const m of [straight, first, resumed]) m.dispose();
  }, 60000);

  test('moma eval --checkpoint --data --json matches evaluate()', async () => {
    const dir = path.join(tmp, 'eval-ckpt');
    const model = new Transformer(moma44());
    const trainer = new Trainer({ model, data: new SyntheticSource({ batchSize: 2, seqLen: 32 }), vocab: syntheticVocab, steps: 3, schedule: { peak: 1e-3, warmup: 1 }, checkpointDir: dir });
    await trainer.run();
    const file = path.join(tmp, 'tokens.jsonl');
    const source = new SyntheticSource({ batchSize: 5, seqLen: 32, seed: 9 });
    const sequences = source.next();
    fs.writeFileSync(file, sequences.map((s) => JSON.stringify(s)).join('\n') + '\n');
    const want = await evaluate(model, sequences, { vocab: vocabFromSpec(syntheticVocab), batchSize: 2 });
    const lines: string[] = [];
    const spy = jest.spyOn(console, 'log').mockImplementation((...p: unknown[]) => { lines.push(p.join(' ')); });
    try {
      await buildProgram().exitOverride().parseAsync(['node', 'moma', 'eval', '--checkpoint', dir, '--data', file, '--batch-size', '2', '--json']);
    } finally {
      spy.mockRestore();
    }
    const got = JSON.parse(lines.join('\n'));
    expect(got.targets).toBe(want.targets);
    expect(got.loss).toBeCloseTo(want.loss, 6);
    expect(got.perModality.text).toBeCloseTo(want.perModality.text!, 6);
    expect(got.perModality.image).toBeCloseTo(want.perModality.image!, 6);
    trainer.dispose();
    model.dispose();
  }, 60000);

  test('upcycling 1t1i -> 4t4i copies each group FFN into every expert and turns Gumbel routing on', async () => {
    const dir = path.join(tmp, 'dense-ckpt');
    const config = moma44({ ffn: { kind: 'moe', dFF: 48, groups: [{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }] }, mod: null });
    const model = new Transformer(config);
    const trainer = new Trainer({ model, data: new SyntheticSource({ batchSize: 2, seqLen: 32 }), vocab: syntheticVocab, steps: 2, schedule: { peak: 1e-3, warmup: 1 }, checkpointDir: dir });
    await trainer.run();
    const { model: up, config: upConfig, dataPosition } = upcycleCheckpoint(dir, { experts: [4, 4], seed: 1 });
    expect(upConfig.ffn.gumbel).toBe(true);
    expect(upConfig.ffn.groups!.map((g) => g.experts)).toEqual([4, 4]);
    expect(dataPosition).toEqual({ position: 2 });
    const src = await params(model);
    const dst = await params(up);
    for (const [name, values] of src) {
      if (/\.ffn\.(w1|w2|w3)$/.test(name)) {
        const half = values.length / 2;
        const got = dst.get(name)!;
        for (let e = 0; e < 8; e++) expect(got.slice(e * half, (e + 1) * half)).toEqual(values.slice((e < 4 ? 0 : 1) * half, (e < 4 ? 1 : 2) * half));
      } else if (/\.ffn\.router$/.test(name)) {
        expect(dst.get(name)!.some((v) => v !== 0)).toBe(true);
      } else {
        expect(dst.get(name)).toEqual(values);
      }
    }
    // and it trains on from there (the data continues at the checkpoint's position)
    const data = new SyntheticSource({ batchSize: 2, seqLen: 32 });
    data.restore(dataPosition);
    const t2 = new Trainer({ model: up, data, vocab: syntheticVocab, steps: 2, schedule: { peak: 1e-3, warmup: 1 }, seed: 5 });
    const summary = await t2.run();
    expect(summary.steps).toBe(2);
    for (const t of [trainer, t2]) t.dispose();
    model.dispose();
    up.dispose();
  }, 60000);
});

test('vocabulary specs: overlapping ranges and specials inside image ranges are refused', () => {
  expect(() => vocabFromSpec({ padId: 0, ranges: [{ modality: 1, from: 10, to: 20 }, { modality: 2, from: 15, to: 30 }] }))
    .toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringContaining('overlap') }));
  expect(() => vocabFromSpec({ padId: 12, ranges: [{ modality: 1, from: 10, to: 20 }] }))
    .toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringContaining('padId 12') }));
  const v = vocabFromSpec(syntheticVocab);
  expect([0, 1, 63, 64, 127].map((id) => v.modalityOf(id))).toEqual([0, 0, 0, 1, 1]);
});

test('learning-rate schedules: linear warm-up, then linear or cosine decay to the floor', () => {
  const s = { peak: 1, warmup: 4, total: 14 };
  expect([0, 1, 3].map((t) => learningRate(t, s))).toEqual([0.25, 0.5, 1]);
  expect(learningRate(4, s)).toBe(1);
  expect(learningRate(9, s)).toBeCloseTo(1 + (0.01 - 1) * 0.5, 12);
  expect(learningRate(14, s)).toBeCloseTo(0.01, 12);
  expect(learningRate(100, s)).toBeCloseTo(0.01, 12);
  const c = { ...s, shape: 'cosine' as const, floor: 0.1 };
  expect(learningRate(9, c)).toBeCloseTo(0.1 + 0.9 * 0.5, 12);
  expect(learningRate(14, c)).toBeCloseTo(0.1, 12);
});

test('requestStop ends the run after the current step and writes a checkpoint', async () => {
  const dir = path.join(tmp, 'stopped');
  const model = new Transformer(moma44());
  const trainer = new Trainer({ model, data: new SyntheticSource({ batchSize: 2, seqLen: 32 }), vocab: syntheticVocab, steps: 50, schedule: { peak: 1e-3, warmup: 1 }, checkpointDir: dir, logEvery: 1 });
  trainer.on('step', (m: StepMetrics) => {
    if (m.step === 3) trainer.requestStop();
  });
  const summary = await trainer.run();
  expect(summary.steps).toBe(3);
  expect(JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8'))).toMatchObject({ step: 3, optimizerStep: 3, dataPosition: { position: 3 } });
  trainer.dispose();
  model.dispose();
});

test('bad token ids from a data source are refused with ERR_RANGE naming the position', async () => {
  const model = new Transformer(moma44());
  const bad = { next: () => [[1, 2, 3, 500, 4, 5, 6, 7]], state: () => ({}), restore: () => undefined };
  const trainer = new Trainer({ model, data: bad, vocab: syntheticVocab, steps: 1, schedule: { peak: 1e-3, warmup: 0 } });
  await expect(trainer.run()).rejects.toMatchObject({ code: 'ERR_RANGE', message: expect.stringContaining('position 3 holds 500') });
  const fractional = { next: () => [[1, 2.5, 3, 4, 5, 6, 7, 8]], state: () => ({}), restore: () => undefined };
  const t2 = new Trainer({ model, data: fractional, vocab: syntheticVocab, steps: 1, schedule: { peak: 1e-3, warmup: 0 } });
  await expect(t2.run()).rejects.toMatchObject({ code: 'ERR_RANGE' });
  for (const t of [trainer, t2]) t.dispose();
  model.dispose();
});
