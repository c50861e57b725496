/**
 * An independent float64 reference of the mixture-of-experts ops and of the MoMa FFN module
 * (SPEC.md §2, csrc/cpu/kernels_moe.h, csrc/core/moe_types.h), in plain TypeScript with no moma
 * imports. Arrays are flat row-major (ArrayLike<number>); integer outputs are plain numbers.
 *
 * Naming follows the kernel header: T rows, d width, E experts in all, G groups, W = max_g E_g,
 * R the slot bound. Experts are numbered globally: group g owns [begin[g], begin[g + 1]).
 */
import { bf16Round, philoxUniformOpenRef } from './reference';

// Math functions bound once: under jest's vm context every global lookup in a hot loop is slow.
const { abs, exp, log, fround } = Math;

/** Logistic function, stable for large |x|. */
export function sigmoidRef(x: number): number {
  return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x));
}

// ---------------------------------------------------------------------------------------------
// Layout

export interface RefLayout {
  experts: number[];
  groupOfModality: number[];
}

export interface LayoutInfo {
  G: number;
  E: number;
  W: number;
  M: number;
  begin: number[];
  /** global expert -> group */
  groupOfExpert: number[];
}

export function layoutInfo(L: RefLayout): LayoutInfo {
  const G = L.experts.length;
  const begin = [0];
  for (let g = 0; g < G; g++) begin.push((begin[g] as number) + (L.experts[g] as number));
  const E = begin[G] as number;
  const groupOfExpert: number[] = [];
  for (let g = 0; g < G; g++) for (let j = 0; j < (L.experts[g] as number); j++) groupOfExpert.push(g);
  return { G, E, W: Math.max(...L.experts), M: L.groupOfModality.length, begin, groupOfExpert };
}

// ---------------------------------------------------------------------------------------------
// Partition

export interface RefPartition {
  rowGroup: number[];
  counts: number[];
  offsets: number[];
  perm: number[];
}

/** Stable partition of rows by group; throws RangeError for a modality outside [-1, M). */
export function partitionRef(modality: ArrayLike<number>, L: RefLayout): RefPartition {
  const { G, M } = layoutInfo(L);
  const T = modality.length;
  const rowGroup: number[] = [];
  for (let t = 0; t < T; t++) {
    const m = modality[t] as number;
    if (!(m >= -1 && m < M)) throw new RangeError(`partitionRef: modality ${m} at row ${t} outside [-1, ${M})`);
    rowGroup.push(m < 0 ? -1 : (L.groupOfModality[m] as number));
  }
  const counts = new Array<number>(G).fill(0);
  for (const g of rowGroup) if (g >= 0) counts[g] = (counts[g] as number) + 1;
  const offsets = [0];
  for (let g = 0; g < G; g++) offsets.push((offsets[g] as number) + (counts[g] as number));
  const perm: number[] = [];
  for (let g = 0; g < G; g++) for (let t = 0; t < T; t++) if (rowGroup[t] === g) perm.push(t);
  for (let t = 0; t < T; t++) if ((rowGroup[t] as number) < 0) perm.push(t);
  return { rowGroup, counts, offsets, perm };
}

// ---------------------------------------------------------------------------------------------
// Router scores

export type RefRouterFn = 'sigmoid' | 'softmax';

/**
 * Gumbel-difference noise [T, E] of moe_router_scores: entry (t, j) is
 * float32(-log(-log(u1)) + log(-log(u2))) in double, u1 = uniform_open(2 (t E + j)),
 * u2 = uniform_open(2 (t E + j) + 1) of the generator state (seed, offset).
 */
export function gumbelNoiseRef(T: number, E: number, seed: bigint, offset: bigint): Float64Array {
  const out = new Float64Array(T * E);
  const u = philoxUniformOpenRef(2 * T * E, seed, offset);
  for (let q = 0; q < T * E; q++) {
    const u1 = u[2 * q] as number;
    const u2 = u[2 * q + 1] as number;
    out[q] = fround(-log(-log(u1)) + log(-log(u2)));
  }
  return out;
}

/** Philox blocks a router-score op with Gumbel noise consumes: ceil(2 T E / 4). */
export function gumbelBlocks(T: number, E: number): number {
  return Math.ceil((2 * T * E) / 4);
}

/**
 * Scores [T, E]: for a row of group g with E_g > 1, z = logits + noise over g's columns, then
 * sigmoid(z) or softmax(z) over those columns; a single-expert group scores 1; all else 0.
 * Also returns z (float64; 0 outside routed entries) for tolerance bounds.
 */
export function routerScoresRef(
  logits: ArrayLike<number>, rowGroup: ArrayLike<number>, L: RefLayout, fn: RefRouterFn = 'sigmoid',
  noise?: ArrayLike<number>,
): { scores: Float64Array; z: Float64Array } {
  const { E, begin } = layoutInfo(L);
  const T = rowGroup.length;
  const scores = new Float64Array(T * E), z = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    const g = rowGroup[t] as number;
    if (g < 0) continue;
    const b = begin[g] as number, Eg = L.experts[g] as number;
    if (Eg === 1) { scores[t * E + b] = 1; continue; }
    for (let j = b; j < b + Eg; j++) z[t * E + j] = (logits[t * E + j] as number) + (noise ? (noise[t * E + j] as number) : 0);
    if (fn === 'sigmoid') {
      for (let j = b; j < b + Eg; j++) scores[t * E + j] = sigmoidRef(z[t * E + j] as number);
    } else {
      let m = -Infinity;
      for (let j = b; j < b + Eg; j++) m = Math.max(m, z[t * E + j] as number);
      let s = 0;
      for (let j = b; j < b + Eg; j++) s += exp((z[t * E + j] as number) - m);
      for (let j = b; j < b + Eg; j++) scores[t * E + j] = exp((z[t * E + j] as number) - m) / s;
    }
  }
  return { scores, z };
}

/** dlogits from dscores: sigmoid ds s (1 - s); softmax s_j (ds_j - sum_k s_k ds_k); 0 elsewhere. */
export function routerScoresBackwardRef(
  scores: ArrayLike<number>, dscores: ArrayLike<number>, rowGroup: ArrayLike<number>, L: RefLayout,
  fn: RefRouterFn = 'sigmoid',
): { dlogits: Float64Array; bound: Float64Array } {
  const { E, begin } = layoutInfo(L);
  const T = rowGroup.length;
  const out = new Float64Array(T * E);
  /** sum of |terms| per entry (for float32 error bounds) */
  const bound = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    const g = rowGroup[t] as number;
    if (g < 0) continue;
    const b = begin[g] as number, Eg = L.experts[g] as number;
    if (Eg === 1) continue;
    if (fn === 'sigmoid') {
      for (let j = b; j < b + Eg; j++) {
        const s = scores[t * E + j] as number, ds = dscores[t * E + j] as number;
        out[t * E + j] = ds * s * (1 - s);
        bound[t * E + j] = abs(ds * s) * (1 + abs(s));
      }
    } else {
      let dot = 0, absDot = 0;
      for (let k = b; k < b + Eg; k++) {
        dot += (scores[t * E + k] as number) * (dscores[t * E + k] as number);
        absDot += abs((scores[t * E + k] as number) * (dscores[t * E + k] as number));
      }
      for (let j = b; j < b + Eg; j++) {
        const s = scores[t * E + j] as number, ds = dscores[t * E + j] as number;
        out[t * E + j] = s * (ds - dot);
        bound[t * E + j] = abs(s) * (abs(ds) + absDot);
      }
    }
  }
  return { dlogits: out, bound };
}

// ---------------------------------------------------------------------------------------------
// Routing

export type RefRoutingMode = 'expert-choice' | 'token-choice' | 'threshold';

export interface RefRoutingOptions {
  mode?: RefRoutingMode;
  capacityFactor?: number;
  topK?: number;
  /** Threshold mode: [T, E] auxiliary-router probabilities; expert e takes row t iff select[t, e] > 0.5. */
  select?: ArrayLike<number>;
}

/** min(n, ceil(c n / E)); n for a single-expert group. */
export function expertChoiceCapacity(n: number, Eg: number, c: number): number {
  if (Eg === 1) return n;
  return Math.min(n, Math.ceil((c * n) / Eg));
}

/** ceil(c k n / E); n for a single-expert group. */
export function tokenChoiceCapacity(n: number, Eg: number, k: number, c: number): number {
  if (Eg === 1) return n;
  return Math.ceil((c * k * n) / Eg);
}

/** R: token choice T min(k, W); threshold T W; expert choice min(T W, ceil(max(c, 1) T) + E). */
export function slotBoundRef(T: number, L: RefLayout, o: RefRoutingOptions = {}): number {
  const { E, W } = layoutInfo(L);
  if ((o.mode ?? 'expert-choice') === 'token-choice') return T * Math.min(o.topK ?? 1, W);
  if (o.mode === 'threshold') return T * W;
  const c = Math.max(o.capacityFactor ?? 1, 1);
  return Math.min(T * W, Math.ceil(c * T) + E);
}

/** True when (a, ia) ranks above (b, ib): larger score first (NaN lowest, -0 == +0), then smaller index. */
export function ranksAbove(a: number, ia: number, b: number, ib: number): boolean {
  const an = a !== a, bn = b !== b; // NaN
  if (an || bn) return an && bn ? ia < ib : bn;
  if (a !== b) return a > b;
  return ia < ib;
}

/** The k best of `items` (indices) by `score`, in rank order. */
function topK(items: number[], score: (i: number) => number, k: number): number[] {
  const sorted = items.slice().sort((p, q) => (ranksAbove(score(p), p, score(q), q) ? -1 : 1));
  return sorted.slice(0, k);
}

export interface RefRouting {
  R: number;
  W: number;
  expertOffsets: number[];
  slotRow: number[];
  slotGate: number[];
  /** [T, W] */
  rowSlots: number[];
  /** rows of each global expert, increasing */
  rowsOf: number[][];
}

/** Builds the packed slot arrays from the rows each expert takes. */
export function packRouting(rowsOf: number[][], scores: ArrayLike<number>, T: number, L: RefLayout, R: number): RefRouting {
  const { E, W, begin, groupOfExpert } = layoutInfo(L);
  const expertOffsets = [0];
  const slotRow = new Array<number>(R).fill(-1);
  const slotGate = new Array<number>(R).fill(0);
  const rowSlots = new Array<number>(T * W).fill(-1);
  let s = 0;
  for (let e = 0; e < E; e++) {
    const g = groupOfExpert[e] as number;
    const single = L.experts[g] === 1;
    const rows = (rowsOf[e] as number[]).slice().sort((a, b) => a - b);
    for (const t of rows) {
      if (s >= R) throw new Error('packRouting: slot bound exceeded');
      slotRow[s] = t;
      slotGate[s] = single ? 1 : (scores[t * E + e] as number);
      rowSlots[t * W + (e - (begin[g] as number))] = s;
      s++;
    }
    expertOffsets.push(s);
  }
  return { R, W, expertOffsets, slotRow, slotGate, rowSlots, rowsOf: rowsOf.map((r) => r.slice().sort((a, b) => a - b)) };
}

/**
 * moe_route: expert-choice, token-choice or threshold routing of `scores` [T, E]. Threshold (SPEC
 * §4 causal mode): expert e of a group with E_g > 1 takes the rows t of its group with
 * o.select[t, e] > 0.5 (NaN is not), no capacity.
 */
export function routeRef(scores: ArrayLike<number>, part: RefPartition, L: RefLayout, o: RefRoutingOptions = {}): RefRouting {
  const { E, G, begin } = layoutInfo(L);
  const T = part.rowGroup.length;
  const mode = o.mode ?? 'expert-choice';
  const c = o.capacityFactor ?? 1;
  const k = o.topK ?? 1;
  const rowsOf: number[][] = Array.from({ length: E }, () => []);
  for (let g = 0; g < G; g++) {
    const rows: number[] = [];
    for (let t = 0; t < T; t++) if (part.rowGroup[t] === g) rows.push(t);
    const n = rows.length, Eg = L.experts[g] as number, b = begin[g] as number;
    if (Eg === 1) { rowsOf[b] = rows; continue; }
    if (mode === 'threshold') {
      const select = o.select;
      if (select === undefined) throw new Error('routeRef: threshold mode needs select');
      for (let e = b; e < b + Eg; e++) rowsOf[e] = rows.filter((t) => (select[t * E + e] as number) > 0.5);
    } else if (mode === 'expert-choice') {
      const cap = expertChoiceCapacity(n, Eg, c);
      for (let e = b; e < b + Eg; e++) rowsOf[e] = topK(rows, (t) => scores[t * E + e] as number, cap);
    } else {
      const picked: number[][] = Array.from({ length: Eg }, () => []);
      const locals = [...Array(Eg).keys()];
      for (const t of rows) for (const j of topK(locals, (jj) => scores[t * E + b + jj] as number, Math.min(k, Eg))) (picked[j] as number[]).push(t);
      const cap = tokenChoiceCapacity(n, Eg, k, c);
      for (let j = 0; j < Eg; j++) rowsOf[b + j] = topK(picked[j] as number[], (t) => scores[t * E + b + j] as number, cap);
    }
  }
  return packRouting(rowsOf, scores, T, L, slotBoundRef(T, L, o));
}

// ---------------------------------------------------------------------------------------------
// Gather / combine / gate gradient

export type ActDType = 'float32' | 'bfloat16';

function store(dt: ActDType, v: number): number {
  return dt === 'bfloat16' ? bf16Round(v) : fround(v);
}

/**
 * y[s] = scale[s] * x[slot_row[s]] (one float32 multiply, one rounding to dt); zeros for -1.
 * Inputs are dt-representable, so the double product is exact and this is bit-exact.
 */
export function gatherRowsRef(
  x: ArrayLike<number>, d: number, slotRow: ArrayLike<number>, scale?: ArrayLike<number>, dt: ActDType = 'float32',
): Float64Array {
  const R = slotRow.length;
  const T = x.length / d;
  const y = new Float64Array(R * d);
  for (let s = 0; s < R; s++) {
    const t = slotRow[s] as number;
    if (t === -1) continue;
    if (!(t >= 0 && t < T)) throw new RangeError(`gatherRowsRef: row ${t} out of range`);
    for (let i = 0; i < d; i++) {
      const v = x[t * d + i] as number;
      y[s * d + i] = scale ? store(dt, fround(scale[s] as number) * v) : v;
    }
  }
  return y;
}

/**
 * y[t] = sum_j weight[s] src[s] over s = row_slots[t, j] >= 0 in increasing j.
 * mode 'f32': float32 emulation (one rounding per multiply and per add, from 0, then one
 * rounding to dt); 'f64': exact sums. Also returns sum |weight src| per element.
 */
export function combineRowsRef(
  src: ArrayLike<number>, d: number, rowSlots: ArrayLike<number>, W: number, weight?: ArrayLike<number>,
  mode: 'f32' | 'f64' = 'f32', dt: ActDType = 'float32',
): { y: Float64Array; abs: Float64Array } {
  const T = rowSlots.length / W;
  const R = src.length / d;
  const y = new Float64Array(T * d), absSum = new Float64Array(T * d);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < d; i++) {
      let acc = 0, a = 0;
      for (let j = 0; j < W; j++) {
        const s = rowSlots[t * W + j] as number;
        if (s === -1) continue;
        if (!(s >= 0 && s < R)) throw new RangeError(`combineRowsRef: slot ${s} out of range`);
        const v = src[s * d + i] as number;
        if (mode === 'f32') {
          const p = weight ? fround(fround(weight[s] as number) * v) : v;
          acc = fround(acc + p);
        } else {
          const p = weight ? (weight[s] as number) * v : v;
          acc += p;
        }
        a += abs(weight ? (weight[s] as number) * v : v);
      }
      y[t * d + i] = mode === 'f32' ? store(dt, acc) : acc;
      absSum[t * d + i] = a;
    }
  return { y, abs: absSum };
}

/** dscores[t, e] = out[s] . dy[t] for each slot s of a routed expert e (E_g > 1); 0 elsewhere. */
export function gateGradRef(
  out: ArrayLike<number>, dy: ArrayLike<number>, d: number, slotRow: ArrayLike<number>, expertOffsets: ArrayLike<number>,
  L: RefLayout,
): { data: Float64Array; absDot: Float64Array } {
  const { E, groupOfExpert } = layoutInfo(L);
  const T = dy.length / d;
  const data = new Float64Array(T * E), absDot = new Float64Array(T * E);
  for (let e = 0; e < E; e++) {
    if (L.experts[groupOfExpert[e] as number] === 1) continue;
    for (let s = expertOffsets[e] as number; s < (expertOffsets[e + 1] as number); s++) {
      const t = slotRow[s] as number;
      if (t < 0) continue;
      let acc = 0, a = 0;
      for (let i = 0; i < d; i++) {
        const p = (out[s * d + i] as number) * (dy[t * d + i] as number);
        acc += p;
        a += abs(p);
      }
      data[t * E + e] = acc;
      absDot[t * E + e] = a;
    }
  }
  return { data, absDot };
}

// ---------------------------------------------------------------------------------------------
// Grouped matmul

/** Throws RangeError unless 0 = offsets[0] <= ... <= offsets[E] <= R. */
export function checkOffsets(offsets: ArrayLike<number>, R: number): void {
  if (offsets[0] !== 0) throw new RangeError('offsets[0] != 0');
  for (let e = 1; e < offsets.length; e++) if ((offsets[e] as number) < (offsets[e - 1] as number)) throw new RangeError('offsets decrease');
  if ((offsets[offsets.length - 1] as number) > R) throw new RangeError('offsets past R');
}

/** y[r] = x[r] @ w[e] for r in segment e (w [E, K, N], or [E, N, K] with transW); 0 past offsets[E]. */
export function groupedMatmulRef(
  x: ArrayLike<number>, K: number, w: ArrayLike<number>, N: number, offsets: ArrayLike<number>, transW = false,
): { data: Float64Array; absDot: Float64Array } {
  const R = x.length / K;
  const E = offsets.length - 1;
  checkOffsets(offsets, R);
  const xs = Float64Array.from(x), ws = Float64Array.from(w);
  const data = new Float64Array(R * N), absDot = new Float64Array(R * N);
  // strides of w[e] along k and n
  const sk = transW ? 1 : N, sn = transW ? K : 1;
  for (let e = 0; e < E; e++) {
    const wb = e * K * N;
    for (let r = offsets[e] as number; r < (offsets[e + 1] as number); r++)
      for (let n = 0; n < N; n++) {
        let acc = 0, a = 0;
        for (let k = 0; k < K; k++) {
          const p = xs[r * K + k]! * ws[wb + k * sk + n * sn]!;
          acc += p;
          a += abs(p);
        }
        data[r * N + n] = acc;
        absDot[r * N + n] = a;
      }
  }
  return { data, absDot };
}

/** dw[e] = x[seg e]^T @ dy[seg e], [E, K, N]; zero for an empty segment. */
export function groupedMatmulWgradRef(
  x: ArrayLike<number>, K: number, dy: ArrayLike<number>, N: number, offsets: ArrayLike<number>,
): { data: Float64Array; absDot: Float64Array; maxSeg: number } {
  const R = x.length / K;
  const E = offsets.length - 1;
  checkOffsets(offsets, R);
  const xs = Float64Array.from(x), ds = Float64Array.from(dy);
  const data = new Float64Array(E * K * N), absDot = new Float64Array(E * K * N);
  let maxSeg = 0;
  for (let e = 0; e < E; e++) {
    const lo = offsets[e] as number, hi = offsets[e + 1] as number;
    maxSeg = Math.max(maxSeg, hi - lo);
    for (let r = lo; r < hi; r++)
      for (let k = 0; k < K; k++) {
        const xv = xs[r * K + k]!;
        const b = (e * K + k) * N;
        for (let n = 0; n < N; n++) {
          const p = xv * ds[r * N + n]!;
          data[b + n]! += p;
          absDot[b + n]! += abs(p);
        }
      }
  }
  return { data, absDot, maxSeg };
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

export function siluRef(v: number): number {
  return v * sigmoidRef(v);
}

export function swigluRef(h1: ArrayLike<number>, h3: ArrayLike<number>): Float64Array {
  const out = new Float64Array(h1.length);
  for (let i = 0; i < h1.length; i++) out[i] = siluRef(h1[i] as number) * (h3[i] as number);
  return out;
}

export function swigluBackwardRef(h1: ArrayLike<number>, h3: ArrayLike<number>, da: ArrayLike<number>): { dh1: Float64Array; dh3: Float64Array } {
  const n = h1.length;
  const dh1 = new Float64Array(n), dh3 = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const x = h1[i] as number, sg = sigmoidRef(x);
    dh1[i] = (da[i] as number) * (h3[i] as number) * sg * (1 + x * (1 - sg));
    dh3[i] = (da[i] as number) * x * sg;
  }
  return { dh1, dh3 };
}

// ---------------------------------------------------------------------------------------------
// Routing statistics

/** expertStats [E, 2] (rows, mean gate or 0); groupStats [G, 4] (n_g, share by 0, 1, 2+). */
export function routingStatsRef(
  part: RefPartition, expertOffsets: ArrayLike<number>, slotGate: ArrayLike<number>, rowSlots: ArrayLike<number>, L: RefLayout,
): { expertStats: Float64Array; groupStats: Float64Array } {
  const { E, G, W } = layoutInfo(L);
  const T = part.rowGroup.length;
  const expertStats = new Float64Array(E * 2);
  for (let e = 0; e < E; e++) {
    const lo = expertOffsets[e] as number, hi = expertOffsets[e + 1] as number;
    let s = 0;
    for (let q = lo; q < hi; q++) s += slotGate[q] as number;
    expertStats[e * 2] = hi - lo;
    expertStats[e * 2 + 1] = hi > lo ? s / (hi - lo) : 0;
  }
  const groupStats = new Float64Array(G * 4);
  const by = Array.from({ length: G }, () => [0, 0, 0]);
  for (let t = 0; t < T; t++) {
    const g = part.rowGroup[t] as number;
    if (g < 0) continue;
    let taken = 0;
    for (let j = 0; j < W; j++) if ((rowSlots[t * W + j] as number) >= 0) taken++;
    (by[g] as number[])[Math.min(taken, 2)]! += 1;
  }
  for (let g = 0; g < G; g++) {
    const n = part.counts[g] as number;
    groupStats[g * 4] = n;
    for (let b = 0; b < 3; b++) groupStats[g * 4 + 1 + b] = n > 0 ? ((by[g] as number[])[b] as number) / n : 0;
  }
  return { expertStats, groupStats };
}

// ---------------------------------------------------------------------------------------------
// The MoMa FFN module

export interface FfnParams {
  /** [E, d, f] */
  w1: ArrayLike<number>;
  /** [E, f, d] */
  w2: ArrayLike<number>;
  /** [E, d, f] */
  w3: ArrayLike<number>;
  /** [d, E] */
  router: ArrayLike<number>;
}

export interface FfnShape {
  d: number;
  f: number;
  layout: RefLayout;
  fn?: RefRouterFn;
  /** fixed noise [T, E] added to the logits (Gumbel), constant for differentiation */
  noise?: ArrayLike<number>;
}

/** logits [T, E] = x [T, d] @ router [d, E]. */
export function routerLogitsRef(x: ArrayLike<number>, router: ArrayLike<number>, d: number, E: number): Float64Array {
  const T = x.length / d;
  const out = new Float64Array(T * E);
  for (let t = 0; t < T; t++)
    for (let e = 0; e < E; e++) {
      let acc = 0;
      for (let i = 0; i < d; i++) acc += (x[t * d + i] as number) * (router[i * E + e] as number);
      out[t * E + e] = acc;
    }
  return out;
}

interface ExpertPass {
  h1: Float64Array;
  h3: Float64Array;
  a: Float64Array;
  o: Float64Array;
}

/** FFN_e(v) = (SiLU(v W1_e) ⊙ (v W3_e)) W2_e for one row v (length d), keeping intermediates. */
export function expertForwardRef(p: FfnParams, e: number, v: ArrayLike<number>, vOff: number, d: number, f: number): ExpertPass {
  const h1 = new Float64Array(f), h3 = new Float64Array(f), a = new Float64Array(f), o = new Float64Array(d);
  const b1 = e * d * f;
  for (let i = 0; i < d; i++) {
    const xi = v[vOff + i] as number;
    if (xi === 0) continue;
    for (let k = 0; k < f; k++) {
      h1[k] = (h1[k] as number) + xi * (p.w1[b1 + i * f + k] as number);
      h3[k] = (h3[k] as number) + xi * (p.w3[b1 + i * f + k] as number);
    }
  }
  for (let k = 0; k < f; k++) a[k] = siluRef(h1[k] as number) * (h3[k] as number);
  const b2 = e * f * d;
  for (let k = 0; k < f; k++) {
    const ak = a[k] as number;
    for (let i = 0; i < d; i++) o[i] = (o[i] as number) + ak * (p.w2[b2 + k * d + i] as number);
  }
  return { h1, h3, a, o };
}

export interface FfnForward {
  y: Float64Array;
  logits: Float64Array;
  scores: Float64Array;
  routing: RefRouting;
  partition: RefPartition;
}

/**
 * Module forward y = sum_{e selecting t} s_{t,e} FFN_e(x_t). The selection is computed once from
 * the scores with routeRef, or taken from `frozen` (rows of each global expert) when given.
 */
export function momaForwardRef(
  p: FfnParams, x: ArrayLike<number>, modality: ArrayLike<number>, s: FfnShape, o: RefRoutingOptions = {},
  frozen?: number[][],
): FfnForward {
  const { d, f, layout } = s;
  const { E } = layoutInfo(layout);
  const T = modality.length;
  const partition = partitionRef(modality, layout);
  const logits = routerLogitsRef(x, p.router, d, E);
  const { scores } = routerScoresRef(logits, partition.rowGroup, layout, s.fn ?? 'sigmoid', s.noise);
  const routing = frozen
    ? packRouting(frozen, scores, T, layout, frozen.reduce((a, r) => a + r.length, 0))
    : routeRef(scores, partition, layout, o);
  const y = new Float64Array(T * d);
  for (let e = 0; e < E; e++)
    for (let q = routing.expertOffsets[e] as number; q < (routing.expertOffsets[e + 1] as number); q++) {
      const t = routing.slotRow[q] as number, gate = routing.slotGate[q] as number;
      const { o: out } = expertForwardRef(p, e, x, t * d, d, f);
      for (let i = 0; i < d; i++) y[t * d + i] = (y[t * d + i] as number) + gate * (out[i] as number);
    }
  return { y, logits, scores, routing, partition };
}

export interface FfnGrads {
  dx: Float64Array;
  w1: Float64Array;
  w2: Float64Array;
  w3: Float64Array;
  router: Float64Array;
  /** dx without the path through the router logits (to check that path matters in a test) */
  dxNoRouter: Float64Array;
}

/**
 * Analytic float64 backward of momaForwardRef with the selection frozen: gradients of
 * sum(y ⊙ dy) for x and every parameter (the gates' gradient goes through the scores to the
 * logits: sigmoid ds s (1 - s), softmax's Jacobian over the group; single-expert groups have none).
 */
export function momaBackwardRef(
  p: FfnParams, x: ArrayLike<number>, modality: ArrayLike<number>, s: FfnShape, frozen: number[][], dy: ArrayLike<number>,
): FfnGrads {
  const { d, f, layout } = s;
  const { E, groupOfExpert } = layoutInfo(layout);
  const T = modality.length;
  const fwd = momaForwardRef(p, x, modality, s, {}, frozen);
  const dx = new Float64Array(T * d);
  const w1 = new Float64Array(E * d * f), w2 = new Float64Array(E * f * d), w3 = new Float64Array(E * d * f);
  const dscores = new Float64Array(T * E);
  const r = fwd.routing;
  for (let e = 0; e < E; e++) {
    const single = layout.experts[groupOfExpert[e] as number] === 1;
    for (let q = r.expertOffsets[e] as number; q < (r.expertOffsets[e + 1] as number); q++) {
      const t = r.slotRow[q] as number, gate = r.slotGate[q] as number;
      const pass = expertForwardRef(p, e, x, t * d, d, f);
      if (!single) {
        let acc = 0;
        for (let i = 0; i < d; i++) acc += (pass.o[i] as number) * (dy[t * d + i] as number);
        dscores[t * E + e] = acc;
      }
      const dO = new Float64Array(d);
      for (let i = 0; i < d; i++) dO[i] = gate * (dy[t * d + i] as number);
      const da = new Float64Array(f);
      const b2 = e * f * d;
      for (let k = 0; k < f; k++) {
        let acc = 0;
        for (let i = 0; i < d; i++) {
          w2[b2 + k * d + i] = (w2[b2 + k * d + i] as number) + (pass.a[k] as number) * (dO[i] as number);
          acc += (dO[i] as number) * (p.w2[b2 + k * d + i] as number);
        }
        da[k] = acc;
      }
      const { dh1, dh3 } = swigluBackwardRef(pass.h1, pass.h3, da);
      const b1 = e * d * f;
      for (let i = 0; i < d; i++) {
        const xi = x[t * d + i] as number;
        let acc = 0;
        for (let k = 0; k < f; k++) {
          w1[b1 + i * f + k] = (w1[b1 + i * f + k] as number) + xi * (dh1[k] as number);
          w3[b1 + i * f + k] = (w3[b1 + i * f + k] as number) + xi * (dh3[k] as number);
          acc += (dh1[k] as number) * (p.w1[b1 + i * f + k] as number) + (dh3[k] as number) * (p.w3[b1 + i * f + k] as number);
        }
        dx[t * d + i] = (dx[t * d + i] as number) + acc;
      }
    }
  }
  // only the selected entries carry an upstream gradient (frozen selection)
  const { dlogits } = routerScoresBackwardRef(fwd.scores, dscores, fwd.partition.rowGroup, layout, s.fn ?? 'sigmoid');
  const router = new Float64Array(d * E);
  const dxNoRouter = Float64Array.from(dx);
  for (let t = 0; t < T; t++)
    for (let e = 0; e < E; e++) {
      const g = dlogits[t * E + e] as number;
      if (g === 0) continue;
      for (let i = 0; i < d; i++) {
        router[i * E + e] = (router[i * E + e] as number) + (x[t * d + i] as number) * g;
        dx[t * d + i] = (dx[t * d + i] as number) + g * (p.router[i * E + e] as number);
      }
    }
  return { dx, w1, w2, w3, router, dxNoRouter };
}

/** sum(y ⊙ dy) of the frozen-selection forward. */
export function momaLossRef(
  p: FfnParams, x: ArrayLike<number>, modality: ArrayLike<number>, s: FfnShape, frozen: number[][], dy: ArrayLike<number>,
): number {
  const { y } = momaForwardRef(p, x, modality, s, {}, frozen);
  let acc = 0;
  for (let i = 0; i < y.length; i++) acc += (y[i] as number) * (dy[i] as number);
  return acc;
}

export type FfnArg = 'x' | 'w1' | 'w2' | 'w3' | 'router';

/**
 * Central finite difference of sum(y ⊙ dy) (frozen selection) with respect to entry `index` of
 * `which`, with step eps * max(1, |value|).
 */
export function momaFiniteDiff(
  p: FfnParams, x: ArrayLike<number>, modality: ArrayLike<number>, s: FfnShape, frozen: number[][], dy: ArrayLike<number>,
  which: FfnArg, index: number, eps = 1e-4,
): number {
  const args: Record<FfnArg, Float64Array> = {
    x: Float64Array.from(x), w1: Float64Array.from(p.w1), w2: Float64Array.from(p.w2), w3: Float64Array.from(p.w3),
    router: Float64Array.from(p.router),
  };
  const arr = args[which];
  const v = arr[index] as number;
  const h = eps * Math.max(1, abs(v));
  const at = (val: number): number => {
    arr[index] = val;
    return momaLossRef({ w1: args.w1, w2: args.w2, w3: args.w3, router: args.router }, args.x, modality, s, frozen, dy);
  };
  const up = at(v + h), down = at(v - h);
  arr[index] = v;
  return (up - down) / (2 * h);
}

/** Central finite difference of the loss along a direction (one array per argument). */
export function momaDirectionalFiniteDiff(
  p: FfnParams, x: ArrayLike<number>, modality: ArrayLike<number>, s: FfnShape, frozen: number[][], dy: ArrayLike<number>,
  dir: Partial<Record<FfnArg, ArrayLike<number>>>, h = 1e-5,
): number {
  const shift = (base: ArrayLike<number>, dv: ArrayLike<number> | undefined, k: number): Float64Array => {
    const out = Float64Array.from(base);
    if (dv) for (let i = 0; i < out.length; i++) out[i] = (out[i] as number) + k * (dv[i] as number);
    return out;
  };
  const at = (k: number): number =>
    momaLossRef(
      { w1: shift(p.w1, dir.w1, k), w2: shift(p.w2, dir.w2, k), w3: shift(p.w3, dir.w3, k), router: shift(p.router, dir.router, k) },
      shift(x, dir.x, k), modality, s, frozen, dy,
    );
  return (at(h) - at(-h)) / (2 * h);
}

/**
 * The smallest gap, over the experts of groups with E_g > 1, between the scores of the last row
 * an expert takes and the first row it leaves (expert choice), or Infinity. A test whose
 * selection must not depend on rounding checks that this is comfortably large.
 */
export function selectionMargin(scores: ArrayLike<number>, part: RefPartition, L: RefLayout, o: RefRoutingOptions = {}): number {
  const { E, G, begin } = layoutInfo(L);
  const T = part.rowGroup.length;
  let margin = Infinity;
  const c = o.capacityFactor ?? 1;
  for (let g = 0; g < G; g++) {
    const Eg = L.experts[g] as number;
    if (Eg === 1) continue;
    const rows: number[] = [];
    for (let t = 0; t < T; t++) if (part.rowGroup[t] === g) rows.push(t);
    const b = begin[g] as number;
    if ((o.mode ?? 'expert-choice') === 'expert-choice') {
      const cap = expertChoiceCapacity(rows.length, Eg, c);
      if (cap === 0 || cap >= rows.length) continue;
      for (let e = b; e < b + Eg; e++) {
        const v = rows.map((t) => scores[t * E + e] as number).sort((p, q) => q - p);
        margin = Math.min(margin, (v[cap - 1] as number) - (v[cap] as number));
      }
    } else {
      // token choice: the gap between a row's k-th and (k+1)-th local scores, and each expert's
      // capacity cut-off among the rows that picked it
      const k = Math.min(o.topK ?? 1, Eg);
      const picked: number[][] = Array.from({ length: Eg }, () => []);
      for (const t of rows) {
        const js = [...Array(Eg).keys()].sort((p, q) => (ranksAbove(scores[t * E + b + p] as number, p, scores[t * E + b + q] as number, q) ? -1 : 1));
        if (k < Eg) margin = Math.min(margin, (scores[t * E + b + (js[k - 1] as number)] as number) - (scores[t * E + b + (js[k] as number)] as number));
        for (const j of js.slice(0, k)) (picked[j] as number[]).push(t);
      }
      const cap = tokenChoiceCapacity(rows.length, Eg, o.topK ?? 1, c);
      for (let j = 0; j < Eg; j++) {
        const v = (picked[j] as number[]).map((t) => scores[t * E + b + j] as number).sort((p, q) => q - p);
        if (cap > 0 && v.length > cap) margin = Math.min(margin, (v[cap - 1] as number) - (v[cap] as number));
      }
    }
  }
  return margin;
}
