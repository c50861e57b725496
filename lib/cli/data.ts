/**
 * `moma data pack` (JSON Lines documents → a shard set, lib/data/pack.ts), `moma data inspect`
 * (what a shard set holds: splits, vocabulary, its first document decoded) and `moma data corpus`
 * (installed npm and Debian packages → JSON Lines documents, lib/data/corpus/build.ts).
 */
import { Command } from 'commander';
import { SingleBar } from 'cli-progress';
import { MomaError } from '../errors';
import { buildCorpus, CORPUS_SPLITS, CorpusReport, DOCUMENT_KINDS, installEmojiPackages, TEXT_SOURCES, TextSource } from '../data/corpus/build';
import { EMOJI_IMAGE_SETS, emojiInstallCommand } from '../data/corpus/emoji';
import type { Split } from '../data/dataset';
import { splitDocument } from '../data/document';
import { DEFAULT_SHARD_TOKENS, packShardSet, PackProgress, PackReport } from '../data/pack';
import { shardDtypeFor, ShardDtype } from '../data/shard';
import { openShardSet, SplitSummary, SPLITS } from '../data/shard_set';
import { loadTextTokenizer } from '../data/text_tokenizer';
import type { TextTokenizerInfo } from '../data/vocab';
import { printable } from './terminal';

export interface DataInspectReport {
  dir: string;
  vocabulary: {
    size: number;
    hash: string;
    dtype: ShardDtype;
    specials: number;
    text: { offset: number; size: number; tokenizer: TextTokenizerInfo };
    image: { offset: number; size: number; imageSize: number; patchSize: number; tokensPerImage: number } | null;
  };
  splits: Record<Split, SplitSummary & { textTokens: number }>;
  /** The first document of the first split that has one (file order), decoded. */
  firstDocument: { split: Split; tokens: number; segments: ({ text: string } | { image: number })[]; decoded: string } | null;
}

/** Everything `moma data inspect` prints, as an object. */
export function inspectShardSet(dir: string): DataInspectReport {
  const set = openShardSet(dir);
  try {
    const { layout } = set;
    const splits = Object.fromEntries(SPLITS.map((split) => {
      const s = set.summary(split);
      return [split, { ...s, textTokens: s.tokens - s.imageTokens }];
    })) as DataInspectReport['splits'];
    let firstDocument: DataInspectReport['firstDocument'] = null;
    const split = SPLITS.find((s) => splits[s].documents > 0);
    if (split !== undefined) {
      const text = loadTextTokenizer(layout.text.tokenizer, dir);
      const ids = set.document(split, 0);
      const segments = splitDocument(layout, ids).map((s) => ('text' in s ? { text: text.decode(s.text) } : { image: s.codes.length }));
      const decoded = segments.map((s) => ('text' in s ? s.text : `<image: ${s.image} codes>`)).join(' ');
      firstDocument = { split, tokens: ids.length, segments, decoded };
    }
    const image = layout.image;
    return {
      dir,
      vocabulary: {
        size: layout.size, hash: layout.hash, dtype: shardDtypeFor(layout), specials: layout.text.offset,
        text: { offset: layout.text.offset, size: layout.text.size, tokenizer: layout.text.tokenizer },
        image: image === null ? null : {
          offset: image.offset, size: image.size, imageSize: image.tokenizer.imageSize, patchSize: image.tokenizer.patchSize, tokensPerImage: image.tokenizer.tokensPerImage,
        },
      },
      splits,
      firstDocument,
    };
  } finally {
    set.close();
  }
}

const count = (n: number): string => n.toLocaleString('en-US');

function vocabularyLine(v: DataInspectReport['vocabulary']): string {
  const text = v.text.tokenizer.kind === 'bytes' ? 'UTF-8 bytes' : `tokenizer ${v.text.tokenizer.file}`;
  const image = v.image === null ? 'no images' : `${count(v.image.size)} image codes (${v.image.imageSize}×${v.image.imageSize} px, ${v.image.patchSize}×${v.image.patchSize} patches, ${v.image.tokensPerImage} codes per image)`;
  return `${v.specials} specials + ${count(v.text.size)} text ids (${text}) + ${image} = ${count(v.size)} ids, ${v.dtype}, hash ${v.hash.slice(0, 16)}…`;
}

function splitLine(split: Split, s: SplitSummary & { textTokens?: number }): string {
  const text = s.textTokens ?? s.tokens - s.imageTokens;
  return `  ${split.padEnd(5)} ${s.shards} shard${s.shards === 1 ? '' : 's'}, ${count(s.documents)} documents, ${count(s.tokens)} tokens (${count(text)} text, ${count(s.imageTokens)} image)`;
}

function printInspect(r: DataInspectReport): void {
  const lines = [`shard set ${printable(r.dir)}`, `vocabulary: ${printable(vocabularyLine(r.vocabulary))}`, 'splits:'];
  for (const split of SPLITS) lines.push(splitLine(split, r.splits[split]));
  if (r.firstDocument !== null) {
    lines.push(`first ${r.firstDocument.split} document (${r.firstDocument.tokens} tokens):`, `  ${printable(r.firstDocument.decoded)}`);
  }
  console.log(lines.join('\n'));
}

/** Parses a non-negative integer option value. */
function integerOption(name: string, value: string, min: number): number {
  const n = /^\d+$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new MomaError('ERR_ARG', `${name} must be an integer >= ${min}, got '${value}'`);
  return n;
}

interface PackCommandOptions {
  out: string;
  imageTokenizer?: string;
  textTokenizer: string;
  evalDocuments?: string;
  evalInput?: string[];
  shardTokens: string;
  seed: string;
  force?: boolean;
  json?: boolean;
}

async function runPack(inputs: string[], opts: PackCommandOptions): Promise<void> {
  let bar: SingleBar | null = null;
  const onProgress = (p: PackProgress): void => {
    if (!process.stderr.isTTY || p.phase !== 'encode') return;
    if (bar === null) {
      bar = new SingleBar({ format: 'packing [{bar}] {value}/{total} documents, {images} images, {tokens} tokens, eta {eta_formatted}', stream: process.stderr });
      bar.start(p.total, 0, { images: 0, tokens: 0 });
    }
    bar.update(p.documents, { images: p.images, tokens: p.tokens });
  };
  let report: PackReport;
  try {
    report = await packShardSet({
      inputs, out: opts.out, imageTokenizer: opts.imageTokenizer ?? null, textTokenizer: opts.textTokenizer,
      evalDocuments: opts.evalDocuments === undefined ? undefined : integerOption('--eval-documents', opts.evalDocuments, 0),
      evalInputs: opts.evalInput ?? [],
      shardTokens: integerOption('--shard-tokens', opts.shardTokens, 1), seed: integerOption('--seed', opts.seed, 0),
      force: opts.force === true, onProgress,
    });
  } finally {
    (bar as SingleBar | null)?.stop();
  }
  const { layout, ...rest } = report;
  if (opts.json) {
    console.log(JSON.stringify({ ...rest, vocabulary: { size: layout.size, hash: layout.hash } }, null, 2));
    return;
  }
  const lines = [
    `packed ${count(report.documents)} documents (${count(report.images)} images) into ${report.out} in ${report.seconds.toFixed(1)} s`,
    ...SPLITS.map((split) => splitLine(split, report.splits[split])),
    `  vocabulary: ${layout.size} ids, hash ${layout.hash.slice(0, 16)}…`,
  ];
  console.log(lines.join('\n'));
}

interface CorpusCommandOptions {
  sources: string;
  out: string;
  emojiSet: string;
  imageSize: string;
  heldout: string;
  seed: string;
  debianRoot: string;
  text: string;
  maxTextDocuments?: string;
  install?: boolean;
  force?: boolean;
  json?: boolean;
}

/** The --text list: "gcide,wordnet", a subset, or "none". */
function textSources(value: string): TextSource[] {
  if (value.trim() === 'none') return [];
  const list = value.split(',').map((s) => s.trim());
  const unknown = list.find((s) => !(TEXT_SOURCES as readonly string[]).includes(s));
  if (unknown !== undefined) throw new MomaError('ERR_ARG', `data corpus: --text must list sources from ${TEXT_SOURCES.join(', ')} (or be "none"), got '${value}'`);
  return [...new Set(list)] as TextSource[];
}

function fractionOption(name: string, value: string): number {
  const n = /^\s*(0|0?\.\d+)\s*$/.test(value) ? Number(value) : NaN;
  if (!(n >= 0 && n < 1)) throw new MomaError('ERR_ARG', `${name} must be a fraction in [0, 1), got '${value}'`);
  return n;
}

function printCorpus(r: CorpusReport): void {
  const m = r.manifest;
  const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);
  const lines = [`corpus ${printable(r.out)} in ${r.seconds.toFixed(1)} s`];
  for (const split of CORPUS_SPLITS) {
    const kinds = DOCUMENT_KINDS.map((k) => `${count(m.documents[split][k])} ${k}`).join(', ');
    lines.push(`  ${split.padEnd(7)} ${kinds}; ${count(m.images[split])} images of ${count(m.emoji[split])} emoji; ${split}.jsonl ${mb(r.bytes[split])} MB`);
  }
  lines.push(`  images/ ${mb(r.bytes.images)} MB (${m.options.imageSize}×${m.options.imageSize} PNG, alpha flattened onto white)`);
  for (const s of m.sources) lines.push(`  source ${printable(`${s.name} ${s.version}: ${s.license}${s.imagesLicense ? `; images ${s.imagesLicense}` : ''}`)}`);
  console.log(lines.join('\n'));
}

async function runCorpus(opts: CorpusCommandOptions): Promise<void> {
  if (!(opts.emojiSet in EMOJI_IMAGE_SETS)) throw new MomaError('ERR_ARG', `data corpus: --emoji-set must be one of ${Object.keys(EMOJI_IMAGE_SETS).join(', ')}, got '${opts.emojiSet}'`);
  const imageSize = integerOption('--image-size', opts.imageSize, 1);
  const options = {
    sources: opts.sources, out: opts.out, emojiSet: opts.emojiSet, imageSize,
    heldout: fractionOption('--heldout', opts.heldout), seed: integerOption('--seed', opts.seed, 0), debianRoot: opts.debianRoot,
    text: textSources(opts.text),
    maxTextDocuments: opts.maxTextDocuments === undefined ? null : integerOption('--max-text-documents', opts.maxTextDocuments, 0),
    force: opts.force === true,
  };
  if (opts.install) {
    if (!opts.json) console.error(`running ${emojiInstallCommand(opts.sources, opts.emojiSet).join(' ')}`);
    installEmojiPackages(opts.sources, opts.emojiSet);
  }
  const report = await buildCorpus(options);
  if (opts.json) console.log(JSON.stringify(report, null, 2));
  else printCorpus(report);
}

/** Adds the `data` command group (pack, inspect, corpus) to the program. */
export function registerDataCommands(program: Command): void {
  const data = program.command('data').description('mixed-modal data: pack JSON Lines documents into token shards, inspect a shard set, build a corpus from installed packages');
  data
    .command('pack')
    .description('tokenize JSON Lines documents ([{"text": …}, {"image": "path"}] per line) into a shard set folder')
    .argument('<inputs...>', 'JSON Lines files; image paths are relative to each file\'s folder')
    .requiredOption('--out <dir>', 'the shard set folder to create')
    .option('--image-tokenizer <file>', 'image codebook (.safetensors); needed when a document has an image')
    .option('--text-tokenizer <file>', 'a Hugging Face tokenizer.json, or "bytes" for UTF-8 bytes', 'bytes')
    .option('--eval-documents <n>', 'held-out documents chosen from the inputs (default: 1% of them, at most 1000, at least 1 from 2 documents; 0: none; 0 by default with --eval-input)')
    .option('--eval-input <files...>', 'JSON Lines files whose documents are the held-out split as they are (e.g. moma data corpus\'s heldout.jsonl)')
    .option('--shard-tokens <n>', 'most tokens per shard', String(DEFAULT_SHARD_TOKENS))
    .option('--seed <n>', 'seeds the choice of eval documents', '0')
    .option('--force', 'replace a non-empty --out folder')
    .option('--json', 'print the report as JSON')
    .action(runPack);
  data
    .command('inspect')
    .description('documents, tokens (text and image) per split, the vocabulary, and the first document decoded')
    .argument('<dir>', 'a shard set folder (moma data pack --out)')
    .option('--json', 'print JSON')
    .action((dir: string, opts: { json?: boolean }) => {
      const report = inspectShardSet(dir);
      if (opts.json) console.log(JSON.stringify(report, null, 2));
      else printInspect(report);
    });
  data
    .command('corpus')
    .description('emoji images with captions (npm: emoji-datasource-*, emojibase-data) and dictionary text (Debian: dict-gcide, wordnet-base) as JSON Lines documents, a held-out split and sources.json')
    .requiredOption('--sources <dir>', 'the folder the npm packages are installed in (npm install --prefix <dir> …)')
    .requiredOption('--out <dir>', 'the corpus folder to create: images/, train.jsonl, heldout.jsonl, sources.json')
    .option('--install', 'first run npm install --prefix <sources> emoji-datasource-<set>@16 emojibase-data@17')
    .option('--emoji-set <set>', `emoji-datasource image set (${Object.keys(EMOJI_IMAGE_SETS).join(', ')})`, 'google')
    .option('--image-size <n>', 'image side in pixels: 32 or 64', '32')
    .option('--heldout <fraction>', 'fraction of emoji and text documents held out (by a seeded hash; an emoji\'s images are never split)', '0.05')
    .option('--seed <n>', 'seeds the held-out split and the --max-text-documents choice', '0')
    .option('--text <sources>', `text sources, comma-separated (${TEXT_SOURCES.join(', ')}) or "none"`, TEXT_SOURCES.join(','))
    .option('--max-text-documents <n>', 'at most this many documents of each text source (a seeded choice; default: all)')
    .option('--debian-root <dir>', 'where the Debian packages\' usr/share/… files are', '/')
    .option('--force', 'replace a non-empty --out folder')
    .option('--json', 'print the report as JSON')
    .action(runCorpus);
}
