/**
 * Issue 16, smaller points: bad input is refused at its cause with a stable code and a message
 * that names what is wrong, without quoting the content of files that are not what they claim.
 *   - unknown keys in Transformer / MoMaFFN configs (with the known keys and a suggestion);
 *   - invalid UTF-8 in a docs.jsonl line (ERR_FILE naming file:line, never U+FFFD);
 *   - an image codebook with more codes than training patches;
 *   - tensor() of data that is not numbers (the path of the first bad element);
 *   - a checkpoint trained on a CUDA device opened where none is visible;
 *   - describeValue / file content in error messages (vocab.json, index.json, safetensors, JSON).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MoMaFFN, MomaError, MomaErrorCode, tensor, Transformer, TransformerConfig } from '../lib';
import { describeKey, describeValue, rejectUnknownKeys, suggestKey } from '../lib/checked';
import { listPresets, preset } from '../lib/model/presets';
import { validateConfig } from '../lib/model/transformer';
import { decodeDocumentLine, packShardSet, parseDocumentLine } from '../lib/data/pack';
import { ImageTokenizer } from '../lib/data/image_tokenizer';
import { buildVocabLayout, parseVocabLayout, vocabHash } from '../lib/data/vocab';
import { parseShardSetIndex } from '../lib/data/shard_set';
import { decodeSafetensors, encodeSafetensors } from '../lib/io/safetensors';
import { jsonSyntaxProblem, readJson } from '../lib/io/files';
import { checkpointDevice, CheckpointSource, loadModel } from '../lib/run/checkpoint_source';
import { saveCheckpoint } from '../lib/train/checkpoint';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-hardening-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The MomaError fn throws: its code must be `code`. */
function errorOf(fn: () => unknown, code: MomaErrorCode): MomaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(MomaError);
    expect((err as MomaError).code).toBe(code);
    return err as MomaError;
  }
  throw new Error(`expected a MomaError ${code}`);
}

async function rejection(promise: Promise<unknown>, code: MomaErrorCode): Promise<MomaError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(MomaError);
    expect((err as MomaError).code).toBe(code);
    return err as MomaError;
  }
  throw new Error(`expected a rejection with ${code}`);
}

const TINY: TransformerConfig = { vocabSize: 16, dModel: 8, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 8 } };
const MOE: TransformerConfig = {
  vocabSize: 16, dModel: 8, layers: 2, heads: 2, mod: { interval: 2, capacity: 0.5 },
  ffn: { kind: 'moe', dFF: 8, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }], capacityFactor: 1 },
};

describe('unknown config keys', () => {
  test('suggestKey: the same spelling ignoring case, else the nearest within 2 edits', () => {
    const known = ['capacityFactor', 'zLoss', 'dModel', 'layers', 'heads'];
    expect(suggestKey('capacityfactor', known)).toBe('capacityFactor');
    expect(suggestKey('zloss', known)).toBe('zLoss');
    expect(suggestKey('ZLOSS', known)).toBe('zLoss');
    expect(suggestKey('layer', known)).toBe('layers');
    expect(suggestKey('capacityFacter', known)).toBe('capacityFactor');
    expect(suggestKey('dmodle', known)).toBe('dModel');  // 2 edits
    expect(suggestKey('colour', known)).toBeNull();
    expect(suggestKey('x', known)).toBeNull();  // too short to guess
  });

  test('Transformer: a typo at the top level names the key, the suggestion and every known key', () => {
    const err = errorOf(() => validateConfig({ ...TINY, zloss: 1e-4 } as unknown as TransformerConfig), 'ERR_ARG');
    expect(err.message).toBe(
      "Transformer config: unknown key 'zloss' (did you mean 'zLoss'?); known keys: vocabSize, dModel, layers, heads, ffn, modalities, norm, mod, ropeTheta, computeDtype, zLoss, initStd, seed, device",
    );
    expect(errorOf(() => new Transformer({ ...TINY, colour: 'red' } as unknown as TransformerConfig), 'ERR_ARG').message)
      .toMatch(/^Transformer config: unknown key 'colour'; known keys: vocabSize, /);
  });

  test('Transformer: typos in ffn, mod and the MoE groups name their place', () => {
    const ffnTypo = { ...MOE, ffn: { ...MOE.ffn, capacityfactor: 2 } } as unknown as TransformerConfig;
    expect(errorOf(() => validateConfig(ffnTypo), 'ERR_ARG').message)
      .toBe("Transformer config: unknown key 'ffn.capacityfactor' (did you mean 'ffn.capacityFactor'?); known keys: kind, dFF, groups, capacityFactor, router, gumbel, routing, topK");
    const modTypo = { ...MOE, mod: { interval: 2, capacty: 0.5 } } as unknown as TransformerConfig;
    expect(errorOf(() => validateConfig(modTypo), 'ERR_ARG').message)
      .toBe("Transformer config: unknown key 'mod.capacty' (did you mean 'mod.capacity'?); known keys: interval, capacity");
    const groupTypo = { ...MOE, ffn: { ...MOE.ffn, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', expert: 2 }] } } as unknown as TransformerConfig;
    expect(errorOf(() => validateConfig(groupTypo), 'ERR_ARG').message)
      .toBe("Transformer config: unknown key 'ffn.groups[1].expert' (did you mean 'ffn.groups[1].experts'?); known keys: modality, experts");
    expect(errorOf(() => validateConfig({ ...MOE, mod: 3 } as unknown as TransformerConfig), 'ERR_ARG').message).toMatch(/mod must be an object/);
  });

  test('keys whose value is undefined are as good as absent; a key that is not a plain name is described, not quoted', () => {
    expect(() => validateConfig({ ...TINY, seed: undefined, device: undefined })).not.toThrow();
    expect(() => validateConfig({ ...TINY, typo: undefined } as unknown as TransformerConfig)).not.toThrow();
    const long = 'x'.repeat(500);
    const message = errorOf(() => validateConfig({ ...TINY, [long]: 1 } as unknown as TransformerConfig), 'ERR_ARG').message;
    expect(message).toMatch(/^Transformer config: unknown key a key of 500 characters in the config; known keys: /);
    expect(message).not.toContain('xxxxxxxxxx');
    expect(errorOf(() => rejectUnknownKeys({ 'a\u001b[31m': 1 }, ['a'], 'where', 'ffn.'), 'ERR_ARG').message)
      .toBe('where: unknown key a key of 6 characters in ffn; known keys: a');
  });

  test('MoMaFFN: unknown keys in the config and in the groups', () => {
    const base = { dModel: 8, dFF: 8, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 1 }], device: 'cpu' as const };
    expect(errorOf(() => new MoMaFFN({ ...base, capacityfactor: 2 } as never), 'ERR_ARG').message)
      .toBe("MoMaFFN config: unknown key 'capacityfactor' (did you mean 'capacityFactor'?); known keys: dModel, dFF, groups, modalities, capacityFactor, router, gumbel, routing, topK, device, dtype, seed, initStd");
    expect(errorOf(() => new MoMaFFN({ ...base, groups: [{ modality: 'text', experts: 2, router: 'softmax' }] } as never), 'ERR_ARG').message)
      .toBe("MoMaFFN config: unknown key 'groups[0].router'; known keys: modality, experts");
    expect(errorOf(() => new MoMaFFN(null as never), 'ERR_ARG').message).toBe('MoMaFFN: config must be an object');
    const ok = new MoMaFFN({ ...base, capacityFactor: 1.5, topK: 1, seed: 3, initStd: 0.01, dtype: 'float32', gumbel: false, modalities: ['text', 'image'] });
    ok.dispose();
  });

  test('every preset and every resolved config (what config.json holds) passes, and so does a model\'s own config', () => {
    for (const name of listPresets()) {
      const config = preset(name);
      const resolved = validateConfig(config);
      expect(() => validateConfig(resolved)).not.toThrow();
      expect(() => validateConfig(JSON.parse(JSON.stringify(resolved)) as TransformerConfig)).not.toThrow();
    }
    const model = new Transformer(MOE);
    try {
      const again = new Transformer(JSON.parse(JSON.stringify(model.config)) as TransformerConfig);
      again.dispose();
    } finally {
      model.dispose();
    }
  });
});

describe('invalid UTF-8 in docs.jsonl', () => {
  test('decodeDocumentLine: valid text decodes; invalid bytes name file:line and the byte', () => {
    expect(decodeDocumentLine(Buffer.from('{"text":"héllo ✓ 😀"}'), 'd.jsonl:1')).toBe('{"text":"héllo ✓ 😀"}');
    const cases: [string, number[], RegExp][] = [
      ['stray continuation', [0x7b, 0x80, 0x7d], /^d\.jsonl:7: not valid UTF-8 \(byte 0x80 at byte 2 of the line\)/],
      ['0xff', [0x41, 0x42, 0xff], /byte 0xff at byte 3 of the line/],
      ['overlong', [0x41, 0xc0, 0xaf], /byte 0xc0 at byte 2/],
      ['truncated', [0x41, 0xe2, 0x9c], /byte 0xe2 at byte 2/],
      ['surrogate', [0xed, 0xa0, 0x80], /byte 0xed at byte 1/],
      ['above U+10FFFF', [0xf4, 0x90, 0x80, 0x80], /byte 0xf4 at byte 1/],
    ];
    for (const [, bytes, message] of cases) {
      const err = errorOf(() => decodeDocumentLine(Uint8Array.from(bytes), 'd.jsonl:7'), 'ERR_FILE');
      expect(err.message).toMatch(message);
    }
  });

  test('packShardSet stops at the line with invalid UTF-8 (CRLF files too), and nothing is left behind', async () => {
    const file = path.join(tmp, 'docs.jsonl');
    fs.writeFileSync(file, Buffer.concat([
      Buffer.from('{"text":"one"}\r\n[{"text":"tw'), Buffer.from([0xc3, 0x28]), Buffer.from('o"}]\r\n{"text":"three"}\n'),
    ]));
    const out = path.join(tmp, 'packed-bad');
    const err = await rejection(packShardSet({ inputs: [file], out }), 'ERR_FILE');
    expect(err.message).toBe(`${file}:2: not valid UTF-8 (byte 0xc3 at byte 13 of the line); documents must be UTF-8 text`);
    expect(fs.existsSync(out)).toBe(false);
    // the same documents in valid UTF-8 (and CRLF line ends) pack
    fs.writeFileSync(file, '{"text":"one"}\r\n[{"text":"twö"}]\r\n{"text":"three"}');
    const report = await packShardSet({ inputs: [file], out: path.join(tmp, 'packed-good'), evalDocuments: 0 });
    expect(report.documents).toBe(3);
  });

  test('JSON errors and bad segments describe the line without quoting it', () => {
    const secret = 'SECRET'.repeat(20);
    const notJson = errorOf(() => parseDocumentLine(`${secret} is not json`, 'd.jsonl:3'), 'ERR_FILE').message;
    expect(notJson).toMatch(/^d\.jsonl:3: not valid JSON \(/);
    expect(notJson).not.toContain('SECRET');
    const long = errorOf(() => parseDocumentLine(JSON.stringify({ text: 5, image: secret }), 'd.jsonl:4'), 'ERR_FILE').message;
    expect(long).toBe('d.jsonl:4: segment 0 must have exactly one of "text" or "image", got 2 keys');
    expect(errorOf(() => parseDocumentLine(JSON.stringify([{ image: 7 }]), 'd.jsonl:5'), 'ERR_FILE').message)
      .toBe('d.jsonl:5: segment 0: "image" must be a non-empty path, got 7');
    expect(errorOf(() => parseDocumentLine(JSON.stringify([{ [secret]: 'x' }]), 'd.jsonl:6'), 'ERR_FILE').message)
      .toBe('d.jsonl:6: segment 0 has unknown key a key of 120 characters (a segment is {"text": string} or {"image": path})');
  });
});

describe('image codebook bounded by the training patches', () => {
  const image = (value: number): Uint8Array => new Uint8Array(8 * 8 * 3).fill(value);

  test('train: more codes than patches is ERR_ARG saying how many patches there are', () => {
    // 2 images × (8/4)² = 8 patches
    const err = errorOf(() => ImageTokenizer.train([image(1), image(200)], { imageSize: 8, patchSize: 4, codebookSize: 9 }), 'ERR_ARG');
    expect(err.message).toBe('ImageTokenizer.train: codebookSize 9 is more than the 8 training patches there are (2 images × 4 patches of 4×4); every code needs a patch: use a codebook size of at most 8, or train on more images');
    const sampled = errorOf(() => ImageTokenizer.train([image(1), image(200)], { imageSize: 8, patchSize: 4, codebookSize: 6, maxPatches: 5 }), 'ERR_ARG');
    expect(sampled.message).toMatch(/codebookSize 6 is more than the 5 training patches there are \(2 images × 4 patches of 4×4, sampled down to maxPatches 5\)/);
    const exact = ImageTokenizer.train([image(1), image(200)], { imageSize: 8, patchSize: 4, codebookSize: 8, iterations: 2 });
    expect(exact.tokenizer.codebookSize).toBe(8);
    expect(exact.stats.patches).toBe(8);
  });

  test('trainFromFolder refuses before decoding any image', async () => {
    const folder = path.join(tmp, 'images');
    fs.mkdirSync(folder);
    for (const name of ['a.png', 'b.png']) fs.writeFileSync(path.join(folder, name), 'not a png');  // never decoded
    const err = await rejection(ImageTokenizer.trainFromFolder(folder, { imageSize: 32, patchSize: 4, codebookSize: 1 << 20 }), 'ERR_ARG');
    expect(err.message).toMatch(/^ImageTokenizer\.trainFromFolder: codebookSize 1048576 is more than the 128 training patches there are \(2 images × 64 patches of 4×4\)/);
  });
});

describe('tensor() of data that is not numbers', () => {
  const cases: [string, unknown, string][] = [
    ['a string', ['a'], 'got a string at [0]'],
    ['a nested string', [[1, 2], [3, 'x']], 'got a string at [1][1]'],
    ['null', [1, null], 'got null at [1]'],
    ['undefined', [[1], [undefined]], 'got undefined at [1][0]'],
    ['a hole', [1, , 3], 'got undefined at [1]'], // eslint-disable-line no-sparse-arrays
    ['an object', [{ value: 1 }], 'got an object at [0]'],
    ['a bigint', [1n], 'got a bigint at [0]'],
    ['a string for a row', [[1, 2], 'ab'], 'got a string at [1]'],
    ['a top-level string', 'abc', 'got a string'],
    ['a top-level null', null, 'got null'],
  ];
  test.each(cases)('%s: ERR_ARG with the path of the first bad element', (_name, data, got) => {
    const err = errorOf(() => tensor(data as never), 'ERR_ARG');
    expect(err.message).toBe(`tensor: data must be numbers, booleans, a typed array or nested arrays of numbers; ${got}`);
  });

  test('numbers (NaN and ±Infinity included) and booleans are data; ragged arrays stay ERR_SHAPE', async () => {
    const t = tensor([[NaN, 1], [true, -Infinity]] as never);
    expect(Array.from(await t.toArray())).toEqual([NaN, 1, 1, -Infinity]);
    t.dispose();
    expect(errorOf(() => tensor([[1, 2], 3] as never), 'ERR_SHAPE').message).toMatch(/ragged data at data\[1\]/);
    expect(errorOf(() => tensor([1, [2]] as never), 'ERR_SHAPE').message).toMatch(/expected a number at data\[1\], found an array/);
  });
});

describe('a checkpoint trained on a CUDA device, opened where none is visible', () => {
  let dir: string;
  let source: CheckpointSource;
  const env = process.env.MOMA_DEVICE;

  beforeAll(async () => {
    process.env.MOMA_DEVICE = 'cpu';  // no CUDA device is visible, on any machine
    dir = path.join(tmp, 'cuda-checkpoint');
    const model = new Transformer(TINY);
    await saveCheckpoint(dir, { config: { ...model.config, device: 'cuda:0' }, model, state: { step: 3, optimizerStep: 3 } });
    model.dispose();
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as TransformerConfig;
    expect(config.device).toBe('cuda:0');
    source = { dir, runDir: null, run: null, config, layout: buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, null), step: 3 };
  });
  afterAll(() => {
    if (env === undefined) delete process.env.MOMA_DEVICE;
    else process.env.MOMA_DEVICE = env;
  });

  test('no device asked for: ERR_DEVICE naming the device it was trained on and how to load it on the CPU', () => {
    const err = errorOf(() => loadModel(source, undefined, 'generate'), 'ERR_DEVICE');
    expect(err.message).toBe(`generate: the checkpoint ${dir} was trained on cuda:0, but no CUDA device is visible here (MOMA_DEVICE=cpu); pass --device cpu (in TypeScript: device: 'cpu') to load it on the CPU`);
    errorOf(() => checkpointDevice({ device: 'cuda:3' }, undefined, dir, 'eval'), 'ERR_DEVICE');
  });

  test("device 'cpu' loads it on the CPU with the saved weights", async () => {
    const model = loadModel(source, 'cpu');
    try {
      expect(model.config.device).toBe('cpu');
      const fresh = new Transformer(TINY);
      const [name, saved] = [...model.namedParameters()][0]!;
      expect(Array.from(await saved.toArray())).toEqual(Array.from(await fresh.namedParameters().get(name)!.toArray()));
      fresh.dispose();
    } finally {
      model.dispose();
    }
  });

  test('a CPU checkpoint needs no --device; a config.json device that is not a device name is ERR_FILE, not quoted', () => {
    expect(checkpointDevice({ device: 'cpu' }, undefined, dir, 'eval')).toBe('cpu');
    expect(checkpointDevice({}, undefined, dir, 'eval')).toBe('cpu');
    const err = errorOf(() => checkpointDevice({ device: '../../'.repeat(20) }, undefined, dir, 'eval'), 'ERR_FILE');
    expect(err.message).toBe(`eval: ${path.join(dir, 'config.json')}: device is a string of 120 characters, not a device name ('cpu' or 'cuda:N')`);
  });
});

describe('error messages never quote file content', () => {
  test('describeValue: type and size, short plain words and numbers as they are', () => {
    expect(describeValue('x'.repeat(812))).toBe('a string of 812 characters');
    expect(describeValue('../../etc/passwd')).toBe('a string of 16 characters');
    expect(describeValue('a\u001b[2Jb')).toBe('a string of 6 characters');
    expect(describeValue('')).toBe('an empty string');
    expect(describeValue('moma-vocab')).toBe("'moma-vocab'");
    expect(describeValue('cuda:0')).toBe("'cuda:0'");
    expect(describeValue(42)).toBe('42');
    expect(describeValue(-1.5)).toBe('-1.5');
    expect(describeValue(true)).toBe('true');
    expect(describeValue(null)).toBe('null');
    expect(describeValue(undefined)).toBe('undefined');
    expect(describeValue([1, 2, 3])).toBe('an array of 3 elements');
    expect(describeValue([1])).toBe('an array of 1 element');
    expect(describeValue({ a: 1, b: 2 })).toBe('an object with 2 keys');
    expect(describeKey('capacityFactor')).toBe("'capacityFactor'");
    expect(describeKey('a b')).toBe('a key of 3 characters');
  });

  test('vocab.json: a bad format, hash or value is described', () => {
    const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, null);
    const secret = 'SECRET-'.repeat(100);
    const format = errorOf(() => parseVocabLayout({ ...layout, format: secret }, 'v.json'), 'ERR_FILE').message;
    expect(format).toBe("v.json: vocabulary key 'format' must be \"moma-vocab\", got a string of 700 characters");
    const hash = errorOf(() => parseVocabLayout({ ...layout, hash: secret }, 'v.json'), 'ERR_FILE').message;
    expect(hash).toMatch(/^v\.json: vocabulary key 'hash' does not match the contents \(stored a string of 700 characters, computed [0-9a-f]{64}\)/);
    const padded = { ...layout, padId: 7 } as Record<string, unknown>;
    const value = errorOf(() => parseVocabLayout({ ...padded, hash: vocabHash(padded as never) }, 'v.json'), 'ERR_FILE').message;
    expect(value).toBe("v.json: vocabulary key 'padId' is 7, but the tokenizers give 0");
    const extra = { ...layout, [secret]: 1 } as Record<string, unknown>;
    const key = errorOf(() => parseVocabLayout({ ...extra, hash: vocabHash(extra as never) }, 'v.json'), 'ERR_FILE').message;
    expect(key).toBe('v.json: vocabulary key a key of 700 characters is not a vocabulary key');
    for (const message of [format, hash, value, key]) expect(message).not.toContain('SECRET');
  });

  test('index.json: bad values and unknown keys are described', () => {
    const secret = '<script>'.repeat(20);
    const index = (entry: Record<string, unknown>): unknown => ({ format: 'moma-shards', version: 1, vocabHash: 'a'.repeat(64), splits: { train: [entry] } });
    const good = { file: 'train-00000.bin', documents: 1, tokens: 4, imageTokens: 0 };
    expect(() => parseShardSetIndex(index(good), 'i.json')).not.toThrow();
    const messages = [
      errorOf(() => parseShardSetIndex(index({ ...good, file: `../${secret}` }), 'i.json'), 'ERR_FILE').message,
      errorOf(() => parseShardSetIndex(index({ ...good, tokens: secret }), 'i.json'), 'ERR_FILE').message,
      errorOf(() => parseShardSetIndex(index({ ...good, [secret]: 1 }), 'i.json'), 'ERR_FILE').message,
      errorOf(() => parseShardSetIndex({ format: secret }, 'i.json'), 'ERR_FILE').message,
    ];
    expect(messages[0]).toBe("i.json: key 'splits.train[0].file' must be a file name inside the folder, got a string of 163 characters");
    expect(messages[1]).toBe("i.json: key 'splits.train[0].tokens' must be an integer >= 0, got a string of 160 characters");
    expect(messages[2]).toBe("i.json: a key of 160 characters in 'splits.train[0]' is unknown (allowed: file, documents, tokens, imageTokens, sha256)");
    expect(messages[3]).toMatch(/^i\.json: key 'format' must be "moma-shards", got a string of 160 characters$/);
    for (const message of messages) expect(message).not.toContain('<script>');
  });

  test('safetensors: tensor names and dtypes from the header are described', () => {
    const good = encodeSafetensors(new Map([['w', { dtype: 'F32', shape: [1], data: Float32Array.of(1) }]]));
    const n = Number(good.readBigUInt64LE(0));
    const withHeader = (header: unknown): Buffer => {
      const json = Buffer.from(JSON.stringify(header));
      const length = Buffer.alloc(8);
      length.writeBigUInt64LE(BigInt(json.length));
      return Buffer.concat([length, json, good.subarray(8 + n)]);
    };
    const secret = '\u001b]0;pwned\u0007'.repeat(10);
    const name = errorOf(() => decodeSafetensors(withHeader({ [secret]: { dtype: 'F32', shape: [1], data_offsets: [0, 8] } }), 'f.safetensors'), 'ERR_FILE').message;
    expect(name).toBe('safetensors f.safetensors: tensor a key of 100 characters has data offsets [0, 8] that do not fit its shape or the file');
    const dtype = errorOf(() => decodeSafetensors(withHeader({ w: { dtype: secret, shape: [1], data_offsets: [0, 4] } }), 'f.safetensors'), 'ERR_FILE').message;
    expect(dtype).toBe("safetensors f.safetensors: tensor 'w' has unsupported dtype a string of 100 characters");
    const proto = errorOf(() => decodeSafetensors(withHeader({ w: { dtype: 'toString', shape: [1], data_offsets: [0, 4] } }), 'f.safetensors'), 'ERR_FILE').message;
    expect(proto).toBe("safetensors f.safetensors: tensor 'w' has unsupported dtype 'toString'");
    for (const message of [name, dtype]) expect(message).not.toContain('pwned');
  });

  test('readJson: not JSON or not UTF-8 says where, never what', () => {
    const file = path.join(tmp, 'bad.json');
    fs.writeFileSync(file, 'TOPSECRET-TOKEN-1234 and more');
    const err = errorOf(() => readJson(file, 'checkpoint'), 'ERR_FILE');
    expect(err.message).toMatch(new RegExp(`^checkpoint: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not valid JSON \\(`));
    expect(err.message).not.toContain('TOPSECRET');
    fs.writeFileSync(file, '{\n  "a": 1,\n  "b": }');
    expect(errorOf(() => readJson(file, 'op'), 'ERR_FILE').message).toBe(`op: ${file}: not valid JSON (a syntax error at line 3, column 8)`);
    fs.writeFileSync(file, '{"a": ');
    expect(errorOf(() => readJson(file, 'op', 'ERR_ARG'), 'ERR_ARG').message).toBe(`op: ${file}: not valid JSON (it ends early)`);
    fs.writeFileSync(file, Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]));
    expect(errorOf(() => readJson(file, 'op'), 'ERR_FILE').message).toBe(`op: ${file}: not valid JSON (not UTF-8 text)`);
    fs.writeFileSync(file, '\ufeff{"a": 1}');  // a byte-order mark is not content
    expect(readJson(file, 'op')).toEqual({ a: 1 });
    expect(jsonSyntaxProblem(new Error('Unexpected token \'h\', "hello" is not valid JSON'), 'hello')).toBe('a syntax error at line 1, column 1');
    expect(jsonSyntaxProblem(new Error('Unexpected non-whitespace character after JSON'), '[1]\n\n  x')).toBe('a syntax error at line 3, column 3');
  });
});
