import { DType, tensor, full, zeros, ones, arange, empty, MomaError } from '../lib';
import { describeDevices, tensorFixture } from './support/devices';
import {
  mulberry32, randomF32, randomInt, assertExact, f32ToBf16Bits, bf16BitsToF32, bitsF32, f32Bits, castTo, bf16Round,
} from './support/reference';

describeDevices('creation', (device) => {
  const { keep, read } = tensorFixture(device);

  test('tensor() from nested arrays infers shape, defaults to float32 and rounds to float32', async () => {
    const t = keep(tensor([[0.1, 2], [3, -4.5], [1e-50, 1e300]], { device }));
    expect(t.shape).toEqual([3, 2]);
    expect(t.dtype).toBe('float32');
    expect(t.device).toBe(device);
    expect(t.ndim).toBe(2);
    expect(t.numel).toBe(6);
    assertExact(await read(t), [Math.fround(0.1), 2, 3, -4.5, 0, Infinity], 'nested');
    const b = keep(tensor([true, false, true], { device }));
    assertExact(await read(b), [1, 0, 1], 'booleans');
    const s = keep(tensor(3.5, { device }));
    expect(s.shape).toEqual([]);
    expect(await s.item()).toBe(3.5);
    const e = keep(tensor([], { device }));
    expect(e.shape).toEqual([0]);
    const deep = keep(tensor([[[[[[[[1]]]]]]]], { device }));
    expect(deep.shape).toEqual([1, 1, 1, 1, 1, 1, 1, 1]);
    expect(await tensor([[1, 2, 3], [4, 5, 6]], { device, shape: [3, 2] }).tolist()).toEqual([[1, 2], [3, 4], [5, 6]]);
  });

  test('tensor() nested with integer dtypes checks representability', async () => {
    const i = keep(tensor([[2147483647, -2147483648], [0, -1]], { dtype: 'int32', device }));
    expect(i.dtype).toBe('int32');
    assertExact(await read(i), [2147483647, -2147483648, 0, -1], 'int32 nested');
    const u = keep(tensor([0, 255, 7], { dtype: 'uint8', device }));
    expect(await read(u)).toEqual([0, 255, 7]);
    expect(() => tensor([1.5], { dtype: 'int32', device })).toThrow(expect.objectContaining({ code: 'ERR_RANGE', message: expect.stringMatching(/tensor/) }));
    expect(() => tensor([256], { dtype: 'uint8', device })).toThrow(expect.objectContaining({ code: 'ERR_RANGE' }));
    expect(() => tensor([2147483648], { dtype: 'int32', device })).toThrow(expect.objectContaining({ code: 'ERR_RANGE' }));
    expect(() => tensor([[1, 2], [3]], { device })).toThrow(expect.objectContaining({ code: 'ERR_SHAPE', message: expect.stringMatching(/ragged/) }));
  });

  test('tensor() from TypedArrays: dtype by array type, subarray offsets respected', async () => {
    const rng = mulberry32(1);
    const f = Float32Array.from(randomF32(rng, 1000));
    const tf = keep(tensor(f, { device }));
    expect(tf.dtype).toBe('float32');
    expect(tf.shape).toEqual([1000]);
    assertExact(await read(tf), f, 'Float32Array');
    const d = Float64Array.from([0.1, 1e300, -1e-50, 16777217]);
    assertExact(await read(tensor(d, { device })), [Math.fround(0.1), Infinity, -0, 16777216], 'Float64Array rounds to float32');
    const i = Int32Array.from([2147483647, -2147483648, 5]);
    const ti = keep(tensor(i, { device }));
    expect(ti.dtype).toBe('int32');
    assertExact(await read(ti), i, 'Int32Array');
    const u = Uint8Array.from([0, 128, 255]);
    const tu = keep(tensor(u, { device }));
    expect(tu.dtype).toBe('uint8');
    expect(await read(tu)).toEqual([0, 128, 255]);
    const sub = f.subarray(7, 7 + 33);
    assertExact(await read(tensor(sub, { device, shape: [3, 11] })), sub, 'subarray with byteOffset');
    const subI = i.subarray(1);
    assertExact(await read(tensor(subI, { device })), [-2147483648, 5], 'Int32Array subarray');
    expect(() => tensor(f, { device, shape: [999] })).toThrow(expect.objectContaining({ code: 'ERR_SHAPE', message: expect.stringMatching(/tensor/) }));
    // Float32Array converted to another dtype on creation
    assertExact(await read(tensor(Float32Array.from([1.9, -1.9, NaN]), { dtype: 'int32', device })), [1, -1, 0], 'float -> int32 on creation');
  });

  test('bf16 from raw bits (Uint16Array) and bf16 rounding ties to even, exactly', async () => {
    const bits = Uint16Array.from([0x3f80, 0x3f81, 0xbf80, 0x7f80, 0xff80, 0x8000, 0x0001, 0x7f7f, 0x7fc0]);
    const t = keep(tensor(bits, { device }));
    expect(t.dtype).toBe('bfloat16');
    const got = await read(t);
    assertExact(got, Array.from(bits, bf16BitsToF32), 'raw bits', true);
    expect(got[0]).toBe(1);
    expect(got[1]).toBe(1 + 2 ** -7);
    expect(Number.isNaN(got[8])).toBe(true);
    // ties: exactly half-way cases go to the even mantissa
    const ties = [
      [1 + 2 ** -8, 1], // tie between 1 (even) and 1+2^-7 (odd) -> 1
      [1 + 3 * 2 ** -8, 1 + 2 ** -6], // tie between 1+2^-7 (odd) and 1+2^-6 (even) -> up
      [1 + 2 ** -8 + 2 ** -23, 1 + 2 ** -7], // just above the tie -> up
      [1 + 2 ** -8 - 2 ** -23, 1], // just below -> down
      [-(1 + 2 ** -8), -1],
      [-(1 + 3 * 2 ** -8), -(1 + 2 ** -6)],
      [3.4028234663852886e38, Infinity], // FLT_MAX rounds to inf in bf16
      [3.3895313892515355e38, 3.3895313892515355e38], // bf16 max
      [bitsF32(0x00008000), 0], // smallest tie among denormals -> even (0)
      [bitsF32(0x00018000), bitsF32(0x00020000)],
      [-0, -0], [Infinity, Infinity], [-Infinity, -Infinity],
    ];
    const x = keep(tensor(Float32Array.from(ties.map((p) => p[0]!)), { device }));
    const y = await read(x.astype('bfloat16'));
    assertExact(y, ties.map((p) => p[1]!), 'ties to even', true);
    // random float32 bit patterns incl. exact ties (low half = 0x8000) against the DataView reference
    const rng = mulberry32(77);
    const pats = new Float32Array(4097);
    for (let k = 0; k < pats.length; k++) {
      let u = Math.floor(rng() * 2 ** 32);
      if (k % 3 === 0) u = ((u & 0xffff0000) | 0x8000) >>> 0;
      if ((u & 0x7f800000) === 0x7f800000) u &= 0xbfffffff; // avoid inf / NaN patterns here
      pats[k] = bitsF32(u);
    }
    const rb = await read(keep(tensor(pats, { device })).astype('bfloat16'));
    assertExact(rb, Array.from(pats, (v) => bf16BitsToF32(f32ToBf16Bits(v))), 'random patterns', true);
    // nested data with dtype bfloat16 goes through float32 and rounds the same way
    assertExact(await read(tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8], { dtype: 'bfloat16', device })), [1, 1 + 2 ** -6], 'nested bf16');
  });

  describe('astype round trips', () => {
    const specials = [NaN, Infinity, -Infinity, -0, 0, 0.5, -0.5, 1.9999, -1.9999, 254.7, 255.5, 256, -1, 2147483520, 2147483648, -2147483904, 3e9, -3e9, 16777217, 1e-45];
    test.each(['bfloat16', 'int32', 'uint8', 'float32'] as DType[])('float32 -> %s follows the documented conversion', async (to) => {
      const x = Float32Array.from([...randomF32(mulberry32(3), 1000, -300, 300), ...specials]);
      const y = keep(keep(tensor(x, { device })).astype(to));
      expect(y.dtype).toBe(to);
      assertExact(await read(y), Array.from(x, (v) => castTo(to, v)), `float32 -> ${to}`, to !== 'int32' && to !== 'uint8');
    });

    test('int32 -> float32 / bfloat16 / uint8 and back', async () => {
      const ints = [...randomInt(mulberry32(8), 1000, -2147483648, 2147483647), 16777217, 16777219, -16777217, 2147483647, -2147483648, 0, 255, 256, -1, 257];
      const t = keep(tensor(Int32Array.from(ints), { device }));
      assertExact(await read(t.astype('float32')), ints.map(Math.fround), 'int32 -> float32 rounds to nearest');
      // to bf16 through float32 (documented double rounding)
      assertExact(await read(t.astype('bfloat16')), ints.map((v) => bf16Round(Math.fround(v))), 'int32 -> bf16');
      assertExact(await read(t.astype('uint8')), ints.map((v) => (v <= 0 ? 0 : v >= 255 ? 255 : v)), 'int32 -> uint8 saturates');
      const back = keep(keep(t.astype('float32')).astype('int32'));
      assertExact(await read(back), ints.map((v) => castTo('int32', Math.fround(v))), 'float32 -> int32 saturates');
      const small = keep(tensor(Int32Array.from([-16777216, 5, 16777216]), { device }));
      assertExact(await read(keep(small.astype('float32')).astype('int32')), [-16777216, 5, 16777216], 'exact round trip below 2^24');
    });

    test('uint8 and bfloat16 sources', async () => {
      const u = keep(tensor(Uint8Array.from([0, 1, 127, 128, 255]), { device }));
      assertExact(await read(u.astype('float32')), [0, 1, 127, 128, 255], 'uint8 -> float32');
      assertExact(await read(u.astype('int32')), [0, 1, 127, 128, 255], 'uint8 -> int32');
      assertExact(await read(u.astype('bfloat16')), [0, 1, 127, 128, 255], 'uint8 -> bf16');
      const b = keep(tensor(Float32Array.from([1.5, -2.75, 300.5, NaN, -Infinity, 1e10]), { dtype: 'bfloat16', device }));
      const bv = [1.5, -2.75, bf16Round(300.5), NaN, -Infinity, bf16Round(1e10)];
      assertExact(await read(b.astype('float32')), bv, 'bf16 -> float32 exact');
      assertExact(await read(b.astype('int32')), bv.map((v) => castTo('int32', v)), 'bf16 -> int32');
      assertExact(await read(b.astype('uint8')), bv.map((v) => castTo('uint8', v)), 'bf16 -> uint8');
      // float32 -> bf16 -> float32 is the bf16 rounding; bf16 -> float32 -> bf16 is the identity
      const x = Float32Array.from(randomF32(mulberry32(10), 4097, -1e6, 1e6));
      const rt = keep(keep(keep(tensor(x, { device })).astype('bfloat16')).astype('float32'));
      const once = await read(rt);
      assertExact(once, Array.from(x, bf16Round), 'f32 -> bf16 -> f32');
      assertExact(await read(keep(keep(rt.astype('bfloat16')).astype('float32'))), once, 'bf16 round trip is stable');
    });
  });

  test('full / zeros / ones in every dtype', async () => {
    const z = keep(zeros([3, 1, 5], { device }));
    expect(z.shape).toEqual([3, 1, 5]);
    assertExact(await read(z), new Array(15).fill(0), 'zeros', true);
    assertExact(await read(ones([7], { dtype: 'int32', device })), new Array(7).fill(1), 'ones int32');
    assertExact(await read(full([4097], -0, { device })), new Array(4097).fill(-0), 'full -0', true);
    assertExact(await read(full([2, 2], 0.1, { device })), new Array(4).fill(Math.fround(0.1)), 'full 0.1');
    assertExact(await read(full([2], NaN, { device })), [NaN, NaN], 'full NaN');
    assertExact(await read(full([2], -Infinity, { dtype: 'bfloat16', device })), [-Infinity, -Infinity], 'full -inf bf16');
    // bf16 fill goes through float32: 1 + 2^-8 + 2^-30 is 1 + 2^-8 in float32, a tie that rounds to even (1)
    assertExact(await read(full([1], 1 + 2 ** -8 + 2 ** -30, { dtype: 'bfloat16', device })), [1], 'full bf16 through float32');
    assertExact(await read(full([3], 255, { dtype: 'uint8', device })), [255, 255, 255], 'full uint8');
    assertExact(await read(full([1], -2147483648, { dtype: 'int32', device })), [-2147483648], 'full int32 min');
    expect(() => full([1], 1.5, { dtype: 'int32', device })).toThrow(expect.objectContaining({ code: 'ERR_RANGE', message: expect.stringMatching(/full/) }));
    expect(() => full([1], 256, { dtype: 'uint8', device })).toThrow(expect.objectContaining({ code: 'ERR_RANGE' }));
    expect(() => full([1], NaN, { dtype: 'int32', device })).toThrow(expect.objectContaining({ code: 'ERR_RANGE' }));
    const s = keep(full([], 2.5, { device }));
    expect(s.shape).toEqual([]);
    expect(await s.item()).toBe(2.5);
    const e = keep(zeros([0, 7], { device }));
    expect(e.numel).toBe(0);
    expect((await read(e)).length).toBe(0);
    const em = keep(empty([3, 4], { dtype: 'bfloat16', device }));
    expect(em.shape).toEqual([3, 4]);
    expect(em.dtype).toBe('bfloat16');
    expect((await read(em)).length).toBe(12);
  });

  test('arange', async () => {
    const a = keep(arange(5, undefined, { device }));
    expect(a.dtype).toBe('int32');
    assertExact(await read(a), [0, 1, 2, 3, 4], 'arange(5)');
    assertExact(await read(arange(10, 0, { step: -3, device })), [10, 7, 4, 1], 'negative step');
    assertExact(await read(arange(-3, 4097 - 3, { device })), Array.from({ length: 4097 }, (_, i) => i - 3), 'arange 4097');
    const f = keep(arange(0, 1, { step: 0.1, device }));
    expect(f.dtype).toBe('float32');
    assertExact(await read(f), Array.from({ length: 10 }, (_, i) => Math.fround(i * 0.1)), 'float arange');
    assertExact(await read(arange(0.5, 3, { device })), [0.5, 1.5, 2.5], 'fractional start');
    assertExact(await read(arange(0, 5, { step: 2, dtype: 'bfloat16', device })), [0, 2, 4], 'bf16 arange');
    const e = keep(arange(3, 3, { device }));
    expect(e.shape).toEqual([0]);
    expect(keep(arange(5, 0, { device })).shape).toEqual([0]);
    assertExact(await read(arange(2147483645, 2147483647, { device })), [2147483645, 2147483646], 'near int32 max');
    expect(() => arange(0, 10, { step: 0, device })).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/arange/) }));
    expect(() => arange(0, Infinity, { device })).toThrow(expect.objectContaining({ code: 'ERR_ARG' }));
    expect(() => arange(0, 2147483650, { dtype: 'int32', device })).toThrow(expect.objectContaining({ code: 'ERR_RANGE' }));
    assertExact(await read(arange(4, undefined, { step: 2, device })), [0, 2], 'arange(end) with a step');
    expect(keep(arange(0, 3, { step: 0.5, device })).dtype).toBe('float32');
    expect(() => arange(0, 10, { step: NaN, device })).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/arange/) }));
    // the step is an option now: a positional step is an ERR_ARG naming the options object
    expect(() => arange(0, 10, 2 as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/arange: expected an object for options, got number/) }));
  });

  test("to('cpu') copies values, dtype and shape; to(same device) is usable", async () => {
    const x = randomF32(mulberry32(5), 33 * 7);
    const t = keep(tensor(Float32Array.from(x), { shape: [33, 7], device }));
    const c = keep(t.to('cpu'));
    expect(c.device).toBe('cpu');
    expect(c.shape).toEqual([33, 7]);
    assertExact(await read(c), x, "to('cpu')");
    const same = keep(t.to(device));
    expect(same.device).toBe(device);
    assertExact(await read(same), x, 'to(same device)');
    const bits = keep(tensor(Uint16Array.from([0x3f80, 0xc040]), { device }));
    const bc = keep(bits.to('cpu'));
    expect(bc.dtype).toBe('bfloat16');
    assertExact(await read(bc), [1, -3], 'bf16 to cpu');
    const i = keep(tensor(Int32Array.from([-7, 2147483647]), { device }).to('cpu'));
    assertExact(await read(i), [-7, 2147483647], 'int32 to cpu');
    if (device !== 'cpu') {
      const up = keep(tensor(Float32Array.from(x), { device: 'cpu' }).to(device));
      expect(up.device).toBe(device);
      assertExact(await read(up), x, 'cpu -> cuda');
    }
  });

  test('item / toString / disposed flags', async () => {
    const t = keep(tensor([[1.25]], { device }));
    expect(await t.item()).toBe(1.25);
    expect(t.toString()).toBe(`Tensor(float32[1, 1] on ${device})`);
    const u = tensor([1, 2], { device });
    await expect(u.item()).rejects.toMatchObject({ code: 'ERR_SHAPE', message: expect.stringMatching(/item/) });
    u.dispose();
    expect(u.disposed).toBe(true);
    expect(u.toString()).toMatch(/disposed/);
    u.dispose(); // idempotent
    expect(f32Bits(1)).toBe(0x3f800000);
    expect(() => tensor('abc' as unknown as number, { device })).toThrow(MomaError);
  });
});
