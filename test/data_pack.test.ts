// `packShardSet` / `moma data pack` and `moma data inspect` end to end: real PNG files, an image
// tokenizer trained on their pixels, JSON Lines with text and images in both orders; the packed
// set decodes back to the exact texts and to the tokenizer's own codes for every image; the
// eval choice and the shard bytes are deterministic in the seed; bad inputs name file:line.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { MomaError, MomaErrorCode } from '../lib/errors';
import { DataInspectReport, registerDataCommands } from '../lib/cli/data';
import { runInProcess } from './support/in_process_cli';
import { splitDocument } from '../lib/data/document';
import { ImageTokenizer } from '../lib/data/image_tokenizer';
import { defaultEvalDocuments, packShardSet, PackOptions, PackProgress, parseDocumentLine } from '../lib/data/pack';
import { openShardSet, ShardSet } from '../lib/data/shard_set';
import { ByteTokenizer, loadTextTokenizer } from '../lib/data/text_tokenizer';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-pack-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const IMAGES = ['red', 'blue', 'stripes', 'checks', 'dots'] as const;
const codebookFile = path.join(tmp, 'codebook.safetensors');
let tokenizer: ImageTokenizer;

/** 16×16 RGB test pictures, each different. */
function pixels(name: (typeof IMAGES)[number]): Buffer {
  const rgb = Buffer.alloc(16 * 16 * 3);
  for (let y = 0; y < 16; y++) for (let x = 0; x < 16; x++) {
    const at = (y * 16 + x) * 3;
    const on = name === 'stripes' ? x % 4 < 2 : name === 'checks' ? ((x >> 2) + (y >> 2)) % 2 === 0 : name === 'dots' ? x % 5 === 0 && y % 5 === 0 : true;
    const colour = name === 'red' ? [230, 20, 20] : name === 'blue' ? [20, 40, 230] : on ? [250, 250, 250] : [10, 90, 10];
    rgb.set(colour, at);
  }
  return rgb;
}

/** Documents of the main input: texts and images (paths relative to its folder) in both orders. */
const MAIN_DOCS = [
  [{ text: 'a red square' }, { image: 'img/red.png' }],
  [{ image: 'img/blue.png' }, { text: 'above: a blue square' }],
  { text: 'just text, ünïcode ✓ and "quotes"' },
  [{ text: 'two: ' }, { image: 'img/stripes.png' }, { text: ' and ' }, { image: 'img/checks.png' }],
  [{ image: 'img/dots.png' }],
  [{ text: '' }, { text: 'empty text first' }],
  ...Array.from({ length: 8 }, (_, i) => [{ text: `filler document ${i}` }, ...(i % 2 ? [{ image: `img/${IMAGES[i % 5]}.png` }] : [])]),
];
const mainFile = path.join(tmp, 'main.jsonl');
const otherFile = path.join(tmp, 'sub', 'other.jsonl');
const OTHER_DOCS = [[{ text: 'from another folder ' }, { image: '../img/red.png' }], [{ text: 'last' }]];
const textOnly = path.join(tmp, 'text.jsonl');

beforeAll(async () => {
  fs.mkdirSync(path.join(tmp, 'img'));
  fs.mkdirSync(path.join(tmp, 'sub'));
  for (const name of IMAGES) await sharp(pixels(name), { raw: { width: 16, height: 16, channels: 3 } }).png().toFile(path.join(tmp, 'img', `${name}.png`));
  const rgb = await Promise.all(IMAGES.map((name) => ImageTokenizer.loadImage(path.join(tmp, 'img', `${name}.png`), 8)));
  tokenizer = ImageTokenizer.train(rgb, { imageSize: 8, patchSize: 4, codebookSize: 6, iterations: 5, seed: 0 }).tokenizer;
  await tokenizer.save(codebookFile);
  // a blank line and CRLF line ends must not matter
  fs.writeFileSync(mainFile, `${MAIN_DOCS.slice(0, 3).map((d) => JSON.stringify(d)).join('\r\n')}\n\n${MAIN_DOCS.slice(3).map((d) => JSON.stringify(d)).join('\n')}\n`);
  fs.writeFileSync(otherFile, OTHER_DOCS.map((d) => JSON.stringify(d)).join('\n'));
  fs.writeFileSync(textOnly, ['{"text":"one"}', '{"text":"two"}', '[{"text":"three"}]'].join('\n'));
});

let outCounter = 0;
const freshOut = (): string => path.join(tmp, 'out', `set-${outCounter++}`);

/** Decodes a packed document into input-style segments (text exact, image as its codes). */
function decode(set: ShardSet, ids: ArrayLike<number>): ({ text: string } | { codes: number[] })[] {
  const text = new ByteTokenizer();
  return splitDocument(set.layout, ids).map((s) => ('text' in s ? { text: text.decode(s.text) } : { codes: s.codes }));
}

/** What a document should decode to: empty texts vanish, adjacent texts merge, images are their codes. */
async function expected(doc: unknown, folder: string): Promise<({ text: string } | { codes: number[] })[]> {
  const out: ({ text: string } | { codes: number[] })[] = [];
  for (const s of (Array.isArray(doc) ? doc : [doc]) as ({ text: string } | { image: string })[]) {
    if ('image' in s) out.push({ codes: Array.from(await tokenizer.encodeFile(path.join(folder, s.image))) });
    else if (s.text !== '') {
      const last = out[out.length - 1];
      if (last !== undefined && 'text' in last) last.text += s.text;
      else out.push({ text: s.text });
    }
  }
  return out;
}

function documents(set: ShardSet, split: 'train' | 'eval'): ArrayLike<number>[] {
  return Array.from({ length: set.summary(split).documents }, (_, i) => set.document(split, i));
}

async function rejects(promise: Promise<unknown>, code: MomaErrorCode, message: RegExp): Promise<void> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(MomaError);
  expect((caught as MomaError).code).toBe(code);
  expect((caught as MomaError).message).toMatch(message);
}

describe('packShardSet', () => {
  test('packs, and the set decodes back to the exact texts and the tokenizer\'s own image codes', async () => {
    const out = freshOut();
    const progress: PackProgress[] = [];
    const report = await packShardSet({ inputs: [mainFile, otherFile], out, imageTokenizer: codebookFile, evalDocuments: 3, shardTokens: 40, seed: 3, onProgress: (p) => progress.push(p) });
    const total = MAIN_DOCS.length + OTHER_DOCS.length;
    const imageCount = 10;
    expect([report.documents, report.images]).toEqual([total, imageCount]);
    expect([report.splits.train.documents, report.splits.eval.documents]).toEqual([total - 3, 3]);
    expect(report.splits.train.shards).toBeGreaterThan(2);
    expect(report.splits.train.imageTokens + report.splits.eval.imageTokens).toBe(imageCount * 4);
    expect(progress.filter((p) => p.phase === 'scan').map((p) => p.documents)).toEqual([MAIN_DOCS.length, total]);
    const encoded = progress.filter((p): p is Extract<PackProgress, { phase: 'encode' }> => p.phase === 'encode');
    expect(encoded.map((p) => p.documents)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(encoded[encoded.length - 1]).toMatchObject({ total, images: imageCount, tokens: report.splits.train.tokens + report.splits.eval.tokens });
    expect(fs.readdirSync(path.dirname(out)).filter((f) => f.includes('partial'))).toEqual([]);

    const set = openShardSet(out, { verify: true });
    try {
      expect(set.layout.image!.tokenizer).toEqual(tokenizer.info('image_tokenizer.safetensors'));
      expect(set.files['image_tokenizer.safetensors']).toEqual(fs.readFileSync(codebookFile));
      expect(set.layout.size).toBe(5 + 256 + 6);
      for (const split of ['train', 'eval'] as const) for (const e of set.index.splits[split]) expect(e.tokens <= 40 || e.documents === 1).toBe(true);
      const wanted = [...await Promise.all(MAIN_DOCS.map((d) => expected(d, tmp))), ...await Promise.all(OTHER_DOCS.map((d) => expected(d, path.join(tmp, 'sub'))))];
      const keys = wanted.map((w) => JSON.stringify(w));
      const positions = (split: 'train' | 'eval'): number[] => documents(set, split).map((ids) => keys.indexOf(JSON.stringify(decode(set, ids))));
      const train = positions('train');
      const evalDocs = positions('eval');
      // each split keeps input order, and together they hold every document once
      expect(train).toEqual([...train].sort((a, b) => a - b));
      expect(evalDocs).toEqual([...evalDocs].sort((a, b) => a - b));
      expect([...train, ...evalDocs].sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i));
      // BOS … EOS around every document
      for (const ids of documents(set, 'train')) expect([ids[0], ids[ids.length - 1]]).toEqual([set.layout.bosId, set.layout.eosId]);
    } finally {
      set.close();
    }
  });

  test('deterministic: the same seed gives the same bytes, another seed another eval choice', async () => {
    const options: PackOptions = { inputs: [mainFile], out: '', imageTokenizer: codebookFile, evalDocuments: 4, seed: 1, concurrency: 1 };
    const a = await packShardSet({ ...options, out: freshOut() });
    const b = await packShardSet({ ...options, out: freshOut(), concurrency: 3 });
    const c = await packShardSet({ ...options, out: freshOut(), seed: 2 });
    expect(b.shards).toEqual(a.shards);
    expect(c.shards.eval[0]!.sha256).not.toBe(a.shards.eval[0]!.sha256);
    expect(fs.readFileSync(path.join(b.out, 'index.json'))).toEqual(fs.readFileSync(path.join(a.out, 'index.json')));
  });

  test('default eval size, no eval split, text only without an image tokenizer', async () => {
    expect([0, 1, 2, 149, 150, 1000, 99_999, 10_000_000].map(defaultEvalDocuments)).toEqual([0, 0, 1, 1, 2, 10, 1000, 1000]);
    const r = await packShardSet({ inputs: [textOnly], out: freshOut(), evalDocuments: 0 });
    expect([r.splits.train.documents, r.splits.eval.documents, r.splits.eval.shards, r.layout.image]).toEqual([3, 0, 0, null]);
    const set = openShardSet(r.out);
    expect(set.store('eval', 0)).toBeNull();
    expect(documents(set, 'train').map((ids) => decode(set, ids))).toEqual([[{ text: 'one' }], [{ text: 'two' }], [{ text: 'three' }]]);
    set.close();
    const d = await packShardSet({ inputs: [textOnly], out: freshOut() });
    expect(d.splits.eval.documents).toBe(1);
  });

  test('a Hugging Face tokenizer.json is copied into the set and decodes the text', async () => {
    const tokFile = path.join(tmp, 'words.json');
    fs.writeFileSync(tokFile, JSON.stringify({
      version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null,
      model: { type: 'WordLevel', vocab: { '[UNK]': 0, a: 1, cat: 2, dog: 3, the: 4 }, unk_token: '[UNK]' },
    }));
    const input = path.join(tmp, 'words.jsonl');
    fs.writeFileSync(input, '{"text":"the cat"}\n[{"text":"a dog"},{"image":"img/red.png"}]\n');
    const r = await packShardSet({ inputs: [input], out: freshOut(), textTokenizer: tokFile, imageTokenizer: codebookFile, evalDocuments: 0 });
    expect(r.layout.text.tokenizer).toMatchObject({ kind: 'hf', file: 'tokenizer.json' });
    expect(r.layout.text.size).toBe(5);
    expect(fs.readFileSync(path.join(r.out, 'tokenizer.json'))).toEqual(fs.readFileSync(tokFile));
    const set = openShardSet(r.out);
    const text = loadTextTokenizer(set.layout.text.tokenizer, r.out);
    const [first, second] = documents(set, 'train').map((ids) => splitDocument(set.layout, ids));
    expect(first).toEqual([{ text: [4, 2] }]);
    expect(text.decode((second![0] as { text: number[] }).text)).toBe('a dog');
    expect((second![1] as { codes: number[] }).codes).toEqual(Array.from(await tokenizer.encodeFile(path.join(tmp, 'img/red.png'))));
    set.close();
  });

  test('bad inputs name file:line (and the image); nothing is left behind', async () => {
    const write = (name: string, lines: string[]): string => {
      const file = path.join(tmp, name);
      fs.writeFileSync(file, lines.join('\n'));
      return file;
    };
    const ok = '{"text":"fine"}';
    const cases: [string, string[], MomaErrorCode, RegExp, string | null][] = [
      ['badjson.jsonl', [ok, ok, '{"text": "unterminated'], 'ERR_FILE', /badjson\.jsonl:3: not valid JSON/, codebookFile],
      ['unknown.jsonl', [ok, '[{"text":"x"},{"caption":"y"}]'], 'ERR_FILE', /unknown\.jsonl:2: segment 1 has unknown key 'caption'/, codebookFile],
      ['both.jsonl', ['{"text":"x","image":"img/red.png"}'], 'ERR_FILE', /both\.jsonl:1: segment 0 must have exactly one of "text" or "image"/, codebookFile],
      ['types.jsonl', [ok, ok, ok, '[{"text":5}]'], 'ERR_FILE', /types\.jsonl:4: segment 0: "text" must be a string/, codebookFile],
      ['nonobject.jsonl', ['[1]'], 'ERR_FILE', /nonobject\.jsonl:1: segment 0 must be an object/, codebookFile],
      ['empty.jsonl', ['[]'], 'ERR_FILE', /empty\.jsonl:1: the document has no segments/, codebookFile],
      ['missing.jsonl', [ok, '[{"image":"img/none.png"}]'], 'ERR_FILE', /missing\.jsonl:2: image "img\/none\.png" \(.*img\/none\.png\) cannot be read/, codebookFile],
      ['notoken.jsonl', [ok, '[{"text":"x"},{"image":"img/red.png"}]'], 'ERR_ARG', /notoken\.jsonl:2: the document has an image \(img\/red\.png\) but no --image-tokenizer/, null],
      ['blank.jsonl', ['', '  '], 'ERR_ARG', /hold no documents/, null],
    ];
    for (const [name, lines, code, message, imageTokenizer] of cases) {
      const out = freshOut();
      await rejects(packShardSet({ inputs: [write(name, lines)], out, imageTokenizer }), code, message);
      expect(fs.existsSync(out)).toBe(false);
    }
    // an image that exists but is not an image: found while encoding, still file:line and path
    fs.writeFileSync(path.join(tmp, 'img', 'fake.png'), 'not a png');
    const out = freshOut();
    await rejects(packShardSet({ inputs: [write('fake.jsonl', [ok, ok, '[{"image":"img/fake.png"}]', ok])], out, imageTokenizer: codebookFile }), 'ERR_FILE', /fake\.jsonl:3: image "img\/fake\.png" \(.*fake\.png\)/);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(path.join(tmp, 'out')).filter((f) => f.includes('partial'))).toEqual([]);
    await rejects(packShardSet({ inputs: [path.join(tmp, 'absent.jsonl')], out }), 'ERR_FILE', /absent\.jsonl is not a readable file/);
    await rejects(packShardSet({ inputs: [mainFile], out, imageTokenizer: codebookFile, evalDocuments: 99 }), 'ERR_ARG', /evalDocuments 99 leaves no training documents/);
    await rejects(packShardSet({ inputs: [], out }), 'ERR_ARG', /inputs must be a non-empty list/);
    await rejects(packShardSet({ inputs: [mainFile], out, shardTokens: 0 }), 'ERR_ARG', /shardTokens must be an integer >= 1/);
    await rejects(packShardSet({ inputs: [mainFile], out, imageTokenizer: path.join(tmp, 'nope.safetensors') }), 'ERR_FILE', /nope\.safetensors/);
  });

  test('an existing non-empty --out is refused unless forced, then replaced whole', async () => {
    const out = freshOut();
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, 'keep.txt'), 'x');
    await rejects(packShardSet({ inputs: [textOnly], out }), 'ERR_FILE', /is not empty \(pass --force/);
    expect(fs.readdirSync(out)).toEqual(['keep.txt']);
    await packShardSet({ inputs: [textOnly], out, force: true });
    expect(fs.readdirSync(out).sort()).toEqual(['eval-00000.bin', 'index.json', 'train-00000.bin', 'vocab.json']);
    fs.writeFileSync(path.join(tmp, 'out', 'a-file'), 'x');
    await rejects(packShardSet({ inputs: [textOnly], out: path.join(tmp, 'out', 'a-file'), force: true }), 'ERR_FILE', /is not a folder/);
  });

  test('parseDocumentLine: a single segment, blank lines, arrays', () => {
    expect(parseDocumentLine('{"image":"a.png"}', 'f:1')).toEqual([{ image: 'a.png' }]);
    expect(parseDocumentLine('   ', 'f:1')).toBeNull();
    expect(parseDocumentLine('[{"text":"a"},{"image":"b"}]', 'f:1')).toEqual([{ text: 'a' }, { image: 'b' }]);
    expect(() => parseDocumentLine('[{"image":""}]', 'f:9')).toThrow(/f:9: segment 0: "image" must be a non-empty path/);
  });
});

describe('moma data (CLI)', () => {
  const cli = (args: string[]): Promise<string> => runInProcess(registerDataCommands, args);

  test('data pack then data inspect --json, end to end', async () => {
    const out = freshOut();
    const packed = JSON.parse(await cli(['data', 'pack', mainFile, otherFile, '--out', out, '--image-tokenizer', codebookFile, '--eval-documents', '2', '--seed', '5', '--json']));
    expect(packed).toMatchObject({ out, documents: 16, images: 10, splits: { train: { documents: 14 }, eval: { documents: 2, shards: 1 } } });
    const report = JSON.parse(await cli(['data', 'inspect', out, '--json'])) as DataInspectReport;
    expect(report.splits.train).toEqual({ ...packed.splits.train, textTokens: packed.splits.train.tokens - packed.splits.train.imageTokens });
    expect(report.vocabulary).toMatchObject({ size: 267, dtype: 'uint16', specials: 5, text: { offset: 5, size: 256, tokenizer: { kind: 'bytes' } }, image: { offset: 261, size: 6, imageSize: 8, patchSize: 4, tokensPerImage: 4 } });
    const first = report.firstDocument!;
    expect(first.split).toBe('train');
    // seed 5 keeps the first input document in train
    expect(first.segments).toEqual([{ text: 'a red square' }, { image: 4 }]);
    expect(first.decoded).toBe('a red square <image: 4 codes>');
    expect(first.tokens).toBe(1 + 12 + 6 + 1);
    const text = await cli(['data', 'inspect', out]);
    expect(text).toMatch(/^shard set .*\nvocabulary: 5 specials \+ 256 text ids \(UTF-8 bytes\) \+ 6 image codes \(8×8 px, 4×4 patches, 4 codes per image\) = 267 ids, uint16/);
    expect(text).toMatch(/ train +\d+ shards?, 14 documents, [\d,]+ tokens \([\d,]+ text, [\d,]+ image\)/);
    expect(text).toContain('<image: 4 codes>');
  });

  test('bad option values and a refused --out are MomaErrors', async () => {
    await rejects(cli(['data', 'pack', mainFile, '--out', freshOut(), '--shard-tokens', 'lots']), 'ERR_ARG', /--shard-tokens must be an integer >= 1, got 'lots'/);
    await rejects(cli(['data', 'pack', mainFile, '--out', freshOut(), '--eval-documents', '-1']), 'ERR_ARG', /--eval-documents must be an integer >= 0/);
    await rejects(cli(['data', 'inspect', path.join(tmp, 'nothing')]), 'ERR_FILE', /nothing: cannot be opened/);
    const text = await cli(['data', 'pack', textOnly, '--out', freshOut()]);
    expect(text).toMatch(/^packed 3 documents \(0 images\) into .* in [\d.]+ s\n {2}train 1 shard, 2 documents/);
  });
});
