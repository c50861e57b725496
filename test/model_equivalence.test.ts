/**
 * Model equivalences (SPEC.md §2):
 *  (a) "1t1i" (one expert per modality, no router) is a dense SwiGLU per modality: the MoE layer
 *      against two SwiGLU computations with the experts' weight slices (plain matmuls on each
 *      modality's rows), and a whole 1t1i Transformer against the same decoder assembled from
 *      its modules with a per-modality dense FFN (and, with both experts equal, against the dense
 *      Transformer);
 *  (b) with capacity factor E_g every expert takes every row of its group, so the layer is the
 *      gate-weighted sum of all its experts (float64 reference).
 */
import {
  Batch, DecoderBlock, Embedding, F, Generator, Linear, MoEFeedForward, RMSNorm, SwiGLU, Tensor, Transformer, TransformerConfig,
  makeBatch, matmul, noGrad, tensor, tidy,
} from '../lib';
import type { InitOptions, MoeGroupConfig } from '../lib';
import type { BlockContext } from '../lib/model/layers';
import { describeDevices } from './support/devices';
import { Rng, assertClose, mulberry32, randomF32 } from './support/reference';
import { Disposer } from './support/reference';

const D = 16, FF = 24;

async function host(t: Tensor): Promise<number[]> {
  return Array.from(await t.toArray());
}

function maxAbs(v: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i] as number));
  return m;
}

/** [R, C] row-major -> its transpose [C, R]. */
function transposeHost(a: ArrayLike<number>, R: number, C: number): Float32Array {
  const out = new Float32Array(R * C);
  for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) out[c * R + r] = a[r * C + c] as number;
  return out;
}

function randomModality(rng: Rng, T: number, M: number, padShare = 0.15): number[] {
  const out = Array.from({ length: T }, () => (rng() < padShare ? -1 : Math.floor(rng() * M)));
  for (let m = 0; m < Math.min(M, T); m++) out[(m * 5 + 1) % T] = m;
  return out;
}

const silu = (v: number): number => v / (1 + Math.exp(-v));
const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));

describeDevices('model equivalences', (device) => {
  const cuda = device !== 'cpu';
  /** max |got − exp| ≤ TOL · max |exp|: float32 on the CPU; CUDA GEMMs round their inputs to bf16 */
  const TOL = cuda ? 2e-2 : 1e-5;
  const run = (fn: () => Tensor): Tensor => tidy(() => noGrad(fn));
  const bag = new Disposer();
  const hold = <T extends { dispose(): void }>(x: T): T => bag.keep(x);
  afterEach(() => bag.disposeAll());

  function assertRel(got: ArrayLike<number>, exp: ArrayLike<number>, label: string, tol = TOL): void {
    const scale = maxAbs(exp);
    expect(scale).toBeGreaterThan(0);
    assertClose(got, exp, { atol: tol * scale, label: `${label} (|ref|max ${scale.toPrecision(3)})` });
  }

  /** An MoE layer with O(1)-scaled random weights (set through setParameter). */
  function moeLayer(groups: MoeGroupConfig[], seed: number, extra: { capacityFactor?: number; router?: 'sigmoid' | 'softmax' } = {}): MoEFeedForward {
    const layer = hold(new MoEFeedForward({ dModel: D, dFF: FF, groups, device, seed, ...extra }));
    const rng = mulberry32(seed);
    const p = layer.namedParameters();
    const E = p.get('w1')!.shape[0] as number;
    const a1 = Math.sqrt(3 / D), a2 = Math.sqrt(3 / FF);
    expect(p.get('router')!.shape).toEqual([D, E]);
    noGrad(() => {
      layer.setParameter('w1', tensor(Float32Array.from(randomF32(rng, E * D * FF, -a1, a1)), { shape: [E, D, FF], device }));
      layer.setParameter('w3', tensor(Float32Array.from(randomF32(rng, E * D * FF, -a1, a1)), { shape: [E, D, FF], device }));
      layer.setParameter('w2', tensor(Float32Array.from(randomF32(rng, E * FF * D, -a2, a2)), { shape: [E, FF, D], device }));
      layer.setParameter('router', tensor(Float32Array.from(randomF32(rng, D * E, -3 * a1, 3 * a1)), { shape: [D, E], device }));
    });
    return layer;
  }

  // -------------------------------------------------------------------------------------------
  // (a) 1t1i = a dense SwiGLU per modality

  test('(a) MoE 1t1i equals a dense SwiGLU per modality with that modality\'s expert weights (plain matmuls)', async () => {
    for (const [T, seed] of [[1, 1], [7, 2], [37, 3], [200, 4]] as [number, number][]) {
      const layer = moeLayer([{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }], seed);
      const rng = mulberry32(seed + 50);
      const modality = randomModality(rng, T, 2);
      const x = hold(tensor(Float32Array.from(randomF32(rng, T * D)), { shape: [T, D], device }));
      const m = hold(tensor(Int32Array.from(modality), { device }));
      const y = await host(run(() => layer.forward(x, m)));
      expect(y.length).toBe(T * D);
      const p = layer.namedParameters();
      const expected = new Array<number>(T * D).fill(0);
      for (const mod of [0, 1]) {
        const rows = modality.flatMap((v, t) => (v === mod ? [t] : []));
        if (rows.length === 0) continue;
        const idx = hold(tensor(Int32Array.from(rows), { device }));
        const ym = await host(run(() => {
          const slice = (name: string, r: number, c: number): Tensor => p.get(name)!.slice(0, mod, mod + 1).reshape([r, c]);
          const xm = x.indexSelect(0, idx);
          const h1 = matmul(xm, slice('w1', D, FF));
          const h3 = matmul(xm, slice('w3', D, FF));
          const a = h1.mul(h1.sigmoid()).mul(h3);
          return matmul(a, slice('w2', FF, D));
        }));
        rows.forEach((t, j) => {
          for (let i = 0; i < D; i++) expected[t * D + i] = ym[j * D + i] as number;
        });
      }
      assertRel(y, expected, `T=${T}`);
      // padding rows get no FFN output (only the residual passes)
      for (let t = 0; t < T; t++) if (modality[t]! < 0) for (let i = 0; i < D; i++) expect(y[t * D + i]).toBe(0);
    }
  });

  const V = 24, PAD = 0, BOS = 1, IMAGE_FROM = 16;
  const modalityOf = (id: number): number => (id >= IMAGE_FROM ? 1 : 0);
  const GROUPS_1T1I: MoeGroupConfig[] = [{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }];

  function batchOf(seed: number): Batch {
    const rng = mulberry32(seed);
    const seq = (pad: number, bos: number[]): number[] => Array.from({ length: 16 }, (_, s) =>
      s === 0 || bos.includes(s) ? BOS : s >= 16 - pad ? PAD : s % 3 === 0 ? IMAGE_FROM + Math.floor(rng() * 8) : 2 + Math.floor(rng() * 14));
    return makeBatch([seq(0, [9]), seq(4, [])], { padId: PAD, bosId: BOS, modalityOf, modalities: 2, device });
  }

  function disposeBatch(b: Batch): void {
    for (const t of [b.tokens, b.targets, b.positions, b.segStart, b.modality, b.weights, ...b.modalityWeights]) t.dispose();
  }

  /** A dense SwiGLU per modality: rows of modality m go through experts[m]; padding rows get 0. */
  class PerModalitySwiGLU extends SwiGLU {
    readonly experts: SwiGLU[];
    rows: Tensor[] = [];

    constructor(init: InitOptions) {
      super(D, FF, init); // its own weights stay unused
      this.experts = [0, 1].map((m) => this.addModule(`expert${m}`, new SwiGLU(D, FF, init)));
    }

    override forward(x: Tensor): Tensor {
      let y = F.constantLike(x, 0);
      this.rows.forEach((idx, m) => {
        if (idx.numel > 0) y = F.scatterAddRows(y, idx, this.experts[m]!.forward(F.gatherRows(x, idx)));
      });
      return y;
    }
  }

  /** The decoder of SPEC §1 assembled from the library's modules, with PerModalitySwiGLU FFNs. */
  class SplitDecoder {
    readonly embed: Embedding;
    readonly blocks: DecoderBlock[];
    readonly ffns: PerModalitySwiGLU[];
    readonly norm: RMSNorm;
    readonly head: Linear;

    constructor(layers: number) {
      const init: InitOptions = { device, generator: new Generator(99), std: 0.1 };
      this.embed = new Embedding(V, D, init);
      this.ffns = Array.from({ length: layers }, () => new PerModalitySwiGLU(init));
      this.blocks = this.ffns.map((f) => new DecoderBlock({ dModel: D, heads: 2, ffn: f, norm: 'swin', ropeTheta: 10000 }, init));
      this.norm = new RMSNorm(D, device);
      this.head = new Linear(D, V, init);
    }

    /** Copies the Transformer's weights (1t1i: expert m of layer i becomes ffns[i].experts[m]). */
    async load(model: Transformer): Promise<void> {
      const p = model.namedParameters();
      const set = (mod: { setParameter(n: string, t: Tensor): void }, name: string, t: Tensor): void => noGrad(() => mod.setParameter(name, t));
      set(this.embed, 'weight', p.get('embed.weight')!.clone());
      set(this.norm, 'weight', p.get('norm.weight')!.clone());
      set(this.head, 'weight', p.get('lm_head.weight')!.clone());
      for (const [i, block] of this.blocks.entries()) {
        for (const [name] of block.namedParameters()) {
          if (name.startsWith('ffn.')) continue;
          set(block, name, p.get(`layers.${i}.${name}`)!.clone());
        }
        for (const [w, r, c] of [['w1', D, FF], ['w3', D, FF], ['w2', FF, D]] as [string, number, number][]) {
          const all = await host(p.get(`layers.${i}.ffn.${w}`)!);
          for (const m of [0, 1]) {
            // MoE stores [in, out] per expert; Linear's weight is [out, in]
            const slice = all.slice(m * r * c, (m + 1) * r * c);
            set(block, `ffn.expert${m}.${w}.weight`, tensor(transposeHost(slice, r, c), { shape: [c, r], device }));
          }
        }
      }
    }

    loss(batch: Batch, modality: number[]): { loss: Tensor; logits: Tensor } {
      const rows = [0, 1].map((m) => tensor(Int32Array.from(modality.flatMap((v, t) => (v === m ? [t] : []))), { device }));
      for (const f of this.ffns) f.rows = rows;
      const ctx: BlockContext = {
        positions: batch.positions, segStart: batch.segStart, modality: batch.modality, training: false, validRows: batch.counts.rows,
      };
      let x = this.embed.forward(batch.tokens);
      for (const b of this.blocks) x = b.forward(x, ctx);
      const logits = this.head.forward(this.norm.forward(x));
      return { loss: F.crossEntropyLoss(logits, batch.targets, { weights: batch.weights }).loss, logits };
    }

    dispose(): void {
      for (const m of [this.embed, ...this.blocks, this.norm, this.head]) m.dispose();
    }
  }

  const config = (ffn: TransformerConfig['ffn']): TransformerConfig => ({
    vocabSize: V, dModel: D, layers: 2, heads: 2, ffn, seed: 7, initStd: 0.2, device,
  });

  test('(a) a 1t1i Transformer gives the loss (and logits) of the decoder with a dense SwiGLU per modality', async () => {
    for (const seed of [1, 2]) {
      const model = hold(new Transformer(config({ kind: 'moe', dFF: FF, groups: GROUPS_1T1I })));
      const split = hold(new SplitDecoder(2));
      await split.load(model);
      const batch = batchOf(seed);
      const modality = await host(batch.modality);
      expect(modality.filter((m) => m === 1).length).toBeGreaterThan(0);
      expect(modality.filter((m) => m === -1).length).toBe(4);
      const [lossA, logitsA] = tidy(() => noGrad(() => {
        const out = model.loss(batch);
        return [out.loss, model.logits(batch)];
      }));
      const [lossB, logitsB] = tidy(() => noGrad(() => {
        const out = split.loss(batch, modality);
        return [out.loss, out.logits];
      }));
      const [a, b] = [await lossA!.item(), await lossB!.item()];
      expect(Number.isFinite(a)).toBe(true);
      expect(Math.abs(a - b)).toBeLessThanOrEqual(cuda ? 2e-3 : 1e-5);
      // logits of the non-padding rows
      const [la, lb] = [await host(logitsA!), await host(logitsB!)];
      const valid = (v: number[]): number[] => v.filter((_, i) => modality[Math.floor(i / V)]! >= 0);
      assertRel(valid(la), valid(lb), `seed ${seed} logits`, cuda ? 2e-2 : 1e-5);
      for (const t of [lossA!, logitsA!, lossB!, logitsB!]) t.dispose();
      disposeBatch(batch);
    }
  });

  test('(a) with both experts equal to a dense FFN, the 1t1i Transformer gives the dense Transformer\'s losses', async () => {
    const dense = hold(new Transformer(config({ kind: 'dense', dFF: FF })));
    const moe = hold(new Transformer(config({ kind: 'moe', dFF: FF, groups: GROUPS_1T1I })));
    const p = dense.namedParameters();
    for (const [name, t] of moe.namedParameters()) {
      const m = /^layers\.(\d+)\.ffn\.(w1|w2|w3|router)$/.exec(name);
      if (m === null) {
        noGrad(() => moe.setParameter(name, p.get(name)!.clone()));
        continue;
      }
      if (m[2] === 'router') continue; // single-expert groups: no router
      const w = await host(p.get(`layers.${m[1]}.ffn.${m[2]}.weight`)!); // [out, in]
      const [out, inp] = p.get(`layers.${m[1]}.ffn.${m[2]}.weight`)!.shape as number[];
      const wt = transposeHost(w, out!, inp!); // [in, out]
      const both = new Float32Array(2 * wt.length);
      both.set(wt, 0);
      both.set(wt, wt.length);
      noGrad(() => moe.setParameter(name, tensor(both, { shape: t.shape as number[], device })));
    }
    const batch = batchOf(3);
    const [a, b] = [dense, moe].map((model) => tidy(() => noGrad(() => {
      const out = model.loss(batch);
      return [out.loss, ...out.perModality];
    })));
    for (let i = 0; i < 3; i++) {
      const [x, y] = [await a![i]!.item(), await b![i]!.item()];
      expect(Number.isFinite(x)).toBe(true);
      expect(Math.abs(x - y)).toBeLessThanOrEqual(cuda ? 2e-3 : 1e-5);
    }
    for (const t of [...a!, ...b!]) t.dispose();
    disposeBatch(batch);
  });

  // -------------------------------------------------------------------------------------------
  // (b) capacity factor E_g: every expert takes every row of its group

  /** y_t = Σ_e gate_{t,e} FFN_e(x_t) over the experts of t's group, float64. */
  function allExpertsRef(p: Record<'w1' | 'w2' | 'w3' | 'router', number[]>, experts: number[], groupOfModality: number[], fn: 'sigmoid' | 'softmax',
    x: number[], modality: number[], T: number): number[] {
    const E = experts.reduce((a, b) => a + b, 0);
    const first = experts.map((_, g) => experts.slice(0, g).reduce((a, b) => a + b, 0));
    const y = new Array<number>(T * D).fill(0);
    for (let t = 0; t < T; t++) {
      const mod = modality[t]!;
      if (mod < 0 || groupOfModality[mod]! < 0) continue;
      const g = groupOfModality[mod]!;
      const e0 = first[g]!, n = experts[g]!;
      const logits: number[] = [];
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let i = 0; i < D; i++) acc += x[t * D + i]! * p.router[i * E + e0 + j]!;
        logits.push(acc);
      }
      let gates: number[];
      if (n === 1) gates = [1];
      else if (fn === 'sigmoid') gates = logits.map(sigmoid);
      else {
        const mx = Math.max(...logits);
        const ex = logits.map((l) => Math.exp(l - mx));
        const s = ex.reduce((a, b) => a + b, 0);
        gates = ex.map((v) => v / s);
      }
      for (let j = 0; j < n; j++) {
        const e = e0 + j;
        const a = new Array<number>(FF).fill(0);
        for (let k = 0; k < FF; k++) {
          let h1 = 0, h3 = 0;
          for (let i = 0; i < D; i++) {
            h1 += x[t * D + i]! * p.w1[(e * D + i) * FF + k]!;
            h3 += x[t * D + i]! * p.w3[(e * D + i) * FF + k]!;
          }
          a[k] = silu(h1) * h3;
        }
        for (let i = 0; i < D; i++) {
          let acc = 0;
          for (let k = 0; k < FF; k++) acc += a[k]! * p.w2[(e * FF + k) * D + i]!;
          y[t * D + i]! += gates[j]! * acc;
        }
      }
    }
    return y;
  }

  const ALL_EXPERTS: [string, MoeGroupConfig[], number[], number[], 'sigmoid' | 'softmax'][] = [
    ['moma 3t2i, c = 3', [{ modality: 'text', experts: 3 }, { modality: 'image', experts: 2 }], [3, 2], [0, 1], 'sigmoid'],
    ['moe 4x (one mixed-modal group), c = 4', [{ modality: ['text', 'image'], experts: 4 }], [4], [0, 0], 'sigmoid'],
    ['moma 2t1i (single-expert image group), c = 2', [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 1 }], [2, 1], [0, 1], 'sigmoid'],
    ['moma 3t2i softmax router, c = 3', [{ modality: 'text', experts: 3 }, { modality: 'image', experts: 2 }], [3, 2], [0, 1], 'softmax'],
  ];

  test.each(ALL_EXPERTS)('(b) %s: the layer is the gate-weighted sum of all experts of the row\'s group', async (_, groups, experts, gom, fn) => {
    const c = Math.max(...experts);
    for (const [T, seed] of [[1, 11], [9, 12], [64, 13]] as [number, number][]) {
      const layer = moeLayer(groups, seed, { capacityFactor: c, router: fn });
      const rng = mulberry32(seed + 7);
      const modality = randomModality(rng, T, 2);
      const xs = Array.from(randomF32(rng, T * D));
      const x = hold(tensor(Float32Array.from(xs), { shape: [T, D], device }));
      const m = hold(tensor(Int32Array.from(modality), { device }));
      const y = await host(run(() => layer.forward(x, m)));
      const named = layer.namedParameters();
      const p = {
        w1: await host(named.get('w1')!), w2: await host(named.get('w2')!), w3: await host(named.get('w3')!), router: await host(named.get('router')!),
      };
      const exp = allExpertsRef(p, experts, gom, fn, xs, modality, T);
      assertRel(y, exp, `T=${T}`);
    }
  });

  test('(b) a layer with capacity factor below E_g is not the all-experts sum (the check has teeth)', async () => {
    const groups: MoeGroupConfig[] = [{ modality: 'text', experts: 3 }, { modality: 'image', experts: 2 }];
    const T = 64;
    const layer = moeLayer(groups, 5, { capacityFactor: 1 });
    const rng = mulberry32(9);
    const modality = randomModality(rng, T, 2);
    const xs = Array.from(randomF32(rng, T * D));
    const x = hold(tensor(Float32Array.from(xs), { shape: [T, D], device }));
    const m = hold(tensor(Int32Array.from(modality), { device }));
    const y = await host(run(() => layer.forward(x, m)));
    const named = layer.namedParameters();
    const p = {
      w1: await host(named.get('w1')!), w2: await host(named.get('w2')!), w3: await host(named.get('w3')!), router: await host(named.get('router')!),
    };
    const exp = allExpertsRef(p, [3, 2], [0, 1], 'sigmoid', xs, modality, T);
    let diff = 0;
    for (let i = 0; i < exp.length; i++) diff = Math.max(diff, Math.abs(y[i]! - exp[i]!));
    expect(diff).toBeGreaterThan(0.05 * maxAbs(exp));
  });
});
