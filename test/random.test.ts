import { Generator, manualSeed, defaultGenerator, rand, randn, Tensor, MomaError } from '../lib';
import { describeDevices } from './support/devices';
import {
  philox4x32, philoxBlock, philoxUniformRef, philoxNormalRef, mulhilo, mulhiloBig, mulberry32,
  ulpDistanceF32, assertExact, Disposer, bf16Round, MASK64,
} from './support/reference';

const SEED = 0x5eed1234abcdn;

async function values(t: Tensor): Promise<number[]> {
  return Array.from(await t.toArray());
}

function ulpStats(got: number[], exp: ArrayLike<number>): { mismatches: number; maxUlp: number } {
  let mismatches = 0, maxUlp = 0;
  for (let i = 0; i < got.length; i++) {
    const d = ulpDistanceF32(got[i] as number, exp[i] as number);
    if (d !== 0) mismatches++;
    maxUlp = Math.max(maxUlp, d);
  }
  return { mismatches, maxUlp };
}

describe('Philox reference self-checks', () => {
  test('mulhilo (16-bit halves) equals the BigInt product', () => {
    const rng = mulberry32(7);
    const cases: [number, number][] = [[0, 0], [0xffffffff, 0xffffffff], [0xd2511f53, 0xffffffff], [1, 0xcd9e8d57]];
    for (let i = 0; i < 2000; i++) cases.push([Math.floor(rng() * 2 ** 32), Math.floor(rng() * 2 ** 32)]);
    for (const [a, b] of cases) expect(mulhilo(a, b)).toEqual(mulhiloBig(a, b));
  });

  test('Philox4x32-10 known-answer vectors (Random123 kat_vectors)', () => {
    expect(philox4x32([0, 0, 0, 0], 0, 0).map((v) => v.toString(16))).toEqual(['6627e8d5', 'e169c58d', 'bc57ac4c', '9b00dbd8']);
    expect(philox4x32([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], 0xffffffff, 0xffffffff).map((v) => v.toString(16)))
      .toEqual(['408f276d', '41c83b0e', 'a20bc7c6', '6d5451fd']);
    expect(philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], 0xa4093822, 0x299f31d0).map((v) => v.toString(16)))
      .toEqual(['d16cfe09', '94fdcceb', '5001e420', '24126ea1']);
  });
});

describeDevices('random', (device) => {
  const bag = new Disposer();
  const keep = <T extends Tensor>(t: T): T => bag.keep(t);
  afterEach(() => bag.disposeAll());

  test.each([1, 7, 33, 1000, 4097])('rand float32 [%i] equals the Philox reference bit for bit', async (n) => {
    const g = new Generator(SEED);
    const got = await values(keep(rand([n], { generator: g, device })));
    assertExact(got, philoxUniformRef(n, SEED, 0n), `rand n=${n}`);
    expect(g.offset).toBe(BigInt(Math.ceil(n / 4)));
    for (const v of got) {
      expect(v).toBeGreaterThan(0);
      expect(v).toBeLessThanOrEqual(1);
    }
  });

  test('rand with low/high and multi-dim shape, and bfloat16', async () => {
    const g = new Generator(42);
    const a = keep(rand([3, 1, 5], { generator: g, low: -2.5, high: 7, device }));
    expect(a.shape).toEqual([3, 1, 5]);
    assertExact(await values(a), philoxUniformRef(15, 42n, 0n, -2.5, 7), 'rand low/high');
    const b = keep(rand([33], { generator: g, dtype: 'bfloat16', low: -1, high: 1, device }));
    expect(b.dtype).toBe('bfloat16');
    assertExact(await values(b), philoxUniformRef(33, 42n, 4n, -1, 1, 'bfloat16'), 'rand bf16');
    expect(g.offset).toBe(4n + 9n);
  });

  test.each([1, 2, 7, 33, 4097])('randn float32 [%i] equals the Philox + Box-Muller reference', async (n) => {
    const g = new Generator(SEED);
    const got = await values(keep(randn([n], { generator: g, device })));
    const exp = philoxNormalRef(n, SEED, 0n);
    const { mismatches, maxUlp } = ulpStats(got, exp);
    // Box-Muller runs in double with libm log/cos: bit-exact is expected; one float ulp is the documented allowance.
    expect(maxUlp).toBeLessThanOrEqual(1);
    if (device === 'cpu') expect(mismatches).toBe(0);
    expect(g.offset).toBe(BigInt(Math.ceil(n / 2)));
  });

  test('randn with mean/std, bfloat16', async () => {
    const g = new Generator(3);
    const a = await values(keep(randn([1000], { generator: g, mean: 10, std: 0.5, device })));
    const ea = philoxNormalRef(1000, 3n, 0n, 10, 0.5);
    expect(ulpStats(a, ea).maxUlp).toBeLessThanOrEqual(1);
    const b = await values(keep(randn([7, 7], { generator: g, dtype: 'bfloat16', device })));
    const eb = philoxNormalRef(49, 3n, 500n, 0, 1, 'bfloat16');
    for (let i = 0; i < 49; i++) expect(Math.abs((b[i] as number) - (eb[i] as number))).toBeLessThanOrEqual(Math.abs(eb[i] as number) * 2 ** -7);
  });

  test('large seeds use both key words; counters carry into the high word and wrap at 2^64', async () => {
    const seed = 0xfedcba9876543210n;
    const g = new Generator(seed);
    g.setState({ seed: seed.toString(), offset: (2n ** 32n - 1n).toString() });
    const a = await values(keep(rand([12], { generator: g, device })));
    assertExact(a, philoxUniformRef(12, seed, 2n ** 32n - 1n), 'carry into counter high word');
    expect(g.offset).toBe(2n ** 32n + 2n);
    g.setState({ seed: seed.toString(), offset: (MASK64 - 1n).toString() });
    const b = await values(keep(rand([16], { generator: g, device })));
    assertExact(b, philoxUniformRef(16, seed, MASK64 - 1n), 'counter wraps at 2^64');
    expect(g.offset).toBe(2n);
    // The wrapped blocks 0 and 1 are the ones a fresh generator uses first.
    const c = await values(keep(rand([8], { generator: new Generator(seed), device })));
    expect(b.slice(8)).toEqual(c);
    // And block values really depend on the high key word.
    expect(philoxBlock(0n, seed)).not.toEqual(philoxBlock(0n, seed & 0xffffffffn));
  });

  test('consecutive calls differ and continue the stream; reseeding repeats', async () => {
    const g = new Generator(99);
    const a = await values(keep(rand([10], { generator: g, device })));
    const b = await values(keep(rand([10], { generator: g, device })));
    expect(a).not.toEqual(b);
    // 10 values take 3 blocks: the second call starts at block 3, not at value 10.
    assertExact(b, philoxUniformRef(10, 99n, 3n), 'second call');
    g.manualSeed(99);
    expect(g.offset).toBe(0n);
    expect(await values(keep(rand([10], { generator: g, device })))).toEqual(a);
    const n1 = await values(keep(randn([5], { generator: g, device })));
    const n2 = await values(keep(randn([5], { generator: g, device })));
    expect(n1).not.toEqual(n2);
    expect(g.offset).toBe(3n + 3n + 3n);
  });

  test('default generator: manualSeed repeats, calls advance it', async () => {
    manualSeed(1234);
    const a = await values(keep(rand([6], { device })));
    expect(defaultGenerator.offset).toBe(2n);
    const b = await values(keep(rand([6], { device })));
    expect(a).not.toEqual(b);
    manualSeed(1234n);
    expect(await values(keep(rand([6], { device })))).toEqual(a);
    assertExact(a, philoxUniformRef(6, 1234n, 0n), 'default generator');
  });

  test('getState / setState round trip reproduces the stream', async () => {
    const g = new Generator(2024);
    keep(rand([13], { generator: g, device }));
    const state = g.getState();
    expect(state).toEqual({ seed: '2024', offset: '4' });
    const a = await values(keep(randn([9], { generator: g, device })));
    const h = new Generator(1).setState(JSON.parse(JSON.stringify(state)) as { seed: string; offset: string });
    expect(h.seed).toBe(2024n);
    expect(h.offset).toBe(4n);
    expect(await values(keep(randn([9], { generator: h, device })))).toEqual(a);
    expect(h.getState()).toEqual(g.getState());
  });

  test('empty shapes take no blocks', async () => {
    const g = new Generator(5);
    const t = keep(rand([0, 3], { generator: g, device }));
    expect(t.shape).toEqual([0, 3]);
    expect((await t.toArray()).length).toBe(0);
    expect(g.offset).toBe(0n);
  });

  test('moments of 100k samples', async () => {
    const n = 100000;
    const u = await values(keep(rand([n], { generator: new Generator(11), device })));
    const z = await values(keep(randn([n], { generator: new Generator(12), device })));
    const moments = (xs: number[]): [number, number, number, number] => {
      const m = xs.reduce((a, b) => a + b, 0) / xs.length;
      let v = 0, s = 0, k = 0;
      for (const x of xs) {
        const d = x - m;
        v += d * d;
        s += d * d * d;
        k += d * d * d * d;
      }
      v /= xs.length;
      return [m, v, s / xs.length / v ** 1.5, k / xs.length / (v * v)];
    };
    const [um, uv] = moments(u);
    expect(Math.abs(um - 0.5)).toBeLessThan(0.005); // 5 sigma = 5 * 0.2887 / sqrt(1e5) = 0.0046
    expect(Math.abs(uv - 1 / 12)).toBeLessThan(0.0015);
    expect(Math.min(...u)).toBeGreaterThan(0);
    expect(Math.max(...u)).toBeLessThanOrEqual(1);
    const [zm, zv, zs, zk] = moments(z);
    expect(Math.abs(zm)).toBeLessThan(0.016);
    expect(Math.abs(zv - 1)).toBeLessThan(0.023);
    expect(Math.abs(zs)).toBeLessThan(0.04);
    expect(Math.abs(zk - 3)).toBeLessThan(0.08);
    // Tail mass: P(|z| > 3) = 0.0027
    const tail = z.filter((x) => Math.abs(x) > 3).length / n;
    expect(tail).toBeGreaterThan(0.0018);
    expect(tail).toBeLessThan(0.0036);
  });

  test('rand/randn argument validation', () => {
    expect(() => rand([2], { dtype: 'int32', device })).toThrow(MomaError);
    try {
      randn([2], { std: -1, device });
      throw new Error('no throw');
    } catch (e) {
      expect(e).toBeInstanceOf(MomaError);
      expect((e as MomaError).code).toBe('ERR_ARG');
      expect((e as MomaError).message).toMatch(/randn/);
    }
    expect(() => new Generator(-1)).toThrow(MomaError);
    expect(() => new Generator(1.5)).toThrow(MomaError);
    expect(() => new Generator(2n ** 64n)).toThrow(MomaError);
    expect(() => new Generator(0).setState({ seed: 'x', offset: '0' })).toThrow(MomaError);
  });

  if (device !== 'cpu') {
    test('CUDA equals the CPU: uniform exactly, normal within one float ulp', async () => {
      const n = 4097;
      const gu = await values(keep(rand([n], { generator: new Generator(SEED), device })));
      const cu = await values(keep(rand([n], { generator: new Generator(SEED), device: 'cpu' })));
      expect(gu).toEqual(cu);
      const gn = await values(keep(randn([n], { generator: new Generator(SEED), device })));
      const cn = await values(keep(randn([n], { generator: new Generator(SEED), device: 'cpu' })));
      expect(ulpStats(gn, cn).maxUlp).toBeLessThanOrEqual(1);
      const gb = await values(keep(rand([n], { generator: new Generator(SEED), device, dtype: 'bfloat16', low: -3, high: 3 })));
      const cb = await values(keep(rand([n], { generator: new Generator(SEED), device: 'cpu', dtype: 'bfloat16', low: -3, high: 3 })));
      expect(gb).toEqual(cb);
      expect(cb.every((v) => v === bf16Round(v))).toBe(true);
    });
  }
});
