/**
 * The one seeded generator of the data layer: shuffles, eval choices, k-means++, patch
 * reservoirs and the built-in scenes all draw from SeededRandom, keyed by integers (a seed, an
 * epoch, a document index, a purpose tag…), so every draw is a pure function of its keys.
 *
 * - Keys: each safe integer is split into its low and high 32-bit words (two's complement, so
 *   negative keys work), and every word is absorbed into two 32-bit lanes (k0, k1) by the
 *   lowbias32 finaliser (mix32) with different constants: a 64-bit stream key. Distinct key
 *   lists, including lists that differ only in length, give distinct streams except by a
 *   2^-64 chance.
 * - Stream: output i is mix32(mix32(c_i ^ k0) + k1) with c_i a golden-ratio Weyl counter. Both
 *   steps are bijections of 32-bit words, so within a block of 2^32 outputs no counter value
 *   repeats; when the counter wraps, the key moves to the next block (k0 ← mix32(k0 ^ mix32(
 *   block + C))), so a stream does not cycle after 2^32 draws.
 * - float() and below(n) take 53 random bits from two outputs (27 + 26): float() is a multiple
 *   of 2^-53 in [0, 1); below(n) = floor(float() · n), exact for n a power of two and otherwise
 *   off uniform by at most n / 2^53 relative (under 2^-21 for n ≤ 2^32).
 *
 * Not cryptographic. Changing anything here changes every shuffle and built-in document.
 */
import { MomaError } from '../errors';
import { at } from '../checked';

const WORD = 0x100000000;
const TWO_POW_26 = 67108864;
const TWO_POW_53 = 9007199254740992;
const GOLDEN = 0x9e3779b9;

/** The lowbias32 finaliser: a bijection of 32-bit words with strong avalanche. */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A deterministic generator keyed by safe integers (seed, epoch, purpose…). */
export class SeededRandom {
  private k0 = 0x6d6f6d61;
  private k1 = 0x72616e64;
  private counter = 0;
  private block = 0;

  constructor(...keys: number[]) {
    keys.forEach((key, i) => {
      if (!Number.isSafeInteger(key)) throw new MomaError('ERR_ARG', `SeededRandom: key ${i} must be a safe integer, got ${String(key)}`);
      const high = Math.floor(key / WORD);
      for (const word of [key - high * WORD, high >>> 0]) {
        this.k0 = mix32(this.k0 ^ mix32((word + GOLDEN) >>> 0));
        this.k1 = mix32(this.k1 ^ mix32((word ^ 0x85ebca6b) >>> 0));
      }
    });
  }

  /** Uniform in [0, 2^32). */
  uint32(): number {
    this.counter = (this.counter + GOLDEN) >>> 0;
    if (this.counter === 0) {
      this.block++;
      this.k0 = mix32(this.k0 ^ mix32((this.block + 0xc2b2ae35) >>> 0));
    }
    return mix32((mix32(this.counter ^ this.k0) + this.k1) >>> 0);
  }

  /** Uniform in [0, 1): a multiple of 2^-53. */
  float(): number {
    return ((this.uint32() >>> 5) * TWO_POW_26 + (this.uint32() >>> 6)) / TWO_POW_53;
  }

  /** Uniform integer in [0, n) for a safe integer n ≥ 1, from 53 random bits. */
  below(n: number): number {
    if (!Number.isSafeInteger(n) || n < 1) throw new MomaError('ERR_ARG', `SeededRandom.below: n must be a safe integer >= 1, got ${String(n)}`);
    return Math.floor(this.float() * n);
  }
}

/** A Fisher–Yates permutation of 0 … n-1 drawn from new SeededRandom(...keys). */
export function seededPermutation(n: number, ...keys: number[]): Uint32Array {
  if (!Number.isInteger(n) || n < 0 || n >= WORD) throw new MomaError('ERR_ARG', `seededPermutation: n must be an integer in [0, 2^32), got ${String(n)}`);
  const random = new SeededRandom(...keys);
  const order = Uint32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = random.below(i + 1);
    [order[i], order[j]] = [at(order, j, 'seededPermutation'), at(order, i, 'seededPermutation')];
  }
  return order;
}
