/**
 * Differentiable functions: each computes its output with native ops and records how to map the
 * output's gradient back to its inputs (tape.ts). Gradients are float32; inputs may be bf16.
 */
import { full, tensor, zeros } from '../creation';
import { MomaError } from '../errors';
import { matmul as matmulOp } from '../ops';
import { requireOptions } from '../options';
import { Tensor } from '../tensor';
import { groupedMatmulWgrad, swiglu as swigluOp, swigluBackward } from '../moe/ops';
import * as nn from '../nn/ops';
import { record } from './tape';

function f32(t: Tensor): Tensor {
  return t.dtype === 'float32' ? t : t.astype('float32');
}

function asLike(t: Tensor, like: Tensor): Tensor {
  return t.dtype === like.dtype ? t : t.astype(like.dtype);
}

function sameShape(op: string, a: Tensor, b: Tensor): void {
  if (a.shape.join() !== b.shape.join()) {
    throw new MomaError('ERR_SHAPE', `${op}: shapes [${a.shape.join(', ')}] and [${b.shape.join(', ')}] differ`);
  }
}

/** x in another dtype (mixed precision); the gradient comes back in float32. */
export function cast(x: Tensor, dtype: 'float32' | 'bfloat16'): Tensor {
  if (x.dtype === dtype) return x;
  return record(x.astype(dtype), [x], (g) => [f32(g)]);
}

export function add(a: Tensor, b: Tensor): Tensor {
  sameShape('add', a, b);
  return record(a.add(b), [a, b], (g) => [g.clone(), g.clone()]);
}

export function sub(a: Tensor, b: Tensor): Tensor {
  sameShape('sub', a, b);
  return record(a.sub(b), [a, b], (g) => [g.clone(), g.neg()]);
}

export function mul(a: Tensor, b: Tensor): Tensor {
  sameShape('mul', a, b);
  return record(a.mul(b), [a, b], (g) => [g.mul(f32(b)), g.mul(f32(a))]);
}

export function scale(x: Tensor, alpha: number): Tensor {
  return record(x.scale(alpha), [x], (g) => [g.scale(alpha)]);
}

export function sigmoid(x: Tensor): Tensor {
  const y = x.sigmoid();
  return record(y, [x], (g) => {
    const y32 = f32(y);
    return [g.mul(y32).mul(y32.neg().add(1))];
  });
}

/** SiLU x·σ(x); gradient g·σ(x)·(1 + x·(1 − σ(x))). */
export function silu(x: Tensor): Tensor {
  const y = x.silu();
  return record(y, [x], (g) => {
    const x32 = f32(x);
    const s = x32.sigmoid();
    const slope = s.mul(x32.mul(s.neg().add(1)).add(1));
    return [g.mul(slope)];
  });
}

/**
 * Weighted binary cross-entropy from logits z against targets y in [0, 1] (same shape):
 * loss = Σ w·(softplus(z) − y·z), with softplus(z) = max(z, 0) + log(1 + exp(−|z|)) (stable for
 * any z); gradient w·(σ(z) − y). Returns the scalar loss and the per-entry terms (no gradient).
 */
export function binaryCrossEntropyWithLogits(z: Tensor, targets: Tensor, weights: Tensor): { loss: Tensor; terms: Tensor } {
  sameShape('binary_cross_entropy', z, targets);
  sameShape('binary_cross_entropy', z, weights);
  const z32 = f32(z);
  const softplus = z32.maximum(0).add(z32.abs().neg().exp().add(1).log());
  const terms = softplus.sub(targets.mul(z32)).mul(weights);
  const loss = terms.sum();
  record(loss, [z], (g) => [z32.sigmoid().sub(targets).mul(weights).mul(g)]);
  return { loss, terms };
}

/** x [N, D] times a per-row factor s [N]: y[n] = s[n] · x[n]. */
export function mulRows(x: Tensor, s: Tensor): Tensor {
  if (x.ndim !== 2 || s.ndim !== 1 || s.shape[0] !== x.shape[0]) {
    throw new MomaError('ERR_SHAPE', `mul_rows: x must be [N, D] and s [N], got [${x.shape.join(', ')}] and [${s.shape.join(', ')}]`);
  }
  const col = s.reshape([s.size(0), 1]);
  const y = x.mul(asLike(col, x));
  return record(y, [x, s], (g) => [g.mul(f32(col)), g.mul(f32(x)).sum(1)]);
}

export function reshape(x: Tensor, shape: number[]): Tensor {
  const original = x.shape.slice();
  return record(x.reshape(shape), [x], (g) => [g.reshape(original)]);
}

/** a [M, K] @ b [K, N] (2-D; transB: b is [N, K]). */
export function matmul(a: Tensor, b: Tensor, options: { transB?: boolean } = {}): Tensor {
  if (a.ndim !== 2 || b.ndim !== 2) throw new MomaError('ERR_SHAPE', 'matmul (autograd): a and b must be 2-D');
  const transB = options.transB === true;
  const y = matmulOp(a, b, { transB });
  return record(y, [a, b], (g) => {
    // d a in a's dtype from the gradient rounded to it (bf16 x bf16, as autocast's backward reads it)
    const ga = asLike(g, a);
    const da = matmulOp(ga, asLike(b, a), { transB: !transB });
    return [da, weightGradient(a, g, ga, transB)];
  });
}

/**
 * d b of matmul (float32): aᵀ·g, or gᵀ·a when b was transposed. A bf16 a on the CPU multiplies
 * the gradient rounded to bf16 (ga) on the bf16 x bf16 GEMM path through groupedMatmulWgrad, one
 * segment of all rows, which accumulates and writes float32: what the tensor cores compute for
 * the float32 gradient (bf16-rounded operands, float32 sums), without a bf16 rounding of d b.
 * Otherwise g as is (float32 x float32, or float32 x bf16 on a GPU).
 */
function weightGradient(a: Tensor, g: Tensor, ga: Tensor, transB: boolean): Tensor {
  if (a.dtype !== 'bfloat16' || a.device !== 'cpu') return transB ? matmulOp(g, a, { transA: true }) : matmulOp(a, g, { transA: true });
  const offsets = tensor(Int32Array.of(0, a.size(0)), { device: a.device });
  const dw = transB ? groupedMatmulWgrad(ga, a, { offsets }) : groupedMatmulWgrad(a, ga, { offsets });
  return dw.reshape(dw.shape.slice(1));
}

/** Rows of `table` [V, D] at int32 ids [N]; the gradient is a deterministic scatter-add. */
export function embedding(ids: Tensor, table: Tensor): Tensor {
  const y = table.indexSelect(0, ids);
  return record(y, [table], (g) => [zeros(table.shape, { device: table.device }).scatterAdd(0, ids, f32(g))]);
}

/** Rows of x [N, D] at int32 index [K] (MoD: the selected rows). */
export function gatherRows(x: Tensor, index: Tensor): Tensor {
  const y = x.indexSelect(0, index);
  return record(y, [x], (g) => [zeros(x.shape, { device: x.device }).scatterAdd(0, index, f32(g))]);
}

/** base [N, D] with src [K, D] added at rows index [K] (distinct rows). */
export function scatterAddRows(base: Tensor, index: Tensor, src: Tensor): Tensor {
  const y = base.scatterAdd(0, index, asLike(src, base));
  return record(y, [base, src], (g) => [g.clone(), g.indexSelect(0, index)]);
}

/** RMSNorm over the last dim: `F.rmsNorm(x, weight, { eps })` (kernels.rmsNorm with its gradient). */
export function rmsNorm(x: Tensor, weight: Tensor, options: nn.NormOptions = {}): Tensor {
  const { y, rstd } = nn.rmsNorm(x, weight, options);
  return record(y, [x, weight], (g) => {
    const { dx, dweight } = nn.rmsNormBackward(asLike(g, x), { x, weight, rstd });
    return [dx, dweight];
  });
}

/** LayerNorm over the last dim of x [..., G, D]: `F.layerNorm(x, { weight, bias }, { eps })` with weight and bias [G, D]. */
export function layerNorm(x: Tensor, affine: nn.LayerNormAffine, options: nn.NormOptions = {}): Tensor {
  const { y, mean, rstd } = nn.layerNorm(x, affine, options);
  const { weight, bias } = affine;
  return record(y, [x, weight, bias], (g) => {
    const { dx, dweight, dbias } = nn.layerNormBackward(asLike(g, x), { x, weight, mean, rstd });
    return [dx, dweight, dbias];
  });
}

export function rope(x: Tensor, positions: Tensor, theta = 10000): Tensor {
  const y = nn.rope(x, positions, { theta });
  return record(y, [x], (g) => [nn.rope(asLike(g, x), positions, { theta, inverse: true })]);
}

/** Causal attention inside the segments given by segStart: `F.attention(q, k, v, { segStart, scale })` (kernels.attention). */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: nn.AttentionOptions): Tensor {
  const { o, lse } = nn.attention(q, k, v, options);
  const { segStart, scale } = options;
  return record(o, [q, k, v], (g) => {
    const { dq, dk, dv } = nn.attentionBackward(asLike(g, q), { q, k, v, o, lse, segStart }, { scale });
    return [dq, dk, dv];
  });
}

export function swiglu(h1: Tensor, h3: Tensor): Tensor {
  const a = swigluOp(h1, h3);
  return record(a, [h1, h3], (g) => {
    const { dh1, dh3 } = swigluBackward(h1, h3, asLike(g, h1));
    return [dh1, dh3];
  });
}

export interface CrossEntropyLossWeights {
  /** float32 [N]: the weight of each row's nll. */
  weights: Tensor;
  /** float32 [N]: the weight of each row's lse² (the z-loss); no z-loss when absent. */
  zWeights?: Tensor;
}

/**
 * Weighted cross-entropy of logits [N, V] against int32 targets [N] (-1 ignored):
 * `F.crossEntropyLoss(logits, targets, { weights, zWeights })`, loss = Σ weights[n]·nll[n] +
 * Σ zWeights[n]·lse[n]² (a scalar). `nll` (not differentiable) is returned for per-modality reporting.
 */
export function crossEntropyLoss(logits: Tensor, targets: Tensor, options: CrossEntropyLossWeights): { loss: Tensor; nll: Tensor } {
  const { weights, zWeights } = requireOptions(options, 'F.crossEntropyLoss', ['weights']);
  const { nll, lse } = nn.crossEntropy(logits, targets);
  let loss = nll.mul(weights).sum();
  if (zWeights !== undefined) {
    const z = lse.square().mul(zWeights).sum();
    const total = loss.add(z);
    loss.dispose();
    z.dispose();
    loss = total;
  }
  record(loss, [logits], (g) => {
    const gNll = weights.mul(g);
    const gradZ = zWeights === undefined ? undefined : zWeights.mul(g);
    return [nn.crossEntropyBackward(gNll, { logits, targets, lse }, gradZ === undefined ? {} : { gradZ })];
  });
  return { loss, nll };
}

/** A constant like `t` filled with `value` (no gradient). */
export function constantLike(t: Tensor, value: number): Tensor {
  return full(t.shape, value, { dtype: t.dtype, device: t.device });
}
