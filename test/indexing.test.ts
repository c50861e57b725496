import { DType, Tensor, indexSelect, scatterAdd, MomaError } from '../lib';
import { describeDevices, tensorFixture } from './support/devices';
import {
  mulberry32, randomF32, randomBf16, randomInt, indexSelectRef, scatterAddRef, assertExact, assertClose, numel,
  normAxis, bf16Round,
} from './support/reference';

describeDevices('indexing', (device) => {
  const { keep, mk, read } = tensorFixture(device);
  const idx = (v: number[]): Tensor => mk(v, [v.length], 'int32');
  const gen = (n: number, dtype: DType, seed: number): Float64Array => {
    const rng = mulberry32(seed);
    if (dtype === 'int32') return randomInt(rng, n, -2147483648, 2147483647);
    if (dtype === 'uint8') return randomInt(rng, n, 0, 255);
    return dtype === 'bfloat16' ? randomBf16(rng, n, -10, 10) : randomF32(rng, n, -10, 10);
  };

  const SELECT: [number[], number, number][] = [
    [[7], 0, 7], [[7], 0, 20], [[3, 1, 5], 0, 4], [[3, 1, 5], 1, 3], [[3, 1, 5], -1, 9], [[1000, 4], 0, 33], [[4, 1000], 1, 1000],
    [[4097], 0, 1], [[2, 33, 3], 1, 0], [[5, 3], 0, 5000],
  ];

  describe.each(['float32', 'bfloat16', 'int32', 'uint8'] as const)('index_select %s', (dtype) => {
    test.each(SELECT)('x %j axis %i with %i indices (repeats allowed)', async (shape, axis, k) => {
      const x = gen(numel(shape), dtype, numel(shape) + k);
      const n = shape[normAxis(axis, shape.length)] as number;
      const index = Array.from(randomInt(mulberry32(k + 3), k, 0, n - 1));
      if (k >= 2) { index[0] = n - 1; index[1] = 0; }
      const y = keep(indexSelect(mk(x, shape, dtype), axis, idx(index)));
      const ref = indexSelectRef(x, shape, axis, index);
      expect(y.shape).toEqual(ref.shape);
      expect(y.dtype).toBe(dtype);
      assertExact(await read(y), ref.data, 'index_select');
    });
  });

  test('index_select copies NaN / -0 / inf bits unchanged', async () => {
    const x = mk([NaN, -0, Infinity, -Infinity], [4]);
    assertExact(await read(x.indexSelect(0, idx([3, 1, 0, 2, 1]))), [-Infinity, -0, NaN, Infinity, -0], 'specials', true);
  });

  const SCATTER: [number[], number, number][] = [
    [[7], 0, 7], [[7], 0, 30], [[3, 1, 5], 0, 4], [[3, 1, 5], 2, 11], [[3, 1, 5], 1, 3], [[33, 4], 0, 1000], [[4, 33], -1, 50],
    [[2, 5, 3], 1, 0], [[4097], 0, 4097],
  ];

  describe.each(['float32', 'bfloat16', 'int32'] as const)('scatter_add %s', (dtype) => {
    test.each(SCATTER)('x %j axis %i with %i contributions (duplicates accumulate in order)', async (shape, axis, k) => {
      const ax = normAxis(axis, shape.length);
      const n = shape[ax] as number;
      const srcShape = shape.slice();
      srcShape[ax] = k;
      const x = dtype === 'int32' ? randomInt(mulberry32(1), numel(shape), -2147483648, 2147483647) : gen(numel(shape), dtype, 1);
      const src = dtype === 'int32' ? randomInt(mulberry32(2), numel(srcShape), -2147483648, 2147483647) : gen(numel(srcShape), dtype, 2);
      const index = Array.from(randomInt(mulberry32(k), k, 0, n - 1));
      const tx = mk(x, shape, dtype);
      const y = keep(scatterAdd(tx, { axis, index: idx(index), src: mk(src, srcShape, dtype) }));
      expect(y.shape).toEqual(shape);
      expect(y.dtype).toBe(dtype);
      const got = await read(y);
      if (dtype === 'int32') {
        assertExact(got, scatterAddRef(x, shape, axis, index, src, 'i32').data, 'scatter_add int32');
      } else if (dtype === 'float32') {
        // float32 adds in float in increasing j: exact on the CPU; against the float64 sum within the accumulation error
        if (device === 'cpu') assertExact(got, scatterAddRef(x, shape, axis, index, src, 'f32').data, 'scatter_add f32 order');
        const exact = scatterAddRef(x, shape, axis, index, src, 'f64').data;
        assertClose(got, exact, { rtol: 1e-6, atol: 1e-5 * Math.max(1, k / Math.max(1, n)), label: 'scatter_add f32 vs f64' });
      } else {
        // bf16: float accumulation, one rounding to bf16 per touched element
        const ref = scatterAddRef(x, shape, axis, index, src, 'bf16').data;
        if (device === 'cpu') assertExact(got, ref, 'scatter_add bf16 rounds once');
        else assertClose(got, ref, { bf16Ulps: 1, label: 'scatter_add bf16' });
      }
      // the input is not modified
      assertExact(await read(tx.clone()), x, 'x unchanged');
    });
  });

  test('bf16 scatter_add rounds once: many small contributions are not lost', async () => {
    // 256 contributions of 2^-8 onto 1.0: per-add bf16 rounding would leave 1.0; one rounding gives 2.0
    const n = 256;
    const y = keep(scatterAdd(mk([1], [1], 'bfloat16'), { axis: 0, index: idx(new Array(n).fill(0)), src: mk(new Array(n).fill(2 ** -8), [n], 'bfloat16') }));
    assertExact(await read(y), [2], 'bf16 single rounding');
    expect(bf16Round(1 + 2 ** -8)).toBe(1);
  });

  test('empty index: index_select gives an empty axis; scatter_add returns a copy', async () => {
    const x = gen(15, 'float32', 5);
    const t = mk(x, [3, 5]);
    const e = keep(t.indexSelect(1, idx([])));
    expect(e.shape).toEqual([3, 0]);
    expect((await read(e)).length).toBe(0);
    const s = keep(t.scatterAdd(0, idx([]), mk([], [0, 5])));
    assertExact(await read(s), x, 'scatter_add with no contributions');
  });

  test('scatterAdd takes { axis, index, src }: a missing one is ERR_ARG naming it', () => {
    const x = mk([0, 0, 0], [3]);
    const index = idx([1]);
    const src = mk([1], [1]);
    expect(() => scatterAdd(x, { axis: 0, index } as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: 'scatterAdd: options.src is required' }));
    expect(() => scatterAdd(x, { index, src } as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: 'scatterAdd: options.axis is required' }));
    expect(() => (scatterAdd as (...args: unknown[]) => unknown)(x, 0, index, src)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: 'scatterAdd: expected an object for options, got number' }));
  });

  test('out-of-range index rejects at the next read with ERR_RANGE naming index_select', async () => {
    const x = mk([1, 2, 3], [3]);
    const y = keep(x.indexSelect(0, idx([0, 3])));
    expect(y.shape).toEqual([2]);
    await expect(y.toArray()).rejects.toMatchObject({ name: 'MomaError', code: 'ERR_RANGE', message: expect.stringMatching(/index_select/) });
    const y2 = keep(x.indexSelect(0, idx([-1])));
    const z = keep(y2.exp().add(1));
    await expect(z.toArray()).rejects.toBeInstanceOf(MomaError);
    await expect(keep(x.indexSelect(0, idx([1, 7]))).exp().toArray()).rejects.toMatchObject({ code: 'ERR_RANGE', message: expect.stringMatching(/index_select/) });
    if (device === 'cpu') {
      // the poison stays with the tensor and everything computed from it
      await expect(y.toArray()).rejects.toMatchObject({ code: 'ERR_RANGE' });
      await expect(z.toArray()).rejects.toMatchObject({ code: 'ERR_RANGE', message: expect.stringMatching(/index_select/) });
      await expect(keep(y.sum()).item()).rejects.toMatchObject({ code: 'ERR_RANGE', message: expect.stringMatching(/index_select/) });
    }
    // unrelated work still succeeds afterwards
    expect(await read(x.add(1))).toEqual([2, 3, 4]);
  });

  test('out-of-range index in scatter_add rejects with ERR_RANGE naming scatter_add', async () => {
    const x = mk([0, 0, 0], [3]);
    const y = keep(x.scatterAdd(0, idx([1, 3]), mk([1, 1], [2])));
    await expect(y.toArray()).rejects.toMatchObject({ code: 'ERR_RANGE', message: expect.stringMatching(/scatter_add/) });
    expect(await read(x.add(0))).toEqual([0, 0, 0]);
  });
});
