import * as moma from '../lib';
import { DType, Tensor, where } from '../lib';
import { describeDevices, tensorFixture } from './support/devices';
import {
  mulberry32, randomF32, randomBf16, randomInt, unaryRef, unaryIntRef, binaryRef, whereRef, UnaryName, BinaryName,
  assertClose, assertExact, numel, bf16Round, castTo, Tolerance,
} from './support/reference';

const EDGE = [NaN, Infinity, -Infinity, -0, 0, 1e-40, -1e-30, 88.5, 89, -87, -104, 1e30, -1e30, 3.4e38, 1, -1, 0.5, 2, 20, -20].map(Math.fround);
const SIZES = [1, 7, 33, 1000, 4097];

function floatTol(device: string, dtype: DType = 'float32'): Tolerance {
  const t: Tolerance = { rtol: device === 'cpu' ? 1e-6 : 4e-6, atol: 1e-37 };
  if (dtype === 'bfloat16') t.bf16Ulps = 1;
  return t;
}

describeDevices('elementwise', (device) => {
  const { keep, mk, read } = tensorFixture(device);


  // Input domains per op, so that random inputs stay in the op's interesting range.
  const domains: Record<string, [number, number]> = {
    neg: [-10, 10], exp: [-20, 20], log: [1e-3, 100], silu: [-20, 20], sigmoid: [-30, 30], tanh: [-6, 6],
    sqrt: [0, 100], rsqrt: [1e-3, 100], abs: [-10, 10], square: [-100, 100],
  };

  describe.each(['float32', 'bfloat16'] as const)('unary %s', (dtype) => {
    for (const op of Object.keys(domains) as UnaryName[]) {
      test.each(SIZES)(`${op} on random [%i] and edge values`, async (n) => {
        const rng = mulberry32(n * 31 + op.length);
        const [lo, hi] = domains[op] as [number, number];
        const raw = dtype === 'float32' ? randomF32(rng, n, lo, hi) : randomBf16(rng, n, lo, hi);
        const x = n === 33 ? Float64Array.from([...raw.slice(0, 33 - EDGE.length), ...EDGE.map((v) => castTo(dtype, v))]) : raw;
        const t = mk(x, [n], dtype);
        const y = keep((t as unknown as Record<string, () => Tensor>)[op]!.call(t));
        expect(y.shape).toEqual([n]);
        expect(y.dtype).toBe(dtype);
        const exp = Array.from(unaryRef(op, x), (v) => castTo(dtype, v));
        assertClose(await read(y), exp, { ...floatTol(device, dtype), label: `${op} ${dtype} n=${n}` });
      });
    }
  });

  test('unary ops keep multi-dim shapes, sign of zero and special values', async () => {
    const x = mk([-0, 0, -2, 4, Infinity, -Infinity], [2, 1, 3]);
    const neg = keep(x.neg());
    expect(neg.shape).toEqual([2, 1, 3]);
    assertExact(await read(neg), [0, -0, 2, -4, -Infinity, Infinity], 'neg', true);
    assertExact(await read(x.abs()), [0, 0, 2, 4, Infinity, Infinity], 'abs', true);
    assertExact(await read(x.sqrt()), [-0, 0, NaN, 2, Infinity, NaN], 'sqrt', true);
    assertExact(await read(x.rsqrt()), [-Infinity, Infinity, NaN, 0.5, 0, NaN], 'rsqrt', true);
    assertClose(await read(x.exp()), [1, 1, Math.exp(-2), Math.exp(4), Infinity, 0].map(Math.fround), { f32Ulps: 1, label: 'exp special' });
    assertClose(await read(x.log()), [-Infinity, -Infinity, NaN, Math.fround(Math.log(4)), Infinity, NaN], { f32Ulps: 1, label: 'log special' });
    assertClose(await read(x.tanh()), [-0, 0, Math.fround(Math.tanh(-2)), Math.fround(Math.tanh(4)), 1, -1], { f32Ulps: 1, signedZero: true, label: 'tanh special' });
    assertClose(await read(x.sigmoid()), [0.5, 0.5, Math.fround(1 / (1 + Math.exp(2))), Math.fround(1 / (1 + Math.exp(-4))), 1, 0], { f32Ulps: 2, label: 'sigmoid special' });
    // silu(-inf) = -inf * sigmoid(-inf) = -inf * 0 = NaN (as in torch)
    assertClose(await read(x.silu()), [-0, 0, -2 / (1 + Math.exp(2)), 4 / (1 + Math.exp(-4)), Infinity, NaN].map(Math.fround), { f32Ulps: 2 });
  });

  test('sigmoid / exp / silu do not overflow into NaN for large magnitudes', async () => {
    const x = mk([-1000, -100, -89, 89, 100, 1000, 3.4e38, -3.4e38], [8]);
    const s = await read(x.sigmoid());
    assertClose(s, [0, 3.720076e-44, 2.2e-39, 1, 1, 1, 1, 0], { atol: 1e-38, f32Ulps: 1 });
    expect(s.every((v) => !Number.isNaN(v))).toBe(true);
    const e = await read(x.exp());
    assertExact(e, [0, Math.fround(Math.exp(-100)), Math.fround(Math.exp(-89)), Infinity, Infinity, Infinity, Infinity, 0].map((v, i) => (i === 2 ? e[2]! : v)), 'exp');
    expect(Math.abs(e[2]! - Math.exp(-89))).toBeLessThan(2 ** -149 * 2);
    const si = await read(x.silu());
    assertClose(si, [-0, -3.720076e-42, -89 * Math.exp(-89), 89, 100, 1000, 3.4e38, -0].map(Math.fround), { atol: 1e-38, f32Ulps: 2 });
  });

  test.each([
    ['scale', 0.1], ['scale', -3], ['addScalar', 0.1], ['addScalar', -1e10], ['pow', 2], ['pow', 0.5], ['pow', -1],
    ['pow', 3], ['pow', 0], ['pow', 1 / 3], ['pow', -0.5], ['pow', NaN],
  ] as [UnaryName, number][])('%s(%p) on random and edge inputs', async (op, alpha) => {
    const rng = mulberry32(77);
    const x = Float64Array.from([...randomF32(rng, 1000, -5, 5), ...EDGE, 1, -1]);
    const t = mk(x, [x.length]);
    const y = keep(op === 'scale' ? t.scale(alpha) : op === 'addScalar' ? t.add(alpha) : t.pow(alpha));
    assertClose(await read(y), Array.from(unaryRef(op, x, alpha), Math.fround), { ...floatTol(device), label: `${op}(${alpha})` });
  });

  test('sub / mul with a number are scalar ops', async () => {
    const x = mk([1, 2.5, -3], [3]);
    assertExact(await read(x.sub(0.5)), [0.5, 2, -3.5]);
    assertExact(await read(x.mul(-2)), [-2, -5, 6]);
    assertExact(await read(moma.div(x, 2)), [0.5, 1.25, -1.5]);
    assertExact(await read(moma.maximum(x, 0)), [1, 2.5, 0]);
    assertExact(await read(moma.minimum(x, 0)), [0, 0, -3]);
  });

  describe('int32 unary (wraps modulo 2^32)', () => {
    const edge = [2147483647, -2147483648, -1, 0, 1, 46341, -46341, 65536, 123456789];
    test.each([
      ['neg', 0], ['abs', 0], ['square', 0], ['scale', 3], ['scale', -7], ['scale', 65537], ['addScalar', 5], ['addScalar', -2147483648],
    ] as ['neg' | 'abs' | 'square' | 'scale' | 'addScalar', number][])('%s(%p)', async (op, alpha) => {
      const x = Float64Array.from([...randomInt(mulberry32(5), 1000, -2147483648, 2147483647), ...edge]);
      const t = mk(x, [x.length], 'int32');
      const y = keep(op === 'scale' ? t.scale(alpha) : op === 'addScalar' ? t.add(alpha) : (t as unknown as Record<string, () => Tensor>)[op]!.call(t));
      expect(y.dtype).toBe('int32');
      assertExact(await read(y), unaryIntRef(op, x, alpha), `int32 ${op}(${alpha})`);
    });

    test('add / sub of integral scalars above 2^24 are exact (no float rounding of the scalar)', async () => {
      const t = mk([0, 1, -5, 2147483647], [4], 'int32');
      assertExact(await read(t.add(16777217)), [16777217, 16777218, 16777212, (2147483647 + 16777217) | 0], 'add 2^24+1');
      assertExact(await read(t.sub(123456789)), [-123456789, -123456788, -123456794, (2147483647 - 123456789) | 0], 'sub 123456789');
      assertExact(await read(t.scale(16777217)), [0, 16777217, Math.imul(-5, 16777217), Math.imul(2147483647, 16777217)], 'scale 2^24+1');
    });

    test('non-integral scalar on int32 is rejected', () => {
      const t = mk([1, 2], [2], 'int32');
      expect(() => t.mul(2.5)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/scale/) }));
    });
  });

  const SHAPE_PAIRS: [number[], number[]][] = [
    [[1], [1]], [[7], [7]], [[33], [1]], [[1], [1000]], [[4097], [4097]], [[3, 1, 5], [4, 1]], [[2, 3, 1, 4], [3, 5, 1]],
    [[5, 1], [1, 6]], [[], [7]], [[6, 4], []], [[0, 3], [1, 3]], [[2, 0], [1]], [[1, 1, 1], [2, 1]],
  ];
  const BIN: BinaryName[] = ['add', 'sub', 'mul', 'div', 'maximum', 'minimum'];

  describe.each(['float32', 'bfloat16', 'int32'] as const)('binary %s with broadcasting', (dtype) => {
    test.each(SHAPE_PAIRS)('%j op %j', async (as, bs) => {
      const rng = mulberry32(as.length * 100 + bs.length * 10 + numel(as));
      const gen = (n: number): Float64Array =>
        dtype === 'int32' ? randomInt(rng, n, -50000, 50000) : dtype === 'bfloat16' ? randomBf16(rng, n, -4, 4) : randomF32(rng, n, -4, 4);
      const a = gen(numel(as)), b = gen(numel(bs));
      const ta = mk(a, as, dtype), tb = mk(b, bs, dtype);
      for (const op of BIN) {
        const y = keep((moma as unknown as Record<string, (x: Tensor, z: Tensor) => Tensor>)[op]!(ta, tb));
        const ref = binaryRef(op, a, as, b, bs, dtype === 'int32');
        expect(y.shape).toEqual(ref.shape);
        expect(y.dtype).toBe(dtype);
        const exp = Array.from(ref.data, (v) => castTo(dtype, v));
        // Single correctly rounded operations: exact on the CPU; CUDA div may be off by an ulp.
        const tol: Tolerance = device === 'cpu' || op !== 'div' ? {} : { f32Ulps: 1, bf16Ulps: dtype === 'bfloat16' ? 1 : 0 };
        assertClose(await read(y), exp, { ...tol, label: `${dtype} ${op} ${JSON.stringify(as)} ${JSON.stringify(bs)}` });
      }
    });
  });

  test('float binary special values: NaN propagates through maximum/minimum, signed zeros, infinities', async () => {
    const a = [NaN, 1, Infinity, -Infinity, -0, 0, 1, NaN, -0, 5, 0, -1];
    const b = [1, NaN, Infinity, Infinity, 0, -0, -0, NaN, -0, 0, 0, 0];
    const ta = mk(a, [12]), tb = mk(b, [12]);
    for (const op of BIN) {
      const exp = binaryRef(op, a, [12], b, [12]).data;
      assertExact(await read((moma as unknown as Record<string, (x: Tensor, z: Tensor) => Tensor>)[op]!(ta, tb)), Array.from(exp, Math.fround), op, true);
    }
    // explicit expectations (not only via the reference)
    assertExact(await read(moma.maximum(ta, tb)), [NaN, NaN, Infinity, Infinity, 0, -0, 1, NaN, -0, 5, 0, 0], 'maximum', true);
    assertExact(await read(moma.div(ta, tb)), [NaN, NaN, NaN, NaN, NaN, NaN, -Infinity, NaN, NaN, Infinity, NaN, -Infinity], 'div');
    // overflow of float32 arithmetic
    assertExact(await read(moma.mul(mk([3e38, -3e38], [2]), mk([10], [1]))), [Infinity, -Infinity], 'mul overflow');
  });

  test('int32 binary: wraparound, division truncates toward zero, x/0 = 0, INT_MIN/-1 wraps', async () => {
    const a = [2147483647, -2147483648, -2147483648, 7, -7, 7, -7, 5, 0, 65536, -1];
    const b = [1, -1, 1, 2, 2, -2, -2, 0, 0, 65536, -1];
    const ta = mk(a, [11], 'int32'), tb = mk(b, [11], 'int32');
    assertExact(await read(moma.add(ta, tb)), [-2147483648, 2147483647, -2147483647, 9, -5, 5, -9, 5, 0, 131072, -2], 'add');
    assertExact(await read(moma.sub(ta, tb)), [2147483646, -2147483647, 2147483647, 5, -9, 9, -5, 5, 0, 0, 0], 'sub');
    assertExact(await read(moma.mul(ta, tb)), [2147483647, -2147483648, -2147483648, 14, -14, -14, 14, 0, 0, 0, 1], 'mul');
    assertExact(await read(moma.div(ta, tb)), [2147483647, -2147483648, -2147483648, 3, -3, -3, 3, 0, 0, 1, 1], 'div');
    assertExact(await read(moma.maximum(ta, tb)), [2147483647, -1, 1, 7, 2, 7, -2, 5, 0, 65536, -1], 'maximum');
    assertExact(await read(moma.minimum(ta, tb)), [1, -2147483648, -2147483648, 2, -7, -2, -7, 0, 0, 65536, -1], 'minimum');
  });

  describe('where', () => {
    test.each([
      [[3, 1, 5], [4, 1], [5]], [[7], [7], [7]], [[1], [33], [1]], [[4097], [1], [4097]], [[2, 1], [1, 3], [2, 3]], [[0, 2], [2], [1]],
    ])('cond %j, a %j, b %j', async (cs, as, bs) => {
      const rng = mulberry32(9);
      const c = randomInt(rng, numel(cs), 0, 3).map((v) => (v === 3 ? 200 : v % 2)); // nonzero (incl. 200) = true
      const a = randomF32(rng, numel(as)), b = randomF32(rng, numel(bs));
      const y = keep(where(mk(c, cs, 'uint8'), mk(a, as), mk(b, bs)));
      const ref = whereRef(c, cs, a, as, b, bs);
      expect(y.shape).toEqual(ref.shape);
      assertExact(await read(y), ref.data, 'where');
    });

    test.each(['int32', 'bfloat16', 'uint8'] as const)('where on %s values moves bits exactly', async (dtype) => {
      const c = [1, 0, 1, 0, 0, 1];
      const a = dtype === 'bfloat16' ? [1.5, -2, bf16Round(3.3), NaN, -0, Infinity] : [1, 2, 3, 4, 5, 255];
      const b = dtype === 'bfloat16' ? [7, 8, 9, 10, -0, 12] : [9, 8, 7, 6, 0, 200];
      const y = keep(where(mk(c, [6], 'uint8'), mk(a, [6], dtype), mk(b, [6], dtype)));
      expect(y.dtype).toBe(dtype);
      assertExact(await read(y), c.map((v, i) => (v ? a[i]! : b[i]!)), `where ${dtype}`, true);
    });
  });
});
