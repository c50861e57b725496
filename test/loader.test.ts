// SequencePacker (lib/data/packer.ts) over in-memory stores and over a shard set: in order it
// emits the plain concatenation of the drawn documents (every token once per epoch), batches
// are deterministic in the seed, state()/restore() resumes exactly (also through JSON, with a
// document carried across sequences and with ratio control), and ratio control reaches its
// target image fraction while every document a kind's cursor reaches is emitted, in order.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { DocumentStore } from '../lib/data/dataset';
import { PackerOptions, SequencePacker } from '../lib/data/packer';
import { ShardWriter } from '../lib/data/shard';
import { SeededRandom, seededPermutation } from '../lib/data/seeded_random';
import { openShardSet } from '../lib/data/shard_set';
import { buildVocabLayout, modalityOfId } from '../lib/data/vocab';
import { throwsCode } from './support/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-loader-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const BOS = 1;
const EOS = 2;
/** In the in-memory stores, ids in [1000, 2000) are image tokens. */
const isImage = (id: number): boolean => id >= 1000 && id < 2000;

/** Documents 0 … n-1: BOS, a marker 100 + i, then text (ids 10–60) or mostly image codes, EOS. */
function makeDocs(n: number, seed: number, imageEvery = 4): number[][] {
  const rng = new SeededRandom(seed);
  return Array.from({ length: n }, (_, i) => {
    const body = i % imageEvery === 0
      ? [...Array.from({ length: 3 }, () => 10 + rng.below(50)), ...Array.from({ length: 60 }, () => 1000 + rng.below(999))]
      : Array.from({ length: 1 + rng.below(40) }, () => 10 + rng.below(50));
    return [BOS, 100 + i, ...body, EOS];
  });
}

/** Shuffled per epoch like a shard set (seed null: in id order). */
function memoryStore(docs: number[][], seed: number | null): DocumentStore {
  const n = docs.length;
  const orders = new Map<number, Uint32Array>();
  const order = (epoch: number): Uint32Array => {
    if (!orders.has(epoch)) orders.set(epoch, seededPermutation(n, seed!, epoch));
    return orders.get(epoch)!;
  };
  return {
    count: n,
    idAt: (k) => (seed === null ? k % n : order(Math.floor(k / n))[k % n]!),
    tokens: (id) => docs[id]!,
  };
}

/** The first `length` tokens of the documents in draw order. */
function reference(store: DocumentStore, length: number): number[] {
  const out: number[] = [];
  for (let k = 0; out.length < length; k++) out.push(...Array.from(store.tokens(store.idAt(k))));
  return out.slice(0, length);
}

function run(packer: SequencePacker, batches: number): number[][][] {
  return Array.from({ length: batches }, () => packer.next());
}

const flat = (batches: number[][][]): number[] => batches.flat(2);

/** Documents in emission order (a packed stream is documents back to back). */
function splitAtBos(stream: number[]): number[][] {
  const docs: number[][] = [];
  for (const id of stream) {
    if (id === BOS) docs.push([]);
    docs[docs.length - 1]!.push(id);
  }
  return docs;
}

describe('in order (no ratio control)', () => {
  test.each([
    [3, 7, 5, null],
    [1, 2, 3, 4],
    [4, 64, 9, 11],
    [2, 13, 1, 0],
  ])('batch %i × seq %i, %i documents, seed %p: the plain concatenation, every token once per epoch', (batchSize, seqLen, n, seed) => {
    const docs = makeDocs(n, 1);
    docs[0] = [BOS]; // length 1
    const store = memoryStore(docs, seed);
    const epochTokens = docs.reduce((t, d) => t + d.length, 0);
    const batches = Math.ceil((2.5 * epochTokens) / (batchSize * seqLen));
    const packer = new SequencePacker(store, { batchSize, seqLen, isImage });
    const out = run(packer, batches);
    for (const batch of out) {
      expect(batch).toHaveLength(batchSize);
      for (const seq of batch) expect(seq).toHaveLength(seqLen);
    }
    const stream = flat(out);
    expect(stream).toEqual(reference(store, stream.length));
    // each of the first two epochs holds every document exactly once
    for (const epoch of [0, 1]) {
      const part = splitAtBos(stream.slice(epoch * epochTokens, (epoch + 1) * epochTokens));
      expect(part.map((d) => d.length === 1 ? 0 : d[1]! - 99).sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => (i === 0 ? 0 : i + 1)));
    }
  });

  test('same seed: same batches; another seed: another order', () => {
    const docs = makeDocs(40, 2);
    const options: PackerOptions = { batchSize: 2, seqLen: 32, isImage };
    const a = flat(run(new SequencePacker(memoryStore(docs, 5), options), 10));
    const b = flat(run(new SequencePacker(memoryStore(docs, 5), options), 10));
    const c = flat(run(new SequencePacker(memoryStore(docs, 6), options), 10));
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
    expect(new Set(splitAtBos(c).slice(0, 5).map((d) => d[1]))).not.toEqual(new Set(splitAtBos(a).slice(0, 5).map((d) => d[1])));
  });
});

describe('exact resume', () => {
  const docs = makeDocs(30, 3);
  const cases: [string, number | null][] = [['in order', null], ['ratio control 0.5', 0.5], ['ratio control 0.1', 0.1]];
  test.each(cases)('%s: state after n batches, restored into a new packer (through JSON) -> the same next batches', (_name, imageFraction) => {
    const options: PackerOptions = { batchSize: 3, seqLen: 17, isImage, imageFraction };
    const straight = run(new SequencePacker(memoryStore(docs, 9), options), 20);
    let carried = 0;
    for (const n of [0, 1, 2, 5, 13]) {
      const first = new SequencePacker(memoryStore(docs, 9), options);
      expect(run(first, n)).toEqual(straight.slice(0, n));
      const state = first.state();
      if (state.carry !== null && state.carry.offset > 0) carried++;
      const resumed = new SequencePacker(memoryStore(docs, 9), options);
      resumed.restore(JSON.parse(JSON.stringify(state)));
      expect(resumed.state()).toEqual(state);
      expect(run(resumed, 20 - n)).toEqual(straight.slice(n));
      // the original keeps going identically too
      expect(run(first, 20 - n)).toEqual(straight.slice(n));
    }
    expect(carried).toBeGreaterThan(0);
  });

  test('ratio control over an endless store resumes exactly', () => {
    const endless = (): DocumentStore => ({ count: Infinity, idAt: (k) => k, tokens: (k) => docs[(k * 11) % docs.length]! });
    const options: PackerOptions = { batchSize: 2, seqLen: 19, isImage, imageFraction: 0.6, lookahead: 5 };
    const straight = run(new SequencePacker(endless(), options), 15);
    const first = new SequencePacker(endless(), options);
    run(first, 6);
    const resumed = new SequencePacker(endless(), options);
    resumed.restore(JSON.parse(JSON.stringify(first.state())));
    expect(run(resumed, 9)).toEqual(straight.slice(6));
  });

  test('restore() rejects malformed states and keeps its own', () => {
    const store = memoryStore(makeDocs(8, 4), null);
    const packer = new SequencePacker(store, { batchSize: 1, seqLen: 5, isImage });
    run(packer, 3);
    const good = packer.state();
    const bad: unknown[] = [
      null, 5, 'x', {}, [], { ...good, next: -1 }, { ...good, next: 1.5 }, { ...good, batches: '3' }, { ...good, extra: 1 },
      { next: good.next, nextImage: 0, batches: 3 }, { ...good, carry: { draw: good.next, offset: 1 } }, { ...good, carry: { draw: 0 } },
      { ...good, carry: { draw: 0, offset: 0 } }, { ...good, carry: { draw: 0, offset: 99 } }, { ...good, carry: { draw: 0, offset: 1, more: 1 } },
      { drawn: 3, window: [], carry: null, batches: 3 },
    ];
    const expected = new SequencePacker(store, { batchSize: 1, seqLen: 5, isImage });
    expected.restore(good);
    for (const state of bad) throwsCode(() => packer.restore(state), 'ERR_ARG');
    expect(packer.state()).toEqual(good);
    expect(run(packer, 4)).toEqual(run(expected, 4));
  });

  test('constructor arguments are checked', () => {
    const store = memoryStore(makeDocs(3, 1), null);
    throwsCode(() => new SequencePacker(store, { batchSize: 0, seqLen: 4, isImage }), 'ERR_ARG');
    throwsCode(() => new SequencePacker(store, { batchSize: 1, seqLen: 1, isImage }), 'ERR_ARG');
    throwsCode(() => new SequencePacker(store, { batchSize: 1, seqLen: 4, isImage, imageFraction: 1.5 }), 'ERR_RANGE');
    throwsCode(() => new SequencePacker(store, { batchSize: 1, seqLen: 4, isImage, imageFraction: NaN }), 'ERR_RANGE');
    throwsCode(() => new SequencePacker(store, { batchSize: 1, seqLen: 4, isImage, lookahead: 0 }), 'ERR_ARG');
    throwsCode(() => new SequencePacker(store, { batchSize: 1, seqLen: 4, isImage: null as unknown as PackerOptions['isImage'] }), 'ERR_ARG');
    throwsCode(() => new SequencePacker({ ...store, count: 0 }, { batchSize: 1, seqLen: 4, isImage }), 'ERR_ARG');
    throwsCode(() => new SequencePacker(null as unknown as DocumentStore, { batchSize: 1, seqLen: 4, isImage }), 'ERR_ARG');
    const empty = new SequencePacker({ count: 1, idAt: () => 0, tokens: () => [] }, { batchSize: 1, seqLen: 4, isImage });
    throwsCode(() => empty.next(), 'ERR_FILE');
  });
});

describe('ratio control', () => {
  const docs = makeDocs(200, 5, 6);
  const tokensOf = (pick: (d: number[]) => boolean): number => docs.filter(pick).reduce((t, d) => t + d.length, 0);
  const dataMix = docs.reduce((t, d) => t + d.filter(isImage).length, 0) / tokensOf(() => true);
  const meanFraction = (packer: SequencePacker, batches: number): number => run(packer, batches).reduce((s, b) => s + packer.imageFractionOf(b), 0) / batches;

  test('the mean batch image fraction reaches the target; without a target it follows the data', () => {
    const options = { batchSize: 4, seqLen: 128, isImage };
    expect(dataMix).toBeGreaterThan(0.2);
    expect(dataMix).toBeLessThan(0.4);
    expect(Math.abs(meanFraction(new SequencePacker(memoryStore(docs, 1), options), 60) - dataMix)).toBeLessThan(0.05);
    for (const target of [0.5, 0.7, 0.15]) {
      const got = meanFraction(new SequencePacker(memoryStore(docs, 1), { ...options, imageFraction: target }), 60);
      expect(Math.abs(got - target)).toBeLessThan(0.05);
    }
    const none = new SequencePacker(memoryStore(docs, 1), { ...options, imageFraction: 0 });
    expect(meanFraction(none, 20)).toBe(0);
  });

  test('no document starves: each kind is emitted in its draw order and every document comes out', () => {
    const store = memoryStore(docs, 2);
    const packer = new SequencePacker(store, { batchSize: 4, seqLen: 128, isImage, imageFraction: 0.5 });
    const emitted = splitAtBos(flat(run(packer, 150)));
    emitted.pop(); // possibly cut by the last batch
    const kindOf = (id: number): boolean => docs[id]!.filter(isImage).length > 0.5 * docs[id]!.length;
    for (const image of [false, true]) {
      const order: number[] = [];
      for (let k = 0; order.length < emitted.length; k++) if (kindOf(store.idAt(k)) === image) order.push(store.idAt(k));
      const got = emitted.filter((d) => kindOf(d[1]! - 100) === image).map((d) => d[1]! - 100);
      expect(got.length).toBeGreaterThan(40);
      expect(got).toEqual(order.slice(0, got.length));
      expect(got.map((id) => docs[id])).toEqual(emitted.filter((d) => kindOf(d[1]! - 100) === image));
    }
    expect(new Set(emitted.map((d) => d[1])).size).toBe(docs.length);
  });

  test('an endless store: cursors stay within the look-ahead, each kind in draw order, the long run follows the generator', () => {
    const idOf = (k: number): number => (k * 7) % docs.length;
    const endless: DocumentStore = { count: Infinity, idAt: (k) => k, tokens: (k) => docs[idOf(k)]! };
    const packer = new SequencePacker(endless, { batchSize: 4, seqLen: 128, isImage, imageFraction: 0.5, lookahead: 16 });
    const batches: number[][][] = [];
    for (let b = 0; b < 60; b++) {
      batches.push(packer.next());
      const { next, nextImage } = packer.state();
      expect(Math.abs(next - nextImage)).toBeLessThanOrEqual(16);
    }
    const mean = batches.reduce((sum, b) => sum + packer.imageFractionOf(b), 0) / batches.length;
    expect(Math.abs(mean - dataMix)).toBeLessThan(0.05);
    const emitted = splitAtBos(flat(batches));
    emitted.pop();
    const kindOf = (id: number): boolean => docs[id]!.filter(isImage).length > 0.5 * docs[id]!.length;
    for (const image of [false, true]) {
      const got = emitted.filter((d) => kindOf(d[1]! - 100) === image).map((d) => d[1]! - 100);
      const order: number[] = [];
      for (let k = 0; order.length < got.length; k++) if (kindOf(idOf(k)) === image) order.push(idOf(k));
      expect(got).toEqual(order);
    }
  });

  test('an endless store with one kind only flows in order, reading O(1) documents per pick', () => {
    let reads = 0;
    const onlyText: DocumentStore = {
      count: Infinity, idAt: (k) => k,
      tokens: (k) => {
        reads++;
        return [BOS, 100 + (k % 50), 11, EOS];
      },
    };
    const plain = new SequencePacker(onlyText, { batchSize: 2, seqLen: 9, isImage, imageFraction: 0.5, lookahead: 8 });
    const stream = flat(run(plain, 10));
    const emitted = splitAtBos(stream).length;
    reads = 0;
    expect(stream).toEqual(reference(onlyText, stream.length));
    const referenceReads = reads;
    reads = 0;
    run(new SequencePacker(onlyText, { batchSize: 2, seqLen: 9, isImage, imageFraction: 0.5, lookahead: 8 }), 10);
    expect(reads).toBeLessThanOrEqual(3 * referenceReads + 8);
    expect(emitted).toBeGreaterThan(40);
  });

  test('an endless store restored with the cursors far apart: a double miss resolves on the second look', () => {
    // draws 0–11 are text documents, 12… image documents
    const store: DocumentStore = {
      count: Infinity, idAt: (k) => k,
      tokens: (k) => (k >= 12 ? [BOS, 1000, 1001, 1002, 1003, EOS] : [BOS, 100 + k, 11, EOS]),
    };
    const packer = new SequencePacker(store, { batchSize: 1, seqLen: 4, isImage, imageFraction: 0.5, lookahead: 4 });
    packer.restore({ next: 8, nextImage: 0, carry: null, batches: 0 });
    expect(splitAtBos(flat(run(packer, 1)))[0]).toEqual([BOS, 108, 11, EOS]);
    expect(packer.state()).toMatchObject({ next: 9, nextImage: 12 });
  });
});

describe('over a shard set', () => {
  const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, {
    kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: createHash('sha256').update('codebook').digest('hex'),
    imageSize: 8, patchSize: 2, codebookSize: 64, tokensPerImage: 16,
  });
  const image = layout.image!;
  const rng = new SeededRandom(8);
  const docs = Array.from({ length: 57 }, (_, i) => {
    const text = Array.from({ length: 1 + rng.below(30) }, () => layout.text.offset + rng.below(256));
    const images = i % 3 === 0 ? [layout.boiId, ...Array.from({ length: 16 }, () => image.offset + rng.below(64)), layout.eoiId] : [];
    return [layout.bosId, ...(i % 2 === 0 ? [...text, ...images] : [...images, ...text]), layout.eosId];
  });
  const dir = path.join(tmp, 'set');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(layout));
  fs.writeFileSync(path.join(dir, 'image_tokenizer.safetensors'), 'codebook');
  const entries = [docs.slice(0, 20), docs.slice(20, 21), docs.slice(21)].map((part, s) => {
    const w = ShardWriter.create(path.join(dir, `train-0000${s}.bin`), layout);
    part.forEach((d) => w.append(d));
    const stats = w.finish();
    return { file: `train-0000${s}.bin`, documents: stats.documents, tokens: stats.tokens, imageTokens: stats.imageTokens, sha256: stats.sha256 };
  });
  fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ format: 'moma-shards', version: 1, vocabHash: layout.hash, splits: { train: entries, eval: [] } }));
  const set = openShardSet(dir);
  afterAll(() => set.close());
  const isLayoutImage = (id: number): boolean => modalityOfId(layout, id) === 1;

  test('the store numbers documents across shards and shuffles per epoch', () => {
    const store = set.store('train', 4)!;
    expect(store.count).toBe(57);
    for (const id of [0, 19, 20, 21, 56]) expect(Array.from(store.tokens(id))).toEqual(docs[id]);
    for (const epoch of [0, 1, 2]) {
      const ids = Array.from({ length: 57 }, (_, i) => store.idAt(epoch * 57 + i));
      expect([...ids].sort((a, b) => a - b)).toEqual(Array.from({ length: 57 }, (_, i) => i));
    }
    expect(store.idAt(0) !== store.idAt(57) || store.idAt(1) !== store.idAt(58)).toBe(true);
    expect(set.store('train', 4)!.idAt(100)).toBe(store.idAt(100));
  });

  test('in order: every document of the set, in draw order, once per epoch', () => {
    const store = set.store('train', 1)!;
    const packer = new SequencePacker(store, { batchSize: 2, seqLen: 23, isImage: isLayoutImage });
    const stream = flat(run(packer, 60));
    const expected: number[] = [];
    for (let k = 0; expected.length < stream.length; k++) expected.push(...docs[store.idAt(k)]!);
    expect(stream).toEqual(expected.slice(0, stream.length));
  });

  test('ratio control and exact resume over shards', () => {
    const options: PackerOptions = { batchSize: 2, seqLen: 40, isImage: isLayoutImage, imageFraction: 0.4 };
    const straight = new SequencePacker(set.store('train', 2)!, options);
    const all = run(straight, 30);
    const mean = all.reduce((s, b) => s + straight.imageFractionOf(b), 0) / all.length;
    expect(Math.abs(mean - 0.4)).toBeLessThan(0.05);
    const first = new SequencePacker(set.store('train', 2)!, options);
    run(first, 11);
    const resumed = new SequencePacker(set.store('train', 2)!, options);
    resumed.restore(JSON.parse(JSON.stringify(first.state())));
    expect(run(resumed, 19)).toEqual(all.slice(11));
  });
});
