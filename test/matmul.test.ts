import { DType, matmul } from '../lib';
import { describeDevices, tensorFixture } from './support/devices';
import { mulberry32, randomF32, randomBf16, matmulRef, assertClose, assertExact, relFrobenius, numel, bf16Round, castTo } from './support/reference';

type Case = [number[], number[], boolean, boolean];

const CASES: Case[] = [
  [[1, 1], [1, 1], false, false],
  [[7, 33], [33, 1], false, false],
  [[1, 1000], [1000, 7], false, false],
  [[33, 7], [7, 33], false, false],
  [[4097, 3], [3, 5], false, false],
  [[5, 7], [5, 9], true, false], // a^T
  [[7, 5], [9, 5], false, true], // b^T
  [[5, 7], [9, 5], true, true],
  [[3, 7, 5], [3, 5, 9], false, false], // batched
  [[2, 3, 7, 5], [5, 9], false, false], // b broadcast over batch
  [[7, 5], [2, 3, 5, 9], false, false], // a broadcast over batch
  [[4, 5, 7], [4, 9, 5], true, true],
  [[2, 33, 5], [33, 65], true, false],
  [[65, 129], [129, 67], false, false], // exercises packing / edge tiles
  [[130, 257], [66, 257], false, true],
];

describeDevices('matmul', (device) => {
  const { keep, mk, read } = tensorFixture(device);

  /**
   * float32 accumulation (the CPU, and CUDA's float32-accurate path for float32 x float32): elementwise
   * bound ~ K*eps*sum|a||b| and tight Frobenius; CUDA with a bf16 operand: bf16 tensor cores.
   */
  const check = (got: number[], ref: ReturnType<typeof matmulRef>, outDtype: DType, label: string, f32Inputs = false): void => {
    const expected = Array.from(ref.data, (v) => castTo(outDtype, v));
    if (device === 'cpu' || f32Inputs) {
      const each = Array.from(ref.absDot, (s) => s * ref.K * 2 ** -23);
      assertClose(got, expected, { atolEach: each, atol: 1e-30, bf16Ulps: outDtype === 'bfloat16' ? 1 : 0, label });
      expect(relFrobenius(got, ref.data)).toBeLessThan(outDtype === 'bfloat16' ? 8e-3 : 1e-5);
    } else {
      expect(relFrobenius(got, ref.data)).toBeLessThan(1e-2);
    }
  };

  test.each(CASES)('float32 %j @ %j (transA=%p, transB=%p)', async (as, bs, transA, transB) => {
    const rng = mulberry32(numel(as) + numel(bs) * 3);
    const a = randomF32(rng, numel(as)), b = randomF32(rng, numel(bs));
    const y = keep(matmul(mk(a, as), mk(b, bs), { transA, transB }));
    const ref = matmulRef(a, as, b, bs, transA, transB);
    expect(y.shape).toEqual(ref.shape);
    expect(y.dtype).toBe('float32');
    check(await read(y), ref, 'float32', `${JSON.stringify(as)}@${JSON.stringify(bs)}`, true);
  });

  test.each([
    [[33, 7], [7, 33], 'bfloat16', 'bfloat16'], [[3, 7, 65], [3, 65, 9], 'bfloat16', 'bfloat16'], [[7, 33], [33, 5], 'bfloat16', 'float32'], [[7, 33], [33, 5], 'float32', 'bfloat16'],
  ] as [number[], number[], DType, DType][])('%j @ %j with %s x %s inputs', async (as, bs, da, db) => {
    const rng = mulberry32(numel(as) * 7);
    const a = da === 'bfloat16' ? randomBf16(rng, numel(as)) : randomF32(rng, numel(as));
    const b = db === 'bfloat16' ? randomBf16(rng, numel(bs)) : randomF32(rng, numel(bs));
    const y = keep(matmul(mk(a, as, da), mk(b, bs, db)));
    const out: DType = da === 'bfloat16' && db === 'bfloat16' ? 'bfloat16' : 'float32';
    expect(y.dtype).toBe(out);
    const got = await read(y);
    if (out === 'bfloat16') expect(got.every((v) => v === bf16Round(v))).toBe(true);
    check(got, matmulRef(a, as, b, bs), out, 'mixed');
  });

  test('larger K with large magnitudes (relative accuracy) ', async () => {
    const rng = mulberry32(99);
    const [M, K, N] = [9, 4097, 11];
    const a = randomF32(rng, M * K, -1000, 1000), b = randomF32(rng, K * N, -1e-3, 1e-3);
    const y = keep(matmul(mk(a, [M, K]), mk(b, [K, N])));
    check(await read(y), matmulRef(a, [M, K], b, [K, N]), 'float32', 'large K', true);
  });

  test('identity and exact small-integer products', async () => {
    const eye = Array.from({ length: 49 }, (_, i) => (i % 8 === 0 ? 1 : 0));
    const x = randomF32(mulberry32(3), 7 * 33);
    assertExact(await read(matmul(mk(eye, [7, 7]), mk(x, [7, 33]))), x, 'I @ x');
    const a = [1, 2, 3, 4, 5, 6], b = [7, 8, 9, 10, 11, 12];
    assertExact(await read(matmul(mk(a, [2, 3]), mk(b, [3, 2]))), [58, 64, 139, 154], 'small ints');
    assertExact(await read(matmul(mk(a, [3, 2]), mk(b, [3, 2]), { transA: true })), [89, 98, 116, 128], 'a^T b');
    assertExact(await read(matmul(mk(a, [2, 3]), mk(b, [2, 3]), { transB: true })), [50, 68, 122, 167], 'a b^T');
  });

  test('empty dimensions: K = 0 gives zeros, M = 0 / batch = 0 give empty outputs', async () => {
    const z = keep(matmul(mk([], [3, 0]), mk([], [0, 4])));
    expect(z.shape).toEqual([3, 4]);
    assertExact(await read(z), new Array(12).fill(0), 'K = 0');
    const e = keep(matmul(mk([], [0, 5]), mk(new Array(20).fill(1), [5, 4])));
    expect(e.shape).toEqual([0, 4]);
    expect((await read(e)).length).toBe(0);
    const eb = keep(matmul(mk([], [0, 2, 3]), mk([], [0, 3, 4])));
    expect(eb.shape).toEqual([0, 2, 4]);
  });

  test('NaN and infinity propagate to the affected rows / columns only', async () => {
    const a = [1, 2, NaN, 4, 5, 6, 7, 8, 9]; // row 0 has a NaN
    const b = [1, 0, 0, 0, 1, 0, 0, 0, Infinity]; // column 2 has an inf
    const got = await read(matmul(mk(a, [3, 3]), mk(b, [3, 3])));
    const ref = matmulRef(a, [3, 3], b, [3, 3]).data;
    // numerically: row 0 -> NaN everywhere (NaN * 0 = NaN); column 2 of other rows -> inf
    assertExact(got, Array.from(ref, Math.fround), 'specials');
    expect(got.slice(0, 3).every(Number.isNaN)).toBe(true);
    expect(got[5]).toBe(Infinity);
    expect(got[3]).toBe(4);
  });
});
