/**
 * Packing JSON Lines documents into a shard set (lib/data/shard_set.ts).
 *
 * Input: one document per line, a JSON array of segments in any order, each {"text": string}
 * or {"image": path}, e.g. [{"text":"a cat"},{"image":"img/cat.png"}]; a line may also be a
 * single segment object; blank lines are skipped. Image paths are relative to the JSONL file's
 * folder. A document becomes documentTokens(layout, …) = BOS, text ids / BOI codes EOI …, EOS.
 *
 * Two passes over the inputs: the first parses every line and checks every image file exists
 * (so mistakes surface before any encoding), and counts documents; the eval documents are then
 * a seeded choice of that many; the second pass tokenizes (images `concurrency` at a time, the
 * documents still written in input order) and writes train-NNNNN.bin / eval-NNNNN.bin shards of
 * at most `shardTokens` tokens (a longer document gets a shard of its own). Everything goes into
 * `<out>.partial-<pid>` first and is renamed into place at the end; a failure removes it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { describeKey, describeValue } from '../checked';
import { MomaError } from '../errors';
import { checkOutFolder, jsonSyntaxProblem, replaceDirAtomic, writeJsonAtomic } from '../io/files';
import type { Split } from './dataset';
import { documentTokens, TokenSegment } from './document';
import { IMAGE_TOKENIZER_FILE, ImageTokenizer } from './image_tokenizer';
import { ShardWriter } from './shard';
import { seededPermutation } from './seeded_random';
import { SHARD_SET_FORMAT, SHARD_SET_VERSION, ShardEntry, ShardSetIndex, SplitSummary, SPLITS } from './shard_set';
import { ByteTokenizer, HFTokenizer, TextTokenizer } from './text_tokenizer';
import { buildVocabLayout, TextTokenizerInfo, VocabLayout } from './vocab';

export const TEXT_TOKENIZER_FILE = 'tokenizer.json';
export const DEFAULT_SHARD_TOKENS = 2 ** 26;
/** A corpus builder's sources.json (next to the first input), copied into the shard set. */
export const SOURCES_FILE = 'sources.json';
/** Key that separates the eval choice's random stream from the epoch shuffles of the same seed. */
const EVAL_CHOICE_KEY = 0x6576616c;

/** A segment as written in the input. */
export type InputSegment = { text: string } | { image: string };

export interface PackOptions {
  /** JSON Lines files, read in this order. */
  inputs: string[];
  /** The shard set folder to create. */
  out: string;
  /** An image codebook (safetensors, lib/data/image_tokenizer.ts); needed when a document has an image. */
  imageTokenizer?: string | null;
  /** "bytes" (default) or a Hugging Face tokenizer.json. */
  textTokenizer?: string;
  /** Held-out documents chosen by the seed from `inputs` (default: defaultEvalDocuments; 0 when evalInputs are given). */
  evalDocuments?: number;
  /** JSON Lines files whose documents are the held-out split, as they are (e.g. a corpus builder's heldout.jsonl). */
  evalInputs?: string[];
  /** Most tokens per shard (default 2^26). */
  shardTokens?: number;
  /** Seeds the eval choice (default 0). */
  seed?: number;
  /** Replace a non-empty `out`. */
  force?: boolean;
  /** Images encoded at once (default 4). */
  concurrency?: number;
  onProgress?: (progress: PackProgress) => void;
}

export type PackProgress =
  | { phase: 'scan'; file: string; documents: number; images: number }
  | { phase: 'encode'; documents: number; total: number; images: number; tokens: number };

export interface PackReport {
  out: string;
  documents: number;
  images: number;
  layout: VocabLayout;
  splits: Record<Split, SplitSummary>;
  shards: Record<Split, ShardEntry[]>;
  seconds: number;
}

/** 1% of the documents, at most 1000, at least 1 when there are two or more. */
export function defaultEvalDocuments(documents: number): number {
  if (!Number.isSafeInteger(documents) || documents < 0) throw new MomaError('ERR_ARG', `defaultEvalDocuments: documents must be an integer >= 0, got ${String(documents)}`);
  return documents < 2 ? 0 : Math.min(1000, Math.max(1, Math.round(documents / 100)));
}

/** Parses one input line (`where` = "file:line" for errors); null for a blank line. */
export function parseDocumentLine(line: string, where: string): InputSegment[] | null {
  if (line.trim() === '') return null;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    throw new MomaError('ERR_FILE', `${where}: not valid JSON (${jsonSyntaxProblem(err, line)})`);
  }
  const list = Array.isArray(value) ? value : [value];
  if (list.length === 0) throw new MomaError('ERR_FILE', `${where}: the document has no segments`);
  return list.map((segment: unknown, i) => {
    const at = `${where}: segment ${i}`;
    if (segment === null || typeof segment !== 'object' || Array.isArray(segment)) {
      throw new MomaError('ERR_FILE', `${at} must be an object {"text": string} or {"image": path}, got ${describeValue(segment)}`);
    }
    const keys = Object.keys(segment);
    const unknown = keys.find((k) => k !== 'text' && k !== 'image');
    if (unknown !== undefined) throw new MomaError('ERR_FILE', `${at} has unknown key ${describeKey(unknown)} (a segment is {"text": string} or {"image": path})`);
    if (keys.length !== 1) throw new MomaError('ERR_FILE', `${at} must have exactly one of "text" or "image", got ${keys.length} keys`);
    const s = segment as Record<string, unknown>;
    if ('text' in s) {
      if (typeof s.text !== 'string') throw new MomaError('ERR_FILE', `${at}: "text" must be a string, got ${describeValue(s.text)}`);
      return { text: s.text };
    }
    if (typeof s.image !== 'string' || s.image === '') throw new MomaError('ERR_FILE', `${at}: "image" must be a non-empty path, got ${describeValue(s.image)}`);
    return { image: s.image };
  });
}

/**
 * The lines of a file as bytes, in order (split at '\n'; a '\r' before it is dropped, as in
 * CRLF files). Bytes, not text: each line's UTF-8 is checked by the caller, so an invalid byte is
 * an error naming its line instead of a U+FFFD that a text stream would put there silently.
 */
async function* byteLines(stream: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  for await (const chunk of stream) {
    let from = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, from)) {
      pending.push(chunk.subarray(from, nl));
      yield withoutCarriageReturn(Buffer.concat(pending));
      pending = [];
      from = nl + 1;
    }
    if (from < chunk.length) pending.push(chunk.subarray(from));
  }
  if (pending.length > 0) yield withoutCarriageReturn(Buffer.concat(pending));
}

function withoutCarriageReturn(line: Buffer): Buffer {
  return line.length > 0 && line[line.length - 1] === 0x0d ? line.subarray(0, line.length - 1) : line;
}

/** Decodes one line's UTF-8; invalid bytes are ERR_FILE naming `where` (file:line) and the byte's column. */
export function decodeDocumentLine(bytes: Uint8Array, where: string): string {
  try {
    return STRICT_UTF8.decode(bytes);
  } catch {
    const offset = firstInvalidUtf8(bytes);
    const which = offset < 0 ? '' : ` (byte 0x${bytes[offset]!.toString(16).padStart(2, '0')} at byte ${offset + 1} of the line)`;
    throw new MomaError('ERR_FILE', `${where}: not valid UTF-8${which}; documents must be UTF-8 text`);
  }
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/** The offset of the first byte that starts no valid UTF-8 sequence (overlong, surrogate, truncated or stray); -1 when all is valid. */
function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const lead = bytes[i]!;
    if (lead < 0x80) {
      i++;
      continue;
    }
    // continuation bytes after the lead, and the smallest code point that needs that many
    const [more, smallest] = lead >= 0xc2 && lead <= 0xdf ? [1, 0x80] : lead >= 0xe0 && lead <= 0xef ? [2, 0x800] : lead >= 0xf0 && lead <= 0xf4 ? [3, 0x10000] : [0, 0];
    if (more === 0 || i + more >= bytes.length) return i;
    let codePoint = lead & (0x3f >> more);
    for (let k = 1; k <= more; k++) {
      const next = bytes[i + k]!;
      if ((next & 0xc0) !== 0x80) return i;
      codePoint = (codePoint << 6) | (next & 0x3f);
    }
    if (codePoint < smallest || codePoint > 0x10ffff || (codePoint >= 0xd800 && codePoint <= 0xdfff)) return i;
    i += more + 1;
  }
  return -1;
}

/** Calls `visit(segments, where)` for every document line of `file`, in order. */
async function forEachDocument(file: string, visit: (segments: InputSegment[], where: string) => Promise<void> | void): Promise<void> {
  const stream = fs.createReadStream(file);
  let lineNumber = 0;
  try {
    for await (const bytes of byteLines(stream as AsyncIterable<Buffer>)) {
      lineNumber++;
      const where = `${file}:${lineNumber}`;
      const segments = parseDocumentLine(decodeDocumentLine(bytes, where), where);
      if (segments !== null) await visit(segments, where);
    }
  } catch (err) {
    if (err instanceof MomaError) throw err;
    throw new MomaError('ERR_FILE', `${file}: cannot be read (${(err as Error).message})`);
  } finally {
    stream.destroy();
  }
}

/** Runs at most `n` of the given tasks at once. */
function limiter(n: number): <T>(task: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async <T>(task: () => Promise<T>): Promise<T> => {
    if (active < n) active++;
    else await new Promise<void>((resolve) => waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = waiting.shift();
      if (next) next(); // the slot passes straight to the next task
      else active--;
    }
  };
}

function checkCount(name: string, value: unknown, min: number): number {
  if (!Number.isSafeInteger(value) || (value as number) < min) throw new MomaError('ERR_ARG', `packShardSet: ${name} must be an integer >= ${min}, got ${String(value)}`);
  return value as number;
}

function openTextTokenizer(spec: string): { tokenizer: TextTokenizer; info: TextTokenizerInfo; bytes: Buffer | null } {
  if (spec === 'bytes') {
    const tokenizer = new ByteTokenizer();
    return { tokenizer, info: tokenizer.info, bytes: null };
  }
  const tokenizer = HFTokenizer.fromFile(spec);
  if (tokenizer.info.kind !== 'hf') throw new MomaError('ERR_INTERNAL', `packShardSet: ${spec} did not load as a tokenizer.json`);
  const bytes = fs.readFileSync(spec);
  return { tokenizer, info: { kind: 'hf', file: TEXT_TOKENIZER_FILE, sha256: tokenizer.info.sha256 }, bytes };
}

/** Rolls a split's documents over shards of at most `shardTokens` tokens. */
class SplitWriter {
  readonly entries: ShardEntry[] = [];
  private writer: ShardWriter | null = null;

  constructor(private readonly dir: string, private readonly split: Split, private readonly layout: VocabLayout, private readonly shardTokens: number) {}

  append(tokens: number[]): void {
    if (this.writer !== null && this.writer.tokens > 0 && this.writer.tokens + tokens.length > this.shardTokens) this.finishShard();
    if (this.writer === null) {
      const name = `${this.split}-${String(this.entries.length).padStart(5, '0')}.bin`;
      this.writer = ShardWriter.create(path.join(this.dir, name), this.layout);
    }
    this.writer.append(tokens);
  }

  finish(): ShardEntry[] {
    if (this.writer !== null) this.finishShard();
    return this.entries;
  }

  abort(): void {
    this.writer?.abort();
    this.writer = null;
  }

  private finishShard(): void {
    const stats = (this.writer as ShardWriter).finish();
    this.writer = null;
    this.entries.push({ file: path.basename(stats.file), documents: stats.documents, tokens: stats.tokens, imageTokens: stats.imageTokens, sha256: stats.sha256 });
  }
}

/** Packs JSON Lines documents into a shard set folder. */
export async function packShardSet(options: PackOptions): Promise<PackReport> {
  const started = performance.now();
  if (options === null || typeof options !== 'object') throw new MomaError('ERR_ARG', 'packShardSet: options must be an object');
  const { inputs, out, onProgress } = options;
  if (!Array.isArray(inputs) || inputs.length === 0 || inputs.some((f) => typeof f !== 'string' || f === '')) {
    throw new MomaError('ERR_ARG', `packShardSet: inputs must be a non-empty list of JSONL files, got ${JSON.stringify(inputs)}`);
  }
  const evalInputs = options.evalInputs ?? [];
  if (!Array.isArray(evalInputs) || evalInputs.some((f) => typeof f !== 'string' || f === '')) {
    throw new MomaError('ERR_ARG', `packShardSet: evalInputs must be a list of JSONL files, got ${JSON.stringify(options.evalInputs)}`);
  }
  const allInputs = [...inputs, ...evalInputs];
  if (typeof out !== 'string' || out === '') throw new MomaError('ERR_ARG', `packShardSet: out must be a non-empty path, got ${JSON.stringify(out)}`);
  const shardTokens = checkCount('shardTokens', options.shardTokens ?? DEFAULT_SHARD_TOKENS, 1);
  const seed = checkCount('seed', options.seed ?? 0, 0);
  const concurrency = checkCount('concurrency', options.concurrency ?? 4, 1);
  if (options.evalDocuments !== undefined) checkCount('evalDocuments', options.evalDocuments, 0);
  if (onProgress !== undefined && typeof onProgress !== 'function') throw new MomaError('ERR_ARG', 'packShardSet: onProgress must be a function');
  for (const file of allInputs) {
    if (!fs.existsSync(file) || !fs.statSync(file).isFile()) throw new MomaError('ERR_FILE', `packShardSet: input ${file} is not a readable file`);
  }
  checkOutFolder('packShardSet', out, options.force === true);

  const text = openTextTokenizer(options.textTokenizer ?? 'bytes');
  const imageTokenizer = options.imageTokenizer ? ImageTokenizer.load(options.imageTokenizer) : null;
  const layout = buildVocabLayout({ tokenizer: text.info, size: text.tokenizer.size }, imageTokenizer ? imageTokenizer.info(IMAGE_TOKENIZER_FILE) : null);

  // pass 1: parse, check images, count
  let documents = 0;
  let images = 0;
  let trainInputDocuments = 0;
  for (const [fileIndex, file] of allInputs.entries()) {
    if (fileIndex === inputs.length) trainInputDocuments = documents;
    const folder = path.dirname(file);
    await forEachDocument(file, (segments, where) => {
      for (const segment of segments) {
        if (!('image' in segment)) continue;
        if (imageTokenizer === null) throw new MomaError('ERR_ARG', `${where}: the document has an image (${segment.image}) but no --image-tokenizer was given`);
        const image = path.resolve(folder, segment.image);
        try {
          fs.accessSync(image, fs.constants.R_OK);
          if (!fs.statSync(image).isFile()) throw new Error('not a file');
        } catch (err) {
          throw new MomaError('ERR_FILE', `${where}: image ${JSON.stringify(segment.image)} (${image}) cannot be read (${(err as Error).message})`);
        }
        images++;
      }
      documents++;
    });
    onProgress?.({ phase: 'scan', file, documents, images });
  }
  if (evalInputs.length === 0) trainInputDocuments = documents;
  if (trainInputDocuments === 0) throw new MomaError('ERR_ARG', `packShardSet: the inputs hold no documents (${inputs.join(', ')})`);
  // held-out: the evalInputs' documents as they are, plus evalDocuments chosen by the seed from the inputs
  const evalCount = options.evalDocuments ?? (evalInputs.length > 0 ? 0 : defaultEvalDocuments(trainInputDocuments));
  if (evalCount >= trainInputDocuments) throw new MomaError('ERR_ARG', `packShardSet: evalDocuments ${evalCount} leaves no training documents out of ${trainInputDocuments}`);
  const isEval = new Uint8Array(documents);
  seededPermutation(trainInputDocuments, seed, EVAL_CHOICE_KEY).subarray(0, evalCount).forEach((doc) => (isEval[doc] = 1));
  isEval.fill(1, trainInputDocuments);

  // pass 2: tokenize and write, into a partial folder
  const partial = `${path.resolve(out)}.partial-${process.pid}`;
  fs.rmSync(partial, { recursive: true, force: true });
  fs.mkdirSync(partial, { recursive: true });
  const writers: Record<Split, SplitWriter> = { train: new SplitWriter(partial, 'train', layout, shardTokens), eval: new SplitWriter(partial, 'eval', layout, shardTokens) };
  const pending: { doc: number; tokens: Promise<number[]> }[] = [];
  const encode = limiter(concurrency);
  let done = 0;
  let tokens = 0;
  let encodedImages = 0;
  const writeNext = async (): Promise<void> => {
    const next = pending.shift() as { doc: number; tokens: Promise<number[]> };
    const ids = await next.tokens;
    writers[isEval[next.doc] ? 'eval' : 'train'].append(ids);
    done++;
    tokens += ids.length;
    onProgress?.({ phase: 'encode', documents: done, total: documents, images: encodedImages, tokens });
  };
  try {
    let doc = 0;
    for (const file of allInputs) {
      const folder = path.dirname(file);
      await forEachDocument(file, async (segments, where) => {
        const tokenize = async (): Promise<number[]> => {
          const parts: TokenSegment[] = await Promise.all(segments.map(async (segment): Promise<TokenSegment> => {
            if ('text' in segment) return { text: text.tokenizer.encode(segment.text) };
            const image = path.resolve(folder, segment.image);
            try {
              const codes = await encode(() => (imageTokenizer as ImageTokenizer).encodeFile(image));
              encodedImages++;
              return { codes };
            } catch (err) {
              const code = err instanceof MomaError ? err.code : 'ERR_FILE';
              throw new MomaError(code, `${where}: image ${JSON.stringify(segment.image)} (${image}): ${(err as Error).message}`);
            }
          }));
          return documentTokens(layout, parts);
        };
        const task = tokenize();
        task.catch(() => undefined); // handled when its turn to be written comes
        pending.push({ doc: doc++, tokens: task });
        if (pending.length >= 4 * concurrency) await writeNext();
      });
    }
    while (pending.length > 0) await writeNext();
    const shards = { train: writers.train.finish(), eval: writers.eval.finish() };
    if (imageTokenizer !== null) fs.writeFileSync(path.join(partial, IMAGE_TOKENIZER_FILE), imageTokenizer.toBuffer());
    if (text.bytes !== null) fs.writeFileSync(path.join(partial, TEXT_TOKENIZER_FILE), text.bytes);
    writeJsonAtomic(path.join(partial, 'vocab.json'), layout);
    // a corpus builder's record of its sources (packages, versions, licences) travels with the shards
    const sources = path.join(path.dirname(inputs[0]!), SOURCES_FILE);
    if (fs.existsSync(sources)) fs.copyFileSync(sources, path.join(partial, SOURCES_FILE));
    const index: ShardSetIndex = { format: SHARD_SET_FORMAT, version: SHARD_SET_VERSION, vocabHash: layout.hash, splits: shards };
    writeJsonAtomic(path.join(partial, 'index.json'), index);
    replaceDirAtomic(partial, out);
    const summary = (split: Split): SplitSummary => ({
      shards: shards[split].length,
      documents: shards[split].reduce((n, e) => n + e.documents, 0),
      tokens: shards[split].reduce((n, e) => n + e.tokens, 0),
      imageTokens: shards[split].reduce((n, e) => n + e.imageTokens, 0),
    });
    return {
      out, documents, images, layout, shards,
      splits: Object.fromEntries(SPLITS.map((s) => [s, summary(s)])) as Record<Split, SplitSummary>,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (err) {
    await Promise.allSettled(pending.map((p) => p.tokens));
    writers.train.abort();
    writers.eval.abort();
    fs.rmSync(partial, { recursive: true, force: true });
    if (err instanceof MomaError) throw err;
    throw new MomaError('ERR_FILE', `packShardSet: writing ${out} failed (${(err as Error).message})`);
  }
}
