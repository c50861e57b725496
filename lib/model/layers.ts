/**
 * The decoder's layers (docs/TRAINING.md, "The model"; MoE: docs/MOE.md) as autograd modules:
 * Linear (PyTorch layout [out, in], no bias), Embedding, RMSNorm, causal multi-head attention with
 * per-head LayerNorm QK-norm and RoPE, the dense SwiGLU FFN (SwiGLUFFN), the MoE / MoMa FFN
 * (MoEFeedForward over lib/moe MoMaFFN), and the decoder block with swin (default) or pre norm
 * placement.
 *
 * Routing modes: by default the MoE FFN and MoD blocks route by batch top-k (training mode);
 * with `ctx.causal` the MoE FFN routes by the auxiliary routers' scores (docs/INFERENCE.md) and MoD
 * blocks run on rows chosen by the caller (lib/model/transformer.ts decides them from â > 0.5).
 * `ctx.observer` sees each training-mode decision (aux-router training and evaluation). Blocks
 * also run incrementally over a KV cache (forwardCached: generation).
 */
import * as F from '../autograd/functions';
import { record } from '../autograd/tape';
import { full, randn } from '../creation';
import type { DeviceInput } from '../device';
import { modRows } from '../formulas';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { MoMaFFN, MoMaFFNConfig } from '../moe/moma_ffn';
import { modSelect, Partition, Routing, RoutingStats, routingStats, segmentStarts } from '../moe/ops';
import { sliceLocalExperts } from '../moe/expert_parallel';
import { ExpertPlacement, GatherDispatch } from '../moe/gather_dispatch';
import { MomaError } from '../errors';
import { keep } from '../autograd/scope';
import { Module } from '../nn/module';
import { requireFields, requireOptions } from '../options';
import { cachedAttention, LayerCache } from './kv_cache';

export interface InitOptions {
  device: DeviceInput;
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
  constructor(readonly dim: number, device: DeviceInput, readonly eps = 1e-5) {
    super();
    this.addParameter('weight', full([dim], 1, { device }));
  }

  forward(x: Tensor): Tensor {
    return F.rmsNorm(x, this.param('weight'), { eps: this.eps });
  }
}

/** Where a HeadNorm's parameters live and its epsilon. */
export interface HeadNormOptions {
  /** Device of the weight (ones) and bias (zeros). */
  device: DeviceInput;
  /** Added to the variance before the square root (default 1e-5). */
  eps?: number;
}

/** Per-head LayerNorm over the head dimension (QK-norm): weight and bias [heads, headDim]. */
export class HeadNorm extends Module {
  readonly eps: number;

  constructor(heads: number, headDim: number, options: HeadNormOptions) {
    super();
    const { device, eps = 1e-5 } = requireOptions(options, 'HeadNorm', ['device']);
    this.eps = eps;
    this.addParameter('weight', full([heads, headDim], 1, { device }));
    this.addParameter('bias', full([heads, headDim], 0, { device }));
  }

  forward(x: Tensor): Tensor {
    return F.layerNorm(x, { weight: this.param('weight'), bias: this.param('bias') }, { eps: this.eps });
  }
}

/** Rows' attention context: positions inside their sequence and segment starts (packed documents). */
export interface AttentionContext {
  positions: Tensor;
  segStart: Tensor;
}

/** The shape of an attention layer. */
export interface AttentionLayerOptions {
  /** Model width d (the input and output rows). */
  dModel: number;
  /** Number of heads; the head size is dModel / heads. */
  heads: number;
  /** RoPE base θ (default 10,000). */
  ropeTheta?: number;
}

export class Attention extends Module {
  readonly dModel: number;
  readonly heads: number;
  readonly ropeTheta: number;
  readonly headDim: number;
  private readonly wq: Linear;
  private readonly wk: Linear;
  private readonly wv: Linear;
  private readonly wo: Linear;
  private readonly qNorm: HeadNorm;
  private readonly kNorm: HeadNorm;

  /** Causal multi-head attention with QK-norm and RoPE; `init` draws the q, k, v and o projections. */
  constructor(options: AttentionLayerOptions, init: InitOptions) {
    super();
    const { dModel, heads, ropeTheta = 10000 } = requireOptions(options, 'Attention', ['dModel', 'heads']);
    this.dModel = dModel;
    this.heads = heads;
    this.ropeTheta = ropeTheta;
    this.headDim = dModel / heads;
    this.wq = this.addModule('wq', new Linear(dModel, dModel, init));
    this.wk = this.addModule('wk', new Linear(dModel, dModel, init));
    this.wv = this.addModule('wv', new Linear(dModel, dModel, init));
    this.wo = this.addModule('wo', new Linear(dModel, dModel, init));
    this.qNorm = this.addModule('q_norm', new HeadNorm(heads, this.headDim, { device: init.device }));
    this.kNorm = this.addModule('k_norm', new HeadNorm(heads, this.headDim, { device: init.device }));
  }

  forward(x: Tensor, ctx: AttentionContext): Tensor {
    const T = x.size(0);
    const split = (t: Tensor): Tensor => F.reshape(t, [T, this.heads, this.headDim]);
    const q = F.rope(this.qNorm.forward(split(this.wq.forward(x))), ctx.positions, this.ropeTheta);
    const k = F.rope(this.kNorm.forward(split(this.wk.forward(x))), ctx.positions, this.ropeTheta);
    const v = split(this.wv.forward(x));
    const o = F.attention(q, k, v, { segStart: ctx.segStart });
    return this.wo.forward(F.reshape(o, [T, this.dModel]));
  }

  /**
   * Rows x [n, d] that follow the rows already in `cache` (one sequence): their keys and values
   * are appended to the cache and each row attends to the cache up to itself (no gradient).
   */
  forwardCached(x: Tensor, positions: Tensor, cache: LayerCache): Tensor {
    const n = x.size(0);
    const split = (t: Tensor): Tensor => t.reshape([n, this.heads, this.headDim]);
    const q = F.rope(this.qNorm.forward(split(this.wq.forward(x))), positions, this.ropeTheta);
    const k = F.rope(this.kNorm.forward(split(this.wk.forward(x))), positions, this.ropeTheta);
    const v = split(this.wv.forward(x));
    cache.append(k, v);
    const o = cachedAttention(q, cache);
    return this.wo.forward(F.cast(o.reshape([n, this.dModel]), x.dtype === 'bfloat16' ? 'bfloat16' : 'float32'));
  }
}

/**
 * The dense SwiGLU FFN, FFN(v) = (SiLU(v·W1ᵀ) ⊙ (v·W3ᵀ))·W2ᵀ, on every row: what a
 * `kind: 'dense'` decoder trains and what the benchmarks time against the MoE layers. Linear
 * children w1, w3 [dFF, dModel] and w2 [dModel, dFF] (PyTorch layout); autograd forward.
 */
export class SwiGLUFFN extends Module {
  private readonly w1: Linear;
  private readonly w3: Linear;
  private readonly w2: Linear;

  constructor(readonly dModel: number, readonly dFF: number, init: InitOptions) {
    super();
    this.w1 = this.addModule('w1', new Linear(dModel, dFF, init));
    this.w3 = this.addModule('w3', new Linear(dModel, dFF, init));
    this.w2 = this.addModule('w2', new Linear(dFF, dModel, init));
  }

  forward(x: Tensor): Tensor {
    return this.w2.forward(F.swiglu(this.w1.forward(x), this.w3.forward(x)));
  }
}

/** The decoder's name for the dense FFN (the same class). */
export { SwiGLUFFN as SwiGLU };

/**
 * The MoE / MoMa FFN as an autograd module: MoMaFFN's explicit forward/backward recorded on the
 * tape as one node. The module owns the parameters (w1, w3, w2, router: the checkpoint names);
 * `ffn` holds none and reads them from here at every forward.
 *
 * Expert parallel (shardExperts, lib/moe/gather_dispatch.ts): the module then holds only its
 * rank's experts of w1, w3, w2 ([E_local, …]) and runs the all-gather dispatch over its
 * expert-parallel group instead, recorded the same way. A training-mode forward takes this rank's
 * own rows (the group's micro-batch is the ranks' rows in rank order); any other forward
 * (evaluation, no gradient) takes rows every rank of the group passes alike.
 */
export class MoEFeedForward extends Module {
  readonly ffn: MoMaFFN;
  private dispatch: GatherDispatch | null = null;

  constructor(config: MoMaFFNConfig) {
    super();
    this.ffn = new MoMaFFN(config, { register: (name, t) => { this.addParameter(name, t); }, read: (name) => this.param(name) });
  }

  /** Routing statistics of the last forward when `collectStats` is on (device tensors, kept across steps). */
  lastStats: RoutingStats | null = null;
  collectStats = false;
  /** The module path of this FFN in its model ('layers.3.ffn'): names its auxiliary routers. */
  site = 'ffn';

  /** This rank's place in the expert-parallel group, or null when the layer holds every expert. */
  get expertPlacement(): ExpertPlacement | null {
    return this.dispatch?.placement ?? null;
  }

  /**
   * Keeps only the experts of rank `placement.rank` of an expert-parallel group of
   * `placement.size` ranks (w1, w3, w2 become their slices; every group's expert count must be
   * divisible by the size) and routes through the group from then on. Once per layer.
   */
  shardExperts(placement: ExpertPlacement): void {
    if (this.dispatch !== null) throw new MomaError('ERR_ARG', `MoEFeedForward.shardExperts: ${this.site} is already expert parallel`);
    const c = this.ffn.config;
    if (c.routing !== 'expert-choice' && c.routing !== 'token-choice') throw new MomaError('ERR_ARG', `MoEFeedForward.shardExperts: routing ${String(c.routing)} cannot be expert parallel`);
    const dispatch = new GatherDispatch({ layout: this.ffn.layout, router: c.router, gumbel: c.gumbel, routing: c.routing, capacityFactor: c.capacityFactor, topK: c.topK }, placement);
    for (const name of ['w1', 'w3', 'w2']) {
      const full = this.param(name);
      this.addParameter(name, sliceLocalExperts(full, this.ffn.layout, placement.rank, placement.size));
      full.dispose();
    }
    this.dispatch = dispatch;
  }

  forward(x: Tensor, modality: Tensor, options: { training?: boolean; generator?: Generator; causal?: CausalRouting; observer?: RoutingObserver } = {}): Tensor {
    if (this.dispatch !== null) return this.forwardSharded(x, modality, options);
    const select = options.causal?.expertSelect(this.site, x);
    const { y, ctx } = this.ffn.forward(x, modality, { training: options.training, generator: options.generator, select });
    select?.dispose();
    if (options.observer !== undefined && select === undefined) options.observer.experts(this.site, x, ctx.partition.rowGroup, ctx.routing.rowSlots);
    this.keepStats(ctx.partition, ctx.routing);
    const params = ['w1', 'w2', 'w3', 'router'].map((n) => this.param(n));
    return record(y, [x, ...params], (g) => {
      const { dx, grads } = this.ffn.backward(ctx, g);
      return [dx, grads.w1, grads.w2, grads.w3, grads.router];
    });
  }

  /** The expert-parallel forward (shardExperts): the all-gather dispatch, recorded as one node. */
  private forwardSharded(x: Tensor, modality: Tensor, options: { training?: boolean; generator?: Generator; causal?: CausalRouting; observer?: RoutingObserver }): Tensor {
    const dispatch = this.dispatch!;
    if (options.causal !== undefined) {
      throw new MomaError('ERR_ARG', `MoEFeedForward: ${this.site} holds only its rank's experts (expert parallel); causal routing needs the whole layer: load the checkpoint in one process`);
    }
    const params = { w1: this.param('w1'), w2: this.param('w2'), w3: this.param('w3'), router: this.param('router') };
    const { y, ctx } = dispatch.forward(x, modality, params, { rows: options.training === true ? 'split' : 'replicated', training: options.training, generator: options.generator });
    options.observer?.experts(this.site, ctx.rows, ctx.partition.rowGroup, ctx.routing.rowSlots);
    this.keepStats(ctx.partition, ctx.routing);
    return record(y, [x, params.w1, params.w2, params.w3, params.router], (g) => {
      const { dx, grads } = dispatch.backward(ctx, g);
      return [dx, grads.w1, grads.w2, grads.w3, grads.router];
    });
  }

  private keepStats(partition: Partition, routing: Routing): void {
    if (!this.collectStats) return;
    this.lastStats?.dispose();
    this.lastStats = routingStats(partition, routing, this.ffn.layout);
    keep(this.lastStats.expertStats);
    keep(this.lastStats.groupStats);
  }

  override dispose(): void {
    this.lastStats?.dispose();
    this.lastStats = null;
    this.dispatch?.dispose();
    super.dispose();
  }
}

export type NormPlacement = 'swin' | 'pre';

/** Routing by the auxiliary routers (causal mode, docs/INFERENCE.md) instead of batch top-k. */
export interface CausalRouting {
  /** a [T, E] float32: expert e of a routed group takes row t iff a[t, e] > 0.5. */
  expertSelect(site: string, v: Tensor): Tensor;
  /** â [T] float32: the MoD block at `site` runs on row t iff â[t] > 0.5. */
  depthSelect(site: string, x: Tensor): Tensor;
}

/** Sees the training-mode routing decisions with the rows they were made on (no gradient needed). */
export interface RoutingObserver {
  /** MoE FFN input v [T, d], row groups [T] and the routing's rowSlots [T, W] (≥ 0 where taken). */
  experts(site: string, v: Tensor, rowGroup: Tensor, rowSlots: Tensor): void;
  /** MoD block input x [T, d] and the selected rows (int32 [k], ascending). */
  depth(site: string, x: Tensor, rows: Tensor): void;
}

/** What a block needs besides its input rows. */
export interface BlockContext extends AttentionContext {
  modality: Tensor;
  training: boolean;
  generator?: Generator;
  /** Non-padding rows (MoD capacity). */
  validRows: number;
  causal?: CausalRouting;
  observer?: RoutingObserver;
}

/** What a block needs to run rows incrementally over its KV cache (one sequence, causal routing). */
export interface CachedContext {
  positions: Tensor;
  modality: Tensor;
  causal: CausalRouting;
}

/** What a decoder block is made of (all required). */
export interface DecoderBlockOptions {
  /** Model width d. */
  dModel: number;
  /** Attention heads. */
  heads: number;
  /** The block's FFN, built by the caller (dense SwiGLU or MoE / MoMa); the block owns it from here on. */
  ffn: SwiGLUFFN | MoEFeedForward;
  /** Where the RMSNorms sit: 'swin' (after each sublayer) or 'pre' (before). */
  norm: NormPlacement;
  /** RoPE base θ. */
  ropeTheta: number;
}

export class DecoderBlock extends Module {
  readonly norm: NormPlacement;
  private readonly attn: Attention;
  private readonly attnNorm: RMSNorm;
  private readonly ffnNorm: RMSNorm;
  private readonly ffn: SwiGLUFFN | MoEFeedForward;

  /** Attention and FFN sublayers with residuals and RMSNorms; `init` draws the attention weights. */
  constructor(options: DecoderBlockOptions, init: InitOptions) {
    super();
    const { dModel, heads, ffn, norm, ropeTheta } = requireOptions(options, 'DecoderBlock', ['dModel', 'heads', 'ffn', 'norm', 'ropeTheta']);
    this.norm = norm;
    this.attn = this.addModule('attn', new Attention({ dModel, heads, ropeTheta }, init));
    this.attnNorm = this.addModule('attn_norm', new RMSNorm(dModel, init.device));
    this.ffn = this.addModule('ffn', ffn);
    this.ffnNorm = this.addModule('ffn_norm', new RMSNorm(dModel, init.device));
  }

  forward(x: Tensor, ctx: BlockContext): Tensor {
    return this.run(x, (v) => this.attn.forward(v, ctx), ctx.modality,
      { training: ctx.training, generator: ctx.generator, causal: ctx.causal, observer: ctx.observer });
  }

  /** Rows x [n, d] after those in `cache` (generation; causal routing). */
  forwardCached(x: Tensor, ctx: CachedContext, cache: LayerCache): Tensor {
    return this.run(x, (v) => this.attn.forwardCached(v, ctx.positions, cache), ctx.modality, { causal: ctx.causal });
  }

  private run(x: Tensor, attn: (v: Tensor) => Tensor, modality: Tensor, routing: { training?: boolean; generator?: Generator; causal?: CausalRouting; observer?: RoutingObserver }): Tensor {
    const ffn = (v: Tensor): Tensor => (this.ffn instanceof MoEFeedForward ? this.ffn.forward(v, modality, routing) : this.ffn.forward(v));
    if (this.norm === 'pre') {
      const h = F.add(x, attn(this.attnNorm.forward(x)));
      return F.add(h, ffn(this.ffnNorm.forward(h)));
    }
    const h = F.add(x, this.attnNorm.forward(attn(x)));
    return F.add(h, this.ffnNorm.forward(ffn(h)));
  }
}

/** The router width, capacity and name of a mixture-of-depths block. */
export interface MoDBlockOptions {
  /** Model width d (the router's input). */
  dModel: number;
  /** c_d: the block runs on ceil(c_d · T_valid) rows. */
  capacity: number;
  /** The module path of this block in its model ('layers.0'): names its auxiliary router (default 'mod'). */
  site?: string;
}

/** The rows a MoD block runs on and their gate. */
export interface MoDRows {
  /** ĝ [T] from `gate(x)`: weights the block's change on the selected rows. */
  gate: Tensor;
  /** int32 [k], ascending, k ≥ 1: the selected rows of x. */
  rows: Tensor;
}

/** The rows a MoD block runs on during generation, and the block's KV cache. */
export interface MoDCachedRows extends MoDRows {
  /** The block's cache of the rows before x (the selected rows are appended to it). */
  cache: LayerCache;
}

/**
 * Mixture-of-depths (staged before the modality split; docs/TRAINING.md, "The model"): a router ĝ = sigmoid(x·ŵ) picks
 * the k = ceil(c_d · T_valid) non-padding rows with the largest ĝ in the micro-batch; the block
 * runs on those rows only (attention among them within their sequence and document, causal by
 * original position, RoPE at original positions; the FFN routes among them), and row t becomes
 * x_t + ĝ_t (block(x)_t − x_t) when selected, x_t otherwise.
 */
export class MoDBlock extends Module {
  readonly capacity: number;
  readonly site: string;
  private readonly router: Linear;
  readonly block: DecoderBlock;

  /** Wraps `block` (which it owns from here on) with a router ŵ [1, dModel] drawn by `init`. */
  constructor(block: DecoderBlock, options: MoDBlockOptions, init: InitOptions) {
    super();
    const { dModel, capacity, site = 'mod' } = requireOptions(options, 'MoDBlock', ['dModel', 'capacity']);
    this.capacity = capacity;
    this.site = site;
    this.router = this.addModule('mod_router', new Linear(dModel, 1, init));
    this.block = this.addModule('block', block);
  }

  /** Rows the block processes for a batch with `validRows` non-padding rows. */
  selectedRows(validRows: number): number {
    return modRows(validRows, this.capacity);
  }

  /** ĝ = sigmoid(x·ŵ) [T]. */
  gate(x: Tensor): Tensor {
    return F.sigmoid(F.reshape(this.router.forward(x), [x.size(0)]));
  }

  /** Training mode: the block runs on the ceil(c_d · T_valid) rows with the largest ĝ. */
  forward(x: Tensor, ctx: BlockContext): Tensor {
    const gate = this.gate(x);
    const k = this.selectedRows(ctx.validRows);
    if (k === 0) return x;
    const rows = modSelect(gate.dtype === 'float32' ? gate : gate.astype('float32'), ctx.modality, k);
    ctx.observer?.depth(this.site, x, rows);
    return this.forwardRows(x, { gate, rows }, ctx);
  }

  /** The block on the given rows (int32 [k], ascending, k ≥ 1), weighted by ĝ; other rows pass unchanged. */
  forwardRows(x: Tensor, selected: MoDRows, ctx: BlockContext): Tensor {
    const { gate, rows } = requireFields(selected, { fn: 'MoDBlock.forwardRows', argument: 'selected' }, ['gate', 'rows']);
    const k = rows.size(0);
    const xs = F.gatherRows(x, rows);
    const sub: BlockContext = {
      ...ctx,
      positions: ctx.positions.indexSelect(0, rows),
      segStart: segmentStarts(ctx.segStart.indexSelect(0, rows)),
      modality: ctx.modality.indexSelect(0, rows),
      validRows: k,
    };
    const ys = this.block.forward(xs, sub);
    return this.mix(x, xs, ys, gate, rows);
  }

  /** Generation: the block on the given rows of x (those after `cache`), over its KV cache. */
  forwardCachedRows(x: Tensor, selected: MoDCachedRows, ctx: CachedContext): Tensor {
    const { gate, rows, cache } = requireFields(selected, { fn: 'MoDBlock.forwardCachedRows', argument: 'selected' }, ['gate', 'rows', 'cache']);
    const xs = F.gatherRows(x, rows);
    const sub: CachedContext = { ...ctx, positions: ctx.positions.indexSelect(0, rows), modality: ctx.modality.indexSelect(0, rows) };
    const ys = this.block.forwardCached(xs, sub, cache);
    return this.mix(x, xs, ys, gate, rows);
  }

  /** x_t + ĝ_t (block(x)_t − x_t) on the selected rows. */
  private mix(x: Tensor, xs: Tensor, ys: Tensor, gate: Tensor, rows: Tensor): Tensor {
    const T = x.size(0);
    const gs = F.reshape(F.gatherRows(F.reshape(gate, [T, 1]), rows), [rows.size(0)]);
    return F.scatterAddRows(x, rows, F.mulRows(F.sub(ys, xs), gs));
  }
}
