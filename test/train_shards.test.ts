/**
 * The whole file pipeline, as a user runs it: PNG files and a JSON Lines file of interleaved
 * captions and images → a codebook trained on the folder → `packShardSet` → `trainRun` with
 * `data: <shard set>` → a checkpoint that carries the vocabulary and the tokenizer files → a
 * resumed run that continues the data position (equal to a straight run).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { ImageTokenizer } from '../lib/data/image_tokenizer';
import { packShardSet } from '../lib/data/pack';
import { describeDocument, renderScene } from '../lib/data/shapes';
import { openShardSet } from '../lib/data/shard_set';
import { parseVocabLayout } from '../lib/data/vocab';
import type { MetricsRecord, StepRecord } from '../lib/run/records';
import { trainRun } from '../lib/run/run';

let dir: string;
let shards: string;
const VALUES = { preset: 'tiny-4t4i', model: { dModel: 32, heads: 2, ffn: { dFF: 48 } }, batchSize: 2, seqLen: 64, device: 'cpu', lr: 3e-3, warmup: 2, evalEvery: 4, logEvery: 1 };

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-pipeline-'));
  const images = path.join(dir, 'data', 'images');
  fs.mkdirSync(images, { recursive: true });
  const lines: string[] = [];
  for (let k = 0; k < 40; k++) {
    const doc = describeDocument(k, 3);
    const file = `images/${k}.png`;
    await sharp(Buffer.from(renderScene(doc.scene, 48)), { raw: { width: 48, height: 48, channels: 3 } }).png().toFile(path.join(dir, 'data', file));
    lines.push(JSON.stringify(doc.captionFirst ? [{ text: doc.caption }, { image: file }] : [{ image: file }, { text: doc.caption }]));
  }
  fs.writeFileSync(path.join(dir, 'data', 'docs.jsonl'), lines.join('\n') + '\n');
  const { tokenizer } = await ImageTokenizer.trainFromFolder(images, { imageSize: 32, patchSize: 8, codebookSize: 32, iterations: 8 });
  await tokenizer.save(path.join(dir, 'codebook.safetensors'));
  shards = path.join(dir, 'shards');
  await packShardSet({ inputs: [path.join(dir, 'data', 'docs.jsonl')], out: shards, imageTokenizer: path.join(dir, 'codebook.safetensors'), evalDocuments: 4 });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function steps(runDir: string): StepRecord[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l !== '')
    .map((l) => JSON.parse(l) as MetricsRecord).filter((r): r is StepRecord => r.kind === 'step');
}

test('trains on a packed shard set of real PNG files, and its checkpoints carry the vocabulary and tokenizer', async () => {
  const set = openShardSet(shards);
  expect(set.layout.size).toBe(5 + 256 + 32);
  expect(set.summary('train').documents).toBe(36);
  set.close();
  const runDir = path.join(dir, 'run');
  const summary = await trainRun({ values: { ...VALUES, data: shards, steps: 8, checkpointEvery: 4, out: runDir } });
  const records = steps(runDir);
  expect(records.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  for (const r of records) for (const v of [r.loss, r.lossPerModality.text]) expect(Number.isFinite(v)).toBe(true);
  // A batch of 2 × 64 tokens can draw only text (the image loss is then NaN, null in JSON):
  // step 3 does here, the other 7 steps have images.
  for (const r of records) expect([r.step, Number.isFinite(r.lossPerModality.image)]).toEqual([r.step, r.imageFraction > 0]);
  expect(records.filter((r) => r.imageFraction > 0).length).toBeGreaterThanOrEqual(6);
  // the loss is the mean of ln(V) ≈ 5.68 at the start and falls within 8 steps at lr 3e-3
  expect(records[0]!.loss).toBeGreaterThan(5);
  expect(records[7]!.loss).toBeLessThan(records[0]!.loss);
  expect(summary.steps).toBe(8);
  const checkpoint = path.join(runDir, 'checkpoints', 'step-000008');
  const layout = parseVocabLayout(JSON.parse(fs.readFileSync(path.join(checkpoint, 'vocab.json'), 'utf8')), 'vocab.json');
  expect(layout.hash).toBe(openShardSet(shards).layout.hash);
  expect(fs.readFileSync(path.join(checkpoint, 'image_tokenizer.safetensors'))).toEqual(fs.readFileSync(path.join(shards, 'image_tokenizer.safetensors')));
});

test('a shard-set run stopped and resumed equals a straight run', async () => {
  const straight = path.join(dir, 'straight');
  await trainRun({ values: { ...VALUES, data: shards, steps: 8, checkpointEvery: 4, out: straight } });
  const split = path.join(dir, 'split');
  const controller = new AbortController();
  await trainRun({ values: { ...VALUES, data: shards, steps: 8, checkpointEvery: 100, out: split } }, {
    signal: controller.signal,
    onStep: (r) => { if (r.step === 3) controller.abort(); },
  });
  expect(steps(split).map((r) => r.step)).toEqual([1, 2, 3]);
  await trainRun({ resume: split });
  const strip = (r: StepRecord): unknown => ({ step: r.step, loss: r.loss, perModality: r.lossPerModality, tokens: r.tokens, gradNorm: r.gradNorm, imageFraction: (r as { imageFraction?: number }).imageFraction });
  expect(steps(split).map(strip)).toEqual(steps(straight).map(strip));
});
