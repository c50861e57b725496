/** Token sampling (lib/generate/sampling.ts) against an independent float64 reference. */
import { SeededRandom } from '../lib/data/seeded_random';
import { DEFAULT_SAMPLING, SamplingOptions, sampleToken, tokenProbabilities, validateSampling } from '../lib/generate/sampling';
import { throwsCode, messageOf } from './support/errors';

type Options = Required<SamplingOptions>;

/**
 * The reference, written from the definition: drop masked and -Infinity ids, greedy is a
 * one-hot, else take top-k by (logit desc, id asc), scale, softmax, nucleus
 * over the same order, renormalise.
 */
function reference(logits: ArrayLike<number>, options: Options, allowed?: ArrayLike<number>): number[] {
  const out = new Array<number>(logits.length).fill(0);
  let live = Array.from({ length: logits.length }, (_, id) => id).filter((id) => (allowed === undefined || allowed[id] === 1) && logits[id]! > -Infinity);
  live.sort((a, b) => (logits[a]! === logits[b]! ? a - b : logits[b]! - logits[a]!));
  if (options.temperature === 0) {
    out[live[0]!] = 1;
    return out;
  }
  if (options.topK > 0) live = live.slice(0, options.topK);
  const scaled = live.map((id) => logits[id]! / options.temperature);
  const top = Math.max(...scaled);
  const weights = scaled.map((x) => Math.exp(x - top));
  const z = weights.reduce((s, w) => s + w, 0);
  let probs = weights.map((w) => w / z);
  if (options.topP < 1) {
    let mass = 0;
    let n = 0;
    while (n < probs.length && mass < options.topP) mass += probs[n++]!;
    live = live.slice(0, n);
    probs = probs.slice(0, n);
  }
  const sum = probs.reduce((s, p) => s + p, 0);
  live.forEach((id, i) => (out[id] = probs[i]! / sum));
  return out;
}

function f32(values: number[]): Float32Array {
  return Float32Array.from(values);
}

function opts(partial: SamplingOptions): Options {
  return validateSampling(partial, 'test');
}

function expectClose(actual: Float64Array, expected: ArrayLike<number>, tolerance = 1e-12): void {
  expect(actual.length).toBe(expected.length);
  // Same support exactly, values to an absolute tolerance (probabilities are <= 1).
  const supportMismatches: number[] = [];
  let worst = 0;
  for (let id = 0; id < expected.length; id++) {
    if (actual[id]! > 0 !== expected[id]! > 0) supportMismatches.push(id);
    worst = Math.max(worst, Math.abs(actual[id]! - expected[id]!));
  }
  expect(supportMismatches).toEqual([]);
  expect(worst).toBeLessThanOrEqual(tolerance);
}

describe('tokenProbabilities', () => {
  test('plain softmax with temperature scaling', () => {
    const logits = f32([1, 0, -2, 3]);
    const expected = (t: number): number[] => {
      const w = [1, 0, -2, 3].map((x) => Math.exp(x / t));
      const s = w.reduce((a, b) => a + b, 0);
      return w.map((x) => x / s);
    };
    for (const t of [1, 0.5, 2, 0.05, 1e3]) expectClose(tokenProbabilities(logits, opts({ temperature: t }), undefined), expected(t));
    // Very small temperatures do not overflow: the mass is all on the largest logit.
    expectClose(tokenProbabilities(logits, opts({ temperature: 1e-300 }), undefined), [0, 0, 0, 1]);
  });

  test('greedy: argmax, ties to the smaller id, mask and -Infinity respected', () => {
    expectClose(tokenProbabilities(f32([0, 5, 5, 1]), opts({ temperature: 0 })), [0, 1, 0, 0]);
    expectClose(tokenProbabilities(f32([0, 5, 5, 1]), opts({ temperature: 0 }), Uint8Array.from([1, 0, 1, 1])), [0, 0, 1, 0]);
    expectClose(tokenProbabilities(f32([-Infinity, -7, -Infinity]), opts({ temperature: 0 })), [0, 1, 0]);
    // Greedy ignores top-k / top-p.
    expectClose(tokenProbabilities(f32([2, 9, 1]), opts({ temperature: 0, topK: 1, topP: 0.1 })), [0, 1, 0]);
  });

  test('top-k keeps exactly k, ties broken by the smaller id', () => {
    expectClose(tokenProbabilities(f32([1, 2, 2, 2, 0]), opts({ topK: 2 })), [0, 0.5, 0.5, 0, 0]);
    expectClose(tokenProbabilities(f32([1, 2, 2, 2, 0]), opts({ topK: 1 })), [0, 1, 0, 0, 0]);
    // k >= the number of live ids changes nothing.
    const logits = f32([0.3, -1, 2.5]);
    expectClose(tokenProbabilities(logits, opts({ topK: 3 })), tokenProbabilities(logits, opts({})));
    expectClose(tokenProbabilities(logits, opts({ topK: 99 })), reference(logits, opts({})));
  });

  test('top-p boundaries: cumulative mass hitting p exactly stops there; always at least one id', () => {
    const equal = f32([0, 0, 0, 0]); // probabilities exactly 0.25 each, cumulative 0.25 0.5 0.75 1
    expectClose(tokenProbabilities(equal, opts({ topP: 0.5 })), [0.5, 0.5, 0, 0]);
    expectClose(tokenProbabilities(equal, opts({ topP: 0.5 + 1e-9 })), [1 / 3, 1 / 3, 1 / 3, 0]);
    expectClose(tokenProbabilities(equal, opts({ topP: 0.25 })), [1, 0, 0, 0]);
    expectClose(tokenProbabilities(equal, opts({ topP: 0.75 })), [1 / 3, 1 / 3, 1 / 3, 0]);
    expectClose(tokenProbabilities(equal, opts({ topP: 1e-12 })), [1, 0, 0, 0]);
    expectClose(tokenProbabilities(equal, opts({ topP: 1 })), [0.25, 0.25, 0.25, 0.25]);
    // One id above p alone: it takes all the mass.
    expectClose(tokenProbabilities(f32([0, 6, 0]), opts({ topP: 0.5 })), [0, 1, 0]);
    // Ordering by probability, not by id: the nucleus is the two most likely ids 3 and 1.
    expectClose(tokenProbabilities(f32([-3, 1, -3, 2]), opts({ topP: 0.9 })), reference(f32([-3, 1, -3, 2]), opts({ topP: 0.9 })));
    expect(Array.from(tokenProbabilities(f32([-3, 1, -3, 2]), opts({ topP: 0.9 }))).map((p) => p > 0)).toEqual([false, true, false, true]);
  });

  test('the mask applies before top-k and top-p; -Infinity ids have probability 0', () => {
    const logits = f32([10, 9, 1, 0]);
    const mask = Uint8Array.from([0, 1, 1, 1]);
    expectClose(tokenProbabilities(logits, opts({ topK: 1 }), mask), [0, 1, 0, 0]);
    expectClose(tokenProbabilities(logits, opts({ topK: 2 }), mask), reference(logits, opts({ topK: 2 }), mask));
    expectClose(tokenProbabilities(f32([0, 0, 5, 0]), opts({ topP: 0.5 }), Uint8Array.from([1, 1, 0, 1])), [0.5, 0.5, 0, 0]);
    expectClose(tokenProbabilities(f32([-Infinity, 0, -Infinity, 0]), opts({ topK: 3 })), [0, 0.5, 0, 0.5]);
    expectClose(tokenProbabilities(f32([-Infinity, 0, -Infinity, 0]), opts({ topP: 0.5 })), [0, 1, 0, 0]);
    // A single live id gets everything, whatever the options.
    expectClose(tokenProbabilities(f32([3, -Infinity]), opts({ temperature: 0.3, topK: 5, topP: 0.2 })), [1, 0]);
  });

  test('matches the reference on random logits, masks and options (awkward sizes, ties, -Infinity)', () => {
    const rng = new SeededRandom(71, 1);
    let cases = 0;
    for (const size of [1, 2, 3, 7, 33, 517]) {
      for (let trial = 0; trial < 40; trial++) {
        const values = Array.from({ length: size }, () => {
          const r = rng.float();
          if (r < 0.1) return -Infinity;
          if (r < 0.3) return rng.below(3); // ties
          return (rng.float() - 0.5) * 20;
        });
        const mask = Uint8Array.from({ length: size }, () => (rng.float() < 0.8 ? 1 : 0));
        if (!values.some((v, id) => mask[id] === 1 && v > -Infinity)) continue;
        const logits = f32(values);
        const options = opts({
          temperature: [0, 0.25, 1, 1.7][rng.below(4)],
          topK: [0, 1, 2, 5, size][rng.below(5)],
          topP: [1, 0.9, 0.5, 0.05][rng.below(4)],
        });
        expectClose(tokenProbabilities(logits, options, mask), reference(logits, options, mask));
        const p = tokenProbabilities(logits, options, mask);
        expect(Math.abs(p.reduce((s, x) => s + x, 0) - 1)).toBeLessThan(1e-12);
        cases++;
      }
    }
    expect(cases).toBeGreaterThan(200);
  });
  test('large vocabulary (4099 ids): top-k heap and nucleus pre-filter agree with the reference', () => {
    const rng = new SeededRandom(4099);
    const peaked = Float32Array.from({ length: 4099 }, (_, id) => (id % 97 === 0 ? 8 : 0) + rng.float() * 3);
    const flat = Float32Array.from({ length: 4099 }, () => rng.below(4) * 1e-3);
    for (const logits of [peaked, flat]) {
      for (const partial of [{ topK: 1000 }, { topP: 0.999 }, { topP: 0.3, temperature: 0.7 }, { topK: 77, topP: 0.8 }, { topK: 4098 }]) {
        expectClose(tokenProbabilities(logits, opts(partial)), reference(logits, opts(partial)));
      }
    }
  });
});

describe('sampleToken', () => {
  test('inverse CDF over ids in increasing order with one rng.float() per call', () => {
    const logits = f32([0.5, -Infinity, 2, 1, 0, 1.5]);
    const options = opts({ temperature: 0.8, topP: 0.95 });
    const p = tokenProbabilities(logits, options);
    const rng = new SeededRandom(5);
    const twin = new SeededRandom(5);
    for (let draw = 0; draw < 500; draw++) {
      const u = twin.float();
      let cumulative = 0;
      let expected = -1;
      for (let id = 0; id < p.length && expected < 0; id++) {
        cumulative += p[id]!;
        if (p[id]! > 0 && cumulative > u) expected = id;
      }
      expect(sampleToken(logits, options, { rng })).toBe(expected);
    }
  });

  test('greedy returns the argmax for any seed and still advances the generator by one float', () => {
    const logits = f32([0, 3, 3, -1]);
    for (let seed = 0; seed < 20; seed++) {
      const rng = new SeededRandom(seed);
      expect(sampleToken(logits, opts({ temperature: 0 }), { rng })).toBe(1);
      expect(sampleToken(logits, opts({ temperature: 0 }), { rng, allowed: Uint8Array.from([1, 0, 1, 1]) })).toBe(2);
      const twin = new SeededRandom(seed);
      twin.float();
      twin.float();
      expect(rng.float()).toBe(twin.float());
    }
  });

  test('deterministic for a seed, different across seeds; never draws a masked or -Infinity id', () => {
    const rng = new SeededRandom(3);
    const logits = Float32Array.from({ length: 50 }, () => rng.float() * 4);
    logits[7] = -Infinity;
    const mask = new Uint8Array(50).fill(1);
    mask[10] = 0;
    const options = opts({ temperature: 1.3, topK: 40, topP: 0.97 });
    const run = (seed: number): number[] => {
      const r = new SeededRandom(seed, 9);
      return Array.from({ length: 200 }, () => sampleToken(logits, options, { rng: r, allowed: mask }));
    };
    const a = run(1);
    expect(run(1)).toEqual(a);
    expect(run(2)).not.toEqual(a);
    const p = tokenProbabilities(logits, options, mask);
    for (const id of [...a, ...run(2)]) expect(p[id]).toBeGreaterThan(0);
    expect(a).not.toContain(7);
    expect(a).not.toContain(10);
  });

  test('empirical frequencies over 20000 draws are within 4.5 binomial SDs of the distribution', () => {
    const logits = f32([1.2, 0.4, -Infinity, 2, 0.4, -0.3, 1.9, -2]);
    const mask = Uint8Array.from([1, 1, 1, 1, 1, 1, 1, 0]);
    const options = opts({ temperature: 0.9, topK: 5, topP: 0.9 });
    const p = tokenProbabilities(logits, options, mask);
    expectClose(p, reference(logits, options, mask));
    const draws = 20000;
    const counts = new Array<number>(logits.length).fill(0);
    const rng = new SeededRandom(20000, 7);
    for (let i = 0; i < draws; i++) counts[sampleToken(logits, options, { rng, allowed: mask })]!++;
    let worst = 0;
    for (let id = 0; id < logits.length; id++) {
      if (p[id] === 0) {
        expect(counts[id]).toBe(0);
        continue;
      }
      const sd = Math.sqrt(draws * p[id]! * (1 - p[id]!));
      worst = Math.max(worst, Math.abs(counts[id]! - draws * p[id]!) / sd);
    }
    expect(worst).toBeLessThan(4.5);
    // More than one id survived the truncations, so this checks a real distribution.
    expect(counts.filter((c) => c > 0).length).toBeGreaterThanOrEqual(3);
  });
});

describe('validation', () => {
  test('options: defaults, and ERR_ARG naming the op and the option', () => {
    expect(validateSampling({}, 'op')).toEqual({ temperature: 1, topK: 0, topP: 1 });
    expect(DEFAULT_SAMPLING).toEqual({ temperature: 1, topK: 0, topP: 1 });
    expect(validateSampling({ temperature: 0, topK: 3, topP: 0.5 }, 'op')).toEqual({ temperature: 0, topK: 3, topP: 0.5 });
    const bad: [SamplingOptions, string][] = [
      [{ temperature: -0.1 }, 'temperature'], [{ temperature: NaN }, 'temperature'], [{ temperature: Infinity }, 'temperature'],
      [{ temperature: '1' as unknown as number }, 'temperature'], [{ topK: 1.5 }, 'topK'], [{ topK: -1 }, 'topK'],
      [{ topP: 0 }, 'topP'], [{ topP: 1.0001 }, 'topP'], [{ topP: NaN }, 'topP'], [{ topP: -0.5 }, 'topP'],
    ];
    for (const [options, key] of bad) {
      throwsCode(() => validateSampling(options, 'moma generate'), 'ERR_ARG');
      expect(messageOf(() => validateSampling(options, 'moma generate'))).toMatch(new RegExp(`^moma generate: option '${key}'`));
    }
    throwsCode(() => validateSampling(null as unknown as SamplingOptions, 'op'), 'ERR_ARG');
    throwsCode(() => sampleToken(f32([0]), { temperature: -1, topK: 0, topP: 1 }, { rng: new SeededRandom(0) }), 'ERR_ARG');
  });

  test('logits, masks and rng: codes and messages', () => {
    const o = opts({});
    const rng = new SeededRandom(0);
    throwsCode(() => tokenProbabilities(new Float32Array(0), o), 'ERR_ARG');
    throwsCode(() => tokenProbabilities([1, 2] as unknown as Float32Array, o), 'ERR_ARG');
    throwsCode(() => tokenProbabilities(f32([1, 2]), o, new Uint8Array(3)), 'ERR_ARG');
    throwsCode(() => tokenProbabilities(f32([1, 2]), o, [1, 1] as unknown as Uint8Array), 'ERR_ARG');
    throwsCode(() => tokenProbabilities(f32([1, 2]), o, Uint8Array.from([1, 2])), 'ERR_ARG');
    expect(messageOf(() => tokenProbabilities(f32([1, 2]), o, new Uint8Array(2)))).toMatch(/no id is allowed/);
    throwsCode(() => sampleToken(f32([1, 2]), o, { rng, allowed: new Uint8Array(2) }), 'ERR_ARG');
    throwsCode(() => sampleToken(f32([1, 2]), o, { rng: {} as SeededRandom }), 'ERR_ARG');
    expect(messageOf(() => sampleToken(f32([0, 1, NaN]), o, { rng }))).toMatch(/^sampleToken: logit of id 2 is NaN/);
    throwsCode(() => tokenProbabilities(f32([0, 1, NaN]), o), 'ERR_RANGE');
    throwsCode(() => tokenProbabilities(f32([Infinity, 1]), o), 'ERR_RANGE');
    // NaN is refused even where the mask hides it: it means the model is broken.
    throwsCode(() => tokenProbabilities(f32([NaN, 1]), o, Uint8Array.from([0, 1])), 'ERR_RANGE');
    expect(messageOf(() => tokenProbabilities(f32([-Infinity, 1]), o, Uint8Array.from([1, 0])))).toMatch(/every allowed id has logit -Infinity/);
    throwsCode(() => tokenProbabilities(f32([-Infinity, -Infinity]), o), 'ERR_RANGE');
  });
});
