/**
 * Expert parallel training (issue 15; Trainer option `expertParallel`, `moma train
 * --expert-parallel N`): the world of W ranks is D = W / N data-parallel replicas of an N-rank
 * expert-parallel (EP) group; EP groups are consecutive ranks [k·N, (k+1)·N). Each MoE layer of
 * the model keeps only its rank's experts and routes over the group with the all-gather dispatch
 * (lib/moe/gather_dispatch.ts).
 *
 * What a step computes: the data source's batches are EP-group micro-batches (N·b sequences);
 * replica k trains batches k·A … k·A + A − 1 of the step (A = gradAccum), rank j of its group the
 * j-th b sequences of each. Each rank's loss is divided by the counted targets of the group's
 * micro-batch (rows whose token and target are not padding and whose target is not BOS), so
 * the sum over the group is the single process's micro-batch loss, and every backward is scaled
 * by 1/(D·A): N·D ranks train exactly like one process with batch size N·b and accumulation D·A
 * on the same sequences, up to the order of float sums.
 * Gradients: replicated parameters are summed over the world; an expert weight's gradient is
 * complete for its group (every row that reached the expert is in it) and is summed over the D
 * replicas only. The gradient norm adds the replicated parameters' squares (the same on every
 * rank) and the EP group's sum of its experts' squares. Expert weights and their AdamW moments
 * live on their rank.
 *
 * Checkpoints stay consolidated: at checkpoint time rank 0's EP group gathers its expert weights and
 * moments, and world rank 0 writes model.safetensors and optimizer.safetensors as one process
 * does; resume loads the whole checkpoint and keeps this rank's experts. So a run resumes on any
 * expert-parallel size (the routing micro-batch N·b is what must stay, lib/run/run.ts).
 */
import { tidy, untrack } from '../autograd/scope';
import { noGrad } from '../autograd/tape';
import { zeros } from '../creation';
import { allGather, allReduce, barrier, Group, isInitialized, newGroup, world, worldGroup } from '../distributed/process_group';
import { MomaError } from '../errors';
import { MoEFeedForward } from '../model/layers';
import { Transformer } from '../model/transformer';
import { sliceLocalExperts, stackGatheredExperts } from '../moe/expert_parallel';
import { MoeLayout } from '../moe/ops';
import { Module } from '../nn/module';
import { concat } from '../ops';
import { AdamW, AdamWOptions } from '../optim/adamw';
import { Tensor } from '../tensor';
import { LoadedCheckpoint, loadCheckpointInto, ReadCheckpointOptions } from './checkpoint';

/** This rank's place in an expert-parallel run. */
export interface ExpertParallelPlan {
  /** N: ranks per EP group. */
  size: number;
  /** This rank's index in its EP group. */
  rank: number;
  /** D: data-parallel replicas of the EP group, and this rank's replica (its EP group's index). */
  replicas: number;
  replica: number;
  /** This rank's EP group (the world when D = 1): the dispatch's collectives, the gradient norm's expert sum, checkpoint gathers. */
  group: Group;
  /** The D ranks holding the same experts (same index in their EP groups), over which expert weights' gradients are summed; null when D = 1. */
  dataGroup: Group | null;
  /** Expert weight names (`layers.i.ffn.w1`, …) and the layout of their layer. */
  experts: Map<string, MoeLayout>;
}

/**
 * Checks `expertParallel` for `model` and the process group and shards the model's MoE layers
 * (each keeps this rank's experts); null when expertParallel is 1 (or not given). ERR_ARG for a
 * size that is not an integer ≥ 1, does not divide the world or a group's expert count, a model
 * without MoE layers or with mixture-of-depths layers, or sharded optimizer state; ERR_DIST
 * without a process group of more than one rank.
 */
export function planExpertParallel(model: Transformer, expertParallel: number | undefined, options: { sharding: string; dataParallel?: boolean }): ExpertParallelPlan | null {
  const N = expertParallel ?? 1;
  if (!Number.isInteger(N) || N < 1) throw new MomaError('ERR_ARG', `Trainer: expertParallel must be an integer >= 1, got ${String(expertParallel)}`);
  if (N === 1) return null;
  if (!isInitialized() || world().worldSize === 1 || options.dataParallel === false) {
    throw new MomaError('ERR_DIST', `Trainer: expertParallel ${N} needs a process group of at least ${N} ranks: start the ranks with \`moma launch --nproc-per-node ${N} … train --expert-parallel ${N}\` (or torchrun, srun, mpirun) and call \`await distributed.init()\` first`);
  }
  const W = world().worldSize;
  if (W % N !== 0) throw new MomaError('ERR_ARG', `Trainer: expertParallel ${N} must divide the world size ${W} (D data-parallel replicas × N ranks per expert-parallel group)`);
  const layers = [...model.modules()].filter((m): m is MoEFeedForward => m instanceof MoEFeedForward);
  if (layers.length === 0) throw new MomaError('ERR_ARG', `Trainer: expertParallel ${N} needs a model with MoE layers (ffn.kind 'moe'); this one is dense`);
  if (model.config.mod !== null) {
    throw new MomaError('ERR_ARG', `Trainer: expertParallel ${N} does not support mixture-of-depths layers (their row selection would have to be made over the group's rows, and each rank's share of the selected rows is data-dependent: a host read per layer, which a training step never makes); train this model with expertParallel 1`);
  }
  if (options.sharding !== 'none') {
    throw new MomaError('ERR_ARG', `Trainer: expertParallel ${N} does not combine with sharding '${options.sharding}' (the sharded optimizer splits every parameter over the whole world, while expert weights differ per rank and are summed over their data-parallel group only); use sharding 'none'`);
  }
  for (const ffn of layers) {
    ffn.ffn.layout.experts.forEach((count, g) => {
      if (count % N !== 0) throw new MomaError('ERR_ARG', `Trainer: expertParallel ${N} must divide every group's expert count; ${ffn.site} group ${g} has ${count} experts`);
    });
  }
  const { group, dataGroup } = expertParallelGroups(N);
  const experts = new Map<string, MoeLayout>();
  for (const ffn of layers) {
    ffn.shardExperts({ rank: group.rank, size: N, group });
    for (const name of ['w1', 'w3', 'w2']) experts.set(`${ffn.site}.${name}`, ffn.ffn.layout);
  }
  return { size: N, rank: group.rank, replicas: W / N, replica: Math.floor(world().rank / N), group, dataGroup, experts };
}

/**
 * The process groups of D × N expert parallel (collective over the world: every rank makes every
 * group, in the same order, as newGroup requires): the D EP groups of consecutive ranks
 * [k·N, (k+1)·N), then the N data-parallel groups of the ranks with the same index in their EP
 * group {j, N + j, 2N + j, …}. Returns this rank's two; with D = 1 the EP group is the world and
 * there is no data-parallel group.
 */
export function expertParallelGroups(N: number): { group: Group; dataGroup: Group | null } {
  const W = world().worldSize;
  if (W === N) return { group: worldGroup(), dataGroup: null };
  const D = W / N;
  let group: Group | null = null;
  let dataGroup: Group | null = null;
  for (let k = 0; k < D; k++) group = newGroup(Array.from({ length: N }, (_, j) => k * N + j)) ?? group;
  for (let j = 0; j < N; j++) dataGroup = newGroup(Array.from({ length: D }, (_, k) => k * N + j)) ?? dataGroup;
  if (group === null || dataGroup === null) throw new MomaError('ERR_DIST', `expert parallel: rank ${world().rank} is in no expert-parallel or data-parallel group of ${W} = ${D} × ${N} ranks`);
  return { group, dataGroup };
}

/** AdamW whose global gradient norm counts every expert once across the world (its experts' squares summed over the EP group). */
export class ExpertParallelAdamW extends AdamW {
  constructor(module: Module, options: AdamWOptions, readonly plan: ExpertParallelPlan) {
    super(module, options);
  }

  override gradNorm(): Tensor {
    return untrack(tidy(() => noGrad(() => {
      const device = this.module.parameters()[0]?.device ?? 'cpu';
      const squares = (expert: boolean): Tensor => {
        const parts = [...this.module.namedParameters()].filter(([name, p]) => p.grad !== null && this.plan.experts.has(name) === expert)
          .map(([, p]) => (p.grad as Tensor).square().sum().reshape([1]));
        return parts.length === 0 ? zeros([1], { device }) : concat(parts, 0).sum().reshape([1]);
      };
      // after the data-parallel sum every replica holds the same expert gradients: sum over one EP group
      return squares(false).add(allReduce(squares(true), { op: 'sum', group: this.plan.group })).reshape([]).sqrt();
    })));
  }
}

/** A flat set of named tensors as a Module (a consolidated or loading view of a model). */
class NamedTensors extends Module {
  constructor(entries: Iterable<[string, Tensor]>) {
    super();
    for (const [name, t] of entries) this.addParameter(name, t);
  }
}

/**
 * The whole model and optimizer state of an expert-parallel run, gathered over rank 0's EP group
 * (collective: every rank calls it; resolves when every rank's part is sent): world rank 0 gets a Module and an AdamW holding copies of
 * every parameter and moment in the single-process layout, the others null. The caller disposes both.
 */
export async function consolidate(model: Transformer, optimizer: AdamW, plan: ExpertParallelPlan): Promise<{ model: Module; optimizer: AdamW } | null> {
  const keep = world().rank === 0;
  const state = optimizer.stateDict();
  const gather = (t: Tensor, layout: MoeLayout): Tensor => tidy(() => stackGatheredExperts(allGather(t, { group: plan.group }), layout, plan.size));
  // the other replicas hold the same experts: only rank 0's EP group gathers
  const gathers = plan.replica === 0;
  const params: [string, Tensor][] = [];
  const moments = new Map<string, { m: Tensor; v: Tensor }>();
  noGrad(() => {
    for (const [name, p] of model.namedParameters()) {
      const layout = plan.experts.get(name);
      const s = state.get(name);
      if (layout === undefined) {
        if (keep) {
          params.push([name, untrack(p.clone())]);
          if (s !== undefined) moments.set(name, { m: untrack(s.m.clone()), v: untrack(s.v.clone()) });
        }
        continue;
      }
      if (!gathers) continue;
      const full = untrack(gather(p, layout));
      const m = untrack(gather(s?.m ?? zeros(p.shape, { device: p.device }), layout));
      const v = untrack(gather(s?.v ?? zeros(p.shape, { device: p.device }), layout));
      if (keep) {
        params.push([name, full]);
        if (s !== undefined) moments.set(name, { m, v });
        else for (const t of [m, v]) t.dispose();
      } else {
        for (const t of [full, m, v]) t.dispose();
      }
    }
  });
  // the gathers are queued: every rank waits for them (a rank that moved on could exit before its part was sent)
  await barrier();
  if (!keep) return null;
  const whole = new NamedTensors(params);
  const adamw = new AdamW(whole, optimizer.options);
  for (const [name, s] of moments) adamw.stateDict().set(name, s);
  adamw.step = optimizer.step;
  return { model: whole, optimizer: adamw };
}

/**
 * Loads a (consolidated) checkpoint into an expert-parallel model and optimizer: everything is
 * read and checked as loadCheckpointInto does, then this rank keeps its experts' weights and moments.
 */
export function loadExpertParallel(dir: string, model: Transformer, optimizer: AdamW, plan: ExpertParallelPlan, options: ReadCheckpointOptions): LoadedCheckpoint {
  const full = (name: string, p: Tensor): number[] => (plan.experts.has(name) ? [p.shape[0]! * plan.size, ...p.shape.slice(1)] : [...p.shape]);
  const whole = new NamedTensors([...model.namedParameters()].map(([name, p]) => [name, zeros(full(name, p), { device: p.device })]));
  const adamw = new AdamW(whole, optimizer.options);
  try {
    const loaded = loadCheckpointInto(dir, whole, adamw, options);
    const mine = (name: string, t: Tensor): Tensor => {
      const layout = plan.experts.get(name);
      return layout === undefined ? t.clone() : sliceLocalExperts(t, layout, plan.rank, plan.size);
    };
    noGrad(() => {
      for (const [name, t] of whole.namedParameters()) model.setParameter(name, mine(name, t));
      const state = optimizer.stateDict();
      for (const s of state.values()) {
        s.m.dispose();
        s.v.dispose();
      }
      state.clear();
      for (const [name, s] of adamw.stateDict()) state.set(name, { m: mine(name, s.m), v: mine(name, s.v) });
    });
    optimizer.step = adamw.step;
    return loaded;
  } finally {
    adamw.dispose();
    whole.dispose();
  }
}
