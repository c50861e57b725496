// Autograd tape and scopes: gradients of the differentiable functions against float64
// references, accumulation over backward calls, noGrad, tidy/keep disposal, error cases.
import { backward, F, keep, memoryStats, MomaError, noGrad, synchronize, Tensor, tensor, tidy, zeroGrad } from '../lib';
import { assertClose, mulberry32, randomF32 } from './support/reference';
import { collectGarbage } from './support/gc';

const dev = 'cpu';
const mk = (data: ArrayLike<number>, shape: number[]): Tensor => tensor(Float32Array.from(data), { shape, device: dev });
const leaf = (data: ArrayLike<number>, shape: number[]): Tensor => {
  const t = mk(data, shape);
  t.requiresGrad = true;
  return t;
};
const read = async (t: Tensor | null): Promise<number[]> => {
  if (t === null) throw new Error('no gradient');
  return Array.from(await t.toArray());
};

describe('autograd', () => {
  test('matmul, add, mul, sigmoid, mulRows, reshape: gradients against float64 derivatives', async () => {
    const rng = mulberry32(3);
    const [M, K, N] = [5, 7, 3];
    const a = randomF32(rng, M * K), b = randomF32(rng, K * N), c = randomF32(rng, M * N), s = randomF32(rng, M), w = randomF32(rng, M * N);
    const ta = leaf(a, [M, K]), tb = leaf(b, [K, N]), tc = leaf(c, [M, N]), ts = leaf(s, [M]);
    // loss = w · vec(s_m σ((a·b + c) ⊙ c)), built from differentiable ops only
    const l2 = tidy(() => {
      const y = F.mulRows(F.sigmoid(F.mul(F.add(F.matmul(ta, tb), tc), tc)), ts);
      const flat = F.reshape(y, [M * N, 1]);
      const out = F.matmul(F.reshape(mk(w, [1, M * N]), [1, M * N]), flat);
      backward(out);
      return out;
    });
    // float64 reference
    const ab = new Float64Array(M * N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) { let acc = 0; for (let k = 0; k < K; k++) acc += a[m * K + k]! * b[k * N + n]!; ab[m * N + n] = acc; }
    const sig = (x: number): number => 1 / (1 + Math.exp(-x));
    let ref = 0;
    const ga = new Float64Array(M * K), gb = new Float64Array(K * N), gc = new Float64Array(M * N), gs = new Float64Array(M);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
      const i = m * N + n;
      const z = (ab[i]! + c[i]!) * c[i]!;
      const sg = sig(z);
      ref += w[i]! * s[m]! * sg;
      const dz = w[i]! * s[m]! * sg * (1 - sg);
      gs[m]! += w[i]! * sg;
      gc[i] = dz * (ab[i]! + 2 * c[i]!);
      const dab = dz * c[i]!;
      for (let k = 0; k < K; k++) { ga[m * K + k]! += dab * b[k * N + n]!; gb[k * N + n]! += dab * a[m * K + k]!; }
    }
    expect(Math.abs((await l2.item()) - ref)).toBeLessThan(1e-5 * Math.max(1, Math.abs(ref)));
    l2.dispose();
    assertClose(await read(ta.grad), ga, { rtol: 1e-4, atol: 1e-6, label: 'da' });
    assertClose(await read(tb.grad), gb, { rtol: 1e-4, atol: 1e-6, label: 'db' });
    assertClose(await read(tc.grad), gc, { rtol: 1e-4, atol: 1e-6, label: 'dc' });
    assertClose(await read(ts.grad), gs, { rtol: 1e-4, atol: 1e-6, label: 'ds' });
    zeroGrad([ta, tb, tc, ts]);
    expect(ta.grad).toBeNull();
    for (const t of [ta, tb, tc, ts]) t.dispose();
  });

  test('embedding, gatherRows and scatterAddRows: repeated ids accumulate', async () => {
    const table = leaf([1, 2, 3, 4, 5, 6, 7, 8], [4, 2]);
    const base = leaf(new Array(6).fill(0), [3, 2]);
    const ids = tensor(Int32Array.from([2, 0, 2]), { device: dev });
    const rows = tensor(Int32Array.from([1, 2]), { device: dev });
    tidy(() => {
      const e = F.embedding(ids, table); // [3, 2]: rows 2, 0, 2
      const g = F.gatherRows(e, rows); // rows 1, 2 of e: table rows 0, 2
      const y = F.scatterAddRows(base, rows, F.scale(g, 2)); // base + 2 g at rows 1, 2
      const w = mk([1, 10, 100, 1000, 1e4, 1e5], [1, 6]);
      backward(F.matmul(w, F.reshape(y, [6, 1])));
    });
    // d/dbase = w; d/dtable: row 0 gets 2·w[rows 1], row 2 gets 2·w[row 2]
    expect(await read(base.grad)).toEqual([1, 10, 100, 1000, 1e4, 1e5]);
    expect(await read(table.grad)).toEqual([200, 2000, 0, 0, 2e4, 2e5, 0, 0]);
    for (const t of [table, base, ids, rows]) t.dispose();
  });

  test('gradients accumulate across backward calls until zeroGrad; noGrad records nothing', async () => {
    const x = leaf([1, 2, 3], [1, 3]);
    const w = mk([1, 1, 1], [3, 1]);
    for (let i = 0; i < 3; i++) tidy(() => backward(F.matmul(x, w)));
    expect(await read(x.grad)).toEqual([3, 3, 3]);
    const y = noGrad(() => F.matmul(x, w));
    expect(() => backward(y)).toThrow(MomaError);
    y.dispose();
    zeroGrad([x]);
    x.dispose();
    w.dispose();
  });

  test('tidy disposes what the step created and keeps results; memory returns to baseline', async () => {
    await collectGarbage(dev); // the allocator is per process: earlier suites' garbage first
    const before = memoryStats(dev);
    const x = leaf(randomF32(mulberry32(1), 64), [8, 8]);
    let kept: Tensor | undefined;
    for (let i = 0; i < 50; i++) {
      kept?.dispose();
      kept = tidy(() => {
        const h = F.sigmoid(F.matmul(x, x));
        backward(F.matmul(mk(new Array(8).fill(1), [1, 8]), F.reshape(F.matmul(h, mk(new Array(8).fill(1), [8, 1])), [8, 1])));
        return h;
      });
    }
    expect(kept!.disposed).toBe(false);
    kept!.dispose();
    zeroGrad([x]);
    x.dispose();
    await synchronize(dev);
    const after = memoryStats(dev);
    expect(after.liveStorages).toBe(before.liveStorages);
    expect(after.allocated).toBe(before.allocated);
  });

  test('errors: non-scalar loss without gradient, a loss with no leaf, shape mismatches', () => {
    const x = leaf([1, 2], [2]);
    const y = tidy(() => keep(F.scale(x, 2)));
    expect(() => backward(y)).toThrow(expect.objectContaining({ code: 'ERR_SHAPE' }));
    const c = mk([1, 2], [2]);
    expect(() => backward(c)).toThrow(expect.objectContaining({ code: 'ERR_ARG' }));
    expect(() => F.add(x, mk([1, 2, 3], [3]))).toThrow(expect.objectContaining({ code: 'ERR_SHAPE' }));
    expect(() => tidy((() => Promise.resolve(1)) as unknown as () => number)).toThrow(expect.objectContaining({ code: 'ERR_ARG' }));
    for (const t of [x, y, c]) t.dispose();
  });
});
