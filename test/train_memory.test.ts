// Long-run memory check for whole training steps: a tiny MoMa + MoD Transformer (moe groups text 2
// / image 2, mod {interval 1, capacity 0.5}) trained for 1,000 steps with
// tidy(() => backward(loss)), AdamW update and zeroGrad leaves the allocator's allocated bytes and
// live storages exactly where they were after 20 warm-up steps (the optimizer moments exist by
// then), with no pending work.
import { AdamW, Batch, Transformer, backward, makeBatch, memoryStats, noGrad, synchronize, tidy } from '../lib';
import { describeDevices } from './support/devices';
import { mulberry32 } from './support/reference';
import { collectGarbage } from './support/gc';

const V = 16;
const IMAGE_FROM = 10; // ids 10..15 are image codes; 0 is PAD, 1 is BOS
const modalityOf = (id: number): number => (id >= IMAGE_FROM ? 1 : 0);

function disposeBatch(b: Batch): void {
  for (const t of [b.tokens, b.targets, b.positions, b.segStart, b.modality, b.weights, ...b.modalityWeights]) t.dispose();
}

describeDevices('training memory', (device) => {
  test('allocator stats stay flat over 1,000 training steps (MoMa 2t2i + MoD, AdamW)', async () => {
    const model = new Transformer({
      vocabSize: V, dModel: 8, layers: 1, heads: 2, seed: 3, initStd: 0.1, device,
      ffn: { kind: 'moe', dFF: 8, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 2 }] },
      mod: { interval: 1, capacity: 0.5 },
    });
    const opt = new AdamW(model, { lr: 1e-3 });
    const rng = mulberry32(5);
    // two sequences of 12: documents, images, and trailing padding in the second
    const seq = (pad: number): number[] => Array.from({ length: 12 }, (_, s) =>
      s === 0 || s === 7 ? 1 : s >= 12 - pad ? 0 : s % 3 === 0 ? IMAGE_FROM + Math.floor(rng() * 6) : 2 + Math.floor(rng() * 8));
    const batch = makeBatch([seq(0), seq(3)], { padId: 0, bosId: 1, modalityOf, modalities: 2, device });
    const step = async (): Promise<void> => {
      tidy(() => backward(model.loss(batch, { training: true }).loss));
      await opt.update();
      opt.zeroGrad();
    };
    const evalLoss = async (): Promise<number> => {
      const t = tidy(() => noGrad(() => model.loss(batch).loss));
      const v = await t.item();
      t.dispose();
      return v;
    };
    for (let i = 0; i < 20; i++) await step();
    const first = await evalLoss();
    await collectGarbage(device); // the allocator is per process: earlier suites' garbage first
    const base = memoryStats(device);
    for (let i = 0; i < 1000; i++) await step();
    await synchronize(device);
    const after = memoryStats(device);
    expect(after.allocated).toBe(base.allocated);
    expect(after.liveStorages).toBe(base.liveStorages);
    expect(after.pendingTasks).toBe(0);
    // the steps did train (the loss moved), so the loop did real work
    const last = await evalLoss();
    expect(Number.isFinite(last)).toBe(true);
    expect(last).toBeLessThan(first);
    opt.dispose();
    disposeBatch(batch);
    model.dispose();
  }, 180000);
});
