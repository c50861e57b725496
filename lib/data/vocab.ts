/**
 * The vocabulary layout: one id space for every modality, stored as data (vocab.json) with every
 * checkpoint and shard set. Ids are laid out as
 *
 *   [0, 5)                         specials PAD, BOS, EOS, BOI, EOI (text tokens)
 *   [text.offset, +text.size)      the text tokenizer's ids (bytes, or a tokenizer.json vocabulary)
 *   [image.offset, +image.size)    the image tokenizer's codebook entries
 *
 * A layout is a VocabSpec (padId, bosId, ranges: what the trainer and evaluation need, turned
 * into a VocabInfo by `vocabFromSpec`) plus what a reader needs to rebuild the tokenizers;
 * `hash` is the SHA-256 of its canonical JSON without the hash itself, and shards record it so
 * a shard set can't be read with the wrong vocabulary.
 */
import { createHash } from 'crypto';
import { describeKey, describeValue } from '../checked';
import { MomaError } from '../errors';
import { fileNameProblem } from '../io/files';

/** Vocabulary description stored as JSON: pad and BOS ids, and id ranges [from, to) per modality id (others: modality 0). */
export interface VocabSpec {
  padId: number;
  bosId?: number;
  ranges: { modality: number; from: number; to: number }[];
}

/** How token ids map to modalities (the trainer and evaluation take one; `vocabFromSpec` makes it from a VocabSpec). */
export interface VocabInfo {
  padId: number;
  bosId?: number;
  modalityOf(id: number): number;
}

/** Checks a VocabSpec (ERR_ARG) and returns its VocabInfo. */
export function vocabFromSpec(spec: VocabSpec): VocabInfo {
  if (typeof spec !== 'object' || spec === null || !Number.isInteger(spec.padId) || !Array.isArray(spec.ranges)) {
    throw new MomaError('ERR_ARG', 'vocabulary: expected { padId, bosId?, ranges: [{ modality, from, to }] }');
  }
  const ranges = [...spec.ranges].sort((a, b) => a.from - b.from);
  ranges.forEach((r, i) => {
    if (!Number.isInteger(r.modality) || r.modality < 0 || !Number.isInteger(r.from) || !Number.isInteger(r.to) || r.from < 0 || r.to <= r.from) {
      throw new MomaError('ERR_ARG', `vocabulary: range ${i} (from ${describeValue(r.from)}, to ${describeValue(r.to)}, modality ${describeValue(r.modality)}) must have integer 0 <= from < to and a modality >= 0`);
    }
    const prev = ranges[i - 1];
    if (prev !== undefined && r.from < prev.to) {
      throw new MomaError('ERR_ARG', `vocabulary: ranges [${prev.from}, ${prev.to}) and [${r.from}, ${r.to}) overlap`);
    }
  });
  for (const [name, id] of [['padId', spec.padId], ['bosId', spec.bosId]] as const) {
    if (id !== undefined && ranges.some((r) => r.modality !== 0 && id >= r.from && id < r.to)) {
      throw new MomaError('ERR_ARG', `vocabulary: ${name} ${id} lies in a non-text range (the specials are text tokens)`);
    }
  }
  return {
    padId: spec.padId,
    bosId: spec.bosId,
    modalityOf: (id: number): number => spec.ranges.find((r) => id >= r.from && id < r.to)?.modality ?? 0,
  };
}

export const SPECIALS = ['PAD', 'BOS', 'EOS', 'BOI', 'EOI'] as const;
export type SpecialName = (typeof SPECIALS)[number];

/** The text tokenizer a layout was built with: UTF-8 bytes, or a Hugging Face tokenizer.json. */
export type TextTokenizerInfo =
  | { kind: 'bytes' }
  | { kind: 'hf'; file: string; sha256: string };

/** The image tokenizer a layout was built with: a k-means codebook over p×p RGB patches. */
export interface ImageTokenizerInfo {
  kind: 'vq-patch';
  /** File name of the codebook (safetensors), next to vocab.json. */
  file: string;
  sha256: string;
  imageSize: number;
  patchSize: number;
  codebookSize: number;
  /** (imageSize / patchSize)²: the fixed number of codes between BOI and EOI. */
  tokensPerImage: number;
}

export interface VocabLayout extends VocabSpec {
  format: 'moma-vocab';
  version: 1;
  /** Total number of ids (the model's vocabSize must be at least this). */
  size: number;
  modalities: string[];
  specials: Record<SpecialName, number>;
  padId: number;
  bosId: number;
  eosId: number;
  boiId: number;
  eoiId: number;
  text: { offset: number; size: number; tokenizer: TextTokenizerInfo };
  image: { offset: number; size: number; tokenizer: ImageTokenizerInfo } | null;
  hash: string;
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** SHA-256 (hex) of the layout's canonical JSON, without its `hash` field. */
export function vocabHash(layout: Omit<VocabLayout, 'hash'> & { hash?: string }): string {
  const { hash: _ignored, ...rest } = layout;
  return createHash('sha256').update(canonical(rest)).digest('hex');
}

/** Builds the layout for a text tokenizer of `textSize` ids and an optional image tokenizer. */
export function buildVocabLayout(text: { tokenizer: TextTokenizerInfo; size: number }, image?: ImageTokenizerInfo | null): VocabLayout {
  if (!Number.isInteger(text.size) || text.size < 1) throw new MomaError('ERR_ARG', `buildVocabLayout: text size must be an integer >= 1, got ${String(text.size)}`);
  const specials = Object.fromEntries(SPECIALS.map((name, i) => [name, i])) as Record<SpecialName, number>;
  const textOffset = SPECIALS.length;
  const imageOffset = textOffset + text.size;
  if (image && (!Number.isInteger(image.codebookSize) || image.codebookSize < 1 || image.tokensPerImage !== (image.imageSize / image.patchSize) ** 2)) {
    throw new MomaError('ERR_ARG', `buildVocabLayout: image tokenizer ${JSON.stringify(image)} is inconsistent`);
  }
  const size = imageOffset + (image ? image.codebookSize : 0);
  const ranges: VocabSpec['ranges'] = [{ modality: 0, from: 0, to: imageOffset }];
  if (image) ranges.push({ modality: 1, from: imageOffset, to: size });
  const layout: Omit<VocabLayout, 'hash'> = {
    format: 'moma-vocab', version: 1, size, modalities: ['text', 'image'], specials,
    padId: specials.PAD, bosId: specials.BOS, eosId: specials.EOS, boiId: specials.BOI, eoiId: specials.EOI,
    ranges,
    text: { offset: textOffset, size: text.size, tokenizer: text.tokenizer },
    image: image ? { offset: imageOffset, size: image.codebookSize, tokenizer: { ...image } } : null,
  };
  return { ...layout, hash: vocabHash(layout) };
}

/** Checks a parsed vocab.json (from `where`, named in errors) and returns it typed. */
export function parseVocabLayout(value: unknown, where: string): VocabLayout {
  const fail = (key: string, what: string): never => {
    throw new MomaError('ERR_FILE', `${where}: vocabulary key '${key}' ${what}`);
  };
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail('(root)', 'must be an object');
  const v = value as Record<string, unknown>;
  if (v.format !== 'moma-vocab') fail('format', `must be "moma-vocab", got ${describeValue(v.format)}`);
  if (v.version !== 1) fail('version', `must be 1, got ${describeValue(v.version)}`);
  const text = v.text as VocabLayout['text'] | undefined;
  if (!text || typeof text !== 'object' || !Number.isInteger(text.size) || text.size < 1) fail('text.size', 'must be an integer >= 1');
  const tok = text!.tokenizer as TextTokenizerInfo | undefined;
  if (!tok || (tok.kind !== 'bytes' && tok.kind !== 'hf')) fail('text.tokenizer.kind', 'must be "bytes" or "hf"');
  if (tok!.kind === 'hf' && (typeof tok!.file !== 'string' || typeof tok!.sha256 !== 'string')) fail('text.tokenizer', 'of kind "hf" needs file and sha256');
  const image = v.image as VocabLayout['image'] | undefined;
  if (image !== null && (typeof image !== 'object' || image === undefined)) fail('image', 'must be an object or null');
  if (image) {
    const t = image.tokenizer as ImageTokenizerInfo | undefined;
    if (!t || t.kind !== 'vq-patch') fail('image.tokenizer.kind', 'must be "vq-patch"');
    for (const key of ['imageSize', 'patchSize', 'codebookSize', 'tokensPerImage'] as const) {
      if (!Number.isInteger(t![key]) || t![key] < 1) fail(`image.tokenizer.${key}`, 'must be an integer >= 1');
    }
    if (typeof t!.file !== 'string' || typeof t!.sha256 !== 'string') fail('image.tokenizer', 'needs file and sha256');
  }
  for (const [key, file] of [['text.tokenizer.file', tok!.kind === 'hf' ? tok!.file : undefined], ['image.tokenizer.file', image ? image.tokenizer.file : undefined]] as const) {
    if (file === undefined) continue;
    const problem = fileNameProblem(file);
    if (problem !== null) fail(key, problem);
  }
  const computed = vocabHash(v as unknown as VocabLayout);
  if (v.hash !== computed) {
    fail('hash', `does not match the contents (stored ${describeValue(v.hash)}, computed ${computed}): the file was edited or damaged`);
  }
  const rebuilt = buildVocabLayout({ tokenizer: tok!, size: text!.size }, image ? image.tokenizer : null);
  const extra = Object.keys(v).find((key) => !(key in rebuilt));
  if (extra !== undefined) throw new MomaError('ERR_FILE', `${where}: vocabulary key ${describeKey(extra)} is not a vocabulary key`);
  for (const key of Object.keys(rebuilt) as (keyof VocabLayout)[]) {
    if (key !== 'hash' && canonical(v[key]) !== canonical(rebuilt[key])) fail(key, `is ${describeValue(v[key])}, but the tokenizers give ${describeValue(rebuilt[key])}`);
  }
  return rebuilt;
}

/** The modality id (0 text, 1 image) of a token id, or -1 when the id is outside the layout. */
export function modalityOfId(layout: VocabLayout, id: number): number {
  if (!Number.isInteger(id) || id < 0 || id >= layout.size) return -1;
  return layout.image !== null && id >= layout.image.offset ? 1 : 0;
}

/** The display name of a token id: a special's name, `text:<n>` or `image:<code>`. */
export function describeId(layout: VocabLayout, id: number): string {
  const special = SPECIALS.find((name) => layout.specials[name] === id);
  if (special) return special;
  if (layout.image !== null && id >= layout.image.offset && id < layout.size) return `image:${id - layout.image.offset}`;
  if (id >= layout.text.offset && id < layout.text.offset + layout.text.size) return `text:${id - layout.text.offset}`;
  return `out-of-vocabulary:${id}`;
}
