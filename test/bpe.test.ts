// The byte-level BPE trainer (lib/data/bpe_trainer.ts) and `moma tokenizer train-text`: the
// trained tokenizer.json loads in HFTokenizer and round-trips any UTF-8 exactly; its merges equal
// those of a naive reference trainer written here (pre-tokenized by @huggingface/tokenizers'
// own ByteLevel pre-tokenizer, every pair recounted from scratch at each merge); the vocabulary
// has the size asked for, or fewer when the pairs run out; the file is the same byte for byte
// on every run; `moma data pack --text-tokenizer` packs documents with fewer tokens than bytes.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ByteLevelPreTokenizer } from '@huggingface/tokenizers';
import { MomaError } from '../lib/errors';
import { registerDataCommands } from '../lib/cli/data';
import { runInProcess } from './support/in_process_cli';
import { registerTokenizerCommands } from '../lib/cli/tokenizer';
import { byteLevelAlphabet, preTokenize, tokenizerJson, trainByteLevelBpe, WordCounter } from '../lib/data/bpe_trainer';
import { splitDocument } from '../lib/data/document';
import { openShardSet } from '../lib/data/shard_set';
import { HFTokenizer, loadTextTokenizer } from '../lib/data/text_tokenizer';
import { SeededRandom } from '../lib/data/seeded_random';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-bpe-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const TEXTS = [
  'the cat sat on the mat. the cat is fat.',
  "a dog's life: the dog ran, the dog sat; it's the dog!",
  'numbers 12 123 1234 and 2024-01-02, 3.14159',
  'naïve café über straße — ünïcode ✓ 😀😀 🐈‍⬛ 漢字かな',
  'aaaa aaaaa bbbbbb abab ababab   spaces\tand\ttabs\n\nnew lines',
  'the the the then there these those',
];
const FIRST_MERGES = [['t', 'h'], ['th', 'e'], ['Ġ', 'the'], ['a', 'a'], ['a', 'b'], ['a', 't']];
const corpus = path.join(tmp, 'corpus.jsonl');
fs.writeFileSync(corpus, `${TEXTS.map((text, i) => JSON.stringify(i % 2 ? [{ text }, { image: 'not/read.png' }] : { text })).join('\n')}\n`);

function counted(texts: string[]): WordCounter {
  const counter = new WordCounter();
  for (const text of texts) counter.addText(text);
  return counter;
}

/** The reference: words from @huggingface/tokenizers' ByteLevel pre-tokenizer, every pair recounted at every merge. */
function naiveMerges(texts: string[], vocabSize: number, minFrequency: number): [string, string][] {
  const preTokenizer = new ByteLevelPreTokenizer({ type: 'ByteLevel', add_prefix_space: false, use_regex: true });
  const words = texts.flatMap((text) => preTokenizer.pre_tokenize_text(text, {}).map((word: string) => [...word]));
  const ids = new Map(byteLevelAlphabet().map((token, id) => [token, id]));
  const merges: [string, string][] = [];
  while (ids.size < vocabSize) {
    const counts = new Map<string, number>();
    for (const word of words) for (let i = 0; i + 1 < word.length; i++) {
      const key = JSON.stringify([word[i], word[i + 1]]);
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    let best: [string, string] | null = null;
    let bestCount = 0;
    for (const [key, count] of counts) {
      const pair = JSON.parse(key) as [string, string];
      const order = (p: [string, string]): number => ids.get(p[0])! * 2 ** 20 + ids.get(p[1])!;
      if (count > bestCount || (count === bestCount && best !== null && order(pair) < order(best))) {
        best = pair;
        bestCount = count;
      }
    }
    if (best === null || bestCount < minFrequency) break;
    merges.push(best);
    const token = best[0] + best[1];
    if (!ids.has(token)) ids.set(token, ids.size);
    for (const [w, word] of words.entries()) {
      const next: string[] = [];
      for (let i = 0; i < word.length; i++) {
        if (i + 1 < word.length && word[i] === best[0] && word[i + 1] === best[1]) {
          next.push(token);
          i++;
        } else {
          next.push(word[i]!);
        }
      }
      words[w] = next;
    }
  }
  return merges;
}


async function rejection(promise: Promise<unknown>): Promise<MomaError> {
  const err = await promise.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(MomaError);
  return err as MomaError;
}

/** Random strings of code points from ASCII, Latin-1, CJK, emoji (and joiners, variation selectors); no lone surrogates. */
function randomText(random: SeededRandom, length: number): string {
  const pools: [number, number][] = [[0x20, 0x7e], [0x09, 0x0d], [0xa0, 0x17f], [0x300, 0x36f], [0x4e00, 0x4e80], [0x1f300, 0x1f64f], [0x200d, 0x200d], [0xfe0f, 0xfe0f], [0xfeff, 0xfeff], [0x0, 0x1f], [0xe000, 0xe010], [0x10fff0, 0x10ffff]];
  let out = '';
  for (let i = 0; i < length; i++) {
    const [from, to] = pools[Math.floor(random.float() * pools.length)]!;
    out += String.fromCodePoint(from + Math.floor(random.float() * (to - from + 1)));
  }
  return out;
}

describe('byte-level BPE trainer', () => {
  test('the pre-tokenizer splits as @huggingface/tokenizers does and covers the text', () => {
    const reference = new ByteLevelPreTokenizer({ type: 'ByteLevel', add_prefix_space: false, use_regex: true });
    const alphabet = byteLevelAlphabet();
    for (const text of TEXTS) {
      const words = preTokenize(text);
      expect(words.join('')).toBe(text);
      expect(words.map((w) => [...Buffer.from(w, 'utf8')].map((b) => alphabet[b]).join(''))).toEqual(reference.pre_tokenize_text(text, {}));
    }
    expect(new Set(alphabet).size).toBe(256);
    expect([alphabet[0x20], alphabet[0x41], alphabet[0x0a], alphabet[0xff]]).toEqual(['Ġ', 'A', 'Ċ', 'ÿ']);
  });

  test('the merges are exactly those of the naive reference trainer', () => {
    for (const [vocabSize, minFrequency] of [[300, 2], [330, 1], [257, 2]] as const) {
      const result = trainByteLevelBpe(counted(TEXTS), { vocabSize, minFrequency });
      expect(result.merges).toEqual(naiveMerges(TEXTS, vocabSize, minFrequency));
    }
    // counted by hand: "th" 13 times (the ×13 with those), then "th e" 12, "Ġ the" 10, "a a" 7 (aaaa 3 + aaaaa 4,
    // overlaps counted), then "a b" and "a t" tie at 6 (abab 2 + ababab 3 + tabs 1; cat sat mat cat fat sat): b < t
    expect(trainByteLevelBpe(counted(TEXTS), { vocabSize: 262 }).merges).toEqual(FIRST_MERGES);
  });

  test('a merge that spells an existing token reuses its id', () => {
    // "ab"+"c" and "a"+"bc" both spell "abc": the vocabulary holds it once
    const texts = ['abc abc abc', 'xab xab xab xab', 'bcx bcx bcx bcx bcx', 'abc'];
    const result = trainByteLevelBpe(counted(texts), { vocabSize: 400, minFrequency: 1 });
    expect(result.merges).toEqual(naiveMerges(texts, 400, 1));
    expect(new Set(result.vocab).size).toBe(result.vocab.length);
    expect(result.vocab.length).toBeLessThanOrEqual(256 + result.merges.length);
  });

  test('a trained tokenizer.json round-trips any UTF-8 through HFTokenizer and counts its tokens right', () => {
    const result = trainByteLevelBpe(counted(TEXTS), { vocabSize: 320 });
    const file = path.join(tmp, 'roundtrip.json');
    fs.writeFileSync(file, tokenizerJson(result));
    const tokenizer = HFTokenizer.fromFile(file);
    expect(tokenizer.size).toBe(result.vocab.length);
    // the trainer's own count of the corpus's tokens is what encoding gives
    expect(TEXTS.reduce((sum, text) => sum + tokenizer.encode(text).length, 0)).toBe(result.tokens);
    expect(result.bytes).toBe(TEXTS.reduce((sum, text) => sum + Buffer.byteLength(text), 0));
    expect(result.tokens).toBeLessThan(result.bytes);
    const random = new SeededRandom(7);
    const samples = [...TEXTS, '', ' ', 'a .', "don 't , ok ?", '\u{feff}bom', '\r\n\t\0', '🐈‍⬛👩🏽‍🚀🇫🇷', 'x'.repeat(3000)];
    for (let i = 0; i < 300; i++) samples.push(randomText(random, 1 + Math.floor(random.float() * 40)));
    for (const text of samples) {
      const ids = tokenizer.encode(text);
      expect(ids.every((id) => Number.isInteger(id) && id >= 0 && id < tokenizer.size)).toBe(true);
      expect(tokenizer.decode(ids)).toBe(text);
    }
  });

  test('the vocabulary has the size asked for, or fewer when the pairs run out', () => {
    const full = trainByteLevelBpe(counted(TEXTS), { vocabSize: 280 });
    expect(full.vocab.length).toBe(280);
    expect(full.exhausted).toBe(false);
    const few = trainByteLevelBpe(counted(['abab']), { vocabSize: 1000, minFrequency: 1 });
    // a b a b → (a,b) → ab ab → (ab,ab) → abab: two merges, then no pair is left
    expect(few.merges).toEqual([['a', 'b'], ['ab', 'ab']]);
    expect(few.vocab.length).toBe(258);
    expect(few.exhausted).toBe(true);
    expect(few.tokens).toBe(1);
    expect(trainByteLevelBpe(counted(['abab']), { vocabSize: 1000 }).merges).toEqual([['a', 'b']]);
    expect(trainByteLevelBpe(counted(TEXTS), { vocabSize: 256 }).merges).toEqual([]);
    for (const vocabSize of [255, 2 ** 20 + 1, 300.5, NaN]) expect(() => trainByteLevelBpe(counted(TEXTS), { vocabSize })).toThrow(/vocabSize must be an integer in \[256, 1048576\]/);
    expect(() => trainByteLevelBpe(counted(TEXTS), { vocabSize: 300, minFrequency: 0 })).toThrow(/minFrequency must be an integer >= 1/);
  });
});

describe('moma tokenizer train-text', () => {
  test('writes the same file twice; data pack --text-tokenizer packs fewer tokens than bytes', async () => {
    const first = path.join(tmp, 'first.json');
    const second = path.join(tmp, 'second.json');
    const out = await runInProcess(registerTokenizerCommands, ['tokenizer', 'train-text', corpus, '--vocab-size', '290', '--out', first]);
    await runInProcess(registerTokenizerCommands, ['tokenizer', 'train-text', corpus, '--vocab-size', '290', '--out', second]);
    expect(fs.readFileSync(first)).toEqual(fs.readFileSync(second));
    const bytes = TEXTS.reduce((sum, text) => sum + Buffer.byteLength(text), 0);
    expect(out).toContain(`documents  6 (6 text segments, ${bytes} bytes) from ${corpus}`);
    expect(out).toMatch(/vocabulary 290 tokens \(256 bytes, 34 merges\)\n/);
    const expected = trainByteLevelBpe(counted(TEXTS), { vocabSize: 290 });
    expect(fs.readFileSync(first, 'utf8')).toBe(tokenizerJson(expected));
    expect(out).toContain(`tokens     ${expected.tokens} on the corpus`);

    const shards = path.join(tmp, 'shards');
    fs.writeFileSync(path.join(tmp, 'text-only.jsonl'), `${TEXTS.map((text) => JSON.stringify({ text })).join('\n')}\n`);
    await runInProcess(registerDataCommands, ['data', 'pack', path.join(tmp, 'text-only.jsonl'), '--out', shards, '--text-tokenizer', first, '--eval-documents', '0']);
    const set = openShardSet(shards);
    expect(set.layout.text).toMatchObject({ offset: 5, size: 290, tokenizer: { kind: 'hf', file: 'tokenizer.json' } });
    const text = loadTextTokenizer(set.layout.text.tokenizer, shards);
    expect(set.summary('train').documents).toBe(TEXTS.length);
    const decoded: string[] = [];
    let textTokens = 0;
    for (let k = 0; k < TEXTS.length; k++) {
      const segments = splitDocument(set.layout, set.document('train', k));
      const ids = (segments[0] as { text: number[] }).text;
      textTokens += ids.length;
      decoded.push(text.decode(ids));
    }
    set.close();
    expect(decoded.sort()).toEqual([...TEXTS].sort());
    expect(textTokens).toBe(expected.tokens);
    expect(textTokens).toBeLessThan(bytes);
  });

  test('fewer tokens than asked is said in the output', async () => {
    const tiny = path.join(tmp, 'tiny.jsonl');
    fs.writeFileSync(tiny, '{"text":"abab abab"}\n');
    const out = await runInProcess(registerTokenizerCommands, ['tokenizer', 'train-text', tiny, '--vocab-size', '4096', '--out', path.join(tmp, 'tiny.json')]);
    expect(out).toContain('vocabulary 258 tokens (256 bytes, 2 merges) (fewer than --vocab-size 4096: no pair left that occurs 2 times or more)');
  });

  test('bad input is a MomaError naming the file or the flag', async () => {
    const run = (args: string[]): Promise<string> => runInProcess(registerTokenizerCommands, ['tokenizer', 'train-text', ...args]);
    const out = path.join(tmp, 'bad.json');
    const missing = path.join(tmp, 'missing.jsonl');
    expect((await rejection(run([missing, '--out', out]))).message).toMatch(new RegExp(`train-text: ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} cannot be read`));
    const broken = path.join(tmp, 'broken.jsonl');
    fs.writeFileSync(broken, '{"text":"fine"}\n{"text": "unterminated\n');
    expect((await rejection(run([broken, '--out', out]))).message).toMatch(/broken\.jsonl:2: not valid JSON/);
    const latin1 = path.join(tmp, 'latin1.jsonl');
    fs.writeFileSync(latin1, Buffer.from([0x7b, 0x22, 0x74, 0x65, 0x78, 0x74, 0x22, 0x3a, 0x22, 0xe9, 0x22, 0x7d, 0x0a]));
    expect((await rejection(run([latin1, '--out', out]))).message).toMatch(/latin1\.jsonl:1: not valid UTF-8/);
    const images = path.join(tmp, 'images.jsonl');
    fs.writeFileSync(images, '{"image":"a.png"}\n[{"text":""}]\n');
    expect((await rejection(run([images, '--out', out]))).message).toMatch(/images\.jsonl hold no text \(2 documents, 1 text segments/);
    for (const [flag, value] of [['--vocab-size', '255'], ['--vocab-size', 'lots'], ['--vocab-size', '2000000'], ['--min-frequency', '0']]) {
      const err = await rejection(run([corpus, '--out', out, flag!, value!]));
      expect(err.code).toBe('ERR_ARG');
      expect(err.message).toContain(`tokenizer train-text: ${flag} must be an integer in`);
    }
    const folder = path.join(tmp, 'a-folder');
    fs.mkdirSync(path.join(folder, 'inside'), { recursive: true });
    const err = await rejection(run([corpus, '--out', folder, '--vocab-size', '260']));
    expect(err.message).toMatch(/train-text: --out: cannot write .*a-folder \(/);
    expect(fs.existsSync(out)).toBe(false);
  });
});
