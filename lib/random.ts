/**
 * Seeded random streams. A Generator is (seed, offset) of the Philox4x32-10 counter-based
 * generator shared by the CPU and CUDA backends: the same seed gives the same numbers on every
 * device. Each random op takes the next block range and advances the offset (uniform: one block
 * per 4 values, normal: one per 2).
 */
import { MomaError } from './errors';

const MASK64 = (1n << 64n) - 1n;

export class Generator {
  private seedValue: bigint;
  private offsetValue = 0n;

  constructor(seed: number | bigint = 0) {
    this.seedValue = Generator.checkSeed(seed);
  }

  private static checkSeed(seed: number | bigint): bigint {
    if (typeof seed === 'number') {
      if (!Number.isSafeInteger(seed) || seed < 0) {
        throw new MomaError('ERR_ARG', `Generator: seed must be a non-negative safe integer or bigint (got ${seed})`);
      }
      return BigInt(seed);
    }
    if (typeof seed !== 'bigint' || seed < 0n || seed > MASK64) {
      throw new MomaError('ERR_ARG', 'Generator: seed must be a bigint in [0, 2^64)');
    }
    return seed;
  }

  get seed(): bigint {
    return this.seedValue;
  }

  get offset(): bigint {
    return this.offsetValue;
  }

  manualSeed(seed: number | bigint): this {
    this.seedValue = Generator.checkSeed(seed);
    this.offsetValue = 0n;
    return this;
  }

  /** State for checkpoints: restore with setState. */
  getState(): { seed: string; offset: string } {
    return { seed: this.seedValue.toString(), offset: this.offsetValue.toString() };
  }

  setState(state: { seed: string; offset: string }): this {
    let seed: bigint;
    let offset: bigint;
    try {
      seed = BigInt(state.seed);
      offset = BigInt(state.offset);
    } catch {
      throw new MomaError('ERR_ARG', 'Generator.setState: seed and offset must be decimal integer strings');
    }
    this.seedValue = Generator.checkSeed(seed);
    if (offset < 0n || offset > MASK64) throw new MomaError('ERR_ARG', 'Generator.setState: offset out of range');
    this.offsetValue = offset;
    return this;
  }

  /** Reserves `blocks` Philox blocks and returns the offset they start at. */
  take(blocks: number): bigint {
    const start = this.offsetValue;
    this.offsetValue = (this.offsetValue + BigInt(blocks)) & MASK64;
    return start;
  }
}

export const defaultGenerator = new Generator(0);

/** Reseeds the default generator (like torch.manual_seed). */
export function manualSeed(seed: number | bigint): void {
  defaultGenerator.manualSeed(seed);
}
