/**
 * Shard sets: a folder that is a MixedModalDataset.
 *
 *   vocab.json                     the VocabLayout (lib/data/vocab.ts)
 *   image_tokenizer.safetensors    the image codebook the layout names (when it has images)
 *   tokenizer.json                 the text tokenizer the layout names (kind "hf" only)
 *   index.json                     { format: "moma-shards", version: 1, vocabHash,
 *                                    splits: { train: [entry…], eval: [entry…] } },
 *                                  entry = { file, documents, tokens, imageTokens, sha256? }
 *   train-00000.bin, eval-00000.bin …   shards (lib/data/shard.ts)
 *
 * Opening validates everything that is cheap: the layout, the tokenizer files' SHA-256, every
 * key of index.json, every shard's header and index against index.json, and the SHA-256 that
 * index.json records for each shard when the shards are small enough to hash at once
 * (`verify: 'auto'`, the default: at most VERIFY_AUTO_BYTES together, under a second), always
 * with `verify: true`, never with false. Larger sets are not hashed at open because every byte
 * training reads is covered anyway: the header and the document index by their CRC32 at open,
 * each document by its CRC32 when it is read (lib/data/shard.ts). Documents are read lazily.
 *
 * A split's store numbers its documents 0 … N-1 in shard order and draws them shuffled per
 * epoch: draw k is position k mod N of seededPermutation(N, seed, epoch = floor(k / N)), a
 * Fisher–Yates shuffle (lib/data/seeded_random.ts), so the order is a pure function of
 * (seed, epoch, N).
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { MomaError } from '../errors';
import { readJson } from '../io/files';
import { requireFields } from '../options';
import type { DocumentStore, MixedModalDataset, Split } from './dataset';
import { seededPermutation } from './seeded_random';
import { ShardReader } from './shard';
import { parseVocabLayout, VocabLayout } from './vocab';
import { at, describeKey, describeValue } from '../checked';

export const SHARD_SET_FORMAT = 'moma-shards';
export const SHARD_SET_VERSION = 1;
export const SPLITS: readonly Split[] = ['train', 'eval'];

export interface ShardEntry {
  /** File name inside the set's folder. */
  file: string;
  documents: number;
  tokens: number;
  imageTokens: number;
  /** SHA-256 (hex) of the whole shard file. */
  sha256?: string;
}

export interface ShardSetIndex {
  format: typeof SHARD_SET_FORMAT;
  version: typeof SHARD_SET_VERSION;
  /** The layout's hash (vocab.json). */
  vocabHash: string;
  splits: Record<Split, ShardEntry[]>;
}

const INDEX_KEYS = ['format', 'version', 'vocabHash', 'splits'];
const ENTRY_KEYS = ['file', 'documents', 'tokens', 'imageTokens', 'sha256'];

/** Checks a parsed index.json (from `where`, named in errors); unknown keys are errors. */
export function parseShardSetIndex(value: unknown, where: string): ShardSetIndex {
  const fail = (key: string, what: string): never => {
    throw new MomaError('ERR_FILE', `${where}: key '${key}' ${what}`);
  };
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  const onlyKeys = (v: Record<string, unknown>, allowed: readonly string[], prefix: string): void => {
    for (const key of Object.keys(v)) {
      if (allowed.includes(key)) continue;
      const shown = describeKey(key);  // a key from the file: quoted only when it is a plain name
      if (shown.startsWith("'")) fail(`${prefix}${key}`, `is unknown (allowed: ${allowed.join(', ')})`);
      throw new MomaError('ERR_FILE', `${where}: ${shown}${prefix === '' ? '' : ` in '${prefix.slice(0, -1)}'`} is unknown (allowed: ${allowed.join(', ')})`);
    }
  };
  const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!isObject(value)) return fail('(root)', 'must be an object');
  onlyKeys(value, INDEX_KEYS, '');
  if (value.format !== SHARD_SET_FORMAT) fail('format', `must be "${SHARD_SET_FORMAT}", got ${describeValue(value.format)}`);
  if (value.version !== SHARD_SET_VERSION) fail('version', `must be ${SHARD_SET_VERSION}, got ${describeValue(value.version)}`);
  if (typeof value.vocabHash !== 'string' || !/^[0-9a-f]{64}$/.test(value.vocabHash)) fail('vocabHash', 'must be a hex SHA-256');
  if (!isObject(value.splits)) return fail('splits', 'must be an object { train: [...], eval: [...] }');
  onlyKeys(value.splits, SPLITS, 'splits.');
  const splits = { train: [], eval: [] } as Record<Split, ShardEntry[]>;
  const seen = new Set<string>();
  for (const split of SPLITS) {
    const list = value.splits[split];
    if (list === undefined) continue;
    if (!Array.isArray(list)) fail(`splits.${split}`, 'must be an array of shard entries');
    (list as unknown[]).forEach((entry, i) => {
      const at = `splits.${split}[${i}]`;
      if (!isObject(entry)) return fail(at, 'must be an object { file, documents, tokens, imageTokens, sha256? }');
      onlyKeys(entry, ENTRY_KEYS, `${at}.`);
      if (typeof entry.file !== 'string' || entry.file === '' || entry.file !== path.basename(entry.file) || entry.file === '.' || entry.file === '..') {
        fail(`${at}.file`, `must be a file name inside the folder, got ${describeValue(entry.file)}`);
      }
      if (seen.has(entry.file as string)) fail(`${at}.file`, `names ${describeValue(entry.file)} a second time`);
      seen.add(entry.file as string);
      for (const key of ['documents', 'tokens', 'imageTokens']) if (!isCount(entry[key])) fail(`${at}.${key}`, `must be an integer >= 0, got ${describeValue(entry[key])}`);
      if (entry.sha256 !== undefined && (typeof entry.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(entry.sha256))) fail(`${at}.sha256`, 'must be a hex SHA-256');
      splits[split].push({
        file: entry.file as string, documents: entry.documents as number, tokens: entry.tokens as number, imageTokens: entry.imageTokens as number,
        ...(entry.sha256 === undefined ? {} : { sha256: entry.sha256 as string }),
      });
    });
  }
  return { format: SHARD_SET_FORMAT, version: SHARD_SET_VERSION, vocabHash: value.vocabHash as string, splits };
}

export interface SplitSummary {
  shards: number;
  documents: number;
  tokens: number;
  imageTokens: number;
}

export interface OpenShardSetOptions {
  /**
   * Hash every shard and compare with index.json's sha256 (reads every byte): true always,
   * 'auto' (default) when the shards total at most VERIFY_AUTO_BYTES, false never.
   */
  verify?: boolean | 'auto';
}

/** The most shard bytes `verify: 'auto'` hashes at open (SHA-256 runs at about 0.5–2 GB/s). */
export const VERIFY_AUTO_BYTES = 256 * 1024 * 1024;

function sha256OfFile(file: string): string {
  const hash = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const chunk = Buffer.allocUnsafe(8 << 20);
    for (;;) {
      const n = fs.readSync(fd, chunk, 0, chunk.length, null);
      if (n <= 0) break;
      hash.update(chunk.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/** The documents of one split: global ids 0 … N-1 over its shards, drawn shuffled per epoch. */
class ShardSetStore implements DocumentStore {
  readonly count: number;
  /** First global id of each shard, plus N at the end. */
  private readonly starts: number[];
  private readonly orders = new Map<number, Uint32Array>();

  constructor(private readonly readers: ShardReader[], private readonly seed: number) {
    this.starts = [0];
    let total = 0;
    for (const r of readers) {
      total += r.documents;
      this.starts.push(total);
    }
    this.count = total;
  }

  idAt(k: number): number {
    if (!Number.isSafeInteger(k) || k < 0) throw new MomaError('ERR_RANGE', `shard set store: draw ${String(k)} must be an integer >= 0`);
    const epoch = Math.floor(k / this.count);
    let order = this.orders.get(epoch);
    if (order === undefined) {
      // two cursors (ratio control) can sit in different epochs: keep the two latest orders
      if (this.orders.size >= 2) this.orders.delete(this.orders.keys().next().value as number);
      order = seededPermutation(this.count, this.seed, epoch);
      this.orders.set(epoch, order);
    }
    return at(order, k - epoch * this.count, 'shard set store: idAt');
  }

  tokens(id: number): ArrayLike<number> {
    const [reader, local] = this.locate(id);
    return reader.read(local);
  }

  profile(id: number): { tokens: number; imageTokens: number } {
    const [reader, local] = this.locate(id);
    return { tokens: reader.length(local), imageTokens: reader.imageCount(local) };
  }

  private locate(id: number): [ShardReader, number] {
    const where = 'shard set store: locate';
    if (!Number.isInteger(id) || id < 0 || id >= this.count) throw new MomaError('ERR_RANGE', `shard set store: document ${String(id)} is outside [0, ${this.count})`);
    let lo = 0;
    let hi = this.readers.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (at(this.starts, mid, where) <= id) lo = mid;
      else hi = mid - 1;
    }
    return [at(this.readers, lo, where), id - at(this.starts, lo, where)];
  }
}

/** What an open shard set is made of, as openShardSet validated it. */
export interface ShardSetParts {
  /** The set's folder (names the set in errors). */
  name: string;
  /** vocab.json. */
  layout: VocabLayout;
  /** The tokenizer files the layout names, by file name (SHA-256 checked). */
  files: Record<string, Buffer>;
  /** index.json. */
  index: ShardSetIndex;
  /** One open reader per shard of each split, in index.json order; the set owns and closes them. */
  readers: Record<Split, ShardReader[]>;
}

/** An open shard set (close() releases its file descriptors); made by openShardSet. */
export class ShardSet implements MixedModalDataset {
  private closed = false;
  readonly name: string;
  readonly layout: VocabLayout;
  readonly files: Record<string, Buffer>;
  readonly index: ShardSetIndex;
  private readonly readers: Record<Split, ShardReader[]>;

  constructor(parts: ShardSetParts) {
    const { name, layout, files, index, readers } = requireFields(parts, { fn: 'ShardSet', argument: 'parts' }, ['name', 'layout', 'files', 'index', 'readers']);
    this.name = name;
    this.layout = layout;
    this.files = files;
    this.index = index;
    this.readers = readers;
  }

  store(split: Split, seed: number): DocumentStore | null {
    if (!SPLITS.includes(split)) throw new MomaError('ERR_ARG', `ShardSet.store ${this.name}: split must be "train" or "eval", got ${JSON.stringify(split)}`);
    if (!Number.isSafeInteger(seed)) throw new MomaError('ERR_ARG', `ShardSet.store ${this.name}: seed must be a safe integer, got ${String(seed)}`);
    if (this.closed) throw new MomaError('ERR_DISPOSED', `ShardSet.store ${this.name}: the set is closed`);
    const readers = this.readers[split].filter((r) => r.documents > 0);
    return readers.length === 0 ? null : new ShardSetStore(readers, seed);
  }

  /** Shards, documents, tokens and image tokens of a split. */
  summary(split: Split): SplitSummary {
    const entries = this.index.splits[split];
    if (entries === undefined) throw new MomaError('ERR_ARG', `ShardSet.summary ${this.name}: split must be "train" or "eval", got ${JSON.stringify(split)}`);
    const sum = (key: 'documents' | 'tokens' | 'imageTokens'): number => entries.reduce((n, e) => n + e[key], 0);
    return { shards: entries.length, documents: sum('documents'), tokens: sum('tokens'), imageTokens: sum('imageTokens') };
  }

  /** The document `doc` of a split in file order (no shuffling), e.g. for inspection. */
  document(split: Split, doc: number): ArrayLike<number> {
    const store = this.store(split, 0);
    if (store === null) throw new MomaError('ERR_RANGE', `ShardSet.document ${this.name}: split ${split} has no documents`);
    return store.tokens(doc);
  }

  close(): void {
    for (const split of SPLITS) for (const r of this.readers[split]) r.close();
    this.closed = true;
  }
}

/** Reads a tokenizer file the layout names and checks its SHA-256. */
function readNamedFile(dir: string, name: string, sha256: string, what: string): Buffer {
  if (name !== path.basename(name) || name === '.' || name === '..' || name === '') {
    throw new MomaError('ERR_FILE', `${path.join(dir, 'vocab.json')}: ${what} file ${describeValue(name)} must be a file name inside the folder`);
  }
  const file = path.join(dir, name);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw new MomaError('ERR_FILE', `shard set ${dir}: ${what} ${file} named by vocab.json cannot be read (${(err as Error).message})`);
  }
  const actual = createHash('sha256').update(bytes).digest('hex');
  if (actual !== sha256) throw new MomaError('ERR_FILE', `shard set ${dir}: ${what} ${file} has SHA-256 ${actual}, vocab.json expects ${sha256}`);
  return bytes;
}

/** Opens and validates a shard set folder. */
export function openShardSet(dir: string, options: OpenShardSetOptions = {}): ShardSet {
  if (typeof dir !== 'string' || dir === '') throw new MomaError('ERR_ARG', `openShardSet: dir must be a non-empty path, got ${JSON.stringify(dir)}`);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch (err) {
    throw new MomaError('ERR_FILE', `shard set ${dir}: cannot be opened (${(err as Error).message})`);
  }
  if (!stat.isDirectory()) throw new MomaError('ERR_FILE', `shard set ${dir}: is not a folder`);
  const vocabFile = path.join(dir, 'vocab.json');
  const layout = parseVocabLayout(readJson(vocabFile, `shard set ${dir}`), vocabFile);
  const files: Record<string, Buffer> = {};
  if (layout.image !== null) {
    const t = layout.image.tokenizer;
    files[t.file] = readNamedFile(dir, t.file, t.sha256, 'image tokenizer');
  }
  const text = layout.text.tokenizer;
  if (text.kind === 'hf') files[text.file] = readNamedFile(dir, text.file, text.sha256, 'text tokenizer');
  const indexFile = path.join(dir, 'index.json');
  const index = parseShardSetIndex(readJson(indexFile, `shard set ${dir}`), indexFile);
  if (index.vocabHash !== layout.hash) throw new MomaError('ERR_FILE', `${indexFile}: vocabHash ${index.vocabHash} differs from vocab.json's ${layout.hash}`);
  const readers: Record<Split, ShardReader[]> = { train: [], eval: [] };
  const verify = options.verify ?? 'auto';
  let hashShards = verify === true;
  if (verify === 'auto') {
    let bytes = 0;
    for (const split of SPLITS) for (const entry of index.splits[split]) bytes += fs.statSync(path.join(dir, entry.file), { throwIfNoEntry: false })?.size ?? 0;
    hashShards = bytes <= VERIFY_AUTO_BYTES;
  }
  try {
    for (const split of SPLITS) {
      index.splits[split].forEach((entry, i) => {
        const file = path.join(dir, entry.file);
        const reader = ShardReader.open(file, layout);
        readers[split].push(reader);
        for (const key of ['documents', 'tokens', 'imageTokens'] as const) {
          if (reader[key] !== entry[key]) throw new MomaError('ERR_FILE', `${indexFile}: splits.${split}[${i}] (${entry.file}) says ${key} ${entry[key]}, the shard has ${reader[key]}`);
        }
        if (hashShards && entry.sha256 !== undefined) {
          const actual = sha256OfFile(file);
          if (actual !== entry.sha256) throw new MomaError('ERR_FILE', `shard ${file}: SHA-256 ${actual} differs from index.json's ${entry.sha256} (splits.${split}[${i}].sha256 of ${indexFile}): the shard is corrupt or was changed`);
        }
      });
    }
  } catch (err) {
    for (const split of SPLITS) for (const r of readers[split]) r.close();
    throw err;
  }
  return new ShardSet({ name: dir, layout, files, index, readers });
}
