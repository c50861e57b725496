import * as v8 from 'v8';
import * as vm from 'vm';
import { Tensor, tensor, full, matmul, memoryStats, synchronize, MomaError } from '../lib';
import { describeDevices } from './support/devices';
import { mulberry32, randomF32, matmulRef, relFrobenius, assertExact, Disposer } from './support/reference';

describeDevices('asynchronous execution', (device) => {
  const bag = new Disposer();
  const keep = <T extends Tensor>(t: T): T => bag.keep(t);
  afterEach(() => bag.disposeAll());

  /** A chain of n x n matmuls (values stay bounded: each step is scaled by 1/32). */
  const chain = (steps: number, n = 1024): { out: Tensor; input: Float64Array; w: Float64Array } => {
    const input = randomF32(mulberry32(1), n * n), w = randomF32(mulberry32(2), n * n);
    let x = keep(tensor(Float32Array.from(input), { shape: [n, n], device }));
    const wt = keep(tensor(Float32Array.from(w), { shape: [n, n], device }));
    for (let i = 0; i < steps; i++) x = keep(keep(matmul(x, wt)).scale(1 / 32));
    return { out: x, input, w };
  };

  test('ops return before the work is done; the event loop keeps running while a read is pending', async () => {
    const events: string[] = [];
    const { out, input, w } = chain(4);
    // Work is still queued right after the calls returned (on the CPU the chain takes far longer
    // than the calls; a GPU may drain its launch queue at once, so only the CPU asserts ordering).
    const cpu = device === 'cpu';
    if (cpu) expect(memoryStats(device).pendingTasks).toBeGreaterThan(0);
    const read = out.toArray().then((v) => {
      events.push('read');
      return v;
    });
    setImmediate(() => events.push('immediate'));
    await new Promise<void>((r) => setTimeout(() => { events.push('timeout'); r(); }, 0));
    const values = await read;
    expect(events).toContain('immediate');
    if (cpu) {
      expect(events.indexOf('immediate')).toBeLessThan(events.indexOf('read'));
      expect(events.indexOf('timeout')).toBeLessThan(events.indexOf('read'));
    }
    // spot-check the first two rows against the reference chain
    let rows = input.slice(0, 2 * 1024);
    for (let s = 0; s < 4; s++) rows = matmulRef(rows, [2, 1024], w, [1024, 1024]).data.map((v) => v / 32);
    expect(relFrobenius(Array.from(values.slice(0, 2048)), rows)).toBeLessThan(device === 'cpu' ? 1e-5 : 5e-2);
    await synchronize(device);
  });

  test('reads after many queued ops see all of them, in order', async () => {
    let x = keep(full([33], 0, { device }));
    for (let i = 0; i < 500; i++) {
      const next = i % 2 === 0 ? x.add(1) : x.mul(2);
      x.dispose();
      x = keep(next);
    }
    // ((0 + 1) * 2 + 1) * 2 ... : 250 rounds of v -> 2v + 2 from 0 (finite in float32)
    let v = 0;
    for (let i = 0; i < 500; i++) v = Math.fround(i % 2 === 0 ? v + 1 : v * 2);
    assertExact(Array.from(await x.toArray()), new Array(33).fill(v), 'sequence');
    // non-commuting sequence on one tensor: (2t + 1) * 3 - t
    const t = keep(tensor([1, 2, 3], { device }));
    const r = keep(keep(keep(keep(t.mul(2)).add(1)).mul(3)).sub(t));
    assertExact(Array.from(await r.toArray()), [8, 13, 18], 'order');
  });

  test('reads resolve in the order they were issued', async () => {
    const order: number[] = [];
    const { out } = chain(2, 512);
    const small = keep(tensor([1], { device }));
    const p1 = out.toArray().then(() => order.push(1));
    const p2 = small.toArray().then(() => order.push(2));
    const p3 = keep(small.add(1)).toArray().then(() => order.push(3));
    await Promise.all([p1, p2, p3]);
    expect(order).toEqual([1, 2, 3]);
  });

  test('dispose while a read (or a consumer op) is pending still resolves correctly', async () => {
    const x = tensor(Float32Array.from([1, 2, 3, 4]), { device });
    const { out } = chain(3, 512);
    const y = keep(keep(out.sum()).mul(0)).add(x); // queued behind the chain
    const pending = y.toArray();
    const pendingX = x.toArray();
    x.dispose();
    y.dispose();
    expect(y.disposed).toBe(true);
    assertExact(Array.from(await pending), [1, 2, 3, 4], 'read after dispose');
    assertExact(Array.from(await pendingX), [1, 2, 3, 4], 'input read after dispose');
    await expect(y.toArray()).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
  });

  test('synchronize waits for queued work; errors surface at reads, not at the call', async () => {
    const { out } = chain(2, 512);
    const bad = keep(out.indexSelect(0, keep(tensor(Int32Array.from([2000]), { device }))));
    const after = keep(out.sum());
    await synchronize(device);
    // everything queued before synchronize is finished: a read of it cannot be overtaken
    const [s] = Array.from(await after.toArray());
    expect(Number.isFinite(s)).toBe(true);
    await expect(bad.toArray()).rejects.toBeInstanceOf(MomaError);
  });

  test('Symbol.dispose and `using` free tensors at scope exit', async () => {
    // tensors that earlier tests left to the garbage collector must not be freed mid-count:
    // collect them now and let their finalizers run
    const gc = (globalThis as { gc?: () => void }).gc ?? (() => {
      v8.setFlagsFromString('--expose-gc');
      return vm.runInNewContext('gc') as () => void;
    })();
    gc();
    await new Promise((resolve) => setImmediate(resolve));
    await synchronize(device);
    const before = memoryStats(device).liveStorages;
    let escaped: Tensor | undefined;
    {
      using t = tensor([1, 2, 3], { device });
      escaped = t;
      expect(Array.from(await t.toArray())).toEqual([1, 2, 3]);
    }
    expect(escaped.disposed).toBe(true);
    const u = tensor([4], { device });
    u[Symbol.dispose]();
    expect(u.disposed).toBe(true);
    await synchronize(device);
    expect(memoryStats(device).liveStorages).toBe(before);
  });
});
