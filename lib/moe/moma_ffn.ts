/**
 * MoMaFFN: the modality-aware mixture-of-experts feed-forward layer (docs/MOE.md), composed from
 * the native ops of ./ops. One module covers the paper's variants through its groups:
 *   moma "4t4i":  groups [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }]
 *   moe "8x":     groups [{ modality: ['text', 'image'], experts: 8 }]  (mixed-modal expert choice)
 *   "1t1i":       groups [{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }]
 * and token-choice top-k routing as an extra mode (softmax scores unless `router` says otherwise).
 * forward() returns the output and a context; backward(ctx, dy) returns dx and the parameter
 * gradients (explicit, ahead of the autograd tape).
 *
 * Parameters (experts of all groups stacked in group order; names as in Mixtral / Megatron):
 *   w1, w3 [E, dModel, dFF], w2 [E, dFF, dModel], router [dModel, E] (float32; the columns of
 *   single-expert groups are zero and unused: those groups have no router).
 * They have one owner: the layer itself when used alone, or the Module that registers them
 * (MoEFeedForward, through a MoMaFFNParameterOwner); forward reads them from the owner each call.
 */
import { at, rejectUnknownKeys } from '../checked';
import { MomaError } from '../errors';
import { DType } from '../dtype';
import { randn, tensor } from '../creation';
import { gradEnabled } from '../autograd/tape';
import { DeviceInput, DeviceName, getDefaultDevice, normalizeDevice } from '../device';
import { matmul } from '../ops';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import {
  combineRows, gateGrad, gatherRows, groupedMatmul, groupedMatmulSwiglu, groupedMatmulWgrad, MoeLayout, moePartition, Partition,
  route, RouterFn, routerScores, routerScoresBackward, Routing, RoutingMode, routingStats, swigluBackward,
} from './ops';

export interface MoeGroupConfig {
  /** The modality (or modalities) whose rows this group routes. */
  modality: string | string[];
  /** Experts in the group (1: no router, the expert takes every row with weight 1). */
  experts: number;
}

/**
 * The router function when the config names none (docs/MOE.md, "Token choice"): sigmoid for expert choice (the
 * paper's choice), softmax for token choice (each row takes its k best experts by softmax score).
 */
export function defaultRouter(routing: RoutingMode | undefined): RouterFn {
  return routing === 'token-choice' ? 'softmax' : 'sigmoid';
}

export interface MoMaFFNConfig {
  dModel: number;
  dFF: number;
  groups: MoeGroupConfig[];
  /** Modality names by id (row modality m is modalities[m]); default ['text', 'image']. */
  modalities?: string[];
  capacityFactor?: number;
  /** Router scores: 'sigmoid' or 'softmax'; default defaultRouter(routing) (softmax for token choice). */
  router?: RouterFn;
  /** Gumbel-sigmoid noise on the router logits in training (forward with training: true). */
  gumbel?: boolean;
  routing?: RoutingMode;
  /** Token choice: experts per row (default 2). */
  topK?: number;
  /** 'cpu', 'cuda' or 'cuda:N' (default: getDefaultDevice()); the resolved config holds the DeviceName. */
  device?: DeviceInput;
  dtype?: 'float32' | 'bfloat16';
  seed?: number;
  initStd?: number;
}

export interface MoMaFFNContext extends Disposable {
  readonly partition: Partition;
  readonly scores: Tensor;
  readonly routing: Routing;
  dispose(): void;
}

export interface RoutingStatsReport {
  experts: { group: number; expert: number; rows: number; meanGate: number }[];
  groups: { group: number; modalities: string[]; rows: number; share0: number; share1: number; share2plus: number }[];
}

interface Saved extends MoMaFFNContext {
  x: Tensor;
  /** The expert weights in the activations' dtype (the parameters themselves when equal) and the router, as the forward read them. */
  weights: { w1: Tensor; w2: Tensor; w3: Tensor; router: Tensor };
  xd: Tensor;
  h1: Tensor | null;  // null when forward ran under noGrad
  h3: Tensor | null;
  a: Tensor;
  out: Tensor;
  disposed: boolean;
}

/** The layer's parameters by name. */
export type MoMaFFNParameters = { w1: Tensor; w2: Tensor; w3: Tensor; router: Tensor };
export type MoMaFFNParameterName = keyof MoMaFFNParameters;
type Params = MoMaFFNParameters;

/** Registration order (the checkpoint's order of a layer's tensors). */
const PARAMETER_NAMES: readonly MoMaFFNParameterName[] = ['w1', 'w3', 'w2', 'router'];

/**
 * Where a MoMaFFN keeps its parameters. By default the layer owns them; a Module that registers
 * them (MoEFeedForward) passes an owner instead: the layer then holds no tensor and reads the
 * registered ones at every forward, so a parameter replaced through Module.setParameter (the
 * optimizer, a checkpoint load) is what the next forward uses.
 */
export interface MoMaFFNParameterOwner {
  /** Takes the initial tensor of parameter `name` (once per parameter, in the order w1, w3, w2, router). */
  register(name: MoMaFFNParameterName, tensor: Tensor): void;
  /** The current tensor of parameter `name`. */
  read(name: MoMaFFNParameterName): Tensor;
}

function positiveInt(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new MomaError('ERR_ARG', `MoMaFFN: ${name} must be an integer >= 1, got ${String(value)}`);
  }
  return value;
}

/** Resolves the config into a layout (and validates every field). */
export function moeLayoutOf(config: Pick<MoMaFFNConfig, 'groups' | 'modalities'>): MoeLayout {
  const modalities = config.modalities ?? ['text', 'image'];
  if (!Array.isArray(modalities) || modalities.length === 0 || new Set(modalities).size !== modalities.length) {
    throw new MomaError('ERR_ARG', 'MoMaFFN: modalities must be a non-empty list of distinct names');
  }
  if (!Array.isArray(config.groups) || config.groups.length === 0) {
    throw new MomaError('ERR_ARG', 'MoMaFFN: groups must be a non-empty list of { modality, experts }');
  }
  const groupOfModality = modalities.map(() => -1);
  const experts = config.groups.map((group, g) => {
    const names = Array.isArray(group.modality) ? group.modality : [group.modality];
    if (names.length === 0) throw new MomaError('ERR_ARG', `MoMaFFN: groups[${g}] names no modality`);
    for (const name of names) {
      const m = modalities.indexOf(name);
      if (m < 0) throw new MomaError('ERR_ARG', `MoMaFFN: groups[${g}] names unknown modality '${name}' (modalities: ${modalities.join(', ')})`);
      if (groupOfModality[m] !== -1) throw new MomaError('ERR_ARG', `MoMaFFN: modality '${name}' is in groups ${groupOfModality[m]} and ${g}`);
      groupOfModality[m] = g;
    }
    return positiveInt(group.experts, `groups[${g}].experts`);
  });
  return { experts, groupOfModality };
}

/** The expert weights one grouped GEMM pass reads: w1, w3 [E, dModel, dFF], w2 [E, dFF, dModel]. */
export type ExpertWeights = Pick<MoMaFFNParameters, 'w1' | 'w2' | 'w3'>;

/** What expertsForward computed: a = silu(h1) ⊙ h3 and out = a·w2; h1 and h3 only when a backward can follow. */
export interface ExpertActivations {
  a: Tensor;
  h1: Tensor | null;
  h3: Tensor | null;
  out: Tensor;
}

/**
 * The experts' SwiGLU FFN over dispatched rows xd [R, dModel], segment e (rows [offsets[e],
 * offsets[e + 1])) through expert e: h1 = xd·w1, h3 = xd·w3 and a = silu(h1) ⊙ h3 in one fused
 * grouped GEMM, then out = a·w2. The pre-activations are kept only when a backward can follow.
 */
export function expertsForward(xd: Tensor, weights: ExpertWeights, offsets: Tensor): ExpertActivations {
  const { a, h1, h3 } = groupedMatmulSwiglu(xd, { w1: weights.w1, w3: weights.w3 }, { offsets, keepPreactivations: gradEnabled() });
  const out = groupedMatmul(a, weights.w2, { offsets });
  return { a, h1, h3, out };
}

/**
 * The backward of expertsForward for dout [R, dModel] (the gradient of out, already scaled by each
 * slot's gate): dxd [R, dModel] and the float32 weight gradients of the experts in `weights`.
 */
export function expertsBackward(saved: { xd: Tensor; h1: Tensor; h3: Tensor; a: Tensor }, dout: Tensor, weights: ExpertWeights,
  offsets: Tensor): { dxd: Tensor; dw1: Tensor; dw2: Tensor; dw3: Tensor } {
  const dw2 = groupedMatmulWgrad(saved.a, dout, { offsets });
  const da = groupedMatmul(dout, weights.w2, { offsets, transW: true });
  const { dh1, dh3 } = swigluBackward(saved.h1, saved.h3, da);
  da.dispose();
  const dw1 = groupedMatmulWgrad(saved.xd, dh1, { offsets });
  const dw3 = groupedMatmulWgrad(saved.xd, dh3, { offsets });
  const dxd1 = groupedMatmul(dh1, weights.w1, { offsets, transW: true });
  const dxd3 = groupedMatmul(dh3, weights.w3, { offsets, transW: true });
  dh1.dispose();
  dh3.dispose();
  const dxd = dxd1.add(dxd3);
  dxd1.dispose();
  dxd3.dispose();
  return { dxd, dw1, dw2, dw3 };
}

/**
 * The router's half of the layer backward, shared by MoMaFFN and ExpertParallelMoMaFFN: from the
 * scores' gradient, the router logits' gradient, the router weight gradient x^T·dlogits (float32)
 * and dx = dxFfn + dlogits·router^T in x's dtype. Disposes dscores and dxFfn.
 */
export function routerBackward(saved: { x: Tensor; scores: Tensor; rowGroup: Tensor; router: Tensor }, dscores: Tensor, dxFfn: Tensor,
  options: { layout: MoeLayout; fn: RouterFn }): { dx: Tensor; drouter: Tensor } {
  const dlogits = routerScoresBackward(saved.scores, dscores, { rowGroup: saved.rowGroup, layout: options.layout, fn: options.fn });
  dscores.dispose();
  const dxRouter = matmul(dlogits, saved.router, { transB: true });
  const x32 = saved.x.dtype === 'float32' ? saved.x : saved.x.astype('float32');
  const drouter = matmul(x32, dlogits, { transA: true });
  if (x32 !== saved.x) x32.dispose();
  dlogits.dispose();
  const dxSum = dxRouter.dtype === dxFfn.dtype ? dxFfn.add(dxRouter) : dxFfn.astype('float32').add(dxRouter);
  dxFfn.dispose();
  dxRouter.dispose();
  const dx = dxSum.dtype === saved.x.dtype ? dxSum : dxSum.astype(saved.x.dtype);
  if (dx !== dxSum) dxSum.dispose();
  return { dx, drouter };
}

/** The keys a MoMaFFN config and its group entries may have (anything else is refused as a typo). */
const MOMA_FFN_CONFIG_KEYS: readonly (keyof MoMaFFNConfig)[] = [
  'dModel', 'dFF', 'groups', 'modalities', 'capacityFactor', 'router', 'gumbel', 'routing', 'topK', 'device', 'dtype', 'seed', 'initStd',
];
const MOE_GROUP_KEYS: readonly (keyof MoeGroupConfig)[] = ['modality', 'experts'];

export class MoMaFFN {
  readonly config: Readonly<Required<Omit<MoMaFFNConfig, 'device' | 'seed'>>> & { device: DeviceName };
  readonly layout: MoeLayout;
  readonly numExperts: number;
  private readonly owner: MoMaFFNParameterOwner;
  /** The parameters when the layer owns them (null: a Module owns them). */
  private readonly owned: Map<MoMaFFNParameterName, Tensor> | null;

  /** `owner`: the Module that owns the parameters (default: the layer owns them). */
  constructor(config: MoMaFFNConfig, owner?: MoMaFFNParameterOwner) {
    if (typeof config !== 'object' || config === null) throw new MomaError('ERR_ARG', 'MoMaFFN: config must be an object');
    rejectUnknownKeys(config, MOMA_FFN_CONFIG_KEYS, 'MoMaFFN config');
    if (Array.isArray(config.groups)) {
      for (const [g, group] of config.groups.entries()) {
        if (typeof group !== 'object' || group === null) throw new MomaError('ERR_ARG', `MoMaFFN: groups[${g}] must be an object { modality, experts }`);
        rejectUnknownKeys(group, MOE_GROUP_KEYS, 'MoMaFFN config', `groups[${g}].`);
      }
    }
    const dModel = positiveInt(config.dModel, 'dModel');
    const dFF = positiveInt(config.dFF, 'dFF');
    this.layout = moeLayoutOf(config);
    const capacityFactor = config.capacityFactor ?? 1;
    if (typeof capacityFactor !== 'number' || !Number.isFinite(capacityFactor) || capacityFactor <= 0) {
      throw new MomaError('ERR_ARG', `MoMaFFN: capacityFactor must be a finite number > 0, got ${String(capacityFactor)}`);
    }
    const routing = config.routing ?? 'expert-choice';
    if (routing !== 'expert-choice' && routing !== 'token-choice') {
      throw new MomaError('ERR_ARG', `MoMaFFN: routing must be 'expert-choice' or 'token-choice', got ${String(routing)}`);
    }
    const router = config.router ?? defaultRouter(routing);
    if (router !== 'sigmoid' && router !== 'softmax') throw new MomaError('ERR_ARG', `MoMaFFN: router must be 'sigmoid' or 'softmax', got ${String(router)}`);
    const topK = positiveInt(config.topK ?? 2, 'topK');
    const dtype: DType = config.dtype ?? 'float32';
    if (dtype !== 'float32' && dtype !== 'bfloat16') throw new MomaError('ERR_DTYPE', `MoMaFFN: dtype must be float32 or bfloat16, got ${String(dtype)}`);
    const initStd = config.initStd ?? 0.02;
    if (typeof initStd !== 'number' || !(initStd >= 0)) throw new MomaError('ERR_ARG', `MoMaFFN: initStd must be >= 0, got ${String(initStd)}`);
    const device = config.device === undefined ? getDefaultDevice() : normalizeDevice(config.device, 'MoMaFFN');
    this.config = {
      dModel, dFF, groups: config.groups.map((g) => ({ ...g })), modalities: config.modalities ?? ['text', 'image'],
      capacityFactor, router, gumbel: config.gumbel ?? false, routing, topK, dtype, initStd, device,
    };
    this.numExperts = this.layout.experts.reduce((a, b) => a + b, 0);
    const E = this.numExperts;
    const generator = new Generator(config.seed ?? 0);
    const opts = { dtype, device, std: initStd, generator };
    const routed = new Float32Array(E);
    let begin = 0;
    for (const e of this.layout.experts) {
      if (e > 1) routed.fill(1, begin, begin + e);
      begin += e;
    }
    // draw order (router first, then w1, w3, w2) fixes the initial values for a seed
    const gaussian = randn([dModel, E], { device, std: initStd, generator });
    const mask = tensor(routed, { shape: [1, E], device });
    const initial: Params = {
      w1: randn([E, dModel, dFF], opts),
      w3: randn([E, dModel, dFF], opts),
      w2: randn([E, dFF, dModel], opts),
      router: gaussian.mul(mask),
    };
    gaussian.dispose();
    mask.dispose();
    if (owner === undefined) {
      const owned = new Map<MoMaFFNParameterName, Tensor>();
      this.owned = owned;
      this.owner = {
        register: (name, t) => { owned.set(name, t); },
        read: (name) => owned.get(name) as Tensor,
      };
    } else {
      this.owned = null;
      this.owner = owner;
    }
    for (const name of PARAMETER_NAMES) this.owner.register(name, initial[name]);
  }

  get w1(): Tensor { return this.owner.read('w1'); }
  get w2(): Tensor { return this.owner.read('w2'); }
  get w3(): Tensor { return this.owner.read('w3'); }
  get router(): Tensor { return this.owner.read('router'); }

  /** Named parameters: w1, w3, w2, router (read from their owner). */
  parameters(): Map<string, Tensor> {
    return new Map(PARAMETER_NAMES.map((name) => [name, this.owner.read(name)]));
  }

  /** The current parameters, read from their owner. */
  private current(): Params {
    const { owner } = this;
    return { w1: owner.read('w1'), w2: owner.read('w2'), w3: owner.read('w3'), router: owner.read('router') };
  }

  /**
   * Replaces parameters with copies of the given tensors (shape, dtype and device checked). Only
   * for a layer that owns its parameters; a Module owner replaces them with setParameter.
   */
  setParameters(values: Partial<Params>): void {
    const owned = this.owned;
    if (owned === null) throw new MomaError('ERR_ARG', 'MoMaFFN.setParameters: the parameters belong to a Module; use its setParameter');
    for (const [name, value] of Object.entries(values) as [MoMaFFNParameterName, Tensor | undefined][]) {
      if (value === undefined) continue;
      const current = owned.get(name);
      if (current === undefined) throw new MomaError('ERR_ARG', `MoMaFFN.setParameters: unknown parameter '${name}'`);
      if (!(value instanceof Tensor)) throw new MomaError('ERR_ARG', `MoMaFFN.setParameters: ${name} must be a Tensor`);
      if (value.shape.join() !== current.shape.join()) {
        throw new MomaError('ERR_SHAPE', `MoMaFFN.setParameters: ${name} has shape [${value.shape.join(', ')}], expected [${current.shape.join(', ')}]`);
      }
      if (value.device !== current.device) {
        throw new MomaError('ERR_DEVICE', `MoMaFFN.setParameters: ${name} is on ${value.device}, the module on ${current.device}`);
      }
      const copy = value.astype(current.dtype);
      current.dispose();
      owned.set(name, copy);
    }
  }

  /**
   * y [T, dModel] for rows x [T, dModel] of modality ids `modality` (int32 [T], -1 = padding).
   * With `training` and config.gumbel, Gumbel noise is drawn from `generator` (required then).
   * With `select` (float32 [T, E], the auxiliary routers' probabilities; causal mode, docs/INFERENCE.md),
   * expert e takes every row of its group with select > 0.5 instead of the batch top-k.
   */
  forward(x: Tensor, modality: Tensor, options: { training?: boolean; generator?: Generator; select?: Tensor } = {}): { y: Tensor; ctx: MoMaFFNContext } {
    if (!(x instanceof Tensor) || x.ndim !== 2 || x.shape[1] !== this.config.dModel) {
      throw new MomaError('ERR_SHAPE', `MoMaFFN.forward: x must be [T, ${this.config.dModel}], got ${x instanceof Tensor ? `[${x.shape.join(', ')}]` : typeof x}`);
    }
    if (!(modality instanceof Tensor) || modality.ndim !== 1 || modality.shape[0] !== x.shape[0]) {
      throw new MomaError('ERR_SHAPE', `MoMaFFN.forward: modality must be int32 [${x.shape[0]}]`);
    }
    const noisy = options.training === true && this.config.gumbel;
    if (noisy && !(options.generator instanceof Generator)) {
      throw new MomaError('ERR_ARG', 'MoMaFFN.forward: gumbel routing in training needs options.generator');
    }
    const { layout } = this;
    // bf16 activations with float32 parameters (mixed precision): the expert GEMMs read bf16 copies
    const params = this.current();
    const compute = (w: Tensor): Tensor => (w.dtype === x.dtype ? w : w.astype(x.dtype));
    const weights = { w1: compute(params.w1), w2: compute(params.w2), w3: compute(params.w3), router: params.router };
    const { w1, w2, w3 } = weights;
    const partition = moePartition(modality, layout);
    const logits = matmul(x.dtype === 'float32' ? x : x.astype('float32'), params.router);
    const scores = routerScores(logits, { rowGroup: partition.rowGroup, layout, fn: this.config.router, gumbel: noisy ? options.generator : undefined });
    logits.dispose();
    const routing = options.select === undefined
      ? route(scores, partition, { layout, mode: this.config.routing, capacityFactor: this.config.capacityFactor, topK: this.config.topK })
      : route(scores, partition, { layout, mode: 'threshold', select: options.select });
    const xd = gatherRows(x, routing.slotRow);
    const { a, h1, h3, out } = expertsForward(xd, { w1, w2, w3 }, routing.expertOffsets);
    const y = combineRows(out, routing.rowSlots, routing.slotGate);
    const saved: Saved = {
      partition, scores, routing, x, weights, xd, h1, h3, a, out, disposed: false,
      dispose(): void {
        if (this.disposed) return;
        this.disposed = true;
        partition.dispose();
        routing.dispose();
        for (const t of [scores, xd, h1, h3, a, out]) t?.dispose();
        for (const name of ['w1', 'w2', 'w3'] as const) if (weights[name] !== params[name]) weights[name].dispose();
      },
      [Symbol.dispose](): void {
        this.dispose();
      },
    };
    return { y, ctx: saved };
  }

  /** dx and the parameter gradients (float32) for the upstream gradient dy [T, dModel]. */
  backward(ctx: MoMaFFNContext, dy: Tensor): { dx: Tensor; grads: Params } {
    const saved = ctx as Saved;
    if (saved.disposed === undefined || saved.xd === undefined) throw new MomaError('ERR_ARG', 'MoMaFFN.backward: ctx must come from forward()');
    if (saved.disposed) throw new MomaError('ERR_DISPOSED', 'MoMaFFN.backward: the forward context was disposed');
    if (saved.h1 === null || saved.h3 === null) {
      throw new MomaError('ERR_ARG', 'MoMaFFN.backward: the forward ran under noGrad, so it kept no activations to differentiate');
    }
    if (!(dy instanceof Tensor) || dy.shape.join() !== saved.x.shape.join()) {
      throw new MomaError('ERR_SHAPE', `MoMaFFN.backward: dy must have the shape of x [${saved.x.shape.join(', ')}]`);
    }
    const { layout } = this;
    const { w1, w2, w3, router } = saved.weights;
    const { routing, partition } = saved;
    const offs = routing.expertOffsets;
    const dyc = dy.dtype === saved.out.dtype ? dy : dy.astype(saved.out.dtype);
    const dscores = gateGrad(saved.out, dyc, { slotRow: routing.slotRow, expertOffsets: offs, layout });
    const dout = gatherRows(dyc, routing.slotRow, routing.slotGate);
    if (dyc !== dy) dyc.dispose();
    const { dxd, dw1, dw2, dw3 } = expertsBackward({ xd: saved.xd, h1: saved.h1, h3: saved.h3, a: saved.a }, dout, { w1, w2, w3 }, offs);
    dout.dispose();
    const dxFfn = combineRows(dxd, routing.rowSlots);
    dxd.dispose();
    const { dx, drouter } = routerBackward({ x: saved.x, scores: saved.scores, rowGroup: partition.rowGroup, router }, dscores, dxFfn,
      { layout, fn: this.config.router });
    return { dx, grads: { w1: dw1, w2: dw2, w3: dw3, router: drouter } };
  }

  /** Routing statistics of a forward pass, read to the host (for logging). */
  async stats(ctx: MoMaFFNContext): Promise<RoutingStatsReport> {
    const s = routingStats(ctx.partition, ctx.routing, this.layout);
    try {
      const [experts, groups] = await Promise.all([s.expertStats.toArray(), s.groupStats.toArray()]);
      const report: RoutingStatsReport = { experts: [], groups: [] };
      let e = 0;
      this.layout.experts.forEach((count, g) => {
        for (let j = 0; j < count; ++j, ++e) {
          report.experts.push({ group: g, expert: j, rows: at(experts, 2 * e, 'MoMaFFN.stats'), meanGate: at(experts, 2 * e + 1, 'MoMaFFN.stats') });
        }
        report.groups.push({
          group: g,
          modalities: this.config.modalities.filter((_, m) => this.layout.groupOfModality[m] === g),
          rows: at(groups, 4 * g, 'MoMaFFN.stats'), share0: at(groups, 4 * g + 1, 'MoMaFFN.stats'),
          share1: at(groups, 4 * g + 2, 'MoMaFFN.stats'), share2plus: at(groups, 4 * g + 3, 'MoMaFFN.stats'),
        });
      });
      return report;
    } finally {
      s.dispose();
    }
  }

  /** Frees the parameters when the layer owns them (a Module owner frees its own). */
  dispose(): void {
    if (this.owned === null) return;
    for (const t of this.owned.values()) t.dispose();
    this.owned.clear();
  }

  /** `using` support: the same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
