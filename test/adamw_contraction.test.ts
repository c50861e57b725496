// The CPU AdamW step rounds every float32 operation on its own: no multiply-add is contracted into
// an FMA (the build passes -ffp-contract=off to every C++ file in every build type; CMakeLists.txt,
// binding.gyp). The step is compared bit for bit with a float32 reference computed here with
// Math.fround after every single operation, on random inputs for which each contraction the
// compiler could make (b1·m + c1·g', b2·v + c2·g'², p − lw·p, either product fused) changes many
// results — the test first checks that, so a contracted build cannot pass it.
import { tensor } from '../lib/creation';
import { adamwStep, AdamWStep } from '../lib/nn/ops';

const f = Math.fround;

/** xorshift32 in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

function randomF32(next: () => number, n: number, lo: number, hi: number): Float32Array {
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * next());
}

/** How a multiply-add a·b + c·d is evaluated: each product rounded, or one of them fused with the sum. */
type MulAdd = 'separate' | 'fuse-first' | 'fuse-second';
/** Which multiply-add of the step is contracted, and how (none: the separate evaluation everywhere). */
type Contraction = { site: 'none' } | { site: 'm' | 'v'; how: MulAdd } | { site: 'decay' };
const CONTRACTIONS: Contraction[] = [
  { site: 'm', how: 'fuse-first' }, { site: 'm', how: 'fuse-second' },
  { site: 'v', how: 'fuse-first' }, { site: 'v', how: 'fuse-second' },
  { site: 'decay' },
];

/** fma(a, b, r) for float32 a, b, r: a·b is exact in double (48 significant bits), one rounding after the add. */
const fma = (a: number, b: number, r: number): number => f(a * b + r);

function mulAdd(a: number, b: number, c: number, d: number, how: MulAdd): number {
  if (how === 'fuse-first') return fma(a, b, f(c * d));
  if (how === 'fuse-second') return fma(c, d, f(a * b));
  return f(f(a * b) + f(c * d));
}

interface State {
  p: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

/** The AdamW step of csrc/cpu/adamw.cc in float32, one rounding per operation, or with one contraction. */
function adamwReference(s: State, g: Float32Array, h: AdamWStep, contraction: Contraction = { site: 'none' }): State {
  const at = (site: 'm' | 'v'): MulAdd => (contraction.site === site ? contraction.how : 'separate');
  const lr = f(h.lr), b1 = f(h.beta1), b2 = f(h.beta2), eps = f(h.eps), wd = f(h.weightDecay), gs = f(h.gradScale ?? 1);
  const c1 = f(1 - b1), c2 = f(1 - b2), lw = f(lr * wd);
  const bc1 = f(1 - Math.pow(h.beta1, h.step)), bc2 = f(1 - Math.pow(h.beta2, h.step));
  const n = g.length;
  const out: State = { p: new Float32Array(n), m: new Float32Array(n), v: new Float32Array(n) };
  for (let i = 0; i < n; i++) {
    const gg = f(g[i]! * gs);
    const m = mulAdd(b1, s.m[i]!, c1, gg, at('m'));
    const v = mulAdd(b2, s.v[i]!, c2, f(gg * gg), at('v'));
    const p = s.p[i]!;
    const decayed = contraction.site === 'decay' ? fma(-lw, p, p) : f(p - f(lw * p));
    const step = f(f(lr * f(m / bc1)) / f(f(Math.sqrt(f(v / bc2))) + eps));
    out.m[i] = m;
    out.v[i] = v;
    out.p[i] = f(decayed - step);
  }
  return out;
}

function differing(a: Float32Array, b: Float32Array): number {
  let count = 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) count++;
  return count;
}

describe('CPU AdamW: no FMA contraction', () => {
  // 4099 elements: AVX-512 and AVX2 blocks and a scalar tail
  const n = 4099;
  const hypers: AdamWStep[] = [
    { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 3, gradScale: 0.7 },
    { lr: 3e-2, beta1: 0.8, beta2: 0.999, eps: 1e-6, weightDecay: 0.3, step: 17 },
    // lr · weightDecay large enough that p − lw·p rounds differently when fused
    { lr: 0.25, beta1: 0.6, beta2: 0.7, eps: 1e-3, weightDecay: 1.5, step: 2, gradScale: 1.3 },
  ];
  const lw = (h: AdamWStep): number => h.lr * h.weightDecay;

  test.each(hypers.map((h, i) => [i, h] as const))('hyper-parameters %i: bitwise equal to the operation-by-operation float32 reference', async (i, h) => {
    const next = rng(1234 + i);
    const state: State = { p: randomF32(next, n, -3, 3), m: randomF32(next, n, -0.5, 0.5), v: randomF32(next, n, 0, 0.25) };
    const g = randomF32(next, n, -4, 4);

    const want = adamwReference(state, g, h);
    // the inputs tell each contracted evaluation apart from the separate one, in the output it
    // writes first (p − lw·p only where lw·p is not negligible next to p)
    for (const contraction of CONTRACTIONS) {
      if (contraction.site === 'decay' && lw(h) < 0.01) continue;
      const fused = adamwReference(state, g, h, contraction);
      const written = contraction.site === 'm' ? [fused.m, want.m] : contraction.site === 'v' ? [fused.v, want.v] : [fused.p, want.p];
      expect(differing(written[0]!, written[1]!)).toBeGreaterThan(n / 50);
    }

    const cpu = { device: 'cpu' };
    const r = adamwStep({ param: tensor(state.p, cpu), grad: tensor(g, cpu), expAvg: tensor(state.m, cpu), expAvgSq: tensor(state.v, cpu) }, h);
    const [p, m, v] = await Promise.all([r.param.toArray(), r.expAvg.toArray(), r.expAvgSq.toArray()]);
    for (const t of [r.param, r.expAvg, r.expAvgSq]) t.dispose();
    expect(differing(m as Float32Array, want.m)).toBe(0);
    expect(differing(v as Float32Array, want.v)).toBe(0);
    expect(differing(p as Float32Array, want.p)).toBe(0);
  });
});
