/**
 * Expert parallelism for expert choice (issue 15): the MoMa FFN (docs/MOE.md) with the experts of
 * each modality group spread over the ranks of the process group, and routing that equals one
 * process routing the ranks' micro-batches concatenated in rank order.
 *
 * Placement: N = expertParallel ranks (the EP group: config.group, default the world); rank r holds experts
 * [r·E_g/N, (r+1)·E_g/N) of each group g (E_g divisible by N), their w1 / w3 / w2 stacked in
 * global expert order; the router [dModel, E] is replicated.
 *
 * Forward on rank r, with its T rows (every rank the same T):
 *   1. logits = x·router [T, E] (its own rows).
 *   2. all-gather the logits and the modality ids: every rank holds the [N·T, E] logits of the
 *      group's N·T rows, rank h's rows at [h·T, (h+1)·T).
 *   3. every rank computes the same partition, scores (Gumbel noise keyed by the global row index,
 *      so it equals the single process's) and route() over all N·T rows: the capacities come from
 *      the group counts over all N·T rows and ties go to the smaller global row.
 *   4. the host reads the routing (expertOffsets, slotRow, slotGate: E + 1 + 2·R numbers, one host
 *      sync per layer) and plans the exchange (planExchange): which of its rows go to which rank,
 *      and the orders on both sides.
 *   5. all-to-all: each rank sends the rows picked by each expert to the expert's rank (in the
 *      order destination, expert, slot); the expert's rank puts them in expert-major slot order
 *      (the single process's order restricted to its experts), runs the grouped SwiGLU GEMMs on
 *      its local experts, and sends the outputs back with the reverse all-to-all.
 *   6. the home rank puts the outputs in its own slot order (expert, then slot) and combines them
 *      with the gates: y[t] = Σ_j gate · out, in the single process's order of j.
 * Backward mirrors it: dout = gate · dy is sent to the experts' ranks, the grouped GEMM backward
 * runs there (the expert weight gradients stay on their rank: they are complete, every row that
 * reached the expert from any rank is in them), dxd comes back and is combined on the home rank.
 * The score gradients need no reduce-scatter: the home rank holds, for each of its rows, the
 * outputs of the experts that took it, so gateGrad runs there on its own rows, and the router
 * backward is row-local. The router gradient returned is this rank's rows' share: its sum over the
 * ranks is the single process's (the data-parallel all-reduce of a replicated parameter sums it).
 *
 * Bytes per layer and rank (float32 x of width d, T rows per rank, S slots taken from this rank's
 * rows, S' slots of this rank's experts): all-gather 4·T·(E + 1) sent, 4·N·T·(E + 1) received;
 * forward all-to-alls 2·4·d·(S + S') (x out, expert outputs back), backward the same again.
 */
import { concat, matmul } from '../ops';
import { tensor } from '../creation';
import { allGather, allToAll, Group, isInitialized, world } from '../distributed/process_group';
import { MomaError } from '../errors';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import {
  expertsBackward, expertsForward, MoMaFFN, routerBackward, MoMaFFNConfig, MoMaFFNParameterName, MoMaFFNParameterOwner, MoMaFFNParameters, moeLayoutOf,
} from './moma_ffn';
import {
  combineRows, gateGrad, gatherRows, MoeLayout, moePartition, Partition, route, routerScores, Routing,
} from './ops';

export interface ExpertParallelConfig extends MoMaFFNConfig {
  /** Ranks the experts of each group are spread over: the EP group's size (each E_g divisible by it). */
  expertParallel: number;
  /** The EP group (a sub-group of expertParallel ranks, from newGroup); default the world, which then must have expertParallel ranks. */
  group?: Group;
}

/** Registration order of the parameters (as MoMaFFN's): w1, w3, w2 hold this rank's experts only. */
const PARAMETER_NAMES: readonly MoMaFFNParameterName[] = ['w1', 'w3', 'w2', 'router'];

/**
 * The global expert ids rank `rank` of `size` holds: experts [rank·E_g/size, (rank+1)·E_g/size)
 * of each group g, ascending (group order). ERR_ARG when a group's expert count is not divisible by size.
 */
export function localExperts(layout: MoeLayout, rank: number, size: number): number[] {
  if (!Number.isInteger(size) || size < 1) throw new MomaError('ERR_ARG', `expert parallel: expertParallel must be an integer >= 1, got ${String(size)}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) throw new MomaError('ERR_ARG', `expert parallel: rank must be an integer in [0, ${size}), got ${String(rank)}`);
  const out: number[] = [];
  let begin = 0;
  layout.experts.forEach((count, g) => {
    if (count % size !== 0) {
      throw new MomaError('ERR_ARG', `expert parallel: group ${g} has ${count} experts, not divisible by expertParallel ${size}`);
    }
    const share = count / size;
    for (let e = begin + rank * share; e < begin + (rank + 1) * share; ++e) out.push(e);
    begin += count;
  });
  return out;
}

/**
 * Rank `rank` of `size`'s experts of a stacked [E, …] tensor (experts in global order), as
 * [E_local, …] in the order of localExperts (one run per group); a new tensor.
 */
export function sliceLocalExperts(stacked: Tensor, layout: MoeLayout, rank: number, size: number): Tensor {
  localExperts(layout, rank, size);
  const runs: Tensor[] = [];
  let begin = 0;
  for (const count of layout.experts) {
    const share = count / size;
    runs.push(stacked.slice(0, begin + rank * share, begin + (rank + 1) * share));
    begin += count;
  }
  if (runs.length === 1) return runs[0]!;
  const out = concat(runs, 0);
  for (const r of runs) r.dispose();
  return out;
}

/**
 * The inverse of sliceLocalExperts over a group: from every rank's [E_local, …] slices
 * concatenated in rank order ([size·E_local, …], what an all-gather returns), the stacked
 * [E, …] tensor in global expert order; a new tensor.
 */
export function stackGatheredExperts(gathered: Tensor, layout: MoeLayout, size: number): Tensor {
  const E = layout.experts.reduce((a, b) => a + b, 0);
  const perRank = E / size;
  const order = new Int32Array(E);
  let e = 0;
  let runStart = 0;  // where group g's run starts inside one rank's slices
  for (const count of layout.experts) {
    const share = count / size;
    for (let j = 0; j < count; ++j, ++e) order[e] = Math.floor(j / share) * perRank + runStart + (j % share);
    runStart += share;
  }
  const index = tensor(order, { dtype: 'int32', device: gathered.device });
  const out = gathered.indexSelect(0, index);
  index.dispose();
  return out;
}

/** The host-side routing one forward exchanges by (every rank reads the same one). */
export interface GlobalRouting {
  /** [E + 1]: expert e owns slots [expertOffsets[e], expertOffsets[e + 1]). */
  expertOffsets: ArrayLike<number>;
  /** [R]: the global row (rank h's rows are [h·T, (h+1)·T)) of each slot. */
  slotRow: ArrayLike<number>;
  /** [R]: the gate of each slot. */
  slotGate: ArrayLike<number>;
}

/**
 * The exchange of one forward as seen by one rank: its rows' slots (the home side) and its
 * experts' slots (the expert side). Orders: "home" = this rank's rows' slots, expert then slot
 * ascending; "send" = grouped by destination rank, then expert, then slot; "recv" = grouped by
 * source rank, then expert, then slot; "local" = this rank's experts' slots, expert then slot
 * ascending (the single process's slot order restricted to them).
 */
export interface ExchangePlan {
  /** Rows sent to each rank, and received from each rank (all-to-all counts of the forward). */
  sendCounts: number[];
  recvCounts: number[];
  /** [S] local row of each slot in send order; its gate. */
  sendRows: Int32Array;
  sendGate: Float32Array;
  /** [S] send position of each home slot. */
  homeFromSend: Int32Array;
  /** [S] local row of each home slot; its gate; [E + 1] home slots per expert (prefix sums). */
  homeSlotRow: Int32Array;
  homeGate: Float32Array;
  homeExpertOffsets: Int32Array;
  /** [T, W]: home slot where local expert j of row t's group took it, or -1. */
  homeRowSlots: Int32Array;
  /** [S'] recv position of each local slot, and the local position of each recv slot. */
  localFromRecv: Int32Array;
  recvFromLocal: Int32Array;
  /** [E_local + 1]: local slots per local expert (prefix sums). */
  localOffsets: Int32Array;
}

/**
 * Plans the exchange of rank `rank` of `size` (T rows each) from the routing every rank computed:
 * pure host arithmetic, the same routing giving every rank matching send and receive counts.
 */
export function planExchange(routing: GlobalRouting, options: { layout: MoeLayout; rank: number; size: number; rows: number }): ExchangePlan {
  const { layout, rank, size, rows: T } = options;
  const E = layout.experts.reduce((a, b) => a + b, 0);
  const W = Math.max(...layout.experts);
  const off = routing.expertOffsets;
  const owner = new Int32Array(E);
  const localIndex = new Int32Array(E);
  for (let p = 0; p < size; ++p) for (const e of localExperts(layout, p, size)) owner[e] = p;
  {
    let begin = 0;
    for (const count of layout.experts) {
      for (let j = 0; j < count; ++j) localIndex[begin + j] = j;
      begin += count;
    }
  }
  const home = (s: number): number => Math.floor((routing.slotRow[s] as number) / T);

  // home side: this rank's rows' slots, expert then slot ascending
  const homeExpertOffsets = new Int32Array(E + 1);
  const homeSlots: number[] = [];
  for (let e = 0; e < E; ++e) {
    for (let s = off[e] as number; s < (off[e + 1] as number); ++s) if (home(s) === rank) homeSlots.push(s);
    homeExpertOffsets[e + 1] = homeSlots.length;
  }
  const S = homeSlots.length;
  const homeSlotRow = new Int32Array(S);
  const homeGate = new Float32Array(S);
  const homeRowSlots = new Int32Array(T * W).fill(-1);
  for (let e = 0; e < E; ++e) {
    for (let i = homeExpertOffsets[e]!; i < homeExpertOffsets[e + 1]!; ++i) {
      const s = homeSlots[i]!;
      const row = (routing.slotRow[s] as number) - rank * T;
      homeSlotRow[i] = row;
      homeGate[i] = routing.slotGate[s] as number;
      homeRowSlots[row * W + localIndex[e]!] = i;
    }
  }
  const sendCounts = new Array<number>(size).fill(0);
  const sendRows = new Int32Array(S);
  const sendGate = new Float32Array(S);
  const homeFromSend = new Int32Array(S);
  let k = 0;
  for (let p = 0; p < size; ++p) {
    for (const e of localExperts(layout, p, size)) {
      for (let i = homeExpertOffsets[e]!; i < homeExpertOffsets[e + 1]!; ++i, ++k) {
        sendRows[k] = homeSlotRow[i]!;
        sendGate[k] = homeGate[i]!;
        homeFromSend[i] = k;
      }
      sendCounts[p]! += homeExpertOffsets[e + 1]! - homeExpertOffsets[e]!;
    }
  }

  // expert side: slots of this rank's experts; within an expert the slots are in row order, so
  // those of source rank h are one run
  const mine = localExperts(layout, rank, size);
  const runs = mine.map(() => new Array<number>(size).fill(0));  // runs[l][h]: slots of local expert l from rank h
  mine.forEach((e, l) => {
    for (let s = off[e] as number; s < (off[e + 1] as number); ++s) runs[l]![home(s)]! += 1;
  });
  const recvCounts = new Array<number>(size).fill(0);
  for (let h = 0; h < size; ++h) for (let l = 0; l < mine.length; ++l) recvCounts[h]! += runs[l]![h]!;
  const localOffsets = new Int32Array(mine.length + 1);
  mine.forEach((e, l) => { localOffsets[l + 1] = localOffsets[l]! + (off[e + 1] as number) - (off[e] as number); });
  const Sl = localOffsets[mine.length]!;
  const localFromRecv = new Int32Array(Sl);
  const recvFromLocal = new Int32Array(Sl);
  let recvStart = 0;
  for (let h = 0; h < size; ++h) {
    let r = recvStart;
    mine.forEach((_, l) => {
      let before = 0;  // slots of local expert l from ranks < h
      for (let q = 0; q < h; ++q) before += runs[l]![q]!;
      for (let i = 0; i < runs[l]![h]!; ++i, ++r) {
        const local = localOffsets[l]! + before + i;
        localFromRecv[local] = r;
        recvFromLocal[r] = local;
      }
    });
    recvStart += recvCounts[h]!;
  }
  return {
    sendCounts, recvCounts, sendRows, sendGate, homeFromSend, homeSlotRow, homeGate, homeExpertOffsets, homeRowSlots,
    localFromRecv, recvFromLocal, localOffsets,
  };
}

/** The device tensors of a plan, for one forward and its backward. */
interface DevicePlan {
  sendCounts: number[];
  recvCounts: number[];
  sendRows: Tensor;
  sendGate: Tensor;
  homeFromSend: Tensor;
  homeSlotRow: Tensor;
  homeGate: Tensor;
  homeExpertOffsets: Tensor;
  homeRowSlots: Tensor;
  localFromRecv: Tensor;
  recvFromLocal: Tensor;
  localOffsets: Tensor;
}

export interface ExpertParallelContext extends Disposable {
  /** The partition, scores and routing of all N·T rows of the group (the same on every rank). */
  readonly partition: Partition;
  readonly scores: Tensor;
  readonly routing: Routing;
  /** The exchange this forward used. */
  readonly plan: ExchangePlan;
  dispose(): void;
}

interface Saved extends ExpertParallelContext {
  x: Tensor;
  weights: MoMaFFNParameters;
  device: DevicePlan;
  /** This rank's rows of the scores and of the row groups. */
  localScores: Tensor;
  localRowGroup: Tensor;
  xd: Tensor;
  h1: Tensor | null;
  h3: Tensor | null;
  a: Tensor;
  /** The expert outputs of this rank's rows' slots, in home order. */
  homeOut: Tensor;
  disposed: boolean;
}

/**
 * The MoMa FFN with expert parallelism over the process group (see the top of this file). Built
 * from the same config and seed as a MoMaFFN, it holds that layer's router and the slices of its
 * expert weights for this rank's experts, so the two compute the same function.
 */
export class ExpertParallelMoMaFFN {
  readonly config: MoMaFFN['config'] & { expertParallel: number };
  readonly layout: MoeLayout;
  readonly numExperts: number;
  /** This rank's index in the EP group. */
  readonly rank: number;
  /** The EP group (undefined: the world). */
  readonly group: Group | undefined;
  /** Global ids of this rank's experts, ascending: w1[l] is expert localExperts[l]. */
  readonly localExperts: readonly number[];
  private readonly owner: MoMaFFNParameterOwner;
  private readonly owned: Map<MoMaFFNParameterName, Tensor> | null;

  /** Needs the process group (distributed.init()); the EP group (config.group, default the world) must have config.expertParallel ranks. `owner` as for MoMaFFN. */
  constructor(config: ExpertParallelConfig, owner?: MoMaFFNParameterOwner) {
    const size = config.expertParallel;
    const layout = moeLayoutOf(config);
    localExperts(layout, 0, size);  // validates expertParallel and divisibility before anything else
    if (!isInitialized()) {
      throw new MomaError('ERR_DIST', 'ExpertParallelMoMaFFN: no process group: call `await distributed.init()` first (one rank per expert-parallel rank)');
    }
    const w = config.group ?? { rank: world().rank, size: world().worldSize };
    if (w.size !== size) {
      throw new MomaError('ERR_ARG', `ExpertParallelMoMaFFN: expertParallel is ${size}, but the ${config.group === undefined ? 'process group (the default expert-parallel group)' : 'expert-parallel group'} has ${w.size} ranks`);
    }
    this.group = config.group;
    const { expertParallel: _expertParallel, group: _group, ...ffnConfig } = config;
    const full = new MoMaFFN(ffnConfig);
    this.config = { ...full.config, expertParallel: size };
    this.layout = full.layout;
    this.numExperts = full.numExperts;
    this.rank = w.rank;
    this.localExperts = localExperts(layout, w.rank, size);
    const initial = new Map<MoMaFFNParameterName, Tensor>();
    for (const name of ['w1', 'w3', 'w2'] as const) initial.set(name, this.localSlice(full.parameters().get(name)!));
    initial.set('router', full.router.clone());
    full.dispose();
    if (owner === undefined) {
      const owned = new Map<MoMaFFNParameterName, Tensor>();
      this.owned = owned;
      this.owner = { register: (name, t) => { owned.set(name, t); }, read: (name) => owned.get(name) as Tensor };
    } else {
      this.owned = null;
      this.owner = owner;
    }
    for (const name of PARAMETER_NAMES) this.owner.register(name, initial.get(name)!);
  }

  /** This rank's experts of a stacked [E, …] tensor, as [E_local, …] (one run per group). */
  localSlice(stacked: Tensor): Tensor {
    return sliceLocalExperts(stacked, this.layout, this.rank, this.config.expertParallel);
  }

  /** Named parameters: w1, w3, w2 (this rank's experts), router (replicated). */
  parameters(): Map<string, Tensor> {
    return new Map(PARAMETER_NAMES.map((name) => [name, this.owner.read(name)]));
  }

  private current(): MoMaFFNParameters {
    const { owner } = this;
    return { w1: owner.read('w1'), w2: owner.read('w2'), w3: owner.read('w3'), router: owner.read('router') };
  }

  /**
   * y [T, dModel] for this rank's rows x [T, dModel] of modality ids `modality` (int32 [T], -1 =
   * padding); every rank of the group calls it with the same T. Collective: every rank must call
   * it, in the same order. With `training` and config.gumbel, the noise comes from `generator`,
   * which must be in the same state on every rank. Resolves after the one host read of the routing.
   */
  async forward(x: Tensor, modality: Tensor, options: { training?: boolean; generator?: Generator } = {}): Promise<{ y: Tensor; ctx: ExpertParallelContext }> {
    const op = 'ExpertParallelMoMaFFN.forward';
    const { dModel } = this.config;
    if (!(x instanceof Tensor) || x.ndim !== 2 || x.shape[1] !== dModel) {
      throw new MomaError('ERR_SHAPE', `${op}: x must be [T, ${dModel}], got ${x instanceof Tensor ? `[${x.shape.join(', ')}]` : typeof x}`);
    }
    if (!(modality instanceof Tensor) || modality.ndim !== 1 || modality.shape[0] !== x.shape[0] || modality.dtype !== 'int32') {
      throw new MomaError('ERR_SHAPE', `${op}: modality must be int32 [${x.shape[0]}]`);
    }
    const noisy = options.training === true && this.config.gumbel;
    if (noisy && !(options.generator instanceof Generator)) throw new MomaError('ERR_ARG', `${op}: gumbel routing in training needs options.generator`);
    const { layout, rank } = this;
    const size = this.config.expertParallel;
    const T = x.shape[0]!;
    const params = this.current();
    const compute = (w: Tensor): Tensor => (w.dtype === x.dtype ? w : w.astype(x.dtype));
    const weights = { w1: compute(params.w1), w2: compute(params.w2), w3: compute(params.w3), router: params.router };
    const x32 = x.dtype === 'float32' ? x : x.astype('float32');
    const logits = matmul(x32, params.router);
    if (x32 !== x) x32.dispose();
    const allLogits = allGather(logits, { group: this.group });
    const allModality = allGather(modality, { group: this.group });
    logits.dispose();
    const partition = moePartition(allModality, layout);
    allModality.dispose();
    const scores = routerScores(allLogits, { rowGroup: partition.rowGroup, layout, fn: this.config.router, gumbel: noisy ? options.generator : undefined });
    allLogits.dispose();
    const routing = route(scores, partition, { layout, mode: this.config.routing, capacityFactor: this.config.capacityFactor, topK: this.config.topK });
    const [expertOffsets, slotRow, slotGate] = await Promise.all([routing.expertOffsets.toArray(), routing.slotRow.toArray(), routing.slotGate.toArray()]);
    const plan = planExchange({ expertOffsets, slotRow, slotGate }, { layout, rank, size, rows: T });
    const device = this.upload(plan, T);
    const sent = gatherRows(x, device.sendRows);
    const received = allToAll(sent, { sendCounts: plan.sendCounts, recvCounts: plan.recvCounts, group: this.group });
    sent.dispose();
    const xd = gatherRows(received, device.localFromRecv);
    received.dispose();
    const { a, h1, h3, out } = expertsForward(xd, weights, device.localOffsets);
    const outRecv = gatherRows(out, device.recvFromLocal);
    out.dispose();
    const back = allToAll(outRecv, { sendCounts: plan.recvCounts, recvCounts: plan.sendCounts, group: this.group });
    outRecv.dispose();
    const homeOut = gatherRows(back, device.homeFromSend);
    back.dispose();
    const y = combineRows(homeOut, device.homeRowSlots, device.homeGate);
    const localScores = scores.slice(0, rank * T, (rank + 1) * T);
    const localRowGroup = partition.rowGroup.slice(0, rank * T, (rank + 1) * T);
    const saved: Saved = {
      partition, scores, routing, plan, x, weights, device, localScores, localRowGroup, xd, h1, h3, a, homeOut, disposed: false,
      dispose(): void {
        if (this.disposed) return;
        this.disposed = true;
        partition.dispose();
        routing.dispose();
        for (const t of [scores, localScores, localRowGroup, xd, h1, h3, a, homeOut]) t?.dispose();
        for (const value of Object.values(device)) if (value instanceof Tensor) value.dispose();
        for (const name of ['w1', 'w2', 'w3'] as const) if (weights[name] !== params[name]) weights[name].dispose();
      },
      [Symbol.dispose](): void {
        this.dispose();
      },
    };
    return { y, ctx: saved };
  }

  private upload(plan: ExchangePlan, T: number): DevicePlan {
    const device = this.config.device;
    const i32 = (values: Int32Array, shape: number[] = [values.length]): Tensor => tensor(values, { dtype: 'int32', shape, device });
    const f32 = (values: Float32Array): Tensor => tensor(values, { dtype: 'float32', shape: [values.length], device });
    const W = Math.max(...this.layout.experts);
    return {
      sendCounts: plan.sendCounts, recvCounts: plan.recvCounts,
      sendRows: i32(plan.sendRows), sendGate: f32(plan.sendGate), homeFromSend: i32(plan.homeFromSend),
      homeSlotRow: i32(plan.homeSlotRow), homeGate: f32(plan.homeGate), homeExpertOffsets: i32(plan.homeExpertOffsets),
      homeRowSlots: i32(plan.homeRowSlots, [T, W]), localFromRecv: i32(plan.localFromRecv), recvFromLocal: i32(plan.recvFromLocal),
      localOffsets: i32(plan.localOffsets),
    };
  }

  /**
   * dx [T, dModel] for this rank's rows and the float32 gradients: w1, w3, w2 of this rank's
   * experts (complete: not to be reduced over the expert-parallel group) and router, this rank's
   * rows' share (its sum over the group is the router's gradient). Collective, like forward.
   */
  backward(ctx: ExpertParallelContext, dy: Tensor): { dx: Tensor; grads: MoMaFFNParameters } {
    const op = 'ExpertParallelMoMaFFN.backward';
    const saved = ctx as Saved;
    if (saved.disposed === undefined || saved.homeOut === undefined) throw new MomaError('ERR_ARG', `${op}: ctx must come from forward()`);
    if (saved.disposed) throw new MomaError('ERR_DISPOSED', `${op}: the forward context was disposed`);
    if (saved.h1 === null || saved.h3 === null) throw new MomaError('ERR_ARG', `${op}: the forward ran under noGrad, so it kept no activations to differentiate`);
    if (!(dy instanceof Tensor) || dy.shape.join() !== saved.x.shape.join()) {
      throw new MomaError('ERR_SHAPE', `${op}: dy must have the shape of x [${saved.x.shape.join(', ')}]`);
    }
    const { layout } = this;
    const { device: plan, weights } = saved;
    const dyc = dy.dtype === saved.homeOut.dtype ? dy : dy.astype(saved.homeOut.dtype);
    const dscores = gateGrad(saved.homeOut, dyc, { slotRow: plan.homeSlotRow, expertOffsets: plan.homeExpertOffsets, layout });
    const doutSent = gatherRows(dyc, plan.sendRows, plan.sendGate);
    if (dyc !== dy) dyc.dispose();
    const doutReceived = allToAll(doutSent, { sendCounts: plan.sendCounts, recvCounts: plan.recvCounts, group: this.group });
    doutSent.dispose();
    const dout = gatherRows(doutReceived, plan.localFromRecv);
    doutReceived.dispose();
    const { dxd, dw1, dw2, dw3 } = expertsBackward({ xd: saved.xd, h1: saved.h1, h3: saved.h3, a: saved.a }, dout, weights, plan.localOffsets);
    dout.dispose();
    const dxdRecv = gatherRows(dxd, plan.recvFromLocal);
    dxd.dispose();
    const dxdBack = allToAll(dxdRecv, { sendCounts: plan.recvCounts, recvCounts: plan.sendCounts, group: this.group });
    dxdRecv.dispose();
    const dxdHome = gatherRows(dxdBack, plan.homeFromSend);
    dxdBack.dispose();
    const dxFfn = combineRows(dxdHome, plan.homeRowSlots);
    dxdHome.dispose();
    const { dx, drouter } = routerBackward({ x: saved.x, scores: saved.localScores, rowGroup: saved.localRowGroup, router: weights.router }, dscores, dxFfn,
      { layout, fn: this.config.router });
    return { dx, grads: { w1: dw1, w2: dw2, w3: dw3, router: drouter } };
  }

  /** Frees the parameters when the layer owns them. */
  dispose(): void {
    if (this.owned === null) return;
    for (const t of this.owned.values()) t.dispose();
    this.owned.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
