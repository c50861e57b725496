// The decoder end to end on the CPU: config validation, the loss against a directional finite
// difference, per-modality losses, and the overfit test (a tiny MoMa model drives the loss on one
// batch below 0.05 with AdamW).
import { AdamW, backward, Batch, keep, makeBatch, MomaError, noGrad, tidy, Transformer, TransformerConfig } from '../lib';
import { directionalCheck } from './support/gradcheck';
import { mulberry32 } from './support/reference';

const V = 24;
const IMAGE_FROM = 16; // ids 16..23 are image codes, 0 is PAD, 1 is BOS
const modalityOf = (id: number): number => (id >= IMAGE_FROM ? 1 : 0);

function batchOf(seed: number, B = 2, S = 12): Batch {
  const rng = mulberry32(seed);
  const seqs = Array.from({ length: B }, () => {
    const s = [1];
    while (s.length < S) s.push(s.length % 4 === 0 ? 16 + Math.floor(rng() * 8) : 2 + Math.floor(rng() * 14));
    return s;
  });
  return makeBatch(seqs, { padId: 0, bosId: 1, modalityOf, modalities: 2 });
}

function disposeBatch(b: Batch): void {
  for (const t of [b.tokens, b.targets, b.positions, b.segStart, b.modality, b.weights, ...b.modalityWeights]) t.dispose();
}

const tiny = (ffn: TransformerConfig['ffn'], extra: Partial<TransformerConfig> = {}): TransformerConfig => ({
  vocabSize: V, dModel: 16, layers: 2, heads: 2, ffn, seed: 5, initStd: 0.1, ...extra,
});
const DENSE = { kind: 'dense' as const, dFF: 24 };
const MOMA = { kind: 'moe' as const, dFF: 24, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }] };
// capacity 2 with 2 experts per group: every expert takes every row, so the loss is smooth in the
// parameters (no selection flips under the finite-difference perturbation)
const MOMA_SMOOTH = { ...MOMA, capacityFactor: 2 };

describe('Transformer', () => {
  test('config errors name the field', () => {
    const bad: [Partial<TransformerConfig>, RegExp][] = [
      [{ heads: 3 }, /heads \(3\) must divide dModel/],
      [{ layers: 0 }, /layers must be an integer/],
      [{ ffn: { kind: 'moe', dFF: 8 } }, /ffn.groups/],
      [{ norm: 'post' as never }, /norm must be/],
      [{ ffn: { kind: 'moe', dFF: 8, groups: [{ modality: 'audio', experts: 2 }] } }, /unknown modality 'audio'/],
    ];
    for (const [patch, msg] of bad) {
      let err: unknown;
      try {
        new Transformer({ ...tiny(DENSE), ...patch }).dispose();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(MomaError);
      expect((err as Error).message).toMatch(msg);
    }
  });

  test.each([['dense', DENSE], ['moma 2t2i, c = 2', MOMA_SMOOTH]] as const)('%s: the gradient matches a directional finite difference of the loss', async (_, ffn) => {
    const model = new Transformer(tiny(ffn));
    const batch = batchOf(1);
    const loss0 = await tidy(() => {
      const { loss } = model.loss(batch);
      backward(loss);
      return keep(loss);
    }).item();
    // along a random ±1 pattern over every parameter
    const check = await directionalCheck(model, () => model.loss(batch).loss, { eps: 1e-3 });
    const fd = await check.central(1);
    expect(Number.isFinite(loss0)).toBe(true);
    expect(Math.abs(fd - check.analytic)).toBeLessThanOrEqual(0.02 * Math.abs(check.analytic) + 1e-3);
    check.dispose();
    disposeBatch(batch);
    model.dispose();
  });

  test('per-modality losses are the means over targets of each modality', async () => {
    const model = new Transformer(tiny(MOMA));
    const batch = batchOf(2);
    const [loss, nll, text, image] = tidy(() => noGrad(() => {
      const r = model.loss(batch);
      return [r.loss, r.nll, ...r.perModality];
    }));
    const n = await nll!.toArray();
    const targets = await batch.targets.toArray();
    let sum = 0, sumText = 0, sumImage = 0, count = 0, countText = 0, countImage = 0;
    for (let t = 0; t < n.length; t++) {
      if (targets[t]! < 0) { expect(n[t]).toBe(0); continue; }
      sum += n[t]!; count++;
      if (modalityOf(targets[t]!) === 1) { sumImage += n[t]!; countImage++; } else { sumText += n[t]!; countText++; }
    }
    expect(countImage).toBeGreaterThan(0);
    expect(Math.abs((await loss!.item()) - sum / count)).toBeLessThan(1e-5);
    expect(Math.abs((await text!.item()) - sumText / countText)).toBeLessThan(1e-5);
    expect(Math.abs((await image!.item()) - sumImage / countImage)).toBeLessThan(1e-5);
    for (const t of [loss, nll, text, image]) t!.dispose();
    disposeBatch(batch);
    model.dispose();
  });

  test('overfit: a tiny MoMa model drives the loss on one batch below 0.05', async () => {
    const model = new Transformer(tiny(MOMA, { seed: 1 }));
    const opt = new AdamW(model, { lr: 1e-2, weightDecay: 0, clipNorm: 5 });
    const batch = batchOf(3, 2, 10);
    let last = Infinity;
    let first = NaN;
    for (let step = 0; step < 500 && last >= 0.05; step++) {
      const loss = tidy(() => {
        const { loss: l } = model.loss(batch, { training: true });
        backward(l);
        return l;
      });
      last = await loss.item();
      if (step === 0) first = last;
      loss.dispose();
      await opt.update();
      opt.zeroGrad();
    }
    expect(first).toBeGreaterThan(2);
    expect(last).toBeLessThan(0.05);
    opt.dispose();
    disposeBatch(batch);
    model.dispose();
  }, 120000);
});

describe('mixed precision (computeDtype bfloat16)', () => {
  test('loss and gradients track the float32 model; parameters and gradients stay float32', async () => {
    const config = tiny(MOMA, { seed: 2 });
    const f32 = new Transformer(config);
    const bf16 = new Transformer({ ...config, computeDtype: 'bfloat16' });
    const batch = batchOf(4);
    const run = async (m: Transformer): Promise<{ loss: number; grads: Float32Array[] }> => {
      const loss = tidy(() => {
        const { loss: l } = m.loss(batch);
        backward(l);
        return l;
      });
      const value = await loss.item();
      loss.dispose();
      const grads: Float32Array[] = [];
      for (const p of m.parameters()) {
        expect(p.dtype).toBe('float32');
        expect(p.grad!.dtype).toBe('float32');
        grads.push((await p.grad!.toArray()) as Float32Array);
      }
      return { loss: value, grads };
    };
    const a = await run(f32);
    const b = await run(bf16);
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(0.02 * a.loss);
    // the whole gradient points the same way (cosine similarity), parameter by parameter too
    let dot = 0, na = 0, nb = 0;
    a.grads.forEach((ga, i) => {
      const gb = b.grads[i]!;
      let d = 0, x = 0, y = 0;
      for (let j = 0; j < ga.length; j++) { d += ga[j]! * gb[j]!; x += ga[j]! ** 2; y += gb[j]! ** 2; }
      dot += d; na += x; nb += y;
      if (x > 1e-12) expect(d / Math.sqrt(x * y)).toBeGreaterThan(0.95);
    });
    expect(dot / Math.sqrt(na * nb)).toBeGreaterThan(0.99);
    disposeBatch(batch);
    f32.dispose();
    bf16.dispose();
  });
});
