import { Tensor, tensor, rand, matmul, memoryStats, resetPeakMemory, synchronize, concat } from '../lib';
import { describeDevices } from './support/devices';
import { collectGarbage, gc } from './support/gc';


// Waits for the device and collects garbage until the allocator is stable: the allocator is per
// process, and a jest worker's earlier suites may leave tensors for the collector, whose later
// collection would otherwise look like a change in this suite's numbers.
async function settle(device: string): Promise<void> {
  await collectGarbage(device);
  if (device !== 'cpu') await synchronize('cpu');
}

describeDevices('memory', (device) => {
  test('allocated returns to its baseline after disposing', async () => {
    await settle(device);
    const base = memoryStats(device);
    const a = rand([257, 33], { device });
    const b = rand([33, 65], { device });
    const c = matmul(a, b);
    const sm = c.softmax();
    const d = sm.astype('bfloat16');
    const e = concat([d, d], 0);
    await e.toArray();
    await settle(device);
    const during = memoryStats(device);
    expect(during.allocated).toBeGreaterThanOrEqual(base.allocated + (257 * 33 + 33 * 65 + 257 * 65) * 4);
    expect(during.liveStorages).toBeGreaterThanOrEqual(base.liveStorages + 6);
    for (const t of [a, b, c, sm, d, e]) t.dispose();
    await settle(device);
    const after = memoryStats(device);
    expect(after.allocated).toBe(base.allocated);
    expect(after.liveStorages).toBe(base.liveStorages);
  });

  test('peak tracks the high-water mark and resets', async () => {
    await settle(device);
    resetPeakMemory(device);
    const base = memoryStats(device);
    expect(base.peakAllocated).toBe(base.allocated);
    const big = rand([1024, 256], { device });
    await settle(device);
    big.dispose();
    await settle(device);
    const s = memoryStats(device);
    expect(s.peakAllocated).toBeGreaterThanOrEqual(base.allocated + 1024 * 256 * 4);
    expect(s.allocated).toBe(base.allocated);
    resetPeakMemory(device);
    expect(memoryStats(device).peakAllocated).toBe(s.allocated);
  });

  test('1,000 iterations of a small op chain with dispose keep allocated and liveStorages flat', async () => {
    const w = rand([16, 16], { device });
    let x = rand([8, 16], { device });
    const step = (): void => {
      const h = matmul(x, w);
      const s = h.tanh();
      const sx = s.add(x);
      const y = sx.scale(0.5);
      const idx = tensor(Int32Array.from([0, 3, 7]), { device });
      const g = y.indexSelect(0, idx);
      const sum = g.sum(0);
      for (const t of [h, s, sx, idx, g, sum]) t.dispose();
      x.dispose();
      x = y;
    };
    for (let i = 0; i < 100; i++) step();
    await settle(device);
    const mid = memoryStats(device);
    for (let i = 0; i < 900; i++) {
      step();
      if (i % 100 === 99) await settle(device);
    }
    await x.toArray();
    await settle(device);
    const end = memoryStats(device);
    expect(end.allocated).toBe(mid.allocated);
    expect(end.liveStorages).toBe(mid.liveStorages);
    x.dispose();
    w.dispose();
  });

  (gc ? test : test.skip)('tensors dropped without dispose are freed after gc', async () => {
    await collectGarbage(device);
    await settle(device);
    const base = memoryStats(device);
    // 100 tensors never disposed, held until their memory has been counted, then dropped
    // (made in a plain function: a suspended async frame could keep the last one in a register)
    const make = (): Tensor[] => Array.from({ length: 50 }, () => rand([64, 64], { device })).flatMap((t) => [t, t.exp()]);
    let held: Tensor[] | null = make();
    await settle(device);
    expect(memoryStats(device).allocated).toBeGreaterThanOrEqual(base.allocated + 100 * 64 * 64 * 4);
    expect(held).toHaveLength(100);
    held = null;
    // finalizers run on later turns of the event loop: give a loaded machine up to about 2 s
    for (let k = 0; k < 100 && memoryStats(device).allocated > base.allocated; k++) {
      gc!();
      await new Promise((r) => setTimeout(r, 20));
      await settle(device);
    }
    const after = memoryStats(device);
    expect(after.allocated).toBeLessThanOrEqual(base.allocated);
    expect(after.liveStorages).toBeLessThanOrEqual(base.liveStorages);
    expect(after.collectedWithoutDispose).toBeGreaterThanOrEqual(base.collectedWithoutDispose + 100);
  });
});
