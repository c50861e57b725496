/**
 * Causal mode (SPEC §4) on a small MoMa + MoD model with awkward sizes (text 2 experts, image 3,
 * MoD on layers 0 and 2 at c_d 0.5): the new autograd pieces against float64 references and
 * finite differences, the auxiliary routers' function, causality (changing later tokens never
 * changes earlier outputs, while training mode does), causal routing that selects everything equals
 * training mode with capacities that take everything, the KV-cache decode equal to the full causal
 * forward, and generation that keeps every image exactly tokensPerImage codes long.
 */
import { AuxRouters, Batch, CausalRouting, F, KVCache, ModalityConstraint, Tensor, Transformer, TransformerConfig, backward, buildVocabLayout, disposeBatch, full, generateTokens, makeBatch, modalityOfId, newAuxRouters, noGrad, tensor, tidy } from '../lib';
import type { DeviceName, ImageTokenizerInfo } from '../lib';
import { describeDevices } from './support/devices';
import { throwsCode } from './support/errors';
import { mulberry32 } from './support/reference';

const image: ImageTokenizerInfo = { kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: 'ab'.repeat(32), imageSize: 8, patchSize: 4, codebookSize: 9, tokensPerImage: 4 };
const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 11 }, image);
const V = layout.size; // 5 specials + 11 text + 9 codes = 25
const modalityOf = (id: number): number => modalityOfId(layout, id);
const text = (i: number): number => layout.text.offset + (i % 11);
const code = (i: number): number => layout.image!.offset + (i % 9);

function config(device: DeviceName, overrides: Partial<TransformerConfig> = {}): TransformerConfig {
  return {
    vocabSize: V, dModel: 12, layers: 3, heads: 2, seed: 7, initStd: 0.3, device,
    ffn: { kind: 'moe', dFF: 10, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 3 }] },
    mod: { interval: 2, capacity: 0.5 },
    ...overrides,
  };
}

/** A document of text and one image, 14 tokens. */
function documentIds(seed: number): number[] {
  const rng = mulberry32(seed);
  const r = (n: number): number => Math.floor(rng() * n);
  return [layout.bosId, text(r(11)), text(r(11)), text(r(11)), layout.boiId, code(r(9)), code(r(9)), code(r(9)), code(r(9)), layout.eoiId, text(r(11)), text(r(11)), text(r(11)), layout.eosId];
}

function batchOf(sequences: number[][], device: DeviceName): Batch {
  return makeBatch(sequences, { padId: layout.padId, bosId: layout.bosId, modalityOf, modalities: 2, device, vocabSize: V });
}

async function rowsOf(t: Tensor, width: number): Promise<number[][]> {
  const a = Array.from(await t.toArray());
  t.dispose();
  return Array.from({ length: a.length / width }, (_, i) => a.slice(i * width, (i + 1) * width));
}

const maxDiff = (a: number[], b: number[]): number => a.reduce((m, v, i) => Math.max(m, Math.abs(v - (b[i] as number))), 0);

/** Routing that selects every (row, expert) and every MoD row. */
const selectAll: CausalRouting = {
  expertSelect: (_site, v) => full([v.shape[0] as number, 5], 1, { device: v.device }),
  depthSelect: (_site, x) => full([x.shape[0] as number], 1, { device: x.device }),
};

describe('autograd pieces of the auxiliary routers', () => {
  const xs = [-30, -4.5, -1, -0.25, 0, 1e-3, 0.7, 2, 9, 40];
  const sig = (x: number): number => 1 / (1 + Math.exp(-x));

  test('silu: value and gradient against float64 and central differences', async () => {
    const x = tensor(Float32Array.from(xs));
    x.requiresGrad = true;
    const y = F.silu(x);
    const w = tensor(Float32Array.from(xs, (_, i) => 0.3 + 0.1 * i));
    backward(y, w);
    const [yv, g] = [await y.toArray(), await x.grad!.toArray()];
    const silu = (v: number): number => v * sig(v);
    xs.forEach((v, i) => {
      expect(yv[i]).toBeCloseTo(silu(Math.fround(v)), 5);
      const h = 1e-5;
      const numeric = ((silu(v + h) - silu(v - h)) / (2 * h)) * (0.3 + 0.1 * i);
      expect(Math.abs((g[i] as number) - numeric)).toBeLessThan(1e-5 * Math.max(1, Math.abs(numeric)));
    });
    for (const t of [x, y, w]) t.dispose();
  });

  test('binary cross-entropy with logits: value (stable at ±40) and gradient', async () => {
    const targets = xs.map((_, i) => (i % 3 === 0 ? 1 : 0));
    const weights = xs.map((_, i) => 0.05 * (i + 1));
    const z = tensor(Float32Array.from(xs), { shape: [2, 5] });
    z.requiresGrad = true;
    const y = tensor(Float32Array.from(targets), { shape: [2, 5] });
    const w = tensor(Float32Array.from(weights), { shape: [2, 5] });
    const { loss, terms } = F.binaryCrossEntropyWithLogits(z, y, w);
    tidy(() => backward(loss));
    const bce = (v: number, t: number): number => -(t * Math.log(sig(v)) + (1 - t) * Math.log(1 - sig(v)));
    const expectLoss = xs.reduce((s, v, i) => s + (weights[i] as number) * (Math.abs(v) > 30 ? Math.max(v, 0) - (targets[i] as number) * v + Math.log1p(Math.exp(-Math.abs(v))) : bce(v, targets[i] as number)), 0);
    expect(await loss.item()).toBeCloseTo(expectLoss, 4);
    expect((await terms.toArray()).every(Number.isFinite)).toBe(true);
    const g = await z.grad!.toArray();
    xs.forEach((v, i) => expect(g[i]).toBeCloseTo((weights[i] as number) * (sig(v) - (targets[i] as number)), 6));
    throwsCode(() => F.binaryCrossEntropyWithLogits(z, tensor(new Float32Array(3)), w), 'ERR_SHAPE');
    for (const t of [z, y, w, loss, terms]) t.dispose();
  });
});

describeDevices('causal mode', (device) => {
  const cuda = device !== 'cpu';

  test('auxiliary routers: names, shapes and a = sigmoid(SiLU(v·A1)·A2) against float64', async () => {
    const model = new Transformer(config(device));
    const aux = newAuxRouters(model, 3);
    expect(model.routingSites()).toEqual({
      experts: [
        { site: 'layers.0.block.ffn', layout: { experts: [2, 3], groupOfModality: [0, 1] } },
        { site: 'layers.1.ffn', layout: { experts: [2, 3], groupOfModality: [0, 1] } },
        { site: 'layers.2.block.ffn', layout: { experts: [2, 3], groupOfModality: [0, 1] } },
      ],
      depth: [{ site: 'layers.0' }, { site: 'layers.2' }],
    });
    const names = [...aux.namedParameters()].map(([n, t]) => `${n} [${t.shape.join(',')}]`);
    expect(names).toEqual([
      'layers.0.block.ffn.aux_router.0.a1.weight [6,12]', 'layers.0.block.ffn.aux_router.0.a2.weight [2,6]',
      'layers.0.block.ffn.aux_router.1.a1.weight [6,12]', 'layers.0.block.ffn.aux_router.1.a2.weight [3,6]',
      'layers.1.ffn.aux_router.0.a1.weight [6,12]', 'layers.1.ffn.aux_router.0.a2.weight [2,6]',
      'layers.1.ffn.aux_router.1.a1.weight [6,12]', 'layers.1.ffn.aux_router.1.a2.weight [3,6]',
      'layers.2.block.ffn.aux_router.0.a1.weight [6,12]', 'layers.2.block.ffn.aux_router.0.a2.weight [2,6]',
      'layers.2.block.ffn.aux_router.1.a1.weight [6,12]', 'layers.2.block.ffn.aux_router.1.a2.weight [3,6]',
      'layers.0.mod_aux_router.a1.weight [6,12]', 'layers.0.mod_aux_router.a2.weight [1,6]',
      'layers.2.mod_aux_router.a1.weight [6,12]', 'layers.2.mod_aux_router.a2.weight [1,6]',
    ]);
    const rng = mulberry32(4);
    const N = 7;
    const vHost = Float32Array.from({ length: N * 12 }, () => rng() * 4 - 2);
    const v = tensor(vHost, { shape: [N, 12], device });
    const params = new Map<string, number[]>();
    for (const [n, t] of aux.namedParameters()) params.set(n, Array.from(await t.toArray()));
    const ref = (prefix: string, outputs: number): number[] => {
      const a1 = params.get(`${prefix}.a1.weight`)!;
      const a2 = params.get(`${prefix}.a2.weight`)!;
      const out: number[] = [];
      for (let r = 0; r < N; r++) {
        const h = Array.from({ length: 6 }, (_, j) => {
          let s = 0;
          for (let k = 0; k < 12; k++) s += (vHost[r * 12 + k] as number) * (a1[j * 12 + k] as number);
          return s / (1 + Math.exp(-s));
        });
        for (let e = 0; e < outputs; e++) {
          let z = 0;
          for (let j = 0; j < 6; j++) z += (h[j] as number) * (a2[e * 6 + j] as number);
          out.push(1 / (1 + Math.exp(-z)));
        }
      }
      return out;
    };
    const tol = cuda ? 2e-2 : 1e-5; // CUDA GEMMs read bf16
    const select = (await rowsOf(noGrad(() => tidy(() => aux.expertSelect('layers.1.ffn', v))), 5)).flat();
    const g0 = ref('layers.1.ffn.aux_router.0', 2);
    const g1 = ref('layers.1.ffn.aux_router.1', 3);
    for (let r = 0; r < N; r++) {
      expect(maxDiff(select.slice(r * 5, r * 5 + 2), g0.slice(r * 2, r * 2 + 2))).toBeLessThan(tol);
      expect(maxDiff(select.slice(r * 5 + 2, r * 5 + 5), g1.slice(r * 3, r * 3 + 3))).toBeLessThan(tol);
    }
    const depth = Array.from(await noGrad(() => tidy(() => aux.depthSelect('layers.2', v))).toArray());
    expect(maxDiff(depth, ref('layers.2.mod_aux_router', 1))).toBeLessThan(tol);
    throwsCode(() => aux.expertSelect('layers.9.ffn', v), 'ERR_ARG');
    throwsCode(() => aux.depthSelect('layers.1', v), 'ERR_ARG');
    v.dispose();
    aux.dispose();
    model.dispose();
  });

  test('causal mode is causal: later tokens never change earlier logits (training mode does change them)', async () => {
    const model = new Transformer(config(device));
    const aux = newAuxRouters(model, 5);
    const a = [...documentIds(1), ...documentIds(2).slice(0, 6)];
    const cut = 9;
    let trainingChanged = 0;
    for (const seed of [11, 12, 13]) {
      const b = [...a.slice(0, cut + 1), ...documentIds(seed).slice(0, a.length - cut - 1)];
      b[cut + 1] = text(seed); // the first changed token
      const ba = batchOf([a], device);
      const bb = batchOf([b], device);
      const [ca, cb] = [await rowsOf(await model.causalLogits(ba, aux), V), await rowsOf(await model.causalLogits(bb, aux), V)];
      for (let t = 0; t <= cut; t++) expect(maxDiff(ca[t]!, cb[t]!)).toBeLessThanOrEqual(cuda ? 1e-5 : 1e-6);
      expect(maxDiff(ca[cut + 1]!, cb[cut + 1]!)).toBeGreaterThan(1e-3);
      const [ta, tb] = [await rowsOf(tidy(() => noGrad(() => model.logits(ba))), V), await rowsOf(tidy(() => noGrad(() => model.logits(bb))), V)];
      for (let t = 0; t <= cut; t++) if (maxDiff(ta[t]!, tb[t]!) > 1e-4) trainingChanged++;
      disposeBatch(ba);
      disposeBatch(bb);
    }
    // batch top-k compares rows across the batch, so future tokens reach back
    expect(trainingChanged).toBeGreaterThan(0);
    aux.dispose();
    model.dispose();
  });

  test('routing that selects every row equals training mode with capacities that take every row', async () => {
    const sparse = new Transformer(config(device));
    const dense = new Transformer(config(device, {
      mod: { interval: 2, capacity: 1 },
      ffn: { kind: 'moe', dFF: 10, capacityFactor: 3, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 3 }] },
    }));
    // two sequences, the second with trailing padding
    const second = documentIds(5).slice(0, 11);
    const batch = batchOf([documentIds(4), [...second, layout.padId, layout.padId, layout.padId]], device);
    const causal = await rowsOf(await sparse.causalLogits(batch, selectAll), V);
    const training = await rowsOf(tidy(() => noGrad(() => dense.logits(batch))), V);
    const valid = Array.from(batch.host.modality, (m, t) => (m >= 0 ? t : -1)).filter((t) => t >= 0);
    for (const t of valid) expect(maxDiff(causal[t]!, training[t]!)).toBeLessThanOrEqual(cuda ? 1e-4 : 1e-6);
    // and selecting nothing differs (the FFNs and MoD blocks then add nothing)
    const none: CausalRouting = {
      expertSelect: (_s, v) => full([v.shape[0] as number, 5], 0, { device: v.device }),
      depthSelect: (_s, x) => full([x.shape[0] as number], 0, { device: x.device }),
    };
    const empty = await rowsOf(await sparse.causalLogits(batch, none), V);
    expect(maxDiff(empty[0]!, causal[0]!)).toBeGreaterThan(1e-3);
    disposeBatch(batch);
    sparse.dispose();
    dense.dispose();
  });

  test('KV-cache decoding equals the full causal forward, token by token', async () => {
    const model = new Transformer(config(device));
    const aux = newAuxRouters(model, 6);
    const ids = [...documentIds(8), ...documentIds(9).slice(1, 8)];
    const batch = batchOf([ids], device);
    const full = await rowsOf(await model.causalLogits(batch, aux), V);
    disposeBatch(batch);
    const cache = new KVCache(model.config.layers);
    const tol = cuda ? 3e-2 : 2e-5;
    let worst = 0;
    const prefill = 6;
    worst = Math.max(worst, maxDiff(Array.from(await model.decode(cache, ids.slice(0, prefill), { modalityOf, routing: aux })), full[prefill - 1]!));
    for (let t = prefill; t < ids.length; t++) worst = Math.max(worst, maxDiff(Array.from(await model.decode(cache, [ids[t]!], { modalityOf, routing: aux })), full[t]!));
    expect(worst).toBeLessThan(tol);
    expect(cache.length).toBe(ids.length);
    // plain layers cache every row; MoD layers (0 and 2) only the rows their block ran on
    expect(cache.layers[1]!.length).toBe(ids.length);
    expect(cache.layers[0]!.length).toBeLessThan(ids.length);
    const withPadding = (id: number): number => (id === layout.padId ? -1 : modalityOf(id));
    await expect(model.decode(cache, [layout.padId], { modalityOf: withPadding, routing: aux })).rejects.toMatchObject({ code: 'ERR_RANGE' });
    await expect(model.decode(cache, [V], { modalityOf, routing: aux })).rejects.toMatchObject({ code: 'ERR_RANGE' });
    await expect(model.decode(cache, [], { modalityOf, routing: aux })).rejects.toMatchObject({ code: 'ERR_ARG' });
    await expect(model.decode(new KVCache(2), [text(1)], { modalityOf, routing: aux })).rejects.toMatchObject({ code: 'ERR_ARG' });
    cache.dispose();
    aux.dispose();
    model.dispose();
  });

  test('generation keeps every image exactly tokensPerImage codes long and is deterministic for a seed', async () => {
    const model = new Transformer(config(device));
    const aux = newAuxRouters(model, 2);
    const runs: number[][] = [];
    for (const seed of [0, 0, 1, 2, 3]) {
      const constraint = new ModalityConstraint(layout, { vocabSize: V });
      const r = await generateTokens(model, [layout.bosId, text(3)], { routing: aux, layout, constraint, seed, maxTokens: 60, temperature: 1.5 });
      runs.push(r.tokens);
      let inside = -1;
      for (const id of [layout.bosId, text(3), ...r.tokens]) {
        const isCode = id >= layout.image!.offset;
        if (inside >= 0) {
          if (isCode) inside++;
          else {
            expect(id).toBe(layout.eoiId);
            expect(inside).toBe(image.tokensPerImage);
            inside = -1;
          }
        } else {
          expect(isCode || id === layout.eoiId || id === layout.padId).toBe(false);
          if (id === layout.boiId) inside = 0;
        }
      }
      expect(r.stop === 'done' ? r.tokens[r.tokens.length - 1] : r.tokens.length).toBe(r.stop === 'done' ? layout.eosId : 60);
    }
    expect(runs[1]).toEqual(runs[0]);
    expect(new Set(runs.map((t) => t.join())).size).toBeGreaterThan(2);
    // greedy caption after an image prompt: text only, no second image
    const constraint = new ModalityConstraint(layout, { vocabSize: V, allowImages: false });
    const prompt = [layout.bosId, layout.boiId, code(1), code(2), code(3), code(4), layout.eoiId];
    const r = await generateTokens(model, prompt, { routing: aux, layout, constraint, temperature: 0, maxTokens: 20 });
    expect(r.tokens.every((id) => id === layout.eosId || (id >= layout.text.offset && id < layout.text.offset + 11))).toBe(true);
    await expect(generateTokens(model, [], { routing: aux, layout, constraint: new ModalityConstraint(layout, { vocabSize: V }) })).rejects.toMatchObject({ code: 'ERR_ARG' });
    await expect(generateTokens(model, [layout.bosId], { routing: aux, layout, constraint: new ModalityConstraint(layout, { vocabSize: V }), maxTokens: 0 })).rejects.toMatchObject({ code: 'ERR_ARG' });
    await expect(generateTokens(model, [layout.bosId], { routing: aux, layout } as never)).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/generateTokens: options.constraint is required/) });
    aux.dispose();
    model.dispose();
  });
});

describe('auxiliary routers on a dense model', () => {
  test('a dense model without MoD has no routers, and causal mode equals training mode', async () => {
    const model = new Transformer(config('cpu', { ffn: { kind: 'dense', dFF: 10 }, mod: null }));
    const aux: AuxRouters = newAuxRouters(model, 0);
    expect(aux.empty).toBe(true);
    expect(aux.numParameters()).toBe(0);
    const batch = batchOf([documentIds(3)], 'cpu');
    const causal = await rowsOf(await model.causalLogits(batch, aux), V);
    const training = await rowsOf(tidy(() => noGrad(() => model.logits(batch))), V);
    expect(maxDiff(causal.flat(), training.flat())).toBe(0);
    disposeBatch(batch);
    model.dispose();
  });
});
