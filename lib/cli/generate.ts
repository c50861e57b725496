/**
 * `moma generate [--checkpoint DIR] (--prompt "caption" | --image-in FILE)`: causal-mode
 * generation with a KV cache. A caption gives an image (a PNG through the checkpoint's image
 * tokenizer); an image gives a caption. Prints tokens per second.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { normalizeDevice } from '../device';
import { MomaError } from '../errors';
import { loadTextTokenizer } from '../data/text_tokenizer';
import { writeFileAtomic } from '../io/files';
import { captionToImage, GenerateOptions, imageToCaption } from '../generate/generator';
import { loadAuxRouters, loadImageTokenizer, loadModel, openCheckpoint } from '../run/checkpoint_source';
import { shownPath } from './paths';
import { printable } from './terminal';

interface GenerateFlags {
  checkpoint?: string; prompt?: string; imageIn?: string; out?: string; temperature: string; topK: string; topP: string;
  seed: string; scale: string; maxTokens: string; device?: string; json?: boolean;
}

function num(value: string, flag: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new MomaError('ERR_ARG', `generate: ${flag} must be a number, got '${value}'`);
  return n;
}

/** A file name from a caption: lower-case words joined by '-', at most 48 characters. */
function slug(text: string): string {
  const s = text.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 48).replace(/-+$/, '');
  return s === '' ? 'image' : s;
}

async function runGenerate(flags: GenerateFlags): Promise<void> {
  if ((flags.prompt === undefined) === (flags.imageIn === undefined)) {
    throw new MomaError('ERR_ARG', 'generate: give exactly one of --prompt "caption" (→ image) or --image-in FILE (→ caption)');
  }
  const options: GenerateOptions & { scale: number } = {
    temperature: num(flags.temperature, '--temperature'), topK: num(flags.topK, '--top-k'), topP: num(flags.topP, '--top-p'),
    seed: num(flags.seed, '--seed'), maxTokens: num(flags.maxTokens, '--max-tokens'), scale: num(flags.scale, '--scale'),
  };
  if (!Number.isInteger(options.scale) || options.scale < 1 || options.scale > 64) throw new MomaError('ERR_ARG', `generate: --scale must be an integer in [1, 64], got '${flags.scale}'`);
  const out = flags.prompt === undefined ? null : path.resolve(flags.out ?? `${slug(flags.prompt)}.png`);
  if (out !== null && path.extname(out).toLowerCase() !== '.png') throw new MomaError('ERR_ARG', `generate: --out ${flags.out} must end in .png`);
  if (out !== null && fs.existsSync(out) && !fs.statSync(out).isFile()) throw new MomaError('ERR_ARG', `generate: --out ${flags.out} is a folder`);
  const source = openCheckpoint(flags.checkpoint, 'generate');
  const { layout } = source;
  const image = loadImageTokenizer(source, 'generate');
  const text = loadTextTokenizer(layout.text.tokenizer, source.dir);
  const model = loadModel(source, flags.device === undefined ? undefined : normalizeDevice(flags.device, 'generate: --device'), 'generate');
  try {
    const aux = loadAuxRouters(source.dir, model, 'generate');
    try {
      if (flags.prompt !== undefined && out !== null) {
        const r = await captionToImage(model, flags.prompt, { ...options, routing: aux, layout, text, image });
        writeFileAtomic(out, r.png);
        if (flags.json) {
          console.log(JSON.stringify({ prompt: flags.prompt, out, codes: r.codes, tokensPerSecond: r.tokensPerSecond, prefillSeconds: r.prefillSeconds, decodeSeconds: r.decodeSeconds }, null, 2));
        } else {
          const size = image.imageSize * options.scale;
          console.log(`wrote ${printable(shownPath(out))} (${size}×${size}, ${r.codes.length} image tokens) for "${printable(flags.prompt)}"`);
          console.log(`${r.tokens.length} tokens in ${r.decodeSeconds.toFixed(2)} s: ${r.tokensPerSecond.toFixed(1)} tokens/s (prompt ${(r.prefillSeconds * 1000).toFixed(0)} ms) on ${model.config.device}`);
        }
      } else {
        const file = flags.imageIn!;
        if (!fs.existsSync(file)) throw new MomaError('ERR_FILE', `generate: --image-in ${file} does not exist`);
        const codes = await image.encodeFile(file);
        const r = await imageToCaption(model, codes, { ...options, routing: aux, layout, text });
        if (flags.json) {
          console.log(JSON.stringify({ image: file, caption: r.caption, stop: r.stop, tokensPerSecond: r.tokensPerSecond, prefillSeconds: r.prefillSeconds, decodeSeconds: r.decodeSeconds }, null, 2));
        } else {
          console.log(printable(r.caption));
          console.log(`${r.tokens.length} tokens in ${r.decodeSeconds.toFixed(2)} s: ${r.tokensPerSecond.toFixed(1)} tokens/s (prompt ${(r.prefillSeconds * 1000).toFixed(0)} ms) on ${model.config.device}${r.stop === 'max-tokens' ? '; stopped at --max-tokens' : ''}`);
        }
      }
    } finally {
      aux.dispose();
    }
  } finally {
    model.dispose();
  }
}

export function registerGenerateCommand(program: Command): void {
  program
    .command('generate')
    .description('generate with a KV cache in causal mode (auxiliary routers; run moma train-aux first): --prompt "caption" → PNG, --image-in FILE → caption')
    .option('--checkpoint <dir>', 'checkpoint or run folder (default: the newest run under ./runs)')
    .option('--prompt <caption>', 'caption to draw; write it like the training captions, e.g. "a large red circle at the top."')
    .option('--image-in <file>', 'PNG / JPEG / WebP image to caption (resized to the tokenizer\'s size)')
    .option('--out <file.png>', 'where the image goes (default: <caption words>.png)')
    .option('--temperature <x>', 'sampling temperature, 0: greedy', '1')
    .option('--top-k <n>', 'keep the k most likely ids, 0: off', '0')
    .option('--top-p <x>', 'nucleus: keep the most likely ids up to this probability mass, 1: off', '1')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--scale <n>', 'PNG pixels per image pixel', '8')
    .option('--max-tokens <n>', 'most tokens of a caption', '96')
    .option('--device <device>', 'cpu or cuda:N (default: the device the checkpoint was trained on)')
    .option('--json', 'print JSON')
    .action(runGenerate);
}
