/**
 * Expert parallelism with an all-gather dispatch: the synchronous form of the MoMa FFN (docs/MOE.md)
 * with its experts spread over an expert-parallel (EP) group, used inside the autograd model in
 * training (MoEFeedForward, lib/model/layers.ts). No host reads: every shape is a host-known bound.
 *
 * Placement as lib/moe/expert_parallel.ts (localExperts): rank r of N holds experts
 * [r·E_g/N, (r+1)·E_g/N) of each group g; the router is replicated. Every collective runs over the
 * placement's group (a sub-group of N ranks when the world holds D of them; default the world).
 *
 * Forward on rank r, with its T rows (every rank the same T), `rows: 'split'`:
 *   1. all-gather x [N·T, d] and the modality ids: the group's micro-batch, rank h's rows at
 *      [h·T, (h+1)·T) (the single process's micro-batch of the N ranks' rows in rank order).
 *   2. every rank computes the same logits, partition, scores (Gumbel noise keyed by the global
 *      row: the generator must be in the same state on every rank) and route() over all N·T rows.
 *   3. the slots of this rank's experts, in the single process's slot order restricted to them,
 *      found on the device (localSlots below): their rows, gates and per-expert offsets, padded
 *      to a host bound; the grouped SwiGLU GEMMs run on those slots only.
 *   4. the expert outputs of every rank's local slots are all-gathered ([N·R_l, d], with their
 *      gates and global slot ids), and rank r combines its own rows from them: y_t = Σ_j gate ·
 *      out over the slots of row t in the single process's order of j, so y is bit for bit the
 *      single process's (a reduce-scatter of per-rank partial sums would add in another order,
 *      and expert choice's top-k later turns such ulps into different picks).
 * Backward: all-gather dy; for its experts' slots dout = gate·dy and the grouped GEMM backward (the
 * expert weight gradients are complete and local: every row of the group that reached the expert
 * is in them); dxd of every rank's slots is all-gathered and combined on its own rows as in the
 * forward; the score gradients of its experts' slots (gateGrad, each (row, expert) on one rank
 * only, so the sum is exact) are reduce-scattered to their rows' ranks; then the router backward
 * on its own rows (its share of the replicated router's gradient: the sum over the group's ranks
 * is the single process's, what the data-parallel all-reduce adds up).
 *
 * `rows: 'replicated'` (evaluation: every rank of the group passes the same rows, no gradient):
 * no gather of x; every rank combines all the rows.
 *
 * Bytes per layer and rank (b bytes per activation, R_l ≈ c·N·T/N local slots): forward all-gather
 * of x b·d·T sent, b·d·N·T received, of the expert outputs b·d·R_l sent, b·d·N·R_l received; the
 * backward the same again (dy, dxd) plus the score gradients' reduce-scatter 4·E·N·T. About N
 * times the rows of the all-to-all form (expert_parallel.ts), in exchange for no host read.
 * FLOPs: the expert GEMMs of this rank's experts only (about 1/N of the layer's), plus the router
 * logits of all N·T rows (2·d·E·N·T, replicated) and O(R·E) index arithmetic.
 */
import { tidy, untrack } from '../autograd/scope';
import { arange, tensor, zeros } from '../creation';
import { allGather, Group, reduceScatter } from '../distributed/process_group';
import { MomaError } from '../errors';
import { matmul, concat } from '../ops';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { localExperts } from './expert_parallel';
import { expertsBackward, expertsForward, MoMaFFNParameters, routerBackward } from './moma_ffn';
import {
  combineRows, gateGrad, gatherRows, MoeLayout, moePartition, Partition, route, RouterFn, routerScores, Routing, RoutingMode,
} from './ops';

/** This rank's place in its expert-parallel group. */
export interface ExpertPlacement {
  /** Rank in the EP group (its experts: localExperts(layout, rank, size)). */
  rank: number;
  /** Ranks in the EP group (N). */
  size: number;
  /**
   * The EP group's process group (a sub-group when the world holds several EP groups, D × N
   * training); default the world, which then must have `size` ranks.
   */
  group?: Group;
}

/** What the dispatch needs of the layer's config. */
export interface GatherDispatchConfig {
  layout: MoeLayout;
  router: RouterFn;
  gumbel: boolean;
  routing: Exclude<RoutingMode, 'threshold'>;
  capacityFactor: number;
  topK: number;
}

/** The local experts' slots of one routing (device tensors; see localSlots). */
interface LocalSlots {
  /** int32 [R_l]: global row of each local slot, -1 past the end. */
  slotRow: Tensor;
  /** float32 [R_l]: its gate (0 past the end). */
  slotGate: Tensor;
  /** int32 [E_l + 1]: local expert l owns local slots [offsets[l], offsets[l + 1]). */
  offsets: Tensor;
  /** int32 [E + 1]: the same offsets for every global expert (empty segments for the other ranks' experts): gateGrad's. */
  expertOffsets: Tensor;
  /** float32 [R_l]: the global slot of each local slot, -1 past the end (integer-valued). */
  globalSlot: Tensor;
}

export interface GatherDispatchContext {
  /** The partition, scores and routing of the group's rows (the same on every rank). */
  readonly partition: Partition;
  readonly scores: Tensor;
  readonly routing: Routing;
  /** The rows the routing was made on: the group's rows ([N·T, d]) when split, else x. */
  readonly rows: Tensor;
}

interface Saved extends GatherDispatchContext {
  x: Tensor;
  rowsMode: 'split' | 'replicated';
  weights: MoMaFFNParameters;
  local: LocalSlots;
  /** int32 [T, W]: this rank's rows' routing.rowSlots, each slot as its row in the all-gathered local slots. */
  homeSlots: Tensor;
  xd: Tensor;
  h1: Tensor | null;
  h3: Tensor | null;
  a: Tensor;
  out: Tensor;
}

/** Host tables of a placement on one device. */
interface DispatchTables {
  /** int32 [E_l]: the local experts' global ids, and those + 1. */
  ids: Tensor;
  idsNext: Tensor;
  /** float32 [E_l + 1, E_l]: row i sums the first i counts (exclusive prefix sums as a matmul). */
  prefix: Tensor;
  /** int32 [E + 1]: local experts with a global id below e. */
  before: Tensor;
}

/** 1 where a ≥ b, 0 where a ≤ b − 1 (integer-valued float32 tensors, broadcast). */
function atLeast(a: Tensor, b: Tensor): Tensor {
  return a.sub(b).add(1).maximum(0).minimum(1);
}

/**
 * The all-gather expert-parallel dispatch of one MoE layer on one rank (see the top of this
 * file). Holds the host tables of its placement; the weights come with each call.
 */
export class GatherDispatch {
  readonly placement: ExpertPlacement;
  /** Global ids of this rank's experts, ascending. */
  readonly localExperts: readonly number[];
  private readonly numExperts: number;
  private readonly tables = new Map<string, DispatchTables>();

  constructor(readonly config: GatherDispatchConfig, placement: ExpertPlacement) {
    this.localExperts = localExperts(config.layout, placement.rank, placement.size);
    if (placement.group !== undefined && (placement.group.size !== placement.size || placement.group.rank !== placement.rank)) {
      throw new MomaError('ERR_ARG', `expert parallel: placement rank ${placement.rank} of ${placement.size} does not match its group (rank ${placement.group.rank} of ${placement.group.size})`);
    }
    this.placement = { rank: placement.rank, size: placement.size, group: placement.group };
    this.numExperts = config.layout.experts.reduce((a, b) => a + b, 0);
  }

  /** The host tables on `device`, made once. */
  private tablesOn(device: string): DispatchTables {
    const cached = this.tables.get(device);
    if (cached !== undefined) return cached;
    const L = this.localExperts.length;
    const E = this.numExperts;
    const prefix = new Float32Array((L + 1) * L);
    for (let i = 0; i <= L; ++i) for (let l = 0; l < i; ++l) prefix[i * L + l] = 1;
    const before = new Int32Array(E + 1);
    for (let e = 0, count = 0; e <= E; ++e) {
      before[e] = count;
      if (this.localExperts.includes(e)) count++;
    }
    // kept across steps (the caller's tidy must not free them)
    const made = {
      ids: untrack(tensor(Int32Array.from(this.localExperts), { dtype: 'int32', device })),
      idsNext: untrack(tensor(Int32Array.from(this.localExperts, (e) => e + 1), { dtype: 'int32', device })),
      prefix: untrack(tensor(prefix, { shape: [L + 1, L], device })),
      before: untrack(tensor(before, { dtype: 'int32', device })),
    };
    this.tables.set(device, made);
    return made;
  }

  /** Slots an expert of group g can fill at most for `rows` rows. */
  private expertBound(g: number, rows: number): number {
    const count = this.config.layout.experts[g]!;
    if (this.config.routing === 'token-choice') return rows;
    return Math.min(rows, Math.ceil(Math.max(this.config.capacityFactor, 1) * rows / count) + 1);
  }

  /**
   * This rank's experts' slots of `routing` (over `rows` rows), found on the device: local slot p
   * of local expert l is global slot expertOffsets[e_l] + p − localOffsets[l]; global slot s of
   * expert e is local slot s − expertOffsets[e] + localOffsets[l(e)] when e is local. Counts are
   * float32 integers (exact below 2^24).
   */
  private localSlots(routing: Routing, rows: number): LocalSlots {
    const { layout } = this.config;
    const device = routing.slotRow.device;
    const t = this.tablesOn(device);
    const L = this.localExperts.length;
    const R = routing.slotRow.shape[0]!;
    const W = routing.rowSlots.shape[1]!;
    if (R + 1 >= 2 ** 24 || rows * W >= 2 ** 24) throw new MomaError('ERR_ARG', `expert parallel: ${R} slots over ${rows} rows exceed the 2^24 the device index arithmetic allows`);
    const groupOf: number[] = [];
    layout.experts.forEach((count, g) => { for (let j = 0; j < count; ++j) groupOf.push(g); });
    const Rl = Math.max(1, Math.min(R, this.localExperts.reduce((sum, e) => sum + this.expertBound(groupOf[e]!, rows), 0)));
    return tidy(() => {
      const off = routing.expertOffsets.astype('float32');
      const begins = off.indexSelect(0, t.ids);
      const counts = off.indexSelect(0, t.idsNext).sub(begins);
      const lo = matmul(t.prefix, counts.reshape([L, 1])).reshape([L + 1]);  // local offsets
      // local slot p → local expert l (L: past the end) → global slot
      const p = arange(0, Rl, { dtype: 'float32', device });
      const lOf = atLeast(p.reshape([Rl, 1]), lo.slice(0, 1, L + 1).reshape([1, L])).sum(1);
      const valid = lOf.neg().add(L).minimum(1);
      const lIndex = lOf.minimum(L - 1).astype('int32');
      const global = begins.indexSelect(0, lIndex).add(p).sub(lo.indexSelect(0, lIndex)).mul(valid).astype('int32');
      const slotRow = routing.slotRow.astype('float32').indexSelect(0, global).add(1).mul(valid).sub(1).astype('int32');
      const slotGate = routing.slotGate.indexSelect(0, global).mul(valid);
      const offsets = lo.astype('int32');
      const globalSlot = global.astype('float32').add(1).mul(valid).sub(1);
      const expertOffsets = offsets.indexSelect(0, t.before);
      return { slotRow, slotGate, offsets, expertOffsets, globalSlot };
    });
  }

  /**
   * The slots of rows [first, first + home) (this rank's rows) of routing.rowSlots as rows of
   * the all-gathered local slots ([N·R_l]: rank p's local slots at [p·R_l, (p+1)·R_l)), -1 where
   * not taken: every rank's global slot ids are all-gathered and inverted by a scatter-add
   * (every global slot is one rank's local slot exactly once; the slots past the end land in a
   * spare entry R). Combining over them adds the experts' outputs in the single process's order.
   */
  private homeSlots(routing: Routing, local: LocalSlots, first: number, home: number): Tensor {
    const R = routing.slotRow.shape[0]!;
    const W = routing.rowSlots.shape[1]!;
    const device = routing.slotRow.device;
    const slotAll = allGather(local.globalSlot, { group: this.placement.group });
    const slots = tidy(() => {
      const n = slotAll.shape[0]!;
      const spare = (v: Tensor): Tensor => v.add(v.neg().maximum(0).minimum(1).mul(R + 1)).astype('int32');  // -1 → R
      const position = zeros([R + 1], { device }).scatterAdd(0, spare(slotAll), arange(1, n + 1, { dtype: 'float32', device })).slice(0, 0, R).sub(1);
      const lookup = concat([position, tensor(new Float32Array([-1]), { device })], 0);
      const mine = routing.rowSlots.slice(0, first, first + home).astype('float32');
      return lookup.indexSelect(0, spare(mine).reshape([home * W])).reshape([home, W]).astype('int32');
    });
    slotAll.dispose();
    return slots;
  }

  /**
   * y [T, dModel] for this rank's rows x [T, dModel] of modality ids `modality` (int32 [T]) with
   * this rank's expert weights (w1, w3, w2 [E_local, …]) and the router. Collective over the EP
   * group (every rank the same T, the same layers in the same order); `rows` as in the file comment.
   */
  forward(x: Tensor, modality: Tensor, params: MoMaFFNParameters,
    options: { rows: 'split' | 'replicated'; training?: boolean; generator?: Generator }): { y: Tensor; ctx: GatherDispatchContext } {
    const { layout } = this.config;
    // bf16 activations with float32 parameters (mixed precision): the expert GEMMs read bf16 copies
    const compute = (w: Tensor): Tensor => (w.dtype === x.dtype ? w : w.astype(x.dtype));
    const weights = { w1: compute(params.w1), w2: compute(params.w2), w3: compute(params.w3), router: params.router };
    const split = options.rows === 'split';
    const noisy = options.training === true && this.config.gumbel;
    if (noisy && !(options.generator instanceof Generator)) throw new MomaError('ERR_ARG', 'expert parallel forward: gumbel routing in training needs options.generator');
    const group = { group: this.placement.group };
    const rows = split ? allGather(x, group) : x;
    const rowModality = split ? allGather(modality, group) : modality;
    const partition = moePartition(rowModality, layout);
    if (rowModality !== modality) rowModality.dispose();
    const rows32 = rows.dtype === 'float32' ? rows : rows.astype('float32');
    const logits = matmul(rows32, weights.router);
    if (rows32 !== rows) rows32.dispose();
    const scores = routerScores(logits, { rowGroup: partition.rowGroup, layout, fn: this.config.router, gumbel: noisy ? options.generator : undefined });
    logits.dispose();
    const routing = route(scores, partition, { layout, mode: this.config.routing, capacityFactor: this.config.capacityFactor, topK: this.config.topK });
    const N = rows.shape[0]!;
    const local = this.localSlots(routing, N);
    const xd = gatherRows(rows, local.slotRow);
    const { a, h1, h3, out } = expertsForward(xd, weights, local.offsets);
    const homeSlots = split ? this.homeSlots(routing, local, this.placement.rank * x.shape[0]!, x.shape[0]!) : this.homeSlots(routing, local, 0, N);
    const outAll = allGather(out, group);
    const gateAll = allGather(local.slotGate, group);
    const y = combineRows(outAll, homeSlots, gateAll);
    outAll.dispose();
    gateAll.dispose();
    const saved: Saved = { partition, scores, routing, rows, x, rowsMode: options.rows, weights, local, homeSlots, xd, h1, h3, a, out };
    return { y, ctx: saved };
  }

  /**
   * dx [T, dModel] for this rank's rows and the float32 gradients: w1, w3, w2 of this rank's
   * experts (complete for the group's rows) and router (this rank's rows' share). Collective,
   * like forward; only after a 'split' forward that kept its activations.
   */
  backward(ctx: GatherDispatchContext, dy: Tensor): { dx: Tensor; grads: MoMaFFNParameters } {
    const op = 'expert parallel backward';
    const saved = ctx as Saved;
    if (saved.local === undefined) throw new MomaError('ERR_ARG', `${op}: ctx must come from GatherDispatch.forward()`);
    if (saved.rowsMode !== 'split') throw new MomaError('ERR_ARG', `${op}: a forward on replicated rows (evaluation) has no backward; train with each rank's own rows`);
    if (saved.h1 === null || saved.h3 === null) throw new MomaError('ERR_ARG', `${op}: the forward ran under noGrad, so it kept no activations to differentiate`);
    const { layout } = this.config;
    const { rank } = this.placement;
    const T = saved.x.shape[0]!;
    const dyc = dy.dtype === saved.out.dtype ? dy : dy.astype(saved.out.dtype);
    const group = { group: this.placement.group };
    const dyAll = allGather(dyc, group);
    if (dyc !== dy) dyc.dispose();
    const dscoresPartial = gateGrad(saved.out, dyAll, { slotRow: saved.local.slotRow, expertOffsets: saved.local.expertOffsets, layout });
    const dout = gatherRows(dyAll, saved.local.slotRow, saved.local.slotGate);
    dyAll.dispose();
    const { dxd, dw1, dw2, dw3 } = expertsBackward({ xd: saved.xd, h1: saved.h1, h3: saved.h3, a: saved.a }, dout, saved.weights, saved.local.offsets);
    dout.dispose();
    const dxdAll = allGather(dxd, group);
    dxd.dispose();
    const dxFfn = combineRows(dxdAll, saved.homeSlots);
    dxdAll.dispose();
    const dscores = reduceScatter(dscoresPartial, { op: 'sum', group: this.placement.group });
    dscoresPartial.dispose();
    const scores = saved.scores.slice(0, rank * T, (rank + 1) * T);
    const rowGroup = saved.partition.rowGroup.slice(0, rank * T, (rank + 1) * T);
    const { dx, drouter } = routerBackward({ x: saved.x, scores, rowGroup, router: saved.weights.router }, dscores, dxFfn, { layout, fn: this.config.router });
    scores.dispose();
    rowGroup.dispose();
    return { dx, grads: { w1: dw1, w2: dw2, w3: dw3, router: drouter } };
  }

  /** Frees the host tables' device copies. */
  dispose(): void {
    for (const t of this.tables.values()) for (const v of Object.values(t)) v.dispose();
    this.tables.clear();
  }
}
