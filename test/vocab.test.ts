/** Vocabulary layouts, text tokenizers and document encoding (lib/data/vocab.ts, text_tokenizer.ts, document.ts). */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { buildVocabLayout, describeId, ImageTokenizerInfo, modalityOfId, parseVocabLayout, vocabFromSpec, vocabHash } from '../lib/data/vocab';
import { ByteTokenizer, HFTokenizer, loadTextTokenizer } from '../lib/data/text_tokenizer';
import { documentTokens, splitDocument, textIds } from '../lib/data/document';
import { throwsCode, messageOf } from './support/errors';
import { byteLevelBpeJson, HF_MERGES } from './support/hf_tokenizer';

const image: ImageTokenizerInfo = { kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: 'ab'.repeat(32), imageSize: 32, patchSize: 4, codebookSize: 256, tokensPerImage: 64 };

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'moma-vocab-'));
}

describe('vocabulary layout', () => {
  const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, image);

  test('ids: specials 0..4, bytes at 5, image codes after, ranges and hash', () => {
    expect(layout.specials).toEqual({ PAD: 0, BOS: 1, EOS: 2, BOI: 3, EOI: 4 });
    expect([layout.padId, layout.bosId, layout.eosId, layout.boiId, layout.eoiId]).toEqual([0, 1, 2, 3, 4]);
    expect(layout.text).toEqual({ offset: 5, size: 256, tokenizer: { kind: 'bytes' } });
    expect(layout.image!.offset).toBe(261);
    expect(layout.size).toBe(517);
    expect(layout.ranges).toEqual([{ modality: 0, from: 0, to: 261 }, { modality: 1, from: 261, to: 517 }]);
    expect(layout.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(vocabHash(layout)).toBe(layout.hash);
  });

  test('modality of every id, and the trainer view agrees', () => {
    const info = vocabFromSpec(layout);
    for (let id = 0; id < layout.size; id++) {
      const expected = id >= 261 ? 1 : 0;
      expect(modalityOfId(layout, id)).toBe(expected);
      expect(info.modalityOf(id)).toBe(expected);
    }
    expect(modalityOfId(layout, -1)).toBe(-1);
    expect(modalityOfId(layout, 517)).toBe(-1);
    expect(modalityOfId(layout, 1.5)).toBe(-1);
    expect([0, 3, 5 + 65, 261 + 7, 900].map((id) => describeId(layout, id))).toEqual(['PAD', 'BOI', 'text:65', 'image:7', 'out-of-vocabulary:900']);
  });

  test('text-only layouts have no image range', () => {
    const textOnly = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 });
    expect(textOnly.size).toBe(261);
    expect(textOnly.image).toBeNull();
    expect(textOnly.ranges).toEqual([{ modality: 0, from: 0, to: 261 }]);
    expect(textOnly.hash).not.toBe(layout.hash);
  });

  test('the hash changes with anything that changes the ids or tokenizers, not with key order', () => {
    const other = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, { ...image, sha256: 'cd'.repeat(32) });
    expect(other.hash).not.toBe(layout.hash);
    const reverseKeys = (v: unknown): unknown => (Array.isArray(v) ? v.map(reverseKeys)
      : v !== null && typeof v === 'object' ? Object.fromEntries(Object.entries(v).reverse().map(([k, x]) => [k, reverseKeys(x)])) : v);
    const reordered = reverseKeys(layout) as typeof layout;
    expect(Object.keys(reordered)[0]).toBe('hash');
    expect(vocabHash(reordered)).toBe(layout.hash);
  });

  test('parse: a JSON round trip is accepted; edits and bad keys are refused naming the key', () => {
    const parsed = parseVocabLayout(JSON.parse(JSON.stringify(layout)), 'vocab.json');
    expect(parsed).toEqual(layout);
    const edited = { ...JSON.parse(JSON.stringify(layout)), size: 600 };
    expect(messageOf(() => parseVocabLayout({ ...edited }, 'x/vocab.json'))).toMatch(/x\/vocab\.json.*'hash'/);
    const consistent = { ...edited, hash: vocabHash(edited) };
    expect(messageOf(() => parseVocabLayout(consistent, 'v.json'))).toMatch(/'size' is 600, but the tokenizers give 517/);
    const extra = { ...JSON.parse(JSON.stringify(layout)), colour: 'red' };
    expect(messageOf(() => parseVocabLayout({ ...extra, hash: vocabHash(extra) }, 'v.json'))).toMatch(/'colour' is not a vocabulary key/);
    expect(messageOf(() => parseVocabLayout({ ...layout, format: 'other' }, 'v.json'))).toMatch(/'format'/);
    expect(messageOf(() => parseVocabLayout({ ...layout, version: 2 }, 'v.json'))).toMatch(/'version'/);
    expect(messageOf(() => parseVocabLayout({ ...layout, text: { ...layout.text, size: 0 } }, 'v.json'))).toMatch(/'text\.size'/);
    expect(messageOf(() => parseVocabLayout({ ...layout, image: { ...layout.image, tokenizer: { ...image, patchSize: 0 } } }, 'v.json'))).toMatch(/'image\.tokenizer\.patchSize'/);
    expect(messageOf(() => parseVocabLayout([], 'v.json'))).toMatch(/'\(root\)'/);
    throwsCode(() => parseVocabLayout(null, 'v.json'), 'ERR_FILE');
  });

  test('tokenizer files named in a vocab.json are plain names inside the folder and not moma\'s own files', () => {
    const bad = ['../../etc/passwd', '/etc/passwd', 'sub/codebook.safetensors', '..', 'model.safetensors', 'Optimizer.rank-00000-of-00002.safetensors', 'run.json', 'a\u001bb'];
    for (const file of bad) {
      const imageLayout = JSON.parse(JSON.stringify(buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, { ...image, file }))) as unknown;
      expect(messageOf(() => parseVocabLayout(imageLayout, 'v.json'))).toMatch(/^v\.json: vocabulary key 'image\.tokenizer\.file' (must be a plain file name|is a name moma reserves)/);
      const textLayout = JSON.parse(JSON.stringify(buildVocabLayout({ tokenizer: { kind: 'hf', file, sha256: 'cd'.repeat(32) }, size: 300 }))) as unknown;
      throwsCode(() => parseVocabLayout(textLayout, 'v.json'), 'ERR_FILE');
      expect(messageOf(() => parseVocabLayout(textLayout, 'v.json'))).toContain("'text.tokenizer.file'");
    }
    expect(parseVocabLayout(JSON.parse(JSON.stringify(layout)) as unknown, 'v.json').image!.tokenizer.file).toBe('image_tokenizer.safetensors');
  });

  test('inconsistent image tokenizers are refused', () => {
    throwsCode(() => buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, { ...image, tokensPerImage: 63 }), 'ERR_ARG');
    throwsCode(() => buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 0 }), 'ERR_ARG');
  });
});

describe('byte tokenizer', () => {
  const bytes = new ByteTokenizer();

  test('encodes UTF-8 bytes and decodes them back, for ASCII and multi-byte text', () => {
    expect(bytes.encode('Hi!')).toEqual([72, 105, 33]);
    expect(bytes.encode('é')).toEqual([0xc3, 0xa9]);
    for (const text of ['', 'a red circle in the top left.', 'ünïcödé 🎉 — 漢字', '\n\t\0']) {
      const ids = bytes.encode(text);
      expect(ids).toEqual([...Buffer.from(text, 'utf8')]);
      expect(bytes.decode(ids)).toBe(text);
    }
  });

  test('refuses non-byte ids', () => {
    throwsCode(() => bytes.decode([65, 256]), 'ERR_RANGE');
    throwsCode(() => bytes.decode([-1]), 'ERR_RANGE');
    throwsCode(() => bytes.decode([1.5]), 'ERR_RANGE');
    throwsCode(() => bytes.encode(5 as unknown as string), 'ERR_ARG');
  });
});

describe('Hugging Face tokenizer.json', () => {
  const dir = tmpdir();
  const file = path.join(dir, 'tokenizer.json');
  fs.writeFileSync(file, JSON.stringify(byteLevelBpeJson()));

  test('loads, applies merges, and round-trips arbitrary text', () => {
    const tok = HFTokenizer.fromFile(file);
    expect(tok.size).toBe(1 + 256 + HF_MERGES.length);
    expect(tok.info).toEqual({ kind: 'hf', file: 'tokenizer.json', sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    // "hello world": hello and Ġwo are merges, then r l d are single byte symbols
    expect(tok.encode('hello world')).toEqual([257 + 3, 257 + 5, 1 + 0x72, 1 + 0x6c, 1 + 0x64]);
    for (const text of ['hello world', 'ünïcödé 🎉', 'a  b\n\nc', '']) expect(tok.decode(tok.encode(text))).toBe(text);
    throwsCode(() => tok.decode([tok.size]), 'ERR_RANGE');
  });

  test('the layout offsets its ids; loadTextTokenizer checks the SHA-256', () => {
    const tok = HFTokenizer.fromFile(file);
    const layout = buildVocabLayout({ tokenizer: tok.info, size: tok.size }, image);
    expect(layout.image!.offset).toBe(5 + tok.size);
    expect(textIds(layout, tok, 'hello')).toEqual([5 + 260]);
    const again = loadTextTokenizer(layout.text.tokenizer, dir);
    expect(again.encode('hello world')).toEqual(tok.encode('hello world'));
    throwsCode(() => loadTextTokenizer({ kind: 'hf', file: 'tokenizer.json', sha256: '0'.repeat(64) }, dir), 'ERR_FILE');
    expect(loadTextTokenizer({ kind: 'bytes' }, dir)).toBeInstanceOf(ByteTokenizer);
  });

  test('missing, non-JSON and non-tokenizer files are refused naming the file', () => {
    const bad = path.join(dir, 'bad.json');
    fs.writeFileSync(bad, '{"model": ');
    const notTok = path.join(dir, 'other.json');
    fs.writeFileSync(notTok, '{"hello": 1}');
    for (const f of [path.join(dir, 'missing.json'), bad, notTok]) {
      expect(messageOf(() => HFTokenizer.fromFile(f))).toContain(f);
      throwsCode(() => HFTokenizer.fromFile(f), 'ERR_FILE');
    }
  });
});

describe('documents', () => {
  const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }, { ...image, imageSize: 8, patchSize: 4, tokensPerImage: 4, codebookSize: 16 });
  const bytes = new ByteTokenizer();

  test('BOS, text ids, BOI codes EOI, EOS — and split back', () => {
    const ids = documentTokens(layout, [{ text: bytes.encode('ab') }, { codes: [0, 15, 3, 3] }, { text: bytes.encode('c') }]);
    const o = layout.image!.offset;
    expect(ids).toEqual([1, 5 + 97, 5 + 98, 3, o, o + 15, o + 3, o + 3, 4, 5 + 99, 2]);
    expect(splitDocument(layout, ids)).toEqual([{ text: [97, 98] }, { codes: [0, 15, 3, 3] }, { text: [99] }]);
    expect(documentTokens(layout, [])).toEqual([1, 2]);
    // image first, two images in a row
    const two = documentTokens(layout, [{ codes: [1, 2, 3, 4] }, { codes: [5, 6, 7, 8] }]);
    expect(splitDocument(layout, two)).toEqual([{ codes: [1, 2, 3, 4] }, { codes: [5, 6, 7, 8] }]);
  });

  test('wrong image lengths, codes and ids are refused', () => {
    throwsCode(() => documentTokens(layout, [{ codes: [1, 2, 3] }]), 'ERR_SHAPE');
    throwsCode(() => documentTokens(layout, [{ codes: [1, 2, 3, 16] }]), 'ERR_RANGE');
    throwsCode(() => documentTokens(layout, [{ text: [256] }]), 'ERR_RANGE');
    throwsCode(() => documentTokens(buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 256 }), [{ codes: [1] }]), 'ERR_ARG');
    throwsCode(() => splitDocument(layout, [1, layout.size]), 'ERR_RANGE');
  });
});

test('a tokenizer.json whose vocabulary has no id for a word is refused, not passed on as undefined', () => {
  const dir = tmpdir();
  const file = path.join(dir, 'wordlevel.json');
  fs.writeFileSync(file, JSON.stringify({
    version: '1.0', added_tokens: [], normalizer: null, pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null,
    model: { type: 'WordLevel', vocab: { red: 0, circle: 1 }, unk_token: '[UNK]' },
  }));
  const tok = HFTokenizer.fromFile(file);
  expect(tok.encode('red circle')).toEqual([0, 1]);
  throwsCode(() => tok.encode('red square'), 'ERR_RANGE');
});
