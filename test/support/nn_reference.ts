/**
 * An independent float64 reference of the transformer ops (SPEC.md §1; semantics from
 * csrc/cpu/kernels_nn.h and csrc/core/nn_types.h), in plain TypeScript with no moma imports:
 * RMSNorm, per-group LayerNorm (QK-norm), rotate-half RoPE, causal segment attention,
 * cross-entropy (+ z-loss gradient), and AdamW — both in float64 and as a float32 emulation of the
 * header's formula (every product / sum rounded as written, left to right, no FMA).
 *
 * Arrays are flat row-major (ArrayLike<number>). Besides values, forwards return "magnitude"
 * arrays (sums of the absolute values of the terms of each result) from which the tests derive
 * float32 error bounds. Finite-difference helpers check the analytic backwards against the
 * float64 forwards.
 */
import { bf16Round } from './reference';

// Math functions bound once: under jest's vm context every global lookup in a hot loop is slow.
const { abs, exp, log, sqrt, max, cos, sin, pow, fround } = Math;

// ---------------------------------------------------------------------------------------------
// RMSNorm: x [N, D], w [D]

export interface RmsNormRef {
  y: Float64Array;
  rstd: Float64Array;
}

/** rstd[n] = 1 / sqrt(mean_d(x^2) + eps), y = x rstd w. eps is used as given (pass fround(eps) to mirror float). */
export function rmsNormRef(x: ArrayLike<number>, w: ArrayLike<number>, N: number, D: number, eps: number): RmsNormRef {
  const y = new Float64Array(N * D), rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let d = 0; d < D; d++) ss += (x[n * D + d] as number) ** 2;
    const r = 1 / sqrt(ss / D + eps);
    rstd[n] = r;
    for (let d = 0; d < D; d++) y[n * D + d] = (x[n * D + d] as number) * r * (w[d] as number);
  }
  return { y, rstd };
}

export interface RmsNormGradRef {
  dx: Float64Array;
  dw: Float64Array;
  /** sum of |terms| of dx and of dw (error bounds) */
  dxMag: Float64Array;
  dwMag: Float64Array;
}

/** With u = dy w: dx = rstd (u - x rstd^2 mean_d(u x)); dw[d] = sum_n dy x rstd (rstd recomputed in float64). */
export function rmsNormBackwardRef(
  x: ArrayLike<number>, w: ArrayLike<number>, dy: ArrayLike<number>, N: number, D: number, eps: number,
): RmsNormGradRef {
  const { rstd } = rmsNormRef(x, w, N, D, eps);
  const dx = new Float64Array(N * D), dw = new Float64Array(D), dxMag = new Float64Array(N * D), dwMag = new Float64Array(D);
  for (let n = 0; n < N; n++) {
    const r = rstd[n] as number;
    let ux = 0, uxAbs = 0;
    for (let d = 0; d < D; d++) {
      const u = (dy[n * D + d] as number) * (w[d] as number);
      ux += u * (x[n * D + d] as number);
      uxAbs += abs(u * (x[n * D + d] as number));
    }
    const mux = ux / D, muxAbs = uxAbs / D;
    for (let d = 0; d < D; d++) {
      const i = n * D + d;
      const xv = x[i] as number, u = (dy[i] as number) * (w[d] as number);
      dx[i] = r * (u - xv * r * r * mux);
      dxMag[i] = r * (abs(u) + abs(xv) * r * r * muxAbs);
      dw[d] = (dw[d] as number) + (dy[i] as number) * xv * r;
      dwMag[d] = (dwMag[d] as number) + abs((dy[i] as number) * xv * r);
    }
  }
  return { dx, dw, dxMag, dwMag };
}

// ---------------------------------------------------------------------------------------------
// LayerNorm per group: x [N, G, D], w, b [G, D]

export interface LayerNormRef {
  y: Float64Array;
  mean: Float64Array;
  rstd: Float64Array;
  /** |x - mean| rstd |w| + |mean| rstd |w| + |b| per element (error bound) */
  yMag: Float64Array;
}

export function layerNormRef(
  x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number>, N: number, G: number, D: number, eps: number,
): LayerNormRef {
  const y = new Float64Array(N * G * D), yMag = new Float64Array(N * G * D);
  const mean = new Float64Array(N * G), rstd = new Float64Array(N * G);
  for (let r = 0; r < N * G; r++) {
    const g = r % G, o = r * D;
    let s = 0, sa = 0;
    for (let d = 0; d < D; d++) { s += x[o + d] as number; sa += abs(x[o + d] as number); }
    const mu = s / D;
    let v = 0;
    for (let d = 0; d < D; d++) v += ((x[o + d] as number) - mu) ** 2;
    const rs = 1 / sqrt(v / D + eps);
    mean[r] = mu;
    rstd[r] = rs;
    for (let d = 0; d < D; d++) {
      const wv = w[g * D + d] as number, bv = b[g * D + d] as number;
      const xh = ((x[o + d] as number) - mu) * rs;
      y[o + d] = xh * wv + bv;
      yMag[o + d] = (abs(x[o + d] as number) + sa / D) * rs * abs(wv) + abs(bv);
    }
  }
  return { y, mean, rstd, yMag };
}

export interface LayerNormGradRef {
  dx: Float64Array;
  dw: Float64Array;
  db: Float64Array;
  dxMag: Float64Array;
  dwMag: Float64Array;
  dbMag: Float64Array;
}

/**
 * With xh = (x - mean) rstd and u = dy w: dx = rstd (u - mean_d(u) - xh mean_d(u xh));
 * dw[g, d] = sum_n dy xh, db[g, d] = sum_n dy (mean, rstd recomputed in float64).
 */
export function layerNormBackwardRef(
  x: ArrayLike<number>, w: ArrayLike<number>, dy: ArrayLike<number>, N: number, G: number, D: number, eps: number,
): LayerNormGradRef {
  const zeros = new Float64Array(G * D);
  const { mean, rstd } = layerNormRef(x, w, zeros, N, G, D, eps);
  const dx = new Float64Array(N * G * D), dxMag = new Float64Array(N * G * D);
  const dw = new Float64Array(G * D), db = new Float64Array(G * D), dwMag = new Float64Array(G * D), dbMag = new Float64Array(G * D);
  const xh = new Float64Array(D), xhMag = new Float64Array(D);
  for (let r = 0; r < N * G; r++) {
    const g = r % G, o = r * D;
    const mu = mean[r] as number, rs = rstd[r] as number;
    let su = 0, sua = 0, sux = 0, suxa = 0, sxa = 0;
    for (let d = 0; d < D; d++) sxa += abs(x[o + d] as number);
    for (let d = 0; d < D; d++) {
      xh[d] = ((x[o + d] as number) - mu) * rs;
      xhMag[d] = (abs(x[o + d] as number) + sxa / D) * rs;
      const u = (dy[o + d] as number) * (w[g * D + d] as number);
      su += u;
      sua += abs(u);
      sux += u * (xh[d] as number);
      suxa += abs(u) * (xhMag[d] as number);
    }
    for (let d = 0; d < D; d++) {
      const u = (dy[o + d] as number) * (w[g * D + d] as number);
      dx[o + d] = rs * (u - su / D - (xh[d] as number) * (sux / D));
      dxMag[o + d] = rs * (abs(u) + sua / D + (xhMag[d] as number) * (suxa / D));
      const q = g * D + d;
      dw[q] = (dw[q] as number) + (dy[o + d] as number) * (xh[d] as number);
      dwMag[q] = (dwMag[q] as number) + abs(dy[o + d] as number) * (xhMag[d] as number);
      db[q] = (db[q] as number) + (dy[o + d] as number);
      dbMag[q] = (dbMag[q] as number) + abs(dy[o + d] as number);
    }
  }
  return { dx, dw, db, dxMag, dwMag, dbMag };
}

// ---------------------------------------------------------------------------------------------
// RoPE (rotate-half): x [N, H, D], pos [N]

/**
 * cos / sin of a = pos theta^(-2i / D) (double), i < D / 2, rounded to float32 unless `exact`.
 * Returns arrays [N * half].
 */
export function ropeAngles(pos: ArrayLike<number>, D: number, theta: number, exact = false): { c: Float64Array; s: Float64Array } {
  const half = D / 2, N = pos.length;
  const c = new Float64Array(N * half), s = new Float64Array(N * half);
  for (let n = 0; n < N; n++)
    for (let i = 0; i < half; i++) {
      const a = (pos[n] as number) * pow(theta, (-2 * i) / D);
      c[n * half + i] = exact ? cos(a) : fround(cos(a));
      s[n * half + i] = exact ? sin(a) : fround(sin(a));
    }
  return { c, s };
}

export interface RopeRef {
  y: Float64Array;
  /** |x[i] c| + |x[i + half] s| per element (error bound) */
  mag: Float64Array;
}

/**
 * y[i] = x[i] c - x[i + half] s, y[i + half] = x[i + half] c + x[i] s; inverse rotates by -a.
 * c, s rounded to float32 as the header says, unless `exact` (the true rotation).
 */
export function ropeRef(
  x: ArrayLike<number>, pos: ArrayLike<number>, N: number, H: number, D: number, theta: number, inverse = false, exact = false,
): RopeRef {
  if (D % 2 !== 0) throw new RangeError('ropeRef: D must be even');
  const half = D / 2;
  const { c, s } = ropeAngles(pos, D, theta, exact);
  const y = new Float64Array(N * H * D), mag = new Float64Array(N * H * D);
  const sg = inverse ? -1 : 1;
  for (let n = 0; n < N; n++)
    for (let h = 0; h < H; h++) {
      const o = (n * H + h) * D;
      for (let i = 0; i < half; i++) {
        const cv = c[n * half + i] as number, sv = sg * (s[n * half + i] as number);
        const a = x[o + i] as number, b = x[o + i + half] as number;
        y[o + i] = a * cv - b * sv;
        y[o + i + half] = b * cv + a * sv;
        mag[o + i] = abs(a * cv) + abs(b * sv);
        mag[o + i + half] = abs(b * cv) + abs(a * sv);
      }
    }
  return { y, mag };
}

// ---------------------------------------------------------------------------------------------
// Segment-causal attention: q, k, v [N, H, D], segStart [N]

/** segStart from segment lengths (their sum is N). */
export function segStartOf(lengths: readonly number[]): number[] {
  const out: number[] = [];
  let start = 0;
  for (const len of lengths) {
    for (let j = 0; j < len; j++) out.push(start);
    start += len;
  }
  return out;
}

/** Throws RangeError unless segStart[t] is t or segStart[t - 1] for every t. */
export function checkSegStart(segStart: ArrayLike<number>): void {
  for (let t = 0; t < segStart.length; t++) {
    const s = segStart[t] as number;
    if (s !== t && (t === 0 || s !== segStart[t - 1])) throw new RangeError(`segStart[${t}] = ${s} is neither ${t} nor segStart[${t - 1}]`);
  }
}

export interface AttentionRef {
  o: Float64Array;
  lse: Float64Array;
  /** sum_s p_s |v[s, d]| per (t, h, d) */
  oMag: Float64Array;
  /** max_s scale sum_d |q[t, d] k[s, d]| per (t, h): the size of the logits' float32 rounding */
  logitMag: Float64Array;
}

export function attentionRef(
  q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, segStart: ArrayLike<number>,
  N: number, H: number, D: number, scale: number,
): AttentionRef {
  checkSegStart(segStart);
  const o = new Float64Array(N * H * D), oMag = new Float64Array(N * H * D);
  const lse = new Float64Array(N * H), logitMag = new Float64Array(N * H);
  const sc = new Float64Array(N);
  for (let t = 0; t < N; t++) {
    const s0 = segStart[t] as number;
    for (let h = 0; h < H; h++) {
      const qo = (t * H + h) * D;
      let m = -Infinity, lm = 0;
      for (let s = s0; s <= t; s++) {
        const ko = (s * H + h) * D;
        let dot = 0, da = 0;
        for (let d = 0; d < D; d++) {
          dot += (q[qo + d] as number) * (k[ko + d] as number);
          da += abs((q[qo + d] as number) * (k[ko + d] as number));
        }
        sc[s] = scale * dot;
        lm = max(lm, abs(scale) * da);
        m = max(m, sc[s] as number);
      }
      let z = 0;
      for (let s = s0; s <= t; s++) z += exp((sc[s] as number) - m);
      lse[t * H + h] = m + log(z);
      logitMag[t * H + h] = lm;
      for (let s = s0; s <= t; s++) {
        const p = exp((sc[s] as number) - m) / z;
        const vo = (s * H + h) * D;
        for (let d = 0; d < D; d++) {
          o[qo + d] = (o[qo + d] as number) + p * (v[vo + d] as number);
          oMag[qo + d] = (oMag[qo + d] as number) + p * abs(v[vo + d] as number);
        }
      }
    }
  }
  return { o, lse, oMag, logitMag };
}

export interface AttentionGradRef {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
  dqMag: Float64Array;
  dkMag: Float64Array;
  dvMag: Float64Array;
}

/**
 * The header's backward: p recomputed from the given lse, delta[t, h] = dout[t, h] . o[t, h]
 * (o as given), dv[s] = sum_t p_ts dout[t], ds_ts = p_ts (dout[t] . v[s] - delta[t]),
 * dq[t] = scale sum_s ds_ts k[s], dk[s] = scale sum_t ds_ts q[t].
 */
export function attentionBackwardRef(
  q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, o: ArrayLike<number>, lse: ArrayLike<number>,
  dout: ArrayLike<number>, segStart: ArrayLike<number>, N: number, H: number, D: number, scale: number,
): AttentionGradRef {
  checkSegStart(segStart);
  const n3 = N * H * D;
  const dq = new Float64Array(n3), dk = new Float64Array(n3), dv = new Float64Array(n3);
  const dqMag = new Float64Array(n3), dkMag = new Float64Array(n3), dvMag = new Float64Array(n3);
  const as = abs(scale);
  for (let t = 0; t < N; t++) {
    const s0 = segStart[t] as number;
    for (let h = 0; h < H; h++) {
      const to = (t * H + h) * D;
      let delta = 0, deltaAbs = 0;
      for (let d = 0; d < D; d++) {
        delta += (dout[to + d] as number) * (o[to + d] as number);
        deltaAbs += abs((dout[to + d] as number) * (o[to + d] as number));
      }
      const l = lse[t * H + h] as number;
      for (let s = s0; s <= t; s++) {
        const so = (s * H + h) * D;
        let dot = 0, dv_ = 0, dva = 0;
        for (let d = 0; d < D; d++) {
          dot += (q[to + d] as number) * (k[so + d] as number);
          dv_ += (dout[to + d] as number) * (v[so + d] as number);
          dva += abs((dout[to + d] as number) * (v[so + d] as number));
        }
        const p = exp(scale * dot - l);
        const ds = p * (dv_ - delta), dsMag = p * (dva + deltaAbs);
        for (let d = 0; d < D; d++) {
          dv[so + d] = (dv[so + d] as number) + p * (dout[to + d] as number);
          dvMag[so + d] = (dvMag[so + d] as number) + p * abs(dout[to + d] as number);
          dq[to + d] = (dq[to + d] as number) + scale * ds * (k[so + d] as number);
          dqMag[to + d] = (dqMag[to + d] as number) + as * dsMag * abs(k[so + d] as number);
          dk[so + d] = (dk[so + d] as number) + scale * ds * (q[to + d] as number);
          dkMag[so + d] = (dkMag[so + d] as number) + as * dsMag * abs(q[to + d] as number);
        }
      }
    }
  }
  return { dq, dk, dv, dqMag, dkMag, dvMag };
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy: logits [N, V], targets [N] in [-1, V)

export interface CrossEntropyRef {
  nll: Float64Array;
  lse: Float64Array;
}

export function crossEntropyRef(logits: ArrayLike<number>, targets: ArrayLike<number>, N: number, V: number): CrossEntropyRef {
  const nll = new Float64Array(N), lse = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    const t = targets[n] as number;
    if (!(Number.isInteger(t) && t >= -1 && t < V)) throw new RangeError(`crossEntropyRef: target ${t} at row ${n} outside [-1, ${V})`);
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = max(m, logits[n * V + j] as number);
    let z = 0;
    for (let j = 0; j < V; j++) z += exp((logits[n * V + j] as number) - m);
    const l = m + log(z);
    lse[n] = l;
    nll[n] = t < 0 ? 0 : l - (logits[n * V + t] as number);
  }
  return { nll, lse };
}

/**
 * dlogits[n, v] = gNll[n] (p - [v == target]) + gZ[n] 2 lse[n] p, p = exp(logits - lse); an ignored
 * row (target -1) has no one-hot term. lse recomputed in float64 unless given.
 */
export function crossEntropyBackwardRef(
  logits: ArrayLike<number>, targets: ArrayLike<number>, gNll: ArrayLike<number>, gZ: ArrayLike<number> | null,
  N: number, V: number, lseIn?: ArrayLike<number>,
): Float64Array {
  const lse = lseIn ?? crossEntropyRef(logits, targets, N, V).lse;
  const out = new Float64Array(N * V);
  for (let n = 0; n < N; n++) {
    const t = targets[n] as number, l = lse[n] as number, gn = gNll[n] as number, gz = gZ ? (gZ[n] as number) : 0;
    for (let j = 0; j < V; j++) {
      const p = exp((logits[n * V + j] as number) - l);
      out[n * V + j] = gn * (p - (j === t ? 1 : 0)) + gz * 2 * l * p;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// AdamW (core/nn_types.h)

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  gradScale: number;
  step: number;
}

export interface AdamWState {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
}

/** The AdamW step in float64 (bias corrections 1 - beta^step). */
export function adamwRef(p: ArrayLike<number>, g: ArrayLike<number>, m: ArrayLike<number>, v: ArrayLike<number>, h: AdamWHyper): AdamWState {
  const n = p.length;
  const out: AdamWState = { p: new Float64Array(n), m: new Float64Array(n), v: new Float64Array(n) };
  const bc1 = 1 - pow(h.beta1, h.step), bc2 = 1 - pow(h.beta2, h.step);
  for (let i = 0; i < n; i++) {
    const gs = (g[i] as number) * h.gradScale;
    const mi = h.beta1 * (m[i] as number) + (1 - h.beta1) * gs;
    const vi = h.beta2 * (v[i] as number) + (1 - h.beta2) * gs * gs;
    const pi = p[i] as number;
    out.m[i] = mi;
    out.v[i] = vi;
    out.p[i] = pi - h.lr * h.weightDecay * pi - (h.lr * (mi / bc1)) / (sqrt(vi / bc2) + h.eps);
  }
  return out;
}

/**
 * The header's float32 formula, every operation rounded to float32 in the written order, left to
 * right, no fused multiply-add:
 *   g' = g * grad_scale
 *   m' = (beta1 * m) + ((1 - beta1) * g')
 *   v' = (beta2 * v) + ((1 - beta2) * (g' * g'))
 *   p' = (p - ((lr * weight_decay) * p)) - ((lr * (m' / bias_c1)) / (sqrt(v' / bias_c2) + eps))
 * Hyper-parameters are rounded to float32; bias_c = 1 - beta^step computed in double from the
 * caller's betas (as lib/nn/ops.ts does), then rounded to float32. `bf16` is p' rounded to bf16.
 */
export function adamwF32(
  p: ArrayLike<number>, g: ArrayLike<number>, m: ArrayLike<number>, v: ArrayLike<number>, h: AdamWHyper,
): AdamWState & { bf16: Float64Array } {
  const f = fround;
  const n = p.length;
  const out = { p: new Float64Array(n), m: new Float64Array(n), v: new Float64Array(n), bf16: new Float64Array(n) };
  const lr = f(h.lr), b1 = f(h.beta1), b2 = f(h.beta2), eps = f(h.eps), wd = f(h.weightDecay), gsc = f(h.gradScale);
  const bc1 = f(1 - pow(h.beta1, h.step)), bc2 = f(1 - pow(h.beta2, h.step));
  const omb1 = f(1 - b1), omb2 = f(1 - b2), lrwd = f(lr * wd);
  for (let i = 0; i < n; i++) {
    const gs = f((g[i] as number) * gsc);
    const mi = f(f(b1 * (m[i] as number)) + f(omb1 * gs));
    const vi = f(f(b2 * (v[i] as number)) + f(omb2 * f(gs * gs)));
    const pi = p[i] as number;
    const decayed = f(pi - f(lrwd * pi));
    const num = f(lr * f(mi / bc1));
    const den = f(f(sqrt(f(vi / bc2))) + eps);
    const pn = f(decayed - f(num / den));
    out.m[i] = mi;
    out.v[i] = vi;
    out.p[i] = pn;
    out.bf16[i] = bf16Round(pn);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Finite differences (to check the analytic backwards against the float64 forwards)

/**
 * Central differences of the scalar `loss` with respect to x[i] for each i in `indices`
 * (x is perturbed in place and restored). Step h relative to max(1, |x[i]|).
 */
export function centralDiff(loss: () => number, x: Float64Array, indices: readonly number[], h = 1e-6): Float64Array {
  const out = new Float64Array(indices.length);
  indices.forEach((i, j) => {
    const x0 = x[i] as number;
    const step = h * max(1, abs(x0));
    x[i] = x0 + step;
    const up = loss();
    x[i] = x0 - step;
    const down = loss();
    x[i] = x0;
    out[j] = (up - down) / (2 * step);
  });
  return out;
}

/** sum_i a[i] b[i] in float64. */
export function dotRef(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] as number) * (b[i] as number);
  return s;
}

/** The elements of `values` at `indices`. */
export function pick(values: ArrayLike<number>, indices: readonly number[]): number[] {
  return indices.map((i) => values[i] as number);
}
