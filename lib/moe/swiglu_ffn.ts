/**
 * The dense SwiGLU FFN of SPEC.md §2, FFN(v) = (SiLU(v·W1) ⊙ (v·W3))·W2, for every row: the
 * "dense" baseline that MoMaFFN is compared with at equal active FLOPs. Explicit forward/backward
 * like MoMaFFN. Parameters w1, w3 [dModel, dFF], w2 [dFF, dModel].
 */
import { MomaError } from '../errors';
import { DType } from '../dtype';
import { randn } from '../creation';
import { getDefaultDevice } from '../device';
import { matmul } from '../ops';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { swiglu, swigluBackward } from './ops';

export interface SwiGLUFFNConfig {
  dModel: number;
  dFF: number;
  device?: string;
  dtype?: 'float32' | 'bfloat16';
  seed?: number;
  initStd?: number;
}

export interface SwiGLUFFNContext {
  dispose(): void;
}

interface Saved extends SwiGLUFFNContext {
  x: Tensor;
  h1: Tensor;
  h3: Tensor;
  a: Tensor;
}

type Params = { w1: Tensor; w2: Tensor; w3: Tensor };

export class SwiGLUFFN {
  readonly dModel: number;
  readonly dFF: number;
  private params: Params;

  constructor(config: SwiGLUFFNConfig) {
    for (const key of ['dModel', 'dFF'] as const) {
      const v = config[key];
      if (!Number.isInteger(v) || v < 1) throw new MomaError('ERR_ARG', `SwiGLUFFN: ${key} must be an integer >= 1, got ${String(v)}`);
    }
    this.dModel = config.dModel;
    this.dFF = config.dFF;
    const dtype: DType = config.dtype ?? 'float32';
    const generator = new Generator(config.seed ?? 0);
    const opts = { dtype, device: config.device ?? getDefaultDevice(), std: config.initStd ?? 0.02, generator };
    this.params = {
      w1: randn([this.dModel, this.dFF], opts),
      w3: randn([this.dModel, this.dFF], opts),
      w2: randn([this.dFF, this.dModel], opts),
    };
  }

  parameters(): Map<string, Tensor> {
    return new Map(Object.entries(this.params));
  }

  forward(x: Tensor): { y: Tensor; ctx: SwiGLUFFNContext } {
    if (!(x instanceof Tensor) || x.ndim !== 2 || x.shape[1] !== this.dModel) {
      throw new MomaError('ERR_SHAPE', `SwiGLUFFN.forward: x must be [T, ${this.dModel}]`);
    }
    const h1 = matmul(x, this.params.w1);
    const h3 = matmul(x, this.params.w3);
    const a = swiglu(h1, h3);
    const y = matmul(a, this.params.w2);
    const ctx: Saved = {
      x, h1, h3, a,
      dispose(): void {
        for (const t of [h1, h3, a]) t.dispose();
      },
    };
    return { y, ctx };
  }

  backward(ctx: SwiGLUFFNContext, dy: Tensor): { dx: Tensor; grads: Params } {
    const saved = ctx as Saved;
    if (saved.h1 === undefined) throw new MomaError('ERR_ARG', 'SwiGLUFFN.backward: ctx must come from forward()');
    const { w1, w2, w3 } = this.params;
    const dw2 = matmul(saved.a, dy, { transA: true });
    const da = matmul(dy, w2, { transB: true });
    const { dh1, dh3 } = swigluBackward(saved.h1, saved.h3, da);
    da.dispose();
    const dw1 = matmul(saved.x, dh1, { transA: true });
    const dw3 = matmul(saved.x, dh3, { transA: true });
    const dx1 = matmul(dh1, w1, { transB: true });
    const dx3 = matmul(dh3, w3, { transB: true });
    dh1.dispose();
    dh3.dispose();
    const dx = dx1.add(dx3);
    dx1.dispose();
    dx3.dispose();
    return { dx, grads: { w1: dw1, w2: dw2, w3: dw3 } };
  }

  dispose(): void {
    for (const t of Object.values(this.params)) t.dispose();
  }
}
