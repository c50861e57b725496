/**
 * A deterministic byte-level BPE trainer that writes a Hugging Face `tokenizer.json`
 * (model BPE, ByteLevel pre-tokenizer and decoder), loaded unchanged by HFTokenizer.
 *
 * Why our own: npm has no maintained library that trains BPE with a chosen vocabulary size
 * (@huggingface/tokenizers only encodes; the `tokenizers` Node binding trains only with its
 * default trainer, 30,000 tokens and no byte alphabet). docs/DATA.md says more.
 *
 * Algorithm (GPT-2 style):
 * 1. Pre-tokenize every text segment with the GPT-2 pattern that the ByteLevel pre-tokenizer
 *    (use_regex, no prefix space) applies at encoding time, and count each distinct word.
 *    Words never merge across each other, or across segments.
 * 2. The alphabet is all 256 bytes: id b is byte b (written as GPT-2's printable character of b),
 *    so every UTF-8 string encodes and decodes exactly, seen in training or not.
 * 3. A pair's count is the number of adjacent positions (overlaps included) where it occurs,
 *    summed over words weighted by word frequency. Each step merges the pair with the highest
 *    count; ties go to the smallest (left id, right id). Within a word the pair is replaced left
 *    to right. The merged token's id is the next free one, unless the same string already has an
 *    id (two merges can spell one token), in which case it takes that id.
 * 4. Stop at `vocabSize` tokens, or earlier when no pair occurs `minFrequency` times.
 *
 * Counts are kept incrementally: a merge visits only the words that hold the pair (an index
 * from pair to words), subtracts their old pairs and adds their new ones; a max-heap with lazy
 * deletion finds the best pair. The same input gives the same file, byte for byte.
 */
import * as fs from 'fs';
import { MomaError } from '../errors';
import { decodeDocumentLine, parseDocumentLine } from './pack';

/** The GPT-2 pre-tokenization pattern (the ByteLevel pre-tokenizer with use_regex). */
const GPT2_WORD_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Ids are below this bound, so a pair (a, b) is the key a · PAIR_BASE + b. */
const PAIR_BASE = 2 ** 20;
export const MAX_BPE_VOCAB_SIZE = PAIR_BASE;
export const BYTE_ALPHABET_SIZE = 256;

/** GPT-2's map from bytes to printable characters: printable Latin-1 bytes stand for themselves, the rest for U+0100 onwards in byte order. */
export function byteLevelAlphabet(): string[] {
  const printable = (b: number): boolean => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 256;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : next++));
}

/** The GPT-2 words of a text, as the ByteLevel pre-tokenizer splits it. */
export function preTokenize(text: string): string[] {
  return text.match(GPT2_WORD_PATTERN) ?? [];
}

/** Distinct words and their counts, in order of first appearance; plus what was read. */
export class WordCounter {
  readonly counts = new Map<string, number>();
  documents = 0;
  segments = 0;
  bytes = 0;

  /** Counts the words of one text segment. */
  addText(text: string): void {
    this.segments++;
    this.bytes += Buffer.byteLength(text, 'utf8');
    for (const word of preTokenize(text)) this.counts.set(word, (this.counts.get(word) ?? 0) + 1);
  }

  /** Counts the text segments of every document of a JSON Lines file (the `moma data pack` input; images are skipped). */
  addJsonlFile(file: string): void {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (err) {
      throw new MomaError('ERR_FILE', `tokenizer train-text: ${file} cannot be read (${(err as Error).message})`);
    }
    try {
      let lineNumber = 0;
      const visit = (line: Buffer): void => {
        lineNumber++;
        const bytes = line.length > 0 && line[line.length - 1] === 0x0d ? line.subarray(0, line.length - 1) : line;
        const where = `${file}:${lineNumber}`;
        const segments = parseDocumentLine(decodeDocumentLine(bytes, where), where);
        if (segments === null) return;
        this.documents++;
        for (const segment of segments) if ('text' in segment) this.addText(segment.text);
      };
      const chunk = Buffer.alloc(1 << 22);
      let pending: Buffer[] = [];
      for (let n = readChunk(fd, chunk, file); n > 0; n = readChunk(fd, chunk, file)) {
        const data = chunk.subarray(0, n);
        let from = 0;
        for (let nl = data.indexOf(0x0a); nl >= 0; nl = data.indexOf(0x0a, from)) {
          pending.push(data.subarray(from, nl));
          visit(Buffer.concat(pending));
          pending = [];
          from = nl + 1;
        }
        if (from < n) pending.push(Buffer.from(data.subarray(from)));
      }
      if (pending.length > 0) visit(Buffer.concat(pending));
    } finally {
      fs.closeSync(fd);
    }
  }
}

function readChunk(fd: number, chunk: Buffer, file: string): number {
  try {
    return fs.readSync(fd, chunk, 0, chunk.length, null);
  } catch (err) {
    throw new MomaError('ERR_FILE', `tokenizer train-text: ${file} cannot be read (${(err as Error).message})`);
  }
}

export interface BpeTrainOptions {
  /** Tokens in the vocabulary: 256 bytes plus the merges' new tokens (at most). */
  vocabSize: number;
  /** A pair seen fewer times than this is never merged (default 2). */
  minFrequency?: number;
}

export interface BpeTrainResult {
  /** Token strings (GPT-2 byte characters) by id. */
  vocab: string[];
  /** Merges in rank order, as [left, right] token strings. */
  merges: [string, string][];
  /** True when training stopped before vocabSize because no pair was frequent enough. */
  exhausted: boolean;
  /** Words counted (with repeats) and distinct words. */
  words: number;
  distinctWords: number;
  /** UTF-8 bytes of the corpus, and the tokens the trained merges cut it into. */
  bytes: number;
  tokens: number;
}

/** A max-heap of (count, pair key): higher count first, then the smaller key. */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];

  get size(): number {
    return this.counts.length;
  }

  private before(i: number, j: number): boolean {
    const ci = this.counts[i]!;
    const cj = this.counts[j]!;
    return ci > cj || (ci === cj && this.keys[i]! < this.keys[j]!);
  }

  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j]!, this.counts[i]!];
    [this.keys[i], this.keys[j]] = [this.keys[j]!, this.keys[i]!];
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    for (let i = this.counts.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  topCount(): number {
    return this.counts[0]!;
  }

  topKey(): number {
    return this.keys[0]!;
  }

  pop(): void {
    const last = this.counts.length - 1;
    this.swap(0, last);
    this.counts.pop();
    this.keys.pop();
    for (let i = 0; ;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let best = i;
      if (left < last && this.before(left, best)) best = left;
      if (right < last && this.before(right, best)) best = right;
      if (best === i) break;
      this.swap(i, best);
      i = best;
    }
  }
}

/** Trains byte-level BPE merges on counted words (see the file's comment for the algorithm). */
export function trainByteLevelBpe(counter: WordCounter, options: BpeTrainOptions): BpeTrainResult {
  const { vocabSize } = options;
  const minFrequency = options.minFrequency ?? 2;
  if (!Number.isSafeInteger(vocabSize) || vocabSize < BYTE_ALPHABET_SIZE || vocabSize > MAX_BPE_VOCAB_SIZE) {
    throw new MomaError('ERR_ARG', `trainByteLevelBpe: vocabSize must be an integer in [${BYTE_ALPHABET_SIZE}, ${MAX_BPE_VOCAB_SIZE}], got ${String(vocabSize)}`);
  }
  if (!Number.isSafeInteger(minFrequency) || minFrequency < 1) {
    throw new MomaError('ERR_ARG', `trainByteLevelBpe: minFrequency must be an integer >= 1, got ${String(minFrequency)}`);
  }
  const vocab = byteLevelAlphabet();
  const idOf = new Map(vocab.map((token, id) => [token, id]));
  const words: Int32Array[] = [];
  const frequency: number[] = [];
  let wordTotal = 0;
  let tokens = 0;
  for (const [word, count] of counter.counts) {
    words.push(Int32Array.from(Buffer.from(word, 'utf8')));
    frequency.push(count);
    wordTotal += count;
    tokens += count * words[words.length - 1]!.length;
  }
  const bytes = tokens;

  const pairCount = new Map<number, number>();
  const wordsWithPair = new Map<number, number[]>();
  const notePair = (key: number, delta: number, word: number, index: boolean): void => {
    const count = (pairCount.get(key) ?? 0) + delta;
    if (count === 0) pairCount.delete(key);
    else pairCount.set(key, count);
    if (!index) return;
    const list = wordsWithPair.get(key);
    if (list === undefined) wordsWithPair.set(key, [word]);
    else if (list[list.length - 1] !== word) list.push(word);
  };
  words.forEach((symbols, w) => {
    for (let i = 0; i + 1 < symbols.length; i++) notePair(symbols[i]! * PAIR_BASE + symbols[i + 1]!, frequency[w]!, w, true);
  });
  const heap = new PairHeap();
  for (const [key, count] of pairCount) heap.push(count, key);

  const merges: [string, string][] = [];
  const visitedAtMerge = new Int32Array(words.length).fill(-1);
  let exhausted = false;
  while (vocab.length < vocabSize) {
    while (heap.size > 0 && pairCount.get(heap.topKey()) !== heap.topCount()) heap.pop();
    if (heap.size === 0 || heap.topCount() < minFrequency) {
      exhausted = true;
      break;
    }
    const key = heap.topKey();
    heap.pop();
    const left = Math.floor(key / PAIR_BASE);
    const right = key % PAIR_BASE;
    const token = vocab[left]! + vocab[right]!;
    let merged = idOf.get(token);
    if (merged === undefined) {
      merged = vocab.length;
      vocab.push(token);
      idOf.set(token, merged);
    }
    merges.push([vocab[left]!, vocab[right]!]);

    const changed = new Set<number>();
    const step = merges.length;
    for (const w of wordsWithPair.get(key) ?? []) {
      if (visitedAtMerge[w] === step) continue;
      visitedAtMerge[w] = step;
      const old = words[w]!;
      const f = frequency[w]!;
      const next: number[] = [];
      for (let i = 0; i < old.length; i++) {
        if (i + 1 < old.length && old[i] === left && old[i + 1] === right) {
          next.push(merged);
          i++;
        } else {
          next.push(old[i]!);
        }
      }
      if (next.length === old.length) continue;
      for (let i = 0; i + 1 < old.length; i++) {
        const pair = old[i]! * PAIR_BASE + old[i + 1]!;
        notePair(pair, -f, w, false);
        changed.add(pair);
      }
      for (let i = 0; i + 1 < next.length; i++) {
        const pair = next[i]! * PAIR_BASE + next[i + 1]!;
        notePair(pair, f, w, next[i] === merged || next[i + 1] === merged);
        changed.add(pair);
      }
      tokens -= f * (old.length - next.length);
      words[w] = Int32Array.from(next);
    }
    wordsWithPair.delete(key);
    for (const pair of changed) {
      const count = pairCount.get(pair);
      if (count !== undefined) heap.push(count, pair);
    }
  }
  return { vocab, merges, exhausted, words: wordTotal, distinctWords: words.length, bytes, tokens };
}

/**
 * The tokenizer.json text of a trained vocabulary: no normalizer, ByteLevel pre-tokenizer
 * (GPT-2 pattern, no prefix space), BPE model without unknown token, ByteLevel decoder, no
 * added tokens (moma adds its own specials). Vocabulary in id order, one entry a line; merges
 * as "left right" (byte-level tokens never hold a space).
 */
export function tokenizerJson(result: Pick<BpeTrainResult, 'vocab' | 'merges'>): string {
  const byteLevel = '{ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true }';
  const vocab = result.vocab.map((token, id) => `      ${JSON.stringify(token)}: ${id}`).join(',\n');
  const merges = result.merges.map(([a, b]) => `      ${JSON.stringify(`${a} ${b}`)}`).join(',\n');
  return [
    '{',
    '  "version": "1.0",',
    '  "truncation": null,',
    '  "padding": null,',
    '  "added_tokens": [],',
    '  "normalizer": null,',
    `  "pre_tokenizer": ${byteLevel},`,
    '  "post_processor": null,',
    `  "decoder": ${byteLevel},`,
    '  "model": {',
    '    "type": "BPE",',
    '    "dropout": null,',
    '    "unk_token": null,',
    '    "continuing_subword_prefix": null,',
    '    "end_of_word_suffix": null,',
    '    "fuse_unk": false,',
    '    "byte_fallback": false,',
    '    "ignore_merges": false,',
    `    "vocab": {\n${vocab}\n    },`,
    result.merges.length === 0 ? '    "merges": []' : `    "merges": [\n${merges}\n    ]`,
    '  }',
    '}',
    '',
  ].join('\n');
}
