/**
 * The speed-up factor η (docs/EXPERIMENTS.md), as pure functions of loss curves (loss against cumulative
 * training FLOPs, one point per step or per held-out evaluation).
 *
 * Smoothing: a trailing mean over a window of w = max(1, round(0.05·n)) points of a curve of n
 * points, applied to the whole curve: point i becomes the mean of points max(0, i − w + 1) … i
 * (fewer at the start). A sparse run's final loss L_s is its smoothed value at the last point,
 * the mean of its last w points (the same number the run report calls "final").
 *
 * η = F_d / F_s, with F_s the sparse run's cumulative FLOPs at its last point and F_d where the
 * smoothed dense curve first reaches L_s:
 *   - crossing: the first point i with S_i <= L_s (i > 0); F_d interpolates linearly in log F
 *     between points i − 1 and i, the loss linear in log F between them;
 *   - before-start: already S_0 <= L_s; F_d <= F_0, so η is an upper bound F_0 / F_s;
 *   - extrapolated: the dense curve never reaches L_s; L(F) = a·(F/s)^(−b) + c is fitted to the
 *     second half of the smoothed dense curve (least squares, s its first FLOPs value) and solved
 *     for F_d;
 *   - no-crossing: the fit has no solution (a <= 0, or L_s <= c), or it solves inside the
 *     observed range (which the observed curve contradicts); η is a lower bound F_end / F_s.
 *
 * The fit: for a fixed exponent b the model is linear in (a, c), which least squares gives in
 * closed form; the sum of squared residuals is then minimised over b by a log-spaced grid on
 * [1e-3, 10] followed by golden-section search between the best grid point's neighbours.
 * Everything is deterministic.
 */
import { MomaError } from '../errors';
import { at, last } from '../checked';

/** Loss against cumulative training FLOPs: flops strictly increasing and > 0, losses finite. */
export interface LossCurve {
  flops: ArrayLike<number>;
  loss: ArrayLike<number>;
}

/** L(F) = a·(F / scale)^(−b) + c, fitted to `points` points with root-mean-square residual `rmse`. */
export interface PowerLawFit {
  a: number;
  b: number;
  c: number;
  scale: number;
  rmse: number;
  points: number;
}

export type EtaKind = 'crossing' | 'before-start' | 'extrapolated' | 'no-crossing';

export interface EtaResult {
  kind: EtaKind;
  /** F_d / F_s; for 'before-start' an upper bound, for 'no-crossing' a lower bound. */
  eta: number;
  /** F_s: the sparse run's cumulative FLOPs at its last point. */
  sparseFlops: number;
  /** L_s: the sparse run's smoothed final loss. */
  sparseLoss: number;
  /** F_d (for 'before-start' the dense curve's first FLOPs; null for 'no-crossing'). */
  denseFlops: number | null;
  /** The dense curve's smoothed final loss and last FLOPs value. */
  denseFinalLoss: number;
  denseEndFlops: number;
  /** The power law fitted to the dense curve's second half, when it was needed. */
  fit: PowerLawFit | null;
  /** The trailing-mean windows used (points). */
  windows: { dense: number; sparse: number };
}

export interface EtaOptions {
  /** Trailing-mean windows in points (default smoothingWindow(n) of each curve). */
  window?: { dense?: number; sparse?: number };
}

const B_MIN = 1e-3;
const B_MAX = 10;
const B_GRID = 241;
const GOLDEN_ITERATIONS = 200;
/** Points a power-law fit needs (three parameters). */
const MIN_FIT_POINTS = 3;

/** The smoothing window for a curve of n points: max(1, round(0.05·n)). */
export function smoothingWindow(n: number): number {
  if (!Number.isInteger(n) || n < 1) throw new MomaError('ERR_ARG', `eta.smoothingWindow: n must be an integer >= 1, got ${String(n)}`);
  return Math.max(1, Math.round(0.05 * n));
}

function checkWindow(window: unknown, where: string): number {
  if (!Number.isInteger(window) || (window as number) < 1) throw new MomaError('ERR_ARG', `${where}: window must be an integer >= 1, got ${String(window)}`);
  return window as number;
}

/** Point i becomes the mean of points max(0, i − window + 1) … i. Values must be finite. */
export function trailingMean(values: ArrayLike<number>, window: number): number[] {
  checkWindow(window, 'eta.trailingMean');
  if (values === null || typeof values !== 'object' || typeof values.length !== 'number') {
    throw new MomaError('ERR_ARG', 'eta.trailingMean: values must be an array of numbers');
  }
  const checked = Array.from(values, (v, i) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new MomaError('ERR_ARG', `eta.trailingMean: value ${i} is ${String(v)}, not a finite number`);
    return v;
  });
  if (window === 1) return checked;
  // sums[i] = values[0] + … + values[i - 1]
  const sums = [0];
  let running = 0;
  for (const v of checked) sums.push((running += v));
  return checked.map((_, i) => {
    const from = Math.max(0, i - window + 1);
    return (at(sums, i + 1, 'eta.trailingMean') - at(sums, from, 'eta.trailingMean')) / (i + 1 - from);
  });
}

/** Checks a curve; returns its points as plain arrays. */
function checkCurve(curve: LossCurve, name: string, where: string, minPoints: number): { flops: number[]; loss: number[] } {
  if (curve === null || typeof curve !== 'object') throw new MomaError('ERR_ARG', `${where}: ${name} must be an object { flops, loss }`);
  const { flops, loss } = curve;
  const isList = (x: unknown): x is ArrayLike<number> => x !== null && typeof x === 'object' && typeof (x as ArrayLike<number>).length === 'number';
  if (!isList(flops) || !isList(loss)) throw new MomaError('ERR_ARG', `${where}: ${name}.flops and ${name}.loss must be arrays of numbers`);
  if (flops.length !== loss.length) throw new MomaError('ERR_ARG', `${where}: ${name} has ${flops.length} FLOPs values but ${loss.length} losses`);
  if (flops.length < minPoints) throw new MomaError('ERR_ARG', `${where}: ${name} needs at least ${minPoints} point(s), got ${flops.length}`);
  const f = Array.from(flops);
  const l = Array.from(loss);
  let previous = -Infinity;
  for (const [i, x] of f.entries()) {
    if (typeof x !== 'number' || !Number.isFinite(x) || x <= 0) throw new MomaError('ERR_ARG', `${where}: ${name}.flops[${i}] is ${String(x)}, not a finite number > 0`);
    if (x <= previous) throw new MomaError('ERR_ARG', `${where}: ${name}.flops[${i}] = ${x} does not increase on ${name}.flops[${i - 1}] = ${previous}`);
    previous = x;
    const y = l[i];
    if (typeof y !== 'number' || !Number.isFinite(y)) throw new MomaError('ERR_ARG', `${where}: ${name}.loss[${i}] is ${String(y)}, not a finite number`);
  }
  return { flops: f, loss: l };
}

interface LinearFit {
  a: number;
  c: number;
  sse: number;
}

/** Least squares of y ≈ a·x^(−b) + c for a fixed b (x already divided by the scale). */
function fitForExponent(x: number[], y: number[], b: number): LinearFit {
  const u = x.map((v) => v ** -b);
  const n = x.length;
  const meanU = u.reduce((s, v) => s + v, 0) / n;
  const meanY = y.reduce((s, v) => s + v, 0) / n;
  let cov = 0;
  let varU = 0;
  for (const [i, ui] of u.entries()) {
    const du = ui - meanU;
    cov += du * (at(y, i, 'eta.fitForExponent') - meanY);
    varU += du * du;
  }
  const a = varU > 0 ? cov / varU : 0;
  const c = meanY - a * meanU;
  let sse = 0;
  for (const [i, ui] of u.entries()) {
    const r = at(y, i, 'eta.fitForExponent') - (a * ui + c);
    sse += r * r;
  }
  return { a, c, sse };
}

/** Fits L(F) = a·(F/scale)^(−b) + c to a curve by least squares (scale: the curve's first FLOPs value). */
export function fitPowerLaw(curve: LossCurve): PowerLawFit {
  const { flops, loss } = checkCurve(curve, 'curve', 'eta.fitPowerLaw', MIN_FIT_POINTS);
  const scale = at(flops, 0, 'eta.fitPowerLaw');
  const x = flops.map((f) => f / scale);
  const sseOf = (b: number): number => fitForExponent(x, loss, b).sse;
  const grid = Array.from({ length: B_GRID }, (_, i) => B_MIN * (B_MAX / B_MIN) ** (i / (B_GRID - 1)));
  const sses = grid.map(sseOf);
  let best = 0;
  let bestSse = at(sses, 0, 'eta.fitPowerLaw');
  sses.forEach((s, i) => {
    if (s < bestSse) [best, bestSse] = [i, s];
  });
  // golden section between the best grid point's neighbours
  let lo = at(grid, Math.max(0, best - 1), 'eta.fitPowerLaw');
  let hi = at(grid, Math.min(B_GRID - 1, best + 1), 'eta.fitPowerLaw');
  const g = (Math.sqrt(5) - 1) / 2;
  let p = hi - g * (hi - lo);
  let q = lo + g * (hi - lo);
  let sp = sseOf(p);
  let sq = sseOf(q);
  for (let i = 0; i < GOLDEN_ITERATIONS && hi - lo > 1e-14 * hi; i++) {
    if (sp <= sq) {
      hi = q;
      q = p;
      sq = sp;
      p = hi - g * (hi - lo);
      sp = sseOf(p);
    } else {
      lo = p;
      p = q;
      sp = sq;
      q = lo + g * (hi - lo);
      sq = sseOf(q);
    }
  }
  const candidates: [number, number][] = [[at(grid, best, 'eta.fitPowerLaw'), bestSse], [p, sp], [q, sq]];
  const [b] = candidates.reduce((m, cand) => (cand[1] < m[1] ? cand : m));
  const { a, c, sse } = fitForExponent(x, loss, b);
  return { a, b, c, scale, rmse: Math.sqrt(sse / x.length), points: x.length };
}

/** The FLOPs at which a fitted power law reaches `loss`, or null when it never does (a <= 0, b <= 0 or loss <= c). */
export function solvePowerLaw(fit: PowerLawFit, loss: number): number | null {
  const ok = fit !== null && typeof fit === 'object' && [fit.a, fit.b, fit.c, fit.scale].every((v) => typeof v === 'number' && Number.isFinite(v)) && fit.scale > 0;
  if (!ok) throw new MomaError('ERR_ARG', 'eta.solvePowerLaw: fit must have finite a, b, c and a scale > 0');
  if (typeof loss !== 'number' || !Number.isFinite(loss)) throw new MomaError('ERR_ARG', `eta.solvePowerLaw: loss must be a finite number, got ${String(loss)}`);
  if (!(fit.a > 0) || !(fit.b > 0) || loss <= fit.c) return null;
  const flops = fit.scale * ((loss - fit.c) / fit.a) ** (-1 / fit.b);
  return Number.isFinite(flops) && flops > 0 ? flops : null;
}

/** η of a sparse run against the dense baseline (see the module comment). */
export function computeEta(dense: LossCurve, sparse: LossCurve, options: EtaOptions = {}): EtaResult {
  const where = 'eta.computeEta';
  const d = checkCurve(dense, 'dense', where, 1);
  const s = checkCurve(sparse, 'sparse', where, 1);
  if (options === null || typeof options !== 'object') throw new MomaError('ERR_ARG', `${where}: options must be an object`);
  const windows = {
    dense: options.window?.dense === undefined ? smoothingWindow(d.flops.length) : checkWindow(options.window.dense, `${where}: options.window.dense`),
    sparse: options.window?.sparse === undefined ? smoothingWindow(s.flops.length) : checkWindow(options.window.sparse, `${where}: options.window.sparse`),
  };
  const smoothed = trailingMean(d.loss, windows.dense);
  const sparseLoss = last(trailingMean(s.loss, windows.sparse), where);
  const sparseFlops = last(s.flops, where);
  const denseEndFlops = last(d.flops, where);
  const base = { sparseFlops, sparseLoss, denseFinalLoss: last(smoothed, where), denseEndFlops, windows };

  const first = smoothed.findIndex((v) => v <= sparseLoss);
  if (first === 0) {
    const denseFlops = at(d.flops, 0, where);
    return { ...base, kind: 'before-start', eta: denseFlops / sparseFlops, denseFlops, fit: null };
  }
  if (first > 0) {
    const above = at(smoothed, first - 1, where);
    const below = at(smoothed, first, where);
    const t = (above - sparseLoss) / (above - below);
    const logAbove = Math.log(at(d.flops, first - 1, where));
    const logF = logAbove + t * (Math.log(at(d.flops, first, where)) - logAbove);
    const denseFlops = Math.exp(logF);
    return { ...base, kind: 'crossing', eta: denseFlops / sparseFlops, denseFlops, fit: null };
  }
  const from = Math.floor(d.flops.length / 2);
  const noCrossing = (fit: PowerLawFit | null): EtaResult => ({ ...base, kind: 'no-crossing', eta: denseEndFlops / sparseFlops, denseFlops: null, fit });
  if (d.flops.length - from < MIN_FIT_POINTS) return noCrossing(null);
  const fit = fitPowerLaw({ flops: d.flops.slice(from), loss: smoothed.slice(from) });
  const denseFlops = solvePowerLaw(fit, sparseLoss);
  if (denseFlops === null || denseFlops <= denseEndFlops) return noCrossing(fit);
  return { ...base, kind: 'extrapolated', eta: denseFlops / sparseFlops, denseFlops, fit };
}

/** "2.31", "2.31 (extrapolated)", "> 1.52 (no crossing)", "< 0.41 (dense starts below)". */
export function formatEta(result: EtaResult, digits = 2): string {
  if (result === null || typeof result !== 'object' || typeof result.eta !== 'number') throw new MomaError('ERR_ARG', 'eta.formatEta: needs an EtaResult');
  if (!Number.isInteger(digits) || digits < 0 || digits > 10) throw new MomaError('ERR_ARG', `eta.formatEta: digits must be an integer in [0, 10], got ${String(digits)}`);
  const value = result.eta.toFixed(digits);
  switch (result.kind) {
    case 'crossing': return value;
    case 'extrapolated': return `${value} (extrapolated)`;
    case 'no-crossing': return `> ${value} (no crossing)`;
    case 'before-start': return `< ${value} (dense starts below)`;
    default: throw new MomaError('ERR_ARG', `eta.formatEta: unknown kind ${JSON.stringify((result as { kind: unknown }).kind)}`);
  }
}

/** The interval η lies in: a point for 'crossing' and 'extrapolated', (0, η] or [η, ∞) for the bounds. */
export function etaInterval(result: EtaResult): { low: number; high: number } {
  if (result === null || typeof result !== 'object' || typeof result.eta !== 'number') throw new MomaError('ERR_ARG', 'eta.etaInterval: needs an EtaResult');
  if (result.kind === 'no-crossing') return { low: result.eta, high: Infinity };
  if (result.kind === 'before-start') return { low: 0, high: result.eta };
  return { low: result.eta, high: result.eta };
}
