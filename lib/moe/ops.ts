/**
 * The mixture-of-experts ops (docs/MOE.md) as functions on tensors: modality partition, router
 * scores, capacity-bounded expert-choice (or token-choice) routing, the causal threshold routing
 * of causal mode (docs/INFERENCE.md; auxiliary-router probabilities > 0.5, no capacity), dispatch (gatherRows), grouped
 * expert GEMMs, SwiGLU, combine, and the backward pieces. All run on the tensors' device without
 * a host sync: data-dependent counts stay in int32 tensors, buffers are sized by bounds.
 */
import { native, TensorHandle } from '../binding';
import { MomaError } from '../errors';
import { philoxBlocksGumbel, slotBound } from '../formulas';
import { NATIVE_TABLES } from '../native_tables';
import { requireFields, requireOptions } from '../options';
import { Generator } from '../random';
import { handleOf, Tensor, wrap } from '../tensor';

/** Experts per group, and the group of each modality id (-1: that modality is never routed). */
export interface MoeLayout {
  experts: number[];
  groupOfModality: number[];
}

export interface Partition extends Disposable {
  /** int32 [T]: group of each row, -1 for padding / unrouted rows. */
  rowGroup: Tensor;
  /** int32 [G]: rows per group. */
  counts: Tensor;
  /** int32 [G + 1]: exclusive prefix sum of counts. */
  offsets: Tensor;
  /** int32 [T]: rows of group 0 ascending, then group 1, …, then rows of no group. */
  perm: Tensor;
  dispose(): void;
}

export type RouterFn = 'sigmoid' | 'softmax';
export type RoutingMode = 'expert-choice' | 'token-choice' | 'threshold';

export interface RoutingOptions {
  mode?: RoutingMode;
  /** c > 0, default 1 (the paper's setting); ignored by threshold. */
  capacityFactor?: number;
  /** Token choice only: experts per row, default 1. */
  topK?: number;
  /**
   * Threshold only (required there, rejected otherwise): float32 [T, E] on the scores' device,
   * the auxiliary router's probabilities; expert e takes row t of its group iff select[t, e] > 0.5.
   */
  select?: Tensor;
}

export interface Routing extends Disposable {
  /** int32 [E + 1]: expert e owns slots [expertOffsets[e], expertOffsets[e + 1]). */
  expertOffsets: Tensor;
  /** int32 [R]: the row in each slot (ascending inside a segment), -1 past the end. */
  slotRow: Tensor;
  /** float32 [R]: the router score of the slot's (row, expert); 1 for single-expert groups. */
  slotGate: Tensor;
  /** int32 [T, W]: (t, j) = slot where local expert j of t's group took row t, or -1. */
  rowSlots: Tensor;
  dispose(): void;
}

export interface RoutingStats extends Disposable {
  /** float32 [E, 2]: rows taken, mean gate. */
  expertStats: Tensor;
  /** float32 [G, 4]: rows of the group, shares of them taken by 0, by 1 and by 2+ experts. */
  groupStats: Tensor;
  dispose(): void;
}

const ROUTER_FN: Readonly<Record<RouterFn, number>> = NATIVE_TABLES.routerFn;
const ROUTING_MODE: Readonly<Record<RoutingMode, number>> = NATIVE_TABLES.routingMode;

function bundle<T extends object>(fields: T): T & Disposable & { dispose(): void } {
  const dispose = (): void => {
    for (const value of Object.values(fields)) if (value instanceof Tensor) value.dispose();
  };
  return Object.assign(fields, { dispose, [Symbol.dispose]: dispose });
}

/** Validates a layout (the native side checks again) and returns it as plain arrays. */
export function checkLayout(layout: MoeLayout, op: string): MoeLayout {
  if (typeof layout !== 'object' || layout === null || !Array.isArray(layout.experts) || !Array.isArray(layout.groupOfModality)) {
    throw new MomaError('ERR_ARG', `${op}: layout must be { experts: number[], groupOfModality: number[] }`);
  }
  const experts = layout.experts;
  if (experts.length === 0 || experts.some((e) => !Number.isInteger(e) || e < 1)) {
    throw new MomaError('ERR_ARG', `${op}: layout.experts must be a non-empty list of integers >= 1, got [${experts.join(', ')}]`);
  }
  const groups = experts.length;
  if (layout.groupOfModality.some((g) => !Number.isInteger(g) || g < -1 || g >= groups)) {
    throw new MomaError('ERR_ARG', `${op}: layout.groupOfModality entries must be -1 or a group in [0, ${groups}), got [${layout.groupOfModality.join(', ')}]`);
  }
  return { experts: experts.slice(), groupOfModality: layout.groupOfModality.slice() };
}

function routerCode(fn: RouterFn | undefined, op: string): number {
  const code = ROUTER_FN[fn ?? 'sigmoid'];
  if (code === undefined) throw new MomaError('ERR_ARG', `${op}: router must be 'sigmoid' or 'softmax', got ${String(fn)}`);
  return code;
}

function routingArgs(options: RoutingOptions, op: string): { mode: number; capacity: number; topK: number } {
  const mode = ROUTING_MODE[options.mode ?? 'expert-choice'];
  if (mode === undefined) {
    throw new MomaError('ERR_ARG', `${op}: mode must be 'expert-choice', 'token-choice' or 'threshold', got ${String(options.mode)}`);
  }
  const capacity = options.capacityFactor ?? 1;
  if (typeof capacity !== 'number' || !Number.isFinite(capacity) || capacity <= 0) {
    throw new MomaError('ERR_ARG', `${op}: capacityFactor must be a finite number > 0, got ${String(capacity)}`);
  }
  const topK = options.topK ?? 1;
  if (!Number.isInteger(topK) || topK < 1) throw new MomaError('ERR_ARG', `${op}: topK must be an integer >= 1, got ${String(topK)}`);
  return { mode, capacity, topK };
}

/** Groups rows by modality (modality int32 [T], -1 = padding). */
export function moePartition(modality: Tensor, layout: MoeLayout): Partition {
  const L = checkLayout(layout, 'moe_partition');
  const [rowGroup, counts, offsets, perm] = native().moePartition(handleOf(modality, 'moe_partition', 'modality'), L.experts, L.groupOfModality);
  return bundle({ rowGroup: wrap(rowGroup), counts: wrap(counts), offsets: wrap(offsets), perm: wrap(perm) });
}

export interface RouterScoresOptions {
  /** [T] int32 group of each row (Partition.rowGroup). */
  rowGroup: Tensor;
  layout: MoeLayout;
  /** 'sigmoid' (default) or 'softmax' over each row's group. */
  fn?: RouterFn;
  /** Adds Gumbel-sigmoid noise drawn from this generator (which advances). */
  gumbel?: Generator;
}

/**
 * Router scores [T, E] from logits [T, E]: `routerScores(logits, { rowGroup, layout, fn, gumbel })`,
 * sigmoid (default) or softmax over each row's group; with `gumbel`, Gumbel-sigmoid noise from
 * that generator (which advances).
 */
export function routerScores(logits: Tensor, options: RouterScoresOptions): Tensor {
  const op = 'moe_router_scores';
  const { rowGroup, layout } = requireOptions(options, 'routerScores', ['rowGroup', 'layout']);
  const L = checkLayout(layout, op);
  const fn = routerCode(options.fn, op);
  const lh = handleOf(logits, op, 'logits');
  const rh = handleOf(rowGroup, op, 'rowGroup');
  let seed = 0n;
  let offset = 0n;
  const gen = options.gumbel;
  if (gen !== undefined) {
    if (!(gen instanceof Generator)) throw new MomaError('ERR_ARG', `${op}: gumbel must be a Generator`);
    const entries = logits.shape.reduce((a, b) => a * b, 1);
    seed = gen.seed;
    offset = gen.offset;
    const scores = native().moeRouterScores(lh, rh, L.experts, L.groupOfModality, fn, true, seed, offset);
    gen.take(philoxBlocksGumbel(entries));
    return wrap(scores);
  }
  return wrap(native().moeRouterScores(lh, rh, L.experts, L.groupOfModality, fn, false, seed, offset));
}

export interface RouterScoresBackwardOptions {
  /** [T] int32 group of each row (Partition.rowGroup). */
  rowGroup: Tensor;
  layout: MoeLayout;
  /** The router function the scores came from (default 'sigmoid'). */
  fn?: RouterFn;
}

/** Gradient of the router logits from the gradient of the scores. */
export function routerScoresBackward(scores: Tensor, dscores: Tensor, options: RouterScoresBackwardOptions): Tensor {
  const op = 'moe_router_scores_backward';
  const { rowGroup, layout, fn = 'sigmoid' } = requireOptions(options, 'routerScoresBackward', ['rowGroup', 'layout']);
  const L = checkLayout(layout, op);
  return wrap(native().moeRouterScoresBackward(handleOf(scores, op, 'scores'), handleOf(dscores, op, 'dscores'),
    handleOf(rowGroup, op, 'rowGroup'), L.experts, L.groupOfModality, routerCode(fn, op)));
}

/** R, the slots a routing of `rows` rows may fill at most (moe_slot_bound in csrc/core/moe_types.h). */
export function moeSlotBound(rows: number, layout: MoeLayout, options: RoutingOptions = {}): number {
  const L = checkLayout(layout, 'moe_slot_bound');
  const { capacity, topK } = routingArgs(options, 'moe_slot_bound');
  return slotBound(rows, L.experts, options.mode ?? 'expert-choice', capacity, topK);
}

export interface RouteOptions extends RoutingOptions {
  layout: MoeLayout;
}

/**
 * Which rows each expert takes: `route(scores, partition, { layout, mode, capacityFactor, topK, select })`
 * (expert choice by default; docs/MOE.md). Threshold mode (causal mode, docs/INFERENCE.md): expert e takes every row
 * t of its group with options.select[t, e] > 0.5 (NaN: not), gated by scores[t, e]; single-expert
 * groups take all their rows with gate 1.
 */
export function route(scores: Tensor, partition: Partition, options: RouteOptions): Routing {
  const op = 'moe_route';
  const { layout } = requireOptions(options, 'route', ['layout']);
  const L = checkLayout(layout, op);
  const { mode, capacity, topK } = routingArgs(options, op);
  const threshold = mode === ROUTING_MODE.threshold;
  if (threshold && options.select === undefined) throw new MomaError('ERR_ARG', `${op}: select is required in threshold mode`);
  if (!threshold && options.select !== undefined) {
    throw new MomaError('ERR_ARG', `${op}: select is only used in threshold mode (mode is ${options.mode ?? 'expert-choice'})`);
  }
  const select = threshold ? handleOf(options.select, op, 'select') : null;
  if (typeof partition !== 'object' || partition === null) throw new MomaError('ERR_ARG', `${op}: partition must come from moePartition`);
  const p = (name: keyof Omit<Partition, 'dispose' | typeof Symbol.dispose>): TensorHandle => handleOf(partition[name], op, `partition.${name}`);
  const [expertOffsets, slotRow, slotGate, rowSlots] = native().moeRoute(handleOf(scores, op, 'scores'), p('rowGroup'), p('counts'),
    p('offsets'), p('perm'), L.experts, L.groupOfModality, mode, capacity, topK, select);
  return bundle({ expertOffsets: wrap(expertOffsets), slotRow: wrap(slotRow), slotGate: wrap(slotGate), rowSlots: wrap(rowSlots) });
}

/** Dispatch: y[s] = scale[s] · x[slotRow[s]] ([R, d]; zero rows where slotRow is -1). */
export function gatherRows(x: Tensor, slotRow: Tensor, scale?: Tensor): Tensor {
  const op = 'moe_gather_rows';
  return wrap(native().moeGatherRows(handleOf(x, op, 'x'), handleOf(slotRow, op, 'slotRow'), scale === undefined ? null : handleOf(scale, op, 'scale')));
}

/** Combine: y[t] = Σ_j weight[s] · src[s] over the slots s = rowSlots[t, j] ≥ 0, in order of j. */
export function combineRows(src: Tensor, rowSlots: Tensor, weight?: Tensor): Tensor {
  const op = 'moe_combine';
  return wrap(native().moeCombine(handleOf(src, op, 'src'), handleOf(rowSlots, op, 'rowSlots'), weight === undefined ? null : handleOf(weight, op, 'weight')));
}

export interface GateGradOptions {
  /** [R] int32 row of each slot (Routing.slotRow). */
  slotRow: Tensor;
  /** [E + 1] int32 first slot of each expert (Routing.expertOffsets). */
  expertOffsets: Tensor;
  layout: MoeLayout;
}

/** Gradient of the scores [T, E] from combine: dscores[row, e] = out[s] · dy[row] per routed slot. */
export function gateGrad(out: Tensor, dy: Tensor, options: GateGradOptions): Tensor {
  const op = 'moe_gate_grad';
  const { slotRow, expertOffsets, layout } = requireOptions(options, 'gateGrad', ['slotRow', 'expertOffsets', 'layout']);
  const L = checkLayout(layout, op);
  return wrap(native().moeGateGrad(handleOf(out, op, 'out'), handleOf(dy, op, 'dy'), handleOf(slotRow, op, 'slotRow'),
    handleOf(expertOffsets, op, 'expertOffsets'), L.experts, L.groupOfModality));
}

export interface GroupedOptions {
  /** int32 [E + 1]: segment e is rows [offsets[e], offsets[e + 1]) of x (Routing.expertOffsets). */
  offsets: Tensor;
}

/**
 * Grouped GEMM: `groupedMatmul(x, w, { offsets, transW })`, the rows of segment e times w[e]
 * ([E, K, N], or [E, N, K] with transW).
 */
export function groupedMatmul(x: Tensor, w: Tensor, options: GroupedOptions & { transW?: boolean }): Tensor {
  const op = 'grouped_matmul';
  const { offsets } = requireOptions(options, 'groupedMatmul', ['offsets']);
  return wrap(native().groupedMatmul(handleOf(x, op, 'x'), handleOf(w, op, 'w'), handleOf(offsets, op, 'offsets'), options.transW === true));
}

/** Weight gradient of groupedMatmul: `groupedMatmulWgrad(x, dy, { offsets })`, dw[e] = x[seg e]ᵀ · dy[seg e] (float32 [E, K, N]). */
export function groupedMatmulWgrad(x: Tensor, dy: Tensor, options: GroupedOptions): Tensor {
  const op = 'grouped_matmul_wgrad';
  const { offsets } = requireOptions(options, 'groupedMatmulWgrad', ['offsets']);
  return wrap(native().groupedMatmulWgrad(handleOf(x, op, 'x'), handleOf(dy, op, 'dy'), handleOf(offsets, op, 'offsets')));
}

/** The two input projections of the expert FFN, each [E, K, N]. */
export interface SwigluWeights {
  w1: Tensor;
  w3: Tensor;
}

/**
 * The expert FFN's first half in one pass, `groupedMatmulSwiglu(x, { w1, w3 }, { offsets, keepPreactivations })`:
 * h1 = x·w1[e], h3 = x·w3[e] on each expert's segment and
 * a = silu(h1) ⊙ h3 from the float32 products (rounded once to the output dtype; on CUDA one fused
 * grouped GEMM, on the CPU groupedMatmul twice and swiglu). h1 and h3 are returned only with
 * `keepPreactivations` (swigluBackward reads them).
 */
export function groupedMatmulSwiglu(x: Tensor, weights: SwigluWeights,
  options: GroupedOptions & { keepPreactivations?: boolean }): { a: Tensor; h1: Tensor | null; h3: Tensor | null } {
  const op = 'grouped_matmul_swiglu';
  const { w1, w3 } = requireFields(weights, { fn: 'groupedMatmulSwiglu', argument: 'weights' }, ['w1', 'w3']);
  const { offsets } = requireOptions(options, 'groupedMatmulSwiglu', ['offsets']);
  const keep = options.keepPreactivations === true;
  const out = native().groupedMatmulSwiglu(handleOf(x, op, 'x'), handleOf(w1, op, 'w1'), handleOf(w3, op, 'w3'),
    handleOf(offsets, op, 'offsets'), keep);
  const [a, h1, h3] = out;
  return { a: wrap(a!), h1: keep ? wrap(h1!) : null, h3: keep ? wrap(h3!) : null };
}

/** a = silu(h1) ⊙ h3. */
export function swiglu(h1: Tensor, h3: Tensor): Tensor {
  return wrap(native().swiglu(handleOf(h1, 'swiglu', 'h1'), handleOf(h3, 'swiglu', 'h3')));
}

export function swigluBackward(h1: Tensor, h3: Tensor, da: Tensor): { dh1: Tensor; dh3: Tensor } {
  const op = 'swiglu_backward';
  const [dh1, dh3] = native().swigluBackward(handleOf(h1, op, 'h1'), handleOf(h3, op, 'h3'), handleOf(da, op, 'da'));
  return { dh1: wrap(dh1), dh3: wrap(dh3) };
}

/** Per-expert and per-group routing statistics, computed on the device. */
export function routingStats(partition: Partition, routing: Routing, layout: MoeLayout): RoutingStats {
  const op = 'moe_routing_stats';
  const L = checkLayout(layout, op);
  const [expertStats, groupStats] = native().moeRoutingStats(
    handleOf(partition.rowGroup, op, 'partition.rowGroup'), handleOf(partition.counts, op, 'partition.counts'),
    handleOf(partition.offsets, op, 'partition.offsets'), handleOf(partition.perm, op, 'partition.perm'),
    handleOf(routing.expertOffsets, op, 'routing.expertOffsets'), handleOf(routing.slotRow, op, 'routing.slotRow'),
    handleOf(routing.slotGate, op, 'routing.slotGate'), handleOf(routing.rowSlots, op, 'routing.rowSlots'),
    L.experts, L.groupOfModality);
  return bundle({ expertStats: wrap(expertStats), groupStats: wrap(groupStats) });
}

/**
 * Mixture-of-depths selection (docs/TRAINING.md, "The model"): the k rows with modality ≥ 0 and the largest scores
 * (ties to the smaller row), as int32 [k] in increasing row order.
 */
export function modSelect(scores: Tensor, modality: Tensor, k: number): Tensor {
  const op = 'mod_select';
  if (!Number.isInteger(k) || k < 0) throw new MomaError('ERR_ARG', `${op}: k must be an integer >= 0, got ${String(k)}`);
  return wrap(native().modSelect(handleOf(scores, op, 'scores'), handleOf(modality, op, 'modality'), k));
}

/** For int32 ids [n]: the index where each row's run of equal ids starts (attention segments of a row subset). */
export function segmentStarts(seg: Tensor): Tensor {
  return wrap(native().segmentStarts(handleOf(seg, 'segment_starts', 'seg')));
}
