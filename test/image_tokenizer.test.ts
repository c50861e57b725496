// The VQ patch image tokenizer: k-means against a plain float64 reference, determinism, empty
// clusters; patch layout and exact round trips; training on generated PNG/JPEG/WebP files with
// the reconstruction error it reaches; sharp's pipeline (alpha on white, centre crop, grey);
// codebook files (bit-exact, stable hash, every kind of bad file); and `moma tokenizer` end to end.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import sharp, { type Sharp } from 'sharp';
import { MomaError, MomaErrorCode } from '../lib';
import { registerTokenizerCommands } from '../lib/cli/tokenizer';
import { ImageTokenizer, listImageFiles } from '../lib/data/image_tokenizer';
import { kmeans, kmeansPlusPlus, nearestCentroids } from '../lib/data/kmeans';
import { SeededRandom } from '../lib/data/seeded_random';
import { decodeSafetensors, encodeSafetensors, HostTensor } from '../lib/io/safetensors';
import { throwsCode } from './support/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-imgtok-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function rejectsCode(promise: Promise<unknown>, code: MomaErrorCode, text?: string): Promise<void> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(MomaError);
  expect((err as MomaError).code).toBe(code);
  if (text !== undefined) expect((err as MomaError).message).toContain(text);
}

function caught(fn: () => unknown): MomaError {
  try {
    fn();
  } catch (e) {
    return e as MomaError;
  }
  throw new Error('expected a throw');
}

// ---- plain float64 k-means, written from the definition

interface Reference { centroids: number[][]; assignments: number[]; iterations: number; converged: boolean; mse: number }

function referenceKmeans(points: number[][], init: number[][], maxIterations: number): Reference {
  const dist = (a: number[], b: number[]): number => a.reduce((s, v, j) => s + (v - b[j]!) ** 2, 0);
  const nearest = (c: number[][]): number[] => points.map((p) => {
    let best = 0;
    for (let k = 1; k < c.length; k++) if (dist(p, c[k]!) < dist(p, c[best]!)) best = k;
    return best;
  });
  let centroids = init.map((c) => c.slice());
  let assignments = nearest(centroids);
  let iterations = 0;
  let converged = false;
  while (iterations < maxIterations) {
    const used = new Set<number>();
    centroids = centroids.map((c, k) => {
      const members = points.filter((_, i) => assignments[i] === k);
      if (members.length > 0) return c.map((_, j) => members.reduce((s, p) => s + p[j]!, 0) / members.length);
      let far = -1;
      points.forEach((p, i) => {
        if (!used.has(i) && (far < 0 || dist(p, centroids[assignments[i]!]!) > dist(points[far]!, centroids[assignments[far]!]!))) far = i;
      });
      used.add(far);
      return points[far]!.slice();
    });
    iterations++;
    const next = nearest(centroids);
    const changed = next.some((a, i) => a !== assignments[i]);
    assignments = next;
    if (!changed) {
      converged = true;
      break;
    }
  }
  const total = points.reduce((s, p, i) => s + dist(p, centroids[assignments[i]!]!), 0);
  return { centroids, assignments, iterations, converged, mse: total / (points.length * points[0]!.length) };
}

/** Seeded floats in [0, 1) for test data. */
function randomFloats(seed: number): () => number {
  const random = new SeededRandom(seed);
  return () => random.float();
}

const rows = (flat: Float32Array, dim: number): number[][] => Array.from({ length: flat.length / dim }, (_, i) => Array.from(flat.subarray(i * dim, (i + 1) * dim)));

/** Gaussian-ish blobs: `clusters` centres in [0, 10)^dim, points spread ±`spread` around them. */
function blobs(n: number, dim: number, clusters: number, spread: number, seed: number): Float32Array {
  const random = randomFloats(seed);
  const centres = Array.from({ length: clusters }, () => Array.from({ length: dim }, () => random() * 10));
  const out = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    const c = centres[Math.floor(random() * clusters)]!;
    for (let j = 0; j < dim; j++) out[i * dim + j] = c[j]! + (random() + random() + random() - 1.5) * spread;
  }
  return out;
}

describe('k-means', () => {
  test.each([
    ['clustered, converges', 1001, 5, 7, 100, 1],
    ['uniform 48-d, stopped after 4 updates', 1501, 48, 37, 4, 2],
    ['k = 1', 64, 3, 1, 10, 3],
  ])('matches the float64 reference (%s): assignments, centroids, iterations, mse', (_name, n, dim, k, iterations, seed) => {
    const points = dim === 48 ? Float32Array.from({ length: n * dim }, randomFloats(seed)) : blobs(n, dim, k, 1.5, seed);
    // the reference starts from the same centres: k distinct points spread over the data
    const init = new Float32Array(k * dim);
    for (let c = 0; c < k; c++) init.set(points.subarray(c * 13 * dim, (c * 13 + 1) * dim), c * dim);
    const got = kmeans(points, dim, { k, iterations, init });
    const want = referenceKmeans(rows(points, dim), rows(init, dim), iterations);
    expect(Array.from(got.assignments)).toEqual(want.assignments);
    expect(got.stats.iterations).toBe(want.iterations);
    expect(got.stats.converged).toBe(want.converged);
    expect(got.stats.reseeded).toBe(0);
    const centroids = rows(got.centroids, dim);
    for (let c = 0; c < k; c++) for (let j = 0; j < dim; j++) expect(Math.abs(centroids[c]![j]! - want.centroids[c]![j]!)).toBeLessThan(1e-5);
    expect(got.stats.mse).toBeCloseTo(want.mse, 6);
    // the returned assignments are the nearest centres of the returned centroids
    expect(Array.from(nearestCentroids(points, dim, got.centroids))).toEqual(Array.from(got.assignments));
    if (iterations === 100) expect(got.stats.converged).toBe(true);
  });

  test('an empty cluster is re-seeded with the point farthest from its centre', () => {
    // centre 1000 gets no point; 30 is farthest from its centre (10): it re-seeds centre 2
    const points = Float32Array.from([0, 1, 2, 10, 11, 30]);
    const seen: { iteration: number; changed: number }[] = [];
    const r = kmeans(points, 1, { k: 3, init: Float32Array.from([0, 10, 1000]), onIteration: (i) => seen.push(i) });
    expect(Array.from(r.centroids)).toEqual([1, 10.5, 30]);
    expect(Array.from(r.assignments)).toEqual([0, 0, 0, 1, 1, 2]);
    expect(r.stats).toEqual({ iterations: 2, converged: true, mse: 2.5 / 6, reseeded: 1 });
    expect(seen).toEqual([{ iteration: 1, changed: 1 }, { iteration: 2, changed: 0 }]);
    const ref = referenceKmeans(rows(points, 1), [[0], [10], [1000]], 20);
    expect(ref.centroids).toEqual([[1], [10.5], [30]]);
    // two empty clusters take the two farthest points, farthest first
    const two = kmeans(Float32Array.from([0, 1, 5, 20]), 1, { k: 3, iterations: 1, init: Float32Array.from([0, 500, 600]) });
    expect(Array.from(two.centroids)).toEqual([6.5, 20, 5]);
  });

  test('k-means++ is deterministic by seed and finds well-separated clusters', () => {
    const points = blobs(600, 4, 5, 0.05, 9);
    const a = kmeans(points, 4, { k: 5, seed: 3 });
    const b = kmeans(points, 4, { k: 5, seed: 3 });
    expect(Buffer.from(a.centroids.buffer).equals(Buffer.from(b.centroids.buffer))).toBe(true);
    expect(a.stats).toEqual(b.stats);
    expect(Buffer.from(kmeansPlusPlus(points, 4, 5, 4).buffer).equals(Buffer.from(kmeansPlusPlus(points, 4, 5, 3).buffer))).toBe(false);
    // every initial centre is a data point
    const init = rows(kmeansPlusPlus(points, 4, 5, 3), 4);
    const all = rows(points, 4).map((p) => p.join());
    for (const c of init) expect(all).toContain(c.join());
    // one centre per blob: the error is the blobs' own spread (uniform sum of 3 → variance 3/12 × 0.05²)
    expect(a.stats.converged).toBe(true);
    expect(a.stats.mse).toBeLessThan(0.05 ** 2 * 0.25 * 1.2);
    expect(new Set(a.assignments).size).toBe(5);
  });

  test('fewer distinct points than k: duplicate centres, zero error', () => {
    const points = Float32Array.from([1, 1, 2, 2, 1, 1, 3, 3]);
    const r = kmeans(points, 2, { k: 5, seed: 1 });
    expect(r.stats.mse).toBe(0);
    const distinct = new Set(rows(r.centroids, 2).map((c) => c.join()));
    expect([...distinct].sort()).toEqual(['1,1', '2,2', '3,3']);
    expect(r.assignments[0]).toBe(r.assignments[2]);
  });

  test('nearestCentroids breaks ties to the smaller index and handles odd sizes', () => {
    const centroids = Float32Array.from([5, 0, 0, 1, 0, 2, 3, 4, 9, 0, 0, 1]);
    expect(Array.from(nearestCentroids(Float32Array.from([0, 0, 9, 0, 0, 1.5, 4, 4, 100, 100]), 2, centroids))).toEqual([1, 4, 1, 3, 4]);
  });

  test('bad arguments are refused', () => {
    throwsCode(() => kmeans(Float32Array.from([1, 2, 3]), 2, { k: 1 }), 'ERR_SHAPE');
    throwsCode(() => kmeans(new Float32Array(0), 2, { k: 1 }), 'ERR_SHAPE');
    throwsCode(() => kmeans(Float32Array.from([1, NaN]), 1, { k: 1 }), 'ERR_RANGE');
    throwsCode(() => kmeans(Float32Array.from([1, 2]), 1, { k: 0 }), 'ERR_ARG');
    throwsCode(() => kmeans(Float32Array.from([1, 2]), 1, { k: 1, iterations: -1 }), 'ERR_ARG');
    throwsCode(() => kmeans(Float32Array.from([1, 2]), 1, { k: 1, seed: 1.5 }), 'ERR_ARG');
    for (const seed of [-1, 2 ** 32, NaN]) throwsCode(() => kmeansPlusPlus(Float32Array.from([1, 2]), 1, 1, seed), 'ERR_ARG');
    throwsCode(() => kmeans(Float32Array.from([1, 2]), 1, { k: 2, init: Float32Array.from([1]) }), 'ERR_SHAPE');
    throwsCode(() => kmeans([1, 2] as unknown as Float32Array, 1, { k: 1 }), 'ERR_ARG');
    throwsCode(() => nearestCentroids(Float32Array.from([1, 2]), 2, Float32Array.from([1, 2, 3])), 'ERR_SHAPE');
  });
});

// ---- image tokenizer

/** Synthetic w×h RGB: gradients, aligned blocks, stripes, a disk, a noisy ramp (kind = seed mod 5). */
function synthImage(seed: number, w: number, h: number): Uint8Array {
  const random = randomFloats(seed);
  const colour = (): number[] => [0, 0, 0].map(() => Math.floor(random() * 256));
  const [a, b] = [colour(), colour()];
  const blocks = Array.from({ length: 64 }, colour);
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let px: number[];
      const t = x / (w - 1);
      const s = y / (h - 1);
      switch (seed % 5) {
        case 0: px = a.map((v, c) => v + (b[c]! - v) * t); break;
        case 1: px = a.map((v, c) => v + (b[c]! - v) * s); break;
        case 2: px = blocks[Math.floor(y / 8) * 8 + Math.floor(x / 8)]!; break;
        case 3: px = Math.floor(x / 4) % 2 === 0 ? a : b; break;
        default: px = (x - w / 2) ** 2 + (y - h / 2) ** 2 < (w / 3) ** 2 ? a : a.map((v, c) => (v + b[c]! * (t + s)) / 2 + random() * 16);
      }
      for (let c = 0; c < 3; c++) out[(y * w + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(px[c]!)));
    }
  }
  return out;
}

const raw = (rgb: Uint8Array, w: number, h: number, channels: 1 | 3 | 4 = 3): Sharp => sharp(Buffer.from(rgb), { raw: { width: w, height: h, channels } });

async function writeImages(dir: string, count: number, size: number, formats: string[]): Promise<string[]> {
  fs.mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  for (let i = 0; i < count; i++) {
    const format = formats[i % formats.length]!;
    const file = path.join(dir, `img${String(i).padStart(3, '0')}.${format}`);
    const img = raw(synthImage(i, size, size), size, size);
    fs.writeFileSync(file, await (format === 'png' ? img.png() : format === 'webp' ? img.webp({ lossless: true }) : img.jpeg({ quality: 95 })).toBuffer());
    files.push(file);
  }
  return files;
}

/** A tokenizer whose codes are random patches on the uint8 grid (so decode is exact). */
function gridTokenizer(imageSize: number, patchSize: number, codes: number, seed: number): ImageTokenizer {
  const random = randomFloats(seed);
  const codebook = Float32Array.from({ length: codes * patchSize * patchSize * 3 }, () => Math.floor(random() * 256) / 255);
  return new ImageTokenizer({ imageSize, patchSize, codebook });
}

function psnr(mse: number): number {
  return 10 * Math.log10(1 / mse);
}

describe('ImageTokenizer: patches, encode and decode', () => {
  test('patches are raster order, values in (y, x, channel) order', () => {
    // code 1 is the 2×2 patch whose value k (in y, x, channel order) is 20k; code 0 is its transpose
    const ordered = Array.from({ length: 12 }, (_, k) => (20 * k) / 255);
    const transposed = [0, 2, 1, 3].flatMap((p) => ordered.slice(p * 3, p * 3 + 3));
    const tok = new ImageTokenizer({ imageSize: 4, patchSize: 2, codebook: Float32Array.from([...transposed, ...ordered, ...new Array(12).fill(1)]) });
    expect([tok.codebookSize, tok.tokensPerImage, tok.patchDim]).toEqual([3, 4, 12]);
    const rgb = new Uint8Array(4 * 4 * 3).fill(255);
    // patch (row 1, col 0) holds the ordered pattern
    for (let y = 0; y < 2; y++) for (let x = 0; x < 2; x++) for (let c = 0; c < 3; c++) rgb[((2 + y) * 4 + x) * 3 + c] = 20 * ((y * 2 + x) * 3 + c);
    expect(Array.from(tok.encodePixels(rgb))).toEqual([2, 2, 1, 2]);
    expect(Array.from(tok.decodePixels([2, 2, 1, 2]))).toEqual(Array.from(rgb));
  });

  test.each([[24, 3, 50], [16, 16, 7], [10, 1, 33]])('images built from codebook patches round-trip exactly (image %i, patch %i, %i codes)', (imageSize, patchSize, codes) => {
    const tok = gridTokenizer(imageSize, patchSize, codes, imageSize);
    const random = randomFloats(7);
    const grid = imageSize / patchSize;
    for (let trial = 0; trial < 3; trial++) {
      const chosen = Array.from({ length: tok.tokensPerImage }, () => Math.floor(random() * codes));
      const rgb = new Uint8Array(imageSize * imageSize * 3);
      chosen.forEach((code, t) => {
        let v = code * tok.patchDim;
        for (let y = 0; y < patchSize; y++) {
          for (let x = 0; x < patchSize; x++) {
            for (let c = 0; c < 3; c++) rgb[((Math.floor(t / grid) * patchSize + y) * imageSize + (t % grid) * patchSize + x) * 3 + c] = Math.round(tok.codebook[v++]! * 255);
          }
        }
      });
      const encoded = tok.encodePixels(rgb);
      expect(Array.from(encoded)).toEqual(chosen);
      expect(Buffer.from(tok.decodePixels(encoded)).equals(Buffer.from(rgb))).toBe(true);
    }
  });

  test('decode clamps and rounds codebook values; bad codes and pixel buffers are refused', () => {
    const tok = new ImageTokenizer({ imageSize: 1, patchSize: 1, codebook: Float32Array.from([-0.5, 0.5, 1.7, 0.2, 0.4, 0.6]) });
    expect(Array.from(tok.decodePixels([0]))).toEqual([0, 128, 255]);
    expect(Array.from(tok.decodePixels(Int32Array.from([1])))).toEqual([51, 102, 153]);
    throwsCode(() => tok.decodePixels([0, 1]), 'ERR_SHAPE');
    throwsCode(() => tok.decodePixels([]), 'ERR_SHAPE');
    expect(caught(() => tok.decodePixels([2])).message).toContain('code 2 at position 0');
    throwsCode(() => tok.decodePixels([2]), 'ERR_RANGE');
    throwsCode(() => tok.decodePixels([-1]), 'ERR_RANGE');
    throwsCode(() => tok.decodePixels([0.5]), 'ERR_RANGE');
    throwsCode(() => tok.decodePixels(null as unknown as number[]), 'ERR_ARG');
    throwsCode(() => tok.encodePixels(new Uint8Array(4)), 'ERR_SHAPE');
    throwsCode(() => tok.encodePixels([1, 2, 3] as unknown as Uint8Array), 'ERR_SHAPE');
    throwsCode(() => new ImageTokenizer({ imageSize: 10, patchSize: 4, codebook: new Float32Array(48) }), 'ERR_ARG');
    throwsCode(() => new ImageTokenizer({ imageSize: 0, patchSize: 1, codebook: new Float32Array(3) }), 'ERR_ARG');
    throwsCode(() => new ImageTokenizer({ imageSize: 4, patchSize: 2, codebook: new Float32Array(13) }), 'ERR_SHAPE');
    throwsCode(() => new ImageTokenizer({ imageSize: 1, patchSize: 1, codebook: Float32Array.from([0, NaN, 0]) }), 'ERR_RANGE');
  });

  test('decodeToPng writes a PNG, upsampled by nearest neighbour', async () => {
    const tok = gridTokenizer(6, 2, 5, 1);
    const codes = [0, 1, 2, 3, 4, 0, 1, 2, 3];
    const rgb = tok.decodePixels(codes);
    const { data, info } = await sharp(await tok.decodeToPng(codes)).raw().toBuffer({ resolveWithObject: true });
    expect([info.format, info.width, info.height, info.channels]).toEqual(['raw', 6, 6, 3]);
    expect(Buffer.from(data).equals(Buffer.from(rgb))).toBe(true);
    const png = await tok.decodeToPng(codes, 3);
    const meta = await sharp(png).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 18, 18]);
    const big = await sharp(png).raw().toBuffer();
    for (let y = 0; y < 18; y++) {
      for (let x = 0; x < 18; x++) {
        for (let c = 0; c < 3; c++) expect(big[(y * 18 + x) * 3 + c]).toBe(rgb[(Math.floor(y / 3) * 6 + Math.floor(x / 3)) * 3 + c]);
      }
    }
    await rejectsCode(tok.decodeToPng(codes, 0), 'ERR_ARG');
    await rejectsCode(tok.decodeToPng([9]), 'ERR_SHAPE');
  });
});

describe('ImageTokenizer: reading images', () => {
  test('PNG and JPEG of a solid colour; RGBA flattened onto white; grey becomes RGB', async () => {
    const solid = (format: 'png' | 'jpeg'): Promise<Buffer> => {
      const img = sharp({ create: { width: 40, height: 40, channels: 3, background: { r: 12, g: 200, b: 77 } } });
      return (format === 'png' ? img.png() : img.jpeg({ quality: 90 })).toBuffer();
    };
    fs.writeFileSync(path.join(tmp, 'solid.png'), await solid('png'));
    fs.writeFileSync(path.join(tmp, 'solid.jpg'), await solid('jpeg'));
    const png = await ImageTokenizer.loadImage(path.join(tmp, 'solid.png'), 7);
    expect(png.length).toBe(7 * 7 * 3);
    for (let i = 0; i < png.length; i += 3) expect([png[i], png[i + 1], png[i + 2]]).toEqual([12, 200, 77]);
    const jpg = await ImageTokenizer.loadImage(path.join(tmp, 'solid.jpg'), 8);
    for (let i = 0; i < jpg.length; i++) expect(Math.abs(jpg[i]! - [12, 200, 77][i % 3]!)).toBeLessThanOrEqual(3);

    // columns 0-1 transparent blue, column 2 half-transparent red, column 3 opaque red
    const rgba = new Uint8Array(4 * 4 * 4);
    for (let i = 0; i < 16; i++) rgba.set([[0, 0, 255, 0], [0, 0, 255, 0], [255, 0, 0, 128], [255, 0, 0, 255]][i % 4]!, i * 4);
    fs.writeFileSync(path.join(tmp, 'alpha.png'), await raw(rgba, 4, 4, 4).png().toBuffer());
    const flat = await ImageTokenizer.loadImage(path.join(tmp, 'alpha.png'), 4);
    for (let y = 0; y < 4; y++) {
      expect(Array.from(flat.subarray(y * 12, y * 12 + 6))).toEqual([255, 255, 255, 255, 255, 255]);
      const half = Array.from(flat.subarray(y * 12 + 6, y * 12 + 9));
      expect(half[0]).toBe(255);
      // 255·(1 − 128/255) = 127
      expect(Math.abs(half[1]! - 127)).toBeLessThanOrEqual(1);
      expect(Math.abs(half[2]! - 127)).toBeLessThanOrEqual(1);
      expect(Array.from(flat.subarray(y * 12 + 9, y * 12 + 12))).toEqual([255, 0, 0]);
    }

    fs.writeFileSync(path.join(tmp, 'grey.png'), await raw(new Uint8Array(25).fill(77), 5, 5, 1).png().toBuffer());
    expect(Array.from(await ImageTokenizer.loadImage(path.join(tmp, 'grey.png'), 2))).toEqual(new Array(12).fill(77));
  });

  test('a wide image is scaled to cover and centre-cropped', async () => {
    // 128×64: red | green (columns 24–103) | blue; scaled to 32×16, the centre 16 columns are
    // source columns 32–95, all green
    const rgb = new Uint8Array(128 * 64 * 3);
    for (let y = 0; y < 64; y++) for (let x = 0; x < 128; x++) rgb.set(x < 24 ? [255, 0, 0] : x < 104 ? [0, 255, 0] : [0, 0, 255], (y * 128 + x) * 3);
    const file = path.join(tmp, 'wide.png');
    fs.writeFileSync(file, await raw(rgb, 128, 64).png().toBuffer());
    const out = await ImageTokenizer.loadImage(file, 16);
    // (±2: the sRGB resampling rounds)
    for (let i = 0; i < out.length; i++) expect(Math.abs(out[i]! - [0, 255, 0][i % 3]!)).toBeLessThanOrEqual(2);
    // without the crop the red and blue edges would be in it: a 16×16 squash keeps them
    const squashed = await sharp(file).resize(16, 16, { fit: 'fill' }).raw().toBuffer();
    expect(squashed[0]).toBeGreaterThan(200);
  });

  test('missing, non-image and truncated files are ERR_FILE naming the file', async () => {
    await rejectsCode(ImageTokenizer.loadImage(path.join(tmp, 'nope.png'), 8), 'ERR_FILE', 'nope.png');
    const text = path.join(tmp, 'notes.png');
    fs.writeFileSync(text, 'this is not a picture\n');
    await rejectsCode(ImageTokenizer.loadImage(text, 8), 'ERR_FILE', 'notes.png');
    await rejectsCode(ImageTokenizer.loadImage(text, 8), 'ERR_FILE', 'unsupported image format');
    const png = await raw(synthImage(3, 16, 16), 16, 16).png().toBuffer();
    const truncated = path.join(tmp, 'truncated.png');
    fs.writeFileSync(truncated, png.subarray(0, png.length - 30));
    await rejectsCode(ImageTokenizer.loadImage(truncated, 8), 'ERR_FILE', 'truncated.png');
    await rejectsCode(ImageTokenizer.loadImage(truncated, 0), 'ERR_ARG');
    const tok = gridTokenizer(8, 4, 3, 1);
    await rejectsCode(tok.encodeBuffer(Buffer.from('GIF89a junk'), 'upload #3'), 'ERR_FILE', 'upload #3');
    fs.writeFileSync(path.join(tmp, 'ok.png'), png);
    const codes = Array.from(await tok.encodeBuffer(png, 'ok'));
    expect(codes).toEqual(Array.from(await tok.encodeFile(path.join(tmp, 'ok.png'))));
    expect(codes).toEqual(Array.from(tok.encodePixels(await ImageTokenizer.loadImage(path.join(tmp, 'ok.png'), 8))));
  });
});

describe('ImageTokenizer: training', () => {
  const folder = path.join(tmp, 'train');
  let files: string[] = [];
  beforeAll(async () => {
    files = await writeImages(folder, 20, 32, ['png', 'png', 'jpg', 'webp']);
    fs.mkdirSync(path.join(folder, 'sub'));
    files.push(...await writeImages(path.join(folder, 'sub'), 4, 48, ['png', 'jpeg']));
    fs.writeFileSync(path.join(folder, 'README.txt'), 'not an image');
    fs.writeFileSync(path.join(folder, '.hidden.png'), 'not an image either');
  });

  test('listImageFiles: image extensions in any case, recursive, sorted, hidden names skipped', () => {
    fs.copyFileSync(files[0]!, path.join(folder, 'sub', 'UPPER.PNG'));
    try {
      const listed = listImageFiles(folder).map((f) => path.relative(folder, f));
      expect(listed).toEqual([...files.map((f) => path.relative(folder, f)), path.join('sub', 'UPPER.PNG')].sort());
    } finally {
      fs.rmSync(path.join(folder, 'sub', 'UPPER.PNG'));
    }
    throwsCode(() => listImageFiles(path.join(tmp, 'missing-folder')), 'ERR_FILE');
  });

  test('trainFromFolder: reconstruction error equals the k-means objective and stays under its bound', async () => {
    const progress: string[] = [];
    const { tokenizer, stats } = await ImageTokenizer.trainFromFolder(folder, {
      imageSize: 32, patchSize: 4, codebookSize: 64, iterations: 30, seed: 5, onProgress: (p) => progress.push(p.phase),
    });
    expect(stats.images).toBe(24);
    expect(stats.patches).toBe(24 * 64);
    expect(stats.patchesSeen).toBe(24 * 64);
    expect(progress.filter((p) => p === 'read').length).toBe(24);
    expect(progress.filter((p) => p === 'kmeans').length).toBe(stats.iterations);
    // encoding the training images reaches exactly the objective k-means reports
    let squared = 0;
    let roundedSquared = 0;
    for (const file of files) {
      const rgb = await ImageTokenizer.loadImage(file, 32);
      const codes = tokenizer.encodePixels(rgb);
      expect(Array.from(codes)).toEqual(Array.from(await tokenizer.encodeFile(file)));
      const back = tokenizer.decodePixels(codes);
      const grid = 8;
      for (let t = 0; t < 64; t++) {
        let v = codes[t]! * 48;
        for (let y = 0; y < 4; y++) {
          for (let x = 0; x < 4; x++) {
            for (let c = 0; c < 3; c++, v++) {
              const at = ((Math.floor(t / grid) * 4 + y) * 32 + (t % grid) * 4 + x) * 3 + c;
              squared += (Math.fround(rgb[at]! / 255) - tokenizer.codebook[v]!) ** 2;
              roundedSquared += ((rgb[at]! - back[at]!) / 255) ** 2;
            }
          }
        }
      }
    }
    const values = 24 * 32 * 32 * 3;
    expect(Math.abs(squared / values - stats.mse) / stats.mse).toBeLessThan(1e-12);
    // rounding the decoded patches to bytes costs at most (0.5/255)² per value
    expect(roundedSquared / values).toBeLessThan(stats.mse + (0.5 / 255) ** 2);
    // Measured here: 1 code (the mean patch) 11.1 dB, 64 codes 24.2 dB, 256 codes 35.3 dB (flat
    // blocks and stripes become exact, gradients and the noisy ramp do not; over seeds 0-7 the
    // 256 codes reach 35.3-36.9 dB). The bounds leave ~1 dB for other JPEG/WebP decoders and
    // resamplers; a wrong patch layout or distance falls towards the one-code baseline, and the
    // 256-code bound sits above what k-means++ alone reaches (33.0 dB, iterations: 0).
    const one = await ImageTokenizer.trainFromFolder(folder, { imageSize: 32, patchSize: 4, codebookSize: 1 });
    const bigger = await ImageTokenizer.trainFromFolder(folder, { imageSize: 32, patchSize: 4, codebookSize: 256, iterations: 30, seed: 5 });
    expect(psnr(one.stats.mse)).toBeLessThan(13);
    expect(psnr(stats.mse)).toBeGreaterThan(23);
    expect(psnr(bigger.stats.mse)).toBeGreaterThan(34);
  });

  test('train (in memory): deterministic by seed, reservoir sample of maxPatches', () => {
    const images = Array.from({ length: 10 }, (_, i) => synthImage(i, 16, 16));
    const options = { imageSize: 16, patchSize: 2, codebookSize: 16, iterations: 10, seed: 1, maxPatches: 300 };
    const a = ImageTokenizer.train(images, options);
    const b = ImageTokenizer.train(images.values(), options);
    expect(a.stats).toMatchObject({ images: 10, patches: 300, patchesSeen: 640 });
    expect(a.tokenizer.toBuffer().equals(b.tokenizer.toBuffer())).toBe(true);
    expect(a.stats).toEqual(b.stats);
    const c = ImageTokenizer.train(images, { ...options, seed: 2 });
    expect(c.tokenizer.toBuffer().equals(a.tokenizer.toBuffer())).toBe(false);
    // without sampling every patch is used and the objective is the encoder's
    const all = ImageTokenizer.train(images, { ...options, maxPatches: 640 });
    expect(all.stats.patches).toBe(640);
    let squared = 0;
    for (const rgb of images) {
      const back = all.tokenizer.encodePixels(rgb);
      for (let t = 0; t < 64; t++) {
        const [py, px] = [Math.floor(t / 8), t % 8];
        for (let y = 0; y < 2; y++) for (let x = 0; x < 2; x++) for (let c = 0; c < 3; c++) {
          squared += (Math.fround(rgb[((py * 2 + y) * 16 + px * 2 + x) * 3 + c]! / 255) - all.tokenizer.codebook[back[t]! * 12 + (y * 2 + x) * 3 + c]!) ** 2;
        }
      }
    }
    expect(squared / (640 * 12)).toBeCloseTo(all.stats.mse, 12);
    throwsCode(() => ImageTokenizer.train([], options), 'ERR_ARG');
    throwsCode(() => ImageTokenizer.train([new Uint8Array(5)], options), 'ERR_SHAPE');
    throwsCode(() => ImageTokenizer.train(images, { ...options, patchSize: 3 }), 'ERR_ARG');
    throwsCode(() => ImageTokenizer.train(images, { ...options, codebookSize: 0 }), 'ERR_ARG');
    throwsCode(() => ImageTokenizer.train(images, { ...options, maxPatches: 0 }), 'ERR_ARG');
    throwsCode(() => ImageTokenizer.train(42 as unknown as Uint8Array[], options), 'ERR_ARG');
  });

  test('an empty folder is ERR_ARG, a corrupt image ERR_FILE, each naming what was wrong', async () => {
    const empty = path.join(tmp, 'empty');
    fs.mkdirSync(empty);
    fs.writeFileSync(path.join(empty, 'notes.txt'), 'hello');
    const options = { imageSize: 8, patchSize: 4, codebookSize: 4 };
    await rejectsCode(ImageTokenizer.trainFromFolder(empty, options), 'ERR_ARG', empty);
    await rejectsCode(ImageTokenizer.trainFromFolder(path.join(tmp, 'no-such-folder'), options), 'ERR_FILE', 'no-such-folder');
    const broken = path.join(tmp, 'broken');
    await writeImages(broken, 5, 8, ['png']);
    fs.writeFileSync(path.join(broken, 'img002.png'), 'plain text, not a PNG');
    await rejectsCode(ImageTokenizer.trainFromFolder(broken, options), 'ERR_FILE', path.join(broken, 'img002.png'));
  });
});

describe('ImageTokenizer: codebook files', () => {
  const tiny = (): ImageTokenizer => new ImageTokenizer({ imageSize: 2, patchSize: 1, codebook: Float32Array.from([0, 0.5, 1, 0.25, 0.75, 0.125]) });

  test('save/load round trip is bit-exact; the bytes and sha256 are stable', async () => {
    const tok = tiny();
    const bytes = tok.toBuffer();
    expect(tok.toBuffer().equals(bytes)).toBe(true);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    expect(JSON.parse(bytes.subarray(8, 8 + n).toString())).toEqual({
      __metadata__: { format: 'moma-vq-patch', version: '1', image_size: '2', patch_size: '1' },
      codebook: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
    });
    expect(bytes.length).toBe(8 + n + 24);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(TINY_SHA256);
    const file = path.join(tmp, 'tok', 'tiny.safetensors');
    await tok.save(file);
    expect(fs.readFileSync(file).equals(bytes)).toBe(true);
    const back = ImageTokenizer.load(file);
    expect(Buffer.from(back.codebook.buffer).equals(Buffer.from(tok.codebook.buffer))).toBe(true);
    expect([back.imageSize, back.patchSize, back.codebookSize, back.tokensPerImage]).toEqual([2, 1, 2, 4]);
    expect(back.info()).toEqual({
      kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: TINY_SHA256, imageSize: 2, patchSize: 1, codebookSize: 2, tokensPerImage: 4,
    });
    expect(back.info('codes.safetensors').file).toBe('codes.safetensors');
    // a trained codebook too
    const trained = ImageTokenizer.train([synthImage(2, 8, 8), synthImage(4, 8, 8)], { imageSize: 8, patchSize: 2, codebookSize: 5, seed: 3 }).tokenizer;
    await trained.save(file);
    const reloaded = ImageTokenizer.fromBuffer(fs.readFileSync(file), file);
    expect(reloaded.toBuffer().equals(trained.toBuffer())).toBe(true);
    expect(reloaded.info().sha256).toBe(createHash('sha256').update(fs.readFileSync(file)).digest('hex'));
  });

  const metadata = { format: 'moma-vq-patch', version: '1', image_size: '2', patch_size: '1' };
  const codebook = (shape: number[], data = new Float32Array(shape.reduce((a, b) => a * b, 1))): [string, HostTensor] => ['codebook', { dtype: 'F32', shape, data }];
  test.each<[string, () => Buffer, string]>([
    ['5 bytes', () => tiny().toBuffer().subarray(0, 5), 'shorter'],
    ['truncated header', () => tiny().toBuffer().subarray(0, 40), 'runs past the end'],
    ['truncated data', () => tiny().toBuffer().subarray(0, tiny().toBuffer().length - 4), 'data offsets'],
    ['not safetensors', () => Buffer.from('{"hello": "world"} and more text'), 'header length'],
    ['header not JSON', () => { const b = tiny().toBuffer(); b.write('@', 10); return b; }, 'JSON'],
    ['missing codebook', () => encodeSafetensors([], metadata), "tensor 'codebook' is missing"],
    ['extra tensor', () => encodeSafetensors([codebook([2, 3]), ['extra', { dtype: 'U8', shape: [1], data: new Uint8Array(1) }]], metadata), "tensor 'extra'"],
    ['wrong dtype', () => encodeSafetensors([['codebook', { dtype: 'I32', shape: [2, 3], data: new Int32Array(6) }]], metadata), 'must be F32'],
    ['wrong patch width', () => encodeSafetensors([codebook([2, 4])], metadata), 'shape [K, 3]'],
    ['1-d codebook', () => encodeSafetensors([codebook([6])], metadata), "tensor 'codebook'"],
    ['no codes', () => encodeSafetensors([codebook([0, 3])], metadata), "tensor 'codebook'"],
    ['NaN value', () => encodeSafetensors([codebook([2, 3], Float32Array.from([0, 0, 0, 0, NaN, 0]))], metadata), 'code 1, offset 1'],
    ['wrong format', () => encodeSafetensors([codebook([2, 3])], { ...metadata, format: 'other' }), "'format'"],
    ['no metadata', () => encodeSafetensors([codebook([2, 3])]), "'format'"],
    ['wrong version', () => encodeSafetensors([codebook([2, 3])], { ...metadata, version: '2' }), "'version'"],
    ['bad image_size', () => encodeSafetensors([codebook([2, 3])], { ...metadata, image_size: '2.5' }), "'image_size'"],
    ['missing patch_size', () => encodeSafetensors([codebook([2, 3])], { format: 'moma-vq-patch', version: '1', image_size: '2' }), "'patch_size'"],
    ['indivisible sizes', () => encodeSafetensors([codebook([2, 27])], { ...metadata, image_size: '4', patch_size: '3' }), 'divisible'],
  ])('a bad codebook file (%s) is ERR_FILE naming the file and the problem', (name, bytes, problem) => {
    const file = path.join(tmp, `bad-${name.replace(/\W/g, '_')}.safetensors`);
    fs.writeFileSync(file, bytes());
    const err = caught(() => ImageTokenizer.load(file));
    expect(err).toBeInstanceOf(MomaError);
    expect(err.code).toBe('ERR_FILE');
    expect(err.message).toContain(file);
    expect(err.message).toContain(problem);
  });

  test('a missing file is ERR_FILE naming it; save to an unwritable place is ERR_FILE', async () => {
    const file = path.join(tmp, 'absent.safetensors');
    expect(caught(() => ImageTokenizer.load(file))).toMatchObject({ code: 'ERR_FILE', message: expect.stringContaining(file) });
    throwsCode(() => ImageTokenizer.fromBuffer('x' as unknown as Buffer, 'x'), 'ERR_ARG');
    const blocker = path.join(tmp, 'blocker');
    fs.writeFileSync(blocker, 'a file where a folder should be');
    await rejectsCode(tiny().save(path.join(blocker, 'tok.safetensors')), 'ERR_FILE', blocker);
  });
});

describe('host-level safetensors', () => {
  test('encodeSafetensors / decodeSafetensors round-trip every dtype; malformed headers are ERR_FILE', () => {
    const entries: [string, HostTensor][] = [
      ['f', { dtype: 'F32', shape: [2, 2], data: Float32Array.from([1.5, -2, 3.25, 0]) }],
      ['b', { dtype: 'BF16', shape: [3], data: Uint16Array.from([0x3f80, 0xbf00, 0x7f80]) }],
      ['i', { dtype: 'I32', shape: [1], data: Int32Array.from([-7]) }],
      ['u', { dtype: 'U8', shape: [0], data: new Uint8Array(0) }],
    ];
    const bytes = encodeSafetensors(entries, { note: 'x' });
    const back = decodeSafetensors(bytes, 'mem');
    expect(back.metadata).toEqual({ note: 'x' });
    expect([...back.tensors.keys()]).toEqual(['f', 'b', 'i', 'u']);
    for (const [name, t] of entries) {
      const u = back.tensors.get(name)!;
      expect([u.dtype, u.shape, Array.from(u.data)]).toEqual([t.dtype, t.shape, Array.from(t.data)]);
    }
    const withHeader = (json: string): Buffer => {
      const padded = json + ' '.repeat((8 - (json.length % 8)) % 8);
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(padded.length));
      return Buffer.concat([len, Buffer.from(padded)]);
    };
    for (const [json, problem] of [['null', 'not a JSON object'], ['[1]', 'not a JSON object'], ['{"__metadata__": {"a": 1}}', '__metadata__'],
      ['{"t": null}', "tensor 't'"], ['{"t": {"dtype": "F32", "shape": [1], "data_offsets": 5}}', 'data offsets']] as const) {
      const err = caught(() => decodeSafetensors(withHeader(json), 'hdr.safetensors'));
      expect([err.code, err.message.includes('hdr.safetensors'), err.message.includes(problem)]).toEqual(['ERR_FILE', true, true]);
    }
    throwsCode(() => decodeSafetensors('abc' as unknown as Buffer, 'x'), 'ERR_ARG');
    throwsCode(() => encodeSafetensors([['f', { dtype: 'F32', shape: [3], data: new Float32Array(2) }]]), 'ERR_ARG');
  });
});

describe('moma tokenizer', () => {
  async function moma(args: string[]): Promise<string> {
    const lines: string[] = [];
    const spy = jest.spyOn(console, 'log').mockImplementation((...parts: unknown[]) => {
      lines.push(parts.join(' '));
    });
    try {
      const program = new Command().exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
      registerTokenizerCommands(program);
      await program.parseAsync(['node', 'moma', 'tokenizer', ...args]);
    } finally {
      spy.mockRestore();
    }
    return lines.join('\n');
  }

  test('train-image, encode-image and decode-image end to end', async () => {
    const dir = path.join(tmp, 'cli');
    const files = await writeImages(path.join(dir, 'images'), 6, 20, ['png']);
    const out = path.join(dir, 'tok.safetensors');
    const text = await moma(['train-image', path.join(dir, 'images'), '--out', out, '--image-size', '16', '--patch-size', '4', '--codebook-size', '8', '--iterations', '10', '--seed', '2']);
    expect(text).toMatch(/^images +6 from /m);
    expect(text).toMatch(/^patches +96 of 4×4, 16 per 16×16 image$/m);
    expect(text).toMatch(/^codebook +8 codes$/m);
    expect(text).toMatch(/^iterations +\d+/m);
    const tok = ImageTokenizer.load(out);
    expect(text).toContain(`saved      ${out} (sha256 ${tok.info().sha256})`);
    const mse = Number(/^mse +(\S+)/m.exec(text)![1]);
    expect(Number(/^psnr +(\S+) dB/m.exec(text)![1])).toBeCloseTo(psnr(mse), 1);
    expect(/^time +\d+\.\d+ s$/m.test(text)).toBe(true);
    // the same as the library with the same options
    const direct = await ImageTokenizer.trainFromFolder(path.join(dir, 'images'), { imageSize: 16, patchSize: 4, codebookSize: 8, iterations: 10, seed: 2 });
    expect(direct.tokenizer.toBuffer().equals(fs.readFileSync(out))).toBe(true);

    const json = JSON.parse(await moma(['encode-image', files[1]!, '--tokenizer', out, '--json'])) as number[];
    expect(json).toEqual(Array.from(await tok.encodeFile(files[1]!)));
    const grid = await moma(['encode-image', files[1]!, '--tokenizer', out]);
    expect(grid.split('\n')[0]).toBe('16 codes (4×4 patches of 4×4)');
    expect(grid.split('\n').slice(1).join(' ').trim().split(/\s+/).map(Number)).toEqual(json);

    const png = path.join(dir, 'out', 'decoded.png');
    expect(await moma(['decode-image', '--tokenizer', out, '--codes', JSON.stringify(json), '--out', png, '--scale', '2'])).toContain('32×32 PNG');
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([32, 32, 3]);
    const rgb = tok.decodePixels(json);
    for (let y = 0; y < 32; y += 5) for (let x = 0; x < 32; x += 3) expect(data[(y * 32 + x) * 3]).toBe(rgb[(Math.floor(y / 2) * 16 + Math.floor(x / 2)) * 3]);
    const codesFile = path.join(dir, 'codes.json');
    fs.writeFileSync(codesFile, JSON.stringify(json));
    const png1 = path.join(dir, 'decoded1.png');
    await moma(['decode-image', '--tokenizer', out, '--codes', `@${codesFile}`, '--out', png1]);
    expect(fs.readFileSync(png1).equals(await tok.decodeToPng(json))).toBe(true);
  });

  test('bad flags and inputs are MomaErrors', async () => {
    const dir = path.join(tmp, 'cli-bad');
    await writeImages(path.join(dir, 'images'), 2, 8, ['png']);
    const out = path.join(dir, 'tok.safetensors');
    const train = (...flags: string[]): Promise<string> => moma(['train-image', path.join(dir, 'images'), '--out', out, ...flags]);
    await rejectsCode(train('--image-size', '10', '--patch-size', '4'), 'ERR_ARG', 'multiple of --patch-size');
    await rejectsCode(train('--codebook-size', '0'), 'ERR_ARG', '--codebook-size');
    await rejectsCode(train('--iterations', 'ten'), 'ERR_ARG', '--iterations');
    await rejectsCode(train('--patch-size=-4'), 'ERR_ARG', '--patch-size');
    await rejectsCode(train('--max-patches', '1.5'), 'ERR_ARG', '--max-patches');
    await rejectsCode(moma(['train-image', path.join(dir, 'nothing-here'), '--out', out]), 'ERR_FILE', 'nothing-here');
    // 2 images of 8×8 in 4×4 patches: 8 patches, so at most 8 codes
    await rejectsCode(train('--image-size', '8', '--patch-size', '4', '--codebook-size', '16'), 'ERR_ARG', 'codebookSize 16 is more than the 8 training patches there are');
    expect(fs.existsSync(out)).toBe(false);
    expect(await train('--image-size', '8', '--patch-size', '4', '--codebook-size', '8')).toMatch(/^codebook +8 codes$/m);
    await rejectsCode(moma(['decode-image', '--tokenizer', out, '--codes', 'nope', '--out', path.join(dir, 'x.png')]), 'ERR_ARG', 'not valid JSON');
    await rejectsCode(moma(['decode-image', '--tokenizer', out, '--codes', '[1, 2]', '--out', path.join(dir, 'x.png')]), 'ERR_SHAPE');
    await rejectsCode(moma(['decode-image', '--tokenizer', out, '--codes', '[0, 1, 2, 99]', '--out', path.join(dir, 'x.png')]), 'ERR_RANGE');
    await rejectsCode(moma(['decode-image', '--tokenizer', out, '--codes', '@/no/such/codes.json', '--out', path.join(dir, 'x.png')]), 'ERR_FILE', 'codes.json');
    await rejectsCode(moma(['decode-image', '--tokenizer', out, '--codes', '[0,0,0,0]', '--out', path.join(dir, 'x.png'), '--scale', '0']), 'ERR_ARG', '--scale');
    await rejectsCode(moma(['encode-image', path.join(dir, 'missing.png'), '--tokenizer', out]), 'ERR_FILE', 'missing.png');
    await rejectsCode(moma(['encode-image', path.join(dir, 'images', 'img000.png'), '--tokenizer', path.join(dir, 'none.safetensors')]), 'ERR_FILE', 'none.safetensors');
    expect(fs.existsSync(path.join(dir, 'x.png'))).toBe(false);
  });
});

// the sha256 of the tiny codebook file
const TINY_SHA256 = '02b620cf11b0ddf53866ba94ae822ed6902c0564308a0de0ad3269c197fbd31d';
