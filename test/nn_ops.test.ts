/**
 * The transformer ops (SPEC.md §1, csrc/cpu/kernels_nn.h, csrc/core/nn_types.h) against the
 * independent float64 reference in support/nn_reference.ts: RMSNorm, per-group LayerNorm (QK-norm),
 * RoPE, segment-causal attention, cross-entropy (+ z-loss) and the fused AdamW step, forward and
 * backward, float32 and bf16, awkward sizes, edge cases (ragged / length-1 segments, large logits,
 * ignored targets, V = 1), properties (RoPE inverse / identity / relative positions, attention
 * masking), AdamW bit-exact against the float32 emulation, error codes, determinism.
 *
 * Tolerances: float32 results within k·2^-24·(sum of |terms|) (the magnitudes the reference
 * returns), bf16 results additionally within 1 bf16 ulp (one rounding on store).
 */
import { DType, HostArray, MomaErrorCode, Tensor, tensor } from '../lib';
import {
  adamwStep, attention, attentionBackward, crossEntropy, crossEntropyBackward, layerNorm, layerNormBackward, rmsNorm,
  rmsNormBackward, rope,
} from '../lib/kernels';
import type { AdamWStep } from '../lib/kernels';
import { describeDevices, tensorFixture } from './support/devices';
import {
  Rng, Tolerance, assertClose, assertExact, bf16Round, mulberry32, randomF32, randomInt,
} from './support/reference';
import {
  AdamWHyper, adamwF32, adamwRef, attentionBackwardRef, attentionRef, centralDiff, checkSegStart, crossEntropyBackwardRef,
  crossEntropyRef, dotRef, layerNormBackwardRef, layerNormRef, pick, rmsNormBackwardRef, rmsNormRef, ropeRef, segStartOf,
} from './support/nn_reference';
import { throwsCode } from './support/errors';

// ---------------------------------------------------------------------------------------------
// Helpers

const { abs, max, fround: f32, log, exp, sqrt } = Math;
/** float32 unit roundoff */
const U = 2 ** -24;

const H_ERR: AdamWStep = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 1 };

type ActDType = 'float32' | 'bfloat16';
const DTYPES: ActDType[] = ['float32', 'bfloat16'];

// Typed-array bit views: the DataView / Math.log2 helpers of support/reference.ts are slow per
// element under jest's vm context, and these run over ~10^5 elements per case.
const f32Buf = new Float32Array(1), f32Word = new Uint32Array(f32Buf.buffer);
const f64Buf = new Float64Array(1), f64Words = new Uint32Array(f64Buf.buffer);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Finite x rounded to float32, then to bf16 (ties to even): support/reference.ts bf16Round for finite values. */
function bf16Fast(x: number): number {
  f32Buf[0] = x;
  const u = f32Word[0] as number;
  f32Word[0] = ((u + 0x7fff + ((u >>> 16) & 1)) & 0xffff0000) >>> 0;
  return f32Buf[0] as number;
}

/** One bf16 ulp at the magnitude of e (2^(floor(log2 |e|) - 7), 2^-133 below the normal range). */
function ulpBf16(e: number): number {
  f64Buf[0] = e;
  const ex = (((f64Words[LITTLE_ENDIAN ? 1 : 0] as number) >>> 20) & 0x7ff) - 1023;
  return ex < -126 ? 2 ** -133 : 2 ** (ex - 7);
}

/** Random float32 values in [lo, hi), bf16-representable when dtype is bfloat16. */
function gen(rng: Rng, n: number, dtype: ActDType, lo = -1, hi = 1): Float64Array {
  const x = randomF32(rng, n, lo, hi);
  if (dtype === 'bfloat16') for (let i = 0; i < n; i++) x[i] = bf16Fast(x[i] as number);
  return x;
}

/** atolEach plus one bf16 ulp of the expected value when the result is stored as bf16 (one rounding). */
function outTol(dtype: ActDType, expected: ArrayLike<number>, atolEach: Float64Array, label: string): Tolerance {
  if (dtype === 'bfloat16') for (let i = 0; i < atolEach.length; i++) atolEach[i] = (atolEach[i] as number) + ulpBf16(expected[i] as number);
  return { atolEach, label };
}

/** k·2^-24·mag[i] per element. */
function bound(mag: ArrayLike<number>, k: number): Float64Array {
  const out = new Float64Array(mag.length);
  for (let i = 0; i < mag.length; i++) out[i] = k * U * (mag[i] as number);
  return out;
}

function absOf(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a as ArrayLike<number>, (v) => abs(v));
}

/** Float32 math error bound k·2^-24·mag, plus one bf16 ulp when the result is stored as bf16. */
function tol(dtype: ActDType, expected: ArrayLike<number>, mag: ArrayLike<number>, k: number, label: string): Tolerance {
  return outTol(dtype, expected, bound(mag, k), label);
}

/**
 * float32 vs float64 AdamW parameter: rounding of p and of the decay term, plus a relative error of
 * ~32u on the update (bias corrections, betas and their complements rounded to float32).
 */
function adamwTol(p: ArrayLike<number>, pNew: ArrayLike<number>, lrWd: number, relHyper: number): Float64Array {
  return Float64Array.from(p as ArrayLike<number>, (pv, i) => {
    const update = abs((pNew[i] as number) - (pv - lrWd * pv));
    return 4 * U * abs(pv) + 8 * U * abs(lrWd * pv) + (32 * U + 2 * relHyper) * update;
  });
}

/** Float32 underflow floor: exp() of a very negative logit may round to 0 (or flush) in float32. */
const UNDERFLOW = 1e-30;

function sameBits(a: HostArray, b: HostArray): boolean {
  if (a.length !== b.length || a.constructor !== b.constructor) return false;
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}


/** Indices 0..n-1, or an evenly spread subset of about `limit` of them. */
function spread(n: number, limit: number): number[] {
  if (n <= limit) return Array.from({ length: n }, (_v, i) => i);
  const out: number[] = [];
  for (let j = 0; j < limit; j++) out.push(Math.floor((j * (n - 1)) / (limit - 1)));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reference self-checks: hand-computed answers and central finite differences of the float64
// forwards (no moma calls). They make sure the reference is the true gradient of its forward.

describe('nn reference self-checks', () => {
  const fdTol = { rtol: 1e-6, atol: 1e-8 };

  test('hand-computed values', () => {
    // rmsnorm: x = [3, 4], eps 0: rstd = 1 / sqrt(12.5)
    const r = rmsNormRef([3, 4], [1, 2], 1, 2, 0);
    expect(r.rstd[0]).toBeCloseTo(1 / sqrt(12.5), 15);
    expect(Array.from(r.y)).toEqual([3 / sqrt(12.5), 8 / sqrt(12.5)].map((v) => expect.closeTo(v, 14)));
    // layernorm: x = [1, 3], eps 0: mean 2, var 1
    const l = layerNormRef([1, 3], [2, 3], [0.5, -1], 1, 1, 2, 0);
    expect(Array.from(l.y)).toEqual([-1.5, 2]);
    expect(l.mean[0]).toBe(2);
    expect(l.rstd[0]).toBe(1);
    // rope: D = 2 at position 1 rotates by exactly 1 radian (theta^0 = 1)
    const ro = ropeRef([1, 2], [1], 1, 1, 2, 10000, false, true);
    expect(ro.y[0]).toBeCloseTo(Math.cos(1) - 2 * Math.sin(1), 15);
    expect(ro.y[1]).toBeCloseTo(2 * Math.cos(1) + Math.sin(1), 15);
    // attention: one segment of two rows, D = 1, scale 1, k = [0, ln 3]: row 1 weights [1/4, 3/4]
    const a = attentionRef([1, 1], [0, log(3)], [2, 6], [0, 0], 2, 1, 1, 1);
    expect(a.o[0]).toBe(2);
    expect(a.lse[0]).toBe(0);
    expect(a.o[1]).toBeCloseTo(5, 14);
    expect(a.lse[1]).toBeCloseTo(log(4), 14);
    // two segments: row 1 sees only itself
    const a2 = attentionRef([1, 1], [0, log(3)], [2, 6], [0, 1], 2, 1, 1, 1);
    expect(a2.o[1]).toBeCloseTo(6, 14);
    expect(segStartOf([1, 3, 2])).toEqual([0, 1, 1, 1, 4, 4]);
    expect(() => checkSegStart([0, 0, 1])).toThrow(RangeError);
    expect(() => checkSegStart([0, 2, 2])).toThrow(RangeError);
    expect(() => checkSegStart([1])).toThrow(RangeError);
    expect(() => checkSegStart([0, 1, 1, 0])).toThrow(RangeError);
    // cross-entropy: logits [0, ln 3], target 1: lse = ln 4, nll = ln(4 / 3); ignored row: nll 0
    const ce = crossEntropyRef([0, log(3), 5, 5], [1, -1], 2, 2);
    expect(ce.lse[0]).toBeCloseTo(log(4), 15);
    expect(ce.nll[0]).toBeCloseTo(log(4 / 3), 15);
    expect(ce.nll[1]).toBe(0);
    expect(ce.lse[1]).toBeCloseTo(5 + log(2), 14);
    const dl = crossEntropyBackwardRef([0, log(3)], [1], [2], [0.5], 1, 2);
    // 2 (p - onehot) + 0.5 * 2 * ln4 * p with p = [1/4, 3/4]
    expect(dl[0]).toBeCloseTo(0.5 + log(4) / 4, 14);
    expect(dl[1]).toBeCloseTo(-0.5 + (3 * log(4)) / 4, 14);
    expect(() => crossEntropyRef([0, 0], [2], 1, 2)).toThrow(RangeError);
    // adamw, first step from zero state: m = 0.05, v = 0.0125, update lr * 0.5 / (0.5 + eps)
    const h: AdamWHyper = { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, gradScale: 1, step: 1 };
    const ad = adamwRef([1], [0.5], [0], [0], h);
    expect(ad.m[0]).toBeCloseTo(0.05, 15);
    expect(ad.v[0]).toBeCloseTo(0.0125, 15);
    expect(ad.p[0]).toBeCloseTo(1 - 0.05 / (0.5 + 1e-8), 14);
    const ae = adamwF32([1], [0.5], [0], [0], h);
    expect(ae.p[0]).toBeCloseTo(0.9, 6);
    expect(ae.bf16[0]).toBe(bf16Round(ae.p[0] as number));
    // the float32 emulation is order sensitive: (p - lr wd p) rounds before the update is subtracted
    const hw = { ...h, lr: 1, weightDecay: 2 ** -30, step: 1 };
    expect(adamwF32([1], [0], [0], [0], hw).p[0]).toBe(1); // 1 - 2^-30 rounds back to 1 in float32
  });

  test('rmsnorm backward = finite differences of the forward (x and w)', () => {
    const N = 3, D = 5, eps = 1e-5;
    const rng = mulberry32(11);
    const x = randomF32(rng, N * D, -2, 2), w = randomF32(rng, D, -1.5, 1.5), dy = randomF32(rng, N * D);
    const g = rmsNormBackwardRef(x, w, dy, N, D, eps);
    const L = (): number => dotRef(dy, rmsNormRef(x, w, N, D, eps).y);
    assertClose(centralDiff(L, x, spread(N * D, 99)), g.dx, { ...fdTol, label: 'fd dx' });
    assertClose(centralDiff(L, w, spread(D, 99)), g.dw, { ...fdTol, label: 'fd dw' });
  });

  test('layernorm backward = finite differences of the forward (x, w, b)', () => {
    const N = 3, G = 2, D = 4, eps = 1e-5;
    const rng = mulberry32(12);
    const x = randomF32(rng, N * G * D, -2, 3), w = randomF32(rng, G * D, -1.5, 1.5), b = randomF32(rng, G * D), dy = randomF32(rng, N * G * D);
    const g = layerNormBackwardRef(x, w, dy, N, G, D, eps);
    const L = (): number => dotRef(dy, layerNormRef(x, w, b, N, G, D, eps).y);
    assertClose(centralDiff(L, x, spread(N * G * D, 99)), g.dx, { ...fdTol, label: 'fd dx' });
    assertClose(centralDiff(L, w, spread(G * D, 99)), g.dw, { ...fdTol, label: 'fd dw' });
    assertClose(centralDiff(L, b, spread(G * D, 99)), g.db, { ...fdTol, label: 'fd db' });
  });

  test('rope: the inverse is the backward (finite differences) and undoes the exact rotation', () => {
    const N = 4, H = 2, D = 6;
    const rng = mulberry32(13);
    const x = randomF32(rng, N * H * D), dy = randomF32(rng, N * H * D);
    const pos = [0, 3, 17, 4095];
    const L = (): number => dotRef(dy, ropeRef(x, pos, N, H, D, 10000).y);
    const grad = ropeRef(dy, pos, N, H, D, 10000, true).y;
    assertClose(centralDiff(L, x, spread(N * H * D, 99)), grad, { ...fdTol, label: 'fd rope' });
    const back = ropeRef(ropeRef(x, pos, N, H, D, 10000, false, true).y, pos, N, H, D, 10000, true, true).y;
    assertClose(back, x, { atol: 1e-14, label: 'exact inverse' });
    // position 0 is the identity
    assertExact(ropeRef(x.subarray(0, H * D), [0], 1, H, D, 10000).y, x.subarray(0, H * D), 'position 0');
  });

  test('attention backward = finite differences of the forward (q, k, v; ragged segments)', () => {
    const lengths = [1, 3, 5], N = 9, H = 2, D = 4, scale = 0.7;
    const seg = segStartOf(lengths);
    const rng = mulberry32(14);
    const q = randomF32(rng, N * H * D, -1.5, 1.5), k = randomF32(rng, N * H * D, -1.5, 1.5), v = randomF32(rng, N * H * D), dout = randomF32(rng, N * H * D);
    const f = attentionRef(q, k, v, seg, N, H, D, scale);
    const g = attentionBackwardRef(q, k, v, f.o, f.lse, dout, seg, N, H, D, scale);
    const L = (): number => dotRef(dout, attentionRef(q, k, v, seg, N, H, D, scale).o);
    const idx = spread(N * H * D, 200);
    assertClose(centralDiff(L, q, idx), pick(g.dq, idx), { ...fdTol, label: 'fd dq' });
    assertClose(centralDiff(L, k, idx), pick(g.dk, idx), { ...fdTol, label: 'fd dk' });
    assertClose(centralDiff(L, v, idx), pick(g.dv, idx), { ...fdTol, label: 'fd dv' });
    // row 0 is a segment of its own: o[0] = v[0], and k[0] gets no gradient from row 0 alone
    assertClose(f.o.subarray(0, H * D), v.subarray(0, H * D), { atol: 1e-15, label: 'length-1 segment' });
    assertExact(g.dk.subarray(0, H * D), new Float64Array(H * D), 'dk of a length-1 segment');
  });

  test('cross-entropy backward = finite differences of sum gNll nll + gZ lse^2 (with and without z)', () => {
    const N = 5, V = 7;
    const rng = mulberry32(15);
    const logits = randomF32(rng, N * V, -3, 3);
    const targets = [3, -1, 0, 6, 2];
    const gN = randomF32(rng, N, 0.1, 1);
    gN[1] = 0; // an ignored row has nll = 0 identically: its gNll must not matter for the finite difference
    const gZ = randomF32(rng, N, -1, 1);
    for (const z of [gZ, null]) {
      const g = crossEntropyBackwardRef(logits, targets, gN, z, N, V);
      const L = (): number => {
        const r = crossEntropyRef(logits, targets, N, V);
        let s = dotRef(gN, r.nll);
        if (z) for (let n = 0; n < N; n++) s += (z[n] as number) * (r.lse[n] as number) ** 2;
        return s;
      };
      assertClose(centralDiff(L, logits, spread(N * V, 99)), g, { ...fdTol, label: `fd dlogits (z ${z ? 'on' : 'off'})` });
    }
  });

  test('adamw float32 emulation agrees with the float64 step to float32 precision', () => {
    const n = 301;
    const rng = mulberry32(16);
    const p = randomF32(rng, n), g = randomF32(rng, n), m = randomF32(rng, n, -0.1, 0.1), v = randomF32(rng, n, 0, 0.01);
    for (const h of [
      { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: 0.5, step: 1 },
      { lr: 3e-2, beta1: 0.8, beta2: 0.999, eps: 1e-5, weightDecay: 0, gradScale: 1, step: 7 },
    ]) {
      const e = adamwF32(p, g, m, v, h), r = adamwRef(p, g, m, v, h);
      // float32 rounding of the terms and of the hyper-parameters: 1 - beta in float32 has relative error
      // |f32(beta) - beta| / (1 - beta) (1.3e-5 for beta 0.999), which carries into v and the update
      const rel1 = abs(f32(1 - f32(h.beta1)) - (1 - h.beta1)) / (1 - h.beta1), rel2 = abs(f32(1 - f32(h.beta2)) - (1 - h.beta2)) / (1 - h.beta2);
      assertClose(e.m, r.m, { atolEach: Float64Array.from(m, (mv, i) => 8 * U * abs(h.beta1 * mv) + (8 * U + rel1) * abs((1 - h.beta1) * h.gradScale * (g[i] as number))), label: 'm' });
      assertClose(e.v, r.v, { atolEach: Float64Array.from(v, (vv, i) => 8 * U * abs(h.beta2 * vv) + (8 * U + rel2) * abs((1 - h.beta2) * (h.gradScale * (g[i] as number)) ** 2)), label: 'v' });
      assertClose(e.p, r.p, { atolEach: adamwTol(p, r.p, h.lr * h.weightDecay, rel1 + rel2), label: 'p' });
    }
  });
});

// ---------------------------------------------------------------------------------------------

describeDevices('nn ops', (device) => {
  const { keep, mk, read } = tensorFixture(device);
  const ints = (v: ArrayLike<number>, shape: number[] = [v.length]): Tensor => mk(v, shape, 'int32');
  const cuda = device !== 'cpu';
  /** Registers every tensor field of an op result for disposal. */
  const keepOut = <T extends object>(o: T): T => {
    for (const v of Object.values(o)) if (v instanceof Tensor) keep(v);
    return o;
  };
  const rejectsCode = async (t: Tensor, code: MomaErrorCode, op: RegExp): Promise<void> => {
    keep(t);
    await expect(t.toArray()).rejects.toMatchObject({ name: 'MomaError', code, message: expect.stringMatching(op) });
  };

  // -------------------------------------------------------------------------------------------
  describe('rmsNorm', () => {
    const CASES: [number, number][] = [[1, 1], [7, 2], [37, 6], [301, 64], [7, 130], [301, 1], [1, 130]];
    const EPS = 1e-5;

    async function check(dtype: ActDType, shape: number[], seed: number, eps = EPS, xRange: [number, number] = [-2, 2]): Promise<void> {
      const D = shape[shape.length - 1] as number, N = shape.slice(0, -1).reduce((a, b) => a * b, 1);
      const rng = mulberry32(seed);
      const x = gen(rng, N * D, dtype, ...xRange), w = randomF32(rng, D, -1.5, 1.5), dy = gen(rng, N * D, dtype);
      const label = `${dtype} [${shape}]`;
      const tx = mk(x, shape, dtype), tw = mk(w, [D]);
      const f = keepOut(rmsNorm(tx, tw, { eps }));
      expect(f.y.shape).toEqual(shape);
      expect(f.y.dtype).toBe(dtype);
      expect(f.rstd.shape).toEqual(shape.slice(0, -1));
      expect(f.rstd.dtype).toBe('float32');
      const ref = rmsNormRef(x, w, N, D, f32(eps));
      assertClose(await read(f.rstd), ref.rstd, { rtol: (D + 8) * U, label: `${label} rstd` });
      assertClose(await read(f.y), ref.y, tol(dtype, ref.y, absOf(ref.y), D + 8, `${label} y`));
      const b = keepOut(rmsNormBackward(mk(dy, shape, dtype), { x: tx, weight: tw, rstd: f.rstd }));
      expect(b.dx.shape).toEqual(shape);
      expect(b.dx.dtype).toBe(dtype);
      expect(b.dweight.shape).toEqual([D]);
      expect(b.dweight.dtype).toBe('float32');
      const g = rmsNormBackwardRef(x, w, dy, N, D, f32(eps));
      assertClose(await read(b.dx), g.dx, tol(dtype, g.dx, g.dxMag, 2 * D + 16, `${label} dx`));
      assertClose(await read(b.dweight), g.dw, { atolEach: bound(g.dwMag, 2 * (N + D) + 16), label: `${label} dw` });
    }

    describe.each(DTYPES)('%s', (dtype) => {
      test.each(CASES)('x [%i, %i]: y, rstd, dx, dw against the float64 reference', async (N, D) => {
        await check(dtype, [N, D], N * 1009 + D + (dtype === 'bfloat16' ? 1 : 0));
      });

      test('any leading shape: [B, S, D] = [3, 5, 37], [2, 7, 1, 6] and [D] = [130]', async () => {
        await check(dtype, [3, 5, 37], 21);
        await check(dtype, [2, 7, 1, 6], 22);
        await check(dtype, [130], 23);
      });

      test('eps matters: eps = 0.25 with small inputs', async () => {
        await check(dtype, [37, 6], 24, 0.25, [-0.1, 0.1]);
      });
    });

    test('a zero row: rstd = 1/sqrt(eps), y = 0, dx = rstd dy w', async () => {
      const D = 6, eps = 0.01;
      const w = [1, -2, 0.5, 3, -1, 0.25], dy = [1, 1, -1, 2, 0.5, -0.5];
      const tx = mk(new Array(D).fill(0), [1, D]), tw = mk(w, [D]);
      const f = keepOut(rmsNorm(tx, tw, { eps }));
      const r = f32(1 / sqrt(f32(eps)));
      assertClose(await read(f.rstd), [r], { f32Ulps: 2, label: 'rstd' });
      assertExact(await read(f.y), new Array(D).fill(0), 'y');
      const b = keepOut(rmsNormBackward(mk(dy, [1, D]), { x: tx, weight: tw, rstd: f.rstd }));
      assertClose(await read(b.dx), dy.map((v, d) => v * (w[d] as number) * r), { f32Ulps: 4, label: 'dx' });
      assertExact(await read(b.dweight), new Array(D).fill(0), 'dw');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('layerNorm (per-group affine, QK-norm)', () => {
    const CASES: [number, number, number][] = [[1, 1, 2], [7, 3, 6], [37, 16, 64], [301, 3, 6], [7, 1, 130], [301, 16, 2]];
    const EPS = 1e-5;

    async function check(dtype: ActDType, shape: number[], seed: number, xRange: [number, number] = [-2, 2], eps = EPS): Promise<void> {
      const D = shape[shape.length - 1] as number, G = shape[shape.length - 2] as number;
      const N = shape.slice(0, -2).reduce((a, b) => a * b, 1);
      const rng = mulberry32(seed);
      const x = gen(rng, N * G * D, dtype, ...xRange), w = randomF32(rng, G * D, -1.5, 1.5), bias = randomF32(rng, G * D);
      const dy = gen(rng, N * G * D, dtype);
      const label = `${dtype} [${shape}]`;
      const tx = mk(x, shape, dtype), tw = mk(w, [G, D]);
      const f = keepOut(layerNorm(tx, { weight: tw, bias: mk(bias, [G, D]) }, { eps }));
      expect(f.y.shape).toEqual(shape);
      expect(f.y.dtype).toBe(dtype);
      for (const s of [f.mean, f.rstd]) {
        expect(s.shape).toEqual(shape.slice(0, -1));
        expect(s.dtype).toBe('float32');
      }
      const ref = layerNormRef(x, w, bias, N, G, D, f32(eps));
      // conditioning of the variance: kappa = mean(x^2) / (var + eps) per (n, g)
      const kappa = new Float64Array(N * G), meanAbs = new Float64Array(N * G);
      for (let r = 0; r < N * G; r++) {
        let sq = 0, sa = 0;
        for (let d = 0; d < D; d++) { sq += (x[r * D + d] as number) ** 2; sa += abs(x[r * D + d] as number); }
        kappa[r] = (sq / D) * (ref.rstd[r] as number) ** 2;
        meanAbs[r] = sa / D;
      }
      const kmax = max(...kappa);
      const rstdRel = Float64Array.from(kappa, (kp) => (D + 8) * U * (1 + kp));
      assertClose(await read(f.mean), ref.mean, { atolEach: bound(meanAbs, D + 4), label: `${label} mean` });
      assertClose(await read(f.rstd), ref.rstd, { atolEach: rstdRel.map((e, r) => e * (ref.rstd[r] as number)), label: `${label} rstd` });
      // y = xh w + b: the rounding of every term, plus the rstd error times |xh w|
      const yTol = bound(ref.yMag, 2 * D + 16);
      for (let i = 0; i < yTol.length; i++) yTol[i] = (yTol[i] as number) + (rstdRel[Math.floor(i / D)] as number) * abs((ref.y[i] as number) - (bias[i % (G * D)] as number));
      assertClose(await read(f.y), ref.y, outTol(dtype, ref.y, yTol, `${label} y`));
      const b = keepOut(layerNormBackward(mk(dy, shape, dtype), { x: tx, weight: tw, mean: f.mean, rstd: f.rstd }));
      expect(b.dx.shape).toEqual(shape);
      expect(b.dx.dtype).toBe(dtype);
      for (const t of [b.dweight, b.dbias]) {
        expect(t.shape).toEqual([G, D]);
        expect(t.dtype).toBe('float32');
      }
      const g = layerNormBackwardRef(x, w, dy, N, G, D, f32(eps));
      const dxTol = bound(g.dxMag, 2 * D + 32);
      for (let i = 0; i < dxTol.length; i++) dxTol[i] = (dxTol[i] as number) * (1 + (kappa[Math.floor(i / D)] as number));
      assertClose(await read(b.dx), g.dx, outTol(dtype, g.dx, dxTol, `${label} dx`));
      assertClose(await read(b.dweight), g.dw, { atolEach: bound(g.dwMag, (2 * (N + D) + 32) * (1 + kmax)), label: `${label} dw` });
      assertClose(await read(b.dbias), g.db, { atolEach: bound(g.dbMag, 2 * N + 16), label: `${label} db` });
    }

    describe.each(DTYPES)('%s', (dtype) => {
      test.each(CASES)('x [%i, %i, %i]: y, mean, rstd, dx, dw, db against the float64 reference', async (N, G, D) => {
        await check(dtype, [N, G, D], N * 7919 + G * 31 + D + (dtype === 'bfloat16' ? 1 : 0));
      });

      test('leading dims [B, S, G, D] = [2, 3, 4, 16]; offset inputs (mean 3); eps = 0.5', async () => {
        await check(dtype, [2, 3, 4, 16], 31);
        await check(dtype, [37, 3, 6], 32, [2, 4]);
        await check(dtype, [7, 3, 6], 33, [-0.2, 0.2], 0.5);
      });
    });

    test('D = 1: x - mean is 0, so y = b exactly and dx = 0 exactly', async () => {
      const N = 7, G = 3;
      const rng = mulberry32(34);
      const x = randomF32(rng, N * G, -2, 2), w = randomF32(rng, G), b = randomF32(rng, G), dy = randomF32(rng, N * G);
      const tx = mk(x, [N, G, 1]), tw = mk(w, [G, 1]);
      const f = keepOut(layerNorm(tx, { weight: tw, bias: mk(b, [G, 1]) }, { eps: 1e-5 }));
      assertExact(await read(f.y), Array.from({ length: N * G }, (_v, i) => b[i % G] as number), 'y = b');
      assertExact(await read(f.mean), x, 'mean = x');
      const g = keepOut(layerNormBackward(mk(dy, [N, G, 1]), { x: tx, weight: tw, mean: f.mean, rstd: f.rstd }));
      assertExact(await read(g.dx), new Array(N * G).fill(0), 'dx = 0');
      assertExact(await read(g.dweight), [0, 0, 0], 'dw = 0');
      assertClose(await read(g.dbias), [0, 1, 2].map((gg) => dy.filter((_v, i) => i % G === gg).reduce((a, c) => a + c, 0)), { atol: 8 * N * U * 2, label: 'db' });
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('rope', () => {
    const CASES: [number, number, number][] = [[1, 1, 2], [7, 3, 6], [37, 16, 64], [301, 3, 130], [301, 1, 2]];

    function positions(rng: Rng, N: number): number[] {
      const p = Array.from(randomInt(rng, N, 0, 8191));
      p[0] = 0;
      if (N > 2) { p[1] = 1; p[2] = 4095; }
      return p;
    }

    describe.each(DTYPES)('%s', (dtype) => {
      test.each(CASES)('x [%i, %i, %i]: forward and inverse against the reference; inverse(rope(x)) = x', async (N, H, D) => {
        for (const theta of N * H * D > 20000 ? [10000] : [10000, 500000, 10]) {
          const rng = mulberry32(N * 13 + H * 7 + D + theta);
          const x = gen(rng, N * H * D, dtype, -2, 2);
          const pos = positions(rng, N);
          const label = `${dtype} [${N},${H},${D}] theta ${theta}`;
          const tx = mk(x, [N, H, D], dtype), tp = ints(pos);
          const y = keep(rope(tx, tp, { theta }));
          expect(y.shape).toEqual([N, H, D]);
          expect(y.dtype).toBe(dtype);
          const ref = ropeRef(x, pos, N, H, D, f32(theta));
          const gy = await read(y);
          assertClose(gy, ref.y, tol(dtype, ref.y, ref.mag, 6, `${label} forward`));
          // the backward: rotate by -a
          const inv = keep(rope(tx, tp, { theta, inverse: true }));
          const refInv = ropeRef(x, pos, N, H, D, f32(theta), true);
          assertClose(await read(inv), refInv.y, tol(dtype, refInv.y, refInv.mag, 6, `${label} inverse`));
          // round trip: two float32 (or bf16) roundings of a rotation
          const back = await read(keep(rope(y, tp, { theta, inverse: true })));
          const half = D / 2;
          const rt = new Float64Array(N * H * D);
          for (let i = 0; i < rt.length; i++) {
            const j = i % D, o = i - j;
            const pair = abs(x[o + (j % half)] as number) + abs(x[o + (j % half) + half] as number);
            rt[i] = (dtype === 'bfloat16' ? 2 ** -7 : 16 * U) * pair;
          }
          assertClose(back, x, { atolEach: rt, label: `${label} inverse(rope(x))` });
        }
      });

      test('position 0 is the identity (exactly), forward and inverse', async () => {
        const N = 5, H = 3, D = 6;
        const x = gen(mulberry32(41), N * H * D, dtype, -3, 3);
        const tx = mk(x, [N, H, D], dtype), zero = ints(new Array(N).fill(0));
        assertExact(await read(keep(rope(tx, zero))), x, 'rope at 0');
        assertExact(await read(keep(rope(tx, zero, { inverse: true }))), x, 'inverse rope at 0');
      });
    });

    test('relative positions: rope(q, m) . rope(k, n) depends only on m - n', async () => {
      const H = 2, D = 64;
      const rng = mulberry32(42);
      const q = randomF32(rng, H * D), k = randomF32(rng, H * D);
      const pairs: [number, number][] = [[0, 3], [3, 0], [5, 8], [100, 103], [1000, 1003], [4093, 4096], [8000, 7997]];
      const N = pairs.length;
      const rep = (a: Float64Array): Float64Array => { const o = new Float64Array(N * H * D); for (let t = 0; t < N; t++) o.set(a, t * H * D); return o; };
      const rq = await read(keep(rope(mk(rep(q), [N, H, D]), ints(pairs.map((p) => p[0])))));
      const rk = await read(keep(rope(mk(rep(k), [N, H, D]), ints(pairs.map((p) => p[1])))));
      const dots = (t: number, h: number): number => dotRef(rq.slice((t * H + h) * D, (t * H + h + 1) * D), rk.slice((t * H + h) * D, (t * H + h + 1) * D));
      for (let h = 0; h < H; h++) {
        const qh = q.subarray(h * D, (h + 1) * D), kh = k.subarray(h * D, (h + 1) * D);
        let normProd = 0;
        for (let i = 0; i < D; i++) normProd += abs(qh[i] as number) * max(...Array.from(kh, (v) => abs(v)));
        for (const diff of [-3, 3]) {
          // the exact dot at m - n = diff, from the true (unrounded) rotation at positions (3, 0) or (0, 3)
          const [m0, n0] = diff > 0 ? [3, 0] : [0, 3];
          const ref = dotRef(ropeRef(qh, [m0], 1, 1, D, 10000, false, true).y, ropeRef(kh, [n0], 1, 1, D, 10000, false, true).y);
          const got: number[] = [];
          pairs.forEach(([m, n], t) => { if (m - n === diff) got.push(dots(t, h)); });
          expect(got.length).toBeGreaterThanOrEqual(2);
          assertClose(got, got.map(() => ref), { atol: 64 * U * normProd, label: `head ${h} m - n = ${diff}` });
        }
      }
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('attention (causal inside segments)', () => {
    const CASES: [string, number[], number, number][] = [
      ['N=1', [1], 1, 2],
      ['N=7 ragged [1,5,1]', [1, 5, 1], 3, 6],
      ['N=7 one segment', [7], 16, 2],
      ['N=37 ragged [1,5,31]', [1, 5, 31], 16, 64],
      ['N=37 all length-1', new Array(37).fill(1), 3, 6],
      ['N=301 ragged [1,5,37,258]', [1, 5, 37, 258], 3, 64],
      ['N=301 one segment, D=130', [301], 1, 130],
    ];

    interface AttnCase {
      dtype: ActDType;
      lengths: number[];
      H: number;
      D: number;
      seed: number;
      scale?: number;
      qk?: (rng: Rng, n: number) => Float64Array;
    }

    async function check(c: AttnCase): Promise<void> {
      const { dtype, lengths, H, D } = c;
      const N = lengths.reduce((a, b) => a + b, 0);
      const seg = segStartOf(lengths);
      const rng = mulberry32(c.seed);
      const qk = c.qk ?? ((r: Rng, n: number) => gen(r, n, dtype, -1.5, 1.5));
      const q = qk(rng, N * H * D), k = qk(rng, N * H * D), v = gen(rng, N * H * D, dtype), dout = gen(rng, N * H * D, dtype);
      const scale = c.scale ?? 1 / sqrt(D);
      const label = `${dtype} N=${N} H=${H} D=${D} segments ${lengths.length}`;
      const tq = mk(q, [N, H, D], dtype), tk = mk(k, [N, H, D], dtype), tv = mk(v, [N, H, D], dtype), ts = ints(seg);
      const f = keepOut(attention(tq, tk, tv, { segStart: ts, scale: c.scale }));
      expect(f.o.shape).toEqual([N, H, D]);
      expect(f.o.dtype).toBe(dtype);
      expect(f.lse.shape).toEqual([N, H]);
      expect(f.lse.dtype).toBe('float32');
      const ref = attentionRef(q, k, v, seg, N, H, D, scale);
      // relative error of the probabilities: logit rounding (size logitMag), exp, normalisation over the segment
      const relP = new Float64Array(N * H);
      for (let t = 0; t < N; t++)
        for (let h = 0; h < H; h++)
          relP[t * H + h] = U * (2 * (D + 8) * (ref.logitMag[t * H + h] as number) + 2 * (t - (seg[t] as number) + 1) + 16);
      // bf16: the probabilities are rounded to bf16 for P·V (the tensor-core kernel and the CPU's
      // vdpbf16ps path do), a relative 2^-9 per weight, so up to 2^-9 of the magnitude (twice that allowed)
      const pRound = dtype === 'bfloat16' ? 2 ** -8 : 0;
      const oTol = Float64Array.from(ref.oMag, (m, i) => (2 * (relP[Math.floor(i / D)] as number) + pRound) * m + UNDERFLOW);
      const lse = await read(f.lse);
      assertClose(lse, ref.lse, { atolEach: Float64Array.from(relP, (e, i) => e + 4 * U * abs(ref.lse[i] as number)), label: `${label} lse` });
      const o = await read(f.o);
      assertClose(o, ref.o, outTol(dtype, ref.o, oTol, `${label} o`));

      const b = keepOut(attentionBackward(mk(dout, [N, H, D], dtype), { q: tq, k: tk, v: tv, o: f.o, lse: f.lse, segStart: ts }, { scale: c.scale }));
      for (const t of [b.dq, b.dk, b.dv]) {
        expect(t.shape).toEqual([N, H, D]);
        expect(t.dtype).toBe(dtype);
      }
      // the header's backward on the op's own o (as stored) and lse
      const g = attentionBackwardRef(q, k, v, o, lse, dout, seg, N, H, D, scale);
      let eps = 0;
      const Lmax = max(...lengths);
      for (let i = 0; i < N * H; i++) eps = max(eps, U * (2 * (D + 8) * (ref.logitMag[i] as number) + 4 * abs(lse[i] as number) + 2 * Lmax + 2 * D + 32));
      const bt = (exp_: Float64Array, mag: Float64Array, name: string): Tolerance =>
        outTol(dtype, exp_, Float64Array.from(mag, (m) => 2 * eps * m + UNDERFLOW), `${label} ${name}`);
      assertClose(await read(b.dv), g.dv, bt(g.dv, g.dvMag, 'dv'));
      assertClose(await read(b.dq), g.dq, bt(g.dq, g.dqMag, 'dq'));
      assertClose(await read(b.dk), g.dk, bt(g.dk, g.dkMag, 'dk'));
    }

    describe.each(DTYPES)('%s', (dtype) => {
      test.each(CASES)('%s: o, lse, dq, dk, dv against the float64 reference', async (_name, lengths, H, D) => {
        await check({ dtype, lengths, H, D, seed: lengths.length * 977 + H * 31 + D + (dtype === 'bfloat16' ? 1 : 0) });
      });

      test('explicit scale 0.3 and scale 0 (uniform weights over the prefix)', async () => {
        await check({ dtype, lengths: [4, 9, 2], H: 3, D: 6, seed: 51, scale: 0.3 });
        await check({ dtype, lengths: [4, 9, 2], H: 3, D: 6, seed: 52, scale: 0 });
      });

      test('large logits (|scale q.k| up to ~6000) stay finite and match the reference', async () => {
        const big = (r: Rng, n: number): Float64Array => gen(r, n, dtype, -40, 40);
        await check({ dtype, lengths: [3, 40, 1, 20], H: 2, D: 16, seed: 53, scale: 0.25, qk: big });
        // logits exactly representable (integer q, k; scale 1): differences of ~1000 between keys
        const ints16 = (r: Rng, n: number): Float64Array => randomInt(r, n, -8, 8);
        await check({ dtype, lengths: [17, 30], H: 1, D: 16, seed: 54, scale: 1, qk: ints16 });
      });
    });

    test('changing a row outside a query\'s segment, or after the query, never changes its o or lse', async () => {
      const lengths = [6, 1, 13, 1, 9], H = 3, D = 8;
      const N = lengths.reduce((a, b) => a + b, 0);
      const seg = segStartOf(lengths);
      const rng = mulberry32(55);
      const base = [randomF32(rng, N * H * D, -2, 2), randomF32(rng, N * H * D, -2, 2), randomF32(rng, N * H * D)];
      const ts = ints(seg);
      const run = async (qkv: Float64Array[]): Promise<[number[], number[]]> => {
        const [tq, tk, tv] = qkv.map((a) => mk(a, [N, H, D])) as [Tensor, Tensor, Tensor];
        const f = keepOut(attention(tq, tk, tv, { segStart: ts }));
        return [await read(f.o), await read(f.lse)];
      };
      const [o0, l0] = await run(base);
      for (const r of [0, 3, 6, 7, 12, 19, 20, 25, N - 1]) {
        // replace q, k and v of row r by different (larger) values
        const changed = base.map((a) => {
          const c = Float64Array.from(a);
          for (let i = r * H * D; i < (r + 1) * H * D; i++) c[i] = f32(50 * (rng() - 0.5));
          return c;
        });
        const [o1, l1] = await run(changed);
        for (let t = 0; t < N; t++) {
          const sees = (seg[t] as number) <= r && r <= t;
          const ot = o1.slice(t * H * D, (t + 1) * H * D), lt = l1.slice(t * H, (t + 1) * H);
          if (!sees) {
            assertExact(ot, o0.slice(t * H * D, (t + 1) * H * D), `o[${t}] after changing row ${r}`);
            assertExact(lt, l0.slice(t * H, (t + 1) * H), `lse[${t}] after changing row ${r}`);
          } else if (t === r) {
            expect(ot).not.toEqual(o0.slice(t * H * D, (t + 1) * H * D)); // the change is visible where it should be
          }
        }
      }
    });

    test('a length-1 segment returns its own v (and lse = scale q.k)', async () => {
      const N = 4, H = 2, D = 6;
      const rng = mulberry32(56);
      const q = randomF32(rng, N * H * D), k = randomF32(rng, N * H * D), v = randomF32(rng, N * H * D);
      const f = keepOut(attention(mk(q, [N, H, D]), mk(k, [N, H, D]), mk(v, [N, H, D]), { segStart: ints([0, 1, 2, 3]) }));
      assertClose(await read(f.o), v, { f32Ulps: 1, label: 'o = v' });
      const lse = Array.from({ length: N * H }, (_v, i) => dotRef(q.subarray(i * D, (i + 1) * D), k.subarray(i * D, (i + 1) * D)) / sqrt(D));
      assertClose(await read(f.lse), lse, { atol: 16 * D * U, label: 'lse' });
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('crossEntropy', () => {
    const CASES: [number, number][] = [[1, 1], [7, 2], [37, 6], [301, 64], [37, 130], [7, 1000], [301, 1]];

    function targetsFor(rng: Rng, N: number, V: number): number[] {
      const t = Array.from({ length: N }, () => (rng() < 0.15 ? -1 : Math.floor(rng() * V)));
      if (N >= 3) { t[0] = V - 1; t[1] = -1; t[2] = 0; }
      return t;
    }

    async function check(dtype: ActDType, N: number, V: number, seed: number, range: [number, number] = [-8, 8], ignoredGrad = false): Promise<void> {
      const rng = mulberry32(seed);
      const logits = gen(rng, N * V, dtype, ...range);
      const targets = targetsFor(rng, N, V);
      const label = `${dtype} N=${N} V=${V}`;
      const tl = mk(logits, [N, V], dtype), tt = ints(targets);
      const f = keepOut(crossEntropy(tl, tt));
      for (const t of [f.nll, f.lse]) {
        expect(t.shape).toEqual([N]);
        expect(t.dtype).toBe('float32');
      }
      const ref = crossEntropyRef(logits, targets, N, V);
      const lseTol = Float64Array.from(ref.lse, (l) => U * (4 * abs(l) + 2 * (V + 16)));
      assertClose(await read(f.lse), ref.lse, { atolEach: lseTol, label: `${label} lse` });
      const nll = await read(f.nll);
      assertClose(nll, ref.nll, {
        atolEach: lseTol.map((e, n) => ((targets[n] as number) < 0 ? 0 : e + 2 * U * abs(logits[n * V + (targets[n] as number)] as number))),
        label: `${label} nll`,
      });
      targets.forEach((t, n) => { if (t < 0) expect(nll[n]).toBe(0); });
      // backward, without and with the z-loss term; gNll is 0 on ignored rows (as the mean loss gives)
      // unless ignoredGrad, which checks the header's rule that an ignored row keeps its p term
      const gN = randomF32(rng, N, 0.1, 1);
      if (!ignoredGrad) targets.forEach((t, n) => { if (t < 0) gN[n] = 0; });
      const gZ = randomF32(rng, N, -1, 1);
      const lseGot = await read(f.lse);
      for (const z of [null, gZ]) {
        const dl = keep(crossEntropyBackward(mk(gN, [N]), { logits: tl, targets: tt, lse: f.lse }, { gradZ: z ? mk(z, [N]) : undefined }));
        expect(dl.shape).toEqual([N, V]);
        expect(dl.dtype).toBe(dtype);
        const exp_ = crossEntropyBackwardRef(logits, targets, gN, z, N, V, lseGot);
        const t = new Float64Array(N * V);
        for (let n = 0; n < N; n++) {
          const l = lseGot[n] as number, gn = abs(gN[n] as number), gz = z ? abs(z[n] as number) : 0;
          for (let j = 0; j < V; j++) {
            const x = logits[n * V + j] as number, p = exp(x - l);
            const epsP = U * (2 * abs(x - l) + 4);
            const onehot = j === targets[n] ? 1 : 0;
            t[n * V + j] = epsP * p * (gn + 2 * gz * abs(l)) + 4 * U * (gn * (p + onehot) + 2 * gz * abs(l) * p) + UNDERFLOW;
          }
        }
        assertClose(await read(dl), exp_, outTol(dtype, exp_, t, `${label} dlogits (z ${z ? 'on' : 'off'})`));
      }
    }

    describe.each(DTYPES)('%s', (dtype) => {
      test.each(CASES)('N=%i V=%i: nll, lse, dlogits (with and without z-loss) against the reference', async (N, V) => {
        await check(dtype, N, V, N * 389 + V + (dtype === 'bfloat16' ? 1 : 0));
      });

      test('large logits (|x| up to 3e4) are max-subtracted', async () => {
        await check(dtype, 37, 64, 61, [-3e4, 3e4]);
      });

      test('huge logits (±1e30): lse = max, nll exact, p one-hot', async () => {
        const V = 5;
        const logits = [
          1e30, -1e30, 3e29, 0, -3e29,
          -1e30, -1e30, -1e30, 2e30, 1e29,
          -2e30, -2e30, -2e30, -2e30, -2e30,
        ].map((v) => (dtype === 'bfloat16' ? bf16Round(v) : f32(v)));
        const targets = [1, 3, -1];
        const N = 3;
        const tl = mk(logits, [N, V], dtype), tt = ints(targets);
        const f = keepOut(crossEntropy(tl, tt));
        const lse = await read(f.lse), nll = await read(f.nll);
        expect(lse.every((v) => Number.isFinite(v))).toBe(true);
        const L = logits as number[];
        // lse = the row maximum (the other terms vanish); row 2 (all equal): -2e30 + log 5 = -2e30 in float32
        assertClose(lse, [L[0] as number, L[8] as number, (L[10] as number) + log(5)], { f32Ulps: 1, label: 'lse' });
        // row 0: nll = 1e30 - (-1e30); row 1: the target is the maximum; row 2: ignored
        assertExact(nll, [f32((L[0] as number) - (L[1] as number)), 0, 0], 'nll');
        const gN = [1, 0.5, 0], gZ = [1e-30, 0, 0];
        const dl = await read(keep(crossEntropyBackward(mk(gN, [N]), { logits: tl, targets: tt, lse: f.lse }, { gradZ: mk(gZ, [N]) })));
        expect(dl.every((v) => Number.isFinite(v))).toBe(true);
        // p is one-hot at the maximum in rows 0 and 1; row 2 has no gradient (gNll = gZ = 0)
        const want = [
          1 + 1e-30 * 2 * (lse[0] as number), -1, 0, 0, 0,
          0, 0, 0, 0, 0,
          0, 0, 0, 0, 0,
        ];
        assertClose(dl, want, { rtol: 8 * U, bf16Ulps: dtype === 'bfloat16' ? 1 : 0, label: 'dlogits' });
      });
    });

    test('V = 1: lse = logit, nll = 0, dlogits = gZ 2 lse (no nll gradient)', async () => {
      const logits = [3, -2, 0.5, 7];
      const f = keepOut(crossEntropy(mk(logits, [4, 1]), ints([0, 0, -1, 0])));
      assertExact(await read(f.lse), logits, 'lse');
      assertExact(await read(f.nll), [0, 0, 0, 0], 'nll');
      const gz = [0.5, 1, -1, 0];
      const dl = await read(keep(crossEntropyBackward(mk([1, 2, 0, 3], [4]), { logits: mk(logits, [4, 1]), targets: ints([0, 0, -1, 0]), lse: f.lse }, { gradZ: mk(gz, [4]) })));
      assertClose(dl, [3, -4, -1, 0], { f32Ulps: 1, label: 'dlogits' });
    });

    test('all targets ignored: nll = 0, lse still computed', async () => {
      const rng = mulberry32(62);
      const logits = randomF32(rng, 7 * 6, -3, 3);
      const f = keepOut(crossEntropy(mk(logits, [7, 6]), ints(new Array(7).fill(-1))));
      assertExact(await read(f.nll), new Array(7).fill(0), 'nll');
      assertClose(await read(f.lse), crossEntropyRef(logits, new Array(7).fill(-1), 7, 6).lse, { rtol: 32 * U, label: 'lse' });
    });

    test('an ignored row with a nonzero gNll keeps the p term and has no one-hot term (header)', async () => {
      await check('float32', 37, 6, 63, [-8, 8], true);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('adamwStep', () => {
    const H0: AdamWStep = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 1 };
    const hyperOf = (h: AdamWStep): AdamWHyper => ({ ...h, gradScale: h.gradScale ?? 1 });

    async function runSteps(shape: number[], seed: number, steps: AdamWStep[], grads?: (rng: Rng, n: number) => Float64Array): Promise<void> {
      const n = shape.reduce((a, b) => a * b, 1);
      const rng = mulberry32(seed);
      let p = randomF32(rng, n), m = randomF32(rng, n, -0.1, 0.1), v = randomF32(rng, n, 0, 0.01);
      let tp = mk(p, shape), tm = mk(m, shape), tv = mk(v, shape);
      for (const h of steps) {
        const g = grads ? grads(rng, n) : randomF32(rng, n, -2, 2);
        const r = keepOut(adamwStep({ param: tp, grad: mk(g, shape), expAvg: tm, expAvgSq: tv }, h, { bf16Copy: true }));
        expect(r.param.shape).toEqual(shape);
        expect(r.param.dtype).toBe('float32');
        expect(r.expAvg.dtype).toBe('float32');
        expect(r.expAvgSq.dtype).toBe('float32');
        expect(r.bf16?.dtype).toBe('bfloat16');
        expect(r.bf16?.shape).toEqual(shape);
        const e = adamwF32(p, g, m, v, hyperOf(h));
        const label = `[${shape}] step ${h.step} ${JSON.stringify(h)}`;
        // bit-exact: the header fixes the float32 operation order and forbids FMA (CPU and CUDA)
        const [gp, gm, gv, gb] = await Promise.all([r.param, r.expAvg, r.expAvgSq, r.bf16 as Tensor].map((t) => read(t)));
        assertExact(gm as number[], e.m, `${label} m`);
        assertExact(gv as number[], e.v, `${label} v`);
        assertExact(gp as number[], e.p, `${label} p`);
        assertExact(gb as number[], e.bf16, `${label} bf16 copy = bf16(p)`);
        // and near the float64 step
        const r64 = adamwRef(p, g, m, v, hyperOf(h));
        const relHyper = [h.beta1, h.beta2].reduce((acc, b) => acc + abs(f32(1 - f32(b)) - (1 - b)) / (1 - b), 0);
        assertClose(gp as number[], r64.p, { atolEach: adamwTol(p, r64.p, h.lr * h.weightDecay, relHyper), label: `${label} p vs float64` });
        [p, m, v] = [e.p, e.m, e.v];
        [tp, tm, tv] = [r.param, r.expAvg, r.expAvgSq];
      }
    }

    test.each([[[1]], [[7]], [[37]], [[301]], [[4099]], [[37, 11]], [[2, 3, 5]]] as [number[]][])('shape %j: five steps, bit-exact against the float32 emulation', async (shape) => {
      await runSteps(shape, shape.reduce((a, b) => a * b, 1) + shape.length, [1, 2, 3, 4, 5].map((step) => ({ ...H0, step })));
    });

    test('hyper-parameters: gradScale, no weight decay, other betas / eps, late steps, lr 0', async () => {
      await runSteps([301], 71, [
        { ...H0, gradScale: 0.37, step: 1 },
        { ...H0, weightDecay: 0, gradScale: 2.5, step: 2 },
        { lr: 3e-2, beta1: 0.8, beta2: 0.999, eps: 1e-5, weightDecay: 0.01, step: 3 },
        { ...H0, step: 1000 },
        { ...H0, lr: 0, step: 1001 },
        { ...H0, gradScale: 0, step: 1002 },
      ]);
    });

    test('zero gradients and zero state: p = p - lr wd p exactly, moments stay 0', async () => {
      const n = 37;
      const rng = mulberry32(72);
      const p = randomF32(rng, n, -3, 3);
      const z = new Array(n).fill(0);
      const h = { ...H0, lr: 0.01, weightDecay: 0.5, step: 1 };
      const r = keepOut(adamwStep({ param: mk(p, [n]), grad: mk(z, [n]), expAvg: mk(z, [n]), expAvgSq: mk(z, [n]) }, h));
      expect(r.bf16).toBeUndefined();
      assertExact(await read(r.param), Array.from(p, (pv) => f32(pv - f32(f32(f32(0.01) * f32(0.5)) * pv))), 'p');
      assertExact(await read(r.expAvg), z, 'm');
      assertExact(await read(r.expAvgSq), z, 'v');
    });

    test('inputs are left unchanged', async () => {
      const n = 7;
      const rng = mulberry32(73);
      const arrs = [randomF32(rng, n), randomF32(rng, n), randomF32(rng, n, -0.1, 0.1), randomF32(rng, n, 0, 0.01)];
      const ts = arrs.map((a) => mk(a, [n])) as [Tensor, Tensor, Tensor, Tensor];
      const [param, grad, expAvg, expAvgSq] = ts;
      keepOut(adamwStep({ param, grad, expAvg, expAvgSq }, H0));
      for (let i = 0; i < 4; i++) assertExact(await read(keep((ts[i] as Tensor).clone())), arrs[i] as Float64Array, `input ${i}`);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('errors', () => {
    test('shapes, dtypes and arguments are validated at the call (ERR_SHAPE / ERR_DTYPE / ERR_ARG)', () => {
      const x = mk(new Array(12).fill(1), [3, 4]);
      const xb = mk(new Array(12).fill(1), [3, 4], 'bfloat16');
      const w4 = mk([1, 1, 1, 1], [4]);
      // rmsNorm
      throwsCode(() => rmsNorm(x, mk([1, 1, 1], [3])), 'ERR_SHAPE');
      throwsCode(() => rmsNorm(x, mk([1, 1, 1, 1], [4], 'bfloat16')), 'ERR_DTYPE');
      throwsCode(() => rmsNorm(mk(new Array(12).fill(1), [3, 4], 'int32'), w4), 'ERR_DTYPE');
      throwsCode(() => rmsNorm(x, w4, { eps: 0 }), 'ERR_ARG');
      throwsCode(() => rmsNorm(x, w4, { eps: -1 }), 'ERR_ARG');
      throwsCode(() => rmsNorm(x, w4, { eps: NaN }), 'ERR_ARG');
      const rs = keepOut(rmsNorm(x, w4));
      throwsCode(() => rmsNormBackward(x, { x, weight: w4, rstd: mk([1, 1], [2]) }), 'ERR_SHAPE');
      throwsCode(() => rmsNormBackward(xb, { x, weight: w4, rstd: rs.rstd }), 'ERR_DTYPE');
      throwsCode(() => rmsNormBackward(mk(new Array(8).fill(1), [2, 4]), { x, weight: w4, rstd: rs.rstd }), 'ERR_SHAPE');
      throwsCode(() => rmsNormBackward(x, { x, weight: w4, rstd: mk([1, 1, 1], [3], 'bfloat16') }), 'ERR_DTYPE');
      // layerNorm
      const x3 = mk(new Array(24).fill(1), [2, 3, 4]);
      const w34 = mk(new Array(12).fill(1), [3, 4]);
      throwsCode(() => layerNorm(mk([1, 2], [2]), { weight: mk([1, 1], [1, 2]), bias: mk([0, 0], [1, 2]) }), 'ERR_SHAPE');
      throwsCode(() => layerNorm(x3, { weight: w4, bias: w34 }), 'ERR_SHAPE');
      throwsCode(() => layerNorm(x3, { weight: w34, bias: mk(new Array(12).fill(0), [4, 3]) }), 'ERR_SHAPE');
      throwsCode(() => layerNorm(x3, { weight: w34, bias: mk(new Array(12).fill(0), [3, 4], 'bfloat16') }), 'ERR_DTYPE');
      throwsCode(() => layerNorm(mk(new Array(24).fill(1), [2, 3, 4], 'uint8'), { weight: w34, bias: w34 }), 'ERR_DTYPE');
      throwsCode(() => layerNorm(x3, { weight: w34, bias: w34 }, { eps: 0 }), 'ERR_ARG');
      const ln = keepOut(layerNorm(x3, { weight: w34, bias: w34 }));
      throwsCode(() => layerNormBackward(x3, { x: x3, weight: w34, mean: ln.mean, rstd: mk([1, 1], [2]) }), 'ERR_SHAPE');
      throwsCode(() => layerNormBackward(mk(new Array(24).fill(1), [2, 3, 4], 'bfloat16'), { x: x3, weight: w34, mean: ln.mean, rstd: ln.rstd }), 'ERR_DTYPE');
      // rope
      const q = mk(new Array(24).fill(1), [2, 3, 4]);
      const pos = ints([0, 1]);
      throwsCode(() => rope(mk(new Array(8).fill(1), [2, 4]), pos), 'ERR_SHAPE');
      throwsCode(() => rope(mk(new Array(18).fill(1), [2, 3, 3]), pos), 'ERR_SHAPE');
      throwsCode(() => rope(q, ints([0, 1, 2])), 'ERR_SHAPE');
      throwsCode(() => rope(q, mk([0, 1], [2])), 'ERR_DTYPE');
      throwsCode(() => rope(mk(new Array(24).fill(1), [2, 3, 4], 'int32'), pos), 'ERR_DTYPE');
      throwsCode(() => rope(q, pos, { theta: 0 }), 'ERR_ARG');
      throwsCode(() => rope(q, pos, { theta: Infinity }), 'ERR_ARG');
      // attention
      const seg = ints([0, 0]);
      throwsCode(() => attention(q, mk(new Array(12).fill(1), [1, 3, 4]), q, { segStart: seg }), 'ERR_SHAPE');
      throwsCode(() => attention(q, q, mk(new Array(24).fill(1), [2, 3, 4], 'bfloat16'), { segStart: seg }), 'ERR_DTYPE');
      throwsCode(() => attention(mk(new Array(8).fill(1), [2, 4]), mk(new Array(8).fill(1), [2, 4]), mk(new Array(8).fill(1), [2, 4]), { segStart: seg }), 'ERR_SHAPE');
      throwsCode(() => attention(q, q, q, { segStart: ints([0]) }), 'ERR_SHAPE');
      throwsCode(() => attention(q, q, q, { segStart: mk([0, 0], [2]) }), 'ERR_DTYPE');
      throwsCode(() => attention(q, q, q, { segStart: seg, scale: NaN }), 'ERR_ARG');
      const at = keepOut(attention(q, q, q, { segStart: seg }));
      throwsCode(() => attentionBackward(q, { q, k: q, v: q, o: at.o, lse: mk([0, 0], [2]), segStart: seg }), 'ERR_SHAPE');
      throwsCode(() => attentionBackward(mk(new Array(24).fill(1), [2, 3, 4], 'bfloat16'), { q, k: q, v: q, o: at.o, lse: at.lse, segStart: seg }), 'ERR_DTYPE');
      throwsCode(() => attentionBackward(q, { q, k: q, v: q, o: mk(new Array(12).fill(1), [1, 3, 4]), lse: at.lse, segStart: seg }), 'ERR_SHAPE');
      // crossEntropy
      const lg = mk(new Array(12).fill(0), [3, 4]);
      const tg = ints([0, 1, -1]);
      throwsCode(() => crossEntropy(mk([0, 0, 0], [3]), tg), 'ERR_SHAPE');
      throwsCode(() => crossEntropy(mk(new Array(24).fill(0), [3, 2, 4]), tg), 'ERR_SHAPE');
      throwsCode(() => crossEntropy(mk([], [3, 0]), tg), 'ERR_SHAPE');
      throwsCode(() => crossEntropy(lg, ints([0, 1])), 'ERR_SHAPE');
      throwsCode(() => crossEntropy(lg, mk([0, 1, 2], [3])), 'ERR_DTYPE');
      throwsCode(() => crossEntropy(mk(new Array(12).fill(0), [3, 4], 'int32'), tg), 'ERR_DTYPE');
      const ce = keepOut(crossEntropy(lg, tg));
      throwsCode(() => crossEntropyBackward(mk([1, 1], [2]), { logits: lg, targets: tg, lse: ce.lse }), 'ERR_SHAPE');
      throwsCode(() => crossEntropyBackward(mk([1, 1, 1], [3]), { logits: lg, targets: tg, lse: ce.lse }, { gradZ: mk([1, 1], [2]) }), 'ERR_SHAPE');
      throwsCode(() => crossEntropyBackward(mk([1, 1, 1], [3]), { logits: lg, targets: tg, lse: mk([0, 0, 0], [3], 'bfloat16') }), 'ERR_DTYPE');
      throwsCode(() => crossEntropyBackward(mk([1, 1, 1], [3]), { logits: lg, targets: tg, lse: ce.lse }, { gradZ: mk([1, 1, 1], [3], 'bfloat16') }), 'ERR_DTYPE');
      // adamw
      const p = mk([1, 2, 3], [3]);
      throwsCode(() => adamwStep({ param: mk([1, 2, 3], [3], 'bfloat16'), grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR }), 'ERR_DTYPE');
      throwsCode(() => adamwStep({ param: p, grad: mk([1, 2], [2]), expAvg: p, expAvgSq: p }, { ...H_ERR }), 'ERR_SHAPE');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: mk([1, 2, 3], [1, 3]) }, { ...H_ERR }), 'ERR_SHAPE');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: mk([1, 2, 3], [3], 'bfloat16'), expAvgSq: p }, { ...H_ERR }), 'ERR_DTYPE');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, step: 0 }), 'ERR_ARG');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, step: 1.5 }), 'ERR_ARG');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, lr: -1 }), 'ERR_ARG');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, lr: NaN }), 'ERR_ARG');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, beta1: 1 }), 'ERR_ARG');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, beta2: -0.1 }), 'ERR_ARG');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, eps: 0 }), 'ERR_ARG');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, weightDecay: -0.1 }), 'ERR_ARG');
      throwsCode(() => adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p }, { ...H_ERR, gradScale: -1 }), 'ERR_ARG');
      // non-tensors
      throwsCode(() => rmsNorm([1, 2] as unknown as Tensor, w4), 'ERR_ARG');
    });

    test('data errors reject with ERR_RANGE when the result is read', async () => {
      const rng = mulberry32(81);
      const N = 5, H = 2, D = 4;
      const q = mk(randomF32(rng, N * H * D), [N, H, D]);
      // rope: a negative position
      await rejectsCode(rope(q, ints([0, 1, -1, 3, 4])), 'ERR_RANGE', /rope/);
      await rejectsCode(rope(q, ints([0, 1, 2, 3, -2147483648]), { inverse: true }), 'ERR_RANGE', /rope/);
      // attention: segStart[t] > t, a jump back, a start not at t or segStart[t-1], negative, segStart[0] != 0
      const bad = [[0, 2, 2, 2, 2], [0, 0, 2, 1, 1], [0, 0, 0, 2, 0], [0, 0, -1, 3, 3], [1, 1, 1, 1, 1], [0, 1, 1, 1, 5]];
      for (const s of bad) {
        expect(() => checkSegStart(s)).toThrow(RangeError);
        const f = keepOut(attention(q, q, q, { segStart: ints(s) }));
        await rejectsCode(f.o, 'ERR_RANGE', /attention/);
        await rejectsCode(f.lse, 'ERR_RANGE', /attention/);
      }
      const good = keepOut(attention(q, q, q, { segStart: ints([0, 0, 2, 2, 4]) }));
      const g = keepOut(attentionBackward(q, { q, k: q, v: q, o: good.o, lse: good.lse, segStart: ints([0, 0, 2, 1, 1]) }, { scale: undefined }));
      await rejectsCode(g.dq, 'ERR_RANGE', /attention/);
      // cross-entropy: a target >= V or < -1
      const lg = mk(randomF32(rng, 3 * 4), [3, 4]);
      for (const t of [[0, 4, 1], [0, -2, 1], [2147483647, 0, 0]]) {
        const f = keepOut(crossEntropy(lg, ints(t)));
        await rejectsCode(f.nll, 'ERR_RANGE', /cross_entropy/);
        await rejectsCode(f.lse, 'ERR_RANGE', /cross_entropy/);
      }
      // unrelated work still succeeds afterwards
      expect(await read(keep(mk([1, 2], [2]).add(1)))).toEqual([2, 3]);
      const ok = keepOut(crossEntropy(lg, ints([3, -1, 0])));
      expect((await read(ok.nll))[1]).toBe(0);
    });

    (cuda ? test : test.skip)('mixed devices are rejected with ERR_DEVICE', () => {
      const host = (v: number[], shape: number[], dtype: DType = 'float32'): Tensor =>
        keep(dtype === 'int32' ? tensor(Int32Array.from(v), { shape, device: 'cpu' }) : tensor(Float32Array.from(v), { shape, dtype, device: 'cpu' }));
      const x = mk([1, 2, 3, 4], [1, 2, 2]);
      throwsCode(() => rmsNorm(x, host([1, 1], [2])), 'ERR_DEVICE');
      throwsCode(() => layerNorm(x, { weight: host([1, 1, 1, 1], [2, 2]), bias: mk([0, 0, 0, 0], [2, 2]) }), 'ERR_DEVICE');
      throwsCode(() => rope(x, host([0], [1], 'int32')), 'ERR_DEVICE');
      throwsCode(() => attention(x, host([1, 2, 3, 4], [1, 2, 2]), x, { segStart: ints([0]) }), 'ERR_DEVICE');
      throwsCode(() => attention(x, x, x, { segStart: host([0], [1], 'int32') }), 'ERR_DEVICE');
      throwsCode(() => crossEntropy(mk([1, 2], [1, 2]), host([0], [1], 'int32')), 'ERR_DEVICE');
      throwsCode(() => adamwStep({ param: mk([1], [1]), grad: host([1], [1]), expAvg: mk([0], [1]), expAvgSq: mk([0], [1]) }, H_ERR), 'ERR_DEVICE');
    });
  });

  // -------------------------------------------------------------------------------------------
  test('determinism: every forward and backward twice gives the same bits (weight gradients included)', async () => {
    const rng = mulberry32(91);
    const N = 301, G = 3, D = 64, V = 130;
    const x = mk(randomF32(rng, N * G * D), [N, G, D]);
    const xb = mk(gen(rng, N * G * D, 'bfloat16'), [N, G, D], 'bfloat16');
    const wr = mk(randomF32(rng, D), [D]);
    const w = mk(randomF32(rng, G * D), [G, D]), b = mk(randomF32(rng, G * D), [G, D]);
    const dy = mk(randomF32(rng, N * G * D), [N, G, D]);
    const dyb = mk(gen(rng, N * G * D, 'bfloat16'), [N, G, D], 'bfloat16');
    const seg = ints(segStartOf([1, 5, 37, 258]));
    const pos = ints(randomInt(rng, N, 0, 4095));
    const logits = mk(randomF32(rng, N * V, -5, 5), [N, V]);
    const targets = ints(Array.from({ length: N }, () => (rng() < 0.1 ? -1 : Math.floor(rng() * V))));
    const gN = mk(randomF32(rng, N), [N]), gZ = mk(randomF32(rng, N), [N]);
    const run = async (): Promise<HostArray[]> => {
      const out: Tensor[] = [];
      for (const [xx, dd] of [[x, dy], [xb, dyb]] as [Tensor, Tensor][]) {
        const r = keepOut(rmsNorm(xx, wr));
        const rb = keepOut(rmsNormBackward(dd, { x: xx, weight: wr, rstd: r.rstd }));
        const l = keepOut(layerNorm(xx, { weight: w, bias: b }));
        const lb = keepOut(layerNormBackward(dd, { x: xx, weight: w, mean: l.mean, rstd: l.rstd }));
        const ro = keep(rope(xx, pos));
        const a = keepOut(attention(ro, xx, dd, { segStart: seg }));
        const ab = keepOut(attentionBackward(xx, { q: ro, k: xx, v: dd, o: a.o, lse: a.lse, segStart: seg }));
        out.push(r.y, r.rstd, rb.dx, rb.dweight, l.y, l.mean, l.rstd, lb.dx, lb.dweight, lb.dbias, ro, a.o, a.lse, ab.dq, ab.dk, ab.dv);
      }
      const ce = keepOut(crossEntropy(logits, targets));
      out.push(ce.nll, ce.lse, keep(crossEntropyBackward(gN, { logits, targets, lse: ce.lse }, { gradZ: gZ })));
      const ad = keepOut(adamwStep({ param: wr, grad: wr, expAvg: wr, expAvgSq: keep(wr.square()) }, H_ERR, { bf16Copy: true }));
      out.push(ad.param, ad.expAvg, ad.expAvgSq, ad.bf16 as Tensor);
      return Promise.all(out.map((t) => t.toArray()));
    };
    const first = await run();
    const second = await run();
    expect(first.length).toBe(second.length);
    first.forEach((a, i) => {
      if (!sameBits(a, second[i] as HostArray)) throw new Error(`output ${i} differs between two runs`);
    });
  });
});

