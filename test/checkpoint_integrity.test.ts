/**
 * Checkpoints are verified, not trusted: a saved checkpoint of a tiny model is corrupted in a
 * temp folder in each way a file can go wrong (a missing or mistyped trainer.json key, a bad
 * config.json, a missing or renamed optimizer moment, a flipped byte in tensor data, overlapping
 * safetensors ranges, a wrong image tokenizer), and the load must fail with ERR_FILE naming the
 * file and what is wrong, without changing the model or the optimizer and without quoting the
 * file's content.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { AdamW, backward, makeBatch, tidy, Transformer, TransformerConfig } from '../lib';
import { decodeSafetensors, encodeSafetensors, HostTensor } from '../lib/io/safetensors';
import { CHECKSUMS_FILE, exportCheckpoint, loadCheckpointInto, readCheckpoint, saveCheckpoint, writeChecksums } from '../lib/train/checkpoint';
import { readRunFile } from '../lib/run/records';
import { CheckpointSource, loadImageTokenizer } from '../lib/run/checkpoint_source';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-integrity-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const config: TransformerConfig = {
  vocabSize: 20, dModel: 8, layers: 1, heads: 2, seed: 4, initStd: 0.1,
  ffn: { kind: 'moe', dFF: 12, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }] },
};
const state = {
  step: 1, optimizerStep: 1, tokens: 20, flops: { total: 1000, perModality: [600, 400] },
  generator: { seed: '7', offset: '12' }, dataPosition: { next: 2, nextImage: 1, carry: null, batches: 1 },
};
const base = path.join(tmp, 'base');
let firstParam = '';

beforeAll(async () => {
  const model = new Transformer(config);
  const optimizer = new AdamW(model, { weightDecay: 0.1 });
  const seqs = [[1, 2, 3, 14, 15, 4, 5, 16], [1, 6, 7, 17, 8, 18, 9, 10]];
  const b = makeBatch(seqs, { padId: 0, bosId: 1, modalityOf: (id) => (id >= 14 ? 1 : 0), modalities: 2 });
  tidy(() => backward(model.loss(b, { training: true }).loss));
  optimizer.update(1e-2);
  for (const t of [b.tokens, b.targets, b.positions, b.segStart, b.modality, b.weights, ...b.modalityWeights]) t.dispose();
  await saveCheckpoint(base, { config, model, optimizer, state });
  firstParam = [...model.namedParameters().keys()][0]!;
  model.dispose();
  optimizer.dispose();
}, 60000);

/** A copy of the good checkpoint to corrupt. */
function copy(name: string): string {
  const dir = path.join(tmp, name);
  fs.cpSync(base, dir, { recursive: true });
  return dir;
}

function editJson(dir: string, file: string, edit: (value: Record<string, unknown>) => void, rehash = true): void {
  const full = path.join(dir, file);
  const value = JSON.parse(fs.readFileSync(full, 'utf8')) as Record<string, unknown>;
  edit(value);
  fs.writeFileSync(full, JSON.stringify(value));
  if (rehash) writeChecksums(dir);
}

function editSafetensors(dir: string, file: string, edit: (entries: [string, HostTensor][]) => [string, HostTensor][]): void {
  const full = path.join(dir, file);
  const { tensors, metadata } = decodeSafetensors(fs.readFileSync(full), full);
  fs.writeFileSync(full, encodeSafetensors(edit([...tensors]), metadata));
  writeChecksums(dir);
}

const fileError = (...parts: string[]) => expect.objectContaining({ code: 'ERR_FILE', message: expect.stringMatching(new RegExp(parts.map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*'))) });

/** Loads `dir` into a fresh model and optimizer; on failure, checks that neither changed. */
async function load(dir: string): Promise<void> {
  const model = new Transformer({ ...config, seed: 99 });
  const optimizer = new AdamW(model, { weightDecay: 0.1 });
  const before = Array.from(await model.namedParameters().get(firstParam)!.toArray());
  try {
    loadCheckpointInto(dir, model, optimizer, { trainerResume: true });
  } catch (err) {
    expect(Array.from(await model.namedParameters().get(firstParam)!.toArray())).toEqual(before);
    expect(optimizer.stateDict().size).toBe(0);
    expect(optimizer.step).toBe(0);
    throw err;
  } finally {
    model.dispose();
    optimizer.dispose();
  }
}

describe('checksums', () => {
  test('checksums.json is written last and lists the SHA-256 of every other file', () => {
    const sums = JSON.parse(fs.readFileSync(path.join(base, CHECKSUMS_FILE), 'utf8')) as { format: string; algorithm: string; files: Record<string, string> };
    expect(sums.format).toBe('moma-checksums');
    expect(sums.algorithm).toBe('sha256');
    const others = fs.readdirSync(base).filter((n) => n !== CHECKSUMS_FILE).sort();
    expect(Object.keys(sums.files).sort()).toEqual(others);
    for (const name of others) expect(sums.files[name]).toBe(createHash('sha256').update(fs.readFileSync(path.join(base, name))).digest('hex'));
  });

  test('the intact checkpoint loads, moments and all', async () => {
    await expect(load(base)).resolves.toBeUndefined();
  });

  test('a flipped bit in model.safetensors tensor data fails naming the file', async () => {
    const dir = copy('flipped');
    const file = path.join(dir, 'model.safetensors');
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 3]! ^= 0x10;
    fs.writeFileSync(file, bytes);
    await expect(load(dir)).rejects.toThrow(fileError(file, 'SHA-256', 'checksums.json'));
  });

  test('a flipped bit in optimizer.safetensors fails naming the file', async () => {
    const dir = copy('flipped-opt');
    const file = path.join(dir, 'optimizer.safetensors');
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 1]! ^= 0x01;
    fs.writeFileSync(file, bytes);
    await expect(load(dir)).rejects.toThrow(fileError(file, 'SHA-256'));
  });

  test('a checkpoint written before checksums (no checksums.json) loads unverified', async () => {
    const dir = copy('legacy');
    fs.rmSync(path.join(dir, CHECKSUMS_FILE));
    const file = path.join(dir, 'model.safetensors');
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 3]! ^= 0x10;
    fs.writeFileSync(file, bytes);
    await expect(load(dir)).resolves.toBeUndefined();
  });

  test('a malformed checksums.json is refused', () => {
    const dir = copy('bad-sums');
    editJson(dir, CHECKSUMS_FILE, (v) => {
      (v.files as Record<string, string>)['model.safetensors'] = 'not-a-hash';
    }, false);
    expect(() => readCheckpoint(dir)).toThrow(fileError(path.join(dir, CHECKSUMS_FILE), "'files.model.safetensors'", 'hex SHA-256'));
  });

  test('exportCheckpoint verifies its input and writes checksums for its output', () => {
    const out = path.join(tmp, 'exported');
    exportCheckpoint(base, out);
    expect(fs.readdirSync(out)).toContain(CHECKSUMS_FILE);
    expect(() => readCheckpoint(out)).not.toThrow();
  });
});

describe('trainer.json and config.json are checked by their schemas', () => {
  const trainerFile = (dir: string) => path.join(dir, 'trainer.json');

  test('a trainer state without dataPosition does not resume (no silent restart of the data)', async () => {
    const dir = copy('no-position');
    editJson(dir, 'trainer.json', (v) => delete v.dataPosition);
    expect(() => readCheckpoint(dir, { trainerResume: true })).toThrow(fileError(trainerFile(dir), "'dataPosition' is missing"));
    await expect(load(dir)).rejects.toThrow(fileError(trainerFile(dir), 'dataPosition'));
    expect(readCheckpoint(dir).state.step).toBe(1);  // inspection (eval, generate) needs no data position
  });

  test('tokens: "lots" is refused with the key and the expected type', () => {
    const dir = copy('lots');
    editJson(dir, 'trainer.json', (v) => (v.tokens = 'lots'));
    expect(() => readCheckpoint(dir)).toThrow(fileError(trainerFile(dir), "'tokens' must be a number, got 'lots'"));
  });

  test('file content is never quoted', () => {
    const dir = copy('quoting');
    editJson(dir, 'trainer.json', (v) => (v.step = '<script>alert(1)</script>'));
    let message = '';
    try {
      readCheckpoint(dir);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("'step' must be a number, got a string of 25 characters");
    expect(message).not.toContain('<script');
  });

  test('flops without perModality is ERR_FILE, not a TypeError', () => {
    const dir = copy('flops');
    editJson(dir, 'trainer.json', (v) => (v.flops = { total: 5 }));
    expect(() => readCheckpoint(dir)).toThrow(fileError(trainerFile(dir), "'flops.perModality' is missing"));
  });

  test('a fractional step and a negative generator offset are refused', () => {
    const dir = copy('fraction');
    editJson(dir, 'trainer.json', (v) => (v.optimizerStep = 1.5));
    expect(() => readCheckpoint(dir)).toThrow(fileError(trainerFile(dir), "'optimizerStep' must be an integer, got 1.5"));
    editJson(dir, 'trainer.json', (v) => {
      v.optimizerStep = 1;
      v.generator = { seed: '7', offset: '-3' };
    });
    expect(() => readCheckpoint(dir)).toThrow(fileError(trainerFile(dir), "'generator.offset'", 'decimal integer string'));
  });

  test('config.json is checked by validateConfig, the error naming the file', () => {
    const dir = copy('config');
    editJson(dir, 'config.json', (v) => (v.heads = 3));
    expect(() => readCheckpoint(dir)).toThrow(fileError(path.join(dir, 'config.json'), 'heads (3) must divide dModel (8)'));
    editJson(dir, 'config.json', (v) => {
      v.heads = 2;
      v.zloss = 1;
    });
    expect(() => readCheckpoint(dir)).toThrow(fileError(path.join(dir, 'config.json'), "unknown key 'zloss'"));
  });
});

describe('every parameter and every moment, by name, shape and dtype', () => {
  test('a missing second moment fails naming the file and the parameter (not a TypeError)', async () => {
    const dir = copy('no-moment');
    editSafetensors(dir, 'optimizer.safetensors', (e) => e.filter(([k]) => k !== `exp_avg_sq.${firstParam}`));
    await expect(load(dir)).rejects.toThrow(fileError(path.join(dir, 'optimizer.safetensors'), `lacks 'exp_avg_sq.${firstParam}'`, `parameter '${firstParam}'`));
  });

  test('a renamed moment is an unknown entry', async () => {
    const dir = copy('renamed');
    editSafetensors(dir, 'optimizer.safetensors', (e) => e.map(([k, t]) => [k === `exp_avg.${firstParam}` ? `exp_avg.${firstParam}x` : k, t]));
    await expect(load(dir)).rejects.toThrow(fileError(path.join(dir, 'optimizer.safetensors'), `unknown entry 'exp_avg.${firstParam}x'`));
  });

  test('both moments of a parameter missing fails (no resume from zeros)', async () => {
    const dir = copy('no-moments');
    editSafetensors(dir, 'optimizer.safetensors', (e) => e.filter(([k]) => !k.endsWith(`.${firstParam}`)));
    await expect(load(dir)).rejects.toThrow(fileError(path.join(dir, 'optimizer.safetensors'), `lacks 'exp_avg.${firstParam}'`));
  });

  test('a moment of the wrong shape or dtype names the parameter and both shapes', async () => {
    const dir = copy('moment-shape');
    editSafetensors(dir, 'optimizer.safetensors', (e) => e.map(([k, t]) => [k, k === `exp_avg.${firstParam}` ? { dtype: 'F32', shape: [t.data.length], data: t.data } as HostTensor : t]));
    await expect(load(dir)).rejects.toThrow(fileError(path.join(dir, 'optimizer.safetensors'), `'exp_avg.${firstParam}' is F32 [`, `parameter '${firstParam}' needs F32 [`));
  });

  test('a parameter of the wrong shape names the file and the full parameter name', () => {
    const model = new Transformer({ ...config, ffn: { ...config.ffn, dFF: 16 } });
    try {
      expect(() => loadCheckpointInto(base, model)).toThrow(fileError(path.join(base, 'model.safetensors'), "parameter 'layers.0.ffn.", 'the model\'s is F32 ['));
    } finally {
      model.dispose();
    }
  });

  test('a parameter of the wrong dtype names the file and the parameter', () => {
    const dir = copy('param-dtype');
    editSafetensors(dir, 'model.safetensors', (e) => e.map(([k, t]) => [k, k === firstParam ? { dtype: 'I32', shape: t.shape, data: new Int32Array(t.data.length) } as HostTensor : t]));
    const model = new Transformer(config);
    try {
      expect(() => loadCheckpointInto(dir, model)).toThrow(fileError(path.join(dir, 'model.safetensors'), `parameter '${firstParam}' is I32`));
    } finally {
      model.dispose();
    }
  });
});

describe('safetensors data ranges must tile the data area', () => {
  const raw = (header: Record<string, unknown>, dataBytes: number): Buffer => {
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    return Buffer.concat([len, json, Buffer.alloc(dataBytes)]);
  };
  const f32 = (from: number, to: number) => ({ dtype: 'F32', shape: [(to - from) / 4], data_offsets: [from, to] });

  test('overlapping ranges are refused naming the file and both tensors', () => {
    expect(() => decodeSafetensors(raw({ a: f32(0, 8), b: f32(4, 12) }, 12), 'x.safetensors')).toThrow(fileError('x.safetensors', "tensor 'a'", "tensor 'b'", 'overlap'));
  });

  test('a gap between tensors is refused', () => {
    expect(() => decodeSafetensors(raw({ a: f32(0, 8), b: f32(12, 20) }, 20), 'x.safetensors')).toThrow(fileError('x.safetensors', 'gap of 4 bytes', "tensor 'a'", "tensor 'b'"));
  });

  test('bytes past the last tensor and ranges past the end are refused', () => {
    expect(() => decodeSafetensors(raw({ a: f32(0, 8) }, 12), 'x.safetensors')).toThrow(fileError('x.safetensors', '4 bytes belong to no tensor'));
    expect(() => decodeSafetensors(raw({ a: f32(0, 16) }, 8), 'x.safetensors')).toThrow(fileError('x.safetensors', "tensor 'a'", 'do not fit'));
  });

  test('a checkpoint whose model.safetensors has overlapping ranges is refused', async () => {
    const dir = copy('overlap');
    const file = path.join(dir, 'model.safetensors');
    const bytes = fs.readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + n).toString()) as Record<string, { data_offsets: number[] }>;
    const names = Object.keys(header).filter((k) => k !== '__metadata__');
    const [first, second] = [header[names[0]!]!, header[names[1]!]!];
    const size = second.data_offsets[1]! - second.data_offsets[0]!;
    // the second tensor reads the first one's bytes when it is at least as large
    if (first.data_offsets[1]! - first.data_offsets[0]! >= size) second.data_offsets = [first.data_offsets[0]!, first.data_offsets[0]! + size];
    else first.data_offsets = [second.data_offsets[0]!, second.data_offsets[0]! + first.data_offsets[1]! - first.data_offsets[0]!];
    let json = JSON.stringify(header);
    json += ' '.repeat(Math.max(0, n - json.length));
    fs.writeFileSync(file, Buffer.concat([bytes.subarray(0, 8), Buffer.from(json), bytes.subarray(8 + n)]));
    writeChecksums(dir);
    await expect(load(dir)).rejects.toThrow(fileError(file, 'overlap'));
  });
});

describe('other files a run or checkpoint reads', () => {
  test('the image tokenizer must have the SHA-256 its vocab.json records', () => {
    const dir = copy('tokenizer');
    fs.writeFileSync(path.join(dir, 'image_tokenizer.safetensors'), Buffer.from('not a codebook'));
    const source = {
      dir, runDir: null, run: null, config, step: 1,
      layout: { image: { offset: 0, size: 4, tokenizer: { kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: 'a'.repeat(64) } } },
    } as unknown as CheckpointSource;
    // not listed in checksums.json: a file added after the checkpoint was written
    expect(() => loadImageTokenizer(source, 'generate')).toThrow(fileError('generate', 'image_tokenizer.safetensors', 'not listed'));
    writeChecksums(dir);
    expect(() => loadImageTokenizer(source, 'generate')).toThrow(fileError('generate', 'image_tokenizer.safetensors', 'SHA-256', 'vocab.json records'));
  });

  test('run.json is checked by its schema', () => {
    const runDir = path.join(tmp, 'run');
    fs.mkdirSync(runDir);
    const run = {
      format: 'moma-run', version: 1, moma: '0.0.0', startedAt: '2026-01-01T00:00:00.000Z', config: { steps: 10 }, model: config,
      parameters: { total: 'many', active: 1 }, dataset: { name: 'x', vocabHash: 'abc', vocabSize: 20, files: [] },
      optimizer: { kind: 'adamw', betas: [0.9, 0.95], eps: 1e-5, weightDecay: 0.1, clipNorm: 1, schedule: { shape: 'cosine', peak: 1e-3, warmup: 1, total: 10, floor: 0.01 } },
      resumes: [],
    };
    fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify(run));
    expect(() => readRunFile(runDir, 'report')).toThrow(fileError('report', path.join(runDir, 'run.json'), "'parameters.total' must be a number, got 'many'"));
    run.parameters.total = 5 as unknown as string;
    fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify(run));
    expect(readRunFile(runDir, 'report').parameters.total).toBe(5);
    fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify({ ...run, resumes: undefined, format: 'other' }));
    expect(() => readRunFile(runDir, 'report')).toThrow(fileError(path.join(runDir, 'run.json'), "'format' must be \"moma-run\""));
  });
});
