// Token shards (lib/data/shard.ts) and shard-set folders (lib/data/shard_set.ts): round trips for
// uint16 and uint32 vocabularies and awkward document lengths, the documented byte layout, and
// every kind of damage (truncation, flipped bytes in each region, wrong vocabulary, wrong magic,
// out-of-vocabulary ids) giving the documented MomaError codes with file names, never a crash.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { MomaError, MomaErrorCode } from '../lib/errors';
import { ShardReader, ShardWriter, shardFileBytes } from '../lib/data/shard';
import { SeededRandom, seededPermutation } from '../lib/data/seeded_random';
import { openShardSet, ShardSet } from '../lib/data/shard_set';
import { buildVocabLayout, ImageTokenizerInfo, VocabLayout } from '../lib/data/vocab';
import { throwsCode } from './support/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-shards-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const bytesLayout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 });
const bigLayout = buildVocabLayout({ tokenizer: { kind: 'hf', file: 'tokenizer.json', sha256: 'a'.repeat(64) }, size: 70000 });
const imageInfo: ImageTokenizerInfo = { kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: 'b'.repeat(64), imageSize: 8, patchSize: 2, codebookSize: 16, tokensPerImage: 16 };
const imageLayout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, imageInfo);

let fileCounter = 0;
const fresh = (name: string): string => path.join(tmp, `${fileCounter++}-${name}`);

/** Documents of the given lengths with random ids of the layout (seeded). */
function randomDocs(layout: VocabLayout, lengths: number[], seed: number): number[][] {
  const rng = new SeededRandom(seed);
  return lengths.map((n) => Array.from({ length: n }, () => rng.below(layout.size)));
}

function writeShard(file: string, layout: VocabLayout, docs: number[][]): ReturnType<ShardWriter['finish']> {
  const w = ShardWriter.create(file, layout);
  for (const d of docs) w.append(d);
  return w.finish();
}

/** The MomaError `fn` throws (fails the test when it throws something else or nothing). */
function errorOf(fn: () => unknown, code: MomaErrorCode): MomaError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(MomaError);
  expect((caught as MomaError).code).toBe(code);
  return caught as MomaError;
}

/** Opens a shard and reads every document (what a consumer of the file would do). */
function readAll(file: string, layout: VocabLayout): number[][] {
  const r = ShardReader.open(file, layout);
  try {
    return Array.from({ length: r.documents }, (_, d) => Array.from(r.read(d)));
  } finally {
    r.close();
  }
}

function imageCount(layout: VocabLayout, doc: number[]): number {
  return doc.filter((id) => layout.image !== null && id >= layout.image.offset).length;
}

describe('shard round trip', () => {
  test.each([
    ['uint16 (bytes vocabulary, 261 ids)', bytesLayout, 'uint16', 2],
    ['uint32 (70,005 ids)', bigLayout, 'uint32', 4],
  ] as const)('%s: awkward lengths, stats, lazy reads', (_name, layout, dtype, width) => {
    const lengths = [1, 2, 3, 7, 1, 64, 65, 1000, 1, 4097];
    const docs = randomDocs(layout, lengths, 11);
    if (layout === bigLayout) docs[2] = [65535, 65536, 70004];
    const file = fresh('a.bin');
    const stats = writeShard(file, layout, docs);
    const tokens = docs.reduce((n, d) => n + d.length, 0);
    expect(stats).toEqual({
      file, documents: docs.length, tokens, imageTokens: 0, bytes: shardFileBytes(docs.length, tokens, dtype),
      sha256: createHash('sha256').update(fs.readFileSync(file)).digest('hex'),
    });
    expect(fs.statSync(file).size).toBe(64 + tokens * width + 24 * docs.length + 16);
    const r = ShardReader.open(file, layout);
    expect([r.dtype, r.documents, r.tokens, r.imageTokens, r.bytes]).toEqual([dtype, docs.length, tokens, 0, stats.bytes]);
    // out of order, twice: reads are positioned, not sequential
    for (const d of [9, 0, 4, 2, 9, 7]) {
      const got = r.read(d);
      expect(got).toBeInstanceOf(dtype === 'uint16' ? Uint16Array : Uint32Array);
      expect(Array.from(got)).toEqual(docs[d]);
      expect(r.length(d)).toBe(docs[d]!.length);
    }
    r.close();
    throwsCode(() => r.read(0), 'ERR_DISPOSED');
  });

  test('the header and index follow the documented layout byte for byte', () => {
    const docs = [[1, 262, 276, 2], [1, 72, 2]];
    const file = fresh('layout.bin');
    writeShard(file, imageLayout, docs);
    const b = fs.readFileSync(file);
    expect(b.toString('latin1', 0, 8)).toBe('MOMASHRD');
    expect([b.readUInt32LE(8), b.readUInt32LE(12)]).toEqual([1, 1]);
    expect(b.subarray(16, 32).toString('hex')).toBe(imageLayout.hash.slice(0, 32));
    expect([b.readBigUInt64LE(32), b.readBigUInt64LE(40), b.readBigUInt64LE(48), b.readUInt32LE(56)]).toEqual([2n, 7n, 2n, 0]);
    expect(b.readUInt32LE(60)).toBe(zlib.crc32(b.subarray(0, 60)));
    expect(Array.from({ length: 7 }, (_, i) => b.readUInt16LE(64 + 2 * i))).toEqual([1, 262, 276, 2, 1, 72, 2]);
    const index = 64 + 14;
    expect([b.readBigUInt64LE(index), b.readUInt32LE(index + 8), b.readUInt32LE(index + 12), b.readUInt32LE(index + 16), b.readUInt32LE(index + 20)])
      .toEqual([0n, 4, 2, zlib.crc32(b.subarray(64, 72)), 0]);
    expect([b.readBigUInt64LE(index + 24), b.readUInt32LE(index + 32), b.readUInt32LE(index + 36)]).toEqual([4n, 3, 0]);
    const footer = index + 48;
    expect(b.readUInt32LE(footer)).toBe(zlib.crc32(b.subarray(index, footer)));
    expect(b.toString('latin1', footer + 4, footer + 12)).toBe('MOMAEND\0');
    expect([b.readUInt32LE(footer + 12), b.length]).toEqual([0, footer + 16]);
    const r = ShardReader.open(file, imageLayout);
    expect([r.imageTokens, r.imageCount(0), r.imageCount(1)]).toEqual([2, 2, 0]);
    r.close();
  });

  test('many documents across the write buffer, image counts per document, an empty shard', () => {
    const rng = new SeededRandom(5);
    const lengths = Array.from({ length: 3000 }, () => 1 + rng.below(400));
    const docs = randomDocs(imageLayout, lengths, 6);
    const file = fresh('many.bin');
    const stats = writeShard(file, imageLayout, docs);
    expect(stats.tokens * 2).toBeGreaterThan(1 << 20);
    expect(stats.imageTokens).toBe(docs.reduce((n, d) => n + imageCount(imageLayout, d), 0));
    const r = ShardReader.open(file, imageLayout);
    for (let d = 0; d < docs.length; d += 37) {
      expect(Array.from(r.read(d))).toEqual(docs[d]);
      expect(r.imageCount(d)).toBe(imageCount(imageLayout, docs[d]!));
    }
    r.close();
    const empty = fresh('empty.bin');
    expect(writeShard(empty, bytesLayout, []).bytes).toBe(80);
    const e = ShardReader.open(empty, bytesLayout);
    expect([e.documents, e.tokens]).toEqual([0, 0]);
    throwsCode(() => e.read(0), 'ERR_RANGE');
    e.close();
  });

  test('the writer is atomic and validates every id', () => {
    const file = fresh('atomic.bin');
    const w = ShardWriter.create(file, bytesLayout);
    w.append([1, 2]);
    expect(fs.existsSync(file)).toBe(false);
    expect(errorOf(() => w.append([]), 'ERR_ARG').message).toMatch(/atomic\.bin: document 1 is empty/);
    expect(errorOf(() => w.append([1, 261]), 'ERR_RANGE').message).toMatch(/atomic\.bin: document 1 id 261 at position 1 is outside the vocabulary \[0, 261\)/);
    throwsCode(() => w.append([1, -1]), 'ERR_RANGE');
    throwsCode(() => w.append([1.5]), 'ERR_RANGE');
    throwsCode(() => w.append(null as unknown as number[]), 'ERR_ARG');
    expect([w.documents, w.tokens]).toEqual([1, 2]);
    w.abort();
    expect(fs.readdirSync(path.dirname(file)).filter((f) => f.includes('atomic'))).toEqual([]);
    throwsCode(() => w.append([1]), 'ERR_DISPOSED');
    throwsCode(() => w.finish(), 'ERR_DISPOSED');
    throwsCode(() => ShardWriter.create('', bytesLayout), 'ERR_ARG');
    throwsCode(() => ShardWriter.create(fresh('x.bin'), { ...bytesLayout, hash: 'nope' }), 'ERR_ARG');
    throwsCode(() => ShardWriter.create(path.join(tmp, 'missing-dir', '\0bad'), bytesLayout), 'ERR_FILE');
  });
});

describe('damaged shards', () => {
  const docs = randomDocs(bytesLayout, [5, 1, 9, 30, 2], 21);
  const tokens = 47;
  const original = fresh('good.bin');
  writeShard(original, bytesLayout, docs);
  const good = fs.readFileSync(original);
  const indexAt = 64 + 2 * tokens;

  function variant(name: string, edit: (b: Buffer) => Buffer): string {
    const file = fresh(name);
    fs.writeFileSync(file, edit(Buffer.from(good)));
    return file;
  }

  const flip = (at: number) => (b: Buffer): Buffer => {
    b[at]! ^= 0x10;
    return b;
  };

  test.each([0, 10, 63, 64, 65, indexAt - 1, indexAt, indexAt + 30, good.length - 16, good.length - 1])('truncated to %i bytes -> ERR_FILE naming the file and sizes', (cut) => {
    const file = variant(`cut-${cut}.bin`, (b) => b.subarray(0, cut));
    const err = errorOf(() => ShardReader.open(file, bytesLayout), 'ERR_FILE');
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/truncated/);
    expect(err.message).toContain(cut < 64 ? `${cut} bytes, shorter than the 64-byte header` : `implies ${good.length} bytes, the file has ${cut}`);
  });

  test('extra bytes after the footer -> ERR_FILE', () => {
    const file = variant('long.bin', (b) => Buffer.concat([b, Buffer.from([0])]));
    expect(errorOf(() => ShardReader.open(file, bytesLayout), 'ERR_FILE').message).toMatch(/has extra bytes/);
  });

  test('flipped header bytes -> header checksum (or magic) errors', () => {
    for (const at of [9, 13, 20, 33, 41, 50, 57, 61]) {
      const file = variant(`header-${at}.bin`, flip(at));
      const err = errorOf(() => ShardReader.open(file, bytesLayout), 'ERR_FILE');
      expect(err.message).toContain(file);
      expect(err.message).toMatch(/header checksum mismatch/);
    }
    const magic = variant('magic.bin', (b) => Buffer.concat([Buffer.from('NOTSHARD'), b.subarray(8)]));
    expect(errorOf(() => ShardReader.open(magic, bytesLayout), 'ERR_FILE').message).toMatch(/magic\.bin: not a moma shard \(magic "NOTSHARD"/);
  });

  test('a version or dtype this reader does not know, with a valid header checksum', () => {
    const rewrite = (at: number, value: number) => (b: Buffer): Buffer => {
      b.writeUInt32LE(value, at);
      b.writeUInt32LE(zlib.crc32(b.subarray(0, 60)), 60);
      return b;
    };
    expect(errorOf(() => ShardReader.open(variant('v2.bin', rewrite(8, 2)), bytesLayout), 'ERR_FILE').message).toMatch(/format version 2 is not supported/);
    expect(errorOf(() => ShardReader.open(variant('dt3.bin', rewrite(12, 3)), bytesLayout), 'ERR_FILE').message).toMatch(/dtype code 3 is unknown/);
    expect(errorOf(() => ShardReader.open(variant('dt2.bin', rewrite(12, 2)), bytesLayout), 'ERR_FILE').message).toMatch(/dtype uint32 does not fit the vocabulary of 261 ids/);
  });

  test('a flipped token byte -> ERR_FILE naming the document and its byte offset; other documents still read', () => {
    const at = 64 + 2 * (5 + 1 + 4); // document 2, token 4
    const file = variant('token.bin', flip(at));
    const r = ShardReader.open(file, bytesLayout);
    const err = errorOf(() => r.read(2), 'ERR_FILE');
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/document 2 \(byte offset 76, 9 tokens\) checksum mismatch/);
    expect(Array.from(r.read(3))).toEqual(docs[3]);
    r.close();
  });

  test('a flipped index or footer byte -> ERR_FILE', () => {
    for (const at of [indexAt, indexAt + 9, indexAt + 24 * 4 + 23]) {
      const err = errorOf(() => ShardReader.open(variant(`index-${at}.bin`, flip(at)), bytesLayout), 'ERR_FILE');
      expect(err.message).toMatch(new RegExp(`index-${at}\\.bin: document index checksum mismatch .*index at byte ${indexAt}`));
    }
    expect(errorOf(() => ShardReader.open(variant('footer-magic.bin', flip(good.length - 10)), bytesLayout), 'ERR_FILE').message).toMatch(/footer magic/);
    expect(errorOf(() => ShardReader.open(variant('footer-crc.bin', flip(good.length - 16)), bytesLayout), 'ERR_FILE').message).toMatch(/index checksum/);
    expect(errorOf(() => ShardReader.open(variant('footer-res.bin', flip(good.length - 2)), bytesLayout), 'ERR_FILE').message).toMatch(/reserved footer field/);
  });

  test('an index that is consistent (checksummed) but wrong -> ERR_FILE', () => {
    const rewriteIndex = (edit: (b: Buffer) => void) => (b: Buffer): Buffer => {
      edit(b);
      b.writeUInt32LE(zlib.crc32(b.subarray(indexAt, indexAt + 24 * docs.length)), indexAt + 24 * docs.length);
      return b;
    };
    const shifted = variant('shift.bin', rewriteIndex((b) => b.writeBigUInt64LE(7n, indexAt + 48)));
    expect(errorOf(() => ShardReader.open(shifted, bytesLayout), 'ERR_FILE').message).toMatch(new RegExp(`index entry 2 \\(byte ${indexAt + 48}\\): document starts at token 7, expected 6`));
    const long = variant('long-doc.bin', rewriteIndex((b) => b.writeUInt32LE(10, indexAt + 24 * 4 + 8)));
    expect(errorOf(() => ShardReader.open(long, bytesLayout), 'ERR_FILE').message).toMatch(/index entry 4 .*length 10 at token 45 is outside the token area of 47 tokens/);
    const zero = variant('zero-doc.bin', rewriteIndex((b) => b.writeUInt32LE(0, indexAt + 24 + 8)));
    expect(errorOf(() => ShardReader.open(zero, bytesLayout), 'ERR_FILE').message).toMatch(/index entry 1 .*length 0/);
  });

  test('a shard of another vocabulary -> ERR_FILE saying which vocabulary it was written with', () => {
    const err = errorOf(() => ShardReader.open(original, imageLayout), 'ERR_FILE');
    expect(err.message).toContain(original);
    expect(err.message).toContain(`written with vocabulary ${bytesLayout.hash.slice(0, 32)}`);
    expect(err.message).toContain(`expected vocabulary is ${imageLayout.hash.slice(0, 32)}`);
  });

  test('an id outside the vocabulary with valid checksums -> ERR_RANGE naming document, offset and id', () => {
    const file = variant('oov.bin', (b) => {
      const at = 64 + 2 * (5 + 1 + 9 + 3); // document 3, token 3
      b.writeUInt16LE(300, at);
      const entry = indexAt + 24 * 3;
      b.writeUInt32LE(zlib.crc32(b.subarray(64 + 2 * 15, 64 + 2 * 45)), entry + 16);
      b.writeUInt32LE(zlib.crc32(b.subarray(indexAt, indexAt + 24 * docs.length)), indexAt + 24 * docs.length);
      return b;
    });
    const r = ShardReader.open(file, bytesLayout);
    const err = errorOf(() => r.read(3), 'ERR_RANGE');
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/document 3 token 3 \(byte offset 100\) is id 300, outside the vocabulary \[0, 261\)/);
    r.close();
  });

  test('a missing file, a folder, bad arguments', () => {
    expect(errorOf(() => ShardReader.open(path.join(tmp, 'nope.bin'), bytesLayout), 'ERR_FILE').message).toMatch(/nope\.bin: cannot be opened/);
    throwsCode(() => ShardReader.open(tmp, bytesLayout), 'ERR_FILE');
    throwsCode(() => ShardReader.open('', bytesLayout), 'ERR_ARG');
    throwsCode(() => ShardReader.open(original, null as unknown as VocabLayout), 'ERR_ARG');
    const r = ShardReader.open(original, bytesLayout);
    for (const d of [-1, 5, 1.5, NaN]) throwsCode(() => r.read(d), 'ERR_RANGE');
    r.close();
  });

  test('every single flipped byte is caught at open or on read, always as a MomaError', () => {
    const rng = new SeededRandom(99);
    for (let at = 0; at < good.length; at++) {
      const file = path.join(tmp, 'fuzz.bin');
      const b = Buffer.from(good);
      b[at]! ^= 1 << rng.below(8);
      fs.writeFileSync(file, b);
      let caught: unknown = null;
      try {
        readAll(file, bytesLayout);
      } catch (err) {
        caught = err;
      }
      if (!(caught instanceof MomaError)) throw new Error(`byte ${at}: expected a MomaError, got ${String(caught)}`);
    }
  });
});

describe('shard sets', () => {
  const image = Buffer.from('pretend codebook');
  const info = { ...imageInfo, sha256: createHash('sha256').update(image).digest('hex') };
  const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, info);

  function makeSet(name: string, edit: (index: Record<string, unknown>) => void = () => undefined): string {
    const dir = fresh(name);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(layout));
    fs.writeFileSync(path.join(dir, 'image_tokenizer.safetensors'), image);
    const entry = (file: string, docs: number[][]): Record<string, unknown> => {
      const s = writeShard(path.join(dir, file), layout, docs);
      return { file, documents: s.documents, tokens: s.tokens, imageTokens: s.imageTokens, sha256: s.sha256 };
    };
    const index: Record<string, unknown> = {
      format: 'moma-shards', version: 1, vocabHash: layout.hash,
      splits: { train: [entry('train-00000.bin', [[1, 70, 2], [1, 261, 262, 2]]), entry('train-00001.bin', [[1, 71, 72, 2]])], eval: [] },
    };
    edit(index);
    fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify(index));
    return dir;
  }

  test('open: layout, files, summaries, a store over all shards, null for an empty split', () => {
    const set = openShardSet(makeSet('ok'), { verify: true });
    expect(set.layout).toEqual(layout);
    expect(set.files).toEqual({ 'image_tokenizer.safetensors': image });
    expect(set.summary('train')).toEqual({ shards: 2, documents: 3, tokens: 11, imageTokens: 2 });
    expect(set.store('eval', 0)).toBeNull();
    const store = set.store('train', 3)!;
    expect(store.count).toBe(3);
    expect([0, 1, 2].map((id) => Array.from(store.tokens(id)))).toEqual([[1, 70, 2], [1, 261, 262, 2], [1, 71, 72, 2]]);
    expect([0, 1, 2].map((id) => store.profile!(id))).toEqual([{ tokens: 3, imageTokens: 0 }, { tokens: 4, imageTokens: 2 }, { tokens: 4, imageTokens: 0 }]);
    throwsCode(() => store.tokens(3), 'ERR_RANGE');
    throwsCode(() => store.idAt(-1), 'ERR_RANGE');
    throwsCode(() => set.store('test' as 'train', 0), 'ERR_ARG');
    throwsCode(() => set.store('train', 0.5), 'ERR_ARG');
    set.close();
    throwsCode(() => store.tokens(0), 'ERR_DISPOSED');
  });

  test('new ShardSet takes one parts object; a missing part is ERR_ARG naming it', () => {
    const opened = openShardSet(makeSet('parts'));
    const { name, files, index } = opened;
    const readers = { train: [], eval: [] };
    const set = new ShardSet({ name, layout, files, index, readers });
    expect(set.name).toBe(name);
    expect(set.store('train', 0)).toBeNull();
    expect(errorOf(() => new ShardSet({ name, layout, files, readers } as never), 'ERR_ARG').message).toBe('ShardSet: parts.index is required');
    expect(errorOf(() => new (ShardSet as unknown as new (...args: unknown[]) => ShardSet)(name, layout, files, index, readers), 'ERR_ARG').message)
      .toBe('ShardSet: expected an object for parts, got string');
    opened.close();
  });

  test('draw k of a store is seededPermutation(N, seed, epoch)[k mod N], epoch = floor(k / N)', () => {
    const set = openShardSet(makeSet('epochs'));
    const store = set.store('train', 7)!;
    const draws = Array.from({ length: 30 }, (_, k) => store.idAt(k));
    const expected = Array.from({ length: 10 }, (_, epoch) => Array.from(seededPermutation(3, 7, epoch))).flat();
    expect(draws).toEqual(expected);
    // 10 epochs of 3 documents are not all the same order, and another seed draws another sequence
    expect(new Set(Array.from({ length: 10 }, (_, e) => draws.slice(3 * e, 3 * e + 3).join())).size).toBeGreaterThan(1);
    expect(Array.from({ length: 30 }, (_, k) => set.store('train', 8)!.idAt(k))).not.toEqual(draws);
    // any order of access (the store keeps two epochs' orders)
    expect([29, 0, 14, 3].map((k) => store.idAt(k))).toEqual([29, 0, 14, 3].map((k) => draws[k]));
    set.close();
  });

  test.each([
    ['an unknown top-level key', (i: Record<string, unknown>) => { i.extra = 1; }, /index\.json: key 'extra' is unknown/],
    ['an unknown split', (i: Record<string, unknown>) => { (i.splits as Record<string, unknown>).test = []; }, /key 'splits\.test' is unknown/],
    ['an unknown entry key', (i: Record<string, unknown>) => { ((i.splits as { train: Record<string, unknown>[] }).train[0]!).bytes = 5; }, /key 'splits\.train\[0\]\.bytes' is unknown/],
    ['a wrong document count', (i: Record<string, unknown>) => { ((i.splits as { train: Record<string, unknown>[] }).train[1]!).documents = 2; }, /splits\.train\[1\] \(train-00001\.bin\) says documents 2, the shard has 1/],
    ['a path outside the folder', (i: Record<string, unknown>) => { ((i.splits as { train: Record<string, unknown>[] }).train[1]!).file = '../x.bin'; }, /splits\.train\[1\]\.file' must be a file name inside the folder/],
    ['a missing shard', (i: Record<string, unknown>) => { ((i.splits as { train: Record<string, unknown>[] }).train[1]!).file = 'gone.bin'; }, /gone\.bin: cannot be opened/],
    ['another format', (i: Record<string, unknown>) => { i.format = 'other'; }, /key 'format' must be "moma-shards"/],
    ['another vocabulary hash', (i: Record<string, unknown>) => { i.vocabHash = 'c'.repeat(64); }, /vocabHash c+ differs from vocab\.json's/],
    ['a wrong shard sha256 (verify)', (i: Record<string, unknown>) => { ((i.splits as { train: Record<string, unknown>[] }).train[0]!).sha256 = 'd'.repeat(64); }, /SHA-256 [0-9a-f]+ differs from index\.json's d+/],
  ])('index.json with %s -> ERR_FILE', (_name, edit, message) => {
    const dir = makeSet('bad', edit);
    expect(errorOf(() => openShardSet(dir, { verify: true }), 'ERR_FILE').message).toMatch(message);
  });

  test("index.json's shard SHA-256s are checked at open by default for a small set ('auto'), not with verify: false", () => {
    const dir = makeSet('bad-hash', (i) => { ((i.splits as { train: Record<string, unknown>[] }).train[0]!).sha256 = 'e'.repeat(64); });
    expect(errorOf(() => openShardSet(dir), 'ERR_FILE').message).toMatch(/train-00000\.bin: SHA-256 [0-9a-f]+ differs from index\.json's e+ \(splits\.train\[0\]\.sha256/);
    openShardSet(dir, { verify: false }).close();
  });

  test('vocab.json, tokenizer files and the folder itself are checked', () => {
    const dir = makeSet('files');
    fs.writeFileSync(path.join(dir, 'image_tokenizer.safetensors'), 'changed');
    expect(errorOf(() => openShardSet(dir), 'ERR_FILE').message).toMatch(/image tokenizer .*image_tokenizer\.safetensors has SHA-256 [0-9a-f]+, vocab\.json expects/);
    fs.rmSync(path.join(dir, 'image_tokenizer.safetensors'));
    expect(errorOf(() => openShardSet(dir), 'ERR_FILE').message).toMatch(/named by vocab\.json cannot be read/);
    fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify({ ...layout, size: 3 }));
    expect(errorOf(() => openShardSet(dir), 'ERR_FILE').message).toMatch(/vocabulary key 'hash'/);
    fs.writeFileSync(path.join(dir, 'vocab.json'), '{');
    expect(errorOf(() => openShardSet(dir), 'ERR_FILE').message).toMatch(/vocab\.json: not valid JSON/);
    expect(errorOf(() => openShardSet(path.join(tmp, 'absent')), 'ERR_FILE').message).toMatch(/absent: cannot be opened/);
    throwsCode(() => openShardSet(path.join(dir, 'index.json')), 'ERR_FILE');
    throwsCode(() => openShardSet(''), 'ERR_ARG');
  });
});
