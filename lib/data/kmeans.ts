/**
 * k-means over Float32Array points [N, D] (Lloyd's algorithm), deterministic by seed.
 *
 * - Initialisation: k-means++ (first centre uniform, then each next centre drawn with probability
 *   proportional to its squared distance from the nearest chosen centre), with draws from
 *   SeededRandom(seed, 'km++' tag) (lib/data/seeded_random.ts); or the centres the caller gives.
 *   When every point already sits on a chosen centre (fewer distinct points than k) the next
 *   centre is drawn uniformly: it duplicates one.
 * - Iteration: update centres to the mean of their points (sums in float64, stored as float32),
 *   then reassign every point to its nearest centre (squared L2, ties to the smaller index); stop
 *   when no assignment changes or after `iterations` updates. The returned assignments are always
 *   the nearest centres of the returned centroids, so `mse` is exactly the objective an encoder
 *   using `nearestCentroids` gets on the training points.
 * - An empty cluster is re-seeded with the point farthest from its own centre (ties to the smaller
 *   point index; a point re-seeds at most one cluster per update). The other centres stay means
 *   of their assigned points, the next reassignment moves the point over.
 *
 * The hot loop is `nearestCentroids`: distances as ||c||² − 2x·c (||x||² is the same for every
 * centre), computed in float64 for two points × four centres at a time against a transposed copy
 * of the centres. It is exact up to float64 rounding, synchronous and bit-for-bit repeatable.
 * (Measured on this machine for N = 65536, K = 256, D = 48: about 0.5 s per pass; moma's native
 * float32 matmul on the CPU is ~4× faster but asynchronous and float32, which would make
 * near-ties depend on summation order.)
 */
import { at } from '../checked';
import { MomaError } from '../errors';
import { SeededRandom } from './seeded_random';

/** Purpose key of the k-means++ stream: SeededRandom(seed, KMEANS_PLUS_PLUS_KEY) ('km++'). */
const KMEANS_PLUS_PLUS_KEY = 0x6b6d2b2b;

export interface KMeansOptions {
  /** Number of centres (>= 1). */
  k: number;
  /** Maximum number of centre updates (>= 0); default 20. */
  iterations?: number;
  /** Seed of the k-means++ initialisation; default 0. */
  seed?: number;
  /** Initial centres [k, D] instead of k-means++. */
  init?: Float32Array;
  /** Called after every update and reassignment. */
  onIteration?: (info: { iteration: number; changed: number }) => void;
}

export interface KMeansStats {
  /** Centre updates run. */
  iterations: number;
  /** True when the last reassignment changed nothing. */
  converged: boolean;
  /** Mean squared error per value between each point and its nearest centre (float64). */
  mse: number;
  /** Empty clusters re-seeded, over all updates. */
  reseeded: number;
}

export interface KMeansResult {
  /** [k, D] float32. */
  centroids: Float32Array;
  /** Nearest centre of every point. */
  assignments: Int32Array;
  stats: KMeansStats;
}

function checkPoints(op: string, points: Float32Array, dim: number): number {
  if (!(points instanceof Float32Array)) throw new MomaError('ERR_ARG', `${op}: points must be a Float32Array`);
  if (!Number.isInteger(dim) || dim < 1) throw new MomaError('ERR_ARG', `${op}: dim must be an integer >= 1, got ${String(dim)}`);
  if (points.length === 0 || points.length % dim !== 0) {
    throw new MomaError('ERR_SHAPE', `${op}: points has ${points.length} values, not a positive multiple of dim ${dim}`);
  }
  return points.length / dim;
}

function checkSeed(op: string, seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new MomaError('ERR_ARG', `${op}: seed must be an integer in [0, 2^32), got ${String(seed)}`);
}

function checkFinite(op: string, what: string, values: Float32Array, dim: number): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      throw new MomaError('ERR_RANGE', `${op}: ${what} row ${Math.floor(i / dim)}, column ${i % dim} is ${values[i]}, not a finite number`);
    }
  }
}

/**
 * Index of the nearest centre (squared L2, ties to the smaller index) of every point.
 * points [N, dim], centroids [K, dim]; writes into `out` (length N) when given.
 */
export function nearestCentroids(points: Float32Array, dim: number, centroids: Float32Array, out?: Int32Array): Int32Array {
  const op = 'nearestCentroids';
  const n = checkPoints(op, points, dim);
  const k = checkPoints(op, centroids, dim);
  if (out !== undefined && (!(out instanceof Int32Array) || out.length !== n)) {
    throw new MomaError('ERR_ARG', `${op}: out must be an Int32Array of length ${n}`);
  }
  const result = out ?? new Int32Array(n);
  // Centres transposed to [dim, k4] in float64, padded to a multiple of 4 with norms of +Infinity.
  const k4 = Math.ceil(k / 4) * 4;
  const ct = new Float64Array(dim * k4);
  const norms = new Float64Array(k4).fill(Infinity);
  for (let c = 0; c < k; c++) {
    let norm = 0;
    for (const [j, v] of centroids.subarray(c * dim, (c + 1) * dim).entries()) {
      ct[j * k4 + c] = v;
      norm += v * v;
    }
    norms[c] = norm;
  }
  // Hot loop: every index below is bounded by n, dim and k4, the lengths of points, ct and norms
  // (checkPoints), so the element reads are non-null by construction.
  for (let i = 0; i < n; i += 2) {
    const xa = i * dim;
    const xb = i + 1 < n ? xa + dim : xa;
    let bestA = Infinity;
    let bestB = Infinity;
    let indexA = 0;
    let indexB = 0;
    for (let c = 0; c < k4; c += 4) {
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
      for (let j = 0, o = c; j < dim; j++, o += k4) {
        const u = points[xa + j]!;
        const v = points[xb + j]!;
        const q0 = ct[o]!, q1 = ct[o + 1]!, q2 = ct[o + 2]!, q3 = ct[o + 3]!;
        a0 += u * q0; a1 += u * q1; a2 += u * q2; a3 += u * q3;
        b0 += v * q0; b1 += v * q1; b2 += v * q2; b3 += v * q3;
      }
      const n0 = norms[c]!, n1 = norms[c + 1]!, n2 = norms[c + 2]!, n3 = norms[c + 3]!;
      let d = n0 - 2 * a0;
      if (d < bestA) { bestA = d; indexA = c; }
      d = n1 - 2 * a1;
      if (d < bestA) { bestA = d; indexA = c + 1; }
      d = n2 - 2 * a2;
      if (d < bestA) { bestA = d; indexA = c + 2; }
      d = n3 - 2 * a3;
      if (d < bestA) { bestA = d; indexA = c + 3; }
      d = n0 - 2 * b0;
      if (d < bestB) { bestB = d; indexB = c; }
      d = n1 - 2 * b1;
      if (d < bestB) { bestB = d; indexB = c + 1; }
      d = n2 - 2 * b2;
      if (d < bestB) { bestB = d; indexB = c + 2; }
      d = n3 - 2 * b3;
      if (d < bestB) { bestB = d; indexB = c + 3; }
    }
    result[i] = indexA;
    if (i + 1 < n) result[i + 1] = indexB;
  }
  return result;
}

/** Squared L2 distance (float64) between point `p` and centre `c`. */
function squaredDistance(points: Float32Array, p: number, centroids: Float32Array, c: number, dim: number): number {
  const centre = centroids.subarray(c * dim, (c + 1) * dim);
  let sum = 0;
  for (const [j, x] of points.subarray(p * dim, (p + 1) * dim).entries()) {
    const t = x - at(centre, j, 'squaredDistance');
    sum += t * t;
  }
  return sum;
}

/** k-means++ initial centres [k, dim]. */
export function kmeansPlusPlus(points: Float32Array, dim: number, k: number, seed: number): Float32Array {
  const op = 'kmeansPlusPlus';
  const n = checkPoints(op, points, dim);
  if (!Number.isInteger(k) || k < 1) throw new MomaError('ERR_ARG', `${op}: k must be an integer >= 1, got ${String(k)}`);
  checkSeed(op, seed);
  const random = new SeededRandom(seed, KMEANS_PLUS_PLUS_KEY);
  const centroids = new Float32Array(k * dim);
  const nearest = new Float64Array(n).fill(Infinity);
  let chosen = random.below(n);
  for (let c = 0; c < k; c++) {
    centroids.set(points.subarray(chosen * dim, (chosen + 1) * dim), c * dim);
    if (c === k - 1) break;
    let total = 0;
    for (const [i, before] of nearest.entries()) {
      const d = Math.min(before, squaredDistance(points, i, centroids, c, dim));
      nearest[i] = d;
      total += d;
    }
    const r = random.float();
    if (total > 0) {
      const target = r * total;
      let cumulative = 0;
      chosen = -1;
      for (const [i, d] of nearest.entries()) {
        if (d > 0) chosen = i;
        cumulative += d;
        if (cumulative > target) break;
      }
    } else {
      chosen = Math.floor(r * n);
    }
  }
  return centroids;
}

/** Sets `centroids` to the means of their points; re-seeds empty clusters. Returns how many were empty. */
function updateCentroids(points: Float32Array, dim: number, centroids: Float32Array, assignments: Int32Array): number {
  const k = centroids.length / dim;
  const sums = new Float64Array(k * dim);
  const counts = new Float64Array(k);
  for (const [i, c] of assignments.entries()) {
    counts[c] = at(counts, c, 'updateCentroids') + 1;
    const sum = sums.subarray(c * dim, (c + 1) * dim);
    for (const [j, x] of points.subarray(i * dim, (i + 1) * dim).entries()) sum[j] = at(sum, j, 'updateCentroids') + x;
  }
  let empty = 0;
  let distances: Float64Array | null = null;
  for (const [c, count] of counts.entries()) {
    if (count === 0) {
      if (distances === null) {
        distances = Float64Array.from(assignments, (own, i) => squaredDistance(points, i, centroids, own, dim));
      }
      let farthest = 0;
      for (const [i, d] of distances.entries()) if (d > at(distances, farthest, 'updateCentroids')) farthest = i;
      distances[farthest] = -1;
      centroids.set(points.subarray(farthest * dim, (farthest + 1) * dim), c * dim);
      empty++;
    }
  }
  for (const [c, count] of counts.entries()) {
    if (count === 0) continue;
    for (let j = c * dim; j < (c + 1) * dim; j++) centroids[j] = at(sums, j, 'updateCentroids') / count;
  }
  return empty;
}

/** Lloyd's k-means on points [N, dim]; see the file comment for the exact rules. */
export function kmeans(points: Float32Array, dim: number, options: KMeansOptions): KMeansResult {
  const op = 'kmeans';
  const n = checkPoints(op, points, dim);
  const { k, iterations = 20, seed = 0, init, onIteration } = options;
  if (!Number.isInteger(k) || k < 1) throw new MomaError('ERR_ARG', `${op}: k must be an integer >= 1, got ${String(k)}`);
  if (!Number.isInteger(iterations) || iterations < 0) throw new MomaError('ERR_ARG', `${op}: iterations must be an integer >= 0, got ${String(iterations)}`);
  checkSeed(op, seed);
  if (onIteration !== undefined && typeof onIteration !== 'function') throw new MomaError('ERR_ARG', `${op}: onIteration must be a function`);
  checkFinite(op, 'points', points, dim);
  let centroids: Float32Array;
  if (init !== undefined) {
    if (!(init instanceof Float32Array) || init.length !== k * dim) {
      throw new MomaError('ERR_SHAPE', `${op}: init must be a Float32Array of k·dim = ${k * dim} values, got ${init instanceof Float32Array ? init.length : typeof init}`);
    }
    checkFinite(op, 'init', init, dim);
    centroids = Float32Array.from(init);
  } else {
    centroids = kmeansPlusPlus(points, dim, k, seed);
  }
  let assignments: Int32Array = nearestCentroids(points, dim, centroids);
  let next: Int32Array = new Int32Array(n);
  let done = 0;
  let converged = false;
  let reseeded = 0;
  while (done < iterations) {
    reseeded += updateCentroids(points, dim, centroids, assignments);
    done++;
    nearestCentroids(points, dim, centroids, next);
    let changed = 0;
    for (const [i, own] of next.entries()) if (own !== assignments[i]) changed++;
    [assignments, next] = [next, assignments];
    onIteration?.({ iteration: done, changed });
    if (changed === 0) {
      converged = true;
      break;
    }
  }
  let total = 0;
  for (const [i, own] of assignments.entries()) total += squaredDistance(points, i, centroids, own, dim);
  return { centroids, assignments, stats: { iterations: done, converged, mse: total / (n * dim), reseeded } };
}
