import { DType, tensor, concat } from '../lib';
import { describeDevices, tensorFixture } from './support/devices';
import {
  mulberry32, randomF32, randomInt, permuteRef, transposeRef, sliceRef, concatRef, broadcastToRef, assertExact,
  numel, bf16Round,
} from './support/reference';

describeDevices('layout', (device) => {
  const { keep, mk, read } = tensorFixture(device);
  const gen = (n: number, dtype: DType, seed = n): Float64Array => {
    const rng = mulberry32(seed);
    if (dtype === 'int32') return randomInt(rng, n, -2147483648, 2147483647);
    if (dtype === 'uint8') return randomInt(rng, n, 0, 255);
    const x = randomF32(rng, n, -100, 100);
    return dtype === 'bfloat16' ? x.map(bf16Round) : x;
  };
  const DTYPES = ['float32', 'bfloat16', 'int32', 'uint8'] as const;

  describe.each(DTYPES)('%s', (dtype) => {
    test.each([
      [[7], [0]], [[3, 1, 5], [2, 0, 1]], [[2, 3, 4, 5], [3, 1, 0, 2]], [[33, 7], [1, 0]], [[4097, 2], [-1, -2]], [[2, 1, 3, 1, 2], [4, 3, 2, 1, 0]], [[0, 3], [1, 0]],
    ] as [number[], number[]][])('permute %j by %j', async (shape, dims) => {
      const x = gen(numel(shape), dtype);
      const y = keep(mk(x, shape, dtype).permute(dims));
      const ref = permuteRef(x, shape, dims);
      expect(y.shape).toEqual(ref.shape);
      expect(y.dtype).toBe(dtype);
      assertExact(await read(y), ref.data, 'permute');
    });

    test.each([
      [[33, 7], -2, -1], [[3, 1, 5], 0, 2], [[2, 3, 4], 1, 1], [[1000, 3], 0, 1],
    ] as [number[], number, number][])('transpose %j (%i, %i) and default', async (shape, d0, d1) => {
      const x = gen(numel(shape), dtype);
      const t = mk(x, shape, dtype);
      const y = keep(t.transpose(d0, d1));
      const ref = transposeRef(x, shape, d0, d1);
      expect(y.shape).toEqual(ref.shape);
      assertExact(await read(y), ref.data, 'transpose');
      const yd = keep(t.transpose());
      assertExact(await read(yd), transposeRef(x, shape).data, 'transpose default');
    });

    test.each([
      [[7], 0, 2, 5], [[7], 0, -3, undefined], [[3, 1, 5], 2, 1, 4], [[3, 1, 5], -1, 0, 0], [[4097], 0, 1, 4096], [[33, 7], 0, 32, 33],
      [[2, 3, 4, 5], 1, -2, -1], [[2, 3, 4, 5], 3, 0, 5], [[4, 6], 1, 3, 3],
    ] as [number[], number, number, number | undefined][])('slice %j axis %i [%p, %p)', async (shape, axis, start, end) => {
      const x = gen(numel(shape), dtype);
      const y = keep(mk(x, shape, dtype).slice(axis, start, end));
      const size = shape.at(axis) as number;
      const ref = sliceRef(x, shape, axis, start, end ?? size);
      expect(y.shape).toEqual(ref.shape);
      assertExact(await read(y), ref.data, 'slice');
    });

    test.each([
      [[[2, 3], [4, 3], [1, 3]], 0], [[[3, 1, 5], [3, 4, 5]], 1], [[[3, 1, 5], [3, 1, 2], [3, 1, 0], [3, 1, 7]], -1], [[[7]], 0],
      [[[4097], [1]], 0], [[[0, 2], [3, 2]], 0], [[[2, 0, 3], [2, 0, 3]], 2],
    ] as [number[][], number][])('concat %j along %i', async (shapes, axis) => {
      const parts = shapes.map((s, i) => ({ shape: s, data: gen(numel(s), dtype, 100 + i) }));
      const y = keep(concat(parts.map((p) => mk(p.data, p.shape, dtype)), axis));
      const ref = concatRef(parts, axis);
      expect(y.shape).toEqual(ref.shape);
      expect(y.dtype).toBe(dtype);
      assertExact(await read(y), ref.data, 'concat');
    });

    test.each([
      [[1], [7]], [[3, 1], [2, 3, 4]], [[4, 1], [3, 4, 5]], [[5], [2, 1, 5]], [[], [2, 3]], [[1, 1], [0, 4]], [[33, 1, 2], [33, 3, 2]],
    ] as [number[], number[]][])('broadcastTo %j -> %j', async (shape, target) => {
      const x = gen(numel(shape), dtype);
      const y = keep(mk(x, shape, dtype).broadcastTo(target));
      expect(y.shape).toEqual(target);
      assertExact(await read(y), broadcastToRef(x, shape, target).data, 'broadcast_to');
    });
  });

  test('reshape keeps values and order, infers -1, shares no state with later ops', async () => {
    const x = gen(4096, 'float32');
    const t = mk(x, [16, 256]);
    const r = keep(t.reshape(4, -1, 8));
    expect(r.shape).toEqual([4, 128, 8]);
    assertExact(await read(r), x, 'reshape');
    const r2 = keep(t.reshape([4096]));
    expect(r2.shape).toEqual([4096]);
    assertExact(await read(r2), x, 'reshape array form');
    const s = keep(mk([5], [1]).reshape([]));
    expect(s.shape).toEqual([]);
    expect(await s.item()).toBe(5);
    const z = keep(mk([], [0, 3]).reshape(3, 0, 5));
    expect(z.shape).toEqual([3, 0, 5]);
    expect((await read(z)).length).toBe(0);
    // -1 next to a 0 dim is ambiguous (as in torch) and rejected
    expect(() => mk([], [0, 3]).reshape(3, 0, -1)).toThrow(expect.objectContaining({ code: 'ERR_SHAPE' }));
    // reshape is a view: disposing the source keeps the view readable
    const v = keep(mk([1, 2, 3, 4], [2, 2]).reshape(4));
    expect(await read(v)).toEqual([1, 2, 3, 4]);
  });

  test('clone copies; permute / slice outputs are independent of later disposal of the input', async () => {
    const x = gen(33 * 7, 'float32');
    const t = tensor(Float32Array.from(x), { shape: [33, 7], device });
    const c = keep(t.clone());
    const p = keep(t.permute(1, 0));
    const s = keep(t.slice(0, 3, 10));
    t.dispose();
    assertExact(await read(c), x, 'clone');
    assertExact(await read(p), permuteRef(x, [33, 7], [1, 0]).data, 'permute after dispose');
    assertExact(await read(s), sliceRef(x, [33, 7], 0, 3, 10).data, 'slice after dispose');
  });

  test('chained layout ops compose (permute of slice of broadcast)', async () => {
    const x = gen(15, 'float32');
    const b = keep(mk(x, [3, 1, 5]).broadcastTo([3, 4, 5]));
    const s = keep(b.slice(1, 1, 3));
    const p = keep(s.permute(2, 0, 1));
    const ref = permuteRef(sliceRef(broadcastToRef(x, [3, 1, 5], [3, 4, 5]).data, [3, 4, 5], 1, 1, 3).data, [3, 2, 5], [2, 0, 1]);
    expect(p.shape).toEqual(ref.shape);
    assertExact(await read(p), ref.data, 'chain');
  });

  test('tolist builds nested arrays in row-major order', async () => {
    const t = mk([1, 2, 3, 4, 5, 6], [2, 1, 3]);
    expect(await t.tolist()).toEqual([[[1, 2, 3]], [[4, 5, 6]]]);
    expect(await keep(mk([7], [1]).reshape([])).tolist()).toBe(7);
  });
});
