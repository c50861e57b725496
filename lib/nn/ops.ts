/**
 * The transformer ops (docs/TRAINING.md, "The model") as plain functions on tensors (no autograd): RMSNorm,
 * per-head LayerNorm (QK-norm), RoPE, causal segment attention, cross-entropy, and the fused
 * AdamW step, each with its backward. The autograd layer (lib/autograd) builds on these.
 */
import { native, NativeAdamWParams } from '../binding';
import { MomaError } from '../errors';
import { requireFields, requireOptions } from '../options';
import { handleOf, Tensor, wrap } from '../tensor';

function num(value: unknown, op: string, name: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new MomaError('ERR_ARG', `${op}: ${name} must be a finite number, got ${String(value)}`);
  return value;
}

export interface NormOptions {
  /** Added to the mean square (RMSNorm) or the variance (LayerNorm) before the square root; default 1e-5. */
  eps?: number;
}

/** y = x · rstd · weight over the last dim; rstd (float32, x's leading shape) is saved for the backward. */
export function rmsNorm(x: Tensor, weight: Tensor, options: NormOptions = {}): { y: Tensor; rstd: Tensor } {
  const op = 'rms_norm';
  const [y, rstd] = native().rmsNorm(handleOf(x, op, 'x'), handleOf(weight, op, 'weight'), num(options.eps ?? 1e-5, op, 'eps'));
  return { y: wrap(y), rstd: wrap(rstd) };
}

/** What rmsNormBackward reads: the forward's input and weight, and the rstd it returned. */
export interface RmsNormSaved {
  x: Tensor;
  weight: Tensor;
  rstd: Tensor;
}

/** Gradients of rmsNorm's x and weight from dy, the gradient of its y. */
export function rmsNormBackward(dy: Tensor, saved: RmsNormSaved): { dx: Tensor; dweight: Tensor } {
  const op = 'rms_norm_backward';
  const { x, weight, rstd } = requireFields(saved, { fn: 'rmsNormBackward', argument: 'saved' }, ['x', 'weight', 'rstd']);
  const [dx, dw] = native().rmsNormBackward(handleOf(x, op, 'x'), handleOf(weight, op, 'weight'), handleOf(rstd, op, 'rstd'), handleOf(dy, op, 'dy'));
  return { dx: wrap(dx), dweight: wrap(dw) };
}

/** The affine parameters of a LayerNorm, each [G, D]. */
export interface LayerNormAffine {
  weight: Tensor;
  bias: Tensor;
}

/** LayerNorm over the last dim of x [..., G, D] with `affine`'s weight and bias [G, D] (QK-norm: G = heads). */
export function layerNorm(x: Tensor, affine: LayerNormAffine, options: NormOptions = {}): { y: Tensor; mean: Tensor; rstd: Tensor } {
  const op = 'layer_norm';
  const { weight, bias } = requireFields(affine, { fn: 'layerNorm', argument: 'affine' }, ['weight', 'bias']);
  const [y, mean, rstd] = native().layerNorm(handleOf(x, op, 'x'), handleOf(weight, op, 'weight'), handleOf(bias, op, 'bias'), num(options.eps ?? 1e-5, op, 'eps'));
  return { y: wrap(y), mean: wrap(mean), rstd: wrap(rstd) };
}

/** What layerNormBackward reads: the forward's input and weight, and the mean and rstd it returned. */
export interface LayerNormSaved {
  x: Tensor;
  weight: Tensor;
  mean: Tensor;
  rstd: Tensor;
}

/** Gradients of layerNorm's x, weight and bias from dy, the gradient of its y. */
export function layerNormBackward(dy: Tensor, saved: LayerNormSaved): { dx: Tensor; dweight: Tensor; dbias: Tensor } {
  const op = 'layer_norm_backward';
  const { x, weight, mean, rstd } = requireFields(saved, { fn: 'layerNormBackward', argument: 'saved' }, ['x', 'weight', 'mean', 'rstd']);
  const [dx, dw, db] = native().layerNormBackward(handleOf(x, op, 'x'), handleOf(weight, op, 'weight'), handleOf(mean, op, 'mean'),
    handleOf(rstd, op, 'rstd'), handleOf(dy, op, 'dy'));
  return { dx: wrap(dx), dweight: wrap(dw), dbias: wrap(db) };
}

/** Rotary embedding (rotate-half) of x [N, H, D] at int32 positions [N]; inverse rotates back (the backward). */
export function rope(x: Tensor, positions: Tensor, options: { theta?: number; inverse?: boolean } = {}): Tensor {
  const op = 'rope';
  return wrap(native().rope(handleOf(x, op, 'x'), handleOf(positions, op, 'positions'), num(options.theta ?? 10000, op, 'theta'), options.inverse === true));
}

export interface AttentionOptions {
  /** int32 [N]: row t attends to rows [segStart[t], t] (segStart[t] is t or segStart[t-1]). */
  segStart: Tensor;
  /** Multiplies q·k before the softmax; default 1/sqrt(D). */
  scale?: number;
}

/**
 * Causal attention inside contiguous segments: `attention(q, k, v, { segStart, scale })` with
 * q, k, v [N, H, D]; row t attends to rows [segStart[t], t]. Returns the output o [N, H, D] and
 * the float32 log-sum-exp lse [N, H] that attentionBackward reads.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): { o: Tensor; lse: Tensor } {
  const op = 'attention';
  const { segStart, scale } = requireOptions(options, 'attention', ['segStart']);
  const s = scale ?? 1 / Math.sqrt(q.shape[q.shape.length - 1] ?? 1);
  const [o, lse] = native().attention(handleOf(q, op, 'q'), handleOf(k, op, 'k'), handleOf(v, op, 'v'), handleOf(segStart, op, 'segStart'), num(s, op, 'scale'));
  return { o: wrap(o), lse: wrap(lse) };
}

/** What attentionBackward reads: the forward's inputs, its segStart, and the o and lse it returned. */
export interface AttentionSaved {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o: Tensor;
  lse: Tensor;
  segStart: Tensor;
}

/**
 * Gradients of attention's q, k and v from dout, the gradient of its o:
 * `attentionBackward(dout, { q, k, v, o, lse, segStart }, { scale })` (scale as in the forward).
 */
export function attentionBackward(dout: Tensor, saved: AttentionSaved, options: { scale?: number } = {}): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const op = 'attention_backward';
  const { q, k, v, o, lse, segStart } = requireFields(saved, { fn: 'attentionBackward', argument: 'saved' }, ['q', 'k', 'v', 'o', 'lse', 'segStart']);
  const s = options.scale ?? 1 / Math.sqrt(q.shape[q.shape.length - 1] ?? 1);
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

/** What crossEntropyBackward reads: the forward's logits and targets, and the lse it returned. */
export interface CrossEntropySaved {
  logits: Tensor;
  targets: Tensor;
  lse: Tensor;
}

/**
 * dlogits = gradNll·(p − onehot) + gradZ·2·lse·p, with gradNll [N] the gradient of the nll and
 * the optional options.gradZ [N] that of lse² (the z-loss term):
 * `crossEntropyBackward(gradNll, { logits, targets, lse }, { gradZ })`.
 */
export function crossEntropyBackward(gradNll: Tensor, saved: CrossEntropySaved, options: { gradZ?: Tensor } = {}): Tensor {
  const op = 'cross_entropy_backward';
  const { logits, targets, lse } = requireFields(saved, { fn: 'crossEntropyBackward', argument: 'saved' }, ['logits', 'targets', 'lse']);
  const gradZ = options.gradZ;
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

/** The tensors of one parameter that an AdamW step reads: the parameter, its gradient and its two moments. */
export interface AdamWTensors {
  param: Tensor;
  grad: Tensor;
  expAvg: Tensor;
  expAvgSq: Tensor;
}

/**
 * One fused AdamW step: `adamwStep({ param, grad, expAvg, expAvgSq }, hyper, { bf16Copy })`.
 * Returns the new parameter and moments (and a bf16 copy of the parameter with bf16Copy).
 */
export function adamwStep(tensors: AdamWTensors, h: AdamWStep, options: { bf16Copy?: boolean } = {}): { param: Tensor; expAvg: Tensor; expAvgSq: Tensor; bf16?: Tensor } {
  const op = 'adamw';
  const { param, grad, expAvg, expAvgSq } = requireFields(tensors, { fn: 'adamwStep', argument: 'tensors' }, ['param', 'grad', 'expAvg', 'expAvgSq']);
  requireFields(h, { fn: 'adamwStep', argument: 'hyper' }, ['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'step']);
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
