/**
 * trainRun in-process on a tiny MoMa 4t4i (d 32): the run directory's files and their contents,
 * rolling checkpoints, stop-by-signal then resume equal to a straight run bit for bit, resume
 * after a kill (metrics past the checkpoint dropped), resume of a builtin run from its saved
 * image tokenizer, and the refusals.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { learningRate } from '../lib';
import { builtinDataset } from '../lib/data/builtin';
import type { MixedModalDataset } from '../lib/data/dataset';
import { documentTokens } from '../lib/data/document';
import { buildVocabLayout, parseVocabLayout } from '../lib/data/vocab';
import type { EvalRecord, MetricsRecord, RunFile, StepRecord } from '../lib/run/records';
import { readMetrics } from '../lib/run/records';
import { RunHooks, trainRun } from '../lib/run/run';

let dir: string;
let shapes: MixedModalDataset;
const MODEL = { dModel: 32, heads: 2, ffn: { dFF: 48 } };
const SMALL = { preset: 'tiny-4t4i', model: MODEL, batchSize: 2, seqLen: 64, device: 'cpu', lr: 3e-3, warmup: 4, logEvery: 1 };

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-run-'));
  shapes = await builtinDataset({ trainImages: 64 });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function records(runDir: string): MetricsRecord[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as MetricsRecord);
}

const isEval = (r: MetricsRecord): r is EvalRecord => 'kind' in r && r.kind === 'eval';

/** A record without its timings and the process's host-wait count (the only fields that differ between equal runs). */
function untimed(r: MetricsRecord): Record<string, unknown> {
  const { seconds: _s, time: _w, ...rest } = r as StepRecord;
  if (isEval(r)) return rest;
  const { tokensPerSecond: _t, mfu: _m, dataWaitMs: _d, hostSyncs: _h, ...step } = rest as Omit<StepRecord, 'seconds'>;
  return step;
}

function checkpointsOf(runDir: string): string[] {
  return fs.readdirSync(path.join(runDir, 'checkpoints')).sort();
}

describe('a 20-step run', () => {
  let runDir: string;
  let summary: Awaited<ReturnType<typeof trainRun>>;
  const seen = { steps: 0, evals: [] as number[], checkpoints: [] as number[], start: -1 };

  beforeAll(async () => {
    runDir = path.join(dir, 'straight');
    summary = await trainRun({ values: { ...SMALL, steps: 20, evalEvery: 10, checkpointEvery: 5, out: runDir }, dataset: shapes, commandLine: ['moma', 'train', '--steps', '20'] }, {
      onStart: (info) => (seen.start = info.startStep),
      onStep: () => seen.steps++,
      onEval: (r) => seen.evals.push(r.step),
      onCheckpoint: (c) => seen.checkpoints.push(c.step),
    });
  });

  test('run.json holds the resolved settings, model, dataset and optimiser; vocab and tokenizer files are saved', () => {
    const run = JSON.parse(fs.readFileSync(path.join(runDir, 'run.json'), 'utf8')) as RunFile;
    expect(run.format).toBe('moma-run');
    expect(run.moma).toBe(require('../package.json').version);
    expect(Number.isNaN(Date.parse(run.startedAt))).toBe(false);
    expect(run.config).toMatchObject({ preset: 'tiny-4t4i', steps: 20, batchSize: 2, seqLen: 64, imageFraction: 0.5, device: 'cpu', out: runDir });
    expect(run.model).toMatchObject({ vocabSize: shapes.layout.size, dModel: 32, heads: 2, layers: 3, modalities: ['text', 'image'], device: 'cpu', seed: 0 });
    expect(run.dataset).toEqual({ name: 'builtin:shapes', vocabHash: shapes.layout.hash, vocabSize: 517, files: ['image_tokenizer.safetensors'] });
    expect(run.optimizer.schedule).toEqual({ shape: 'cosine', peak: 3e-3, warmup: 4, total: 20, floor: 0.01 });
    expect(run.resumes).toEqual([]);
    const env = run.environment!;
    expect(env).toMatchObject({ host: os.hostname(), node: process.version, moma: run.moma, command: ['moma', 'train', '--steps', '20'] });
    expect(env.cpu.cores).toBe(os.cpus().length);
    expect(env.cpu.threads).toBeGreaterThan(0);
    expect(env.binary.kind).toMatch(/^(prebuilt|source)$/);
    expect(env.binary.backends[0]).toBe('cpu');
    expect(Array.isArray(env.gpus)).toBe(true);
    expect(env.git === null || /^[0-9a-f]{40}$/.test(env.git.sha)).toBe(true);
    const vocab = parseVocabLayout(JSON.parse(fs.readFileSync(path.join(runDir, 'vocab.json'), 'utf8')), 'vocab.json');
    expect(vocab.hash).toBe(shapes.layout.hash);
    expect(fs.readFileSync(path.join(runDir, 'image_tokenizer.safetensors')).equals(shapes.files['image_tokenizer.safetensors'] as Buffer)).toBe(true);
  });

  test('metrics.jsonl has 20 step lines with finite losses and the schedule, and held-out records at 10 and 20', () => {
    const all = records(runDir);
    const steps = all.filter((r): r is StepRecord => !isEval(r));
    const evals = all.filter(isEval);
    expect(steps.map((r) => r.step)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    // every record has a kind and a time, in order; a MoMa model cannot sample (no auxiliary routers yet)
    expect(all.map((r) => r.kind)).toEqual(all.map((r) => (isEval(r) ? 'eval' : 'step')));
    const times = all.map((r) => Date.parse(r.time!));
    expect(times.every((t, i) => Number.isFinite(t) && (i === 0 || t >= times[i - 1]!))).toBe(true);
    expect(fs.existsSync(path.join(runDir, 'samples'))).toBe(false);
    steps.forEach((r, i) => {
      expect(r.tokens).toBe((i + 1) * 2 * 64);
      for (const v of [r.loss, r.lossPerModality.text, r.lossPerModality.image, r.gradNorm, r.tokensPerSecond, r.flops.total]) expect(Number.isFinite(v)).toBe(true);
      expect(r.flops.perModality.text! + r.flops.perModality.image!).toBeCloseTo(r.flops.total, -3);
      expect(r.lr).toBe(learningRate(i, { peak: 3e-3, warmup: 4, total: 20, floor: 0.01, shape: 'cosine' }));
      expect(r.imageFraction).toBeGreaterThanOrEqual(0);
      expect(r.imageFraction).toBeLessThanOrEqual(1);
    });
    const meanImageFraction = steps.reduce((s, r) => s + r.imageFraction, 0) / steps.length;
    expect(Math.abs(meanImageFraction - 0.5)).toBeLessThan(0.2);
    expect(steps[19]!.loss).toBeLessThan(steps[0]!.loss);
    expect(steps.filter((r) => r.routing !== undefined).map((r) => r.step)).toEqual([10, 20]);
    expect(steps[19]!.routing).toHaveLength(3 * 8);
    expect(evals.map((r) => r.step)).toEqual([10, 20]);
    for (const e of evals) {
      expect(e.targets).toBeGreaterThan(0);
      expect(e.targets).toBeLessThanOrEqual(4 * 2 * 63);
      expect(e.targetsPerModality.text! + e.targetsPerModality.image!).toBe(e.targets);
      expect(Number.isFinite(e.lossPerModality.text) && Number.isFinite(e.lossPerModality.image)).toBe(true);
    }
    expect(evals[1]!.loss).toBeLessThan(evals[0]!.loss);
    expect(seen).toEqual({ steps: 20, evals: [10, 20], checkpoints: [5, 10, 15, 20], start: 0 });
  });

  test('the newest two checkpoints are kept, each with the model, the vocabulary and the image tokenizer', () => {
    expect(checkpointsOf(runDir)).toEqual(['step-000015', 'step-000020']);
    const last = path.join(runDir, 'checkpoints', 'step-000020');
    for (const file of ['model.safetensors', 'optimizer.safetensors', 'config.json', 'trainer.json', 'vocab.json', 'image_tokenizer.safetensors']) {
      expect(fs.existsSync(path.join(last, file))).toBe(true);
    }
    expect(JSON.parse(fs.readFileSync(path.join(last, 'trainer.json'), 'utf8'))).toMatchObject({ step: 20, tokens: 20 * 128 });
    expect(JSON.parse(fs.readFileSync(path.join(last, 'vocab.json'), 'utf8')).hash).toBe(shapes.layout.hash);
    expect(summary.checkpoint).toBe(last);
  });

  test('the report: SVG with the axis titles, a valid PNG at twice its size, a self-contained HTML page', async () => {
    const svg = fs.readFileSync(summary.report!.svg, 'utf8');
    for (const title of ['tokens', 'training FLOPs', 'loss (nats per token)', 'modality']) expect(svg).toContain(`>${title}<`);
    const png = fs.readFileSync(summary.report!.png);
    expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const meta = await sharp(png).metadata();
    expect(meta.format).toBe('png');
    expect(meta.width).toBe(2 * Number(/width="(\d+)"/.exec(svg)![1]));
    const html = fs.readFileSync(summary.report!.html, 'utf8');
    expect(html).not.toMatch(/<script|<link|<img|src=|https?:\/\/(?!www\.w3\.org)/);
    expect(html).toContain('tiny-4t4i');
    expect(html).toContain('Routing (step 20)');
    expect(html).toContain('held-out (step 20)');
    expect(html).toContain('>Learning rate<');
  });

  test('the summary agrees with the metrics', () => {
    const steps = records(runDir).filter((r): r is StepRecord => !isEval(r));
    expect(summary).toMatchObject({ runDir, stopped: false, steps: 20, tokens: 2560, session: { steps: 20, tokens: 2560 } });
    expect(summary.loss.first).toEqual({ overall: steps[0]!.loss, ...steps[0]!.lossPerModality });
    expect(summary.loss.finalWindow).toBe(1);
    expect(summary.loss.final.image).toBe(steps[19]!.lossPerModality.image);
    expect(summary.heldOut!.step).toBe(20);
    expect(summary.flops.total).toBe(steps[19]!.flops.total);
    expect(summary.wallSeconds).toBeGreaterThan(summary.session.trainSeconds);
  });

  test('stopping by signal at step 10 checkpoints there; resuming to 20 equals the straight run bit for bit', async () => {
    const stoppedDir = path.join(dir, 'stopped');
    const controller = new AbortController();
    const hooks: RunHooks = { signal: controller.signal, onStep: (r) => r.step === 10 && controller.abort() };
    const first = await trainRun({ values: { ...SMALL, steps: 20, evalEvery: 10, checkpointEvery: 0, out: stoppedDir }, dataset: shapes }, hooks);
    expect(first).toMatchObject({ stopped: true, steps: 10 });
    expect(checkpointsOf(stoppedDir)).toEqual(['step-000010']);
    expect(JSON.parse(fs.readFileSync(path.join(stoppedDir, 'checkpoints', 'step-000010', 'trainer.json'), 'utf8')).step).toBe(10);
    expect(fs.existsSync(path.join(stoppedDir, 'report.png'))).toBe(true);

    let startStep = -1;
    const second = await trainRun({ resume: stoppedDir, dataset: shapes }, { onStart: (info) => (startStep = info.startStep) });
    expect(startStep).toBe(10);
    expect(second).toMatchObject({ stopped: false, steps: 20, session: { steps: 10, tokens: 1280 } });
    expect(records(stoppedDir).map(untimed)).toEqual(records(runDir).map(untimed));
    for (const file of ['model.safetensors', 'optimizer.safetensors']) {
      const a = fs.readFileSync(path.join(runDir, 'checkpoints', 'step-000020', file));
      const b = fs.readFileSync(path.join(stoppedDir, 'checkpoints', 'step-000020', file));
      expect(b.equals(a)).toBe(true);
    }
    const run = JSON.parse(fs.readFileSync(path.join(stoppedDir, 'run.json'), 'utf8')) as RunFile;
    expect(run.resumes).toHaveLength(1);
    expect(run.resumes[0]).toMatchObject({ step: 10, steps: 20, environment: { host: os.hostname(), node: process.version } });
  });

  test('after a kill, resume drops metrics past the checkpoint (and a torn line) and repeats those steps exactly', async () => {
    const killed = path.join(dir, 'killed');
    await trainRun({ values: { ...SMALL, steps: 8, evalEvery: 3, checkpointEvery: 3, out: killed }, dataset: shapes });
    const before = records(killed);
    // as if the process died after step 8 before its final checkpoint, in the middle of a line
    fs.rmSync(path.join(killed, 'checkpoints', 'step-000008'), { recursive: true });
    fs.mkdirSync(path.join(killed, 'checkpoints', 'step-000009.partial-4242'));
    fs.appendFileSync(path.join(killed, 'metrics.jsonl'), '{"step":9,"tok');
    const resumed = await trainRun({ resume: killed, dataset: shapes });
    expect(resumed.session.steps).toBe(2);
    expect(checkpointsOf(killed)).toEqual(['step-000006', 'step-000008']);
    expect(records(killed).map(untimed)).toEqual(before.map(untimed));
  });

  test('refusals: an existing run as --out, fewer steps than the checkpoint, no checkpoint, another vocabulary', async () => {
    await expect(trainRun({ values: { ...SMALL, steps: 2, out: runDir }, dataset: shapes })).rejects.toThrow(/already holds a run; continue it with --resume/);
    await expect(trainRun({ resume: runDir, values: { steps: 12 }, dataset: shapes })).rejects.toThrow(/--steps 12 is below the step of the newest checkpoint \(20\)/);
    const empty = path.join(dir, 'empty-run');
    fs.mkdirSync(empty);
    fs.copyFileSync(path.join(runDir, 'run.json'), path.join(empty, 'run.json'));
    fs.copyFileSync(path.join(runDir, 'vocab.json'), path.join(empty, 'vocab.json'));
    await expect(trainRun({ resume: empty, dataset: shapes })).rejects.toMatchObject({ code: 'ERR_FILE', message: expect.stringContaining('no complete checkpoint') });
    await expect(trainRun({ resume: runDir, dataset: textOnly() })).rejects.toMatchObject({ code: 'ERR_FILE', message: expect.stringContaining('vocabulary') });
    const notEmpty = path.join(dir, 'not-empty');
    fs.mkdirSync(notEmpty);
    fs.writeFileSync(path.join(notEmpty, 'notes.txt'), 'x');
    await expect(trainRun({ values: { ...SMALL, steps: 2, out: notEmpty }, dataset: shapes })).rejects.toMatchObject({ code: 'ERR_ARG' });
    await expect(trainRun({ values: { ...SMALL, steps: 2, out: path.join(dir, 'no-shards'), data: path.join(dir, 'missing') } })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringContaining('--data') });
  });
});

test('--checkpoint-minutes checkpoints at the first logged step that many minutes after the previous one (a fake clock: 30 s a step)', async () => {
  const runDir = path.join(dir, 'timed');
  let now = 0;
  const checkpoints: number[] = [];
  await trainRun({ values: { ...SMALL, steps: 12, evalEvery: 0, checkpointEvery: 0, checkpointMinutes: 1.5, logEvery: 1, out: runDir }, dataset: shapes, clock: () => now }, {
    onStep: (r) => (now = r.step * 30_000),
    onCheckpoint: (c) => checkpoints.push(c.step),
  });
  expect(checkpoints).toEqual([3, 6, 9, 12]);
  // with --log-every 2 the check runs at logged steps only: 1.5 minutes have passed at step 3, checkpointed at step 4
  const everyOther = path.join(dir, 'timed-2');
  const seen: number[] = [];
  now = 0;
  await trainRun({ values: { ...SMALL, steps: 9, evalEvery: 0, checkpointEvery: 0, checkpointMinutes: 1.5, logEvery: 2, out: everyOther }, dataset: shapes, clock: () => now }, {
    onStep: (r) => (now = r.step * 30_000),
    onCheckpoint: (c) => seen.push(c.step),
  });
  expect(seen).toEqual([4, 8, 9]);
  expect(JSON.parse(fs.readFileSync(path.join(everyOther, 'run.json'), 'utf8')).config.checkpointMinutes).toBe(1.5);
});

test('readMetrics sorts records by kind and reads files written before records had a kind or a time', () => {
  const runDir = path.join(dir, 'old-metrics');
  fs.mkdirSync(runDir);
  const step = { step: 1, tokens: 128, loss: 2, lossPerModality: { text: 2 } };
  fs.writeFileSync(path.join(runDir, 'metrics.jsonl'), [
    step, { ...step, step: 2, kind: 'step', time: '2026-01-01T00:00:00.000Z' }, { kind: 'eval', step: 2, tokens: 256, loss: 1.5 },
    { kind: 'sample', step: 2, tokens: 256, prompt: 'a red circle.' }, { kind: 'skip', step: 2, tokens: 256, skipped: 1 }, { kind: 'later-kind', step: 2, tokens: 256 },
  ].map((r) => JSON.stringify(r)).join('\n') + '\n{"step":3,"tok');
  const read = readMetrics(runDir);
  expect(read.steps.map((r) => [r.step, r.kind])).toEqual([[1, undefined], [2, 'step']]);
  expect(read.evals.map((r) => r.loss)).toEqual([1.5]);
  expect(read.samples.map((r) => r.prompt)).toEqual(['a red circle.']);
  expect(read.skips.map((r) => r.skipped)).toEqual([1]);
});

/** A text-only dataset without an eval split: numbers spelled as byte strings. */
function textOnly(): MixedModalDataset {
  const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 });
  return {
    name: 'test:counting', layout, files: {},
    store: (split) => (split === 'eval' ? null : {
      count: Infinity,
      idAt: (k) => k,
      tokens: (id) => documentTokens(layout, [{ text: Buffer.from(`count ${id} then ${id + 1}.`) }]),
    }),
  };
}

test('a text-only dataset without an eval split: no held-out records, image losses null, the report still renders', async () => {
  const runDir = path.join(dir, 'text-only');
  const summary = await trainRun({ values: { ...SMALL, preset: 'tiny-dense', steps: 3, out: runDir, evalEvery: 1 }, dataset: textOnly() });
  const all = records(runDir);
  expect(all.filter(isEval)).toEqual([]);
  expect(all.map((r) => (r as StepRecord).lossPerModality.image)).toEqual([null, null, null]);
  expect(all.every((r) => (r as StepRecord).imageFraction === 0)).toBe(true);
  expect(summary.heldOut).toBeNull();
  expect(summary.loss.final.image).toBeNull();
  expect(fs.readFileSync(summary.report!.svg, 'utf8')).toContain('>training FLOPs<');
  expect(JSON.parse(fs.readFileSync(path.join(runDir, 'run.json'), 'utf8')).config.imageFraction).toBeNull();
});

test('a builtin run resumes without being handed its dataset: the saved image tokenizer gives the same vocabulary', async () => {
  const runDir = path.join(dir, 'builtin');
  await trainRun({ values: { ...SMALL, steps: 2, out: runDir, evalBatches: 1 } });
  const resumed = await trainRun({ resume: runDir, values: { steps: 3 } });
  expect(resumed).toMatchObject({ steps: 3, session: { steps: 1 } });
  expect(records(runDir).filter((r) => !isEval(r)).map((r) => r.step)).toEqual([1, 2, 3]);
});
