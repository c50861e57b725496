/**
 * The built-in dataset `moma train` uses with no data arguments: captioned shapes
 * (lib/data/shapes.ts) generated on the fly, infinite and deterministic, nothing shipped.
 *
 * - Text is UTF-8 bytes (ByteTokenizer); images are imageSize² RGB renders cut into patchSize²
 *   patches and quantised by a k-means codebook (lib/data/image_tokenizer.ts). Without a saved
 *   codebook one is trained on the first `trainImages` scenes of the train stream of `seed`
 *   (a pure function of the options, so two runs get the same bytes).
 * - store(split, seed) reads document k as the k-th document of the (seed, split) stream:
 *   BOS, caption, BOI, codes, EOI, EOS, or BOS, BOI, codes, EOI, "above: …", EOS. Rendering and
 *   encoding cost about a millisecond, so each store keeps the last documents it built in a
 *   small LRU (evaluation reads the same first documents again and again).
 */
import { MomaError } from '../errors';
import type { DocumentStore, MixedModalDataset, Split } from './dataset';
import { documentTokens, TokenSegment } from './document';
import { IMAGE_TOKENIZER_FILE, ImageTokenizer, ImageTokenizerTrainStats } from './image_tokenizer';
import { checkImageSize, describeDocument, DocumentSpec, renderScene, sampleScene } from './shapes';
import { ByteTokenizer } from './text_tokenizer';
import { buildVocabLayout, VocabLayout } from './vocab';

export { captionOf, describeDocument, renderScene, sampleScene } from './shapes';

export const BUILTIN_NAME = 'builtin:shapes';
/** Documents each store keeps built. */
const CACHE_DOCUMENTS = 4096;

export interface BuiltinOptions {
  /** Seed of the image tokenizer's training scenes and k-means (default 0); stores take their own seed. */
  seed?: number;
  /** Image side in pixels (default 32, or the saved tokenizer's). */
  imageSize?: number;
  /** Patch side in pixels (default 4, or the saved tokenizer's). */
  patchSize?: number;
  /** Codebook entries (default 256, or the saved tokenizer's). */
  codebookSize?: number;
  /** A saved codebook (image_tokenizer.safetensors) to reuse instead of training one. */
  imageTokenizer?: Buffer;
  /** Scenes the codebook is trained on (default 384). */
  trainImages?: number;
}

/** The codebook's training statistics (mse per value, values in [0, 1]) and its wall time. */
export type TokenizerTraining = ImageTokenizerTrainStats & { seconds: number };

export interface BuiltinDataset extends MixedModalDataset {
  readonly textTokenizer: ByteTokenizer;
  readonly imageTokenizer: ImageTokenizer;
  /** How the codebook was trained; null when it was loaded. */
  readonly training: TokenizerTraining | null;
  /** Document k of the (seed, split) stream: its description and its tokens. */
  document(k: number, seed: number, split?: Split): { spec: DocumentSpec; tokens: Int32Array };
}

function optionalInteger(where: string, key: string, value: unknown, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) {
    throw new MomaError('ERR_ARG', `${where}: option '${key}' must be an integer in [${min}, ${max}], got ${String(value)}`);
  }
  return value as number;
}

async function imageTokenizerFor(options: BuiltinOptions): Promise<{ tokenizer: ImageTokenizer; training: TokenizerTraining | null }> {
  const where = 'builtinDataset';
  const seed = optionalInteger(where, 'seed', options.seed, 0, 0xffffffff) ?? 0;
  const imageSize = optionalInteger(where, 'imageSize', options.imageSize, 1, Number.MAX_SAFE_INTEGER);
  const patchSize = optionalInteger(where, 'patchSize', options.patchSize, 1, Number.MAX_SAFE_INTEGER);
  const codebookSize = optionalInteger(where, 'codebookSize', options.codebookSize, 1, 65536);
  const trainImages = optionalInteger(where, 'trainImages', options.trainImages, 1, 1 << 20);
  if (options.imageTokenizer !== undefined) {
    if (!Buffer.isBuffer(options.imageTokenizer)) throw new MomaError('ERR_ARG', `${where}: option 'imageTokenizer' must be a Buffer (the bytes of ${IMAGE_TOKENIZER_FILE})`);
    const tokenizer = ImageTokenizer.fromBuffer(options.imageTokenizer, IMAGE_TOKENIZER_FILE);
    const info = tokenizer.info(IMAGE_TOKENIZER_FILE);
    for (const [key, wanted] of [['imageSize', imageSize], ['patchSize', patchSize], ['codebookSize', codebookSize]] as const) {
      if (wanted !== undefined && wanted !== info[key]) {
        throw new MomaError('ERR_ARG', `${where}: option '${key}' is ${wanted} but the saved image tokenizer has ${key} ${info[key]}`);
      }
    }
    checkImageSize(info.imageSize, `${where}: the saved image tokenizer`);
    return { tokenizer, training: null };
  }
  const size = imageSize ?? 32;
  const patch = patchSize ?? 4;
  checkImageSize(size, where);
  if (size % patch !== 0) throw new MomaError('ERR_ARG', `${where}: imageSize ${size} is not a multiple of patchSize ${patch}`);
  const count = trainImages ?? 384;
  // Rendered one at a time as the tokenizer samples their patches.
  const images = function* (): Generator<Uint8Array> {
    for (let k = 0; k < count; k++) yield renderScene(sampleScene(k, seed), size);
  };
  const started = performance.now();
  const { tokenizer, stats } = ImageTokenizer.train(images(), { imageSize: size, patchSize: patch, codebookSize: codebookSize ?? 256, seed });
  return { tokenizer, training: { ...stats, seconds: (performance.now() - started) / 1000 } };
}

/**
 * A document store over the (seed, split) stream, with an LRU of built documents (shared
 * arrays: callers must not modify what tokens() returns). Its profile needs only the caption
 * (BOS, EOS, BOI, EOI, caption bytes and tokensPerImage codes), so the packer's ratio control
 * classifies documents without rendering them.
 */
function shapesStore(seed: number, split: Split, tokensPerImage: number, build: (k: number) => Int32Array): DocumentStore {
  const cache = new Map<number, Int32Array>();
  return {
    count: Infinity,
    idAt: (k: number): number => {
      if (!Number.isSafeInteger(k) || k < 0) throw new MomaError('ERR_RANGE', `builtin:shapes store: draw ${String(k)} must be a safe integer >= 0`);
      return k;
    },
    profile: (id: number): { tokens: number; imageTokens: number } => {
      const captionBytes = Buffer.byteLength(describeDocument(id, seed, split).caption, 'utf8');
      return { tokens: 4 + captionBytes + tokensPerImage, imageTokens: tokensPerImage };
    },
    tokens: (id: number): Int32Array => {
      let tokens = cache.get(id);
      if (tokens !== undefined) {
        cache.delete(id);
      } else {
        tokens = build(id);
        if (cache.size >= CACHE_DOCUMENTS) cache.delete(cache.keys().next().value as number);
      }
      cache.set(id, tokens);
      return tokens;
    },
  };
}

/** The built-in captioned-shapes dataset (trains its image codebook unless one is given). */
export async function builtinDataset(options: BuiltinOptions = {}): Promise<BuiltinDataset> {
  if (options === null || typeof options !== 'object') throw new MomaError('ERR_ARG', 'builtinDataset: options must be an object');
  const { tokenizer: imageTokenizer, training } = await imageTokenizerFor(options);
  const textTokenizer = new ByteTokenizer();
  const imageInfo = imageTokenizer.info(IMAGE_TOKENIZER_FILE);
  const layout: VocabLayout = buildVocabLayout({ tokenizer: textTokenizer.info, size: textTokenizer.size }, imageInfo);
  const files = { [IMAGE_TOKENIZER_FILE]: imageTokenizer.toBuffer() };

  const document = (k: number, seed: number, split: Split = 'train'): { spec: DocumentSpec; tokens: Int32Array } => {
    const spec = describeDocument(k, seed, split);
    const text: TokenSegment = { text: textTokenizer.encode(spec.caption) };
    const image: TokenSegment = { codes: imageTokenizer.encodePixels(renderScene(spec.scene, imageInfo.imageSize)) };
    return { spec, tokens: Int32Array.from(documentTokens(layout, spec.captionFirst ? [text, image] : [image, text])) };
  };

  return {
    name: BUILTIN_NAME,
    layout,
    files,
    textTokenizer,
    imageTokenizer,
    training,
    document,
    store(split: Split, seed: number): DocumentStore {
      if (split !== 'train' && split !== 'eval') throw new MomaError('ERR_ARG', `builtin:shapes store: split must be 'train' or 'eval', got ${JSON.stringify(split)}`);
      if (!Number.isSafeInteger(seed)) throw new MomaError('ERR_ARG', `builtin:shapes store: seed must be a safe integer, got ${String(seed)}`);
      return shapesStore(seed, split, imageInfo.tokensPerImage, (k) => document(k, seed, split).tokens);
    },
  };
}
