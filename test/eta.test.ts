/**
 * η (SPEC §6) on synthetic curves with known answers: a dense power law L = A·F^(−b) + c and a
 * sparse run on the same curve shifted by a factor k in FLOPs give η = k — by crossing, by
 * crossing through the smoothing, and by extrapolation; the trailing-mean window; the bounds
 * (no crossing, dense starts below); the power-law fit; and bad inputs.
 */
import { computeEta, etaInterval, fitPowerLaw, formatEta, smoothingWindow, solvePowerLaw, trailingMean } from '../lib/experiment/eta';
import type { EtaResult, LossCurve, PowerLawFit } from '../lib/experiment/eta';
import { throwsCode } from './support/errors';

const F0 = 1e12;
const B = 0.3;
const C = 1.5;
const A = 2.5 * F0 ** B; // L(F0) = 4
const law = (f: number): number => A * f ** -B + C;
/** Geometric FLOPs grid F0·r^i, i < n (r = 1.001: interpolation in log F is then within ~1e-7). */
const grid = (n: number, r = 1.001): number[] => Array.from({ length: n }, (_, i) => F0 * r ** i);
const curveOf = (flops: number[], loss: (f: number) => number): LossCurve => ({ flops, loss: flops.map(loss) });
const ONE = { window: { dense: 1, sparse: 1 } };

describe('smoothing', () => {
  test('smoothingWindow is max(1, round(5% of n))', () => {
    expect([1, 10, 29, 30, 100, 1000, 1001].map(smoothingWindow)).toEqual([1, 1, 1, 2, 5, 50, 50]);
  });

  test('trailingMean averages the window ending at each point (fewer at the start); window 1 is the identity', () => {
    expect(trailingMean([1, 2, 3, 4, 5], 2)).toEqual([1, 1.5, 2.5, 3.5, 4.5]);
    expect(trailingMean([1, 2, 3, 4, 5], 3)).toEqual([1, 1.5, 2, 3, 4]);
    expect(trailingMean([1, 2, 3], 10)).toEqual([1, 1.5, 2]);
    const values = [0.1, 0.7, 0.2, 0.3];
    expect(trailingMean(values, 1)).toEqual(values);
    expect(trailingMean(Float64Array.from(values), 1)).toEqual(values);
    expect(trailingMean([], 3)).toEqual([]);
  });

  test('the sparse loss is the mean of its last w points', () => {
    const sparse = { flops: [1, 2, 3, 4, 5, 6], loss: [9, 8, 7, 6, 5, 1] };
    const dense = { flops: [1, 10, 100], loss: [20, 10, 0] };
    expect(computeEta(dense, sparse, { window: { dense: 1, sparse: 3 } }).sparseLoss).toBeCloseTo(4, 12);
    expect(computeEta(dense, sparse, { window: { dense: 1, sparse: 1 } }).sparseLoss).toBe(1);
    expect(computeEta(dense, sparse).windows).toEqual({ dense: 1, sparse: 1 });
  });

  test('a shifted curve keeps η = k through equal smoothing windows (k = r^700 on a geometric grid)', () => {
    const r = 1.001;
    const k = r ** 700;
    const result = computeEta(curveOf(grid(3000, r), law), curveOf(grid(1000, r), (f) => law(k * f)), { window: { dense: 50, sparse: 50 } });
    expect(result.kind).toBe('crossing');
    expect(Math.abs(result.eta - k)).toBeLessThan(1e-6);
  });

  test('smoothing removes alternating noise that makes an unsmoothed curve cross early', () => {
    const flops = grid(400);
    const noisy = flops.map((f, i) => law(f) + (i % 2 === 0 ? 0.5 : -0.5));
    const dense = { flops, loss: noisy };
    const k = 1.2;
    const sparse = curveOf(grid(100), (f) => law(k * f));
    const raw = computeEta(dense, sparse, ONE);
    const smooth = computeEta(dense, sparse, { window: { dense: 2, sparse: 1 } });
    expect(raw.denseFlops!).toBeLessThanOrEqual(flops[1] as number); // the first −0.5 dip already reaches L_s
    expect(raw.eta).toBeLessThan(1);
    expect(Math.abs(smooth.eta - k)).toBeLessThan(2e-3); // the mean of two neighbours is the curve (half a step late)
  });
});

describe('η by crossing', () => {
  test('a dense curve and the same curve shifted by k = 2.5 in FLOPs give η = 2.5 within 1e-6', () => {
    const k = 2.5;
    const result = computeEta(curveOf(grid(3000), law), curveOf(grid(1000), (f) => law(k * f)), ONE);
    expect(result.kind).toBe('crossing');
    expect(result.fit).toBeNull();
    expect(Math.abs(result.eta - k)).toBeLessThan(1e-6);
    expect(result.sparseFlops).toBe(grid(1000)[999]);
    expect(Math.abs((result.denseFlops as number) / (k * result.sparseFlops) - 1)).toBeLessThan(1e-6);
    expect(formatEta(result)).toBe('2.50');
    expect(etaInterval(result)).toEqual({ low: result.eta, high: result.eta });
  });

  test('F_d interpolates linearly in log F between the bracketing points', () => {
    const dense = { flops: [1, 10, 100], loss: [3, 2, 1] };
    const sparse = { flops: [5, 10], loss: [2.5, 1.5] };
    const result = computeEta(dense, sparse, ONE);
    expect(result.denseFlops).toBeCloseTo(Math.sqrt(1000), 9);
    expect(result.eta).toBeCloseTo(Math.sqrt(1000) / 10, 9);
  });

  test('a sparse run worse than dense everywhere gives η < 1; one above the dense start gives an upper bound', () => {
    const k = 0.5;
    const worse = computeEta(curveOf(grid(3000), law), curveOf(grid(2000), (f) => law(k * f)), ONE);
    expect(worse.kind).toBe('crossing');
    expect(Math.abs(worse.eta - k)).toBeLessThan(1e-6);

    const dense = { flops: [10, 20, 30], loss: [3, 2, 1] };
    const before = computeEta(dense, { flops: [100, 200], loss: [5, 4] }, ONE);
    expect(before.kind).toBe('before-start');
    expect(before.eta).toBeCloseTo(10 / 200, 12);
    expect(formatEta(before)).toBe('< 0.05 (dense starts below)');
    expect(etaInterval(before)).toEqual({ low: 0, high: before.eta });
  });
});

describe('η by extrapolation', () => {
  test('the sparse run ends below the dense curve: the fit of the second half recovers k = 3 within 1e-3', () => {
    const k = 3;
    const dense = curveOf(grid(2000), law); // F_end ≈ 7.4 F0
    const sparse = curveOf(grid(1500), (f) => law(k * f)); // k·F_s ≈ 13.4 F0
    expect(sparse.loss[1499] as number).toBeLessThan(dense.loss[1999] as number);
    const result = computeEta(dense, sparse, ONE);
    expect(result.kind).toBe('extrapolated');
    expect(Math.abs(result.eta - k)).toBeLessThan(1e-3);
    expect(result.fit!.points).toBe(1000);
    expect(result.fit!.scale).toBe(dense.flops[1000]);
    expect(Math.abs(result.fit!.b - B)).toBeLessThan(1e-4);
    expect(Math.abs(result.fit!.c - C)).toBeLessThan(1e-4);
    expect(formatEta(result)).toBe('3.00 (extrapolated)');
  });

  test('no crossing: the sparse loss is below the fitted floor c, so η > F_end / F_s', () => {
    const dense = curveOf(grid(2000), law);
    const sparse = { flops: grid(1000), loss: grid(1000).map(() => C - 0.1) };
    const result = computeEta(dense, sparse, ONE);
    expect(result.kind).toBe('no-crossing');
    expect(result.denseFlops).toBeNull();
    expect(result.fit!.c).toBeGreaterThan(C - 0.1);
    expect(result.eta).toBeCloseTo((dense.flops[1999] as number) / (sparse.flops[999] as number), 12);
    expect(formatEta(result)).toBe(`> ${result.eta.toFixed(2)} (no crossing)`);
    expect(etaInterval(result)).toEqual({ low: result.eta, high: Infinity });
  });

  test('no crossing: a rising dense curve has no decreasing fit; too few points for a fit', () => {
    const rising = { flops: grid(100), loss: grid(100).map((_, i) => 2 + i * 0.01) };
    const result = computeEta(rising, { flops: [F0], loss: [1] }, ONE);
    expect(result.kind).toBe('no-crossing');
    expect(result.fit!.a).toBeLessThanOrEqual(0);
    const short = computeEta({ flops: [1, 2, 3, 4], loss: [4, 3, 2.5, 2.2] }, { flops: [1], loss: [1] }, ONE);
    expect(short.kind).toBe('no-crossing');
    expect(short.fit).toBeNull();
    expect(short.eta).toBe(4);
  });
});

describe('the power-law fit', () => {
  test('recovers a, b, c of exact data and is deterministic', () => {
    const flops = grid(500, 1.01);
    const fit = fitPowerLaw(curveOf(flops, law));
    expect(fit.scale).toBe(F0);
    expect(Math.abs(fit.b - B)).toBeLessThan(1e-6);
    expect(Math.abs(fit.c - C)).toBeLessThan(1e-6);
    expect(Math.abs(fit.a - 2.5)).toBeLessThan(1e-6);
    expect(fit.rmse).toBeLessThan(1e-9);
    expect(fitPowerLaw(curveOf(flops, law))).toEqual(fit);
    expect(solvePowerLaw(fit, law(5 * F0))! / (5 * F0)).toBeCloseTo(1, 6);
  });

  test('solvePowerLaw has no solution at or below c, or for a non-decreasing law', () => {
    const fit: PowerLawFit = { a: 1, b: 0.5, c: 2, scale: 10, rmse: 0, points: 3 };
    expect(solvePowerLaw(fit, 2)).toBeNull();
    expect(solvePowerLaw(fit, 1)).toBeNull();
    expect(solvePowerLaw({ ...fit, a: -1 }, 3)).toBeNull();
    expect(solvePowerLaw(fit, 3)).toBeCloseTo(10, 9);
    expect(solvePowerLaw(fit, 2.5)).toBeCloseTo(40, 9);
  });
});

describe('bad inputs', () => {
  const ok = { flops: [1, 2, 3], loss: [3, 2, 1] };
  test.each<[string, () => unknown]>([
    ['mismatched lengths', () => computeEta({ flops: [1, 2], loss: [1] }, ok)],
    ['an empty curve', () => computeEta({ flops: [], loss: [] }, ok)],
    ['FLOPs that do not increase', () => computeEta(ok, { flops: [1, 1], loss: [2, 1] })],
    ['zero FLOPs', () => computeEta({ flops: [0, 1], loss: [2, 1] }, ok)],
    ['a NaN loss', () => computeEta(ok, { flops: [1, 2], loss: [2, NaN] })],
    ['an infinite FLOPs value', () => computeEta(ok, { flops: [1, Infinity], loss: [2, 1] })],
    ['a missing curve', () => computeEta(null as unknown as LossCurve, ok)],
    ['non-array fields', () => computeEta({ flops: 3, loss: 4 } as unknown as LossCurve, ok)],
    ['window 0', () => computeEta(ok, ok, { window: { dense: 0 } })],
    ['window 1.5', () => computeEta(ok, ok, { window: { sparse: 1.5 } })],
    ['options not an object', () => computeEta(ok, ok, 7 as never)],
    ['smoothingWindow(0)', () => smoothingWindow(0)],
    ['trailingMean with a NaN', () => trailingMean([1, NaN], 2)],
    ['trailingMean with window 0', () => trailingMean([1, 2], 0)],
    ['trailingMean of a non-array', () => trailingMean(5 as never, 1)],
    ['a fit of two points', () => fitPowerLaw({ flops: [1, 2], loss: [2, 1] })],
    ['solvePowerLaw with a NaN b', () => solvePowerLaw({ a: 1, b: NaN, c: 0, scale: 1, rmse: 0, points: 3 }, 1)],
    ['solvePowerLaw with a NaN loss', () => solvePowerLaw({ a: 1, b: 1, c: 0, scale: 1, rmse: 0, points: 3 }, NaN)],
    ['formatEta of nothing', () => formatEta(null as unknown as EtaResult)],
    ['formatEta with bad digits', () => formatEta(computeEta(ok, ok), -1)],
  ])('%s is an ERR_ARG', (_name, fn) => throwsCode(fn, 'ERR_ARG'));

  test('the message names the function and the point', () => {
    expect(() => computeEta(ok, { flops: [1, 2, 2], loss: [1, 1, 1] })).toThrow(/eta\.computeEta: sparse\.flops\[2\] = 2 does not increase/);
    expect(() => computeEta(ok, { flops: [1, 2], loss: [1, NaN] })).toThrow(/sparse\.loss\[1\] is NaN/);
  });
});
