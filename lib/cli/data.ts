/**
 * `moma data pack` (JSON Lines documents → a shard set, lib/data/pack.ts) and `moma data inspect`
 * (what a shard set holds: splits, vocabulary, its first document decoded).
 */
import { Command } from 'commander';
import { SingleBar } from 'cli-progress';
import { MomaError } from '../errors';
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

/** Adds the `data` command group (pack, inspect) to the program. */
export function registerDataCommands(program: Command): void {
  const data = program.command('data').description('mixed-modal data: pack JSON Lines documents into token shards, inspect a shard set');
  data
    .command('pack')
    .description('tokenize JSON Lines documents ([{"text": …}, {"image": "path"}] per line) into a shard set folder')
    .argument('<inputs...>', 'JSON Lines files; image paths are relative to each file\'s folder')
    .requiredOption('--out <dir>', 'the shard set folder to create')
    .option('--image-tokenizer <file>', 'image codebook (.safetensors); needed when a document has an image')
    .option('--text-tokenizer <file>', 'a Hugging Face tokenizer.json, or "bytes" for UTF-8 bytes', 'bytes')
    .option('--eval-documents <n>', 'held-out documents (default: 1% of them, at most 1000, at least 1 from 2 documents; 0: none)')
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
}
