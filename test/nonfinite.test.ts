/**
 * Diverged training never destroys good checkpoints (issue 16): a run whose weights turn NaN stops
 * with ERR_NONFINITE at the next logged step naming the first bad step, keeps its last good
 * checkpoints and writes none of the bad state; with skipNonfinite N a single bad step (a loss made
 * NaN for one step) is skipped on the device (parameters and moments bit-identical to before it,
 * the data moving on) and recorded, and the (N+1)-th stops the run; resuming a checkpoint that
 * holds NaN fails at once naming it and the parameter; the report renders records with nulls,
 * NaN written as null and missing keys. The steps between logged ones still never wait for the
 * device (host syncs counted).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  AdamW, full, loadCheckpointInto, MomaError, runtimeStats, saveCheckpoint, SyntheticSource, syntheticVocab, SYNTHETIC_VOCAB_SIZE, Trainer, Transformer, TransformerConfig,
} from '../lib';
import type { NonfiniteSkip } from '../lib/train/trainer';
import { mul } from '../lib/autograd/functions';
import { builtinDataset } from '../lib/data/builtin';
import type { MixedModalDataset } from '../lib/data/dataset';
import { readCheckpoint } from '../lib/train/checkpoint';
import { loadSafetensors } from '../lib/io/safetensors';
import { listCheckpoints, trainRun } from '../lib/run/run';
import { summarizeMetrics, writeReport } from '../lib/run/report';
import type { StepRecord } from '../lib/run/records';

let dir: string;
let shapes: MixedModalDataset;
beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-nonfinite-'));
  shapes = await builtinDataset({ trainImages: 64 });
});
afterAll(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});
afterEach(() => jest.restoreAllMocks());

const CONFIG: TransformerConfig = {
  vocabSize: SYNTHETIC_VOCAB_SIZE, dModel: 32, layers: 2, heads: 2, seed: 5, device: 'cpu',
  ffn: { kind: 'moe', dFF: 48, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }] },
};
const SOURCE = { batchSize: 2, seqLen: 32 };
const SMALL = { preset: 'tiny-4t4i', model: { dModel: 32, heads: 2, ffn: { dFF: 48 } }, batchSize: 2, seqLen: 64, device: 'cpu', lr: 3e-3, warmup: 2, evalBatches: 1, evalEvery: 0 };

/** Replaces every parameter of `model` named like /norm/ with NaN (what a diverged run leaves). */
function poison(model: Transformer): string {
  const [name, p] = [...model.namedParameters()].find(([n]) => /norm/.test(n))!;
  model.setParameter(name, full(p.shape as number[], NaN));
  return name;
}

/** Makes the training loss NaN on the training calls of `model.loss` numbered in `bad` (1-based), through the autograd (so the gradients are NaN too). */
function nanLossOn(target: Transformer | typeof Transformer.prototype, bad: number[]): void {
  const original = Transformer.prototype.loss;
  let calls = 0;
  jest.spyOn(target, 'loss').mockImplementation(function (this: Transformer, ...args: Parameters<Transformer['loss']>) {
    const out = original.apply(this, args);
    if (args[1]?.training !== true) return out;
    calls++;
    if (!bad.includes(calls)) return out;
    return { ...out, loss: mul(out.loss, full([], NaN)) };
  });
}

async function snapshot(trainer: Trainer): Promise<Buffer[]> {
  const tensors = [...trainer.model.parameters()];
  for (const s of trainer.optimizer.stateDict().values()) tensors.push(s.m, s.v);
  return Promise.all(tensors.map(async (t) => Buffer.from(((await t.toArray()) as Float32Array).buffer)));
}

async function allFinite(checkpoint: string): Promise<boolean> {
  const { tensors } = loadSafetensors(path.join(checkpoint, 'model.safetensors'), 'cpu');
  let ok = true;
  for (const t of tensors.values()) {
    if (!Array.from((await t.toArray()) as Float32Array).every(Number.isFinite)) ok = false;
    t.dispose();
  }
  return ok;
}

describe('non-finite training', () => {
  test('a skipped step leaves parameters and moments bit for bit, the data moves on, the next logged step reports it; the (N+1)-th stops training', async () => {
    const model = new Transformer(CONFIG);
    nanLossOn(model, [3, 5]);
    const data = new SyntheticSource(SOURCE);
    const trainer = new Trainer({ model, data, vocab: syntheticVocab, steps: 8, schedule: { peak: 3e-3, warmup: 2 }, logEvery: 2, skipNonfinite: 1, checkpointDir: path.join(dir, 'skip-ckpt') });
    const skips: NonfiniteSkip[] = [];
    trainer.on('skip', (s) => skips.push(s));
    await trainer.trainStep();
    await trainer.trainStep();
    const before = await snapshot(trainer);
    const syncs = runtimeStats('cpu').hostSyncs;
    expect(await trainer.trainStep()).toBeNull(); // step 3: NaN loss, skipped on the device, no host wait
    expect(runtimeStats('cpu').hostSyncs).toBe(syncs);
    const after = await snapshot(trainer);
    expect(after.length).toBe(before.length);
    after.forEach((b, i) => expect(b.equals(before[i]!)).toBe(true));
    const clean = new SyntheticSource(SOURCE);
    for (let i = 0; i < 5; i++) clean.next();
    const record = (await trainer.trainStep())!; // step 4: logged, finds step 3
    expect(data.state()).toEqual(clean.state()); // steps 1-4 took 4 batches, and step 5's is built ahead
    expect(record.step).toBe(4);
    expect(record.skipped).toBe(1);
    expect(Number.isFinite(record.loss) && Number.isFinite(record.gradNorm)).toBe(true);
    expect(skips).toEqual([{ step: 4, tokens: record.tokens, skipped: 1, lossSteps: 1, gradNormSteps: 1, firstStep: 3, total: 1, budget: 1 }]);
    await trainer.checkpoint(); // the state is finite: the checkpoint is written
    expect(await allFinite(path.join(dir, 'skip-ckpt'))).toBe(true);
    expect(readCheckpoint(path.join(dir, 'skip-ckpt')).state.nonfiniteSkipped).toBe(1);

    expect(await trainer.trainStep()).toBeNull(); // step 5: the second bad step, one past the budget
    const err = await trainer.trainStep().then(() => null, (e: unknown) => e as MomaError); // step 6: logged
    expect(err).toBeInstanceOf(MomaError);
    expect(err!.code).toBe('ERR_NONFINITE');
    expect(err!.message).toMatch(/diverged at step 5: the loss and the gradient norm were not finite .*steps 5-6.*1 skipped before, skipNonfinite allows 1/);
    await expect(trainer.checkpoint(path.join(dir, 'refused'))).rejects.toMatchObject({ code: 'ERR_NONFINITE' });
    expect(fs.existsSync(path.join(dir, 'refused'))).toBe(false);
    await expect(trainer.trainStep()).rejects.toMatchObject({ code: 'ERR_NONFINITE' });
    trainer.dispose();
    model.dispose();
  }, 60_000);

  test('checkpoint() between logged steps reads the pending flags and refuses after an unreported bad step', async () => {
    const model = new Transformer(CONFIG);
    nanLossOn(model, [2]);
    const trainer = new Trainer({ model, data: new SyntheticSource(SOURCE), vocab: syntheticVocab, steps: 8, schedule: { peak: 3e-3, warmup: 2 }, logEvery: 4 });
    await trainer.trainStep();
    await trainer.trainStep();
    await expect(trainer.checkpoint(path.join(dir, 'pending'))).rejects.toThrow(/not writing .*pending: 1 of the 2 steps since step 0 had a non-finite loss or gradient norm \(first at step 2\)/);
    expect(fs.existsSync(path.join(dir, 'pending'))).toBe(false);
    trainer.dispose();
    model.dispose();
  }, 60_000);

  test('a run whose weights turn NaN stops at the next logged step, keeps its two good checkpoints and writes no NaN one; resuming a NaN checkpoint fails at once', async () => {
    const out = path.join(dir, 'diverged');
    const original = Trainer.prototype.trainStep;
    let poisoned = '';
    jest.spyOn(Trainer.prototype, 'trainStep').mockImplementation(function (this: Trainer, options) {
      if (this.step === 5 && poisoned === '') poisoned = poison(this.model);
      return original.call(this, options);
    });
    const err = await trainRun({ dataset: shapes, values: { ...SMALL, steps: 12, checkpointEvery: 2, logEvery: 4, out } }, {}).then(() => null, (e: unknown) => e as MomaError);
    expect(err).toBeInstanceOf(MomaError);
    expect(err!.code).toBe('ERR_NONFINITE');
    expect(err!.message).toMatch(/diverged at step 6: the loss and the gradient norm were not finite/);
    // step 6 (a checkpoint step, so logged) found the NaN: its checkpoint was never written, 2 and 4 remain
    expect(listCheckpoints(out).map((c) => c.step)).toEqual([4, 2]);
    for (const c of listCheckpoints(out)) expect(await allFinite(c.dir)).toBe(true);
    expect(fs.readdirSync(path.join(out, 'checkpoints')).filter((n) => !/^step-\d+$/.test(n))).toEqual([]);
    expect(fs.existsSync(path.join(out, 'report.html'))).toBe(true);
    jest.restoreAllMocks();

    // the newest checkpoint made non-finite (as the bug used to write them): resume refuses it at once
    const newest = listCheckpoints(out)[0]!;
    const model = new Transformer(readCheckpoint(newest.dir).config as TransformerConfig);
    const optimizer = new AdamW(model);
    const { state } = loadCheckpointInto(newest.dir, model, optimizer);
    const name = poison(model);
    await saveCheckpoint(newest.dir, { config: model.config, model, optimizer, state, files: { ...shapes.files, 'vocab.json': shapes.layout } });
    optimizer.dispose();
    model.dispose();
    const resumed = await trainRun({ dataset: shapes, resume: out, flags: { steps: '12' } }).then(() => null, (e: unknown) => e as MomaError);
    expect(resumed).toBeInstanceOf(MomaError);
    expect(resumed!.code).toBe('ERR_NONFINITE');
    expect(resumed!.message).toContain(`checkpoint ${newest.dir} holds non-finite values (NaN or ±inf) in parameter '${name}'`);
  }, 180_000);

  test('moma train with a skip budget: a bad step is skipped and recorded as a {"kind":"skip"} line; the report and summary leave it out', async () => {
    const out = path.join(dir, 'skipped');
    nanLossOn(Transformer.prototype, [3]);
    const summary = await trainRun({ dataset: shapes, values: { ...SMALL, steps: 8, checkpointEvery: 4, logEvery: 2, skipNonfinite: 2, out } });
    const lines = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>);
    const skips = lines.filter((l) => l.kind === 'skip');
    expect(skips).toEqual([expect.objectContaining({ kind: 'skip', step: 4, skipped: 1, firstStep: 3, total: 1, budget: 2 })]);
    const steps = lines.filter((l) => l.kind === 'step');
    expect(steps.map((l) => l.step)).toEqual([2, 4, 6, 8]);
    expect(steps[1]!.skipped).toBe(1);
    for (const l of steps) expect(typeof l.loss).toBe('number');
    expect(summary.steps).toBe(8);
    expect(Number.isFinite(summary.loss.final.overall)).toBe(true);
    for (const c of listCheckpoints(out)) expect(await allFinite(c.dir)).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8')).config.skipNonfinite).toBe(2);
  }, 180_000);

  test('the report renders records with null losses, NaN written as null and missing keys', async () => {
    const out = path.join(dir, 'nulls');
    await trainRun({ dataset: shapes, values: { ...SMALL, steps: 2, checkpointEvery: 0, logEvery: 1, out } });
    const flops = { total: 1e9, perModality: { text: 5e8, image: 5e8 } };
    const base = { interval: 1, lr: 1e-3, gradNorm: 1, tokensPerSecond: 100, mfu: 0.1, seconds: 1, dataWaitMs: 0, hostSyncs: 1, imageFraction: 0.5 };
    const lines: Record<string, unknown>[] = [
      { ...base, step: 1, tokens: 10, flops, loss: null, lossPerModality: { text: null, image: null }, gradNorm: null },
      { ...base, step: 2, tokens: 20, flops, loss: JSON.parse(JSON.stringify(NaN)), lossPerModality: { text: 2, image: null } },
      { kind: 'skip', step: 2, tokens: 20, skipped: 1, lossSteps: 1, gradNormSteps: 1, firstStep: 2, total: 1, budget: 3 },
      { step: 3, tokens: 30 }, // every other key missing
      { ...base, step: 4, tokens: 40, flops: { total: null }, loss: 3, lossPerModality: { text: 3, image: 3 }, seconds: null, lr: null, tokensPerSecond: null },
      { kind: 'eval', step: 4, tokens: 40, flops, loss: null, lossPerModality: { text: null }, targets: 0, targetsPerModality: {}, seconds: 1 },
    ];
    fs.writeFileSync(path.join(out, 'metrics.jsonl'), lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
    const files = await writeReport(out);
    const html = fs.readFileSync(files.html, 'utf8');
    expect(html).toContain('<td class="num">-</td>');
    expect(html).not.toMatch(/NaN|undefined|null<\/td>/);
    expect(fs.statSync(files.png).size).toBeGreaterThan(1000);
    const summary = summarizeMetrics(lines.filter((l) => l.kind !== 'eval') as unknown as StepRecord[], []);
    expect(summary.steps).toBe(4);
    expect(summary.loss.first.overall).toBeNull();
    expect(summary.trainSeconds).toBe(2);
    // a run whose only records are null still renders
    fs.writeFileSync(path.join(out, 'metrics.jsonl'), JSON.stringify({ ...lines[0], lossPerModality: null }) + '\n');
    await expect(writeReport(out)).resolves.toBeDefined();
  }, 120_000);
});
