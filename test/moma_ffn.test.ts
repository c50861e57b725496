/**
 * The MoMaFFN module (SPEC.md §2) against the float64 module reference of
 * support/moe_reference.ts: forward for the paper's layouts (4t4i, 8x, 1t1i), token choice, the
 * softmax router, Gumbel noise, capacity 2; backward (dx and every parameter gradient) against
 * the reference's analytic backward and central finite differences with the selection frozen;
 * routing statistics; padding rows; determinism.
 */
import { Generator, HostArray, MoMaFFN, MomaError, Tensor } from '../lib';
import type { MoMaFFNConfig } from '../lib';
import { describeDevices, tensorFixture } from './support/devices';
import { Rng, assertClose, assertExact, bf16Round, matmulRef, mulberry32, randomF32, sigmoidRef } from './support/reference';
import {
  FfnArg, FfnParams, FfnShape, RefLayout, RefRoutingOptions, gumbelNoiseRef, layoutInfo, momaBackwardRef, momaDirectionalFiniteDiff,
  momaFiniteDiff, momaForwardRef, routingStatsRef, selectionMargin, swigluRef,
} from './support/moe_reference';
import { Disposer } from './support/reference';

const D = 16, F = 24;

const CONFIGS: Record<string, Omit<MoMaFFNConfig, 'dModel' | 'dFF'>> = {
  '4t4i': { groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }] },
  '8x': { groups: [{ modality: ['text', 'image'], experts: 8 }] },
  '1t1i': { groups: [{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }] },
  '4t4i softmax': { groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }], router: 'softmax' },
  '3t1i c=1.37': { groups: [{ modality: 'text', experts: 3 }, { modality: 'image', experts: 1 }], capacityFactor: 1.37 },
  'token choice top-2 softmax [4,3]': {
    groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 3 }], routing: 'token-choice', topK: 2, router: 'softmax',
  },
  // token choice ranks by softmax unless the config names a router (SPEC §2): sigmoid must be asked for
  'token choice top-1 sigmoid c=0.5 (8x)': {
    groups: [{ modality: ['image', 'text'], experts: 8 }], routing: 'token-choice', topK: 1, capacityFactor: 0.5, router: 'sigmoid',
  },
  'token choice top-2 default router (softmax) [3,2]': {
    groups: [{ modality: 'text', experts: 3 }, { modality: 'image', experts: 2 }], routing: 'token-choice', topK: 2,
  },
  '3 modalities, audio unrouted': {
    modalities: ['text', 'image', 'audio'], groups: [{ modality: 'image', experts: 2 }, { modality: 'text', experts: 3 }],
  },
};

const EXPECTED_LAYOUT: Record<string, RefLayout> = {
  '4t4i': { experts: [4, 4], groupOfModality: [0, 1] },
  '8x': { experts: [8], groupOfModality: [0, 0] },
  '1t1i': { experts: [1, 1], groupOfModality: [0, 1] },
  '3 modalities, audio unrouted': { experts: [2, 3], groupOfModality: [1, 0, -1] },
};

function sameBits(a: HostArray, b: HostArray): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function maxAbs(v: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i] as number));
  return m;
}

/** max |got - exp| <= rel * max |exp| (and exp is not all zero). */
function assertRelMax(got: ArrayLike<number>, exp: ArrayLike<number>, rel: number, label: string): void {
  const scale = maxAbs(exp);
  expect(scale).toBeGreaterThan(0);
  assertClose(got, exp, { atol: rel * scale, label: `${label} (|ref|max ${scale.toPrecision(3)})` });
}

/** Modality ids in [0, M) with ~15% padding (-1); every modality present when T allows. */
function randomModality(rng: Rng, T: number, M: number): number[] {
  const out = Array.from({ length: T }, () => (rng() < 0.15 ? -1 : Math.floor(rng() * M)));
  for (let m = 0; m < Math.min(M, T); m++) out[(m * 5 + 1) % T] = m;
  if (T > M + 1) out[0] = -1;
  return out;
}

/** Rows of each global expert from a routing read back from the device. */
function rowsOfRouting(expertOffsets: ArrayLike<number>, slotRow: ArrayLike<number>): number[][] {
  const out: number[][] = [];
  for (let e = 0; e + 1 < expertOffsets.length; e++) {
    const rows: number[] = [];
    for (let s = expertOffsets[e] as number; s < (expertOffsets[e + 1] as number); s++) rows.push(slotRow[s] as number);
    out.push(rows);
  }
  return out;
}

/** One expert's dense SwiGLU FFN on each row, via the generic matmul reference (independent of the MoE code). */
function denseExpert(p: FfnParams, e: number, x: ArrayLike<number>, T: number): Float64Array {
  const w1 = Array.prototype.slice.call(p.w1, e * D * F, (e + 1) * D * F) as number[];
  const w3 = Array.prototype.slice.call(p.w3, e * D * F, (e + 1) * D * F) as number[];
  const w2 = Array.prototype.slice.call(p.w2, e * F * D, (e + 1) * F * D) as number[];
  const h1 = matmulRef(x, [T, D], w1, [D, F]).data;
  const h3 = matmulRef(x, [T, D], w3, [D, F]).data;
  return matmulRef(swigluRef(h1, h3), [T, F], w2, [F, D]).data;
}

describeDevices('MoMaFFN', (device) => {
  const { keep, mk, read } = tensorFixture(device);
  const cuda = device !== 'cpu';
  const bag = new Disposer();
  const hold = <T extends { dispose(): void }>(x: T): T => bag.keep(x);
  afterEach(() => bag.disposeAll());

  /** float32 chain on the CPU; on CUDA float32 GEMMs sum in another order and bf16 ones use tensor cores */
  const FWD_TOL = cuda ? 2e-2 : 1e-4;
  const GRAD_TOL = cuda ? 3e-2 : 1e-3;

  interface Setup {
    ffn: MoMaFFN;
    layout: RefLayout;
    shape: FfnShape;
    options: RefRoutingOptions;
    params: FfnParams;
    x: Float64Array;
    modality: number[];
    T: number;
    xt: Tensor;
    mt: Tensor;
  }

  /** A module with O(1)-scaled random parameters (set through setParameters and read back). */
  const build = async (cfg: Omit<MoMaFFNConfig, 'dModel' | 'dFF'>, T: number, seed: number, extra: Partial<MoMaFFNConfig> = {}): Promise<Setup> => {
    const ffn = hold(new MoMaFFN({ dModel: D, dFF: F, ...cfg, ...extra, device, seed }));
    const layout: RefLayout = { experts: ffn.layout.experts.slice(), groupOfModality: ffn.layout.groupOfModality.slice() };
    const E = ffn.numExperts;
    const rng = mulberry32(seed);
    const a1 = Math.sqrt(3 / D), a2 = Math.sqrt(3 / F);
    ffn.setParameters({
      w1: mk(randomF32(rng, E * D * F, -a1, a1), [E, D, F]),
      w3: mk(randomF32(rng, E * D * F, -a1, a1), [E, D, F]),
      w2: mk(randomF32(rng, E * F * D, -a2, a2), [E, F, D]),
      router: mk(randomF32(rng, D * E, -3 * a1, 3 * a1), [D, E]),
    });
    const params: FfnParams = {
      w1: await ffn.w1.toArray(), w2: await ffn.w2.toArray(), w3: await ffn.w3.toArray(), router: await ffn.router.toArray(),
    };
    const dt = extra.dtype ?? 'float32';
    let x = randomF32(rng, T * D);
    if (dt === 'bfloat16') x = x.map(bf16Round);
    const M = layout.groupOfModality.length;
    const modality = randomModality(rng, T, M);
    const merged = { ...cfg, ...extra };
    const options: RefRoutingOptions = {
      mode: merged.routing ?? 'expert-choice', capacityFactor: merged.capacityFactor ?? 1, topK: merged.topK ?? 2,
    };
    // SPEC §2 defaults: expert choice scores by sigmoid, token choice by softmax
    const shape: FfnShape = { d: D, f: F, layout, fn: merged.router ?? (merged.routing === 'token-choice' ? 'softmax' : 'sigmoid') };
    return { ffn, layout, shape, options, params, x, modality, T, xt: mk(x, [T, D], dt), mt: mk(modality, [T], 'int32') };
  };

  /**
   * Forward on the device and in the reference. On the CPU the device selection must equal the
   * reference selection (inputs are checked to be far from ties); on CUDA (another summation order,
   * bf16 tensor cores for bf16) the reference uses the device's selection.
   */
  const forwardBoth = async (s: Setup, noise?: Float64Array, fwdOpts: { training?: boolean; generator?: Generator } = {}) => {
    const shape: FfnShape = { ...s.shape, noise };
    const { y, ctx } = s.ffn.forward(s.xt, s.mt, fwdOpts);
    keep(y);
    hold(ctx);
    const natRows = rowsOfRouting(await ctx.routing.expertOffsets.toArray(), await ctx.routing.slotRow.toArray());
    const refFree = momaForwardRef(s.params, s.x, s.modality, shape, s.options);
    let frozen = refFree.routing.rowsOf;
    if (!cuda) {
      expect(selectionMargin(refFree.scores, refFree.partition, s.layout, s.options)).toBeGreaterThan(1e-4);
      expect(natRows).toEqual(frozen);
    } else {
      frozen = natRows;
    }
    const ref = momaForwardRef(s.params, s.x, s.modality, shape, s.options, frozen);
    return { y, ctx, ref, frozen, shape };
  };

  // -------------------------------------------------------------------------------------------
  describe('forward against the reference', () => {
    test.each(Object.keys(CONFIGS))('%s', async (name) => {
      for (const [T, seed] of [[29, 1], [1, 2], [7, 3], [64, 4]] as const) {
        const s = await build(CONFIGS[name]!, T, seed * 97 + name.length);
        if (EXPECTED_LAYOUT[name]) expect(s.ffn.layout).toEqual(EXPECTED_LAYOUT[name]);
        const { y, ctx, ref } = await forwardBoth(s);
        expect(y.shape).toEqual([T, D]);
        expect(y.dtype).toBe('float32');
        const got = await read(y);
        if (maxAbs(ref.y) > 0) assertRelMax(got, ref.y, FWD_TOL, `${name} T=${T} y`);
        else assertExact(got, ref.y, `${name} T=${T} y (all rows padding)`);
        // the gates are the scores of the selected pairs
        const scores = await ctx.scores.toArray();
        assertClose(scores, ref.scores, { atol: cuda ? 2e-2 : 2e-6, label: `${name} T=${T} scores` });
        const gates = await ctx.routing.slotGate.toArray();
        assertClose(Array.from(gates).slice(0, ref.routing.slotGate.length), ref.routing.slotGate, { atol: cuda ? 2e-2 : 2e-6, label: 'slotGate' });
        // rows of no group (padding, an unrouted modality) give exactly 0
        const dead = s.modality.map((m, t) => (m < 0 || s.layout.groupOfModality[m]! < 0 ? t : -1)).filter((t) => t >= 0);
        assertExact(dead.flatMap((t) => got.slice(t * D, (t + 1) * D)), new Array(dead.length * D).fill(0), 'rows of no group');
      }
    });

    test('1t1i equals an untied per-modality dense SwiGLU FFN with weight 1', async () => {
      const s = await build(CONFIGS['1t1i']!, 37, 11);
      const { y } = s.ffn.forward(s.xt, s.mt);
      const got = await read(y);
      const want = new Float64Array(37 * D);
      for (const m of [0, 1]) {
        const dense = denseExpert(s.params, m, s.x, 37);
        for (let t = 0; t < 37; t++) if (s.modality[t] === m) for (let i = 0; i < D; i++) want[t * D + i] = dense[t * D + i] as number;
      }
      assertRelMax(got, want, FWD_TOL, '1t1i vs dense');
    });

    test('capacityFactor 2 with E_g = 2: every expert takes every row, y is the gate-weighted sum of all experts', async () => {
      const T = 31;
      const s = await build({ groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }], capacityFactor: 2 }, T, 12);
      const { y, ctx } = s.ffn.forward(s.xt, s.mt);
      hold(ctx);
      const off = Array.from(await ctx.routing.expertOffsets.toArray());
      const n = [0, 1].map((m) => s.modality.filter((v) => v === m).length);
      expect(off.slice(1).map((v, e) => v - (off[e] as number))).toEqual([n[0], n[0], n[1], n[1]]);
      const logits = matmulRef(s.x, [T, D], s.params.router, [D, 4]).data;
      const experts = [0, 1, 2, 3].map((e) => denseExpert(s.params, e, s.x, T));
      const want = new Float64Array(T * D);
      for (let t = 0; t < T; t++) {
        const m = s.modality[t]!;
        if (m < 0) continue;
        for (const e of [2 * m, 2 * m + 1]) {
          const gate = sigmoidRef(logits[t * 4 + e] as number);
          for (let i = 0; i < D; i++) want[t * D + i]! += gate * (experts[e]![t * D + i] as number);
        }
      }
      assertRelMax(await read(y), want, FWD_TOL, 'capacity 2');
    });

    test('Gumbel noise: scores = sigmoid(logits + noise) from the generator; deterministic for a seed; off without training', async () => {
      const T = 29;
      const s = await build(CONFIGS['4t4i']!, T, 13, { gumbel: true });
      const E = 8;
      const g = new Generator(4242);
      g.take(3);
      const off0 = g.offset;
      const noise = gumbelNoiseRef(T, E, g.seed, off0);
      const { y, ctx, ref } = await forwardBoth(s, noise, { training: true, generator: g });
      expect(g.offset).toBe(off0 + BigInt(Math.ceil((2 * T * E) / 4)));
      assertClose(await ctx.scores.toArray(), ref.scores, { atol: cuda ? 2e-2 : 4e-6, label: 'gumbel scores' });
      const yn = await read(y);
      assertRelMax(yn, ref.y, FWD_TOL, 'gumbel y');
      // the same generator state again: the same bits
      const g2 = new Generator(4242);
      g2.take(3);
      const again = s.ffn.forward(s.xt, s.mt, { training: true, generator: g2 });
      hold(again.ctx);
      expect(sameBits(Float32Array.from(yn), Float32Array.from(await read(again.y)))).toBe(true);
      // evaluation (training false) ignores the noise; it differs from the noisy output
      const evalOut = s.ffn.forward(s.xt, s.mt, { generator: new Generator(4242) });
      hold(evalOut.ctx);
      const ye = await read(evalOut.y);
      const plain = momaForwardRef(s.params, s.x, s.modality, s.shape, s.options);
      assertRelMax(ye, plain.y, FWD_TOL, 'eval ignores gumbel');
      expect(ye.some((v, i) => Math.abs(v - (yn[i] as number)) > 1e-3)).toBe(true);
    });

    test('training without gumbel in the config draws no noise', async () => {
      const s = await build(CONFIGS['4t4i']!, 29, 15);
      const g = new Generator(1);
      const a = s.ffn.forward(s.xt, s.mt, { training: true, generator: g });
      hold(a.ctx);
      const b = s.ffn.forward(s.xt, s.mt);
      hold(b.ctx);
      expect(g.offset).toBe(0n);
      expect(sameBits(await keep(a.y).toArray(), await keep(b.y).toArray())).toBe(true);
    });

    test('bf16 module: forward and backward close to the float64 reference on the bf16 parameters', async () => {
      const T = 29;
      const s = await build(CONFIGS['4t4i']!, T, 14, { dtype: 'bfloat16' });
      expect(s.ffn.w1.dtype).toBe('bfloat16');
      const { y, ctx } = s.ffn.forward(s.xt, s.mt);
      hold(ctx);
      expect(y.dtype).toBe('bfloat16');
      // the selection can differ from the float64 one by rounding: use the module's
      const frozen = rowsOfRouting(await ctx.routing.expertOffsets.toArray(), await ctx.routing.slotRow.toArray());
      const ref = momaForwardRef(s.params, s.x, s.modality, s.shape, s.options, frozen);
      assertRelMax(await read(y), ref.y, 3e-2, 'bf16 y');
      const dy = randomF32(mulberry32(5), T * D).map(bf16Round);
      const { dx, grads } = s.ffn.backward(ctx, mk(dy, [T, D], 'bfloat16'));
      const want = momaBackwardRef(s.params, s.x, s.modality, s.shape, frozen, dy);
      assertRelMax(await read(dx), want.dx, 5e-2, 'bf16 dx');
      for (const k of ['w1', 'w2', 'w3', 'router'] as const) {
        expect(grads[k].dtype).toBe('float32');
        assertRelMax(await read(grads[k]), want[k], 5e-2, `bf16 ${k}`);
      }
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('backward against the reference and finite differences (selection frozen)', () => {
    const ARGS: FfnArg[] = ['x', 'w1', 'w2', 'w3', 'router'];

    test.each(['4t4i', '8x', '1t1i', '4t4i softmax', '3t1i c=1.37', 'token choice top-2 softmax [4,3]', '3 modalities, audio unrouted', 'gumbel'])('%s', async (name) => {
      const T = 23;
      const gumbel = name === 'gumbel';
      const s = await build(CONFIGS[gumbel ? '4t4i softmax' : name]!, T, 21 + name.length, gumbel ? { gumbel: true } : {});
      const E = s.ffn.numExperts;
      const g = new Generator(77);
      const noise = gumbel ? gumbelNoiseRef(T, E, g.seed, g.offset) : undefined;
      const { ctx, frozen, shape } = await forwardBoth(s, noise, gumbel ? { training: true, generator: g } : {});
      const dy = randomF32(mulberry32(99), T * D);
      const { dx, grads } = s.ffn.backward(ctx, mk(dy, [T, D]));
      keep(dx);
      for (const k of ['w1', 'w2', 'w3', 'router'] as const) keep(grads[k]);
      expect(dx.shape).toEqual([T, D]);
      expect(grads.w1.shape).toEqual([E, D, F]);
      expect(grads.w3.shape).toEqual([E, D, F]);
      expect(grads.w2.shape).toEqual([E, F, D]);
      expect(grads.router.shape).toEqual([D, E]);
      const want = momaBackwardRef(s.params, s.x, s.modality, shape, frozen, dy);
      const got: Record<FfnArg, number[]> = {
        x: Array.from(await dx.toArray()), w1: Array.from(await grads.w1.toArray()), w2: Array.from(await grads.w2.toArray()),
        w3: Array.from(await grads.w3.toArray()), router: Array.from(await grads.router.toArray()),
      };
      const ref: Record<FfnArg, Float64Array> = { x: want.dx, w1: want.w1, w2: want.w2, w3: want.w3, router: want.router };

      // 1. the reference backward is the derivative of the reference forward (float64 finite differences)
      const rng = mulberry32(7);
      const sizes: Record<FfnArg, number> = { x: T * D, w1: E * D * F, w2: E * F * D, w3: E * D * F, router: D * E };
      for (const a of ARGS) {
        const scale = maxAbs(ref[a]);
        // sample the largest entry and random ones
        let big = 0;
        for (let i = 0; i < ref[a].length; i++) if (Math.abs(ref[a][i]!) > Math.abs(ref[a][big]!)) big = i;
        const idx = [big, ...Array.from({ length: 6 }, () => Math.floor(rng() * sizes[a]))];
        for (const i of idx) {
          const fd = momaFiniteDiff(s.params, s.x, s.modality, shape, frozen, dy, a, i, 1e-4);
          expect(Math.abs(fd - ref[a][i]!)).toBeLessThanOrEqual(1e-6 * Math.max(scale, 1e-3));
          // and the module against the finite difference directly
          expect(Math.abs((got[a][i] as number) - fd)).toBeLessThanOrEqual(GRAD_TOL * Math.max(scale, 1e-6));
        }
      }
      // one directional derivative over every argument at once
      const dir: Record<FfnArg, Float64Array> = {
        x: randomF32(rng, sizes.x), w1: randomF32(rng, sizes.w1), w2: randomF32(rng, sizes.w2), w3: randomF32(rng, sizes.w3), router: randomF32(rng, sizes.router),
      };
      const fdDir = momaDirectionalFiniteDiff(s.params, s.x, s.modality, shape, frozen, dy, dir, 1e-5);
      let analytic = 0;
      for (const a of ARGS) for (let i = 0; i < sizes[a]; i++) analytic += ref[a][i]! * dir[a][i]!;
      expect(Math.abs(fdDir - analytic)).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(analytic)));

      // 2. the module's gradients against the reference's, everywhere
      for (const a of ARGS) {
        if (a === 'router' && s.layout.experts.every((e) => e === 1)) {
          assertExact(got.router, ref.router, 'no router: zero gradient');
          continue;
        }
        assertRelMax(got[a], ref[a], GRAD_TOL, `${name} d${a}`);
      }
      // the router path of dx matters in this test (a module without it would fail)
      if (s.layout.experts.some((e) => e > 1)) {
        let diff = 0;
        for (let i = 0; i < want.dx.length; i++) diff = Math.max(diff, Math.abs(want.dx[i]! - want.dxNoRouter[i]!));
        expect(diff).toBeGreaterThan(10 * GRAD_TOL * maxAbs(want.dx));
      }
      // columns of single-expert groups get no router gradient; padding / unrouted rows no dx
      const { begin } = layoutInfo(s.layout);
      s.layout.experts.forEach((Eg, gi) => {
        if (Eg !== 1) return;
        const col = Array.from({ length: D }, (_, i) => got.router[i * E + begin[gi]!] as number);
        assertExact(col, new Array(D).fill(0), `router column of single-expert group ${gi}`);
      });
      const dead = s.modality.map((m, t) => (m < 0 || s.layout.groupOfModality[m]! < 0 ? t : -1)).filter((t) => t >= 0);
      expect(dead.length).toBeGreaterThan(0);
      assertExact(dead.flatMap((t) => got.x.slice(t * D, (t + 1) * D)), new Array(dead.length * D).fill(0), 'dx of rows of no group');
    });
  });

  // -------------------------------------------------------------------------------------------
  test.each(['4t4i', '3t1i c=1.37', 'token choice top-2 softmax [4,3]', '3 modalities, audio unrouted'])('routing stats: %s', async (name) => {
    const T = 41;
    const s = await build(CONFIGS[name]!, T, 31);
    const { ctx, ref } = await forwardBoth(s);
    const report = await s.ffn.stats(ctx);
    const want = routingStatsRef(ref.partition, ref.routing.expertOffsets, ref.routing.slotGate, ref.routing.rowSlots, s.layout);
    const { E, G, begin } = layoutInfo(s.layout);
    expect(report.experts.length).toBe(E);
    expect(report.groups.length).toBe(G);
    const modalities = CONFIGS[name]!.modalities ?? ['text', 'image'];
    for (let e = 0; e < E; e++) {
      const r = report.experts[e]!;
      const g = layoutInfo(s.layout).groupOfExpert[e]!;
      expect(r.group).toBe(g);
      expect(r.expert).toBe(e - begin[g]!);
      expect(r.rows).toBe(want.expertStats[2 * e]);
      expect(Math.abs(r.meanGate - want.expertStats[2 * e + 1]!)).toBeLessThanOrEqual(cuda ? 2e-2 : 1e-5);
    }
    for (let g = 0; g < G; g++) {
      const r = report.groups[g]!;
      expect(r.group).toBe(g);
      expect(r.modalities).toEqual(modalities.filter((_, m) => s.layout.groupOfModality[m] === g));
      expect(r.rows).toBe(want.groupStats[4 * g]);
      assertClose([r.share0, r.share1, r.share2plus], want.groupStats.slice(4 * g + 1, 4 * g + 4), { atol: 1e-6, label: `group ${g} shares` });
      expect(Math.abs(r.share0 + r.share1 + r.share2plus - (r.rows > 0 ? 1 : 0))).toBeLessThan(1e-6);
    }
  });

  // -------------------------------------------------------------------------------------------
  test('determinism: two forward + backward runs give the same bits (with Gumbel noise)', async () => {
    const T = 64;
    const s = await build(CONFIGS['4t4i softmax']!, T, 41, { gumbel: true });
    const dy = mk(randomF32(mulberry32(3), T * D), [T, D]);
    const run = async (): Promise<HostArray[]> => {
      const { y, ctx } = s.ffn.forward(s.xt, s.mt, { training: true, generator: new Generator(8) });
      hold(ctx);
      keep(y);
      const { dx, grads } = s.ffn.backward(ctx, dy);
      const ts = [y, dx, grads.w1, grads.w2, grads.w3, grads.router, ctx.scores, ctx.routing.slotGate, ctx.routing.rowSlots].map((t) => t);
      for (const t of [dx, grads.w1, grads.w2, grads.w3, grads.router]) keep(t);
      return Promise.all(ts.map((t) => t.toArray()));
    };
    const a = await run();
    const b = await run();
    a.forEach((v, i) => expect(sameBits(v, b[i]!)).toBe(true));
  });

  test('padding only: y = 0 and every gradient is 0', async () => {
    const s = await build(CONFIGS['4t4i']!, 5, 51);
    const mt = mk([-1, -1, -1, -1, -1], [5], 'int32');
    const { y, ctx } = s.ffn.forward(s.xt, mt);
    hold(ctx);
    assertExact(await read(y), new Array(5 * D).fill(0), 'y');
    const { dx, grads } = s.ffn.backward(ctx, mk(randomF32(mulberry32(1), 5 * D), [5, D]));
    assertExact(await read(dx), new Array(5 * D).fill(0), 'dx');
    for (const k of ['w1', 'w2', 'w3', 'router'] as const) expect((await read(grads[k])).every((v) => v === 0)).toBe(true);
  });

  test('parameters: shapes, default init std 0.02, seeded', async () => {
    const cfg: MoMaFFNConfig = { dModel: 32, dFF: 48, groups: [{ modality: 'text', experts: 3 }, { modality: 'image', experts: 1 }], device, seed: 5 };
    const a = hold(new MoMaFFN(cfg));
    const b = hold(new MoMaFFN(cfg));
    const c = hold(new MoMaFFN({ ...cfg, seed: 6 }));
    expect(a.numExperts).toBe(4);
    expect(a.w1.shape).toEqual([4, 32, 48]);
    expect(a.w3.shape).toEqual([4, 32, 48]);
    expect(a.w2.shape).toEqual([4, 48, 32]);
    expect(a.router.shape).toEqual([32, 4]);
    expect(a.router.dtype).toBe('float32');
    expect([...a.parameters().keys()].sort()).toEqual(['router', 'w1', 'w2', 'w3']);
    const w = await a.w1.toArray();
    const std = Math.sqrt(Array.from(w).reduce((acc, v) => acc + v * v, 0) / w.length);
    expect(Math.abs(std - 0.02)).toBeLessThan(0.002);
    expect(sameBits(w, await b.w1.toArray())).toBe(true);
    expect(sameBits(w, await c.w1.toArray())).toBe(false);
    expect(() => a.setParameters({ w1: mk(new Array(10).fill(0), [2, 5]) })).toThrow(expect.objectContaining({ code: 'ERR_SHAPE' }));
  });

  test('errors: bad inputs and configs', () => {
    const ffn = hold(new MoMaFFN({ dModel: D, dFF: F, groups: CONFIGS['4t4i']!.groups, device }));
    const code = (fn: () => unknown): string => {
      try {
        fn();
      } catch (e) {
        expect(e).toBeInstanceOf(MomaError);
        return (e as MomaError).code;
      }
      return 'no error';
    };
    expect(code(() => ffn.forward(mk(new Array(3 * 5).fill(0), [3, 5]), mk([0, 1, 0], [3], 'int32')))).toBe('ERR_SHAPE');
    expect(code(() => ffn.forward(mk(new Array(3 * D).fill(0), [3, D]), mk([0, 1], [2], 'int32')))).toBe('ERR_SHAPE');
    expect(code(() => new MoMaFFN({ dModel: D, dFF: F, groups: [{ modality: 'video', experts: 2 }], device }))).toBe('ERR_ARG');
    expect(code(() => new MoMaFFN({ dModel: D, dFF: F, groups: [{ modality: 'text', experts: 0 }], device }))).toBe('ERR_ARG');
    expect(code(() => new MoMaFFN({ dModel: D, dFF: F, groups: [{ modality: 'text', experts: 2 }, { modality: ['text', 'image'], experts: 2 }], device }))).toBe('ERR_ARG');
    expect(code(() => new MoMaFFN({ dModel: D, dFF: F, groups: CONFIGS['4t4i']!.groups, capacityFactor: 0, device }))).toBe('ERR_ARG');
    expect(code(() => new MoMaFFN({ dModel: D, dFF: F, groups: CONFIGS['4t4i']!.groups, routing: 'token-choice', topK: 0, device }))).toBe('ERR_ARG');
  });

  test('token choice ranks by softmax by default; an explicit router is kept (SPEC §2)', async () => {
    const groups = CONFIGS['token choice top-2 default router (softmax) [3,2]']!.groups;
    const T = 31;
    const made = (extra: Partial<MoMaFFNConfig>): MoMaFFN => hold(new MoMaFFN({ dModel: D, dFF: F, groups, device, seed: 5, initStd: 0.3, ...extra }));
    const byDefault = made({ routing: 'token-choice', topK: 2 });
    const softmax = made({ routing: 'token-choice', topK: 2, router: 'softmax' });
    const sigmoid = made({ routing: 'token-choice', topK: 2, router: 'sigmoid' });
    expect(byDefault.config.router).toBe('softmax');
    expect(sigmoid.config.router).toBe('sigmoid');
    expect(made({}).config.router).toBe('sigmoid');
    const x = mk(randomF32(mulberry32(8), T * D), [T, D]);
    const m = mk(randomModality(mulberry32(9), T, 2), [T], 'int32');
    const outputs = await Promise.all([byDefault, softmax, sigmoid].map(async (ffn) => {
      const { y, ctx } = ffn.forward(x, m);
      keep(y);
      hold(ctx);
      return Float32Array.from(await read(y));
    }));
    expect(sameBits(outputs[0]!, outputs[1]!)).toBe(true);
    expect(sameBits(outputs[0]!, outputs[2]!)).toBe(false);
  });

  test('out-of-range modality ids reject with ERR_RANGE when the output is read', async () => {
    const ffn = hold(new MoMaFFN({ dModel: D, dFF: F, groups: CONFIGS['4t4i']!.groups, device }));
    const { y, ctx } = ffn.forward(mk(new Array(3 * D).fill(0.5), [3, D]), mk([0, 2, 1], [3], 'int32'));
    hold(ctx);
    keep(y);
    await expect(y.toArray()).rejects.toMatchObject({ code: 'ERR_RANGE' });
  });

});
