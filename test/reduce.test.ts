import { softmax, logSoftmax } from '../lib';
import { describeDevices, tensorFixture } from './support/devices';
import {
  mulberry32, randomF32, randomBf16, randomInt, reduceRef, softmaxRef, ReduceName, assertClose, assertExact,
  numel, castTo,
} from './support/reference';

const CASES: [number[], number][] = [
  [[1], 0], [[7], 0], [[33], -1], [[1000], 0], [[4097], 0], [[3, 1, 5], 0], [[3, 1, 5], 1], [[3, 1, 5], 2],
  [[4, 33], 1], [[33, 4], 0], [[2, 4097], 1], [[4097, 3], 0], [[2, 3, 4, 5], -2], [[5, 300, 3], 1], [[1, 70000], 1],
];

describeDevices('reductions', (device) => {
  const { keep, mk, read } = tensorFixture(device);
  // Sums: CPU accumulates in double and rounds once; CUDA in float with a tree.
  const sumRtol = device === 'cpu' ? 2e-7 : 1e-5;

  describe.each(['float32', 'bfloat16'] as const)('%s', (dtype) => {
    test.each(CASES)('shape %j axis %i: sum, mean, max, argmax (keepdim both ways)', async (shape, axis) => {
      const n = numel(shape);
      const rng = mulberry32(n + axis * 7);
      const x = dtype === 'float32' ? randomF32(rng, n, -3, 5) : randomBf16(rng, n, -3, 5);
      const t = mk(x, shape, dtype);
      for (const op of ['sum', 'mean', 'max', 'argmax'] as ReduceName[]) {
        for (const keepdim of [false, true]) {
          const y = keep(t[op](axis, keepdim));
          const ref = reduceRef(op, x, shape, axis, keepdim);
          expect(y.shape).toEqual(ref.shape);
          expect(y.dtype).toBe(op === 'argmax' ? 'int32' : dtype);
          const got = await read(y);
          if (op === 'max' || op === 'argmax') {
            assertExact(got, ref.data, `${op} ${JSON.stringify(shape)} axis ${axis}`);
          } else {
            const scale = op === 'mean' ? (shape.at(axis) as number) : 1;
            const each = Array.from(ref.absSum, (s) => (sumRtol * s) / scale);
            const exp = Array.from(ref.data, (v) => castTo(dtype, v));
            assertClose(got, exp, { atolEach: each, f32Ulps: 1, bf16Ulps: dtype === 'bfloat16' ? 1 : 0, atol: 1e-30, label: `${op} ${JSON.stringify(shape)} axis ${axis}` });
          }
        }
      }
    });
  });

  test('full reductions (no axis) give shape [] or all-ones with keepdim', async () => {
    const x = randomF32(mulberry32(1), 4097);
    const t = mk(x, [17, 241]);
    const s = keep(t.sum());
    expect(s.shape).toEqual([]);
    const ref = reduceRef('sum', x, [4097], 0);
    assertClose([await s.item()], [Math.fround(ref.data[0]!)], { atol: sumRtol * ref.absSum[0]!, f32Ulps: 1 });
    const m = keep(t.max(undefined, true));
    expect(m.shape).toEqual([1, 1]);
    expect(await m.item()).toBe(Math.max(...x));
    const am = keep(t.argmax());
    expect(await am.item()).toBe(x.indexOf(Math.max(...x)));
    const mean = keep(t.mean());
    assertClose([await mean.item()], [Math.fround(ref.data[0]! / 4097)], { atol: (sumRtol * ref.absSum[0]!) / 4097, f32Ulps: 1 });
  });

  test('ties: max and argmax take the first index; NaN wins and the first NaN is reported', async () => {
    const t = mk([1, 5, 5, 2, /* row 2 */ 3, NaN, 7, NaN, /* row 3 */ -Infinity, -Infinity, -Infinity, -Infinity, /* row 4 */ 0, -0, 0, -1], [4, 4]);
    assertExact(await read(t.argmax(1)), [1, 1, 0, 0], 'argmax rows');
    assertExact(await read(t.max(1)), [5, NaN, -Infinity, 0], 'max rows');
    const cols = mk([2, 9, 9, 9, 2, NaN, 1, 9, 3], [3, 3]);
    // columns: [2, 9, 1], [9, 2, 9], [9, NaN, 3]
    assertExact(await read(cols.argmax(0)), [1, 0, 1], 'argmax columns');
    assertExact(await read(cols.max(0)), [9, 9, NaN], 'max columns');
    // long rows (split along the axis on the CPU): the first of many equal maxima still wins
    const long = new Float64Array(100000).fill(1);
    long[70001] = 2; long[90000] = 2; long[99999] = 2;
    assertExact(await read(mk(long, [1, 100000]).argmax(1)), [70001], 'argmax long row');
    long[80000] = NaN; long[95000] = NaN;
    assertExact(await read(mk(long, [100000]).argmax(0)), [80000], 'argmax long row NaN');
    assertExact(await read(mk(long, [100000]).max(0)), [NaN], 'max long row NaN');
  });

  test('sum / mean propagate NaN and infinities', async () => {
    const t = mk([1, NaN, 2, Infinity, 1, 2, Infinity, -Infinity, 1e38, 1e38, 1e38, 1e38], [3, 4]);
    assertExact(await read(t.sum(1)), [NaN, NaN, Infinity], 'sum specials');
    const mean = await read(t.mean(1));
    assertExact(mean.slice(0, 2), [NaN, NaN], 'mean specials');
    // the CPU accumulates in double, so the mean of four 1e38 is 1e38 (not inf)
    if (device === 'cpu') expect(mean[2]).toBe(Math.fround(1e38));
    const big = mk([3e38, 3e38, -3e38], [3]);
    // CPU accumulates in double: the partial sum 6e38 does not overflow.
    if (device === 'cpu') assertExact(await read(big.sum(0)), [Math.fround(3e38)], 'double accumulation');
    assertExact(await read(mk([1e38, 1e38, 1e38, 1e38], [4]).sum(0)), [Infinity], 'sum overflows float32');
  });

  test('int32 sum wraps modulo 2^32; int32 max / argmax; empty axes', async () => {
    const x = [2147483647, 1, -2147483648, -1, 5, 5];
    const t = mk(x, [3, 2], 'int32');
    assertExact(await read(t.sum(1)), [-2147483648, 2147483647, 10], 'int32 sum');
    assertExact(await read(t.sum(0)), [(2147483647 - 2147483648 + 5) | 0, (1 - 1 + 5) | 0], 'int32 sum axis 0');
    assertExact(await read(t.max(0)), [2147483647, 5], 'int32 max');
    assertExact(await read(t.argmax(1)), [0, 1, 0], 'int32 argmax');
    const ri = randomInt(mulberry32(4), 4097, -2147483648, 2147483647);
    const ti = mk(ri, [4097], 'int32');
    assertExact(await read(ti.sum(0)), reduceRef('sum', ri, [4097], 0, false, true).data, 'int32 sum random');
    // sum over an empty axis is 0; the other dims keep their size
    const e = mk([], [0, 3]);
    const es = keep(e.sum(0));
    expect(es.shape).toEqual([3]);
    assertExact(await read(es), [0, 0, 0], 'sum of empty axis');
    const e2 = keep(e.sum(1));
    expect(e2.shape).toEqual([0]);
    expect((await read(e2)).length).toBe(0);
  });

  describe.each(['float32', 'bfloat16'] as const)('softmax / log-softmax %s', (dtype) => {
    test.each([
      [[1], 0], [[7], 0], [[33], -1], [[1000], 0], [[4097], 0], [[3, 1, 5], 1], [[3, 1, 5], 2], [[3, 1, 5], 0], [[4, 33], 0], [[2, 3, 4, 5], 1], [[2, 2000, 3], 1],
    ] as [number[], number][])('shape %j axis %i', async (shape, axis) => {
      const n = numel(shape);
      const rng = mulberry32(n * 3 + axis);
      const x = dtype === 'float32' ? randomF32(rng, n, -8, 8) : randomBf16(rng, n, -8, 8);
      const t = mk(x, shape, dtype);
      const tol = (lg: boolean) => ({
        rtol: device === 'cpu' ? 2e-6 : 2e-5, atol: lg ? (device === 'cpu' ? 2e-6 : 2e-5) : 1e-9, bf16Ulps: dtype === 'bfloat16' ? 1 : 0,
      });
      const sm = keep(softmax(t, axis));
      expect(sm.shape).toEqual(shape);
      assertClose(await read(sm), Array.from(softmaxRef(x, shape, axis), (v) => castTo(dtype, v)), { ...tol(false), label: 'softmax' });
      const ls = keep(logSoftmax(t, axis));
      assertClose(await read(ls), Array.from(softmaxRef(x, shape, axis, true), (v) => castTo(dtype, v)), { ...tol(true), label: 'log_softmax' });
    });
  });

  test('softmax edge cases: large magnitudes, -inf, NaN, single element, empty', async () => {
    const x = [1000, 999, -1000, /* */ -Infinity, 0, 1, /* */ NaN, 1, 2, /* */ 88, 89, 90, /* */ -1e30, 1e30, 0];
    const t = mk(x, [5, 3]);
    const sm = await read(softmax(t));
    expect(sm.slice(0, 3).every(Number.isFinite)).toBe(true);
    assertClose(sm, Array.from(softmaxRef(x, [5, 3], 1), Math.fround), { rtol: 1e-5, atol: 1e-9 });
    expect(sm[3]).toBe(0);
    expect(sm.slice(6, 9).every(Number.isNaN)).toBe(true);
    assertExact(sm.slice(12), [0, 1, 0], 'huge spread');
    const ls = await read(logSoftmax(t));
    assertClose(ls, Array.from(softmaxRef(x, [5, 3], 1, true), Math.fround), { rtol: 1e-5, atol: 1e-5 });
    expect(ls[2]).toBeCloseTo(-2000 - Math.log1p(Math.exp(-1)), 2);
    expect(ls[3]).toBe(-Infinity);
    assertExact(await read(softmax(mk([42], [1]))), [1], 'single');
    const e = keep(softmax(mk([], [0, 4])));
    expect(e.shape).toEqual([0, 4]);
    expect((await read(e)).length).toBe(0);
    // rows of softmax sum to 1
    const r = randomF32(mulberry32(3), 33 * 50, -20, 20);
    const rows = await read(softmax(mk(r, [50, 33])));
    for (let i = 0; i < 50; i++) expect(Math.abs(rows.slice(i * 33, i * 33 + 33).reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-5);
  });
});
