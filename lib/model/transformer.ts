/**
 * The early-fusion decoder (docs/TRAINING.md, "The model"): token embedding, decoder blocks (dense, moe or moma
 * FFN), final RMSNorm and an untied LM head, with the next-token loss overall and per modality of
 * the target token (and optional z-loss in the training loss).
 *
 * Two routing modes (docs/INFERENCE.md): training mode (`logits`, `loss`: batch top-k, what training
 * optimises) and causal mode (`causalLogits`, `causalLoss`, `decode`: the auxiliary routers decide
 * per row, so a row's output never depends on later rows). Causal mode reads each MoD layer's
 * â to the host to size the block's rows, so those methods are async.
 */
import * as F from '../autograd/functions';
import { noGrad } from '../autograd/tape';
import { tensor } from '../creation';
import { at, describeValue, rejectUnknownKeys } from '../checked';
import { DeviceInput, DeviceName, normalizeDevice } from '../device';
import { requireOptions } from '../options';
import { MomaError } from '../errors';
import { isModLayer } from '../formulas';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { Module } from '../nn/module';
import { tidy } from '../autograd/scope';
import { BlockContext, CachedContext, CausalRouting, DecoderBlock, Embedding, InitOptions, Linear, MoDBlock, MoEFeedForward, NormPlacement, RMSNorm, RoutingObserver, SwiGLUFFN } from './layers';
import { batchRows, BatchRowsOptions } from './batch_rows';
import { KVCache, LayerCache } from './kv_cache';
import type { RoutingSites } from './aux_router';
import type { MoeGroupConfig } from '../moe/moma_ffn';
import type { RouterFn, RoutingMode } from '../moe/ops';

export interface FFNConfig {
  kind: 'dense' | 'moe';
  dFF: number;
  /** kind 'moe': the groups (moma 4t4i, moe 8x, 1t1i … as in MoMaFFN). */
  groups?: MoeGroupConfig[];
  capacityFactor?: number;
  router?: RouterFn;
  gumbel?: boolean;
  routing?: RoutingMode;
  topK?: number;
}

export interface TransformerConfig {
  vocabSize: number;
  dModel: number;
  layers: number;
  heads: number;
  ffn: FFNConfig;
  /** Modality names by id; default ['text', 'image']. */
  modalities?: string[];
  norm?: NormPlacement;
  /**
   * Mixture-of-depths: layers 0, interval, 2·interval, … process ceil(capacity · T_valid) rows
   * (defaults MOD_DEFAULTS, applied by validateConfig).
   */
  mod?: { interval?: number; capacity?: number } | null;
  ropeTheta?: number;
  /**
   * Activation dtype: 'float32' (default) or 'bfloat16' (mixed precision: float32 parameters,
   * optimizer state and gradients; activations and GEMM inputs in bf16).
   */
  computeDtype?: 'float32' | 'bfloat16';
  zLoss?: number;
  initStd?: number;
  seed?: number;
  /** 'cpu' (default), 'cuda' or 'cuda:N'; the resolved config holds the DeviceName. */
  device?: DeviceInput;
}

/** How Transformer.decode reads its token ids. */
export interface DecodeStepOptions {
  /** A token's modality id in [0, modalities) (padding cannot be decoded). */
  modalityOf: (id: number) => number;
  /** The causal routers (AuxRouters) that decide MoE and MoD routing row by row. */
  routing: CausalRouting;
}

/** A micro-batch on the device: T rows (B sequences of S positions, flattened). */
export interface Batch {
  tokens: Tensor;       // int32 [T]
  targets: Tensor;      // int32 [T], -1 where the row does not count in the loss (see makeBatch)
  positions: Tensor;    // int32 [T], index inside the sequence
  segStart: Tensor;     // int32 [T], first row of the row's document (attention mask; t for padding)
  modality: Tensor;     // int32 [T], modality of the input token (-1 padding)
  /** float32 [T] loss weights: overall and per modality of the target (1 / count, 0 elsewhere). */
  weights: Tensor;
  modalityWeights: Tensor[];
  /** Host copies of the row modalities and segment starts (FLOPs accounting reads them). */
  host: { modality: Int32Array; segStart: Int32Array };
  /** Host-side counts: non-padding rows, and valid targets overall and per modality. */
  counts: { rows: number; total: number; perModality: number[] };
}

/** Frees a batch's device tensors. */
export function disposeBatch(batch: Batch): void {
  for (const t of [batch.tokens, batch.targets, batch.positions, batch.segStart, batch.modality, batch.weights, ...batch.modalityWeights]) t.dispose();
}

export interface LossOutput {
  /** The training loss (mean next-token cross-entropy + z-loss), a scalar with a gradient. */
  loss: Tensor;
  /** Per-row cross-entropy (float32 [T], 0 for rows that do not count). */
  nll: Tensor;
  /** Mean loss per modality of the target token (scalars, no gradient). */
  perModality: Tensor[];
}

/** The mixture-of-depths defaults: every second layer routed, a quarter of the rows. */
export const MOD_DEFAULTS: Readonly<ResolvedMoD> = { interval: 2, capacity: 0.25 };

/** A mixture-of-depths setting with its defaults applied (what validateConfig returns). */
export interface ResolvedMoD {
  interval: number;
  capacity: number;
}

export class Transformer extends Module {
  readonly config: Required<Omit<TransformerConfig, 'seed' | 'device' | 'mod'>> & { device: DeviceName; seed: number; mod: ResolvedMoD | null };
  private readonly embed: Embedding;
  private readonly blocks: (DecoderBlock | MoDBlock)[] = [];
  private readonly expertSites: { site: string; ffn: MoEFeedForward }[] = [];
  private readonly finalNorm: RMSNorm;
  private readonly head: Linear;
  /**
   * When set, every forward over the blocks runs block i as `blockRunner(block, i, x, run)`
   * instead of `run.forward(x, false)` (ZeRO-3, lib/train/fsdp.ts: the block's parameters are
   * gathered for the call and the training-mode backward recomputes the block: `run.forward(x,
   * true)` replays it without the routing observer; `run.generator` is the stream it draws from).
   */
  blockRunner: BlockRunner | null = null;

  constructor(config: TransformerConfig) {
    super();
    const c = validateConfig(config);
    this.config = c;
    const init: InitOptions = { device: c.device, generator: new Generator(c.seed), std: c.initStd };
    this.embed = this.addModule('embed', new Embedding(c.vocabSize, c.dModel, init));
    for (let i = 0; i < c.layers; i++) {
      const ffn = c.ffn.kind === 'dense'
        ? new SwiGLUFFN(c.dModel, c.ffn.dFF, init)
        : new MoEFeedForward({
          dModel: c.dModel, dFF: c.ffn.dFF, groups: c.ffn.groups as MoeGroupConfig[], modalities: c.modalities,
          capacityFactor: c.ffn.capacityFactor, router: c.ffn.router, gumbel: c.ffn.gumbel, routing: c.ffn.routing, topK: c.ffn.topK,
          device: c.device, seed: c.seed * 1000 + i + 1, initStd: c.initStd,
        });
      const block = new DecoderBlock({ dModel: c.dModel, heads: c.heads, ffn, norm: c.norm, ropeTheta: c.ropeTheta }, init);
      const routed = c.mod !== null && isModLayer(i, c.mod.interval);
      if (ffn instanceof MoEFeedForward) {
        ffn.site = routed ? `layers.${i}.block.ffn` : `layers.${i}.ffn`;
        this.expertSites.push({ site: ffn.site, ffn });
      }
      this.blocks.push(this.addModule(`layers.${i}`, routed ? new MoDBlock(block, { dModel: c.dModel, capacity: c.mod!.capacity, site: `layers.${i}` }, init) : block));
    }
    this.finalNorm = this.addModule('norm', new RMSNorm(c.dModel, c.device));
    this.head = this.addModule('lm_head', new Linear(c.dModel, c.vocabSize, init));
  }

  /** The routed sites: MoE FFNs with their layouts, and MoD layers (what auxiliary routers serve). */
  routingSites(): RoutingSites {
    return {
      experts: this.expertSites.map(({ site, ffn }) => ({ site, layout: ffn.ffn.layout })),
      depth: this.blocks.filter((b): b is MoDBlock => b instanceof MoDBlock).map((b) => ({ site: b.site })),
    };
  }

  /**
   * Logits [T, vocab] of a batch in training mode (batch top-k routing; Gumbel noise from
   * `generator` when training and configured). `observer` sees every routing decision.
   */
  logits(batch: Batch, options: { training?: boolean; generator?: Generator; observer?: RoutingObserver } = {}): Tensor {
    const ctx: BlockContext = {
      positions: batch.positions, segStart: batch.segStart, modality: batch.modality, training: options.training === true,
      generator: options.generator, validRows: batch.counts.rows, observer: options.observer,
    };
    const replay: BlockContext = { ...ctx, observer: undefined };
    const pass = this.forwardPass(batch.tokens, { layer: (block, _i, x, _rows, replaying) => block.forward(x, replaying === true ? replay : ctx), generator: options.generator });
    const done = pass.next();
    if (done.done !== true) throw new MomaError('ERR_INTERNAL', 'Transformer.logits: a training-mode forward read the host');
    return done.value;
  }

  /** The training loss and the per-modality losses of a batch. */
  loss(batch: Batch, options: { training?: boolean; generator?: Generator; observer?: RoutingObserver } = {}): LossOutput {
    return this.lossOf(this.logits(batch, options), batch);
  }

  /** Logits [T, vocab] in causal mode (no gradient): experts and MoD blocks take the rows the auxiliary routers pick. */
  async causalLogits(batch: Batch, routing: CausalRouting): Promise<Tensor> {
    const ctx: BlockContext = {
      positions: batch.positions, segStart: batch.segStart, modality: batch.modality, training: false,
      validRows: batch.counts.rows, causal: routing,
    };
    return drive(this.forwardPass(batch.tokens, {
      layer: (block, _i, x, rows) => (block instanceof MoDBlock ? block.forwardRows(x, { gate: block.gate(x), rows: rows! }, ctx) : block.forward(x, ctx)),
      causal: { routing, modality: batch.host.modality },
    }));
  }

  /** Loss and per-modality losses in causal mode (no gradient). */
  async causalLoss(batch: Batch, routing: CausalRouting): Promise<LossOutput> {
    const logits = await this.causalLogits(batch, routing);
    const out = step(() => this.lossOf(logits, batch));
    logits.dispose();
    return out;
  }

  /**
   * Generation: runs token ids after those already in `cache` (one sequence, causal mode), appends
   * their keys and values to it, and returns the logits of the last one (float32 [vocab] on the host).
   * A BOS (cache.bosId) after the sequence's first position starts a new document: the
   * cache drops the rows before it, so decoding gives the logits of a full causal-mode forward.
   * `decode(cache, ids, { modalityOf, routing })`: modalityOf(id) gives each id's modality, routing
   * the causal routers (AuxRouters).
   */
  async decode(cache: KVCache, ids: ArrayLike<number>, options: DecodeStepOptions): Promise<Float32Array> {
    const { modalityOf, routing } = requireOptions(options, 'Transformer.decode', ['modalityOf', 'routing']);
    const n = ids.length;
    if (!(cache instanceof KVCache) || cache.layers.length !== this.blocks.length) {
      throw new MomaError('ERR_ARG', `Transformer.decode: cache must be a KVCache of ${this.blocks.length} layers`);
    }
    if (n === 0) throw new MomaError('ERR_ARG', 'Transformer.decode: no token ids');
    const modality = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const id = ids[i];
      if (id === undefined || !Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) {
        throw new MomaError('ERR_RANGE', `Transformer.decode: token ${i} is ${String(id)}, not an id in [0, ${this.config.vocabSize})`);
      }
      const m = modalityOf(id);
      if (!Number.isInteger(m) || m < 0 || m >= this.config.modalities.length) {
        throw new MomaError('ERR_RANGE', `Transformer.decode: token ${i} (id ${id}) has modality ${String(m)}; padding cannot be decoded`);
      }
      modality[i] = m;
    }
    // runs of one document each: a new run at every BOS that is not the sequence's first token
    const bounds = [0];
    for (let i = 1; i < n; i++) if (ids[i] === cache.bosId) bounds.push(i);
    bounds.push(n);
    let logits: Float32Array = new Float32Array(0);
    for (const [r, from] of bounds.slice(0, -1).entries()) {
      const to = at(bounds, r + 1, 'Transformer.decode');
      if (ids[from] === cache.bosId && cache.length > 0) cache.startDocument();
      logits = await this.decodeRun(cache, Int32Array.from({ length: to - from }, (_, i) => at(ids, from + i, 'Transformer.decode')), modality.subarray(from, to), routing);
    }
    return logits;
  }

  /** decode() of validated ids of one document after those in `cache`. */
  private async decodeRun(cache: KVCache, ids: Int32Array, modality: Int32Array, routing: CausalRouting): Promise<Float32Array> {
    const n = ids.length;
    const positions = Int32Array.from({ length: n }, (_, i) => cache.length + i);
    const device = this.config.device;
    const ctx: CachedContext = { positions: tensor(positions, { device }), modality: tensor(modality.slice(), { device }), causal: routing };
    const tokens = tensor(ids, { device });
    try {
      const layerCache = (i: number): LayerCache => cache.layers[i]!;
      const last = await drive(this.forwardPass(tokens, {
        layer: (block, i, x, rows) => (block instanceof MoDBlock
          ? block.forwardCachedRows(x, { gate: block.gate(x), rows: rows!, cache: layerCache(i) }, ctx)
          : block.forwardCached(x, ctx, layerCache(i))),
        causal: { routing, modality },
        headRows: (x) => x.slice(0, n - 1, n),
      }));
      const logits = step(() => last.astype('float32'));
      last.dispose();
      cache.length += n;
      const values = (await logits.toArray()) as Float32Array;
      logits.dispose();
      return values;
    } finally {
      tokens.dispose();
      ctx.positions.dispose();
      ctx.modality.dispose();
    }
  }

  /**
   * The one forward over the blocks: embedding, every layer through `pass.layer`, final norm and
   * LM head. Training mode runs each layer on the tape (a MoD block picks its rows by batch top-k);
   * causal mode (`pass.causal`) runs each piece without gradient, frees the previous
   * activations, and gives a MoD block the rows the auxiliary routers pick (read to the host: the
   * generator yields that read; a layer with no row passes x unchanged). Training mode never
   * yields, so `logits` runs it synchronously; `drive` runs a causal one.
   */
  private *forwardPass(tokens: Tensor, pass: BlockPass): Iterator<Promise<Tensor | null>, Tensor, Tensor | null> {
    const causal = pass.causal;
    const piece = causal === undefined ? <T>(fn: () => T): T => fn() : step;
    let x = piece(() => F.cast(this.embed.forward(tokens), this.config.computeDtype));
    for (const [i, block] of this.blocks.entries()) {
      if (causal === undefined) {
        x = this.runLayer(pass, block, i, x, null);
        continue;
      }
      const rows = block instanceof MoDBlock ? yield this.causalDepthRows(block, x, causal.modality, causal.routing) : null;
      if (block instanceof MoDBlock && rows === null) continue;
      const next = step(() => this.runLayer(pass, block, i, x, rows));
      rows?.dispose();
      x.dispose();
      x = next;
    }
    const headRows = pass.headRows ?? ((v: Tensor): Tensor => v);
    const logits = piece(() => this.head.forward(this.finalNorm.forward(headRows(x))));
    if (causal !== undefined) x.dispose();
    return logits;
  }

  /** Layer i of a forward pass, through `blockRunner` when one is set. */
  private runLayer(pass: BlockPass, block: DecoderBlock | MoDBlock, i: number, x: Tensor, rows: Tensor | null): Tensor {
    const forward = (v: Tensor, replaying: boolean): Tensor => pass.layer(block, i, v, rows, replaying);
    return this.blockRunner === null ? forward(x, false) : this.blockRunner(block, i, x, { forward, generator: pass.generator });
  }

  /** The rows (int32, ascending) a MoD block runs on in causal mode: non-padding rows with â > 0.5; null when none. */
  private async causalDepthRows(block: MoDBlock, x: Tensor, modality: Int32Array, routing: CausalRouting): Promise<Tensor | null> {
    const select = step(() => routing.depthSelect(block.site, x));
    const a = await select.toArray();
    select.dispose();
    const rows: number[] = [];
    for (const [t, score] of a.entries()) if (at(modality, t, 'Transformer.causalDepthRows') >= 0 && score > 0.5) rows.push(t);
    return rows.length === 0 ? null : tensor(Int32Array.from(rows), { device: x.device });
  }

  private lossOf(logits: Tensor, batch: Batch): LossOutput {
    const zWeights = this.config.zLoss > 0 ? batch.weights.scale(this.config.zLoss) : undefined;
    const { loss, nll } = F.crossEntropyLoss(logits, batch.targets, { weights: batch.weights, zWeights });
    const perModality = noGrad(() => batch.modalityWeights.map((w) => nll.mul(w).sum()));
    return { loss, nll, perModality };
  }
}

/** One block call of a forward pass, as a Transformer's blockRunner gets it. */
export interface BlockRun {
  /** Runs the block on x; `replay`: the recompute of a backward (the routing observer does not see it). */
  forward(x: Tensor, replay: boolean): Tensor;
  /** The random stream the block draws from (Gumbel noise), when the forward has one. */
  generator?: Generator;
}

/** Runs block i (see Transformer.blockRunner). */
export type BlockRunner = (block: DecoderBlock | MoDBlock, index: number, x: Tensor, run: BlockRun) => Tensor;

/** What differs between the forwards over the blocks (Transformer.forwardPass). */
interface BlockPass {
  /** Layer i on x; `rows`: in causal mode, the rows a MoD block runs on (null for other blocks and in training mode); `replay`: see BlockRun. */
  layer(block: DecoderBlock | MoDBlock, i: number, x: Tensor, rows: Tensor | null, replay?: boolean): Tensor;
  /** The random stream of a training-mode forward. */
  generator?: Generator;
  /** Causal mode: the auxiliary routers and the rows' modality ids on the host (-1 padding). */
  causal?: { routing: CausalRouting; modality: Int32Array };
  /** The rows the LM head runs on (default: all). */
  headRows?: (x: Tensor) => Tensor;
}

/** Runs a causal forward pass: awaits each host read it yields and hands the result back. */
async function drive(pass: Iterator<Promise<Tensor | null>, Tensor, Tensor | null>): Promise<Tensor> {
  let state = pass.next();
  while (state.done !== true) state = pass.next(await state.value);
  return state.value;
}

/** One synchronous piece of a causal forward: no gradient, intermediates freed. */
function step<T>(fn: () => T): T {
  return noGrad(() => tidy(fn));
}

function positiveInt(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new MomaError('ERR_ARG', `Transformer config: ${name} must be an integer >= 1, got ${describeValue(v)}`);
  return v;
}

/** The keys a Transformer config may have (anything else is a typo, refused by validateConfig). */
const CONFIG_KEYS: readonly (keyof TransformerConfig)[] = [
  'vocabSize', 'dModel', 'layers', 'heads', 'ffn', 'modalities', 'norm', 'mod', 'ropeTheta', 'computeDtype', 'zLoss', 'initStd', 'seed', 'device',
];
const FFN_KEYS: readonly (keyof FFNConfig)[] = ['kind', 'dFF', 'groups', 'capacityFactor', 'router', 'gumbel', 'routing', 'topK'];
const MOD_KEYS: readonly (keyof ResolvedMoD)[] = ['interval', 'capacity'];
const GROUP_KEYS: readonly (keyof MoeGroupConfig)[] = ['modality', 'experts'];

export function validateConfig(config: TransformerConfig): Transformer['config'] {
  if (typeof config !== 'object' || config === null) throw new MomaError('ERR_ARG', 'Transformer config must be an object');
  rejectUnknownKeys(config, CONFIG_KEYS, 'Transformer config');
  const vocabSize = positiveInt(config.vocabSize, 'vocabSize');
  const dModel = positiveInt(config.dModel, 'dModel');
  const layers = positiveInt(config.layers, 'layers');
  const heads = positiveInt(config.heads, 'heads');
  if (dModel % heads !== 0) throw new MomaError('ERR_ARG', `Transformer config: heads (${heads}) must divide dModel (${dModel})`);
  if ((dModel / heads) % 2 !== 0) throw new MomaError('ERR_ARG', `Transformer config: the head size dModel / heads = ${dModel / heads} must be even (RoPE)`);
  const ffn = config.ffn;
  if (typeof ffn !== 'object' || ffn === null || (ffn.kind !== 'dense' && ffn.kind !== 'moe')) {
    throw new MomaError('ERR_ARG', "Transformer config: ffn.kind must be 'dense' or 'moe'");
  }
  rejectUnknownKeys(ffn, FFN_KEYS, 'Transformer config', 'ffn.');
  positiveInt(ffn.dFF, 'ffn.dFF');
  if (ffn.kind === 'moe' && (!Array.isArray(ffn.groups) || ffn.groups.length === 0)) {
    throw new MomaError('ERR_ARG', 'Transformer config: ffn.groups must list the expert groups for kind moe');
  }
  for (const [g, group] of (ffn.groups ?? []).entries()) {
    if (typeof group !== 'object' || group === null) throw new MomaError('ERR_ARG', `Transformer config: ffn.groups[${g}] must be an object { modality, experts }`);
    rejectUnknownKeys(group, GROUP_KEYS, 'Transformer config', `ffn.groups[${g}].`);
  }
  const modGiven = config.mod ?? null;
  if (modGiven !== null) {
    if (typeof modGiven !== 'object') throw new MomaError('ERR_ARG', 'Transformer config: mod must be an object { interval, capacity } or null');
    rejectUnknownKeys(modGiven, MOD_KEYS, 'Transformer config', 'mod.');
  }
  const mod = modGiven === null ? null : { interval: modGiven.interval ?? MOD_DEFAULTS.interval, capacity: modGiven.capacity ?? MOD_DEFAULTS.capacity };
  if (mod !== null) {
    const { interval, capacity } = mod;
    if (!Number.isInteger(interval) || interval < 1) throw new MomaError('ERR_ARG', `Transformer config: mod.interval must be an integer >= 1, got ${describeValue(interval)}`);
    if (typeof capacity !== 'number' || !(capacity > 0 && capacity <= 1)) throw new MomaError('ERR_ARG', `Transformer config: mod.capacity must be in (0, 1], got ${describeValue(capacity)}`);
  }
  const norm = config.norm ?? 'swin';
  if (norm !== 'swin' && norm !== 'pre') throw new MomaError('ERR_ARG', `Transformer config: norm must be 'swin' or 'pre', got ${describeValue(norm)}`);
  const zLoss = config.zLoss ?? 0;
  if (typeof zLoss !== 'number' || !(zLoss >= 0)) throw new MomaError('ERR_ARG', `Transformer config: zLoss must be >= 0, got ${describeValue(zLoss)}`);
  const computeDtype = config.computeDtype ?? 'float32';
  if (computeDtype !== 'float32' && computeDtype !== 'bfloat16') {
    throw new MomaError('ERR_ARG', `Transformer config: computeDtype must be 'float32' or 'bfloat16', got ${describeValue(computeDtype)}`);
  }
  const seed = config.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new MomaError('ERR_ARG', `Transformer config: seed must be a non-negative integer, got ${describeValue(seed)}`);
  return {
    vocabSize, dModel, layers, heads, ffn: { ...ffn }, modalities: config.modalities ?? ['text', 'image'], norm, mod,
    ropeTheta: config.ropeTheta ?? 10000, computeDtype, zLoss, initStd: config.initStd ?? 0.02, seed,
    device: normalizeDevice(config.device ?? 'cpu', 'Transformer config'),
  };
}

/**
 * A batch from host token ids [B][S] (lib/model/batch_rows.ts decides the rows): rows
 * whose token is `padId` are padding (one-row segments, never attended to, never counted); a
 * document starts at each `bosId`, at each sequence start and at the first non-padding row after
 * padding; row t's target is the next token when both are non-padding and the next is not BOS.
 * `modalityOf(id)` gives a non-padding token's modality id in [0, modalities).
 */
export function makeBatch(sequences: ArrayLike<number>[], options: BatchRowsOptions & { device?: DeviceInput }): Batch {
  const device = normalizeDevice(options.device ?? 'cpu', 'makeBatch');
  const rows = batchRows(sequences, options);
  const { targets, targetModality, counts } = rows;
  const T = targets.length;
  const weightsFor = (m: number | null): Tensor => {
    const w = new Float32Array(T);
    const n = m === null ? counts.total : at(counts.perModality, m, 'makeBatch');
    for (let t = 0; t < T; t++) if (targets[t]! >= 0 && (m === null || targetModality[t] === m) && n > 0) w[t] = 1 / n;
    return tensor(w, { device });
  };
  return {
    tokens: tensor(rows.tokens, { device }), targets: tensor(targets, { device }), positions: tensor(rows.positions, { device }),
    segStart: tensor(rows.segStart, { device }), modality: tensor(rows.modality, { device }), weights: weightsFor(null),
    modalityWeights: counts.perModality.map((_, m) => weightsFor(m)), host: { modality: rows.modality, segStart: rows.segStart }, counts,
  };
}
