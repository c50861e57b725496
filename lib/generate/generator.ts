/**
 * Generation with a KV cache in causal mode (docs/INFERENCE.md): the prompt is run once (prefill), then one
 * token per step; each step samples from the last logits (temperature / top-k / top-p, seeded)
 * within the ids the modality constraint allows (after BOI exactly tokensPerImage image codes,
 * then EOI; text ids only outside images), so every image span is well formed.
 *
 * captionToImage: BOS, caption, BOI → codes → PNG through the image tokenizer.
 * imageToCaption: BOS, BOI, codes, EOI → text until EOS.
 */
import { MomaError } from '../errors';
import { KVCache } from '../model/kv_cache';
import type { CausalRouting } from '../model/layers';
import { Transformer } from '../model/transformer';
import { SeededRandom } from '../data/seeded_random';
import { modalityOfId, VocabLayout } from '../data/vocab';
import type { ImageTokenizer } from '../data/image_tokenizer';
import type { TextTokenizer } from '../data/text_tokenizer';
import { ModalityConstraint } from './modality_constraint';
import { requireOptions } from '../options';
import { sampleToken, SamplingOptions, validateSampling } from './sampling';

/** First key of the sampling generator's stream (keeps it apart from the data streams of the same seed). */
const GENERATE_STREAM = 0x67656e;

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (default 256). */
  maxTokens?: number;
  seed?: number;
}

export interface GenerateResult {
  /** The generated ids (the prompt not included). */
  tokens: number[];
  /** Why generation ended: the constraint finished (EOS, or the image closed), or maxTokens. */
  stop: 'done' | 'max-tokens';
  /** Seconds of the prompt pass and of the token steps; tokens per second of the steps. */
  prefillSeconds: number;
  decodeSeconds: number;
  tokensPerSecond: number;
}

/** What every generation call decodes with: the causal routing and the model's vocabulary layout. */
export interface DecodeOptions extends GenerateOptions {
  /** Causal routing for decoding (the auxiliary routers, lib/model/aux_router.ts). */
  routing: CausalRouting;
  /** The model's vocabulary layout. */
  layout: VocabLayout;
}

export interface GenerateTokensOptions extends DecodeOptions {
  /** Which ids may come next at each step. */
  constraint: ModalityConstraint;
}

export interface CaptionToImageOptions extends DecodeOptions {
  text: TextTokenizer;
  image: ImageTokenizer;
  /** Pixel upscaling of the PNG (default 1). */
  scale?: number;
}

export interface ImageToCaptionOptions extends DecodeOptions {
  text: TextTokenizer;
}

/** Samples up to options.maxTokens ids after `prompt`, within what options.constraint allows. */
export async function generateTokens(model: Transformer, prompt: number[], options: GenerateTokensOptions): Promise<GenerateResult> {
  const { routing, layout, constraint } = requireOptions(options, 'generateTokens', ['routing', 'layout', 'constraint']);
  const sampling = validateSampling(options, 'generate');
  const maxTokens = options.maxTokens ?? 256;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new MomaError('ERR_ARG', `generate: maxTokens must be an integer >= 1, got ${String(maxTokens)}`);
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new MomaError('ERR_ARG', `generate: seed must be a non-negative integer, got ${String(seed)}`);
  if (!Array.isArray(prompt) || prompt.length === 0) throw new MomaError('ERR_ARG', 'generate: the prompt needs at least one token');
  constraint.pushPrompt(prompt);
  const rng = new SeededRandom(GENERATE_STREAM, seed);
  const modalityOf = (id: number): number => modalityOfId(layout, id);
  const cache = new KVCache(model.config.layers, { bosId: layout.bosId });
  try {
    const t0 = process.hrtime.bigint();
    let logits = await model.decode(cache, prompt, { modalityOf, routing });
    const t1 = process.hrtime.bigint();
    const tokens: number[] = [];
    const finished = (): boolean => constraint.state === 'done';
    while (!finished() && tokens.length < maxTokens) {
      const id = sampleToken(logits, sampling, { rng, allowed: constraint.allowed() });
      constraint.push(id);
      tokens.push(id);
      if (finished() || tokens.length === maxTokens) break;
      logits = await model.decode(cache, [id], { modalityOf, routing });
    }
    const t2 = process.hrtime.bigint();
    const decodeSeconds = Number(t2 - t1) / 1e9;
    return {
      tokens, stop: constraint.state === 'done' ? 'done' : 'max-tokens', prefillSeconds: Number(t1 - t0) / 1e9, decodeSeconds,
      tokensPerSecond: decodeSeconds > 0 ? tokens.length / decodeSeconds : 0,
    };
  } finally {
    cache.dispose();
  }
}

function textIds(layout: VocabLayout, text: TextTokenizer, caption: string): number[] {
  return Array.from(text.encode(caption), (id) => layout.text.offset + id);
}

function imageOf(layout: VocabLayout, op: string): NonNullable<VocabLayout['image']> {
  if (layout.image === null) throw new MomaError('ERR_ARG', `${op}: the model's vocabulary has no image tokenizer`);
  return layout.image;
}

/** An image for a caption: BOS, caption, BOI, then exactly tokensPerImage sampled codes; returns the codes and the PNG. */
export async function captionToImage(model: Transformer, caption: string, options: CaptionToImageOptions): Promise<GenerateResult & { codes: number[]; png: Buffer }> {
  const { routing, layout, text, image } = requireOptions(options, 'captionToImage', ['routing', 'layout', 'text', 'image']);
  const info = imageOf(layout, 'generate');
  if (typeof caption !== 'string' || caption.trim() === '') throw new MomaError('ERR_ARG', 'generate: the caption is empty');
  const prompt = [layout.bosId, ...textIds(layout, text, caption), layout.boiId];
  const constraint = new ModalityConstraint(layout, { stopAfterImage: true, vocabSize: model.config.vocabSize });
  const result = await generateTokens(model, prompt, { ...options, routing, layout, constraint, maxTokens: info.tokenizer.tokensPerImage + 1 });
  const codes = result.tokens.filter((id) => id >= info.offset && id < info.offset + info.size).map((id) => id - info.offset);
  if (codes.length !== info.tokenizer.tokensPerImage) throw new MomaError('ERR_INTERNAL', `generate: produced ${codes.length} image codes, expected ${info.tokenizer.tokensPerImage}`);
  const png = await image.decodeToPng(codes, options.scale ?? 1);
  return { ...result, codes, png };
}

/** A caption for an image's codes: BOS, BOI, codes, EOI, then text until EOS (or maxTokens). */
export async function imageToCaption(model: Transformer, codes: ArrayLike<number>, options: ImageToCaptionOptions): Promise<GenerateResult & { caption: string }> {
  const { routing, layout, text } = requireOptions(options, 'imageToCaption', ['routing', 'layout', 'text']);
  const info = imageOf(layout, 'generate');
  if (codes.length !== info.tokenizer.tokensPerImage) throw new MomaError('ERR_SHAPE', `generate: the image has ${codes.length} codes, the vocabulary's images have ${info.tokenizer.tokensPerImage}`);
  const prompt = [layout.bosId, layout.boiId, ...Array.from(codes, (c) => info.offset + c), layout.eoiId];
  const constraint = new ModalityConstraint(layout, { allowImages: false, vocabSize: model.config.vocabSize });
  const result = await generateTokens(model, prompt, { maxTokens: 96, ...options, routing, layout, constraint });
  const local = result.tokens.filter((id) => id >= layout.text.offset && id < layout.text.offset + layout.text.size).map((id) => id - layout.text.offset);
  return { ...result, caption: text.decode(local) };
}
