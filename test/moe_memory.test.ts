// Long-run memory check for the MoE layer: 1,000 forward + backward steps of a small MoMaFFN
// (with Gumbel routing, so every step allocates fresh routing buffers) leave the allocator's
// allocated bytes and live storages where they were after the first steps.
import { Generator, MoMaFFN, memoryStats, randn, synchronize, tensor } from '../lib';
import { describeDevices } from './support/devices';
import { collectGarbage } from './support/gc';

describeDevices('MoMaFFN memory', (device) => {
  test('allocator stats stay flat over 1,000 forward+backward steps', async () => {
    const ffn = new MoMaFFN({
      dModel: 8, dFF: 12, groups: [{ modality: 'text', experts: 3 }, { modality: 'image', experts: 2 }], gumbel: true, device, seed: 3,
    });
    const gen = new Generator(1);
    const x = randn([37, 8], { device, generator: gen });
    const dy = randn([37, 8], { device, generator: gen });
    const modality = tensor(Int32Array.from({ length: 37 }, (_, t) => (t % 5 === 4 ? -1 : t % 3 === 0 ? 1 : 0)), { device });
    const step = (): void => {
      const { y, ctx } = ffn.forward(x, modality, { training: true, generator: gen });
      const { dx, grads } = ffn.backward(ctx, dy);
      ctx.dispose();
      y.dispose();
      dx.dispose();
      for (const g of Object.values(grads)) g.dispose();
    };
    for (let i = 0; i < 10; i++) step();
    // the allocator is per process: tensors an earlier suite of this jest worker dropped without
    // dispose must be collected before the baseline, or their later collection looks like a change
    await collectGarbage(device);
    const base = memoryStats(device);
    for (let i = 0; i < 1000; i++) {
      step();
      if (i % 100 === 99) await synchronize(device);
    }
    await synchronize(device);
    const after = memoryStats(device);
    expect(after.allocated).toBe(base.allocated);
    expect(after.liveStorages).toBe(base.liveStorages);
    expect(after.pendingTasks).toBe(0);
    // two randn of 37 x 8 (one block per 2 normals), then ceil(2 T E / 4) blocks of Gumbel noise per step
    expect(gen.offset).toBe(BigInt(2 * Math.ceil((37 * 8) / 2) + 1010 * Math.ceil((2 * 37 * 5) / 4)));
    for (const t of [x, dy, modality]) t.dispose();
    ffn.dispose();
  }, 60000);
});
