/**
 * An independent float64 reference for moma's ops, in plain TypeScript (no moma imports).
 *
 *  - a seeded JS PRNG (mulberry32) for random test inputs — deliberately not moma's Philox;
 *  - float64 implementations of every op on flat row-major arrays + shapes;
 *  - float32 / bfloat16 / int32 / uint8 rounding and casts (bf16 round-to-nearest-even through
 *    DataView bit operations);
 *  - Philox4x32-10 + Box–Muller written from the description in csrc/core/philox.h;
 *  - comparison helpers (max abs / rel error, relative Frobenius error, NaN handling, ulps).
 */

// ---------------------------------------------------------------------------------------------
// Seeded PRNG (mulberry32) and random inputs

export type Rng = () => number;

/** mulberry32: uniform in [0, 1) from a 32-bit seed. */
export function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i] as number;
  }
  return s;
}

/** float32-representable values uniform in [lo, hi). */
export function randomF32(rng: Rng, n: number, lo = -1, hi = 1): Float64Array {
  const out = new Float64Array(n);
  const fround = Math.fround; // one global lookup (slow inside jest's vm context), not one per value
  for (let i = 0; i < n; i++) out[i] = fround(lo + (hi - lo) * rng());
  return out;
}

/** bf16-representable values uniform in [lo, hi). */
export function randomBf16(rng: Rng, n: number, lo = -1, hi = 1): Float64Array {
  const out = randomF32(rng, n, lo, hi);
  for (let i = 0; i < n; i++) out[i] = bf16Round(out[i] as number);
  return out;
}

/** Integers uniform in [lo, hi]. */
export function randomInt(rng: Rng, n: number, lo: number, hi: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + Math.floor(rng() * (hi - lo + 1));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Scalar rounding and casts

const scratch = new DataView(new ArrayBuffer(8));

export function f32Bits(x: number): number {
  scratch.setFloat32(0, x);
  return scratch.getUint32(0);
}

export function bitsF32(u: number): number {
  scratch.setUint32(0, u >>> 0);
  return scratch.getFloat32(0);
}

/** float32 -> bf16 bits, round to nearest, ties to even; NaN stays a quiet NaN. */
export function f32ToBf16Bits(x: number): number {
  const u = f32Bits(x);
  if ((u & 0x7fffffff) >>> 0 > 0x7f800000) return ((u >>> 16) | 0x0040) & 0xffff;
  const lsb = (u >>> 16) & 1;
  return Math.floor((u + 0x7fff + lsb) / 65536) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  return bitsF32((h & 0xffff) * 65536);
}

/** x rounded to float32, then to bf16 (ties to even). */
export function bf16Round(x: number): number {
  return bf16BitsToF32(f32ToBf16Bits(Math.fround(x)));
}

export const f32 = Math.fround;

/** Float -> int32: truncate toward zero, NaN -> 0, saturating. */
export function toInt32Sat(v: number): number {
  if (Number.isNaN(v)) return 0;
  if (v >= 2147483647) return 2147483647;
  if (v <= -2147483648) return -2147483648;
  return Math.trunc(v);
}

/** Float -> uint8: truncate, NaN -> 0, saturating to [0, 255]. */
export function toUint8Sat(v: number): number {
  if (!(v > 0)) return 0;
  if (v >= 255) return 255;
  return Math.trunc(v);
}

export type RefDType = 'float32' | 'bfloat16' | 'int32' | 'uint8';

/** Stores a float64 value into `dtype` (through float32 for bf16), as moma's casts do. */
export function castTo(dtype: RefDType, v: number): number {
  switch (dtype) {
    case 'float32': return Math.fround(v);
    case 'bfloat16': return bf16Round(v);
    case 'int32': return toInt32Sat(v);
    case 'uint8': return toUint8Sat(v);
  }
}

/** Rounds a float64 result to the storage precision of a float dtype. */
export function roundTo(dtype: RefDType, v: number): number {
  return dtype === 'bfloat16' ? bf16Round(v) : dtype === 'float32' ? Math.fround(v) : v;
}

export function wrapI32(v: number): number {
  return v | 0;
}

// ---------------------------------------------------------------------------------------------
// Element-wise ops

export type UnaryName =
  | 'neg' | 'exp' | 'log' | 'silu' | 'sigmoid' | 'tanh' | 'sqrt' | 'rsqrt' | 'abs' | 'square'
  | 'scale' | 'addScalar' | 'pow';

/** C/IEEE pow (JS differs for pow(1, NaN) and pow(-1, ±Infinity)). */
export function powC(x: number, y: number): number {
  if (x === 1 || y === 0) return 1;
  if (x === -1 && (y === Infinity || y === -Infinity)) return 1;
  return Math.pow(x, y);
}

export function sigmoidRef(x: number): number {
  return x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
}

/** Float unary in float64 on (already rounded) inputs; alpha is rounded to float32 as moma does. */
export function unaryRef(op: UnaryName, x: ArrayLike<number>, alpha = 0): Float64Array {
  const a = Math.fround(alpha);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    let r: number;
    switch (op) {
      case 'neg': r = -v; break;
      case 'exp': r = Math.exp(v); break;
      case 'log': r = Math.log(v); break;
      case 'silu': r = v * sigmoidRef(v); break;
      case 'sigmoid': r = sigmoidRef(v); break;
      case 'tanh': r = Math.tanh(v); break;
      case 'sqrt': r = Math.sqrt(v); break;
      case 'rsqrt': r = 1 / Math.sqrt(v); break;
      case 'abs': r = Math.abs(v); break;
      case 'square': r = v * v; break;
      case 'scale': r = a * v; break;
      case 'addScalar': r = v + a; break;
      case 'pow': r = powC(v, a); break;
    }
    out[i] = r;
  }
  return out;
}

/** int32 unary with wraparound (alpha integral). */
export function unaryIntRef(op: 'neg' | 'abs' | 'square' | 'scale' | 'addScalar', x: ArrayLike<number>, alpha = 0): Float64Array {
  const out = new Float64Array(x.length);
  const a = Number(BigInt.asIntN(32, BigInt(Math.trunc(alpha))));
  for (let i = 0; i < x.length; i++) {
    const v = (x[i] as number) | 0;
    switch (op) {
      case 'neg': out[i] = (-v) | 0; break;
      case 'abs': out[i] = v < 0 ? (-v) | 0 : v; break;
      case 'square': out[i] = Math.imul(v, v); break;
      case 'scale': out[i] = Math.imul(v, a); break;
      case 'addScalar': out[i] = (v + a) | 0; break;
    }
  }
  return out;
}

export type BinaryName = 'add' | 'sub' | 'mul' | 'div' | 'maximum' | 'minimum';

export function binaryScalar(op: BinaryName, p: number, q: number): number {
  switch (op) {
    case 'add': return p + q;
    case 'sub': return p - q;
    case 'mul': return p * q;
    case 'div': return p / q;
    case 'maximum': return Number.isNaN(p) || p > q ? p : q;
    case 'minimum': return Number.isNaN(p) || p < q ? p : q;
  }
}

export function binaryIntScalar(op: BinaryName, p: number, q: number): number {
  switch (op) {
    case 'add': return (p + q) | 0;
    case 'sub': return (p - q) | 0;
    case 'mul': return Math.imul(p, q);
    case 'div': return q === 0 ? 0 : q === -1 ? (-p) | 0 : Math.trunc(p / q) | 0;
    case 'maximum': return Math.max(p, q);
    case 'minimum': return Math.min(p, q);
  }
}

export function broadcastShapes(...shapes: (readonly number[])[]): number[] | null {
  const n = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(n).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const k = n - s.length + i;
      const d = s[i] as number;
      const cur = out[k] as number;
      if (cur === d || d === 1) continue;
      if (cur === 1) out[k] = d;
      else return null;
    }
  }
  return out;
}

/** For each output position (row-major over `out`), the flat index into an input of `shape`. */
export function broadcastIndex(shape: readonly number[], out: readonly number[]): Int32Array {
  const n = numel(out);
  const idx = new Int32Array(n);
  const lead = out.length - shape.length;
  const st = stridesOf(shape);
  const eff = out.map((_d, k) => (k < lead || shape[k - lead] === 1 ? 0 : (st[k - lead] as number)));
  const pos = new Array<number>(out.length).fill(0);
  let off = 0;
  for (let i = 0; i < n; i++) {
    idx[i] = off;
    for (let k = out.length - 1; k >= 0; k--) {
      pos[k] = (pos[k] as number) + 1;
      off += eff[k] as number;
      if ((pos[k] as number) < (out[k] as number)) break;
      off -= (eff[k] as number) * (out[k] as number);
      pos[k] = 0;
    }
  }
  return idx;
}

export interface RefTensor {
  shape: number[];
  data: Float64Array;
}

export function binaryRef(
  op: BinaryName, a: ArrayLike<number>, as: readonly number[], b: ArrayLike<number>, bs: readonly number[],
  int = false,
): RefTensor {
  const shape = broadcastShapes(as, bs);
  if (!shape) throw new Error(`reference: shapes [${as}] and [${bs}] do not broadcast`);
  const ia = broadcastIndex(as, shape), ib = broadcastIndex(bs, shape);
  const data = new Float64Array(ia.length);
  for (let i = 0; i < ia.length; i++) {
    const p = a[ia[i] as number] as number, q = b[ib[i] as number] as number;
    data[i] = int ? binaryIntScalar(op, p, q) : binaryScalar(op, p, q);
  }
  return { shape, data };
}

export function whereRef(
  c: ArrayLike<number>, cs: readonly number[], a: ArrayLike<number>, as: readonly number[],
  b: ArrayLike<number>, bs: readonly number[],
): RefTensor {
  const shape = broadcastShapes(cs, as, bs);
  if (!shape) throw new Error('reference: where shapes do not broadcast');
  const ic = broadcastIndex(cs, shape), ia = broadcastIndex(as, shape), ib = broadcastIndex(bs, shape);
  const data = new Float64Array(ic.length);
  for (let i = 0; i < ic.length; i++) data[i] = (c[ic[i] as number] as number) !== 0 ? (a[ia[i] as number] as number) : (b[ib[i] as number] as number);
  return { shape, data };
}

// ---------------------------------------------------------------------------------------------
// Reductions and softmax (tensor seen as [outer, n, inner] around `axis`)

export function normAxis(axis: number, ndim: number): number {
  return axis < 0 ? axis + ndim : axis;
}

export function splitAt(shape: readonly number[], axis: number): { outer: number; n: number; inner: number } {
  const ax = normAxis(axis, shape.length);
  return { outer: numel(shape.slice(0, ax)), n: shape[ax] as number, inner: numel(shape.slice(ax + 1)) };
}

export type ReduceName = 'sum' | 'mean' | 'max' | 'argmax';

/**
 * Reduction over `axis`. Sum / mean in float64; int32 sum wraps; max propagates NaN; argmax gives
 * the first index of the maximum, the first NaN counting as the maximum.
 * `absSum` (for tolerances) holds the sum of |x| of each output.
 */
export function reduceRef(
  op: ReduceName, x: ArrayLike<number>, shape: readonly number[], axis: number, keepdim = false, int = false,
): RefTensor & { absSum: Float64Array } {
  const ax = normAxis(axis, shape.length);
  const { outer, n, inner } = splitAt(shape, ax);
  const outShape = shape.slice();
  if (keepdim) outShape[ax] = 1;
  else outShape.splice(ax, 1);
  const data = new Float64Array(outer * inner);
  const absSum = new Float64Array(outer * inner);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      let acc = 0, abs = 0, best = NaN, bestIdx = 0;
      for (let j = 0; j < n; j++) {
        const v = x[(o * n + j) * inner + i] as number;
        abs += Math.abs(v);
        if (op === 'sum' || op === 'mean') acc = int ? (acc + v) | 0 : acc + v;
        else if (j === 0) { best = v; bestIdx = 0; }
        else if (!Number.isNaN(best) && (Number.isNaN(v) || v > best)) { best = v; bestIdx = j; }
      }
      const q = o * inner + i;
      absSum[q] = abs;
      data[q] = op === 'sum' ? acc : op === 'mean' ? acc / n : op === 'max' ? best : bestIdx;
    }
  }
  return { shape: outShape, data, absSum };
}

export function softmaxRef(x: ArrayLike<number>, shape: readonly number[], axis: number, log = false): Float64Array {
  const { outer, n, inner } = splitAt(shape, axis);
  const out = new Float64Array(x.length);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const at = (j: number): number => (o * n + j) * inner + i;
      let m = x[at(0)] as number;
      for (let j = 1; j < n; j++) {
        const v = x[at(j)] as number;
        if (!Number.isNaN(m) && (Number.isNaN(v) || v > m)) m = v;
      }
      let s = 0;
      for (let j = 0; j < n; j++) s += Math.exp((x[at(j)] as number) - m);
      for (let j = 0; j < n; j++) {
        const d = (x[at(j)] as number) - m;
        out[at(j)] = log ? d - Math.log(s) : Math.exp(d) / s;
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Layout

export function permuteRef(x: ArrayLike<number>, shape: readonly number[], dims: readonly number[]): RefTensor {
  const nd = shape.length;
  const d = dims.map((v) => normAxis(v, nd));
  const outShape = d.map((k) => shape[k] as number);
  const st = stridesOf(shape);
  const n = numel(outShape);
  const data = new Float64Array(n);
  const pos = new Array<number>(nd).fill(0);
  for (let q = 0; q < n; q++) {
    let off = 0;
    for (let k = 0; k < nd; k++) off += (pos[k] as number) * (st[d[k] as number] as number);
    data[q] = x[off] as number;
    for (let k = nd - 1; k >= 0; k--) {
      pos[k] = (pos[k] as number) + 1;
      if ((pos[k] as number) < (outShape[k] as number)) break;
      pos[k] = 0;
    }
  }
  return { shape: outShape, data };
}

export function transposeRef(x: ArrayLike<number>, shape: readonly number[], d0 = -2, d1 = -1): RefTensor {
  const nd = shape.length;
  const dims = [...Array(nd).keys()];
  const a = normAxis(d0, nd), b = normAxis(d1, nd);
  [dims[a], dims[b]] = [dims[b] as number, dims[a] as number];
  return permuteRef(x, shape, dims);
}

export function sliceRef(x: ArrayLike<number>, shape: readonly number[], axis: number, start: number, end: number): RefTensor {
  const ax = normAxis(axis, shape.length);
  const size = shape[ax] as number;
  const s = start < 0 ? start + size : start, e = end < 0 ? end + size : end;
  const { outer, inner } = splitAt(shape, ax);
  const len = e - s;
  const outShape = shape.slice();
  outShape[ax] = len;
  const data = new Float64Array(outer * len * inner);
  let q = 0;
  for (let o = 0; o < outer; o++)
    for (let j = s; j < e; j++)
      for (let i = 0; i < inner; i++) data[q++] = x[(o * size + j) * inner + i] as number;
  return { shape: outShape, data };
}

export function concatRef(parts: { data: ArrayLike<number>; shape: readonly number[] }[], axis: number): RefTensor {
  const first = parts[0] as { data: ArrayLike<number>; shape: readonly number[] };
  const ax = normAxis(axis, first.shape.length);
  const outShape = first.shape.slice();
  outShape[ax] = parts.reduce((acc, p) => acc + (p.shape[ax] as number), 0);
  const { outer } = splitAt(first.shape, ax);
  const data = new Float64Array(numel(outShape));
  let q = 0;
  for (let o = 0; o < outer; o++) {
    for (const p of parts) {
      const block = (p.shape[ax] as number) * numel(p.shape.slice(ax + 1));
      for (let t = 0; t < block; t++) data[q++] = p.data[o * block + t] as number;
    }
  }
  return { shape: outShape, data };
}

export function broadcastToRef(x: ArrayLike<number>, shape: readonly number[], target: readonly number[]): RefTensor {
  const idx = broadcastIndex(shape, target);
  const data = new Float64Array(idx.length);
  for (let i = 0; i < idx.length; i++) data[i] = x[idx[i] as number] as number;
  return { shape: target.slice(), data };
}

// ---------------------------------------------------------------------------------------------
// Indexing

export function indexSelectRef(x: ArrayLike<number>, shape: readonly number[], axis: number, index: ArrayLike<number>): RefTensor {
  const ax = normAxis(axis, shape.length);
  const { outer, n, inner } = splitAt(shape, ax);
  const k = index.length;
  const outShape = shape.slice();
  outShape[ax] = k;
  const data = new Float64Array(outer * k * inner);
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < k; j++) {
      const r = index[j] as number;
      if (r < 0 || r >= n) throw new Error(`reference: index ${r} out of range`);
      for (let i = 0; i < inner; i++) data[(o * k + j) * inner + i] = x[(o * n + r) * inner + i] as number;
    }
  return { shape: outShape, data };
}

/**
 * out = x with src[o, j, i] added at [o, index[j], i], contributions in increasing j.
 * accumulate: 'f64' (exact reference), 'f32' (float32 rounding after every add, as moma's float32
 * kernel), 'bf16' (float32 accumulation from the widened values, one bf16 rounding at the end),
 * 'i32' (wrapping).
 */
export function scatterAddRef(
  x: ArrayLike<number>, shape: readonly number[], axis: number, index: ArrayLike<number>, src: ArrayLike<number>,
  accumulate: 'f64' | 'f32' | 'bf16' | 'i32' = 'f64',
): RefTensor {
  const ax = normAxis(axis, shape.length);
  const { outer, n, inner } = splitAt(shape, ax);
  const k = index.length;
  const data = Float64Array.from(x as ArrayLike<number>);
  const touched = new Uint8Array(data.length);
  for (let o = 0; o < outer; o++)
    for (let j = 0; j < k; j++) {
      const r = index[j] as number;
      for (let i = 0; i < inner; i++) {
        const q = (o * n + r) * inner + i;
        const v = src[(o * k + j) * inner + i] as number;
        touched[q] = 1;
        const s = (data[q] as number) + v;
        data[q] = accumulate === 'f32' || accumulate === 'bf16' ? Math.fround(s) : accumulate === 'i32' ? s | 0 : s;
      }
    }
  if (accumulate === 'bf16') for (let q = 0; q < data.length; q++) if (touched[q]) data[q] = bf16Round(data[q] as number);
  return { shape: shape.slice(), data };
}

// ---------------------------------------------------------------------------------------------
// Matmul

/**
 * Batched matmul: a [..., M, K] (or [..., K, M] with transA), b [..., K, N] (or [..., N, K] with
 * transB); batch dims equal, or one side has none (broadcast). Float64 accumulation.
 * absDot[b, m, n] = sum_k |a||b| (for error bounds).
 */
export function matmulRef(
  a: ArrayLike<number>, as: readonly number[], b: ArrayLike<number>, bs: readonly number[], transA = false, transB = false,
): RefTensor & { absDot: Float64Array; K: number } {
  const ra = as.length, rb = bs.length;
  const M = transA ? (as[ra - 1] as number) : (as[ra - 2] as number);
  const K = transA ? (as[ra - 2] as number) : (as[ra - 1] as number);
  const Kb = transB ? (bs[rb - 1] as number) : (bs[rb - 2] as number);
  const N = transB ? (bs[rb - 2] as number) : (bs[rb - 1] as number);
  if (K !== Kb) throw new Error('reference: matmul inner dims differ');
  const ba = as.slice(0, ra - 2), bb = bs.slice(0, rb - 2);
  const batchShape = ba.length ? ba : bb;
  if (ba.length && bb.length && ba.join() !== bb.join()) throw new Error('reference: matmul batch dims differ');
  const batch = numel(batchShape);
  const sA = ba.length ? M * K : 0, sB = bb.length ? K * N : 0;
  const data = new Float64Array(batch * M * N);
  const absDot = new Float64Array(batch * M * N);
  for (let t = 0; t < batch; t++)
    for (let m = 0; m < M; m++)
      for (let nn = 0; nn < N; nn++) {
        let acc = 0, abs = 0;
        for (let k = 0; k < K; k++) {
          const av = a[t * sA + (transA ? k * M + m : m * K + k)] as number;
          const bv = b[t * sB + (transB ? nn * K + k : k * N + nn)] as number;
          acc += av * bv;
          abs += Math.abs(av * bv);
        }
        data[(t * M + m) * N + nn] = acc;
        absDot[(t * M + m) * N + nn] = abs;
      }
  return { shape: [...batchShape, M, N], data, absDot, K };
}

// ---------------------------------------------------------------------------------------------
// Philox4x32-10 and Box–Muller (from csrc/core/philox.h)

const M0 = 0xd2511f53, M1 = 0xcd9e8d57, W0 = 0x9e3779b9, W1 = 0xbb67ae85;
export const MASK64 = (1n << 64n) - 1n;

/** (hi, lo) of the 64-bit product of two uint32, via 16-bit halves (exact in doubles). */
export function mulhilo(a: number, b: number): [number, number] {
  const al = a & 0xffff, ah = a >>> 16, bl = b & 0xffff, bh = b >>> 16;
  const ll = al * bl;
  const mid = ah * bl + al * bh + Math.floor(ll / 65536);
  const hi = (ah * bh + Math.floor(mid / 65536)) >>> 0;
  const lo = Math.imul(a, b) >>> 0;
  return [hi, lo];
}

/** The same product in BigInt (to cross-check mulhilo). */
export function mulhiloBig(a: number, b: number): [number, number] {
  const p = BigInt(a >>> 0) * BigInt(b >>> 0);
  return [Number(p >> 32n), Number(p & 0xffffffffn)];
}

/** Philox4x32 with a full 128-bit counter and 64-bit key (ten rounds by default). */
export function philox4x32(ctr: readonly number[], key0: number, key1: number, rounds = 10): [number, number, number, number] {
  let c0 = ctr[0]! >>> 0, c1 = ctr[1]! >>> 0, c2 = ctr[2]! >>> 0, c3 = ctr[3]! >>> 0;
  let k0 = key0 >>> 0, k1 = key1 >>> 0;
  for (let r = 0; r < rounds; r++) {
    const [hi0, lo0] = mulhilo(M0, c0);
    const [hi1, lo1] = mulhilo(M1, c2);
    const n0 = (hi1 ^ c1 ^ k0) >>> 0, n1 = lo1, n2 = (hi0 ^ c3 ^ k1) >>> 0, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return [c0, c1, c2, c3];
}

/** moma's block function: counter = block index (low 64 bits), key = seed. */
export function philoxBlock(counter: bigint, seed: bigint): [number, number, number, number] {
  const c = counter & MASK64, s = seed & MASK64;
  return philox4x32([Number(c & 0xffffffffn), Number(c >> 32n), 0, 0], Number(s & 0xffffffffn), Number(s >> 32n));
}

/** Uniform in (0, 1]: 24 random bits, never 0. */
export function wordToUnit(w: number): number {
  return ((w >>> 8) + 1) / 16777216;
}

/** y[i] = low + (high - low) * u_i in float32 arithmetic (product and sum rounded separately). */
export function philoxUniformRef(n: number, seed: bigint, offset: bigint, low = 0, high = 1, dtype: RefDType = 'float32'): Float64Array {
  const lo = Math.fround(low), range = Math.fround(Math.fround(high) - lo);
  const out = new Float64Array(n);
  let block: [number, number, number, number] = [0, 0, 0, 0];
  for (let i = 0; i < n; i++) {
    if (i % 4 === 0) block = philoxBlock(offset + BigInt(i / 4), seed);
    const u = wordToUnit(block[i % 4] as number);
    const y = Math.fround(lo + Math.fround(range * u));
    out[i] = dtype === 'bfloat16' ? bf16Round(y) : y;
  }
  return out;
}

/**
 * Uniform in the open interval (0, 1) in double (philox_uniform_open): 24 random bits plus one
 * half of word i%4 of block offset + floor(i/4), never 0 or 1.
 */
export function philoxUniformOpen(seed: bigint, offset: bigint, i: number): number {
  const r = philoxBlock(offset + BigInt(Math.floor(i / 4)), seed);
  return (((r[i % 4] as number) >>> 8) + 0.5) / 16777216;
}

/** philoxUniformOpen for i = 0..n-1 (one block computed per four values). */
export function philoxUniformOpenRef(n: number, seed: bigint, offset: bigint): Float64Array {
  const out = new Float64Array(n);
  let block: [number, number, number, number] = [0, 0, 0, 0];
  for (let i = 0; i < n; i++) {
    if (i % 4 === 0) block = philoxBlock(offset + BigInt(i / 4), seed);
    out[i] = (((block[i % 4] as number) >>> 8) + 0.5) / 16777216;
  }
  return out;
}

/** Standard normal via Box–Muller in double, rounded to float (element i: lane i % 2 of block offset + i/2). */
export function philoxNormalStd(seed: bigint, offset: bigint, i: number): number {
  const r = philoxBlock(offset + BigInt(Math.floor(i / 2)), seed);
  const lane = i % 2;
  const u1 = ((r[lane * 2] as number) + 1) * (1 / 4294967296);
  const u2 = (r[lane * 2 + 1] as number) * (1 / 4294967296);
  const radius = Math.sqrt(-2 * Math.log(u1));
  return Math.fround(radius * Math.cos(6.283185307179586 * u2));
}

export function philoxNormalRef(n: number, seed: bigint, offset: bigint, mean = 0, std = 1, dtype: RefDType = 'float32'): Float64Array {
  const m = Math.fround(mean), s = Math.fround(std);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const y = Math.fround(m + Math.fround(s * philoxNormalStd(seed, offset, i)));
    out[i] = dtype === 'bfloat16' ? bf16Round(y) : y;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Comparison helpers

/** Ordered integer key of a float32 (so that |key(a) - key(b)| is the ulp distance). */
function f32Key(x: number): number {
  const u = f32Bits(x);
  return u & 0x80000000 ? -(u & 0x7fffffff) : u;
}

/** Distance in float32 ulps (0 for equal values incl. ±0; Infinity if exactly one is NaN). */
export function ulpDistanceF32(a: number, b: number): number {
  if (Number.isNaN(a) || Number.isNaN(b)) return Number.isNaN(a) && Number.isNaN(b) ? 0 : Infinity;
  return Math.abs(f32Key(Math.fround(a)) - f32Key(Math.fround(b)));
}

/** One unit in the last place of bf16 at the magnitude of x. */
export function bf16Ulp(x: number): number {
  const a = Math.abs(x);
  if (!(a >= 1.1754943508222875e-38)) return 2 ** -133;
  return 2 ** (Math.floor(Math.log2(a)) - 7);
}

/** One unit in the last place of float32 at the magnitude of x. */
export function f32Ulp(x: number): number {
  const a = Math.abs(x);
  if (!(a >= 1.1754943508222875e-38)) return 2 ** -149;
  return 2 ** (Math.floor(Math.log2(a)) - 23);
}

export function maxAbsError(got: ArrayLike<number>, exp: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < exp.length; i++) m = Math.max(m, Math.abs((got[i] as number) - (exp[i] as number)));
  return m;
}

export function maxRelError(got: ArrayLike<number>, exp: ArrayLike<number>, floor = 1e-30): number {
  let m = 0;
  for (let i = 0; i < exp.length; i++) {
    const e = exp[i] as number;
    m = Math.max(m, Math.abs((got[i] as number) - e) / Math.max(Math.abs(e), floor));
  }
  return m;
}

/** ||got - exp||_F / ||exp||_F (0 when both are zero). */
export function relFrobenius(got: ArrayLike<number>, exp: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < exp.length; i++) {
    const d = (got[i] as number) - (exp[i] as number);
    num += d * d;
    den += (exp[i] as number) ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export interface Tolerance {
  /** relative tolerance (times |expected|) */
  rtol?: number;
  /** absolute tolerance */
  atol?: number;
  /** per-element extra absolute tolerance (e.g. a bound scaled by sum |x|) */
  atolEach?: ArrayLike<number>;
  /** allowed error in bf16 ulps of the expected value */
  bf16Ulps?: number;
  /** allowed error in float32 ulps of the expected value */
  f32Ulps?: number;
  /** also require the sign of zeros to match */
  signedZero?: boolean;
  label?: string;
}

/**
 * Elementwise comparison; NaN must meet NaN, infinities must match exactly, finite values within
 * atol + rtol*|e| + atolEach[i] + ulps. Returns a description of the first mismatches, or null.
 */
export function compare(got: ArrayLike<number>, exp: ArrayLike<number>, tol: Tolerance = {}): string | null {
  const label = tol.label ? `${tol.label}: ` : '';
  if (got.length !== exp.length) return `${label}length ${got.length}, expected ${exp.length}`;
  const bad: string[] = [];
  let count = 0;
  // bound once: global lookups inside hot loops are slow in jest's vm context
  const { isNaN, isFinite } = Number;
  const abs = Math.abs;
  for (let i = 0; i < exp.length; i++) {
    const g = got[i] as number, e = exp[i] as number;
    let ok: boolean;
    if (isNaN(e) || isNaN(g)) ok = isNaN(e) && isNaN(g);
    else if (!isFinite(e) || !isFinite(g)) ok = g === e;
    else {
      let allowed = (tol.atol ?? 0) + (tol.rtol ?? 0) * abs(e);
      if (tol.atolEach) allowed += tol.atolEach[i] as number;
      if (tol.bf16Ulps) allowed += tol.bf16Ulps * bf16Ulp(e);
      if (tol.f32Ulps) allowed += tol.f32Ulps * f32Ulp(e);
      ok = abs(g - e) <= allowed;
      if (ok && tol.signedZero && e === 0 && g === 0) ok = Object.is(e, g);
    }
    if (!ok) {
      count++;
      if (bad.length < 6) bad.push(`[${i}] got ${Object.is(g, -0) ? '-0' : g}, expected ${Object.is(e, -0) ? '-0' : e}`);
    }
  }
  return count ? `${label}${count} of ${exp.length} mismatched: ${bad.join('; ')}` : null;
}

/** Throws with the mismatch report when compare() finds any. */
export function assertClose(got: ArrayLike<number>, exp: ArrayLike<number>, tol: Tolerance = {}): void {
  const report = compare(got, exp, tol);
  if (report) throw new Error(report);
}

/** Exact equality (NaN == NaN; sign of zero checked when signedZero). */
export function assertExact(got: ArrayLike<number>, exp: ArrayLike<number>, label?: string, signedZero = false): void {
  assertClose(got, exp, { label, signedZero });
}

// ---------------------------------------------------------------------------------------------
// Test bookkeeping (works on anything with dispose(); no moma import)

export class Disposer {
  private items: { dispose(): void }[] = [];

  /** Registers x for disposal and returns it. */
  keep<T extends { dispose(): void }>(x: T): T {
    this.items.push(x);
    return x;
  }

  disposeAll(): void {
    for (const x of this.items.splice(0)) x.dispose();
  }
}
