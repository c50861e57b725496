/**
 * AdamW over a Module's parameters with the fused native step (lib/nn/ops adamwStep): fp32
 * parameters and moments, decoupled weight decay (not on norms, biases and embeddings unless
 * asked), gradient clipping by global norm. Defaults follow the paper's recipe (docs/MODELS.md):
 * betas (0.9, 0.95), eps 1e-5, clip 1.0.
 *
 * Clipping stays on the device: the global norm and the factor min(1, clipNorm / (norm + 1e-6))
 * are float32 scalar tensors, and the gradients are multiplied by the factor before the fused
 * step, so an update never waits for the device. Read `gradNorm` only when it is logged.
 *
 * Non-finite steps are caught on the device too: `finite` (a float32 0/1 scalar) is 1 when the
 * gradient norm and the caller's loss flag are finite. With `skipNonfinite` the fused step's
 * outputs are selected with where(finite, new, old), so a step with a NaN or infinite gradient
 * leaves parameters and moments as they were (NaN · 0 is NaN, hence a select, not a product);
 * that costs three selects per parameter, so it is only done when asked. The step count (bias
 * correction) counts such steps too: the host never learns of them inside a step.
 */
import { tidy, untrack } from '../autograd/scope';
import { noGrad } from '../autograd/tape';
import { concat, where } from '../ops';
import { full, zeros } from '../creation';
import { MomaError } from '../errors';
import { Tensor } from '../tensor';
import { Module } from '../nn/module';
import { adamwStep } from '../nn/ops';

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** Clip gradients to this global L2 norm (0 or Infinity: no clipping); default 1. */
  clipNorm?: number;
  /** Parameter names that get weight decay; default: every name without 'norm', 'bias' or 'embed'. */
  decay?: (name: string) => boolean;
}

/** Clipping of one step, as float32 scalar tensors on the parameters' device (nothing is read to the host). */
export interface ClipResult {
  /** Global L2 norm of the gradients before clipping. */
  gradNorm: Tensor;
  /** The factor the gradients were multiplied by: min(1, clipNorm / (gradNorm + 1e-6)), or 1 without clipping. */
  clipScale: Tensor;
}

/** One update: its clipping and whether it was finite, float32 scalar tensors on the parameters' device. */
export interface StepResult extends ClipResult {
  /** float32 1 when the gradient norm (and the loss flag given to update) was finite, else 0. */
  finite: Tensor;
}

/** What an update checks besides the gradient norm, and whether it skips a non-finite step. */
export interface UpdateOptions {
  /** float32 0/1 scalar on the device: 0 when the step's loss was not finite (the caller's check, e.g. finiteIndicator of the loss). */
  lossFinite?: Tensor;
  /** Leave parameters and moments unchanged when the step is not finite (default false: the flag is only reported). */
  skipNonfinite?: boolean;
}

/**
 * float32 scalar on the device: 1 when every element of every tensor is finite, else 0. x − x is
 * 0 for a finite x and NaN for NaN and ±inf, so Σ (x − x) + 1 is 1 or NaN, and the cast to uint8
 * maps NaN to 0 (CPU and CUDA casts alike). Queues device work only; the result belongs to the
 * enclosing tidy, if any.
 */
export function finiteIndicator(tensors: Tensor[]): Tensor {
  return tidy(() => noGrad(() => {
    const diffs = tensors.map((t) => t.astype('float32').sub(t.astype('float32')).sum().reshape([1]));
    const total = diffs.length === 1 ? diffs[0]! : concat(diffs, 0).sum();
    return total.reshape([]).add(1).astype('uint8').astype('float32');
  }));
}

/** new where `finite` (float32 0/1 scalar) is 1, else old: keeps a non-finite step from reaching a tensor. */
export function selectFinite(finite: Tensor, updated: Tensor, old: Tensor): Tensor {
  return tidy(() => where(finite.astype('uint8'), updated, old));
}

/** Added to the norm in the clip factor's denominator. */
export const CLIP_EPS = 1e-6;

export const defaultDecay = (name: string): boolean => !/(norm|bias|embed)/.test(name);

export class AdamW {
  readonly options: Required<AdamWOptions>;
  step = 0;
  private readonly state = new Map<string, { m: Tensor; v: Tensor }>();

  constructor(readonly module: Module, options: AdamWOptions = {}) {
    const o: Required<AdamWOptions> = {
      lr: options.lr ?? 1e-4, betas: options.betas ?? [0.9, 0.95], eps: options.eps ?? 1e-5,
      weightDecay: options.weightDecay ?? 0.1, clipNorm: options.clipNorm ?? 1, decay: options.decay ?? defaultDecay,
    };
    if (!(o.lr >= 0) || !(o.eps > 0) || !(o.weightDecay >= 0) || !(o.clipNorm >= 0) || o.betas.some((b) => !(b >= 0 && b < 1))) {
      throw new MomaError('ERR_ARG', 'AdamW: need lr >= 0, eps > 0, weightDecay >= 0, clipNorm >= 0 and betas in [0, 1)');
    }
    this.options = o;
  }

  /** Moments by parameter name (for checkpoints). */
  stateDict(): Map<string, { m: Tensor; v: Tensor }> {
    return this.state;
  }

  private last: StepResult | null = null;

  /** Whether clipNorm asks for clipping (0 and Infinity do not). */
  get clips(): boolean {
    return this.options.clipNorm > 0 && Number.isFinite(this.options.clipNorm);
  }

  /** Global L2 norm of the gradients, a float32 scalar tensor on the device (0 without gradients); the caller owns it. */
  gradNorm(): Tensor {
    return untrack(tidy(() => noGrad(() => {
      const grads = this.module.parameters().filter((p) => p.grad !== null).map((p) => p.grad as Tensor);
      if (grads.length === 0) return zeros([], { device: this.device() });
      const parts = grads.map((g) => g.square().sum());
      const squares = parts.length === 1 ? parts[0]! : concat(parts.map((t) => t.reshape([1])), 0).sum();
      return squares.sqrt();
    })));
  }

  /**
   * Clips the gradients by their global norm on the device (like torch's clip_grad_norm_): every
   * gradient becomes grad · min(1, clipNorm / (norm + 1e-6)) (left as it is without clipping).
   * Returns the norm before clipping and the factor; the caller owns both.
   */
  clipGradients(): ClipResult {
    const gradNorm = this.gradNorm();
    const clipScale = untrack(noGrad(() => (this.clips
      ? tidy(() => full([], this.options.clipNorm, { device: gradNorm.device }).div(gradNorm.add(CLIP_EPS)).minimum(1))
      : full([], 1, { device: gradNorm.device }))));
    if (this.clips) {
      noGrad(() => {
        for (const p of this.module.parameters()) {
          if (p.grad === null) continue;
          const scaled = untrack(p.grad.mul(clipScale));
          p.grad.dispose();
          p.grad = scaled;
        }
      });
    }
    return { gradNorm, clipScale };
  }

  /**
   * One update of every parameter that has a gradient, at learning rate `lr` (default
   * options.lr): clips the gradients (clipGradients) and applies the fused step. Queues device
   * work only and returns at once. The result belongs to the optimizer and stays valid until the
   * next update or dispose() (clone it to keep it longer).
   */
  update(lr = this.options.lr, options: UpdateOptions = {}): StepResult {
    const clipped = this.clipGradients();
    const result: StepResult = { ...clipped, finite: stepFinite(clipped.gradNorm, options.lossFinite) };
    const guard = options.skipNonfinite === true;
    this.step++;
    noGrad(() => {
      for (const [name, p] of this.module.namedParameters()) {
        if (p.grad === null) continue;
        let s = this.state.get(name);
        if (s === undefined) {
          s = { m: zeros(p.shape, { device: p.device }), v: zeros(p.shape, { device: p.device }) };
          this.state.set(name, s);
        }
        const out = adamwStep({ param: p, grad: p.grad, expAvg: s.m, expAvgSq: s.v }, {
          lr, beta1: this.options.betas[0], beta2: this.options.betas[1], eps: this.options.eps,
          weightDecay: this.options.decay(name) ? this.options.weightDecay : 0, step: this.step,
        });
        const kept = guard ? {
          param: untrack(selectFinite(result.finite, out.param, p)), m: untrack(selectFinite(result.finite, out.expAvg, s.m)), v: untrack(selectFinite(result.finite, out.expAvgSq, s.v)),
        } : null;
        if (kept !== null) for (const t of [out.param, out.expAvg, out.expAvgSq]) t.dispose();
        s.m.dispose();
        s.v.dispose();
        this.state.set(name, { m: kept?.m ?? out.expAvg, v: kept?.v ?? out.expAvgSq });
        this.module.setParameter(name, kept?.param ?? out.param);
      }
    });
    this.disposeLast();
    this.last = result;
    return result;
  }

  private device(): string {
    return this.module.parameters()[0]?.device ?? 'cpu';
  }

  private disposeLast(): void {
    if (this.last === null) return;
    this.last.gradNorm.dispose();
    this.last.clipScale.dispose();
    this.last.finite.dispose();
    this.last = null;
  }

  /** Drops every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.module.parameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  dispose(): void {
    this.disposeLast();
    for (const s of this.state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    this.state.clear();
  }

  /** `using` support: the same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The step's finite flag (float32 0/1): the gradient norm's, times the loss flag when given; a new tensor. */
export function stepFinite(gradNorm: Tensor, lossFinite: Tensor | undefined): Tensor {
  return untrack(tidy(() => {
    const normFinite = finiteIndicator([gradNorm]);
    return lossFinite === undefined ? normFinite : noGrad(() => normFinite.mul(lossFinite));
  }));
}

/** Learning rate at `step` (0-based): linear warm-up, then linear decay or cosine to `floor`·peak. */
export function learningRate(step: number, s: { peak: number; warmup: number; total: number; floor?: number; shape?: 'linear' | 'cosine' }): number {
  const floor = (s.floor ?? 0.01) * s.peak;
  if (s.warmup > 0 && step < s.warmup) return (s.peak * (step + 1)) / s.warmup;
  const span = Math.max(1, s.total - s.warmup);
  const progress = Math.min(1, Math.max(0, (step - s.warmup) / span));
  if (s.shape === 'cosine') return floor + (s.peak - floor) * 0.5 * (1 + Math.cos(Math.PI * progress));
  return s.peak + (floor - s.peak) * progress;
}
