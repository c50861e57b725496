/**
 * The VQ patch image tokenizer: an image becomes a fixed-length run of codebook indices.
 *
 * - Pixels: any image sharp reads is auto-oriented, its alpha flattened onto white, resized to
 *   imageSize×imageSize with fit 'cover' (scaled, then centre-cropped) and read as 8-bit sRGB.
 * - Patches: the image is cut into (imageSize/patchSize)² non-overlapping p×p patches in raster
 *   order; a patch is the vector of its p·p·3 values / 255 in (y, x, channel) order.
 * - Codebook: K patch vectors [K, p·p·3] (float32), trained by k-means (lib/data/kmeans.ts) on
 *   the patches of a set of images (a seeded reservoir sample when there are more than
 *   maxPatches). Encode = nearest code by squared L2, ties to the smaller index; decode = each
 *   code's patch, times 255, rounded and clamped to uint8.
 * - File: safetensors with one F32 tensor "codebook" [K, p·p·3] and string metadata
 *   { format: "moma-vq-patch", version: "1", image_size, patch_size }; the bytes are a pure
 *   function of the codebook, so info().sha256 identifies it.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import sharp, { type OutputInfo } from 'sharp';
import { describeKey, describeValue } from '../checked';
import { MomaError } from '../errors';
import { writeFileAtomic } from '../io/files';
import { decodeSafetensors, encodeSafetensors } from '../io/safetensors';
import { kmeans, nearestCentroids } from './kmeans';
import { SeededRandom } from './seeded_random';
import type { ImageTokenizerInfo } from './vocab';

/** The image codebook's file name among a dataset's files (shard sets, the built-in dataset). */
export const IMAGE_TOKENIZER_FILE = 'image_tokenizer.safetensors';
/** File extensions (lower case) trainFromFolder reads. */
export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.webp'] as const;
export const MAX_IMAGE_SIZE = 4096;
export const MAX_CODEBOOK_SIZE = 1 << 20;
const FORMAT = 'moma-vq-patch';
const VERSION = '1';
/** Images decoded at once by trainFromFolder (sharp runs them on its thread pool). */
const READ_BATCH = 4;
/** Purpose key of the reservoir's stream: SeededRandom(seed, RESERVOIR_KEY) ('resv'), apart from k-means++'s. */
const RESERVOIR_KEY = 0x72657376;

export interface ImageTokenizerTrainOptions {
  imageSize: number;
  patchSize: number;
  codebookSize: number;
  /** k-means updates at most; default 20. */
  iterations?: number;
  /** Seeds the k-means++ initialisation and the patch sample; default 0. */
  seed?: number;
  /** Patches k-means trains on at most (a seeded reservoir sample beyond); default 200000. */
  maxPatches?: number;
}

export interface ImageTokenizerTrainStats {
  images: number;
  /** Patches k-means trained on. */
  patches: number;
  /** Patches in all the images (more than `patches` when sampled). */
  patchesSeen: number;
  iterations: number;
  converged: boolean;
  /** Mean squared error per value (values in [0, 1]) of the training patches against their codes. */
  mse: number;
}

export interface ImageTokenizerTrainResult {
  tokenizer: ImageTokenizer;
  stats: ImageTokenizerTrainStats;
}

export type ImageTrainProgress =
  | { phase: 'read'; done: number; total: number; file: string }
  | { phase: 'kmeans'; iteration: number; iterations: number; changed: number };

function checkInteger(op: string, name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new MomaError('ERR_ARG', `${op}: ${name} must be an integer in [${min}, ${max}], got ${String(value)}`);
  }
  return value;
}

function checkGeometry(op: string, imageSize: unknown, patchSize: unknown): void {
  const size = checkInteger(op, 'imageSize', imageSize, 1, MAX_IMAGE_SIZE);
  const patch = checkInteger(op, 'patchSize', patchSize, 1, size);
  if (size % patch !== 0) throw new MomaError('ERR_ARG', `${op}: imageSize ${size} is not divisible by patchSize ${patch}`);
}

/** Writes patch (py, px) of an imageSize² RGB image as p·p·3 values / 255 at out[offset…]. */
function writePatch(rgb: Uint8Array, imageSize: number, patchSize: number, py: number, px: number, out: Float32Array, offset: number): void {
  let o = offset;
  for (let y = 0; y < patchSize; y++) {
    let src = ((py * patchSize + y) * imageSize + px * patchSize) * 3;
    for (let v = 0; v < patchSize * 3; v++) out[o++] = rgb[src++]! / 255;
  }
}

/**
 * The training patches: every patch while there are at most `capacity`, then a reservoir sample
 * (algorithm R drawing from SeededRandom), so the sample depends only on the images, their order
 * and the seed.
 */
class PatchReservoir {
  private points = new Float32Array(0);
  held = 0;
  seen = 0;
  private readonly random: SeededRandom;
  private readonly dim: number;

  constructor(private readonly imageSize: number, private readonly patchSize: number, private readonly capacity: number, seed: number) {
    this.dim = patchSize * patchSize * 3;
    this.random = new SeededRandom(seed, RESERVOIR_KEY);
  }

  add(rgb: Uint8Array): void {
    const grid = this.imageSize / this.patchSize;
    for (let py = 0; py < grid; py++) {
      for (let px = 0; px < grid; px++) {
        let slot: number;
        if (this.held < this.capacity) {
          slot = this.held++;
          if (slot * this.dim >= this.points.length) this.grow();
        } else {
          slot = this.random.below(this.seen + 1);
        }
        this.seen++;
        if (slot < this.capacity) writePatch(rgb, this.imageSize, this.patchSize, py, px, this.points, slot * this.dim);
      }
    }
  }

  private grow(): void {
    const rows = Math.min(this.capacity, Math.max(1024, this.held * 2));
    const bigger = new Float32Array(rows * this.dim);
    bigger.set(this.points);
    this.points = bigger;
  }

  samples(): Float32Array {
    return this.points.subarray(0, this.held * this.dim);
  }
}

interface ResolvedTrainOptions {
  imageSize: number;
  patchSize: number;
  codebookSize: number;
  iterations: number;
  seed: number;
  maxPatches: number;
}

function resolveTrainOptions(op: string, options: ImageTokenizerTrainOptions): ResolvedTrainOptions {
  if (options === null || typeof options !== 'object') throw new MomaError('ERR_ARG', `${op}: options must be an object`);
  const { imageSize, patchSize, codebookSize, iterations = 20, seed = 0, maxPatches = 200000 } = options;
  checkGeometry(op, imageSize, patchSize);
  return {
    imageSize, patchSize,
    codebookSize: checkInteger(op, 'codebookSize', codebookSize, 1, MAX_CODEBOOK_SIZE),
    iterations: checkInteger(op, 'iterations', iterations, 0, 1_000_000),
    seed: checkInteger(op, 'seed', seed, 0, 0xffffffff),
    maxPatches: checkInteger(op, 'maxPatches', maxPatches, 1, 50_000_000),
  };
}

/**
 * A code needs a patch: ERR_ARG when the codebook would have more codes than the training
 * patches (the `patches` of `images` images, of which at most maxPatches are sampled), which
 * k-means could only fill with duplicates.
 */
function checkCodebookFits(op: string, o: ResolvedTrainOptions, images: number, patches: number): void {
  const perImage = (o.imageSize / o.patchSize) ** 2;
  const available = Math.min(patches, o.maxPatches);
  if (o.codebookSize <= available) return;
  const source = `${images} image${images === 1 ? '' : 's'} × ${perImage} patches of ${o.patchSize}×${o.patchSize}${patches > o.maxPatches ? `, sampled down to maxPatches ${o.maxPatches}` : ''}`;
  throw new MomaError('ERR_ARG', `${op}: codebookSize ${o.codebookSize} is more than the ${available} training patches there are (${source}); every code needs a patch: use a codebook size of at most ${available}, or train on more images`);
}

function fitCodebook(op: string, reservoir: PatchReservoir, images: number, o: ResolvedTrainOptions, onProgress?: (p: ImageTrainProgress) => void): ImageTokenizerTrainResult {
  checkCodebookFits(op, o, images, reservoir.seen);
  const dim = o.patchSize * o.patchSize * 3;
  const result = kmeans(reservoir.samples(), dim, {
    k: o.codebookSize, iterations: o.iterations, seed: o.seed,
    onIteration: onProgress && (({ iteration, changed }) => onProgress({ phase: 'kmeans', iteration, iterations: o.iterations, changed })),
  });
  const tokenizer = new ImageTokenizer({ imageSize: o.imageSize, patchSize: o.patchSize, codebook: result.centroids });
  const { iterations, converged, mse } = result.stats;
  return { tokenizer, stats: { images, patches: reservoir.held, patchesSeen: reservoir.seen, iterations, converged, mse } };
}

/** Decodes encoded image bytes (named `name` in errors) to imageSize² RGB. */
async function decodeImage(input: Buffer, name: string, imageSize: number): Promise<Uint8Array> {
  let decoded: { data: Buffer; info: OutputInfo };
  try {
    decoded = await sharp(input)
      .autoOrient()
      .flatten({ background: '#ffffff' })
      .resize(imageSize, imageSize, { fit: 'cover', position: 'centre' })
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new MomaError('ERR_FILE', `image ${name}: cannot be decoded (${(err as Error).message})`);
  }
  const { data, info } = decoded;
  if (info.width !== imageSize || info.height !== imageSize || info.channels !== 3 || data.length !== imageSize * imageSize * 3) {
    throw new MomaError('ERR_FILE', `image ${name}: decoded to ${info.width}×${info.height}×${info.channels}, expected ${imageSize}×${imageSize}×3`);
  }
  return new Uint8Array(data);
}

/**
 * The image files under `dir` (recursively, skipping names that start with '.'), with the
 * extensions of IMAGE_EXTENSIONS in any case, sorted by path.
 */
export function listImageFiles(dir: string): string[] {
  const op = 'listImageFiles';
  if (typeof dir !== 'string' || dir === '') throw new MomaError('ERR_ARG', `${op}: dir must be a non-empty string`);
  const files: string[] = [];
  const walk = (relative: string): void => {
    const folder = path.join(dir, relative);
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(folder, { withFileTypes: true });
    } catch (err) {
      throw new MomaError('ERR_FILE', `${op}: cannot read folder ${folder} (${(err as Error).message})`);
    }
    for (const entry of entries) {
      if (entry.name.startsWith('.')) continue;
      const name = path.join(relative, entry.name);
      if (entry.isDirectory()) walk(name);
      else if ((entry.isFile() || entry.isSymbolicLink()) && (IMAGE_EXTENSIONS as readonly string[]).includes(path.extname(entry.name).toLowerCase())) files.push(name);
    }
  };
  walk('');
  files.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return files.map((f) => path.join(dir, f));
}

export class ImageTokenizer {
  readonly imageSize: number;
  readonly patchSize: number;
  readonly codebookSize: number;
  /** (imageSize / patchSize)²: codes per image. */
  readonly tokensPerImage: number;
  /** p·p·3: values per patch. */
  readonly patchDim: number;
  /** [codebookSize, patchDim], values nominally in [0, 1]. */
  readonly codebook: Float32Array;

  /** A tokenizer over a given codebook (copied). */
  constructor(options: { imageSize: number; patchSize: number; codebook: Float32Array }) {
    const op = 'ImageTokenizer';
    if (options === null || typeof options !== 'object') throw new MomaError('ERR_ARG', `${op}: options must be an object`);
    const { imageSize, patchSize, codebook } = options;
    checkGeometry(op, imageSize, patchSize);
    this.imageSize = imageSize;
    this.patchSize = patchSize;
    this.patchDim = patchSize * patchSize * 3;
    this.tokensPerImage = (imageSize / patchSize) ** 2;
    if (!(codebook instanceof Float32Array) || codebook.length === 0 || codebook.length % this.patchDim !== 0) {
      throw new MomaError('ERR_SHAPE', `${op}: codebook must be a Float32Array of codebookSize × ${this.patchDim} values, got ${codebook instanceof Float32Array ? codebook.length : typeof codebook}`);
    }
    this.codebookSize = codebook.length / this.patchDim;
    checkInteger(op, 'codebookSize', this.codebookSize, 1, MAX_CODEBOOK_SIZE);
    const bad = codebook.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new MomaError('ERR_RANGE', `${op}: codebook value at code ${Math.floor(bad / this.patchDim)}, offset ${bad % this.patchDim} is ${codebook[bad]}, not finite`);
    this.codebook = Float32Array.from(codebook);
  }

  /** Trains a codebook on raw RGB images (imageSize²·3 bytes each). */
  static train(images: Iterable<Uint8Array>, options: ImageTokenizerTrainOptions): ImageTokenizerTrainResult {
    const op = 'ImageTokenizer.train';
    const o = resolveTrainOptions(op, options);
    if (images === null || typeof (images as { [Symbol.iterator]?: unknown })?.[Symbol.iterator] !== 'function') {
      throw new MomaError('ERR_ARG', `${op}: images must be an iterable of Uint8Array`);
    }
    const reservoir = new PatchReservoir(o.imageSize, o.patchSize, o.maxPatches, o.seed);
    const bytes = o.imageSize * o.imageSize * 3;
    let count = 0;
    for (const rgb of images) {
      if (!(rgb instanceof Uint8Array) || rgb.length !== bytes) {
        throw new MomaError('ERR_SHAPE', `${op}: image ${count} must be a Uint8Array of ${o.imageSize}×${o.imageSize}×3 = ${bytes} bytes, got ${rgb instanceof Uint8Array ? rgb.length : typeof rgb}`);
      }
      reservoir.add(rgb);
      count++;
    }
    if (count === 0) throw new MomaError('ERR_ARG', `${op}: no images to train on`);
    return fitCodebook(op, reservoir, count, o);
  }

  /** Trains a codebook on the images of a folder (see listImageFiles). */
  static async trainFromFolder(dir: string, options: ImageTokenizerTrainOptions & { onProgress?: (p: ImageTrainProgress) => void }): Promise<ImageTokenizerTrainResult> {
    const op = 'ImageTokenizer.trainFromFolder';
    const o = resolveTrainOptions(op, options);
    const { onProgress } = options;
    if (onProgress !== undefined && typeof onProgress !== 'function') throw new MomaError('ERR_ARG', `${op}: onProgress must be a function`);
    const files = listImageFiles(dir);
    if (files.length === 0) throw new MomaError('ERR_ARG', `${op}: folder ${dir} has no images (${IMAGE_EXTENSIONS.join(', ')})`);
    checkCodebookFits(op, o, files.length, files.length * (o.imageSize / o.patchSize) ** 2);  // before decoding any image
    const reservoir = new PatchReservoir(o.imageSize, o.patchSize, o.maxPatches, o.seed);
    for (let start = 0; start < files.length; start += READ_BATCH) {
      const batch = files.slice(start, start + READ_BATCH);
      const images = await Promise.all(batch.map((file) => ImageTokenizer.loadImage(file, o.imageSize)));
      images.forEach((rgb, i) => {
        reservoir.add(rgb);
        onProgress?.({ phase: 'read', done: start + i + 1, total: files.length, file: batch[i]! });
      });
    }
    return fitCodebook(op, reservoir, files.length, o, onProgress);
  }

  /** An image file as imageSize² RGB bytes (alpha on white, centre crop). */
  static async loadImage(file: string, imageSize: number): Promise<Uint8Array> {
    const op = 'ImageTokenizer.loadImage';
    if (typeof file !== 'string' || file === '') throw new MomaError('ERR_ARG', `${op}: file must be a non-empty string`);
    checkInteger(op, 'imageSize', imageSize, 1, MAX_IMAGE_SIZE);
    let input: Buffer;
    try {
      input = await fs.promises.readFile(file);
    } catch (err) {
      throw new MomaError('ERR_FILE', `image ${file}: cannot be read (${(err as Error).message})`);
    }
    return decodeImage(input, file, imageSize);
  }

  /** The codes of imageSize² RGB bytes, in raster order of patches. */
  encodePixels(rgb: Uint8Array): Int32Array {
    const bytes = this.imageSize * this.imageSize * 3;
    if (!(rgb instanceof Uint8Array) || rgb.length !== bytes) {
      throw new MomaError('ERR_SHAPE', `ImageTokenizer.encodePixels: expected a Uint8Array of ${this.imageSize}×${this.imageSize}×3 = ${bytes} bytes, got ${rgb instanceof Uint8Array ? rgb.length : typeof rgb}`);
    }
    const grid = this.imageSize / this.patchSize;
    const patches = new Float32Array(this.tokensPerImage * this.patchDim);
    for (let py = 0; py < grid; py++) {
      for (let px = 0; px < grid; px++) writePatch(rgb, this.imageSize, this.patchSize, py, px, patches, (py * grid + px) * this.patchDim);
    }
    return nearestCentroids(patches, this.patchDim, this.codebook);
  }

  async encodeFile(file: string): Promise<Int32Array> {
    return this.encodePixels(await ImageTokenizer.loadImage(file, this.imageSize));
  }

  /** Codes of encoded image bytes (PNG, JPEG, WebP …); `name` names them in errors. */
  async encodeBuffer(buf: Buffer, name: string): Promise<Int32Array> {
    if (!Buffer.isBuffer(buf)) throw new MomaError('ERR_ARG', `ImageTokenizer.encodeBuffer: buf must be a Buffer (${String(name)})`);
    return this.encodePixels(await decodeImage(buf, String(name), this.imageSize));
  }

  /** imageSize² RGB bytes of tokensPerImage codes. */
  decodePixels(codes: ArrayLike<number>): Uint8Array {
    const op = 'ImageTokenizer.decodePixels';
    if (codes === null || typeof codes !== 'object' || typeof codes.length !== 'number') throw new MomaError('ERR_ARG', `${op}: codes must be an array of integers`);
    if (codes.length !== this.tokensPerImage) throw new MomaError('ERR_SHAPE', `${op}: expected ${this.tokensPerImage} codes, got ${codes.length}`);
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i];
      if (typeof code !== 'number' || !Number.isInteger(code) || code < 0 || code >= this.codebookSize) {
        throw new MomaError('ERR_RANGE', `${op}: code ${String(code)} at position ${i} is not an integer in [0, ${this.codebookSize})`);
      }
    }
    const { imageSize: size, patchSize: p, patchDim } = this;
    const grid = size / p;
    const rgb = new Uint8Array(size * size * 3);
    for (let t = 0; t < codes.length; t++) {
      const py = Math.floor(t / grid);
      const px = t % grid;
      let src = codes[t]! * patchDim;
      for (let y = 0; y < p; y++) {
        let dst = ((py * p + y) * size + px * p) * 3;
        for (let v = 0; v < p * 3; v++) rgb[dst++] = Math.min(255, Math.max(0, Math.round(this.codebook[src++]! * 255)));
      }
    }
    return rgb;
  }

  /** A PNG of the decoded codes, upsampled `scale` times with nearest neighbour. */
  async decodeToPng(codes: ArrayLike<number>, scale = 1): Promise<Buffer> {
    checkInteger('ImageTokenizer.decodeToPng', 'scale', scale, 1, 64);
    const rgb = this.decodePixels(codes);
    const size = this.imageSize;
    let image = sharp(Buffer.from(rgb.buffer, rgb.byteOffset, rgb.length), { raw: { width: size, height: size, channels: 3 } });
    if (scale > 1) image = image.resize(size * scale, size * scale, { kernel: 'nearest' });
    return image.png().toBuffer();
  }

  /** The safetensors bytes of the codebook (deterministic). */
  toBuffer(): Buffer {
    return encodeSafetensors(
      [['codebook', { dtype: 'F32', shape: [this.codebookSize, this.patchDim], data: this.codebook }]],
      { format: FORMAT, version: VERSION, image_size: String(this.imageSize), patch_size: String(this.patchSize) },
    );
  }

  /** Writes toBuffer() to `file` atomically. */
  async save(file: string): Promise<void> {
    if (typeof file !== 'string' || file === '') throw new MomaError('ERR_ARG', 'ImageTokenizer.save: file must be a non-empty string');
    try {
      writeFileAtomic(file, this.toBuffer());
    } catch (err) {
      throw new MomaError('ERR_FILE', `ImageTokenizer.save: cannot write ${file} (${(err as Error).message})`);
    }
  }

  /** Reads a codebook file written by save(). */
  static load(file: string): ImageTokenizer {
    if (typeof file !== 'string' || file === '') throw new MomaError('ERR_ARG', 'ImageTokenizer.load: file must be a non-empty string');
    let buf: Buffer;
    try {
      buf = fs.readFileSync(file);
    } catch (err) {
      throw new MomaError('ERR_FILE', `image tokenizer ${file}: cannot be read (${(err as Error).message})`);
    }
    return ImageTokenizer.fromBuffer(buf, file);
  }

  /** Parses the bytes of a codebook file; `name` names it in errors. */
  static fromBuffer(buf: Buffer, name: string): ImageTokenizer {
    if (!Buffer.isBuffer(buf)) throw new MomaError('ERR_ARG', `ImageTokenizer.fromBuffer: buf must be a Buffer (${String(name)})`);
    const { metadata, tensors } = decodeSafetensors(buf, name);
    const fail = (key: string, what: string): never => {
      throw new MomaError('ERR_FILE', `image tokenizer ${name}: ${key} ${what}`);
    };
    if (metadata.format !== FORMAT) fail("metadata key 'format'", `must be "${FORMAT}", got ${describeValue(metadata.format)}`);
    if (metadata.version !== VERSION) fail("metadata key 'version'", `must be "${VERSION}", got ${describeValue(metadata.version)}`);
    const sizes: Record<string, number> = {};
    for (const key of ['image_size', 'patch_size']) {
      const text = metadata[key];
      if (text === undefined || !/^[1-9][0-9]{0,5}$/.test(text)) fail(`metadata key '${key}'`, `must be a positive integer, got ${describeValue(text)}`);
      sizes[key] = Number(text);
    }
    const imageSize = sizes.image_size!;
    const patchSize = sizes.patch_size!;
    if (imageSize > MAX_IMAGE_SIZE || patchSize > imageSize || imageSize % patchSize !== 0) {
      fail("metadata keys 'image_size', 'patch_size'", `${imageSize} and ${patchSize}: image size must be at most ${MAX_IMAGE_SIZE} and divisible by the patch size`);
    }
    const codebook = tensors.get('codebook');
    if (codebook === undefined) return fail("tensor 'codebook'", 'is missing');
    for (const key of tensors.keys()) if (key !== 'codebook') fail(`tensor ${describeKey(key)}`, 'is not expected (only "codebook")');
    const patchDim = patchSize * patchSize * 3;
    if (codebook.dtype !== 'F32') fail("tensor 'codebook'", `must be F32, got ${codebook.dtype}`);
    const [rows, cols] = codebook.shape;
    if (codebook.shape.length !== 2 || cols !== patchDim || rows! < 1 || rows! > MAX_CODEBOOK_SIZE) {
      fail("tensor 'codebook'", `must have shape [K, ${patchDim}] with 1 <= K <= ${MAX_CODEBOOK_SIZE} for ${patchSize}×${patchSize} RGB patches, got [${codebook.shape.join(', ')}]`);
    }
    const data = codebook.data as Float32Array;
    const bad = data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) fail("tensor 'codebook'", `value at code ${Math.floor(bad / patchDim)}, offset ${bad % patchDim} is ${data[bad]}, not finite`);
    return new ImageTokenizer({ imageSize, patchSize, codebook: data });
  }

  /** What a vocabulary layout records about this tokenizer, stored as `fileName`. */
  info(fileName = IMAGE_TOKENIZER_FILE): ImageTokenizerInfo {
    if (typeof fileName !== 'string' || fileName === '') throw new MomaError('ERR_ARG', 'ImageTokenizer.info: fileName must be a non-empty string');
    return {
      kind: 'vq-patch', file: fileName, sha256: createHash('sha256').update(this.toBuffer()).digest('hex'),
      imageSize: this.imageSize, patchSize: this.patchSize, codebookSize: this.codebookSize, tokensPerImage: this.tokensPerImage,
    };
  }
}
