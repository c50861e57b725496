/**
 * AdamW over a Module's parameters with the fused native step (lib/nn/ops adamwStep): fp32
 * parameters and moments, decoupled weight decay (not on norms, biases and embeddings unless
 * asked), gradient clipping by global norm. Defaults follow the paper's recipe (SPEC §7):
 * betas (0.9, 0.95), eps 1e-5, clip 1.0.
 */
import { tidy } from '../autograd/scope';
import { noGrad } from '../autograd/tape';
import { concat } from '../ops';
import { zeros } from '../creation';
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

export interface StepResult {
  /** Global L2 norm of the gradients before clipping. */
  gradNorm: number;
  /** The factor the gradients were multiplied by (1 when not clipped). */
  clipScale: number;
}

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

  /** Global gradient norm (reads one number from the device). */
  async gradNorm(): Promise<number> {
    const squares = tidy(() => noGrad(() => {
      const parts = this.module.parameters().filter((p) => p.grad !== null).map((p) => (p.grad as Tensor).square().sum());
      if (parts.length === 0) return null;
      return parts.length === 1 ? parts[0]! : concat(parts.map((t) => t.reshape([1])), 0).sum();
    }));
    if (squares === null) return 0;
    const value = await squares.item();
    squares.dispose();
    return Math.sqrt(value);
  }

  /** One update of every parameter that has a gradient, at learning rate `lr` (default options.lr). */
  async update(lr = this.options.lr): Promise<StepResult> {
    const gradNorm = await this.gradNorm();
    const { clipNorm } = this.options;
    const clipScale = clipNorm > 0 && Number.isFinite(clipNorm) && gradNorm > clipNorm ? clipNorm / (gradNorm + 1e-6) : 1;
    this.step++;
    noGrad(() => {
      for (const [name, p] of this.module.namedParameters()) {
        if (p.grad === null) continue;
        let s = this.state.get(name);
        if (s === undefined) {
          s = { m: zeros(p.shape as number[], { device: p.device }), v: zeros(p.shape as number[], { device: p.device }) };
          this.state.set(name, s);
        }
        const out = adamwStep(p, p.grad, s.m, s.v, {
          lr, beta1: this.options.betas[0], beta2: this.options.betas[1], eps: this.options.eps,
          weightDecay: this.options.decay(name) ? this.options.weightDecay : 0, gradScale: clipScale, step: this.step,
        });
        s.m.dispose();
        s.v.dispose();
        this.state.set(name, { m: out.expAvg, v: out.expAvgSq });
        this.module.setParameter(name, out.param);
      }
    });
    return { gradNorm, clipScale };
  }

  /** Drops every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.module.parameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  dispose(): void {
    for (const s of this.state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    this.state.clear();
  }
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
