/**
 * The second training stage (lib/run/aux_train.ts): on a short tiny-4t4i-mod run over the
 * built-in data, train-aux lowers every router's held-out BCE on average and the training BCE,
 * never touches the main model, writes aux_routers.safetensors / .json into the checkpoint (which
 * load back bit for bit), stops cleanly on an abort, and rejects bad input. Then: the aux-router
 * loop and repeated generation keep the allocator flat over 1,000 steps.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  AdamW, AUX_ROUTERS_FILE, AUX_SUMMARY_FILE, ModalityConstraint, Transformer, auxLoss, backward, buildVocabLayout, collectAuxExamples,
  disposeBatch, generateTokens, loadAuxRouters, loadModel, makeBatch, memoryStats, modalityOfId, newAuxRouters, openCheckpoint,
  synchronize, tidy, trainAuxRouters, trainRun,
} from '../lib';
import type { ImageTokenizerInfo } from '../lib';
import { collectGarbage } from './support/gc';
import { mulberry32 } from './support/reference';

let dir: string;
let runDir: string;
const sha = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-aux-'));
  runDir = path.join(dir, 'run');
  await trainRun({ values: { preset: 'tiny-4t4i-mod', steps: 40, batchSize: 4, seqLen: 96, evalEvery: 0, checkpointEvery: 0, evalBatches: 1, out: runDir, device: 'cpu' } });
}, 180000);

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('trainAuxRouters', () => {
  test('lowers the BCE, leaves the main model alone, and saves routers that load back', async () => {
    const source = openCheckpoint(runDir, 'test');
    const modelFile = path.join(source.dir, 'model.safetensors');
    const before = sha(modelFile);
    const steps: number[] = [];
    const s = await trainAuxRouters({ checkpoint: runDir, steps: 60, lr: 3e-3, lrEnd: 3e-5, warmup: 5 }, { onStep: (r) => steps.push(r.loss) });
    expect(s.steps).toBe(60);
    expect(s.stopped).toBe(false);
    expect(steps).toHaveLength(60);
    expect(s.trainLoss.last).toBeLessThan(s.trainLoss.first * 0.8);
    // 13 routers: MoD on layers 0, 2, 4 and text / image groups on all 5 layers
    expect(s.after.map((m) => m.key)).toEqual([
      'layers.0/mod', 'layers.0.block.ffn/0', 'layers.0.block.ffn/1', 'layers.1.ffn/0', 'layers.1.ffn/1',
      'layers.2/mod', 'layers.2.block.ffn/0', 'layers.2.block.ffn/1', 'layers.3.ffn/0', 'layers.3.ffn/1',
      'layers.4/mod', 'layers.4.block.ffn/0', 'layers.4.block.ffn/1',
    ]);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    // untrained routers output ≈ 0.5: BCE ≈ ln 2
    for (const m of s.before) expect(Math.abs(m.bce - Math.LN2)).toBeLessThan(0.05);
    expect(mean(s.after.map((m) => m.bce))).toBeLessThan(mean(s.before.map((m) => m.bce)) - 0.1);
    for (const m of s.after) {
      expect(m.accuracy).toBeGreaterThanOrEqual(0);
      expect(m.accuracy).toBeLessThanOrEqual(1);
      // one held-out batch: the batch top-k selects exactly ceil(n / 4) of a group's n rows per expert (4 experts per
      // group, so n = entries / 4) and a MoD block ceil(0.25 n) of its n = entries rows
      const n = m.key.endsWith('/mod') ? m.entries : m.entries / 4;
      expect(Number.isInteger(n) && n > 0).toBe(true);
      expect(m.selected).toBeCloseTo(Math.ceil(n / 4) / n, 12);
    }
    expect(sha(modelFile)).toBe(before);
    expect(fs.existsSync(path.join(source.dir, AUX_ROUTERS_FILE))).toBe(true);
    const summary = JSON.parse(fs.readFileSync(path.join(source.dir, AUX_SUMMARY_FILE), 'utf8'));
    expect(summary.steps).toBe(60);
    expect(summary.settings).toMatchObject({ steps: 60, lr: 3e-3, lrEnd: 3e-5, warmup: 5 });

    // the saved routers reproduce the trained ones: the same held-out confusion counts
    const model = loadModel(source);
    const aux = loadAuxRouters(source.dir, model, 'test');
    const fresh = newAuxRouters(model, 1);
    for (const [name, t] of aux.namedParameters()) {
      expect(t.shape).toEqual(fresh.namedParameters().get(name)!.shape);
      expect(Array.from(await t.toArray())).not.toEqual(Array.from(await fresh.namedParameters().get(name)!.toArray()));
    }
    fresh.dispose();
    aux.dispose();
    model.dispose();
  }, 180000);

  test('an abort stops after the current step and saves what was trained', async () => {
    const controller = new AbortController();
    const s = await trainAuxRouters({ checkpoint: runDir, steps: 50, warmup: 0 }, { signal: controller.signal, onStep: (r) => { if (r.step === 3) controller.abort(); } });
    expect(s.steps).toBe(3);
    expect(s.stopped).toBe(true);
    const saved = JSON.parse(fs.readFileSync(path.join(openCheckpoint(runDir, 'test').dir, AUX_SUMMARY_FILE), 'utf8'));
    expect(saved.steps).toBe(3);
  }, 120000);

  test('bad input', async () => {
    const reject = (options: Parameters<typeof trainAuxRouters>[0], code: string): Promise<void> => expect(trainAuxRouters(options)).rejects.toMatchObject({ code });
    await reject({ checkpoint: runDir, steps: 0 }, 'ERR_ARG');
    await reject({ checkpoint: runDir, steps: 2.5 }, 'ERR_ARG');
    await reject({ checkpoint: runDir, lr: -1 }, 'ERR_ARG');
    await reject({ checkpoint: runDir, lr: 1e-4, lrEnd: 1e-3 }, 'ERR_ARG');
    await reject({ checkpoint: runDir, steps: 10, warmup: 10 }, 'ERR_ARG');
    await reject({ checkpoint: path.join(dir, 'nowhere') }, 'ERR_ARG');
    await reject({ checkpoint: dir }, 'ERR_ARG'); // neither a run nor a checkpoint
    await reject({ cwd: path.join(dir, 'run', 'checkpoints') }, 'ERR_ARG'); // no runs/ there
    // a checkpoint copied out of its run needs --data
    const loose = path.join(dir, 'loose');
    fs.cpSync(openCheckpoint(runDir, 'test').dir, loose, { recursive: true });
    await reject({ checkpoint: loose }, 'ERR_ARG');
    // a corrupt routers file
    fs.writeFileSync(path.join(loose, AUX_ROUTERS_FILE), 'not safetensors');
    const source = openCheckpoint(loose, 'test');
    const model = loadModel(source);
    expect(() => loadAuxRouters(loose, model, 'test')).toThrow(expect.objectContaining({ code: 'ERR_FILE' }));
    fs.rmSync(path.join(loose, AUX_ROUTERS_FILE));
    expect(() => loadAuxRouters(loose, model, 'test')).toThrow(/moma train-aux/);
    model.dispose();
  }, 120000);
});

describe('memory over long loops', () => {
  const image: ImageTokenizerInfo = { kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: 'cd'.repeat(32), imageSize: 8, patchSize: 4, codebookSize: 6, tokensPerImage: 4 };
  const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 7 }, image);
  const modalityOf = (id: number): number => modalityOfId(layout, id);

  test('1,000 aux-router training steps and 1,000 generated tokens leave the allocator flat', async () => {
    const model = new Transformer({
      vocabSize: layout.size, dModel: 8, layers: 2, heads: 2, seed: 1, initStd: 0.3, device: 'cpu',
      ffn: { kind: 'moe', dFF: 8, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }] },
      mod: { interval: 2, capacity: 0.5 },
    });
    const aux = newAuxRouters(model, 2);
    const opt = new AdamW(aux, { lr: 1e-3, weightDecay: 0 });
    const rng = mulberry32(3);
    const doc = (): number[] => [layout.bosId, layout.text.offset + 1, layout.boiId, ...Array.from({ length: 4 }, () => layout.image!.offset + Math.floor(rng() * 6)), layout.eoiId, layout.text.offset + 2, layout.eosId];
    const batch = makeBatch([[...doc(), ...doc()], [...doc(), ...doc()]], { padId: layout.padId, bosId: layout.bosId, modalityOf, modalities: 2, vocabSize: layout.size });
    const step = async (): Promise<void> => {
      const examples = await collectAuxExamples(model, aux, batch);
      tidy(() => backward(auxLoss(examples).loss!));
      for (const e of examples) e.dispose();
      await opt.update();
      opt.zeroGrad();
    };
    for (let i = 0; i < 20; i++) await step();
    // earlier tests' garbage must not be freed during the loop: collect it first
    await collectGarbage('cpu');
    const base = memoryStats('cpu');
    for (let i = 0; i < 1000; i++) await step();
    await synchronize('cpu');
    const after = memoryStats('cpu');
    expect(after.allocated).toBe(base.allocated);
    expect(after.liveStorages).toBe(base.liveStorages);
    expect(after.collectedWithoutDispose).toBe(base.collectedWithoutDispose);

    // generation: 50 samples of up to 20 tokens, each with its own KV cache
    let generated = 0;
    for (let i = 0; i < 50; i++) {
      const r = await generateTokens(model, [layout.bosId], { routing: aux, layout, constraint: new ModalityConstraint(layout), seed: i, maxTokens: 20 });
      generated += r.tokens.length;
    }
    expect(generated).toBeGreaterThan(500);
    await synchronize('cpu');
    const end = memoryStats('cpu');
    expect(end.allocated).toBe(base.allocated);
    expect(end.liveStorages).toBe(base.liveStorages);
    expect(end.collectedWithoutDispose).toBe(base.collectedWithoutDispose);
    opt.dispose();
    aux.dispose();
    disposeBatch(batch);
    model.dispose();
  }, 180000);
});
