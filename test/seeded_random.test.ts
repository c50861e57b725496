// The data layer's seeded generator (lib/data/seeded_random.ts): every output against a BigInt
// transcription of the design comment (keys, counter, block rollover past 2^32 outputs), pinned
// first outputs, key handling (negative, 2^32, MAX_SAFE_INTEGER, list length), uniformity of
// uint32 bits, float() and below(n), and seededPermutation's properties; bad keys and arguments.
import { SeededRandom, seededPermutation } from '../lib/data/seeded_random';
import { throwsCode } from './support/errors';

// ---- a reference written from the design comment, in BigInt arithmetic

const M32 = 0xffffffffn;
const GOLDEN = 0x9e3779b9n;

function refMix32(h: bigint): bigint {
  h ^= h >> 16n;
  h = (h * 0x7feb352dn) & M32;
  h ^= h >> 15n;
  h = (h * 0x846ca68bn) & M32;
  h ^= h >> 16n;
  return h;
}

/** Output `index` (0-based) of new SeededRandom(...keys).uint32(), computed directly. */
function refUint32(keys: number[], index: bigint): number {
  let k0 = 0x6d6f6d61n;
  let k1 = 0x72616e64n;
  for (const key of keys) {
    const k = BigInt(key);
    for (const word of [BigInt.asUintN(32, k), BigInt.asUintN(32, k >> 32n)]) {
      k0 = refMix32(k0 ^ refMix32((word + GOLDEN) & M32));
      k1 = refMix32(k1 ^ refMix32(word ^ 0x85ebca6bn));
    }
  }
  const step = index + 1n;
  for (let block = 1n; block <= step >> 32n; block++) k0 = refMix32(k0 ^ refMix32((block + 0xc2b2ae35n) & M32));
  const counter = (step * GOLDEN) & M32;
  return Number(refMix32((refMix32(counter ^ k0) + k1) & M32));
}

const draw = (rng: SeededRandom, n: number): number[] => Array.from({ length: n }, () => rng.uint32());

/** Chi-square statistic of `counts` against equal expected counts. */
function chiSquare(counts: number[]): number {
  const total = counts.reduce((a, b) => a + b, 0);
  const expected = total / counts.length;
  return counts.reduce((s, c) => s + (c - expected) ** 2 / expected, 0);
}

describe('SeededRandom', () => {
  const keyLists: number[][] = [[], [0], [7, 0], [-1], [2 ** 32], [Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 12345], [0x6576616c, 3]];

  test.each(keyLists.map((keys) => [keys]))('uint32 matches the reference for keys %j', (keys) => {
    const rng = new SeededRandom(...keys);
    expect(draw(rng, 40)).toEqual(Array.from({ length: 40 }, (_, i) => refUint32(keys, BigInt(i))));
  });

  test('pinned first outputs: changing them changes every shuffle and built-in document', () => {
    expect(draw(new SeededRandom(), 3)).toEqual([361597211, 2353230958, 946810292]);
    expect(draw(new SeededRandom(0), 3)).toEqual([3591221322, 105676833, 54371747]);
    expect(draw(new SeededRandom(7, 0), 3)).toEqual([3812811604, 3939136997, 109481884]);
  });

  test('after 2^32 outputs the stream moves to a new block key instead of cycling', () => {
    // White-box: the state after i < 2^32 outputs is the counter i·golden (mod 2^32), block 0.
    const rng = new SeededRandom(5, 9);
    (rng as unknown as { counter: number }).counter = Number((((1n << 32n) - 3n) * GOLDEN) & M32);
    const indexes = [-3n, -2n, -1n, 0n, 1n, 2n].map((d) => (1n << 32n) + d);
    const outputs = draw(rng, indexes.length);
    expect(outputs).toEqual(indexes.map((i) => refUint32([5, 9], i)));
    // block 1 starts where block 0 started (counter golden) but under another key
    expect(outputs[3]).not.toBe(draw(new SeededRandom(5, 9), 1)[0]);
  });

  test('keys: deterministic; distinct key lists (sign, high word, order, length) give distinct streams', () => {
    expect(draw(new SeededRandom(3, 4), 10)).toEqual(draw(new SeededRandom(3, 4), 10));
    const lists = [[], [0], [0, 0], [5], [5, 0], [0, 5], [-5], [2 ** 32], [2 ** 32 + 5], [-(2 ** 32)],
      [Number.MAX_SAFE_INTEGER], [Number.MAX_SAFE_INTEGER - 1], [-Number.MAX_SAFE_INTEGER], [1, 2, 3], [3, 2, 1]];
    const streams = new Set(lists.map((keys) => draw(new SeededRandom(...keys), 4).join()));
    expect(streams.size).toBe(lists.length);
  });

  test('bad keys are ERR_ARG naming the key', () => {
    for (const bad of [0.5, NaN, Infinity, -Infinity, 2 ** 53, -(2 ** 53), '1' as unknown as number, null as unknown as number]) {
      throwsCode(() => new SeededRandom(1, bad), 'ERR_ARG');
    }
    expect(() => new SeededRandom(1, 0.5)).toThrow(/SeededRandom: key 1 must be a safe integer, got 0\.5/);
  });

  test('uint32: every bit balanced; first outputs of neighbouring keys uniform', () => {
    // 100000 draws: a bit's count has sd 158, so 5 sd is 790.
    const rng = new SeededRandom(42);
    const ones = new Array<number>(32).fill(0);
    let outside = 0;
    for (let i = 0; i < 100000; i++) {
      const v = rng.uint32();
      if (!Number.isInteger(v) || v < 0 || v >= 2 ** 32) outside++;
      for (let b = 0; b < 32; b++) ones[b]! += (v >>> b) & 1;
    }
    expect(outside).toBe(0);
    for (const c of ones) expect(Math.abs(c - 50000)).toBeLessThan(790);
    // the top byte of the first output of keys (k) and (7, k): chi-square, 255 degrees of freedom
    // (mean 255, sd 22.6); 380 is about 5.5 sd.
    for (const keysOf of [(k: number): number[] => [k], (k: number): number[] => [7, k]]) {
      const counts = new Array<number>(256).fill(0);
      for (let k = 0; k < 51200; k++) counts[new SeededRandom(...keysOf(k)).uint32() >>> 24]!++;
      expect(chiSquare(counts)).toBeLessThan(380);
    }
  });

  test('float: 53 bits from two outputs, uniform in [0, 1), no lag-1 correlation', () => {
    const a = new SeededRandom(11);
    const b = new SeededRandom(11);
    for (let i = 0; i < 1000; i++) {
      const v = a.float();
      expect(v).toBe(((b.uint32() >>> 5) * 2 ** 26 + (b.uint32() >>> 6)) / 2 ** 53);
      expect(Number.isInteger(v * 2 ** 53) && v >= 0 && v < 1).toBe(true);
    }
    const n = 100000;
    const bins = new Array<number>(100).fill(0);
    let sum = 0;
    let squares = 0;
    let lagged = 0;
    let previous = a.float();
    for (let i = 0; i < n; i++) {
      const v = a.float();
      bins[Math.floor(v * 100)]!++;
      sum += v;
      squares += v * v;
      lagged += (v - 0.5) * (previous - 0.5);
      previous = v;
    }
    // mean: sd 1/sqrt(12n) = 0.0009; variance 1/12 (sd ~0.0003); lag-1 correlation sd 1/sqrt(n) = 0.003
    expect(Math.abs(sum / n - 0.5)).toBeLessThan(0.005);
    expect(Math.abs(squares / n - (sum / n) ** 2 - 1 / 12)).toBeLessThan(0.002);
    expect(Math.abs((lagged / n) * 12)).toBeLessThan(0.016);
    // 100 bins: chi-square with 99 degrees of freedom (mean 99, sd 14)
    expect(chiSquare(bins)).toBeLessThan(170);
  });

  test('below(n): floor(float · n), in range for awkward n, uniform, bad n refused', () => {
    const a = new SeededRandom(2, 3);
    const b = new SeededRandom(2, 3);
    for (const n of [1, 2, 3, 7, 1000, 2 ** 31 + 1, 2 ** 32, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER]) {
      for (let i = 0; i < 200; i++) {
        const v = a.below(n);
        expect(v).toBe(Math.floor(b.float() * n));
        expect(Number.isInteger(v) && v >= 0 && v < n).toBe(true);
      }
    }
    // pairs of consecutive below(16): 256 cells, chi-square with 255 degrees of freedom
    const pairs = new Array<number>(256).fill(0);
    for (let i = 0; i < 51200; i++) pairs[a.below(16) * 16 + a.below(16)]!++;
    expect(chiSquare(pairs)).toBeLessThan(380);
    // n = 7: 6 degrees of freedom, 30 is p < 1e-4
    const sevens = new Array<number>(7).fill(0);
    for (let i = 0; i < 70000; i++) sevens[a.below(7)]!++;
    expect(chiSquare(sevens)).toBeLessThan(30);
    for (const bad of [0, -1, 1.5, NaN, Infinity, 2 ** 53, '3' as unknown as number]) throwsCode(() => a.below(bad), 'ERR_ARG');
  });
});

describe('seededPermutation', () => {
  test('a permutation of 0 … n-1 for awkward n; Fisher–Yates with SeededRandom(...keys).below', () => {
    for (const n of [0, 1, 2, 3, 17, 1000, 4097]) {
      const order = seededPermutation(n, 4, n);
      expect(order).toBeInstanceOf(Uint32Array);
      expect(Array.from(order).sort((x, y) => x - y)).toEqual(Array.from({ length: n }, (_, i) => i));
      const rng = new SeededRandom(4, n);
      const expected = Array.from({ length: n }, (_, i) => i);
      for (let i = n - 1; i > 0; i--) {
        const j = rng.below(i + 1);
        [expected[i], expected[j]] = [expected[j]!, expected[i]!];
      }
      expect(Array.from(order)).toEqual(expected);
    }
  });

  test('pure in its keys; other keys give unrelated orders', () => {
    const n = 1000;
    const a = seededPermutation(n, 7, 0);
    expect(Array.from(seededPermutation(n, 7, 0))).toEqual(Array.from(a));
    // two independent permutations share about one fixed position
    const same = (x: Uint32Array, y: Uint32Array): number => x.reduce((c, v, i) => c + (v === y[i] ? 1 : 0), 0);
    for (const other of [seededPermutation(n, 7, 1), seededPermutation(n, 8, 0), seededPermutation(n, 0, 7), seededPermutation(n, 7)]) {
      expect(same(a, other)).toBeLessThan(10);
    }
  });

  test('uniform: the 6 orders of 3 over 6000 keys, and position 0 of 4 over 4000', () => {
    const orders = new Map<string, number>();
    for (let e = 0; e < 6000; e++) {
      const key = Array.from(seededPermutation(3, 1, e)).join();
      orders.set(key, (orders.get(key) ?? 0) + 1);
    }
    expect(orders.size).toBe(6);
    // each count is Binomial(6000, 1/6): sd 29, so ±150 is 5 sd
    for (const count of orders.values()) expect(Math.abs(count - 1000)).toBeLessThan(150);
    const hits = [0, 0, 0, 0];
    for (let e = 0; e < 4000; e++) hits[seededPermutation(4, 1, e)[0]!]!++;
    // Binomial(4000, 1/4): sd 27
    for (const h of hits) expect(Math.abs(h - 1000)).toBeLessThan(140);
  });

  test('bad n and keys are ERR_ARG', () => {
    for (const n of [-1, 1.5, NaN, 2 ** 32, Infinity, '4' as unknown as number]) throwsCode(() => seededPermutation(n, 1), 'ERR_ARG');
    throwsCode(() => seededPermutation(4, 0.5), 'ERR_ARG');
    throwsCode(() => seededPermutation(4, 1, 2 ** 53), 'ERR_ARG');
  });
});
