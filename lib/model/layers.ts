/**
 * The decoder's layers (SPEC.md §1–2) as autograd modules: Linear (PyTorch layout [out, in], no
 * bias), Embedding, RMSNorm, causal multi-head attention with per-head LayerNorm QK-norm and RoPE,
 * the dense SwiGLU FFN, the MoE / MoMa FFN (lib/moe MoMaFFN), and the decoder block with swin
 * (default) or pre norm placement.
 */
import * as F from '../autograd/functions';
import { record } from '../autograd/tape';
import { full, randn } from '../creation';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { MoMaFFN, MoMaFFNConfig } from '../moe/moma_ffn';
import { modSelect, RoutingStats, routingStats, segmentStarts } from '../moe/ops';
import { keep } from '../autograd/scope';
import { Module } from '../nn/module';

export interface InitOptions {
  device: string;
  generator: Generator;
  std: number;
}

export class Linear extends Module {
  constructor(readonly inFeatures: number, readonly outFeatures: number, init: InitOptions) {
    super();
    this.addParameter('weight', randn([outFeatures, inFeatures], { device: init.device, std: init.std, generator: init.generator }));
  }

  /** x [N, in] -> [N, out] in x's dtype (a bf16 x multiplies a bf16 copy of the float32 weight). */
  forward(x: Tensor): Tensor {
    return F.matmul(x, F.cast(this.param('weight'), x.dtype === 'bfloat16' ? 'bfloat16' : 'float32'), { transB: true });
  }
}

export class Embedding extends Module {
  constructor(readonly numEmbeddings: number, readonly dim: number, init: InitOptions) {
    super();
    this.addParameter('weight', randn([numEmbeddings, dim], { device: init.device, std: init.std, generator: init.generator }));
  }

  forward(ids: Tensor): Tensor {
    return F.embedding(ids, this.param('weight'));
  }
}

export class RMSNorm extends Module {
  constructor(readonly dim: number, device: string, readonly eps = 1e-5) {
    super();
    this.addParameter('weight', full([dim], 1, { device }));
  }

  forward(x: Tensor): Tensor {
    return F.rmsNorm(x, this.param('weight'), this.eps);
  }
}

/** Per-head LayerNorm over the head dimension (QK-norm): weight and bias [heads, headDim]. */
export class HeadNorm extends Module {
  constructor(heads: number, headDim: number, device: string, readonly eps = 1e-5) {
    super();
    this.addParameter('weight', full([heads, headDim], 1, { device }));
    this.addParameter('bias', full([heads, headDim], 0, { device }));
  }

  forward(x: Tensor): Tensor {
    return F.layerNorm(x, this.param('weight'), this.param('bias'), this.eps);
  }
}

/** Rows' attention context: positions inside their sequence and segment starts (packed documents). */
export interface AttentionContext {
  positions: Tensor;
  segStart: Tensor;
}

export class Attention extends Module {
  readonly headDim: number;
  private readonly wq: Linear;
  private readonly wk: Linear;
  private readonly wv: Linear;
  private readonly wo: Linear;
  private readonly qNorm: HeadNorm;
  private readonly kNorm: HeadNorm;

  constructor(readonly dModel: number, readonly heads: number, init: InitOptions, readonly ropeTheta = 10000) {
    super();
    this.headDim = dModel / heads;
    this.wq = this.addModule('wq', new Linear(dModel, dModel, init));
    this.wk = this.addModule('wk', new Linear(dModel, dModel, init));
    this.wv = this.addModule('wv', new Linear(dModel, dModel, init));
    this.wo = this.addModule('wo', new Linear(dModel, dModel, init));
    this.qNorm = this.addModule('q_norm', new HeadNorm(heads, this.headDim, init.device));
    this.kNorm = this.addModule('k_norm', new HeadNorm(heads, this.headDim, init.device));
  }

  forward(x: Tensor, ctx: AttentionContext): Tensor {
    const T = x.shape[0] as number;
    const split = (t: Tensor): Tensor => F.reshape(t, [T, this.heads, this.headDim]);
    const q = F.rope(this.qNorm.forward(split(this.wq.forward(x))), ctx.positions, this.ropeTheta);
    const k = F.rope(this.kNorm.forward(split(this.wk.forward(x))), ctx.positions, this.ropeTheta);
    const v = split(this.wv.forward(x));
    const o = F.attention(q, k, v, ctx.segStart);
    return this.wo.forward(F.reshape(o, [T, this.dModel]));
  }
}

export class SwiGLU extends Module {
  private readonly w1: Linear;
  private readonly w3: Linear;
  private readonly w2: Linear;

  constructor(dModel: number, dFF: number, init: InitOptions) {
    super();
    this.w1 = this.addModule('w1', new Linear(dModel, dFF, init));
    this.w3 = this.addModule('w3', new Linear(dModel, dFF, init));
    this.w2 = this.addModule('w2', new Linear(dFF, dModel, init));
  }

  forward(x: Tensor): Tensor {
    return this.w2.forward(F.swiglu(this.w1.forward(x), this.w3.forward(x)));
  }
}

/** The MoE / MoMa FFN as an autograd module: MoMaFFN's explicit forward/backward on the tape. */
export class MoEFeedForward extends Module {
  readonly ffn: MoMaFFN;

  constructor(config: MoMaFFNConfig) {
    super();
    this.ffn = new MoMaFFN(config);
    for (const [name, t] of this.ffn.parameters()) this.addParameter(name, t);
  }

  protected override replaced(name: string, tensor: Tensor): void {
    this.ffn.adopt(name as 'w1' | 'w2' | 'w3' | 'router', tensor);
  }

  /** Routing statistics of the last forward when `collectStats` is on (device tensors, kept across steps). */
  lastStats: RoutingStats | null = null;
  collectStats = false;

  forward(x: Tensor, modality: Tensor, options: { training?: boolean; generator?: Generator } = {}): Tensor {
    const { y, ctx } = this.ffn.forward(x, modality, options);
    if (this.collectStats) {
      this.lastStats?.dispose();
      this.lastStats = routingStats(ctx.partition, ctx.routing, this.ffn.layout);
      keep(this.lastStats.expertStats);
      keep(this.lastStats.groupStats);
    }
    const params = ['w1', 'w2', 'w3', 'router'].map((n) => this.param(n));
    return record(y, [x, ...params], (g) => {
      const { dx, grads } = this.ffn.backward(ctx, g);
      return [dx, grads.w1, grads.w2, grads.w3, grads.router];
    });
  }

  override dispose(): void {
    this.lastStats?.dispose();
    this.lastStats = null;
    super.dispose();
  }
}

export type NormPlacement = 'swin' | 'pre';

/** What a block needs besides its input rows. */
export interface BlockContext extends AttentionContext {
  modality: Tensor;
  training: boolean;
  generator?: Generator;
  /** Non-padding rows (MoD capacity). */
  validRows: number;
}

export class DecoderBlock extends Module {
  private readonly attn: Attention;
  private readonly attnNorm: RMSNorm;
  private readonly ffnNorm: RMSNorm;
  private readonly ffn: SwiGLU | MoEFeedForward;

  constructor(dModel: number, heads: number, ffn: SwiGLU | MoEFeedForward, init: InitOptions, readonly norm: NormPlacement, ropeTheta: number) {
    super();
    this.attn = this.addModule('attn', new Attention(dModel, heads, init, ropeTheta));
    this.attnNorm = this.addModule('attn_norm', new RMSNorm(dModel, init.device));
    this.ffn = this.addModule('ffn', ffn);
    this.ffnNorm = this.addModule('ffn_norm', new RMSNorm(dModel, init.device));
  }

  forward(x: Tensor, ctx: BlockContext): Tensor {
    const ffn = (v: Tensor): Tensor =>
      this.ffn instanceof MoEFeedForward ? this.ffn.forward(v, ctx.modality, { training: ctx.training, generator: ctx.generator }) : this.ffn.forward(v);
    if (this.norm === 'pre') {
      const h = F.add(x, this.attn.forward(this.attnNorm.forward(x), ctx));
      return F.add(h, ffn(this.ffnNorm.forward(h)));
    }
    const h = F.add(x, this.attnNorm.forward(this.attn.forward(x, ctx)));
    return F.add(h, this.ffnNorm.forward(ffn(h)));
  }
}

/**
 * Mixture-of-depths (SPEC §3, staged before the modality split): a router ĝ = sigmoid(x·ŵ) picks
 * the k = ceil(c_d · T_valid) non-padding rows with the largest ĝ in the micro-batch; the block
 * runs on those rows only (attention among them within their sequence and document, causal by
 * original position, RoPE at original positions; the FFN routes among them), and row t becomes
 * x_t + ĝ_t (block(x)_t − x_t) when selected, x_t otherwise.
 */
export class MoDBlock extends Module {
  private readonly router: Linear;
  private readonly block: DecoderBlock;

  constructor(block: DecoderBlock, dModel: number, readonly capacity: number, init: InitOptions) {
    super();
    this.router = this.addModule('mod_router', new Linear(dModel, 1, init));
    this.block = this.addModule('block', block);
  }

  /** Rows the block processes for a batch with `validRows` non-padding rows. */
  selectedRows(validRows: number): number {
    return Math.min(validRows, Math.ceil(this.capacity * validRows));
  }

  forward(x: Tensor, ctx: BlockContext): Tensor {
    const T = x.shape[0] as number;
    const gate = F.sigmoid(F.reshape(this.router.forward(x), [T]));
    const k = this.selectedRows(ctx.validRows);
    if (k === 0) return x;
    const rows = modSelect(gate.dtype === 'float32' ? gate : gate.astype('float32'), ctx.modality, k);
    const xs = F.gatherRows(x, rows);
    const sub: BlockContext = {
      ...ctx,
      positions: ctx.positions.indexSelect(0, rows),
      segStart: segmentStarts(ctx.segStart.indexSelect(0, rows)),
      modality: ctx.modality.indexSelect(0, rows),
      validRows: k,
    };
    const ys = this.block.forward(xs, sub);
    const gs = F.reshape(F.gatherRows(F.reshape(gate, [T, 1]), rows), [k]);
    return F.scatterAddRows(x, rows, F.mulRows(F.sub(ys, xs), gs));
  }
}
