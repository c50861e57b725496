/**
 * The transformer ops of SPEC.md §1 as plain functions on tensors (no autograd): RMSNorm,
 * per-head LayerNorm (QK-norm), RoPE, causal segment attention, cross-entropy, and the fused
 * AdamW step, each with its backward. The autograd layer (lib/autograd) builds on these.
 */
import { native, NativeAdamWParams } from '../binding';
import { MomaError } from '../errors';
import { handleOf, Tensor, wrap } from '../tensor';

function num(value: unknown, op: string, name: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new MomaError('ERR_ARG', `${op}: ${name} must be a finite number, got ${String(value)}`);
  return value;
}

/** y = x · rstd · weight over the last dim; rstd (float32, x's leading shape) is saved for the backward. */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-5): { y: Tensor; rstd: Tensor } {
  const op = 'rms_norm';
  const [y, rstd] = native().rmsNorm(handleOf(x, op, 'x'), handleOf(weight, op, 'weight'), num(eps, op, 'eps'));
  return { y: wrap(y), rstd: wrap(rstd) };
}

export function rmsNormBackward(x: Tensor, weight: Tensor, rstd: Tensor, dy: Tensor): { dx: Tensor; dweight: Tensor } {
  const op = 'rms_norm_backward';
  const [dx, dw] = native().rmsNormBackward(handleOf(x, op, 'x'), handleOf(weight, op, 'weight'), handleOf(rstd, op, 'rstd'), handleOf(dy, op, 'dy'));
  return { dx: wrap(dx), dweight: wrap(dw) };
}

/** LayerNorm over the last dim of x [..., G, D] with weight and bias [G, D] (QK-norm: G = heads). */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): { y: Tensor; mean: Tensor; rstd: Tensor } {
  const op = 'layer_norm';
  const [y, mean, rstd] = native().layerNorm(handleOf(x, op, 'x'), handleOf(weight, op, 'weight'), handleOf(bias, op, 'bias'), num(eps, op, 'eps'));
  return { y: wrap(y), mean: wrap(mean), rstd: wrap(rstd) };
}

export function layerNormBackward(x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, dy: Tensor): { dx: Tensor; dweight: Tensor; dbias: Tensor } {
  const op = 'layer_norm_backward';
  const [dx, dw, db] = native().layerNormBackward(handleOf(x, op, 'x'), handleOf(weight, op, 'weight'), handleOf(mean, op, 'mean'),
    handleOf(rstd, op, 'rstd'), handleOf(dy, op, 'dy'));
  return { dx: wrap(dx), dweight: wrap(dw), dbias: wrap(db) };
}

/** Rotary embedding (rotate-half) of x [N, H, D] at int32 positions [N]; inverse rotates back (the backward). */
export function rope(x: Tensor, positions: Tensor, options: { theta?: number; inverse?: boolean } = {}): Tensor {
  const op = 'rope';
  return wrap(native().rope(handleOf(x, op, 'x'), handleOf(positions, op, 'positions'), num(options.theta ?? 10000, op, 'theta'), options.inverse === true));
}

/**
 * Causal attention inside contiguous segments: row t attends to rows [segStart[t], t]
 * (segStart[t] is t or segStart[t-1]). q, k, v [N, H, D]; scale defaults to 1/sqrt(D).
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, segStart: Tensor, scale?: number): { o: Tensor; lse: Tensor } {
  const op = 'attention';
  const s = scale ?? 1 / Math.sqrt(q.shape[q.shape.length - 1] ?? 1);
  const [o, lse] = native().attention(handleOf(q, op, 'q'), handleOf(k, op, 'k'), handleOf(v, op, 'v'), handleOf(segStart, op, 'segStart'), num(s, op, 'scale'));
  return { o: wrap(o), lse: wrap(lse) };
}

export function attentionBackward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, dout: Tensor, segStart: Tensor, scale?: number): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const op = 'attention_backward';
  const s = scale ?? 1 / Math.sqrt(q.shape[q.shape.length - 1] ?? 1);
  const [dq, dk, dv] = native().attentionBackward(handleOf(q, op, 'q'), handleOf(k, op, 'k'), handleOf(v, op, 'v'), handleOf(o, op, 'o'),
    handleOf(lse, op, 'lse'), handleOf(dout, op, 'dout'), handleOf(segStart, op, 'segStart'), num(s, op, 'scale'));
  return { dq: wrap(dq), dk: wrap(dk), dv: wrap(dv) };
}

/** Per-row cross-entropy of logits [N, V] against int32 targets [N] (-1 = ignored: nll 0). */
export function crossEntropy(logits: Tensor, targets: Tensor): { nll: Tensor; lse: Tensor } {
  const op = 'cross_entropy';
  const [nll, lse] = native().crossEntropy(handleOf(logits, op, 'logits'), handleOf(targets, op, 'targets'));
  return { nll: wrap(nll), lse: wrap(lse) };
}

/** dlogits = gradNll·(p − onehot) + gradZ·2·lse·p (gradZ optional: the z-loss term). */
export function crossEntropyBackward(logits: Tensor, targets: Tensor, lse: Tensor, gradNll: Tensor, gradZ?: Tensor): Tensor {
  const op = 'cross_entropy_backward';
  return wrap(native().crossEntropyBackward(handleOf(logits, op, 'logits'), handleOf(targets, op, 'targets'), handleOf(lse, op, 'lse'),
    handleOf(gradNll, op, 'gradNll'), gradZ === undefined ? null : handleOf(gradZ, op, 'gradZ')));
}

export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Gradient multiplier (global-norm clipping), default 1. */
  gradScale?: number;
  /** The step number, >= 1 (bias correction). */
  step: number;
}

/** One fused AdamW step; returns the new parameter and moments (and a bf16 copy when asked). */
export function adamwStep(param: Tensor, grad: Tensor, expAvg: Tensor, expAvgSq: Tensor, h: AdamWStep, options: { bf16Copy?: boolean } = {}): { param: Tensor; expAvg: Tensor; expAvgSq: Tensor; bf16?: Tensor } {
  const op = 'adamw';
  if (!Number.isInteger(h.step) || h.step < 1) throw new MomaError('ERR_ARG', `${op}: step must be an integer >= 1, got ${String(h.step)}`);
  const hyper: NativeAdamWParams = {
    lr: num(h.lr, op, 'lr'), beta1: num(h.beta1, op, 'beta1'), beta2: num(h.beta2, op, 'beta2'), eps: num(h.eps, op, 'eps'),
    weightDecay: num(h.weightDecay, op, 'weightDecay'), gradScale: num(h.gradScale ?? 1, op, 'gradScale'),
    biasC1: 1 - Math.pow(h.beta1, h.step), biasC2: 1 - Math.pow(h.beta2, h.step),
  };
  const out = native().adamw(handleOf(param, op, 'param'), handleOf(grad, op, 'grad'), handleOf(expAvg, op, 'expAvg'), handleOf(expAvgSq, op, 'expAvgSq'), hyper, options.bf16Copy === true);
  const [p, m, v, half] = out.map((t) => wrap(t));
  return half === undefined ? { param: p!, expAvg: m!, expAvgSq: v! } : { param: p!, expAvg: m!, expAvgSq: v!, bf16: half };
}
