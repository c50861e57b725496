/**
 * `moma data corpus`: a real mixed-modal corpus from installed registry packages, written as the
 * JSON Lines documents `moma data pack` reads (docs/DATA.md, "A real mixed-modal corpus").
 *
 * Output folder:
 *   images/<codepoints>.png  every emoji image (lib/data/corpus/emoji.ts), alpha flattened onto
 *                            white and resized to imageSize × imageSize (sharp, cover fit)
 *   train.jsonl              the training documents
 *   heldout.jsonl            the held-out documents
 *   sources.json             each source's package name, version and licence, the document
 *                            counts per kind and split, and the options used
 *
 * Documents, in this order: for each image (emoji-datasource's sort order) a caption → image
 * document [{"text": caption}, {"image": …}] and an image → caption document [{"image": …},
 * {"text": caption}]; then one text document per GCIDE entry, then one per WordNet synset
 * (lib/data/corpus/debian.ts). The split is a seeded hash: a document is held out when the first
 * 32 bits of SHA-256(seed, NUL, key), as a fraction of 2^32, are below `heldout`. The key of an
 * image is its base emoji, so an emoji and its skin-tone variants are all held out or all
 * trained on: no held-out image shares an emoji with a training image. `maxTextDocuments` keeps
 * that many documents of each text source, those whose SHA-256(seed, NUL, "select", NUL, key)
 * is smallest, in source order. Everything is a function of the packages and the options.
 */
import { spawnSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import sharp from 'sharp';
import { MomaError } from '../../errors';
import { checkOutFolder, replaceDirAtomic, writeFileAtomic, writeJsonAtomic } from '../../io/files';
import { GCIDE_PACKAGE, readDebianPackage, readGcide, readWordnet, TextDocument, WORDNET_PACKAGE } from './debian';
import { emojiInstallCommand, EmojiImage, readEmojiSource } from './emoji';

export const CORPUS_FORMAT = 'moma-corpus';
export const CORPUS_VERSION = 1;
export const CORPUS_IMAGE_SIZES = [32, 64] as const;
export const TEXT_SOURCES = ['gcide', 'wordnet'] as const;
export type TextSource = (typeof TEXT_SOURCES)[number];
export const DOCUMENT_KINDS = ['text-image', 'image-text', 'dictionary', 'gloss'] as const;
export type DocumentKind = (typeof DOCUMENT_KINDS)[number];
export const CORPUS_SPLITS = ['train', 'heldout'] as const;
export type CorpusSplit = (typeof CORPUS_SPLITS)[number];

export interface CorpusOptions {
  /** The folder the npm packages are installed in (`npm install --prefix <sources> …`). */
  sources: string;
  /** The corpus folder to create. */
  out: string;
  /** emoji-datasource image set (default google). */
  emojiSet?: string;
  /** Image side in pixels, 32 (default) or 64. */
  imageSize?: number;
  /** Fraction of emoji and text documents held out, in [0, 1) (default 0.05). */
  heldout?: number;
  /** Seeds the split and the text selection (default 0). */
  seed?: number;
  /** Where the Debian packages' files are (default "/"). */
  debianRoot?: string;
  /** Text sources to include (default both). */
  text?: TextSource[];
  /** At most this many documents of each text source (default: all). */
  maxTextDocuments?: number | null;
  /** Replace a non-empty `out`. */
  force?: boolean;
  /** Images resized at once (default 4). */
  concurrency?: number;
}

export interface CorpusSource {
  kind: 'npm' | 'debian';
  name: string;
  version: string;
  license: string;
  /** Where the licence was read, relative to the sources folder (npm) or the Debian root. */
  licenseFile: string;
  /** What the corpus takes from it. */
  provides: string;
  /** The licence of the images, where it differs from the package's. */
  imagesLicense?: string;
}

export type KindCounts = Record<DocumentKind, number>;

/** sources.json. */
export interface CorpusManifest {
  format: typeof CORPUS_FORMAT;
  version: typeof CORPUS_VERSION;
  options: { emojiSet: string; imageSize: number; heldout: number; seed: number; text: TextSource[]; maxTextDocuments: number | null; imageBackground: 'white' };
  sources: CorpusSource[];
  files: Record<CorpusSplit, string>;
  images: Record<CorpusSplit, number>;
  emoji: Record<CorpusSplit, number>;
  documents: Record<CorpusSplit, KindCounts>;
}

export interface CorpusReport {
  out: string;
  manifest: CorpusManifest;
  /** Bytes of images/, train.jsonl, heldout.jsonl. */
  bytes: { images: number; train: number; heldout: number };
  seconds: number;
}

type Segment = { text: string } | { image: string };

/** The first 32 bits of SHA-256 of the parts joined by NUL, as a fraction of 2^32. */
function hashFraction(...parts: string[]): number {
  return createHash('sha256').update(parts.join('\0')).digest().readUInt32BE(0) / 0x100000000;
}

/** Whether the document with this split key is held out. */
export function isHeldOut(seed: number, key: string, heldout: number): boolean {
  return hashFraction(String(seed), key) < heldout;
}

/** The `limit` documents with the smallest selection hash, in their original order. */
function selectText(documents: TextDocument[], seed: number, limit: number | null): TextDocument[] {
  if (limit === null || documents.length <= limit) return documents;
  const ranked = documents.map((d, i) => ({ i, h: hashFraction(String(seed), 'select', d.key) })).sort((a, b) => a.h - b.h || a.i - b.i);
  const kept = new Set(ranked.slice(0, limit).map((r) => r.i));
  return documents.filter((_, i) => kept.has(i));
}

/** Runs `npm install --prefix <sources> emoji-datasource-<set>@16 emojibase-data@17`, output to the terminal. */
export function installEmojiPackages(sources: string, set: string): void {
  const [command, ...args] = emojiInstallCommand(sources, set) as [string, ...string[]];
  fs.mkdirSync(sources, { recursive: true });
  const result = spawnSync(command, args, { stdio: 'inherit' });
  if (result.error !== undefined || result.status !== 0) {
    throw new MomaError('ERR_FILE', `corpus: ${[command, ...args].join(' ')} failed (${result.error?.message ?? `exit status ${String(result.status)}`})`);
  }
}

function checkOptions(o: CorpusOptions): Required<Omit<CorpusOptions, 'maxTextDocuments'>> & { maxTextDocuments: number | null } {
  if (o === null || typeof o !== 'object') throw new MomaError('ERR_ARG', 'buildCorpus: options must be an object');
  for (const key of ['sources', 'out'] as const) {
    if (typeof o[key] !== 'string' || o[key] === '') throw new MomaError('ERR_ARG', `buildCorpus: ${key} must be a non-empty path, got ${JSON.stringify(o[key])}`);
  }
  const imageSize = o.imageSize ?? 32;
  if (!(CORPUS_IMAGE_SIZES as readonly number[]).includes(imageSize)) throw new MomaError('ERR_ARG', `buildCorpus: imageSize must be ${CORPUS_IMAGE_SIZES.join(' or ')}, got ${String(imageSize)}`);
  const heldout = o.heldout ?? 0.05;
  if (typeof heldout !== 'number' || !(heldout >= 0 && heldout < 1)) throw new MomaError('ERR_ARG', `buildCorpus: heldout must be a fraction in [0, 1), got ${String(heldout)}`);
  const seed = o.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new MomaError('ERR_ARG', `buildCorpus: seed must be an integer >= 0, got ${String(seed)}`);
  const text = o.text ?? [...TEXT_SOURCES];
  if (!Array.isArray(text) || text.some((t) => !(TEXT_SOURCES as readonly string[]).includes(t)) || new Set(text).size !== text.length) {
    throw new MomaError('ERR_ARG', `buildCorpus: text must be a list of distinct sources from ${TEXT_SOURCES.join(', ')}, got ${JSON.stringify(text)}`);
  }
  const maxTextDocuments = o.maxTextDocuments ?? null;
  if (maxTextDocuments !== null && (!Number.isSafeInteger(maxTextDocuments) || maxTextDocuments < 0)) {
    throw new MomaError('ERR_ARG', `buildCorpus: maxTextDocuments must be an integer >= 0, got ${String(maxTextDocuments)}`);
  }
  const concurrency = o.concurrency ?? 4;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) throw new MomaError('ERR_ARG', `buildCorpus: concurrency must be an integer >= 1, got ${String(concurrency)}`);
  return {
    sources: o.sources, out: o.out, emojiSet: o.emojiSet ?? 'google', imageSize, heldout, seed,
    debianRoot: o.debianRoot ?? '/', text: TEXT_SOURCES.filter((t) => text.includes(t)), maxTextDocuments, force: o.force === true, concurrency,
  };
}

async function writeImage(image: EmojiImage, file: string, size: number): Promise<void> {
  try {
    await sharp(image.file).flatten({ background: '#ffffff' }).resize(size, size, { fit: 'cover', position: 'centre' }).png().toFile(file);
  } catch (err) {
    throw new MomaError('ERR_FILE', `corpus: image ${image.file} cannot be converted (${(err as Error).message})`);
  }
}

const zeroCounts = (): KindCounts => ({ 'text-image': 0, 'image-text': 0, dictionary: 0, gloss: 0 });

/** Builds the corpus folder `out` (see the file comment). */
export async function buildCorpus(options: CorpusOptions): Promise<CorpusReport> {
  const started = performance.now();
  const o = checkOptions(options);
  checkOutFolder('buildCorpus', o.out, o.force);
  const emoji = readEmojiSource(o.sources, o.emojiSet);
  const texts: { source: TextSource; kind: DocumentKind; documents: TextDocument[]; info: CorpusSource }[] = o.text.map((source) => {
    const name = source === 'gcide' ? GCIDE_PACKAGE : WORDNET_PACKAGE;
    const documents = selectText(source === 'gcide' ? readGcide(o.debianRoot) : readWordnet(o.debianRoot), o.seed, o.maxTextDocuments);
    const info = readDebianPackage(o.debianRoot, name);
    return {
      source, kind: source === 'gcide' ? 'dictionary' : 'gloss', documents,
      info: {
        kind: 'debian', name, version: info.version, license: info.license, licenseFile: path.relative(o.debianRoot, info.copyright),
        provides: source === 'gcide' ? 'dictionary entries (text documents)' : 'synset glosses (text documents)',
      },
    };
  });

  const partial = `${path.resolve(o.out)}.partial-${process.pid}`;
  fs.rmSync(partial, { recursive: true, force: true });
  fs.mkdirSync(path.join(partial, 'images'), { recursive: true });
  try {
    const lines: Record<CorpusSplit, string[]> = { train: [], heldout: [] };
    const documents: Record<CorpusSplit, KindCounts> = { train: zeroCounts(), heldout: zeroCounts() };
    const images: Record<CorpusSplit, number> = { train: 0, heldout: 0 };
    const emojiSplit = new Map<string, CorpusSplit>();
    const add = (split: CorpusSplit, kind: DocumentKind, segments: Segment[]): void => {
      lines[split].push(JSON.stringify(segments.length === 1 ? segments[0] : segments));
      documents[split][kind]++;
    };
    const names = new Set<string>();
    for (const image of emoji.images) {
      const name = `images/${image.codepoints.toLowerCase()}.png`;
      if (names.has(name)) throw new MomaError('ERR_FILE', `corpus: two images of ${o.sources} have the codepoints ${image.codepoints}`);
      names.add(name);
      const split: CorpusSplit = isHeldOut(o.seed, `emoji:${image.emoji}`, o.heldout) ? 'heldout' : 'train';
      emojiSplit.set(image.emoji, split);
      images[split]++;
      add(split, 'text-image', [{ text: image.caption }, { image: name }]);
      add(split, 'image-text', [{ image: name }, { text: image.caption }]);
    }
    for (let i = 0; i < emoji.images.length; i += o.concurrency) {
      await Promise.all(emoji.images.slice(i, i + o.concurrency).map((image) => writeImage(image, path.join(partial, 'images', `${image.codepoints.toLowerCase()}.png`), o.imageSize)));
    }
    for (const { kind, documents: list } of texts) {
      for (const d of list) add(isHeldOut(o.seed, d.key, o.heldout) ? 'heldout' : 'train', kind, [{ text: d.text }]);
    }
    const bytes = { images: 0, train: 0, heldout: 0 };
    for (const split of CORPUS_SPLITS) {
      const text = lines[split].length === 0 ? '' : `${lines[split].join('\n')}\n`;
      writeFileAtomic(path.join(partial, `${split}.jsonl`), text);
      bytes[split] = Buffer.byteLength(text);
    }
    for (const file of fs.readdirSync(path.join(partial, 'images'))) bytes.images += fs.statSync(path.join(partial, 'images', file)).size;
    const emojiCounts = { train: 0, heldout: 0 };
    for (const split of emojiSplit.values()) emojiCounts[split]++;
    const [imagesPackage, dataPackage] = emoji.packages as [typeof emoji.packages[0], typeof emoji.packages[0]];
    const manifest: CorpusManifest = {
      format: CORPUS_FORMAT, version: CORPUS_VERSION,
      options: { emojiSet: o.emojiSet, imageSize: o.imageSize, heldout: o.heldout, seed: o.seed, text: o.text, maxTextDocuments: o.maxTextDocuments, imageBackground: 'white' },
      sources: [
        {
          kind: 'npm', name: imagesPackage.name, version: imagesPackage.version, license: imagesPackage.license, licenseFile: `node_modules/${imagesPackage.name}/package.json`,
          provides: `emoji images (img/${o.emojiSet}/64), names, short names, categories`, imagesLicense: emoji.imagesLicense,
        },
        { kind: 'npm', name: dataPackage.name, version: dataPackage.version, license: dataPackage.license, licenseFile: `node_modules/${dataPackage.name}/package.json`, provides: 'emoji labels and tags (en/data.json)' },
        ...texts.map((t) => t.info),
      ],
      files: { train: 'train.jsonl', heldout: 'heldout.jsonl' },
      images, emoji: emojiCounts, documents,
    };
    writeJsonAtomic(path.join(partial, 'sources.json'), manifest);
    replaceDirAtomic(partial, o.out);
    return { out: o.out, manifest, bytes, seconds: (performance.now() - started) / 1000 };
  } catch (err) {
    fs.rmSync(partial, { recursive: true, force: true });
    throw err;
  }
}
