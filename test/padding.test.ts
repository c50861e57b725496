/**
 * SPEC.md §1 on padding and documents: which rows count in the loss (own token and target both
 * non-padding, target not BOS) and which rows a row attends to (its own document only; a document
 * starts at each BOS, at each sequence start and at the first non-padding row after padding;
 * padding rows are never attended to).
 *
 * - The row layout of makeBatch against hand-written cases (left, middle, right padding, BOS
 *   targets) and, on random sequences, against an independent statement of the rule: row t sees
 *   row u iff both are real, u ≤ t in one sequence, and no padding or BOS lies in (u, t].
 * - Models (dense; moma 2t2i + MoD; pre-norm moe 4x with the softmax router and z-loss): the same
 *   documents laid out with left, middle and right padding and without any padding give the same
 *   logits, loss and gradients, with the padding rows' embedding set to large random values, so
 *   any attention to padding would show; changing the padding embedding changes no document row
 *   at all; the loss and per-modality losses equal a float64 cross-entropy over the rows the rule
 *   counts; causal mode, evaluate() and the auxiliary-router targets agree across layouts.
 * - The KV cache starts a new document at a BOS (decode equals the full causal forward).
 */
import {
  AuxRouters, backward, Batch, collectAuxExamples, disposeBatch, evaluate, KVCache, makeBatch, newAuxRouters, noGrad, Tensor, tensor,
  tidy, Transformer, TransformerConfig,
} from '../lib';
import { batchRows } from '../lib/model/batch_rows';
import { describeDevices } from './support/devices';
import { throwsCode } from './support/errors';
import { mulberry32 } from './support/reference';
import { checkSegStart } from './support/nn_reference';

const V = 24, PAD = 0, BOS = 1, IMAGE_FROM = 16; // ids 2..15 text, 16..23 image codes
const modalityOf = (id: number): number => (id >= IMAGE_FROM ? 1 : 0);
const vocab = { padId: PAD, bosId: BOS, modalityOf };

/** Row t may attend row u (SPEC §1, stated without segment starts). */
function sees(seq: number[], t: number, u: number): boolean {
  if (u > t || seq[t] === PAD || seq[u] === PAD) return false;
  for (let s = u + 1; s <= t; s++) if (seq[s] === PAD || seq[s] === BOS) return false;
  return true;
}

/** Rows that count in the loss (SPEC §1), with their target's modality. */
function countedRows(seqs: number[][]): { row: number; target: number; modality: number }[] {
  const out: { row: number; target: number; modality: number }[] = [];
  const S = seqs[0]!.length;
  seqs.forEach((seq, b) => {
    for (let s = 0; s + 1 < S; s++) {
      const next = seq[s + 1]!;
      if (seq[s] !== PAD && next !== PAD && next !== BOS) out.push({ row: b * S + s, target: next, modality: modalityOf(next) });
    }
  });
  return out;
}

describe('makeBatch rows (SPEC §1)', () => {
  const rowsOf = (seqs: number[][]): ReturnType<typeof batchRows> => batchRows(seqs, { ...vocab, modalities: 2, vocabSize: V });

  test('left, middle and right padding; a BOS target is not counted', () => {
    const r = rowsOf([
      [PAD, PAD, 5, 6, PAD, 7, 20, PAD],
      [BOS, 5, BOS, 6, 17, PAD, PAD, PAD],
    ]);
    // padding rows are one-row segments; a real row after padding starts a document
    expect(Array.from(r.segStart)).toEqual([0, 1, 2, 2, 4, 5, 5, 7, 8, 8, 10, 10, 10, 13, 14, 15]);
    // a padding row before a real token does not count (rows 1 and 4); nor a row whose target is BOS (row 9)
    expect(Array.from(r.targets)).toEqual([-1, -1, 6, -1, -1, 20, -1, -1, 5, -1, 6, 17, -1, -1, -1, -1]);
    expect(Array.from(r.modality)).toEqual([-1, -1, 0, 0, -1, 0, 1, -1, 0, 0, 0, 0, 1, -1, -1, -1]);
    expect(Array.from(r.targetModality)).toEqual([-1, -1, 0, -1, -1, 1, -1, -1, 0, -1, 0, 1, -1, -1, -1, -1]);
    expect(Array.from(r.positions)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7]);
    expect(r.counts).toEqual({ rows: 9, total: 5, perModality: [3, 2] });
  });

  test('random sequences: attention windows and counted rows follow the rule', () => {
    const rng = mulberry32(3);
    for (let trial = 0; trial < 200; trial++) {
      const S = 2 + Math.floor(rng() * 12), B = 1 + Math.floor(rng() * 3);
      const seqs = Array.from({ length: B }, () => Array.from({ length: S }, () => {
        const u = rng();
        return u < 0.3 ? PAD : u < 0.4 ? BOS : 2 + Math.floor(rng() * (V - 2));
      }));
      const r = rowsOf(seqs);
      checkSegStart(r.segStart); // the attention kernels' contract
      seqs.forEach((seq, b) => {
        for (let t = 0; t < S; t++) {
          const row = b * S + t;
          for (let u = 0; u < S; u++) {
            const inWindow = b * S + u >= r.segStart[row]! && u <= t;
            // a padding row's window is itself only (its output is never used)
            expect(inWindow).toBe(seq[t] === PAD ? u === t : sees(seq, t, u));
          }
        }
      });
      const counted = countedRows(seqs);
      const want = new Array<number>(B * S).fill(-1);
      for (const c of counted) want[c.row] = c.target;
      expect(Array.from(r.targets)).toEqual(want);
      expect(r.counts.total).toBe(counted.length);
      expect(r.counts.perModality).toEqual([0, 1].map((m) => counted.filter((c) => c.modality === m).length));
      expect(r.counts.rows).toBe(seqs.flat().filter((id) => id !== PAD).length);
    }
  });

  test('bad input', () => {
    throwsCode(() => rowsOf([[2, 3], [4]]), 'ERR_SHAPE');
    throwsCode(() => rowsOf([[2, V]]), 'ERR_RANGE');
    throwsCode(() => batchRows([[2, 3]], { ...vocab, modalityOf: () => 2, modalities: 2 }), 'ERR_RANGE');
  });
});

describeDevices('padding never changes the documents (SPEC §1)', (device) => {
  const cuda = device !== 'cpu';
  const L = 9;

  /** A document of L tokens (text and image ids; BOS first when asked, no padding). */
  function documentOf(seed: number, bos: boolean): number[] {
    const rng = mulberry32(seed);
    return Array.from({ length: L }, (_, s) => (s === 0 && bos ? BOS : s % 4 === 2 ? IMAGE_FROM + Math.floor(rng() * 8) : 2 + Math.floor(rng() * 14)));
  }

  const docs = [documentOf(11, false), documentOf(12, false), documentOf(13, true), documentOf(14, true)];
  const pads = (n: number): number[] => new Array<number>(n).fill(PAD);
  /** Left and middle padding (the second document has no BOS: padding starts it), then a BOS boundary and right padding. */
  const padded = [
    [...pads(2), ...docs[0]!, ...pads(1), ...docs[1]!],
    [...docs[2]!, ...docs[3]!, ...pads(3)],
  ];
  /** Row of `padded` for row j of document d (the unpadded layout: document d is sequence d). */
  const S = 2 * L + 3;
  const rowOf = (d: number, j: number): number => [2 + j, 3 + L + j, S + j, S + L + j][d]!;
  const unpadded = docs;

  const CONFIGS: [string, Partial<TransformerConfig>][] = [
    ['dense', { ffn: { kind: 'dense', dFF: 20 } }],
    ['moma 2t2i + MoD', { layers: 3, ffn: { kind: 'moe', dFF: 12, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }] }, mod: { interval: 2, capacity: 0.5 } }],
    ['moe 4x, pre-norm, softmax router, z-loss', { norm: 'pre', zLoss: 1e-2, ffn: { kind: 'moe', dFF: 12, router: 'softmax', groups: [{ modality: ['text', 'image'], experts: 4 }] } }],
  ];

  const modelOf = async (overrides: Partial<TransformerConfig>): Promise<Transformer> => {
    const model = new Transformer({ vocabSize: V, dModel: 16, layers: 2, heads: 2, seed: 5, initStd: 0.3, device, ffn: { kind: 'dense', dFF: 20 }, ...overrides });
    await setPadEmbedding(model, 1);
    return model;
  };

  /** The padding id's embedding row: large random values (std 30), so attention to padding would show. */
  async function setPadEmbedding(model: Transformer, seed: number): Promise<void> {
    const weight = Float32Array.from(await model.namedParameters().get('embed.weight')!.toArray());
    const rng = mulberry32(seed);
    for (let i = 0; i < 16; i++) weight[PAD * 16 + i] = 30 * Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
    noGrad(() => model.setParameter('embed.weight', tensor(weight, { shape: [V, 16], device })));
  }

  const batchOf = (seqs: number[][]): Batch => makeBatch(seqs, { ...vocab, modalities: 2, device, vocabSize: V });

  async function hostRows(t: Tensor): Promise<number[][]> {
    const a = Array.from(await t.toArray());
    t.dispose();
    return Array.from({ length: a.length / V }, (_, i) => a.slice(i * V, (i + 1) * V));
  }

  const maxDiff = (a: number[], b: number[]): number => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

  /** Loss, per-modality losses, logits and every parameter's gradient of one batch. */
  async function run(model: Transformer, seqs: number[][]): Promise<{ loss: number; perModality: number[]; logits: number[][]; grads: Map<string, number[]> }> {
    for (const p of model.parameters()) p.grad = null;
    const batch = batchOf(seqs);
    const { loss, perModality, logits } = tidy(() => {
      const out = model.loss(batch);
      backward(out.loss);
      return { loss: out.loss, perModality: out.perModality, logits: noGrad(() => model.logits(batch)) };
    });
    const values = await Promise.all([loss, ...perModality].map((t) => t.item()));
    for (const t of [loss, ...perModality]) t.dispose();
    const grads = new Map<string, number[]>();
    for (const [name, p] of model.namedParameters()) grads.set(name, Array.from(await p.grad!.toArray()));
    disposeBatch(batch);
    return { loss: values[0]!, perModality: values.slice(1), logits: await hostRows(logits), grads };
  }

  test.each(CONFIGS)('%s: logits, loss and gradients do not depend on where padding stands', async (_, overrides) => {
    const model = await modelOf(overrides);
    const a = await run(model, padded);
    const b = await run(model, unpadded);
    const tol = cuda ? 2e-3 : 2e-5;
    let worst = 0;
    docs.forEach((_doc, d) => {
      for (let j = 0; j < L; j++) worst = Math.max(worst, maxDiff(a.logits[rowOf(d, j)]!, b.logits[d * L + j]!));
    });
    expect(worst).toBeLessThan(tol);
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(tol * Math.abs(b.loss));
    for (let m = 0; m < 2; m++) expect(Math.abs(a.perModality[m]! - b.perModality[m]!)).toBeLessThan(tol * Math.abs(b.perModality[m]!));
    // the padding embedding gets no gradient at all; every other gradient is that of the unpadded batch
    const embedA = a.grads.get('embed.weight')!;
    expect(embedA.slice(0, 16).every((g) => g === 0)).toBe(true);
    for (const [name, ga] of a.grads) {
      const gb = b.grads.get(name)!;
      const scale = gb.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      expect({ name, diff: maxDiff(ga, gb) <= (cuda ? 2e-2 : 1e-4) * scale + 1e-7 }).toEqual({ name, diff: true });
    }
    model.dispose();
  });

  test.each(CONFIGS)('%s: the padding rows are never attended to (changing them changes no document row)', async (_, overrides) => {
    const model = await modelOf(overrides);
    const batch = batchOf(padded);
    const before = await hostRows(tidy(() => noGrad(() => model.logits(batch))));
    await setPadEmbedding(model, 2);
    const after = await hostRows(tidy(() => noGrad(() => model.logits(batch))));
    let changedPadding = 0;
    padded.flat().forEach((id, t) => {
      if (id === PAD) changedPadding = Math.max(changedPadding, maxDiff(before[t]!, after[t]!));
      else expect(after[t]).toEqual(before[t]);
    });
    expect(changedPadding).toBeGreaterThan(1e-3); // the padding rows themselves did change
    disposeBatch(batch);
    model.dispose();
  });

  test.each(CONFIGS)('%s: loss and per-modality losses equal a float64 cross-entropy over the counted rows', async (_, overrides) => {
    const model = await modelOf(overrides);
    const seqs = [
      [...pads(2), ...docs[0]!, ...pads(1), BOS, ...docs[1]!.slice(1)],
      [...docs[2]!, ...docs[3]!, ...pads(3)],
    ];
    const batch = batchOf(seqs);
    const { values, logits } = tidy(() => noGrad(() => {
      const z = model.logits(batch);
      const out = model.loss(batch);
      return { values: [out.loss, ...out.perModality], logits: z };
    }));
    const got = await Promise.all(values.map((t) => t.item()));
    for (const t of values) t.dispose();
    const rows = await hostRows(logits);
    const counted = countedRows(seqs);
    // each document's first L − 1 rows; not the padding rows before a real token (rows 1 and L + 2),
    // nor the last row of docs[2], whose target is the BOS of docs[3]
    expect(counted.length).toBe(4 * (L - 1));
    const targets = await batch.targets.toArray();
    for (const t of [1, L + 2, S + L - 1]) expect(targets[t]).toBe(-1);
    const nll = (c: { row: number; target: number }): number => {
      const z = rows[c.row]!;
      const m = Math.max(...z);
      const lse = m + Math.log(z.reduce((s, v) => s + Math.exp(v - m), 0));
      return lse - z[c.target]!;
    };
    const lse = (c: { row: number }): number => nll({ row: c.row, target: 0 }) + rows[c.row]![0]!;
    const mean = (xs: number[]): number => xs.reduce((s, v) => s + v, 0) / xs.length;
    const zLoss = overrides.zLoss ?? 0;
    const want = [
      mean(counted.map(nll)) + zLoss * mean(counted.map((c) => lse(c) ** 2)),
      ...[0, 1].map((m) => mean(counted.filter((c) => c.modality === m).map(nll))),
    ];
    const tol = cuda ? 1e-4 : 2e-6;
    want.forEach((w, k) => expect(Math.abs(got[k]! - w)).toBeLessThan(tol * Math.abs(w)));
    expect(batch.counts.total).toBe(counted.length);
    // the held-out loss is the cross-entropy alone: the z-loss is part of the training loss only
    const heldOut = await evaluate(model, seqs, { vocab, batchSize: 2 });
    const crossEntropy = mean(counted.map(nll));
    expect(Math.abs(heldOut.loss - crossEntropy)).toBeLessThan(tol * crossEntropy);
    disposeBatch(batch);
    model.dispose();
  });

  test('causal mode, evaluate() and the auxiliary-router targets do not depend on where padding stands', async () => {
    const model = await modelOf(CONFIGS[1]![1]);
    const aux: AuxRouters = newAuxRouters(model, 4);
    const causal = async (seqs: number[][]): Promise<number[][]> => {
      const batch = batchOf(seqs);
      const rows = await hostRows(await model.causalLogits(batch, aux));
      disposeBatch(batch);
      return rows;
    };
    const [a, b] = [await causal(padded), await causal(unpadded)];
    let worst = 0;
    docs.forEach((_doc, d) => {
      for (let j = 0; j < L; j++) worst = Math.max(worst, maxDiff(a[rowOf(d, j)]!, b[d * L + j]!));
    });
    expect(worst).toBeLessThan(cuda ? 2e-3 : 2e-5);
    for (const routing of [undefined, aux]) {
      const [ea, eb] = [await evaluate(model, padded, { vocab, batchSize: 2, causal: routing }), await evaluate(model, unpadded, { vocab, batchSize: 4, causal: routing })];
      expect(ea.targets).toBe(eb.targets);
      expect(ea.targetsPerModality).toEqual(eb.targetsPerModality);
      expect(Math.abs(ea.loss - eb.loss)).toBeLessThan((cuda ? 2e-3 : 2e-5) * eb.loss);
    }
    // the targets the auxiliary routers learn from: the same selections on the same document rows
    const targets = async (seqs: number[][]): Promise<Map<string, number[]>> => {
      const batch = batchOf(seqs);
      const all = await collectAuxExamples(model, aux, batch);
      const out = new Map(all.map((e) => [e.ref.key, Array.from(e.hostTargets)]));
      for (const e of all) e.dispose();
      disposeBatch(batch);
      return out;
    };
    const [ta, tb] = [await targets(padded), await targets(unpadded)];
    expect(ta.size).toBeGreaterThan(0);
    expect(ta).toEqual(tb);
    aux.dispose();
    model.dispose();
  });

  test('KV-cache decoding starts a new document at a BOS, as the full causal forward does', async () => {
    const model = await modelOf(CONFIGS[1]![1]);
    const aux = newAuxRouters(model, 6);
    const ids = [...docs[2]!, ...docs[3]!, ...docs[2]!.slice(0, 4)]; // BOS at 0, L and 2L
    const batch = batchOf([ids]);
    const full = await hostRows(await model.causalLogits(batch, aux));
    disposeBatch(batch);
    const tol = cuda ? 3e-2 : 2e-5;
    // a prefill that crosses the first boundary, then token by token across the second
    const cache = new KVCache(model.config.layers, { bosId: BOS });
    const prefill = L + 3;
    let worst = maxDiff(Array.from(await model.decode(cache, ids.slice(0, prefill), { modalityOf, routing: aux })), full[prefill - 1]!);
    for (let t = prefill; t < ids.length; t++) worst = Math.max(worst, maxDiff(Array.from(await model.decode(cache, [ids[t]!], { modalityOf, routing: aux })), full[t]!));
    expect(worst).toBeLessThan(tol);
    expect(cache.length).toBe(ids.length);
    expect(cache.layers[1]!.length).toBe(ids.length - 2 * L); // the plain layer holds the last document only
    cache.dispose();
    // a cache that ignores BOS attends across documents and differs
    const blind = new KVCache(model.config.layers);
    const crossed = Array.from(await model.decode(blind, ids, { modalityOf, routing: aux }));
    expect(maxDiff(crossed, full[ids.length - 1]!)).toBeGreaterThan(1e-3);
    blind.dispose();
    aux.dispose();
    model.dispose();
  });
});
