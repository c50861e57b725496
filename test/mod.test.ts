/**
 * Mixture-of-depths (SPEC.md §3): the selection op modSelect and segmentStarts against float64 /
 * plain-TS references (csrc/cpu/kernels_moe.h mod_select, score_key order of
 * csrc/core/moe_types.h: NaN lowest, -0 == +0, ties to the smaller row), and the MoD block:
 * capacity 1 equals x + ĝ ⊙ (block(x) − x), capacity 0.25 changes only the selected rows and
 * those equal the block run on just them (original positions, their documents), the gradient of a
 * Transformer with MoD against a directional finite difference, and document isolation inside
 * the selected subset.
 */
import {
  Attention, Batch, DecoderBlock, Generator, HeadNorm, MoEFeedForward, MomaError, Tensor, Transformer, TransformerConfig, backward, makeBatch, matmul,
  noGrad, randn, tensor, tidy,
} from '../lib';
import { modSelect, segmentStarts } from '../lib/kernels';
import { MoDBlock } from '../lib/model/layers';
import type { BlockContext, CachedContext, InitOptions } from '../lib/model/layers';
import { describeDevices, tensorFixture } from './support/devices';
import { Rng, assertClose, assertExact, mulberry32 } from './support/reference';
import { messageOf, throwsCode } from './support/errors';
import { directionalCheck } from './support/gradcheck';

// ---------------------------------------------------------------------------------------------
// References (plain TS, float64)

/** true when (a, ia) ranks above (b, ib): NaN lowest, -0 == +0, ties to the smaller index. */
function ranksAbove(a: number, ia: number, b: number, ib: number): boolean {
  const na = Number.isNaN(a), nb = Number.isNaN(b);
  if (na !== nb) return nb;
  if (!na && a !== b) return a > b; // -0 === +0 in JS
  return ia < ib;
}

/** The k valid rows with the largest scores, in increasing row order; RangeError when k > valid rows. */
function modSelectRef(scores: ArrayLike<number>, modality: ArrayLike<number>, k: number): number[] {
  const cand: number[] = [];
  for (let t = 0; t < modality.length; t++) if ((modality[t] as number) >= 0) cand.push(t);
  if (k > cand.length) throw new RangeError(`k = ${k} > ${cand.length} valid rows`);
  cand.sort((a, b) => (ranksAbove(scores[a] as number, a, scores[b] as number, b) ? -1 : 1));
  return cand.slice(0, k).sort((a, b) => a - b);
}

function segmentStartsRef(seg: ArrayLike<number>): number[] {
  const out: number[] = [];
  for (let j = 0; j < seg.length; j++) out.push(j > 0 && seg[j] === seg[j - 1] ? (out[j - 1] as number) : j);
  return out;
}

const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));

describe('MoD references (hand-computed)', () => {
  test('modSelectRef: NaN lowest, -0 == +0, ties to the smaller row, padding skipped', () => {
    expect(modSelectRef([0.5, NaN, 0.5, 0.9, -Infinity], [0, 0, 0, -1, 1], 3)).toEqual([0, 2, 4]);
    expect(modSelectRef([0, -0, 0, NaN], [0, 0, 0, 0], 2)).toEqual([0, 1]);
    expect(modSelectRef([-0, 0, NaN], [0, 0, 0], 1)).toEqual([0]);
    expect(modSelectRef([NaN, NaN, -1], [0, 0, 0], 2)).toEqual([0, 2]);
    expect(() => modSelectRef([1, 2], [-1, 0], 2)).toThrow(RangeError);
  });

  test('segmentStartsRef: runs of equal ids', () => {
    expect(segmentStartsRef([])).toEqual([]);
    expect(segmentStartsRef([7])).toEqual([0]);
    expect(segmentStartsRef([3, 3, 5, 5, 5, 3, 9])).toEqual([0, 0, 2, 2, 2, 5, 6]);
  });
});

// ---------------------------------------------------------------------------------------------
// Inputs

type ScoreKind = 'distinct' | 'ties' | 'special';

function randomScores(rng: Rng, T: number, kind: ScoreKind): number[] {
  const special = [NaN, Infinity, -Infinity, 0, -0, 1, -1, 0.5];
  const out: number[] = [];
  for (let t = 0; t < T; t++) {
    if (kind === 'ties') out.push(0.25 * (1 + Math.floor(rng() * 3)));
    else if (kind === 'special') out.push(rng() < 0.5 ? (special[Math.floor(rng() * special.length)] as number) : Math.fround(rng() * 2 - 1));
    else out.push(Math.fround(rng() * 4 - 2));
  }
  return out;
}

function randomModality(rng: Rng, T: number, padShare: number): number[] {
  return Array.from({ length: T }, () => (rng() < padShare ? -1 : Math.floor(rng() * 3)));
}


// ---------------------------------------------------------------------------------------------
// modSelect / segmentStarts

describeDevices('modSelect', (device) => {
  const { keep: hold, mk, read } = tensorFixture(device);
  const ints = (v: ArrayLike<number>, shape: number[] = [v.length]): Tensor => mk(v, shape, 'int32');

  const check = async (scores: number[], modality: number[], k: number, label: string): Promise<void> => {
    const rows = hold(modSelect(mk(scores, [scores.length]), ints(modality), k));
    expect(rows.dtype).toBe('int32');
    expect(rows.shape).toEqual([k]);
    expect(rows.device).toBe(device);
    assertExact(await read(rows), modSelectRef(scores, modality, k), label);
  };

  test.each([1, 7, 37, 1000, 2500])('T = %i: exact against the reference (distinct, tied and special scores; padding; k = 0, 1, half, all)', async (T) => {
    for (const kind of ['distinct', 'ties', 'special'] as ScoreKind[])
      for (const padShare of [0, 0.2]) {
        const rng = mulberry32(T * 7 + (kind === 'ties' ? 1 : kind === 'special' ? 2 : 3) + padShare * 100);
        const scores = randomScores(rng, T, kind);
        const modality = randomModality(rng, T, padShare);
        const n = modality.filter((m) => m >= 0).length;
        const ks = [...new Set([0, Math.min(1, n), Math.floor(n / 2), Math.max(0, n - 1), n])];
        for (const k of ks) await check(scores, modality, k, `T=${T} ${kind} pad=${padShare} k=${k}/${n}`);
      }
  });

  test('exact ties go to the smaller rows; -0 ties with +0; NaN ranks below -Infinity', async () => {
    await check([0.5, 0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1, 0], 3, 'all tied');
    await check([1, 0.5, 0.5, 1, 0.5], [0, 0, 0, 0, 0], 3, 'tie at the boundary');
    await check([-0, 0, -0, 0], [0, 0, 0, 0], 2, 'signed zeros');
    await check([0, -0, 0, -0], [0, 0, 0, 0], 3, 'signed zeros (2)');
    await check([NaN, -Infinity, NaN, -1e30], [0, 0, 0, 0], 2, 'NaN below -inf');
    await check([NaN, -Infinity, NaN, -1e30], [0, 0, 0, 0], 3, 'NaN ties to the smaller row');
    await check([Infinity, 3, Infinity, 4], [0, 0, 0, 0], 2, '+inf ties');
    // a tie group straddling the 256-row CUDA blocks
    const T = 600;
    const scores = Array.from({ length: T }, (_, t) => (t % 3 === 0 ? 0.75 : 0.25));
    const modality = Array.from({ length: T }, (_, t) => (t % 7 === 6 ? -1 : 0));
    for (const k of [1, 100, 171, 172, 300, 514]) await check(scores, modality, k, `striped ties k=${k}`);
  });

  test('padding rows are never selected, even with the largest scores', async () => {
    const scores = [9, 1, 8, 2, 7, 3];
    const modality = [-1, 0, -1, 1, -1, 0];
    await check(scores, modality, 3, 'padding with top scores');
    assertExact(await read(modSelect(mk(scores, [6]), ints(modality), 2)), [3, 5]);
  });

  test('k = 0 gives an empty result (also with only padding)', async () => {
    await check([1, 2, 3], [0, 0, 0], 0, 'k=0');
    await check([1, 2, 3], [-1, -1, -1], 0, 'k=0 all padding');
    const empty = hold(modSelect(mk([], [0]), ints([]), 0));
    expect(empty.shape).toEqual([0]);
    expect(Array.from(await empty.toArray())).toEqual([]);
  });

  test('k larger than the valid rows rejects with ERR_RANGE when read (not at the call); later work is unaffected', async () => {
    const cases: [number[], number[], number][] = [
      [[1, 2, 3, 4], [0, -1, 1, -1], 3],
      [[1, 2, 3], [-1, -1, -1], 1],
      [Array.from({ length: 1500 }, (_, t) => t), Array.from({ length: 1500 }, (_, t) => (t % 2 === 0 ? 0 : -1)), 751],
    ];
    for (const [scores, modality, k] of cases) {
      let rows: Tensor | undefined;
      expect(() => {
        rows = modSelect(mk(scores, [scores.length]), ints(modality), k);
      }).not.toThrow();
      hold(rows!);
      await expect(rows!.toArray()).rejects.toMatchObject({ name: 'MomaError', code: 'ERR_RANGE', message: expect.stringMatching(/mod_select/) });
    }
    await check([1, 2, 3, 4], [0, -1, 1, -1], 2, 'after the error');
  });

  test('argument errors: k < 0, k > T, non-integer k (ERR_ARG); dtypes (ERR_DTYPE); shapes (ERR_SHAPE)', () => {
    const s = mk([0.1, 0.2, 0.3], [3]);
    const m = ints([0, 1, 0]);
    throwsCode(() => modSelect(s, m, -1), 'ERR_ARG');
    throwsCode(() => modSelect(s, m, 4), 'ERR_ARG');
    throwsCode(() => modSelect(s, m, 1.5), 'ERR_ARG');
    throwsCode(() => modSelect(s, m, NaN), 'ERR_ARG');
    throwsCode(() => modSelect(mk([], [0]), ints([]), 1), 'ERR_ARG');
    // dtypes: scores must be float32, modality int32
    throwsCode(() => modSelect(ints([1, 2, 3]), m, 1), 'ERR_DTYPE');
    throwsCode(() => modSelect(mk([0.1, 0.2, 0.3], [3], 'bfloat16'), m, 1), 'ERR_DTYPE');
    throwsCode(() => modSelect(s, mk([0, 1, 0], [3]), 1), 'ERR_DTYPE');
    throwsCode(() => modSelect(s, mk([0, 1, 0], [3], 'uint8'), 1), 'ERR_DTYPE');
    // shapes: scores rank 1, modality [T]
    throwsCode(() => modSelect(mk([0.1, 0.2, 0.3, 0.4], [2, 2]), ints([0, 0, 0, 0]), 1), 'ERR_SHAPE');
    throwsCode(() => modSelect(s, ints([0, 1]), 1), 'ERR_SHAPE');
    throwsCode(() => modSelect(s, ints([0, 1, 0, 0]), 1), 'ERR_SHAPE');
    throwsCode(() => modSelect(s, ints([0, 1, 0], [3, 1]), 1), 'ERR_SHAPE');
  });

  if (device !== 'cpu') {
    test('scores and modality on different devices: ERR_DEVICE', () => {
      const m = hold(tensor(Int32Array.from([0, 0, 0]), { device: 'cpu' }));
      throwsCode(() => modSelect(mk([0.1, 0.2, 0.3], [3]), m, 1), 'ERR_DEVICE');
    });
  }
});

describeDevices('segmentStarts', (device) => {
  const { mk, read, keep: hold } = tensorFixture(device);
  const ints = (v: ArrayLike<number>, shape: number[] = [v.length]): Tensor => mk(v, shape, 'int32');

  const check = async (seg: number[], label: string): Promise<void> => {
    const s = hold(segmentStarts(ints(seg)));
    expect(s.dtype).toBe('int32');
    expect(s.shape).toEqual([seg.length]);
    assertExact(await read(s), segmentStartsRef(seg), label);
  };

  /** Runs of random lengths (1..maxRun) with ids that repeat non-monotonically (id of the run before last). */
  function runs(rng: Rng, n: number, maxRun: number): number[] {
    const out: number[] = [];
    let id = 0;
    let prev = 0;
    while (out.length < n) {
      const len = 1 + Math.floor(rng() * maxRun);
      const next = rng() < 0.3 ? prev : id + 1 + Math.floor(rng() * 5);
      prev = id;
      id = next;
      for (let j = 0; j < len && out.length < n; j++) out.push(id);
    }
    return out;
  }

  test.each([0, 1, 2, 1023, 1024, 1025, 3000])('n = %i: exact against the reference (random runs, one run, all distinct)', async (n) => {
    const rng = mulberry32(n + 11);
    await check(runs(rng, n, 9), `n=${n} short runs`);
    await check(runs(rng, n, 700), `n=${n} long runs`);
    await check(new Array<number>(n).fill(5), `n=${n} one run`);
    await check(Array.from({ length: n }, (_, j) => j * 3 - 1000), `n=${n} all distinct`);
  });

  test('runs that cross the 1024-row chunk boundaries', async () => {
    const seg: number[] = [];
    for (let j = 0; j < 3000; j++) seg.push(j < 1000 ? 0 : j < 1100 ? 1 : j < 2047 ? 2 : j < 2048 ? 3 : j < 2049 ? 4 : 5);
    await check(seg, 'chunk-crossing runs');
    // negative ids and alternating ids
    await check(Array.from({ length: 2100 }, (_, j) => (j % 2 === 0 ? -7 : 7)), 'alternating');
  });

  test('argument errors: dtype (ERR_DTYPE) and rank (ERR_SHAPE)', () => {
    throwsCode(() => segmentStarts(mk([0, 0, 1], [3])), 'ERR_DTYPE');
    throwsCode(() => segmentStarts(ints([0, 0, 1, 1], [2, 2])), 'ERR_SHAPE');
  });
});

// ---------------------------------------------------------------------------------------------
// The MoD block

const V = 24;
const IMAGE_FROM = 16; // ids 16..23 are image codes; 0 is PAD, 1 is BOS
const PAD = 0, BOS = 1;
const modalityOf = (id: number): number => (id >= IMAGE_FROM ? 1 : 0);

function randomSequence(rng: Rng, S: number, bosAt: number[] = [], padFrom = S): number[] {
  const s: number[] = [];
  for (let i = 0; i < S; i++) {
    if (i === 0 || bosAt.includes(i)) s.push(BOS);
    else if (i >= padFrom) s.push(PAD);
    else s.push(i % 4 === 0 ? IMAGE_FROM + Math.floor(rng() * 8) : 2 + Math.floor(rng() * 14));
  }
  return s;
}

function disposeBatch(b: Batch): void {
  for (const t of [b.tokens, b.targets, b.positions, b.segStart, b.modality, b.weights, ...b.modalityWeights]) t.dispose();
}

async function host(t: Tensor): Promise<number[]> {
  return Array.from(await t.toArray());
}

describeDevices('MoD block', (device) => {
  const D = 16, H = 2, FF = 24;

  function makeMoD(capacity: number, seed: number): MoDBlock {
    const init: InitOptions = { device, generator: new Generator(seed), std: 0.25 };
    // the MoE FFN routes among the rows it is given (expert choice, c = 1): the subset matters
    const ffn = new MoEFeedForward({
      dModel: D, dFF: FF, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }], device, seed: seed + 1, initStd: 0.25,
    });
    const block = new DecoderBlock({ dModel: D, heads: H, ffn, norm: 'swin', ropeTheta: 10000 }, init);
    return new MoDBlock(block, { dModel: D, capacity }, init);
  }

  function blockOf(mod: MoDBlock): DecoderBlock {
    return (mod as unknown as { block: DecoderBlock }).block;
  }

  interface Fixture {
    batch: Batch;
    ctx: BlockContext;
    x: Tensor;
    xs: number[];
    tokens: number[];
    positions: number[];
    segStart: number[];
    modality: number[];
    T: number;
  }

  async function fixture(seed: number, padding: boolean): Promise<Fixture> {
    const rng = mulberry32(seed);
    const S = 20;
    const seqs = [randomSequence(rng, S, [9]), randomSequence(rng, S, [6, 13], padding ? 15 : S)];
    const batch = makeBatch(seqs, { padId: PAD, bosId: BOS, modalityOf, modalities: 2, device });
    const T = 2 * S;
    const x = randn([T, D], { device, generator: new Generator(seed + 100) });
    const ctx: BlockContext = {
      positions: batch.positions, segStart: batch.segStart, modality: batch.modality, training: false, validRows: batch.counts.rows,
    };
    return {
      batch, ctx, x, xs: await host(x), tokens: await host(batch.tokens), positions: await host(batch.positions),
      segStart: await host(batch.segStart), modality: await host(batch.modality), T,
    };
  }

  function release(f: Fixture): void {
    f.x.dispose();
    disposeBatch(f.batch);
  }

  const run = (fn: () => Tensor): Tensor => tidy(() => noGrad(fn));

  /**
   * ĝ_t = sigmoid(x_t · ŵ) as the device computes it (the op chain of MoDBlock: matmul with ŵᵀ,
   * sigmoid), so that selections and ties are those of the block itself (CUDA matmuls round their
   * inputs to bf16); checked against float64 (CPU: float32 rounding only).
   */
  async function gatesOf(router: Tensor, x: Tensor, xs: number[], T: number): Promise<number[]> {
    const w = await host(router);
    expect(router.shape).toEqual([1, D]);
    const g = await host(run(() => matmul(x, router, { transB: true }).reshape([T]).sigmoid()));
    const g64 = Array.from({ length: T }, (_, t) => {
      let acc = 0;
      for (let i = 0; i < D; i++) acc += (xs[t * D + i] as number) * (w[i] as number);
      return sigmoid(acc);
    });
    assertClose(g, g64, { atol: device === 'cpu' ? 1e-6 : 1e-2, label: 'router gates vs float64' });
    return g;
  }

  test('capacity 1: every valid row is selected and the output is x + ĝ ⊙ (block(x) − x) of the same block', async () => {
    for (const [seed, padding] of [[3, false], [4, false], [5, true]] as [number, boolean][]) {
      const f = await fixture(seed, padding);
      const mod = makeMoD(1, seed);
      expect(mod.selectedRows(f.ctx.validRows)).toBe(f.ctx.validRows);
      const out = run(() => mod.forward(f.x, f.ctx));
      const full = run(() => blockOf(mod).forward(f.x, f.ctx));
      expect(out.shape).toEqual([f.T, D]);
      const [o, b] = [await host(out), await host(full)];
      const g = await gatesOf(mod.namedParameters().get('mod_router.weight')!, f.x, f.xs, f.T);
      const exp: number[] = [];
      const got: number[] = [];
      const padRows: number[] = [];
      const xPad: number[] = [];
      for (let t = 0; t < f.T; t++)
        for (let i = 0; i < D; i++) {
          const x = f.xs[t * D + i] as number;
          if (f.modality[t]! < 0) {
            padRows.push(o[t * D + i] as number);
            xPad.push(x);
            continue;
          }
          got.push(o[t * D + i] as number);
          exp.push(x + (g[t] as number) * ((b[t * D + i] as number) - x));
        }
      assertClose(got, exp, { atol: 1e-5, rtol: 1e-5, label: `seed ${seed}${padding ? ' (trailing padding)' : ''}` });
      // padding rows are never selected: they pass through unchanged
      expect(padRows.length).toBe(padding ? 5 * D : 0);
      assertExact(padRows, xPad, 'padding rows');
      out.dispose();
      full.dispose();
      mod.dispose();
      release(f);
    }
  });

  test('capacity 0.25: only ceil(0.25 · T_valid) rows change; they equal the block run on just them, scaled by ĝ', async () => {
    for (const [seed, padding] of [[7, false], [8, true], [9, true]] as [number, boolean][]) {
      const f = await fixture(seed, padding);
      const mod = makeMoD(0.25, seed);
      const Tv = f.ctx.validRows;
      const k = Math.ceil(0.25 * Tv);
      expect(mod.selectedRows(Tv)).toBe(k);
      const g = await gatesOf(mod.namedParameters().get('mod_router.weight')!, f.x, f.xs, f.T);
      const rows = modSelectRef(g, f.modality, k);

      const out = await host(run(() => mod.forward(f.x, f.ctx)));
      // unselected rows (padding included) are exactly x; selected rows change
      const changed: number[] = [];
      for (let t = 0; t < f.T; t++) {
        let same = true;
        for (let i = 0; i < D; i++) if (!Object.is(out[t * D + i], f.xs[t * D + i])) same = false;
        if (!same) changed.push(t);
      }
      expect(changed).toEqual(rows);
      expect(changed.length).toBe(k);

      // the block on the selected rows alone: original positions, documents as runs of the subset
      const subSeg: number[] = [];
      rows.forEach((r, j) => subSeg.push(j > 0 && f.segStart[r] === f.segStart[rows[j - 1]!] ? subSeg[j - 1]! : j));
      const rowsT = tensor(Int32Array.from(rows), { device });
      const sub = {
        positions: tensor(Int32Array.from(rows.map((r) => f.positions[r]!)), { device }),
        segStart: tensor(Int32Array.from(subSeg), { device }),
        modality: tensor(Int32Array.from(rows.map((r) => f.modality[r]!)), { device }),
      };
      const ys = await host(run(() => blockOf(mod).forward(f.x.indexSelect(0, rowsT), { ...sub, training: false, validRows: k })));
      const got: number[] = [];
      const exp: number[] = [];
      rows.forEach((r, j) => {
        for (let i = 0; i < D; i++) {
          const x = f.xs[r * D + i] as number;
          got.push(out[r * D + i] as number);
          exp.push(x + (g[r] as number) * ((ys[j * D + i] as number) - x));
        }
      });
      assertClose(got, exp, { atol: 1e-5, rtol: 1e-5, label: `seed ${seed}${padding ? ' (padding)' : ''}` });
      for (const t of [rowsT, sub.positions, sub.segStart, sub.modality]) t.dispose();
      mod.dispose();
      release(f);
    }
  });

  test('no valid rows (all padding): the block returns x unchanged', async () => {
    const mod = makeMoD(0.5, 2);
    const T = 6;
    const x = randn([T, D], { device, generator: new Generator(1) });
    const ctx: BlockContext = {
      positions: tensor(Int32Array.from([0, 1, 2, 0, 1, 2]), { device }), segStart: tensor(Int32Array.from([0, 0, 0, 3, 3, 3]), { device }),
      modality: tensor(Int32Array.from([-1, -1, -1, -1, -1, -1]), { device }), training: false, validRows: 0,
    };
    const out = run(() => mod.forward(x, ctx));
    assertExact(await host(out), await host(x));
    for (const t of [x, out, ctx.positions, ctx.segStart, ctx.modality]) t.dispose();
    mod.dispose();
  });

  test('the layers take options objects: defaults apply, a missing option is ERR_ARG naming it', () => {
    const init: InitOptions = { device, generator: new Generator(1), std: 0.25 };
    const norm = new HeadNorm(H, D / H, { device, eps: 1e-3 });
    expect(norm.eps).toBe(1e-3);
    expect(norm.namedParameters().get('weight')!.shape).toEqual([H, D / H]);
    norm.dispose();
    const attn = new Attention({ dModel: D, heads: H }, init);
    expect([attn.headDim, attn.ropeTheta]).toEqual([D / H, 10000]);
    attn.dispose();
    expect(messageOf(() => new HeadNorm(H, D / H, {} as never))).toBe('HeadNorm: options.device is required');
    expect(messageOf(() => new Attention({ dModel: D } as never, init))).toBe('Attention: options.heads is required');
    expect(messageOf(() => new DecoderBlock({ dModel: D, heads: H, norm: 'swin', ropeTheta: 10000 } as never, init))).toBe('DecoderBlock: options.ffn is required');
    const mod = makeMoD(0.5, 2);
    expect(mod.site).toBe('mod');
    expect(messageOf(() => new MoDBlock(blockOf(mod), { dModel: D } as never, init))).toBe('MoDBlock: options.capacity is required');
    const x = randn([2, D], { device, generator: new Generator(1) });
    const rows = tensor(Int32Array.from([1]), { device });
    const ctx = {} as BlockContext;
    expect(messageOf(() => mod.forwardRows(x, { rows } as never, ctx))).toBe('MoDBlock.forwardRows: selected.gate is required');
    expect(messageOf(() => mod.forwardCachedRows(x, { gate: rows, rows } as never, {} as CachedContext))).toBe('MoDBlock.forwardCachedRows: selected.cache is required');
    for (const t of [x, rows]) t.dispose();
    mod.dispose();
  });

  // -------------------------------------------------------------------------------------------
  // Through the Transformer

  const SMOOTH_MOMA = { kind: 'moe' as const, dFF: 24, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }], capacityFactor: 2 };
  const DENSE = { kind: 'dense' as const, dFF: 24 };
  const tiny = (ffn: TransformerConfig['ffn'], extra: Partial<TransformerConfig> = {}): TransformerConfig => ({
    vocabSize: V, dModel: 16, layers: 2, heads: 2, ffn, seed: 5, initStd: 0.1, device, ...extra,
  });

  test('MoD layers are 0, i, 2i, … (interval default 2); mod null has none', () => {
    const routed = (mod: TransformerConfig['mod']): number[] => {
      const model = new Transformer(tiny(DENSE, { layers: 5, mod }));
      const out = [...model.namedParameters().keys()].flatMap((n) => {
        const m = /^layers\.(\d+)\.mod_router\.weight$/.exec(n);
        return m === null ? [] : [Number(m[1])];
      });
      model.dispose();
      return out;
    };
    expect(routed({ interval: 2, capacity: 0.5 })).toEqual([0, 2, 4]);
    expect(routed({})).toEqual([0, 2, 4]);
    expect(routed({ interval: 1 })).toEqual([0, 1, 2, 3, 4]);
    expect(routed({ interval: 3 })).toEqual([0, 3]);
    expect(routed({ interval: 7 })).toEqual([0]);
    expect(routed(null)).toEqual([]);
    for (const bad of [{ capacity: 0 }, { capacity: 1.5 }, { interval: 0 }, { interval: 1.5 }]) {
      expect(() => new Transformer(tiny(DENSE, { mod: bad }))).toThrow(MomaError);
    }
  });

  // float32 finite differences need float32 math: CUDA matmuls round to bf16, so these run on the CPU only
  const FD_CASES = [
    ['dense', 1, DENSE], ['moma 2t2i, c = 2', 1, SMOOTH_MOMA], ['dense', 0.5, DENSE], ['moma 2t2i, c = 2', 0.5, SMOOTH_MOMA],
  ] as const;
  (device === 'cpu' ? test.each : test.skip.each)(FD_CASES)(
    '%s, mod {interval 2, capacity %s}: the gradient matches a directional finite difference of the loss', async (_, capacity, ffn) => {
      const model = new Transformer(tiny(ffn, { mod: { interval: 2, capacity } }));
      const names = [...model.namedParameters().keys()];
      expect(names).toContain('layers.0.mod_router.weight');
      expect(names.some((n) => n.startsWith('layers.1.mod_router'))).toBe(false);
      const rng0 = mulberry32(1);
      const seqs = [randomSequence(rng0, 12, [7]), randomSequence(rng0, 12)];
      const batch = makeBatch(seqs, { padId: PAD, bosId: BOS, modalityOf, modalities: 2, device });
      const lossT = tidy(() => {
        const { loss } = model.loss(batch);
        backward(loss);
        return loss;
      });
      const loss0 = await lossT.item();
      lossT.dispose();
      const params = [...model.namedParameters()];
      // the MoD router gets a gradient
      const routerGrad = await host(model.namedParameters().get('layers.0.mod_router.weight')!.grad!);
      expect(routerGrad.some((v) => v !== 0)).toBe(true);
      const eps = 1e-3;
      const check = await directionalCheck(model, () => model.loss(batch).loss, { eps, device });
      const { dirs, analytic } = check;
      if (capacity < 1) {
        // Layer 0's gates depend on the embedding and the router only: the selection (float64,
        // with a margin at the boundary between different tokens) must be the same at every
        // perturbation the finite difference uses, so that the loss is smooth there.
        const index = new Map(params.map(([n], i) => [n, i]));
        const emb = await host(model.namedParameters().get('embed.weight')!);
        const w = await host(model.namedParameters().get('layers.0.mod_router.weight')!);
        const de = dirs[index.get('embed.weight')!]!, dw = dirs[index.get('layers.0.mod_router.weight')!]!;
        const tokens = seqs.flat();
        const modality = tokens.map((id) => (id === PAD ? -1 : modalityOf(id)));
        const k = Math.ceil(capacity * modality.filter((m) => m >= 0).length);
        const selectionAt = (h: number): string => {
          const g = tokens.map((id) => {
            let acc = 0;
            for (let i = 0; i < 16; i++) acc += (emb[id * 16 + i]! + h * eps * de[id * 16 + i]!) * (w[i]! + h * eps * dw[i]!);
            return sigmoid(acc);
          });
          const order = [...g.keys()].filter((t) => modality[t]! >= 0).sort((a, b) => (ranksAbove(g[a]!, a, g[b]!, b) ? -1 : 1));
          const [a, b] = [order[k - 1]!, order[k]!];
          if (tokens[a] !== tokens[b]) expect(Math.abs(g[a]! - g[b]!)).toBeGreaterThan(1e-5);
          return modSelectRef(g, modality, k).join();
        };
        const base = selectionAt(0);
        for (const h of [-1, -0.5, 0.5, 1]) expect(selectionAt(h)).toBe(base);
      }
      const central = (h: number): Promise<number> => check.central(h);
      // Central differences at eps and eps / 2, Richardson-extrapolated: with a ±1 direction on every
      // parameter the O(eps²) term is large here (the per-module directional derivatives nearly
      // cancel: at eps 1e-3 alone the error is ~0.02 on a total of ~0.16, shrinking 4x per halving
      // of eps, for the plain model too), and the extrapolation removes it.
      const fd1 = await central(1);
      const fd2 = await central(0.5);
      const fd = (4 * fd2 - fd1) / 3;
      expect(Number.isFinite(loss0)).toBe(true);
      expect(Math.abs(fd - analytic)).toBeLessThanOrEqual(0.02 * Math.abs(analytic) + 1e-3);
      check.dispose();
      disposeBatch(batch);
      model.dispose();
    });

  /**
   * One MoD layer (capacity 0.5). Sequence 0 is document B (rows 0..11) then document A (rows
   * 12..23); sequence 1 is one more document. A token of B that the MoD router selects is
   * replaced by another token of the same modality that keeps the selection (the router gates as
   * the device computes them, selected by the reference); A's rows (and sequence 1) must not
   * change, B's later rows must; without the document boundary the change reaches A's rows.
   */
  test.each([['dense', DENSE], ['moma 2t2i, c = 2', SMOOTH_MOMA]] as const)(
    '%s, mod capacity 0.5: selected rows attend only within their document', async (_, ffn) => {
      const S = 24, SPLIT = 12;
      const model = new Transformer(tiny(ffn, { layers: 1, mod: { interval: 1, capacity: 0.5 }, initStd: 0.3, seed: 11 }));
      const emb = model.namedParameters().get('embed.weight')!;
      const w = model.namedParameters().get('layers.0.mod_router.weight')!;
      // layer 0's gates: the embedding rows of the tokens through the MoD router (MoDBlock's op chain)
      const gatesOfIds = async (ids: number[]): Promise<number[]> => {
        const idsT = tensor(Int32Array.from(ids), { device });
        const g = await host(run(() => matmul(emb.indexSelect(0, idsT), w, { transB: true }).reshape([ids.length]).sigmoid()));
        idsT.dispose();
        return g;
      };
      const rng = mulberry32(21);
      const seq0 = randomSequence(rng, S, [SPLIT]);
      const seq1 = randomSequence(rng, S);
      const all = [...seq0, ...seq1];
      const T = all.length;
      const modality = all.map((id) => (id === PAD ? -1 : modalityOf(id)));
      const k = Math.ceil(0.5 * T);
      const selectionOf = async (ids: number[]): Promise<number[]> => modSelectRef(await gatesOfIds(ids), modality, k);
      const base = await selectionOf(all);
      // a selected row of B and a replacement that keeps the selection
      let change: [number, number] | null = null;
      for (let r = 1; r < SPLIT && change === null; r++) {
        if (!base.includes(r)) continue;
        for (let v = 2; v < V && change === null; v++) {
          if (v === all[r] || modalityOf(v) !== modalityOf(all[r]!)) continue;
          const ids = all.slice();
          ids[r] = v;
          if ((await selectionOf(ids)).join() === base.join()) change = [r, v];
        }
      }
      expect(change).not.toBeNull();
      const [r, v] = change!;
      // A has selected rows that could (wrongly) see row r
      expect(base.some((t) => t >= SPLIT && t < S)).toBe(true);

      const logitsOf = async (seqs: number[][]): Promise<number[]> => {
        const batch = makeBatch(seqs, { padId: PAD, bosId: BOS, modalityOf, modalities: 2, device });
        const out = await host(run(() => model.logits(batch)));
        disposeBatch(batch);
        return out;
      };
      const changed0 = seq0.slice();
      changed0[r] = v;
      const before = await logitsOf([seq0, seq1]);
      const after = await logitsOf([changed0, seq1]);
      const rowsOf = (vals: number[], from: number, to: number): number[] => vals.slice(from * V, to * V);
      // document A of sequence 0 and all of sequence 1: unchanged
      assertClose(rowsOf(after, SPLIT, T), rowsOf(before, SPLIT, T), { atol: 1e-6, label: `rows ${SPLIT}.. after changing row ${r}` });
      // document B from row r on: changed (the change is visible at all)
      let diff = 0;
      for (let i = r * V; i < SPLIT * V; i++) diff = Math.max(diff, Math.abs(after[i]! - before[i]!));
      expect(diff).toBeGreaterThan(1e-4);
      // control: without the document boundary the same change reaches A's rows
      const joined0 = seq0.slice();
      joined0[SPLIT] = 2 + (seq0[SPLIT + 1]! % 14);
      const joinedChanged = joined0.slice();
      joinedChanged[r] = v;
      const b2 = await logitsOf([joined0, seq1]);
      const a2 = await logitsOf([joinedChanged, seq1]);
      let leak = 0;
      for (let i = (SPLIT + 1) * V; i < S * V; i++) leak = Math.max(leak, Math.abs(a2[i]! - b2[i]!));
      expect(leak).toBeGreaterThan(1e-5);
      model.dispose();
    });
});
