/**
 * The mixture-of-experts ops (SPEC.md §2, csrc/cpu/kernels_moe.h) against the independent float64
 * reference in support/moe_reference.ts: partition, router scores (+ Gumbel noise) and their
 * backward, expert- and token-choice routing, gather / combine / gate gradient, grouped GEMM and
 * its weight gradient, SwiGLU, routing statistics; exactness where the contract makes results
 * exact, error codes, determinism.
 */
import { DType, Generator, HostArray, MomaErrorCode, Tensor, tensor } from '../lib';
import {
  combineRows, gateGrad, gatherRows, groupedMatmul, groupedMatmulSwiglu, groupedMatmulWgrad, moePartition, moeSlotBound, route,
  routerScores, routerScoresBackward, routingStats, swiglu, swigluBackward,
} from '../lib/kernels';
import type { MoeLayout, RoutingOptions } from '../lib';
import type { Partition } from '../lib/kernels';
import { native } from '../lib/binding';
import { describeDevices, tensorFixture } from './support/devices';
import {
  Rng, assertClose, assertExact, bf16Round, f32Ulp, mulberry32, philoxBlock, philoxUniformOpen, philoxUniformOpenRef, randomBf16, randomF32,
} from './support/reference';
import {
  RefLayout, RefRoutingOptions, combineRowsRef, expertChoiceCapacity, gateGradRef, gatherRowsRef, groupedMatmulRef,
  groupedMatmulWgradRef, gumbelBlocks, gumbelNoiseRef, layoutInfo, partitionRef, routeRef, routerScoresBackwardRef,
  routerScoresRef, routingStatsRef, slotBoundRef, swigluBackwardRef, swigluRef, tokenChoiceCapacity,
} from './support/moe_reference';
import { throwsCode } from './support/errors';

// ---------------------------------------------------------------------------------------------
// Cases

const LAYOUTS: [string, RefLayout][] = [
  ['[4,4] (4t4i)', { experts: [4, 4], groupOfModality: [0, 1] }],
  ['[8] for both modalities (8x)', { experts: [8], groupOfModality: [0, 0] }],
  ['[1,1] (1t1i)', { experts: [1, 1], groupOfModality: [0, 1] }],
  ['[3,1,2] with 3 modalities', { experts: [3, 1, 2], groupOfModality: [0, 1, 2] }],
  ['[2,3] with modality 1 unrouted', { experts: [2, 3], groupOfModality: [1, -1, 0] }],
];

const ROWS = [1, 7, 37, 301];
/** (T, d) pairs for the row ops */
const SIZES: [number, number][] = [[1, 5], [7, 33], [37, 1], [301, 6]];

type Pattern = 'mixed' | 'one modality' | 'last modality';
const PATTERNS: Pattern[] = ['mixed', 'one modality', 'last modality'];

/** Modality ids: 'mixed' draws every modality plus ~12% padding (-1); the others use one id only. */
function randomModality(rng: Rng, T: number, M: number, pattern: Pattern): number[] {
  const out: number[] = [];
  for (let t = 0; t < T; t++) {
    if (pattern === 'one modality') out.push(0);
    else if (pattern === 'last modality') out.push(M - 1);
    else out.push(rng() < 0.12 ? -1 : Math.floor(rng() * M));
  }
  return out;
}

const { fround: f32, floor } = Math;

type ScoreKind = 'distinct' | 'ties';

/** Scores [T, E] in (0, 1): distinct float32 values, or values from {0.25, 0.5, 0.75} (many exact ties). */
function randomScores(rng: Rng, T: number, E: number, kind: ScoreKind): Float64Array {
  const out = new Float64Array(T * E);
  for (let i = 0; i < out.length; i++) out[i] = kind === 'ties' ? 0.25 * (1 + floor(rng() * 3)) : f32(0.001 + 0.998 * rng());
  return out;
}


function sameBits(a: HostArray, b: HostArray): boolean {
  if (a.length !== b.length || a.constructor !== b.constructor) return false;
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Exact equality on the entries where `mask` holds (one assertion for all of them). */
function exactWhere(got: ArrayLike<number>, exp: ArrayLike<number>, mask: (i: number) => boolean, label: string): void {
  const g: number[] = [], e: number[] = [];
  for (let i = 0; i < exp.length; i++) if (mask(i)) { g.push(got[i] as number); e.push(exp[i] as number); }
  assertExact(g, e, label);
}


// ---------------------------------------------------------------------------------------------
// Reference self-checks (hand-computed answers; no moma calls)

describe('MoE reference self-checks', () => {
  const L: RefLayout = { experts: [2], groupOfModality: [0] };
  // rows 0..4, expert 0 / expert 1 scores
  const scores = [0.9, 0.2, 0.1, 0.8, 0.5, 0.8, 0.5, 0.1, 0.3, 0.8];
  const part = partitionRef([0, 0, 0, 0, 0], L);

  test('capacities and slot bound', () => {
    expect(expertChoiceCapacity(5, 2, 1)).toBe(3);
    expect(expertChoiceCapacity(5, 2, 0.5)).toBe(2);
    expect(expertChoiceCapacity(5, 2, 2)).toBe(5);
    expect(expertChoiceCapacity(5, 2, 3)).toBe(5);
    expect(expertChoiceCapacity(7, 3, 1.37)).toBe(4); // ceil(3.1967)
    expect(expertChoiceCapacity(0, 4, 1)).toBe(0);
    expect(expertChoiceCapacity(9, 1, 0.1)).toBe(9);
    expect(tokenChoiceCapacity(5, 2, 1, 0.5)).toBe(2);
    expect(tokenChoiceCapacity(5, 2, 2, 1)).toBe(5);
    expect(slotBoundRef(5, L)).toBe(7);
    expect(slotBoundRef(5, L, { capacityFactor: 2 })).toBe(10);
    expect(slotBoundRef(5, L, { mode: 'token-choice', topK: 3 })).toBe(10);
    expect(slotBoundRef(10, { experts: [4, 4], groupOfModality: [0, 1] }, { capacityFactor: 1.37 })).toBe(22);
  });

  test('partition by hand', () => {
    const p = partitionRef([1, -1, 0, 2, 1, 0], { experts: [2, 3], groupOfModality: [1, -1, 0] });
    expect(p.rowGroup).toEqual([-1, -1, 1, 0, -1, 1]);
    expect(p.counts).toEqual([1, 2]);
    expect(p.offsets).toEqual([0, 1, 3]);
    expect(p.perm).toEqual([3, 2, 5, 0, 1, 4]);
    expect(() => partitionRef([3], { experts: [2, 3], groupOfModality: [1, -1, 0] })).toThrow(RangeError);
  });

  test('expert choice by hand (ties to the smaller row)', () => {
    const r = routeRef(scores, part, L);
    expect(r.expertOffsets).toEqual([0, 3, 6]);
    expect(r.slotRow).toEqual([0, 2, 3, 1, 2, 4, -1]);
    expect(r.slotGate).toEqual([0.9, 0.5, 0.5, 0.8, 0.8, 0.8, 0]);
    expect(r.rowSlots).toEqual([0, -1, -1, 3, 1, 4, 2, -1, -1, 5]);
    const half = routeRef(scores, part, L, { capacityFactor: 0.5 });
    expect(half.slotRow.slice(0, 4)).toEqual([0, 2, 1, 2]);
  });

  test('token choice by hand', () => {
    const r = routeRef(scores, part, L, { mode: 'token-choice', topK: 1 });
    expect(r.expertOffsets).toEqual([0, 2, 5]);
    expect(r.slotRow).toEqual([0, 3, 1, 2, 4]);
    const capped = routeRef(scores, part, L, { mode: 'token-choice', topK: 1, capacityFactor: 0.5 });
    expect(capped.expertOffsets).toEqual([0, 2, 4]);
    expect(capped.slotRow).toEqual([0, 3, 1, 2, -1]);
    const two = routeRef(scores, part, L, { mode: 'token-choice', topK: 2 });
    expect(two.expertOffsets).toEqual([0, 5, 10]);
  });

  test('threshold by hand: select > 0.5 strictly, NaN not taken, no capacity', () => {
    // select[t, 0], select[t, 1] for rows 0..4
    const select = [0.6, 0.5, NaN, 0.51, 0.2, 0.7, 0.9, 0.9, 0.5, 0.1];
    const r = routeRef(scores, part, L, { mode: 'threshold', select });
    expect(slotBoundRef(5, L, { mode: 'threshold' })).toBe(10);
    expect(r.expertOffsets).toEqual([0, 2, 5]);
    expect(r.slotRow).toEqual([0, 3, 1, 2, 3, -1, -1, -1, -1, -1]);
    expect(r.slotGate).toEqual([0.9, 0.5, 0.8, 0.8, 0.1, 0, 0, 0, 0, 0]);
    expect(r.rowSlots).toEqual([0, -1, -1, 2, -1, 3, 1, 4, -1, -1]);
    expect(() => routeRef(scores, part, L, { mode: 'threshold' })).toThrow();
  });

  test('single-expert groups take every row with gate 1', () => {
    const L2: RefLayout = { experts: [1, 2], groupOfModality: [0, 1] };
    const p = partitionRef([0, 1, 0], L2);
    const r = routeRef([0.1, 0, 0, 0, 0.3, 0.6, 0.2, 0, 0], p, L2);
    expect(r.expertOffsets).toEqual([0, 2, 3, 4]);
    expect(r.slotRow.slice(0, 4)).toEqual([0, 2, 1, 1]);
    expect(r.slotGate.slice(0, 4)).toEqual([1, 1, 0.3, 0.6]);
  });

  test('score order: NaN last, -0 ties +0, -Infinity above NaN', () => {
    const L1: RefLayout = { experts: [2], groupOfModality: [0] };
    // expert 0: rows NaN, -inf, -0, +0, +inf
    const s = [NaN, 0, -Infinity, 0, -0, 0, 0, 0, Infinity, 0];
    const r = routeRef(s, partitionRef([0, 0, 0, 0, 0], L1), L1, { capacityFactor: 1.6 }); // k = 4
    expect(r.rowsOf[0]).toEqual([1, 2, 3, 4]);
    const r2 = routeRef(s, partitionRef([0, 0, 0, 0, 0], L1), L1, { capacityFactor: 0.8 }); // k = 2: +inf, then -0 (ties +0, smaller row)
    expect(r2.rowsOf[0]).toEqual([2, 4]);
  });

  test('combine emulation is order sensitive (float32, increasing j)', () => {
    const src = [1e8, 1, -1e8];
    expect(combineRowsRef(src, 1, [0, 2, 1], 3).y[0]).toBe(1);
    expect(combineRowsRef(src, 1, [0, 1, 2], 3).y[0]).toBe(0);
  });

  test('open uniforms lie in (0, 1); Gumbel differences have mean 0 and variance pi^2/3', () => {
    let sum = 0, sq = 0;
    const u = philoxUniformOpenRef(8000, 7n, 3n);
    expect(u.every((v) => v > 0 && v < 1)).toBe(true);
    for (let i = 0; i < 12; i++) expect(philoxUniformOpen(7n, 3n, i * 613)).toBe(u[i * 613]);
    expect(u[5]).toBe(((philoxBlock(4n, 7n)[1] >>> 8) + 0.5) / 2 ** 24);
    const noise = gumbelNoiseRef(40, 100, 7n, 3n);
    for (const v of noise) { sum += v; sq += v * v; }
    const mean = sum / noise.length;
    // the difference of two standard Gumbels is logistic: mean 0, variance pi^2 / 3 (sd of the estimates ~0.03 / ~0.09)
    expect(Math.abs(mean)).toBeLessThan(0.15);
    expect(Math.abs(sq / noise.length - (Math.PI ** 2) / 3)).toBeLessThan(0.45);
    expect(gumbelBlocks(7, 3)).toBe(11);
  });
});

// ---------------------------------------------------------------------------------------------

describeDevices('moe ops', (device) => {
  const { keep, mk, read } = tensorFixture(device);
  const ints = (v: ArrayLike<number>, shape: number[] = [v.length]): Tensor => mk(v, shape, 'int32');
  const cuda = device !== 'cpu';
  const afterDispose: { dispose(): void }[] = [];
  const keepAll = <T extends { dispose(): void }>(x: T): T => {
    afterDispose.push(x);
    return x;
  };
  afterEach(() => {
    for (const x of afterDispose.splice(0)) x.dispose();
  });

  const rejectsCode = async (t: Tensor, code: MomaErrorCode, op?: RegExp): Promise<void> => {
    keep(t);
    await expect(t.toArray()).rejects.toMatchObject({ name: 'MomaError', code, ...(op ? { message: expect.stringMatching(op) } : {}) });
  };

  const partitionOf = (modality: number[], L: MoeLayout): Partition => keepAll(moePartition(ints(modality), L));

  // -------------------------------------------------------------------------------------------
  describe('moePartition', () => {
    test.each(LAYOUTS)('%s: exact against the reference for T = 1, 7, 37, 301 and every row pattern', async (_name, L) => {
      const M = L.groupOfModality.length;
      for (const T of ROWS)
        for (const pattern of PATTERNS) {
          const modality = randomModality(mulberry32(T * 31 + M), T, M, pattern);
          const p = partitionOf(modality, L);
          const ref = partitionRef(modality, L);
          const label = `T=${T} ${pattern}`;
          expect(p.rowGroup.shape).toEqual([T]);
          expect(p.counts.shape).toEqual([L.experts.length]);
          expect(p.offsets.shape).toEqual([L.experts.length + 1]);
          expect(p.perm.shape).toEqual([T]);
          for (const t of [p.rowGroup, p.counts, p.offsets, p.perm]) expect(t.dtype).toBe('int32');
          assertExact(Array.from(await p.rowGroup.toArray()), ref.rowGroup, `${label} rowGroup`);
          assertExact(Array.from(await p.counts.toArray()), ref.counts, `${label} counts`);
          assertExact(Array.from(await p.offsets.toArray()), ref.offsets, `${label} offsets`);
          assertExact(Array.from(await p.perm.toArray()), ref.perm, `${label} perm`);
        }
    });

    test('padding only: no group has rows, perm is the identity', async () => {
      const L = { experts: [2, 2], groupOfModality: [0, 1] };
      const p = partitionOf([-1, -1, -1], L);
      expect(Array.from(await p.counts.toArray())).toEqual([0, 0]);
      expect(Array.from(await p.offsets.toArray())).toEqual([0, 0, 0]);
      expect(Array.from(await p.perm.toArray())).toEqual([0, 1, 2]);
      expect(Array.from(await p.rowGroup.toArray())).toEqual([-1, -1, -1]);
    });

    test('a modality id outside [-1, M) rejects with ERR_RANGE when read', async () => {
      const L = { experts: [2, 2], groupOfModality: [0, 1] };
      for (const bad of [2, -2, 1000]) {
        const p = partitionOf([0, bad, 1], L);
        await rejectsCode(p.perm, 'ERR_RANGE', /moe_partition/);
      }
      // later work is unaffected
      const ok = partitionOf([1, 0], L);
      expect(Array.from(await ok.perm.toArray())).toEqual([1, 0]);
    });

    test('argument errors: dtype, rank, bad layouts', () => {
      const L = { experts: [2, 2], groupOfModality: [0, 1] };
      throwsCode(() => moePartition(mk([0, 1], [2]), L), 'ERR_DTYPE');
      throwsCode(() => moePartition(ints([0, 1], [1, 2]), L), 'ERR_SHAPE');
      const m = ints([0, 1]);
      throwsCode(() => moePartition(m, { experts: [], groupOfModality: [0] }), 'ERR_ARG');
      throwsCode(() => moePartition(m, { experts: [2, 0], groupOfModality: [0, 1] }), 'ERR_ARG');
      throwsCode(() => moePartition(m, { experts: [2, -1], groupOfModality: [0, 1] }), 'ERR_ARG');
      throwsCode(() => moePartition(m, { experts: [2.5], groupOfModality: [0, 0] }), 'ERR_ARG');
      throwsCode(() => moePartition(m, { experts: [2, 2], groupOfModality: [0, 2] }), 'ERR_ARG');
      throwsCode(() => moePartition(m, { experts: [2, 2], groupOfModality: [-2, 1] }), 'ERR_ARG');
      throwsCode(() => moePartition(m, { experts: [2, 2], groupOfModality: [] }), 'ERR_ARG');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('routerScores', () => {
    /** Tolerance of float32 scores: rounding of z and a few ulps in exp / the softmax sum. */
    const scoreTolerance = (ref: { scores: Float64Array; z: Float64Array }, L: RefLayout, fn: 'sigmoid' | 'softmax', T: number): Float64Array => {
      const { E, begin } = layoutInfo(L);
      const tol = new Float64Array(T * E);
      for (let t = 0; t < T; t++)
        for (let g = 0; g < L.experts.length; g++) {
          let zmax = 0;
          for (let j = begin[g] as number; j < (begin[g + 1] as number); j++) zmax = Math.max(zmax, Math.abs(ref.z[t * E + j] as number));
          for (let j = begin[g] as number; j < (begin[g + 1] as number); j++) {
            const s = ref.scores[t * E + j] as number, z = Math.abs(ref.z[t * E + j] as number);
            tol[t * E + j] = fn === 'sigmoid'
              ? s * (1 - s) * (z + 8) * 2.4e-7 + 4 * f32Ulp(s)
              : s * (2 * zmax + (L.experts[g] as number) + 8) * 2.4e-7 + 4 * f32Ulp(s);
          }
        }
      return tol;
    };

    describe.each(['sigmoid', 'softmax'] as const)('%s', (fn) => {
      test.each(LAYOUTS)('%s: against the reference, with and without Gumbel noise', async (_name, L) => {
        const { E, M } = { ...layoutInfo(L) };
        for (const T of ROWS) {
          const rng = mulberry32(T * 7 + E);
          const modality = randomModality(rng, T, M, 'mixed');
          const logits = randomF32(rng, T * E, -4, 4);
          const p = partitionOf(modality, L);
          const rowGroup = partitionRef(modality, L).rowGroup;
          const lt = mk(logits, [T, E]);
          // no noise
          const s = keep(routerScores(lt, { rowGroup: p.rowGroup, layout: L, fn }));
          expect(s.shape).toEqual([T, E]);
          expect(s.dtype).toBe('float32');
          const ref = routerScoresRef(logits, rowGroup, L, fn);
          const got = Array.from(await s.toArray());
          assertClose(got, ref.scores, { atolEach: scoreTolerance(ref, L, fn, T), label: `T=${T} ${fn}` });
          // exactly 0 outside the row's group and exactly 1 for single-expert groups
          exactWhere(got, ref.scores, (i) => ref.scores[i] === 0 || ref.scores[i] === 1, `T=${T} ${fn} exact 0 / 1`);
          // Gumbel noise from a generator that is not at offset 0
          const g = new Generator(1234 + T);
          g.take(5);
          const off0 = g.offset;
          const sn = keep(routerScores(lt, { rowGroup: p.rowGroup, layout: L, fn, gumbel: g }));
          expect(g.offset).toBe(off0 + BigInt(Math.ceil((2 * T * E) / 4)));
          const noise = gumbelNoiseRef(T, E, g.seed, off0);
          const refn = routerScoresRef(logits, rowGroup, L, fn, noise);
          const gotn = Array.from(await sn.toArray());
          assertClose(gotn, refn.scores, { atolEach: scoreTolerance(refn, L, fn, T), label: `T=${T} ${fn} gumbel` });
          exactWhere(gotn, refn.scores, (i) => refn.scores[i] === 0 || refn.scores[i] === 1, `T=${T} ${fn} gumbel exact 0 / 1`);
        }
      });
    });

    test('Gumbel noise: the same generator state gives the same bits; the next call differs', async () => {
      const L = { experts: [4, 4], groupOfModality: [0, 1] };
      const T = 37, E = 8;
      const modality = randomModality(mulberry32(3), T, 2, 'mixed');
      const p = partitionOf(modality, L);
      const lt = mk(randomF32(mulberry32(4), T * E, -2, 2), [T, E]);
      const a = await read(routerScores(lt, { rowGroup: p.rowGroup, layout: L, gumbel: new Generator(99) }));
      const g = new Generator(99);
      const b = await read(routerScores(lt, { rowGroup: p.rowGroup, layout: L, gumbel: g }));
      const c = await read(routerScores(lt, { rowGroup: p.rowGroup, layout: L, gumbel: g }));
      const plain = await read(routerScores(lt, { rowGroup: p.rowGroup, layout: L }));
      expect(sameBits(Float32Array.from(a), Float32Array.from(b))).toBe(true);
      const routed = modality.map((m, t) => (m >= 0 ? t : -1)).filter((t) => t >= 0);
      const differs = (u: number[], v: number[]): boolean => routed.some((t) => u.slice(t * E, t * E + E).some((x, j) => x !== v[t * E + j]));
      expect(differs(b, c)).toBe(true);
      expect(differs(a, plain)).toBe(true);
    });

    test('extreme logits stay finite: sigmoid saturates, softmax is max-shifted', async () => {
      const L = { experts: [3], groupOfModality: [0] };
      const logits = [1000, -1000, 0, 88, 89, -104, -1e30, 1e30, 3];
      const p = partitionOf([0, 0, 0], L);
      const rg = partitionRef([0, 0, 0], L).rowGroup;
      for (const fn of ['sigmoid', 'softmax'] as const) {
        const got = await read(routerScores(mk(logits, [3, 3]), { rowGroup: p.rowGroup, layout: L, fn }));
        const ref = routerScoresRef(logits, rg, L, fn).scores;
        expect(got.every((v) => Number.isFinite(v) && v >= 0 && v <= 1)).toBe(true);
        assertClose(got, ref, { rtol: 1e-5, atol: 1e-30, label: fn });
      }
    });

    test('argument errors', () => {
      const L = { experts: [2, 2], groupOfModality: [0, 1] };
      const p = partitionOf([0, 1, 0], L);
      throwsCode(() => routerScores(mk(new Array(12).fill(0), [3, 4], 'bfloat16'), { rowGroup: p.rowGroup, layout: L }), 'ERR_DTYPE');
      throwsCode(() => routerScores(ints(new Array(12).fill(0), [3, 4]), { rowGroup: p.rowGroup, layout: L }), 'ERR_DTYPE');
      throwsCode(() => routerScores(mk(new Array(15).fill(0), [3, 5]), { rowGroup: p.rowGroup, layout: L }), 'ERR_SHAPE');
      throwsCode(() => routerScores(mk(new Array(12).fill(0), [12]), { rowGroup: p.rowGroup, layout: L }), 'ERR_SHAPE');
      throwsCode(() => routerScores(mk(new Array(16).fill(0), [4, 4]), { rowGroup: p.rowGroup, layout: L }), 'ERR_SHAPE');
      throwsCode(() => routerScores(mk(new Array(12).fill(0), [3, 4]), { rowGroup: mk([0, 1, 0], [3]), layout: L }), 'ERR_DTYPE');
      throwsCode(() => routerScores(mk(new Array(12).fill(0), [3, 4]), { rowGroup: p.rowGroup, layout: L, fn: 'relu' as never }), 'ERR_ARG');
      throwsCode(() => routerScores(mk(new Array(12).fill(0), [3, 4]), { rowGroup: p.rowGroup, layout: { experts: [2, 0], groupOfModality: [0, 1] } }), 'ERR_ARG');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('routerScoresBackward', () => {
    test.each(LAYOUTS)('%s: sigmoid and softmax against the reference', async (_name, L) => {
      const { E, M } = layoutInfo(L);
      for (const fn of ['sigmoid', 'softmax'] as const)
        for (const T of [1, 7, 37]) {
          const rng = mulberry32(T + E * 13);
          const modality = randomModality(rng, T, M, 'mixed');
          const rowGroup = partitionRef(modality, L).rowGroup;
          // realistic scores (from logits), but arbitrary values elsewhere must be ignored
          const scores = routerScoresRef(randomF32(rng, T * E, -3, 3), rowGroup, L, fn).scores.map(f32);
          const ds = randomF32(rng, T * E, -2, 2);
          const p = partitionOf(modality, L);
          const dl = keep(routerScoresBackward(mk(scores, [T, E]), mk(ds, [T, E]), { rowGroup: p.rowGroup, layout: L, fn }));
          expect(dl.shape).toEqual([T, E]);
          expect(dl.dtype).toBe('float32');
          const ref = routerScoresBackwardRef(scores, ds, rowGroup, L, fn);
          const maxEg = Math.max(...L.experts);
          const got = Array.from(await dl.toArray());
          assertClose(got, ref.dlogits, { atolEach: Array.from(ref.bound, (b) => b * (maxEg + 4) * 2 ** -23), atol: 1e-30, label: `${fn} T=${T}` });
          // exact zeros outside routed entries (padding, other groups, single-expert groups)
          const { groupOfExpert } = layoutInfo(L);
          const routed = (i: number): boolean => {
            const g = rowGroup[Math.floor(i / E)] as number;
            return g >= 0 && groupOfExpert[i % E] === g && (L.experts[g] as number) > 1;
          };
          exactWhere(got, new Float64Array(T * E), (i) => !routed(i), `${fn} T=${T} zeros`);
        }
    });

    test('argument errors', () => {
      const L = { experts: [2, 2], groupOfModality: [0, 1] };
      const p = partitionOf([0, 1, 0], L);
      const s = mk(new Array(12).fill(0.5), [3, 4]);
      throwsCode(() => routerScoresBackward(s, mk(new Array(8).fill(0), [2, 4]), { rowGroup: p.rowGroup, layout: L }), 'ERR_SHAPE');
      throwsCode(() => routerScoresBackward(s, mk(new Array(12).fill(0), [3, 4], 'bfloat16'), { rowGroup: p.rowGroup, layout: L }), 'ERR_DTYPE');
      throwsCode(() => routerScoresBackward(s, mk(new Array(12).fill(0), [3, 4]), { rowGroup: ints([0, 1]), layout: L }), 'ERR_SHAPE');
      throwsCode(() => routerScoresBackward(s, mk(new Array(12).fill(0), [3, 4]), { rowGroup: p.rowGroup, layout: L, fn: 'tanh' as never }), 'ERR_ARG');
      expect(() => routerScoresBackward(s, mk(new Array(12).fill(0), [3, 4]), { rowGroup: p.rowGroup } as never)).toThrow(/routerScoresBackward: options.layout is required/);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('route', () => {
    const OPTIONS: [string, RefRoutingOptions][] = [
      ['expert choice c=1', {}],
      ['expert choice c=0.5', { capacityFactor: 0.5 }],
      ['expert choice c=1.37', { capacityFactor: 1.37 }],
      ['expert choice c=2', { capacityFactor: 2 }],
      ['token choice k=1', { mode: 'token-choice' }],
      ['token choice k=2', { mode: 'token-choice', topK: 2 }],
      ['token choice k=3 c=0.5', { mode: 'token-choice', topK: 3, capacityFactor: 0.5 }],
      ['token choice k=2 c=1.37', { mode: 'token-choice', topK: 2, capacityFactor: 1.37 }],
    ];

    test('moeSlotBound equals moe_slot_bound', () => {
      for (const [, L] of LAYOUTS)
        for (const [, o] of OPTIONS)
          for (const T of [0, 1, 7, 37, 301, 4096]) expect(moeSlotBound(T, L, o as RoutingOptions)).toBe(slotBoundRef(T, L, o));
      throwsCode(() => moeSlotBound(5, LAYOUTS[0]![1], { capacityFactor: 0 }), 'ERR_ARG');
      throwsCode(() => moeSlotBound(5, LAYOUTS[0]![1], { mode: 'token-choice', topK: 0 }), 'ERR_ARG');
    });

    describe.each(OPTIONS)('%s', (_oname, o) => {
      test.each(LAYOUTS)('%s: exact against the reference (T = 1, 7, 37, 301; distinct and tied scores)', async (_name, L) => {
        const { E, M, W } = layoutInfo(L);
        for (const T of ROWS)
          for (const pattern of PATTERNS)
            for (const kind of ['distinct', 'ties'] as ScoreKind[]) {
              if (T === 1 && pattern !== 'mixed') continue;
              const rng = mulberry32(T * 101 + E * 7 + (kind === 'ties' ? 1 : 0));
              const modality = randomModality(rng, T, M, pattern);
              // every column holds a value: route must only read the columns of the row's group
              const scores = randomScores(rng, T, E, kind);
              const part = partitionRef(modality, L);
              const p = partitionOf(modality, L);
              const r = keepAll(route(mk(scores, [T, E]), p, { layout: L, ...o as RoutingOptions }));
              const ref = routeRef(scores, part, L, o);
              const label = `T=${T} ${pattern} ${kind}`;
              expect(r.expertOffsets.shape).toEqual([E + 1]);
              expect(r.slotRow.shape).toEqual([ref.R]);
              expect(r.slotGate.shape).toEqual([ref.R]);
              expect(r.rowSlots.shape).toEqual([T, W]);
              expect([r.expertOffsets.dtype, r.slotRow.dtype, r.slotGate.dtype, r.rowSlots.dtype]).toEqual(['int32', 'int32', 'float32', 'int32']);
              assertExact(Array.from(await r.expertOffsets.toArray()), ref.expertOffsets, `${label} expertOffsets`);
              assertExact(Array.from(await r.slotRow.toArray()), ref.slotRow, `${label} slotRow`);
              assertExact(Array.from(await r.slotGate.toArray()), ref.slotGate, `${label} slotGate`);
              assertExact(Array.from(await r.rowSlots.toArray()), ref.rowSlots, `${label} rowSlots`);
            }
      });
    });

    test('expert choice takes exactly k_g = min(n_g, ceil(c n_g / E_g)) rows per expert', async () => {
      const L = { experts: [3, 1, 2], groupOfModality: [0, 1, 2] };
      const modality = [...Array(11).fill(0), ...Array(5).fill(1), ...Array(7).fill(2)]; // n = 11, 5, 7
      const T = modality.length;
      const scores = randomScores(mulberry32(5), T, 6, 'distinct');
      const p = partitionOf(modality, L);
      for (const [c, k0, k2] of [[1, 4, 4], [0.5, 2, 2], [1.37, 6, 5], [2, 8, 7], [0.01, 1, 1]] as const) {
        const r = keepAll(route(mk(scores, [T, 6]), p, { layout: L, capacityFactor: c }));
        const off = Array.from(await r.expertOffsets.toArray());
        const sizes = off.slice(1).map((v, e) => v - (off[e] as number));
        expect(sizes).toEqual([k0, k0, k0, 5, k2, k2]);
      }
    });

    test('exact ties: the smaller row wins (expert choice) and the smaller expert (token choice)', async () => {
      const L = { experts: [3], groupOfModality: [0] };
      const T = 7;
      const scores = new Array(T * 3).fill(0.5);
      const p = partitionOf(new Array(T).fill(0), L);
      const r = keepAll(route(mk(scores, [T, 3]), p, { layout: L }));
      expect(Array.from(await r.slotRow.toArray()).slice(0, 9)).toEqual([0, 1, 2, 0, 1, 2, 0, 1, 2]); // k = ceil(7/3) = 3
      const tc = keepAll(route(mk(scores, [T, 3]), p, { layout: L, mode: 'token-choice', topK: 1, capacityFactor: 3 }));
      expect(Array.from(await tc.expertOffsets.toArray())).toEqual([0, 7, 7, 7]);
      const tc2 = keepAll(route(mk(scores, [T, 3]), p, { layout: L, mode: 'token-choice', topK: 1 }));
      // everyone picks expert 0, which keeps ceil(7/3) = 3 rows: the smallest
      expect(Array.from(await tc2.expertOffsets.toArray())).toEqual([0, 3, 3, 3]);
      expect(Array.from(await tc2.slotRow.toArray()).slice(0, 4)).toEqual([0, 1, 2, -1]);
    });

    test('special scores: NaN ranks last, -0 ties +0, infinities order', async () => {
      const L = { experts: [2], groupOfModality: [0] };
      const s = [NaN, 0, -Infinity, 0, 0, 0, -0, 0, Infinity, 0, 0.5, 0];
      const modality = new Array(6).fill(0);
      const p = partitionOf(modality, L);
      for (const c of [0.3, 0.7, 1, 1.7]) {
        const r = keepAll(route(mk(s, [6, 2]), p, { layout: L, capacityFactor: c }));
        const ref = routeRef(s, partitionRef(modality, L), L, { capacityFactor: c });
        assertExact(Array.from(await r.slotRow.toArray()), ref.slotRow, `c=${c} slotRow`);
        assertExact(Array.from(await r.slotGate.toArray()), ref.slotGate, `c=${c} slotGate`);
      }
    });

    test('argument errors: capacity <= 0, topK < 1, shapes, dtypes, layouts', () => {
      const L = { experts: [2, 2], groupOfModality: [0, 1] };
      const p = partitionOf([0, 1, 0], L);
      const s = mk(new Array(12).fill(0.5), [3, 4]);
      for (const c of [0, -1, NaN, Infinity]) throwsCode(() => route(s, p, { layout: L, capacityFactor: c }), 'ERR_ARG');
      for (const k of [0, -2, 1.5]) throwsCode(() => route(s, p, { layout: L, mode: 'token-choice', topK: k }), 'ERR_ARG');
      throwsCode(() => route(s, p, { layout: L, mode: 'top-k' as never }), 'ERR_ARG');
      throwsCode(() => route(mk(new Array(15).fill(0.5), [3, 5]), p, { layout: L }), 'ERR_SHAPE');
      throwsCode(() => route(mk(new Array(16).fill(0.5), [4, 4]), p, { layout: L }), 'ERR_SHAPE');
      throwsCode(() => route(mk(new Array(12).fill(0.5), [3, 4], 'bfloat16'), p, { layout: L }), 'ERR_DTYPE');
      throwsCode(() => route(s, p, { layout: { experts: [2, 2], groupOfModality: [0, 5] } }), 'ERR_ARG');
      throwsCode(() => route(s, p, { layout: { experts: [0, 4], groupOfModality: [0, 1] } }), 'ERR_ARG');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('route: threshold mode (SPEC §4 causal)', () => {
    const HALF_UP = f32(0.5 + 2 ** -24); // the float32 just above 0.5
    const HALF_DOWN = f32(0.5 - 2 ** -25); // the float32 just below 0.5
    /** select [T, E]: uniform float32 in (0, 1) mixed with 0.5 exactly, its neighbours, NaN, 0, 1. */
    const randomSelect = (rng: Rng, T: number, E: number): Float64Array => {
      const special = [0.5, 0.5, NaN, HALF_UP, HALF_DOWN, 0, 1];
      const out = new Float64Array(T * E);
      for (let i = 0; i < out.length; i++) {
        const u = rng();
        out[i] = u < 0.3 ? (special[floor(rng() * special.length)] as number) : f32(rng());
      }
      return out;
    };
    /** Scores with ~3% NaN and some exact zeros: the gate is copied whatever it is. */
    const thresholdScores = (rng: Rng, T: number, E: number): Float64Array =>
      randomScores(rng, T, E, 'distinct').map((v) => { const u = rng(); return u < 0.03 ? NaN : u < 0.05 ? 0 : v; });
    const routeThreshold = (scores: ArrayLike<number>, select: ArrayLike<number>, p: Partition, L: MoeLayout, T: number, E: number) =>
      keepAll(route(mk(scores, [T, E]), p, { layout: L, mode: 'threshold', select: mk(select, [T, E]) }));

    test('moeSlotBound is T W and the slot arrays have that length', async () => {
      for (const [, L] of LAYOUTS)
        for (const T of [0, 1, 7, 37, 301, 4096]) {
          expect(moeSlotBound(T, L, { mode: 'threshold' })).toBe(slotBoundRef(T, L, { mode: 'threshold' }));
          expect(moeSlotBound(T, L, { mode: 'threshold' })).toBe(T * Math.max(...L.experts));
        }
      const L = { experts: [3, 1, 2], groupOfModality: [0, 1, 2] };
      const p = partitionOf([0, 1, 2, -1, 0], L);
      const r = routeThreshold(new Array(30).fill(0.7), new Array(30).fill(0.7), p, L, 5, 6);
      expect(r.slotRow.shape).toEqual([15]);
      expect(r.slotGate.shape).toEqual([15]);
      expect(r.rowSlots.shape).toEqual([5, 3]);
      // every routed row is taken by every expert of its group: 2 rows x 3 + 1 + 1 row x 2 = 9 of 15 slots
      expect(Array.from(await r.expertOffsets.toArray())).toEqual([0, 2, 4, 6, 7, 8, 9]);
    });

    test.each(LAYOUTS)('%s: exact against the reference (T = 1, 7, 37, 301; every row pattern; 0.5, its neighbours, NaN)', async (_name, L) => {
      const { E, M, W } = layoutInfo(L);
      for (const T of ROWS)
        for (const pattern of PATTERNS) {
          if (T === 1 && pattern !== 'mixed') continue;
          const rng = mulberry32(T * 211 + E * 5 + M);
          const modality = randomModality(rng, T, M, pattern);
          // every column holds a value, padding rows and other groups' columns included: they must be ignored
          const scores = thresholdScores(rng, T, E);
          const select = randomSelect(rng, T, E);
          const p = partitionOf(modality, L);
          const r = routeThreshold(scores, select, p, L, T, E);
          const ref = routeRef(scores, partitionRef(modality, L), L, { mode: 'threshold', select });
          const label = `T=${T} ${pattern}`;
          expect(r.slotRow.shape).toEqual([ref.R]);
          expect(r.rowSlots.shape).toEqual([T, W]);
          expect([r.expertOffsets.dtype, r.slotRow.dtype, r.slotGate.dtype, r.rowSlots.dtype]).toEqual(['int32', 'int32', 'float32', 'int32']);
          assertExact(Array.from(await r.expertOffsets.toArray()), ref.expertOffsets, `${label} expertOffsets`);
          assertExact(Array.from(await r.slotRow.toArray()), ref.slotRow, `${label} slotRow`);
          assertExact(Array.from(await r.slotGate.toArray()), ref.slotGate, `${label} slotGate`);
          assertExact(Array.from(await r.rowSlots.toArray()), ref.rowSlots, `${label} rowSlots`);
        }
    });

    test('large groups (T = 2500, more than one 1024-row chunk) and all-or-nothing selects', async () => {
      const L = { experts: [4, 1, 3], groupOfModality: [0, 1, 2, -1] };
      const T = 2500, E = 8;
      for (const fill of ['random', 'all', 'none'] as const) {
        const rng = mulberry32(fill.length * 17);
        const modality = randomModality(rng, T, 4, 'mixed');
        const scores = randomScores(rng, T, E, 'ties');
        const select = fill === 'random' ? randomSelect(rng, T, E) : new Float64Array(T * E).fill(fill === 'all' ? 0.75 : 0.5);
        const r = routeThreshold(scores, select, partitionOf(modality, L), L, T, E);
        const ref = routeRef(scores, partitionRef(modality, L), L, { mode: 'threshold', select });
        assertExact(Array.from(await r.expertOffsets.toArray()), ref.expertOffsets, `${fill} expertOffsets`);
        assertExact(Array.from(await r.slotRow.toArray()), ref.slotRow, `${fill} slotRow`);
        assertExact(Array.from(await r.slotGate.toArray()), ref.slotGate, `${fill} slotGate`);
        assertExact(Array.from(await r.rowSlots.toArray()), ref.rowSlots, `${fill} rowSlots`);
        if (fill === 'none') {
          // only the single-expert group takes rows
          const off = ref.expertOffsets;
          expect(off.slice(0, 5).every((v) => v === 0)).toBe(true);
          expect(off[5]).toBe(modality.filter((m) => m === 1).length);
        }
      }
    });

    test('end to end: y_t = sum over experts e of t\'s group with a > 0.5 of s_te (x_t W_e); stats; determinism', async () => {
      const L = { experts: [3, 1, 2], groupOfModality: [0, 1, -1, 2] };
      const T = 53, E = 6, d = 12, W = 3;
      const rng = mulberry32(777);
      const modality = randomModality(rng, T, 4, 'mixed');
      const scores = randomScores(rng, T, E, 'distinct');
      const select = randomSelect(rng, T, E);
      // bf16-representable inputs: the products are exact on both devices (CUDA's GEMM reads bf16)
      const x = randomBf16(rng, T * d);
      const w = randomBf16(rng, E * d * d);
      const p = partitionOf(modality, L);
      const run = async (): Promise<HostArray[]> => {
        const r = routeThreshold(scores, select, p, L, T, E);
        const xd = keep(gatherRows(mk(x, [T, d]), r.slotRow));
        const out = keep(groupedMatmul(xd, mk(w, [E, d, d]), { offsets: r.expertOffsets }));
        const y = keep(combineRows(out, r.rowSlots, r.slotGate));
        const st = keepAll(routingStats(p, r, L));
        return Promise.all([y, st.expertStats, st.groupStats, r.slotRow, r.slotGate].map((t) => t.toArray()));
      };
      const first = await run();
      const second = await run();
      first.forEach((v, i) => expect(sameBits(v, second[i] as HostArray)).toBe(true));

      const { begin } = layoutInfo(L);
      const rowGroup = partitionRef(modality, L).rowGroup;
      const want = new Float64Array(T * d), bound = new Float64Array(T * d);
      for (let t = 0; t < T; t++) {
        const g = rowGroup[t] as number;
        if (g < 0) continue;
        for (let e = begin[g] as number; e < (begin[g + 1] as number); e++) {
          const single = L.experts[g] === 1;
          if (!single && !((select[t * E + e] as number) > 0.5)) continue;
          const gate = single ? 1 : (scores[t * E + e] as number);
          for (let o = 0; o < d; o++) {
            let acc = 0, abs = 0;
            for (let i = 0; i < d; i++) {
              const v = (x[t * d + i] as number) * (w[(e * d + i) * d + o] as number);
              acc += v;
              abs += Math.abs(v);
            }
            want[t * d + o]! += gate * acc;
            bound[t * d + o]! += Math.abs(gate) * abs;
          }
        }
      }
      assertClose(Array.from(first[0] as HostArray), want, { atolEach: Array.from(bound, (b) => b * (d + W + 4) * 2 ** -24), atol: 1e-30, label: 'y' });

      const ref = routeRef(scores, partitionRef(modality, L), L, { mode: 'threshold', select });
      const stats = routingStatsRef(partitionRef(modality, L), ref.expertOffsets, ref.slotGate, ref.rowSlots, L);
      const es = Array.from(first[1] as HostArray), gs = Array.from(first[2] as HostArray);
      for (let e = 0; e < E; e++) {
        expect(es[2 * e]).toBe(stats.expertStats[2 * e]);
        assertClose([es[2 * e + 1] as number], [stats.expertStats[2 * e + 1] as number], { rtol: (T + 4) * 2 ** -23, label: `mean gate e=${e}` });
      }
      assertClose(gs, stats.groupStats, { f32Ulps: 2, label: 'group stats' });
    });

    test('argument errors: select missing, unexpected, wrong shape, dtype or kind', () => {
      const L = { experts: [2, 2], groupOfModality: [0, 1] };
      const p = partitionOf([0, 1, 0], L);
      const s = mk(new Array(12).fill(0.5), [3, 4]);
      const a = mk(new Array(12).fill(0.7), [3, 4]);
      throwsCode(() => route(s, p, { layout: L, mode: 'threshold' }), 'ERR_ARG');
      throwsCode(() => route(s, p, { layout: L, select: a }), 'ERR_ARG');
      throwsCode(() => route(s, p, { layout: L, mode: 'token-choice', select: a }), 'ERR_ARG');
      throwsCode(() => route(s, p, { layout: L, mode: 'threshold', select: [0.7] as never }), 'ERR_ARG');
      throwsCode(() => route(s, p, { layout: L, mode: 'threshold', select: mk(new Array(15).fill(0.7), [3, 5]) }), 'ERR_SHAPE');
      throwsCode(() => route(s, p, { layout: L, mode: 'threshold', select: mk(new Array(16).fill(0.7), [4, 4]) }), 'ERR_SHAPE');
      throwsCode(() => route(s, p, { layout: L, mode: 'threshold', select: mk(new Array(12).fill(0.7), [12]) }), 'ERR_SHAPE');
      throwsCode(() => route(s, p, { layout: L, mode: 'threshold', select: mk(new Array(12).fill(0.7), [3, 4], 'bfloat16') }), 'ERR_DTYPE');
      throwsCode(() => route(s, p, { layout: L, mode: 'threshold', select: ints(new Array(12).fill(1), [3, 4]) }), 'ERR_DTYPE');
      throwsCode(() => moeSlotBound(3, L, { mode: 'causal' as never }), 'ERR_ARG');
      // the native op checks on its own (error messages name moe_route and select)
      const h = (t: Tensor): unknown => t.handle;
      const nat = native() as unknown as { moeRoute: (...args: unknown[]) => unknown };
      const call = (mode: number, select: unknown): unknown =>
        nat.moeRoute(h(s), h(p.rowGroup), h(p.counts), h(p.offsets), h(p.perm), L.experts, L.groupOfModality, mode, 1, 1, select);
      expect(() => call(2, null)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/moe_route.*select/) }));
      expect(() => call(0, h(a))).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/moe_route.*select/) }));
      expect(() => call(3, h(a))).toThrow(expect.objectContaining({ code: 'ERR_ARG' }));
      expect(() => call(2, h(mk(new Array(12).fill(0.7), [4, 3])))).toThrow(expect.objectContaining({ code: 'ERR_SHAPE', message: expect.stringMatching(/moe_route.*select/) }));
    });

    (cuda ? test : test.skip)('select on another device is rejected with ERR_DEVICE', () => {
      const L = { experts: [2], groupOfModality: [0] };
      const p = partitionOf([0, 0], L);
      const host = keep(tensor(Float32Array.from([0.7, 0.7, 0.7, 0.7]), { shape: [2, 2], device: 'cpu' }));
      throwsCode(() => route(mk([0.5, 0.5, 0.5, 0.5], [2, 2]), p, { layout: L, mode: 'threshold', select: host }), 'ERR_DEVICE');
    });
  });

  // -------------------------------------------------------------------------------------------
  /** A routing of T rows under L from the reference, as tensors plus reference arrays. */
  const sampleRouting = (L: RefLayout, T: number, seed: number, o: RefRoutingOptions = {}) => {
    const { E, M } = layoutInfo(L);
    const rng = mulberry32(seed);
    const modality = randomModality(rng, T, M, 'mixed');
    const scores = randomScores(rng, T, E, 'distinct');
    const ref = routeRef(scores, partitionRef(modality, L), L, o);
    return { rng, modality, scores, ref };
  };

  describe.each(['float32', 'bfloat16'] as const)('gatherRows / combineRows %s', (dt) => {
    const rand = (rng: Rng, n: number): Float64Array => (dt === 'bfloat16' ? randomBf16(rng, n, -3, 3) : randomF32(rng, n, -3, 3));

    test.each(LAYOUTS)('%s: gather is exact, with and without a scale', async (_name, L) => {
      for (const [T, d] of SIZES) {
          const { rng, ref } = sampleRouting(L, T, T + d, { capacityFactor: 1.37 });
          const x = rand(rng, T * d);
          const xt = mk(x, [T, d], dt);
          const plain = keep(gatherRows(xt, ints(ref.slotRow)));
          expect(plain.shape).toEqual([ref.R, d]);
          expect(plain.dtype).toBe(dt);
          assertExact(Array.from(await plain.toArray()), gatherRowsRef(x, d, ref.slotRow, undefined, dt), `T=${T} d=${d} gather`);
          const scaled = keep(gatherRows(xt, ints(ref.slotRow), mk(ref.slotGate, [ref.R])));
          expect(scaled.dtype).toBe(dt);
          assertExact(Array.from(await scaled.toArray()), gatherRowsRef(x, d, ref.slotRow, ref.slotGate, dt), `T=${T} d=${d} gather scaled`);
        }
    });

    test.each(LAYOUTS)('%s: combine is exact against the float32 increasing-j emulation', async (_name, L) => {
      for (const [T, d] of SIZES)
          for (const mode of ['expert-choice', 'token-choice'] as const) {
            const { rng, ref } = sampleRouting(L, T, T * 3 + d, { mode, capacityFactor: 2, topK: 3 });
            const src = rand(rng, ref.R * d);
            const srcT = mk(src, [ref.R, d], dt);
            const rs = ints(ref.rowSlots, [T, ref.W]);
            const label = `T=${T} d=${d} ${mode}`;
            const unweighted = keep(combineRows(srcT, rs));
            expect(unweighted.shape).toEqual([T, d]);
            expect(unweighted.dtype).toBe(dt);
            assertExact(Array.from(await unweighted.toArray()), combineRowsRef(src, d, ref.rowSlots, ref.W, undefined, 'f32', dt).y, `${label} unweighted`);
            const weighted = Array.from(await read(combineRows(srcT, rs, mk(ref.slotGate, [ref.R]))));
            const emu = combineRowsRef(src, d, ref.rowSlots, ref.W, ref.slotGate, 'f32', dt);
            assertExact(weighted, emu.y, `${label} weighted`);
            // and the emulation is close to the exact sum (sanity of the emulation itself)
            const exact = combineRowsRef(src, d, ref.rowSlots, ref.W, ref.slotGate, 'f64').y;
            assertClose(weighted, exact, { atolEach: Array.from(emu.abs, (a) => a * 4 * 2 ** -24), bf16Ulps: dt === 'bfloat16' ? 1 : 0, atol: 1e-30, label: `${label} vs f64` });
          }
    });

    test('combine adds in increasing j, not in slot order (float32 non-associativity)', async () => {
      const src = mk([1e8, 1, -1e8, 3], [4, 1], dt);
      // row 0: j = 0, 1, 2 -> slots 0, 2, 1: (1e8 + -1e8) + 1 = 1; row 1: slots 0, 1, 2: 1e8 + 1 = 1e8 (1 lost), - 1e8 = 0
      const rs = ints([0, 2, 1, 0, 1, 2, -1, 3, -1], [3, 3]);
      const got = await read(combineRows(src, rs));
      const src64 = [1e8, 1, -1e8, 3].map((v) => (dt === 'bfloat16' ? bf16Round(v) : f32(v)));
      assertExact(got, combineRowsRef(src64, 1, [0, 2, 1, 0, 1, 2, -1, 3, -1], 3, undefined, 'f32', dt).y, 'order');
      if (dt === 'float32') expect(got).toEqual([1, 0, 3]);
    });

    test('out-of-range rows / slots reject with ERR_RANGE when read', async () => {
      const x = mk([1, 2, 3, 4, 5, 6], [3, 2], dt);
      await rejectsCode(gatherRows(x, ints([0, 3])), 'ERR_RANGE', /gather/);
      await rejectsCode(gatherRows(x, ints([-2, 0])), 'ERR_RANGE', /gather/);
      const src = mk([1, 2, 3, 4], [2, 2], dt);
      await rejectsCode(combineRows(src, ints([0, 2], [1, 2])), 'ERR_RANGE', /combine/);
      await rejectsCode(combineRows(src, ints([-3, 0], [1, 2])), 'ERR_RANGE', /combine/);
      // -1 is "no slot" / "no row": zeros
      expect(await read(gatherRows(x, ints([-1, 2])))).toEqual([0, 0, 5, 6]);
      expect(await read(combineRows(src, ints([-1, -1, 1, -1], [2, 2])))).toEqual([0, 0, 3, 4]);
    });

    test('argument errors', () => {
      const x = mk([1, 2, 3, 4, 5, 6], [3, 2], dt);
      throwsCode(() => gatherRows(x, ints([0, 1]), mk([1, 1, 1], [3])), 'ERR_SHAPE');
      throwsCode(() => gatherRows(x, ints([0, 1]), mk([1, 1], [2], 'bfloat16')), 'ERR_DTYPE');
      throwsCode(() => gatherRows(x, mk([0, 1], [2])), 'ERR_DTYPE');
      throwsCode(() => gatherRows(ints([1, 2, 3, 4], [2, 2]), ints([0, 1])), 'ERR_DTYPE');
      throwsCode(() => gatherRows(mk([1, 2, 3], [3], dt), ints([0, 1])), 'ERR_SHAPE');
      throwsCode(() => gatherRows(x, ints([0, 1], [1, 2])), 'ERR_SHAPE');
      const src = mk([1, 2, 3, 4], [2, 2], dt);
      throwsCode(() => combineRows(src, ints([0, 1], [2])), 'ERR_SHAPE');
      throwsCode(() => combineRows(src, ints([0, 1], [1, 2]), mk([1, 1, 1], [3])), 'ERR_SHAPE');
      throwsCode(() => combineRows(src, ints([0, 1], [1, 2]), mk([1, 1], [2], 'bfloat16')), 'ERR_DTYPE');
      throwsCode(() => combineRows(src, mk([0, 1], [1, 2])), 'ERR_DTYPE');
      throwsCode(() => combineRows(ints([1, 2, 3, 4], [2, 2]), ints([0, 1], [1, 2])), 'ERR_DTYPE');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe.each(['float32', 'bfloat16'] as const)('gateGrad %s', (dt) => {
    test.each(LAYOUTS)('%s: against the reference; zero outside routed slots', async (_name, L) => {
      const { E } = layoutInfo(L);
      for (const [T, d] of SIZES) {
          const { rng, ref } = sampleRouting(L, T, T * 5 + d, { capacityFactor: 1.37 });
          const rand = (n: number): Float64Array => (dt === 'bfloat16' ? randomBf16(rng, n) : randomF32(rng, n));
          const out = rand(ref.R * d), dy = rand(T * d);
          const got = keep(gateGrad(mk(out, [ref.R, d], dt), mk(dy, [T, d], dt), { slotRow: ints(ref.slotRow), expertOffsets: ints(ref.expertOffsets), layout: L }));
          expect(got.shape).toEqual([T, E]);
          expect(got.dtype).toBe('float32');
          const r = gateGradRef(out, dy, d, ref.slotRow, ref.expertOffsets, L);
          const values = Array.from(await got.toArray());
          assertClose(values, r.data, { atolEach: Array.from(r.absDot, (a) => a * (d + 2) * 2 ** -23), atol: 1e-30, label: `T=${T} d=${d}` });
          exactWhere(values, r.data, (i) => r.absDot[i] === 0, `T=${T} d=${d} zeros`);
        }
    });

    test('argument errors', () => {
      const L = { experts: [2], groupOfModality: [0] };
      const out = mk([1, 2, 3, 4, 5, 6], [3, 2], dt);
      const so = ints([0, 1, 2]);
      const eo = ints([0, 2, 3]);
      throwsCode(() => gateGrad(out, mk([1, 2, 3], [1, 3], dt), { slotRow: so, expertOffsets: eo, layout: L }), 'ERR_SHAPE');
      throwsCode(() => gateGrad(out, mk([1, 2], [1, 2], dt === 'float32' ? 'bfloat16' : 'float32'), { slotRow: so, expertOffsets: eo, layout: L }), 'ERR_DTYPE');
      throwsCode(() => gateGrad(out, mk([1, 2], [1, 2], dt), { slotRow: ints([0, 1]), expertOffsets: eo, layout: L }), 'ERR_SHAPE');
      throwsCode(() => gateGrad(out, mk([1, 2], [1, 2], dt), { slotRow: so, expertOffsets: ints([0, 3]), layout: L }), 'ERR_SHAPE');
      throwsCode(() => gateGrad(out, mk([1, 2], [1, 2], dt), { slotRow: mk([0, 1, 2], [3]), expertOffsets: eo, layout: L }), 'ERR_DTYPE');
      expect(() => gateGrad(out, mk([1, 2], [1, 2], dt), { slotRow: so, layout: L } as never)).toThrow(/gateGrad: options.expertOffsets is required/);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('groupedMatmul / groupedMatmulWgrad', () => {
    /** Random segment offsets over R rows: some empty segments, rows past offsets[E] when `tail`. */
    const randomOffsets = (rng: Rng, E: number, R: number, tail: boolean): number[] => {
      const used = tail ? Math.floor(R * 0.8) : R;
      const cuts = Array.from({ length: E - 1 }, () => Math.floor(rng() * (used + 1))).sort((a, b) => a - b);
      if (E >= 3) cuts[1] = cuts[0] as number; // an empty segment
      return [0, ...cuts, used];
    };
    const CASES: [number, number, number, number, boolean][] = [
      // E, R, K, N, transW
      [1, 7, 5, 3, false], [3, 37, 16, 24, false], [3, 37, 24, 16, true], [8, 301, 16, 24, false], [8, 64, 33, 7, true],
      [2, 1, 1, 1, false], [5, 70, 65, 67, false],
    ];
    const round = (v: Float64Array, yes: boolean): Float64Array => (yes ? v.map(bf16Round) : v);

    test.each(CASES)('E=%i R=%i K=%i N=%i transW=%p: float32, bf16 and mixed', async (E, R, K, N, transW) => {
      for (const [dx, dw] of [['float32', 'float32'], ['bfloat16', 'bfloat16'], ['bfloat16', 'float32'], ['float32', 'bfloat16']] as [DType, DType][])
        for (const tail of [false, true]) {
          const rng = mulberry32(E * 1000 + R + K + N);
          const x = dx === 'bfloat16' ? randomBf16(rng, R * K) : randomF32(rng, R * K);
          const w = dw === 'bfloat16' ? randomBf16(rng, E * K * N) : randomF32(rng, E * K * N);
          const offsets = randomOffsets(rng, E, R, tail);
          const y = keep(groupedMatmul(mk(x, [R, K], dx), mk(w, transW ? [E, N, K] : [E, K, N], dw), { offsets: ints(offsets), transW }));
          const outDt: DType = dx === 'bfloat16' && dw === 'bfloat16' ? 'bfloat16' : 'float32';
          expect(y.shape).toEqual([R, N]);
          expect(y.dtype).toBe(outDt);
          // float32 x float32 is float32-accurate on both backends; with one bf16 operand CUDA rounds the
          // float32 one to bf16 on load (tensor cores): its reference uses rounded inputs
          const mixed = cuda && dx !== dw;
          const ref = groupedMatmulRef(round(x, mixed), K, round(w, mixed), N, offsets, transW);
          const got = Array.from(await y.toArray());
          const each = Array.from(ref.absDot, (a) => a * (K + 2) * 2 ** -23);
          assertClose(got, ref.data, { atolEach: each, bf16Ulps: outDt === 'bfloat16' ? 1 : 0, atol: 1e-30, label: `${dx}x${dw} tail=${tail}` });
          exactWhere(got, new Float64Array(R * N), (i) => i >= (offsets[E] as number) * N, 'rows past offsets[E] are 0');
        }
    });

    test.each(CASES)('wgrad E=%i R=%i K=%i N=%i: float32 and bf16; empty segments give zeros', async (E, R, K, N) => {
      for (const dt of ['float32', 'bfloat16'] as DType[]) {
        const rng = mulberry32(E * 77 + R + K * N);
        const gen = (n: number): Float64Array => (dt === 'bfloat16' ? randomBf16(rng, n) : randomF32(rng, n));
        const x = gen(R * K), dy = gen(R * N);
        const offsets = randomOffsets(rng, E, R, true);
        const dw = keep(groupedMatmulWgrad(mk(x, [R, K], dt), mk(dy, [R, N], dt), { offsets: ints(offsets) }));
        expect(dw.shape).toEqual([E, K, N]);
        expect(dw.dtype).toBe('float32');
        const ref = groupedMatmulWgradRef(x, K, dy, N, offsets); // same dtypes: float32-accurate or exact bf16 products
        const got = Array.from(await dw.toArray());
        assertClose(got, ref.data, { atolEach: Array.from(ref.absDot, (a) => a * (ref.maxSeg + 2) * 2 ** -23), atol: 1e-30, label: dt });
        const empty = (i: number): boolean => offsets[Math.floor(i / (K * N))] === offsets[Math.floor(i / (K * N)) + 1];
        exactWhere(got, new Float64Array(E * K * N), empty, 'empty segments are 0');
      }
    });

    test.each(CASES.filter((c) => !c[4]))('fused SwiGLU E=%i R=%i K=%i N=%i: a = silu(x·w1) ⊙ (x·w3), h1 and h3 kept on request', async (E, R, K, N) => {
      for (const dt of ['float32', 'bfloat16'] as DType[])
        for (const keepPre of [false, true]) {
          const rng = mulberry32(E * 31 + R * 7 + K + N);
          const gen = (n: number): Float64Array => (dt === 'bfloat16' ? randomBf16(rng, n) : randomF32(rng, n));
          const x = gen(R * K), w1 = gen(E * K * N), w3 = gen(E * K * N);
          const offsets = randomOffsets(rng, E, R, true);
          const out = groupedMatmulSwiglu(mk(x, [R, K], dt), { w1: mk(w1, [E, K, N], dt), w3: mk(w3, [E, K, N], dt) }, { offsets: ints(offsets), keepPreactivations: keepPre });
          for (const t of [out.a, out.h1, out.h3]) if (t) keep(t);
          expect(out.a.shape).toEqual([R, N]);
          expect(out.a.dtype).toBe(dt);
          expect(out.h1 === null).toBe(!keepPre);
          expect(out.h3 === null).toBe(!keepPre);
          const r1 = groupedMatmulRef(x, K, w1, N, offsets), r3 = groupedMatmulRef(x, K, w3, N, offsets);
          // a from the float32 products (float64 reference here), rounded once to the output dtype
          const silu = (v: number): number => v / (1 + Math.exp(-v));
          const dsilu = (v: number): number => { const sg = 1 / (1 + Math.exp(-v)); return sg * (1 + v * (1 - sg)); };
          const aRef = r1.data.map((h1, i) => silu(h1) * (r3.data[i] as number));
          // error of the products (K-term sums in float32) carried through silu(h1)·h3, plus the swiglu rounding
          const prod = 2 ** -23 * (K + 2);
          const each = Array.from(aRef, (_, i) => {
            const h1 = r1.data[i] as number, h3 = r3.data[i] as number;
            return (Math.abs(dsilu(h1) * h3) * (r1.absDot[i] as number) + Math.abs(silu(h1)) * (r3.absDot[i] as number)) * prod * 2;
          });
          const bf16 = dt === 'bfloat16' ? 1 : 0;
          assertClose(await read(out.a), aRef, { atolEach: each, f32Ulps: 8, bf16Ulps: bf16, atol: 1e-30, label: `${dt} a` });
          if (out.h1 && out.h3) {
            assertClose(await read(out.h1), r1.data, { atolEach: Array.from(r1.absDot, (v) => v * prod), bf16Ulps: bf16, atol: 1e-30, label: `${dt} h1` });
            assertClose(await read(out.h3), r3.data, { atolEach: Array.from(r3.absDot, (v) => v * prod), bf16Ulps: bf16, atol: 1e-30, label: `${dt} h3` });
          }
          exactWhere(await read(out.a), new Float64Array(R * N), (i) => i >= (offsets[E] as number) * N, 'rows past offsets[E] are 0');
        }
    });

    test('fused SwiGLU equals groupedMatmul twice and swiglu (float32: the same bits)', async () => {
      const rng = mulberry32(4242);
      const [E, R, K, N] = [4, 53, 24, 40];
      const x = mk(randomF32(rng, R * K), [R, K]), w1 = mk(randomF32(rng, E * K * N), [E, K, N]), w3 = mk(randomF32(rng, E * K * N), [E, K, N]);
      const off = ints(randomOffsets(rng, E, R, true));
      const fused = groupedMatmulSwiglu(x, { w1, w3 }, { offsets: off, keepPreactivations: true });
      const h1 = keep(groupedMatmul(x, w1, { offsets: off })), h3 = keep(groupedMatmul(x, w3, { offsets: off }));
      const a = keep(swiglu(h1, h3));
      for (const t of [fused.a, fused.h1!, fused.h3!]) keep(t);
      if (!cuda) {
        assertExact(await read(fused.a), await read(a), 'a');
        assertExact(await read(fused.h1!), await read(h1), 'h1');
        assertExact(await read(fused.h3!), await read(h3), 'h3');
      } else {
        assertClose(await read(fused.a), await read(a), { rtol: 1e-5, atol: 1e-6, label: 'a' });
      }
    });

    test('fused SwiGLU argument errors', () => {
      const x = mk(new Array(12).fill(1), [4, 3]);
      const w = mk(new Array(12).fill(1), [2, 3, 2]);
      const off = ints([0, 2, 4]);
      throwsCode(() => groupedMatmulSwiglu(x, { w1: w, w3: mk(new Array(16).fill(1), [2, 4, 2]) }, { offsets: off }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmulSwiglu(x, { w1: w, w3: mk(new Array(12).fill(1), [2, 3, 2], 'bfloat16') }, { offsets: off }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmulSwiglu(x, { w1: mk(new Array(16).fill(1), [2, 4, 2]), w3: mk(new Array(16).fill(1), [2, 4, 2]) }, { offsets: off }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmulSwiglu(x, { w1: w, w3: w }, { offsets: ints([0, 4]) }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmulSwiglu(ints(new Array(12).fill(1), [4, 3]), { w1: w, w3: w }, { offsets: off }), 'ERR_DTYPE');
    });

    test('bad offsets reject with ERR_RANGE when read', async () => {
      const x = mk(randomF32(mulberry32(1), 12), [4, 3]);
      const w = mk(randomF32(mulberry32(2), 2 * 3 * 2), [2, 3, 2]);
      for (const off of [[1, 2, 4], [0, 3, 2], [0, 2, 5], [0, -1, 2]]) {
        await rejectsCode(groupedMatmul(x, w, { offsets: ints(off) }), 'ERR_RANGE', /grouped/);
        await rejectsCode(groupedMatmulWgrad(x, mk(randomF32(mulberry32(3), 8), [4, 2]), { offsets: ints(off) }), 'ERR_RANGE', /grouped/);
      }
      expect((await read(groupedMatmul(x, w, { offsets: ints([0, 2, 4]) }))).length).toBe(8);
    });

    test('argument errors', () => {
      const x = mk(new Array(12).fill(1), [4, 3]);
      const w = mk(new Array(12).fill(1), [2, 3, 2]);
      const off = ints([0, 2, 4]);
      throwsCode(() => groupedMatmul(x, mk(new Array(16).fill(1), [2, 4, 2]), { offsets: off }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmul(x, w, { offsets: off, transW: true }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmul(x, mk(new Array(6).fill(1), [3, 2]), { offsets: off }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmul(x, w, { offsets: ints([0, 4]) }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmul(x, w, { offsets: mk([0, 2, 4], [3]) }), 'ERR_DTYPE');
      throwsCode(() => groupedMatmul(ints(new Array(12).fill(1), [4, 3]), w, { offsets: off }), 'ERR_DTYPE');
      throwsCode(() => groupedMatmul(x, ints(new Array(12).fill(1), [2, 3, 2]), { offsets: off }), 'ERR_DTYPE');
      throwsCode(() => groupedMatmulWgrad(x, mk(new Array(10).fill(1), [5, 2]), { offsets: off }), 'ERR_SHAPE');
      throwsCode(() => groupedMatmulWgrad(x, mk(new Array(8).fill(1), [4, 2]), { offsets: mk([0, 2, 4], [3]) }), 'ERR_DTYPE');
      throwsCode(() => groupedMatmulWgrad(x, ints(new Array(8).fill(1), [4, 2]), { offsets: off }), 'ERR_DTYPE');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe.each(['float32', 'bfloat16'] as const)('swiglu %s', (dt) => {
    const inputs = (n: number, seed: number): Float64Array[] => {
      const rng = mulberry32(seed);
      const gen = (lo: number, hi: number): Float64Array => (dt === 'bfloat16' ? randomBf16(rng, n, lo, hi) : randomF32(rng, n, lo, hi));
      const h1 = gen(-8, 8), h3 = gen(-3, 3), da = gen(-2, 2);
      // extremes and the zero of silu' (x ~ -1.2785)
      const special = [0, -0, 100, -100, 30, -30, -1.2785, 87, -87];
      for (let i = 0; i < Math.min(n, special.length); i++) h1[i] = dt === 'bfloat16' ? bf16Round(special[i] as number) : f32(special[i] as number);
      return [h1, h3, da];
    };

    test.each([1, 7, 37, 301, 4099])('forward and backward, n = %i', async (n) => {
      const [h1, h3, da] = inputs(n, n) as [Float64Array, Float64Array, Float64Array];
      const t1 = mk(h1, [n], dt), t3 = mk(h3, [n], dt);
      const a = keep(swiglu(t1, t3));
      expect(a.shape).toEqual([n]);
      expect(a.dtype).toBe(dt);
      const bf = dt === 'bfloat16' ? 1 : 0;
      const refA = swigluRef(h1, h3);
      assertClose(Array.from(await a.toArray()), refA, { f32Ulps: 8, bf16Ulps: bf, atol: 1e-37, label: 'swiglu' });
      const { dh1, dh3 } = swigluBackward(t1, t3, mk(da, [n], dt));
      keep(dh1);
      keep(dh3);
      expect(dh1.dtype).toBe(dt);
      expect(dh3.shape).toEqual([n]);
      const ref = swigluBackwardRef(h1, h3, da);
      const bound = Array.from(h1, (x, i) => Math.abs((da[i] as number) * (h3[i] as number)) * (1 + Math.abs(x)) * 16 * 2 ** -24);
      assertClose(Array.from(await dh1.toArray()), ref.dh1, { atolEach: bound, f32Ulps: 4, bf16Ulps: bf, atol: 1e-37, label: 'dh1' });
      assertClose(Array.from(await dh3.toArray()), ref.dh3, { f32Ulps: 8, bf16Ulps: bf, atol: 1e-37, label: 'dh3' });
    });

    test('2-D inputs keep their shape', async () => {
      const [h1, h3] = inputs(35, 5) as [Float64Array, Float64Array];
      const a = keep(swiglu(mk(h1, [5, 7], dt), mk(h3, [5, 7], dt)));
      expect(a.shape).toEqual([5, 7]);
      assertClose(Array.from(await a.toArray()), swigluRef(h1, h3), { f32Ulps: 8, bf16Ulps: dt === 'bfloat16' ? 1 : 0, atol: 1e-37 });
    });

    test('argument errors', () => {
      const a = mk([1, 2, 3], [3], dt);
      throwsCode(() => swiglu(a, mk([1, 2], [2], dt)), 'ERR_SHAPE');
      throwsCode(() => swiglu(a, mk([1, 2, 3], [1, 3], dt)), 'ERR_SHAPE');
      throwsCode(() => swiglu(a, mk([1, 2, 3], [3], dt === 'float32' ? 'bfloat16' : 'float32')), 'ERR_DTYPE');
      throwsCode(() => swiglu(ints([1, 2, 3]), ints([1, 2, 3])), 'ERR_DTYPE');
      throwsCode(() => swigluBackward(a, a, mk([1, 2], [2], dt)), 'ERR_SHAPE');
      throwsCode(() => swigluBackward(a, a, mk([1, 2, 3], [3], dt === 'float32' ? 'bfloat16' : 'float32')), 'ERR_DTYPE');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('routingStats', () => {
    test.each(LAYOUTS)('%s: against the reference (expert choice and token choice)', async (_name, L) => {
      const { E, G, M } = layoutInfo(L);
      for (const T of ROWS)
        for (const o of [{ capacityFactor: 1.37 }, { capacityFactor: 0.5 }, { mode: 'token-choice', topK: 2 }] as RefRoutingOptions[])
          for (const pattern of ['mixed', 'one modality'] as Pattern[]) {
            const rng = mulberry32(T * 11 + E);
            const modality = randomModality(rng, T, M, pattern);
            const scores = randomScores(rng, T, E, 'distinct');
            const p = partitionOf(modality, L);
            const r = keepAll(route(mk(scores, [T, E]), p, { layout: L, ...o as RoutingOptions }));
            const st = keepAll(routingStats(p, r, L));
            expect(st.expertStats.shape).toEqual([E, 2]);
            expect(st.groupStats.shape).toEqual([G, 4]);
            expect(st.expertStats.dtype).toBe('float32');
            const part = partitionRef(modality, L);
            const ref = routeRef(scores, part, L, o);
            const want = routingStatsRef(part, ref.expertOffsets, ref.slotGate, ref.rowSlots, L);
            const es = Array.from(await st.expertStats.toArray());
            const gs = Array.from(await st.groupStats.toArray());
            const label = `T=${T} ${JSON.stringify(o)} ${pattern}`;
            for (let e = 0; e < E; e++) {
              expect(es[2 * e]).toBe(want.expertStats[2 * e]);
              assertClose([es[2 * e + 1] as number], [want.expertStats[2 * e + 1] as number], { rtol: (T + 4) * 2 ** -23, label: `${label} mean gate e=${e}` });
            }
            for (let g = 0; g < G; g++) {
              expect(gs[4 * g]).toBe(want.groupStats[4 * g]);
              assertClose(gs.slice(4 * g + 1, 4 * g + 4), want.groupStats.slice(4 * g + 1, 4 * g + 4), { f32Ulps: 2, label: `${label} shares g=${g}` });
            }
          }
    });
  });

  // -------------------------------------------------------------------------------------------
  test('determinism: the whole op chain twice gives the same bits', async () => {
    const L = { experts: [4, 1, 3], groupOfModality: [0, 1, 2] };
    const T = 301, d = 24, f = 40, E = 8;
    const rng = mulberry32(2024);
    const modality = randomModality(rng, T, 3, 'mixed');
    const x = mk(randomF32(rng, T * d), [T, d]);
    const logits = mk(randomF32(rng, T * E, -3, 3), [T, E]);
    const w1 = mk(randomF32(rng, E * d * f), [E, d, f]);
    const w2 = mk(randomF32(rng, E * f * d), [E, f, d]);
    const dy = mk(randomF32(rng, T * d), [T, d]);
    const run = async (): Promise<HostArray[]> => {
      const p = partitionOf(modality, L);
      const s = keep(routerScores(logits, { rowGroup: p.rowGroup, layout: L, fn: 'softmax', gumbel: new Generator(5) }));
      const r = keepAll(route(s, p, { layout: L, capacityFactor: 1.37 }));
      const xd = keep(gatherRows(x, r.slotRow));
      const h = keep(groupedMatmul(xd, w1, { offsets: r.expertOffsets }));
      const a = keep(swiglu(h, h));
      const out = keep(groupedMatmul(a, w2, { offsets: r.expertOffsets }));
      const y = keep(combineRows(out, r.rowSlots, r.slotGate));
      const gg = keep(gateGrad(out, dy, { slotRow: r.slotRow, expertOffsets: r.expertOffsets, layout: L }));
      const dl = keep(routerScoresBackward(s, gg, { rowGroup: p.rowGroup, layout: L, fn: 'softmax' }));
      const wg = keep(groupedMatmulWgrad(xd, keep(gatherRows(dy, r.slotRow, r.slotGate)), { offsets: r.expertOffsets }));
      const { dh1, dh3 } = swigluBackward(h, h, a);
      keep(dh1);
      keep(dh3);
      const st = keepAll(routingStats(p, r, L));
      return Promise.all([s, r.slotRow, r.slotGate, r.rowSlots, y, gg, dl, wg, dh1, dh3, st.expertStats, st.groupStats].map((t) => t.toArray()));
    };
    const a = await run();
    const b = await run();
    a.forEach((v, i) => expect(sameBits(v, b[i] as HostArray)).toBe(true));
  });

  (cuda ? test : test.skip)('mixed devices are rejected with ERR_DEVICE', () => {
    const L = { experts: [2], groupOfModality: [0] };
    const host = (v: number[], shape: number[], int = false): Tensor =>
      keep(int ? tensor(Int32Array.from(v), { shape, device: 'cpu' }) : tensor(Float32Array.from(v), { shape, device: 'cpu' }));
    const p = partitionOf([0, 0], L);
    throwsCode(() => routerScores(host([0, 0, 0, 0], [2, 2]), { rowGroup: p.rowGroup, layout: L }), 'ERR_DEVICE');
    throwsCode(() => route(host([0, 0, 0, 0], [2, 2]), p, { layout: L }), 'ERR_DEVICE');
    throwsCode(() => gatherRows(mk([1, 2], [2, 1]), host([0, 1], [2], true)), 'ERR_DEVICE');
    throwsCode(() => combineRows(mk([1, 2], [2, 1]), host([0, 1], [2, 1], true)), 'ERR_DEVICE');
    throwsCode(() => groupedMatmul(mk([1, 2], [2, 1]), host([1, 1], [2, 1, 1]), { offsets: ints([0, 1, 2]) }), 'ERR_DEVICE');
    throwsCode(() => swiglu(mk([1], [1]), host([1], [1])), 'ERR_DEVICE');
  });
});
