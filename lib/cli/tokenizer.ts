/**
 * `moma tokenizer …`: the tokenizers from the command line.
 *   train-text <jsonl...> --out <file>    byte-level BPE tokenizer.json from the text of JSON Lines documents
 *   train-image <folder> --out <file>     k-means codebook over the patches of a folder of images
 *   encode-image <image> --tokenizer <f>  the codes of one image
 *   decode-image --tokenizer <f> --codes  a PNG of codes (JSON array, or @file holding one)
 * Flags are validated here and errors are MomaErrors (ERR_ARG for bad flags).
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import { Command } from 'commander';
import { MomaError } from '../errors';
import { writeFileAtomic } from '../io/files';
import { BYTE_ALPHABET_SIZE, MAX_BPE_VOCAB_SIZE, tokenizerJson, trainByteLevelBpe, WordCounter } from '../data/bpe_trainer';
import { ImageTokenizer, ImageTrainProgress } from '../data/image_tokenizer';

/** A flag that must be a whole number in [min, max]. */
function intFlag(command: string, flag: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const value = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new MomaError('ERR_ARG', `tokenizer ${command}: ${flag} must be an integer in [${min}, ${max}], got ${JSON.stringify(text)}`);
  }
  return value;
}

/** Codes from a JSON array, or from the file after '@'. */
function readCodes(text: string): number[] {
  let json = text;
  let where = '--codes';
  if (text.startsWith('@')) {
    where = text.slice(1);
    try {
      json = fs.readFileSync(where, 'utf8');
    } catch (err) {
      throw new MomaError('ERR_FILE', `tokenizer decode-image: cannot read codes file ${where} (${(err as Error).message})`);
    }
  }
  let codes: unknown;
  try {
    codes = JSON.parse(json);
  } catch (err) {
    throw new MomaError('ERR_ARG', `tokenizer decode-image: ${where} is not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(codes) || codes.some((c) => typeof c !== 'number' || !Number.isInteger(c))) {
    throw new MomaError('ERR_ARG', `tokenizer decode-image: ${where} must be a JSON array of integers`);
  }
  return codes as number[];
}

function progressPrinter(): ((p: ImageTrainProgress) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  return (p) => {
    const text = p.phase === 'read' ? `reading images ${p.done}/${p.total}` : `k-means iteration ${p.iteration}/${p.iterations} (${p.changed} patches moved)`;
    process.stderr.write(`\r${text.padEnd(60)}${p.phase === 'kmeans' || p.done < p.total ? '' : '\n'}`);
  };
}

interface TrainFlags {
  out: string;
  imageSize: string;
  patchSize: string;
  codebookSize: string;
  iterations: string;
  seed: string;
  maxPatches: string;
}

async function trainImage(folder: string, flags: TrainFlags): Promise<void> {
  const name = 'train-image';
  const imageSize = intFlag(name, '--image-size', flags.imageSize, 1);
  const patchSize = intFlag(name, '--patch-size', flags.patchSize, 1);
  if (patchSize > imageSize || imageSize % patchSize !== 0) {
    throw new MomaError('ERR_ARG', `tokenizer ${name}: --image-size ${imageSize} must be a multiple of --patch-size ${patchSize}`);
  }
  const options = {
    imageSize, patchSize,
    codebookSize: intFlag(name, '--codebook-size', flags.codebookSize, 1),
    iterations: intFlag(name, '--iterations', flags.iterations, 1),
    seed: intFlag(name, '--seed', flags.seed, 0, 0xffffffff),
    maxPatches: intFlag(name, '--max-patches', flags.maxPatches, 1),
  };
  const started = performance.now();
  const progress = progressPrinter();
  const { tokenizer, stats } = await ImageTokenizer.trainFromFolder(folder, { ...options, onProgress: progress });
  if (progress) process.stderr.write('\n');
  await tokenizer.save(flags.out);
  const seconds = (performance.now() - started) / 1000;
  const psnr = stats.mse > 0 ? 10 * Math.log10(1 / stats.mse) : Infinity;
  const info = tokenizer.info();
  const lines = [
    `images     ${stats.images} from ${folder}`,
    `patches    ${stats.patches}${stats.patches < stats.patchesSeen ? ` (sampled from ${stats.patchesSeen})` : ''} of ${patchSize}×${patchSize}, ${tokenizer.tokensPerImage} per ${imageSize}×${imageSize} image`,
    `codebook   ${tokenizer.codebookSize} codes`,
    `iterations ${stats.iterations}${stats.converged ? ' (converged)' : ''}`,
    `mse        ${stats.mse.toExponential(4)} per value (values in [0, 1])`,
    `psnr       ${psnr.toFixed(2)} dB`,
    `time       ${seconds.toFixed(2)} s`,
    `saved      ${flags.out} (sha256 ${info.sha256})`,
  ];
  console.log(lines.join('\n'));
}

interface TrainTextFlags {
  out: string;
  vocabSize: string;
  minFrequency: string;
}

function trainText(inputs: string[], flags: TrainTextFlags): void {
  const name = 'train-text';
  const vocabSize = intFlag(name, '--vocab-size', flags.vocabSize, BYTE_ALPHABET_SIZE, MAX_BPE_VOCAB_SIZE);
  const minFrequency = intFlag(name, '--min-frequency', flags.minFrequency, 1);
  const started = performance.now();
  const counter = new WordCounter();
  for (const input of inputs) counter.addJsonlFile(input);
  if (counter.bytes === 0) {
    throw new MomaError('ERR_FILE', `tokenizer ${name}: ${inputs.join(', ')} hold no text (${counter.documents} documents, ${counter.segments} text segments, all empty or none)`);
  }
  const result = trainByteLevelBpe(counter, { vocabSize, minFrequency });
  const json = tokenizerJson(result);
  try {
    writeFileAtomic(flags.out, json);
  } catch (err) {
    throw new MomaError('ERR_FILE', `tokenizer ${name}: --out: ${(err as Error).message}`);
  }
  const seconds = (performance.now() - started) / 1000;
  const stopped = result.exhausted ? ` (fewer than --vocab-size ${vocabSize}: no pair left that occurs ${minFrequency} times or more)` : '';
  const lines = [
    `documents  ${counter.documents} (${counter.segments} text segments, ${counter.bytes} bytes) from ${inputs.join(', ')}`,
    `words      ${result.words} (${result.distinctWords} distinct)`,
    `vocabulary ${result.vocab.length} tokens (${BYTE_ALPHABET_SIZE} bytes, ${result.merges.length} merges)${stopped}`,
    `tokens     ${result.tokens} on the corpus, ${(result.bytes / Math.max(1, result.tokens)).toFixed(3)} bytes per token`,
    `time       ${seconds.toFixed(2)} s`,
    `saved      ${flags.out} (sha256 ${createHash('sha256').update(json).digest('hex')})`,
  ];
  console.log(lines.join('\n'));
}

export function registerTokenizerCommands(program: Command): void {
  const tokenizer = program.command('tokenizer').description('train and use tokenizers');
  tokenizer
    .command('train-text <inputs...>')
    .description('train a byte-level BPE tokenizer.json on the text segments of JSON Lines documents (the moma data pack input)')
    .requiredOption('--out <file>', 'tokenizer.json to write (for moma data pack --text-tokenizer)')
    .option('--vocab-size <n>', `tokens: ${BYTE_ALPHABET_SIZE} bytes plus the merges`, '8192')
    .option('--min-frequency <n>', 'a pair is merged only if it occurs at least n times', '2')
    .action((inputs: string[], flags: TrainTextFlags) => trainText(inputs, flags));
  tokenizer
    .command('train-image <folder>')
    .description('train a VQ patch image tokenizer (k-means codebook) on the images of a folder (.png .jpg .jpeg .webp, recursively)')
    .requiredOption('--out <file>', 'codebook file to write (safetensors)')
    .option('--image-size <n>', 'images are resized (centre crop) to n×n pixels', '32')
    .option('--patch-size <n>', 'patches are n×n pixels (divides --image-size)', '4')
    .option('--codebook-size <n>', 'number of codes', '256')
    .option('--iterations <n>', 'k-means iterations at most', '20')
    .option('--seed <n>', 'seed of the initialisation and the patch sample', '0')
    .option('--max-patches <n>', 'train on a seeded sample of at most n patches', '200000')
    .action((folder: string, flags: TrainFlags) => trainImage(folder, flags));
  tokenizer
    .command('encode-image <image>')
    .description('print the codes of an image')
    .requiredOption('--tokenizer <file>', 'codebook file (from train-image)')
    .option('--json', 'print a JSON array')
    .action(async (image: string, flags: { tokenizer: string; json?: boolean }) => {
      const tok = ImageTokenizer.load(flags.tokenizer);
      const codes = Array.from(await tok.encodeFile(image));
      if (flags.json) {
        console.log(JSON.stringify(codes));
        return;
      }
      const grid = tok.imageSize / tok.patchSize;
      const width = String(tok.codebookSize - 1).length;
      const rows = [`${codes.length} codes (${grid}×${grid} patches of ${tok.patchSize}×${tok.patchSize})`];
      for (let r = 0; r < grid; r++) rows.push(codes.slice(r * grid, (r + 1) * grid).map((c) => String(c).padStart(width)).join(' '));
      console.log(rows.join('\n'));
    });
  tokenizer
    .command('decode-image')
    .description('write the PNG that a run of image codes stands for')
    .requiredOption('--tokenizer <file>', 'codebook file (from train-image)')
    .requiredOption('--codes <codes>', 'JSON array of codes, or @file holding one')
    .requiredOption('--out <png>', 'PNG file to write')
    .option('--scale <n>', 'upsample n times (nearest neighbour) for viewing', '1')
    .action(async (flags: { tokenizer: string; codes: string; out: string; scale: string }) => {
      const scale = intFlag('decode-image', '--scale', flags.scale, 1, 64);
      const tok = ImageTokenizer.load(flags.tokenizer);
      const png = await tok.decodeToPng(readCodes(flags.codes), scale);
      try {
        writeFileAtomic(flags.out, png);
      } catch (err) {
        throw new MomaError('ERR_FILE', `tokenizer decode-image: cannot write ${flags.out} (${(err as Error).message})`);
      }
      const side = tok.imageSize * scale;
      console.log(`wrote ${flags.out} (${side}×${side} PNG, ${png.length} bytes)`);
    });
}
