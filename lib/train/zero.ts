/**
 * Sharded optimizer state, gradients and parameters (ZeRO-1, -2 and -3, Rajbhandari et al. 2020)
 * for data-parallel training over the process group of lib/distributed.
 *
 * The flat parameter space (lib/train/flat.ts): the model's parameters in `model.parameters()`
 * order, each flattened (row-major), laid end to end as one float32 vector of N elements, split
 * into R contiguous ranges of S = ceil(N / R) elements (padded with zeros to R·S); rank r owns
 * [r·S, min((r + 1)·S, N)). A rank's AdamW moments exist only for what it owns, as two flat
 * float32 tensors: optimizer memory per rank is 8N/R bytes instead of 8N.
 *
 * The optimizer updates regions: a flat layout and this rank's range of it. ZeRO-1/2 have one,
 * the model's whole flat space. ZeRO-3 has one per FSDP unit (lib/train/fsdp.ts): the root unit
 * (embedding, final norm, LM head) and every decoder block, each its own flat space split over
 * the R ranks, so that rank r owns the r-th piece of every unit.
 *
 * One optimizer step on rank r, per region:
 *   - zero1: the gradients are all-reduced as in plain data parallel (bucketed, lib/train/
 *     data_parallel.ts); the rank copies its range of the summed gradient into a flat shard.
 *   - zero2 (and the root unit of zero3): the gradients are reduce-scattered instead: in rounds of
 *     at most ~25 MiB, round k sends, for every rank q, the k-th piece of q's range, so each rank
 *     receives only the sum of its own range. The full gradients are freed as soon as the rounds
 *     are queued (after the backward), so what is held through the update is the 4N/R-byte shard.
 *   - zero3 block units: the shard's gradient is already there: each block's backward
 *     reduce-scattered its parameters' gradients into it (lib/train/fsdp.ts).
 *   - clipping: each rank's sum of squares of its shards, all-reduced (one scalar), is the squared
 *     global norm; the shards are multiplied by min(1, clip / (norm + 1e-6)) as lib/optim/adamw.ts
 *     multiplies whole gradients.
 *   - AdamW: the same fused kernel (adamwStep) on flat slices: for every parameter that meets the
 *     range, its slice of the parameter, of the clipped shard and of the moments, with that
 *     parameter's weight decay. Element for element this is the unsharded update; only the norm's
 *     and the gradients' summation orders differ (results agree with unsharded training to ~1e-7
 *     relative).
 *   - zero1, zero2 and the root unit of zero3: the updated ranges (padded to S) are all-gathered,
 *     and every parameter is replaced by its slice of the gathered vector, so every rank holds the
 *     full parameters again. zero3 block units: the updated range is the unit's new shard; the
 *     block's full parameters exist only while a forward or backward gathers them.
 * A parameter without a gradient counts as a zero gradient (as plain data parallel does), so every
 * rank reduces the same buffers.
 *
 * Checkpoints keep one format for every stage (lib/train/checkpoint.ts): rank r writes the moments
 * of its range of the model's flat space. Under zero3 they are spread over the units' shards, so
 * checkpointMoments() moves them there (per unit: an all-gather of the unit's moments, of which
 * each rank keeps what falls in its range), and a load reads each unit piece's moments from
 * wherever the checkpoint holds them (momentRanges()): zero3 on N ranks resumes zero1/2/none on M.
 *
 * What moma does not do (yet): zero1/2 reduce-scatter after the backward, not overlapped with it,
 * so the full gradients exist at the end of the backward (moma's autograd accumulates leaf
 * gradients until the backward returns); ZeRO-2 saves their memory through the update, not during
 * the backward. ZeRO-3 shards the root unit's optimizer state and gradients, not its parameters.
 */
import { tidy, untrack } from '../autograd/scope';
import { noGrad } from '../autograd/tape';
import { allGather, allReduce, reduceScatter } from '../distributed/process_group';
import { zeros, full, tensor } from '../creation';
import { MomaError } from '../errors';
import { concat } from '../ops';
import { Tensor } from '../tensor';
import { adamwStep } from '../nn/ops';
import { AdamW, CLIP_EPS, selectFinite, StepResult, stepFinite, UpdateOptions } from '../optim/adamw';
import { Transformer } from '../model/transformer';
import { allReduceGradients, DEFAULT_BUCKET_BYTES, StepSplit } from './data_parallel';
import { FlatLayout, flatLayout, flatSlice, piecesOf, shardRange } from './flat';
import { FsdpUnit, FullyShardedModel } from './fsdp';

export { FlatEntry, FlatLayout, flatLayout, piecesOf, shardRange } from './flat';

export type Sharding = 'none' | 'zero1' | 'zero2' | 'zero3';

export const SHARDINGS: readonly Sharding[] = ['none', 'zero1', 'zero2', 'zero3'];

/** Checks a sharding option value (`what` names it in the error). */
export function checkSharding(value: unknown, what: string): Sharding {
  if (value === undefined) return 'none';
  if (!SHARDINGS.includes(value as Sharding)) throw new MomaError('ERR_ARG', `${what} must be 'none', 'zero1', 'zero2' or 'zero3', got ${String(value)}`);
  return value as Sharding;
}

/** What a rank saves of its optimizer state: its range of the flat space and the moments over it (flat float32 tensors of to − from). */
export interface MomentShard {
  from: number;
  to: number;
  expAvg: Tensor;
  expAvgSq: Tensor;
}

/** A part of the parameters this rank updates: a flat layout and this rank's range [from, to) of it. */
interface Region {
  layout: FlatLayout;
  from: number;
  to: number;
  /** Where the region's moments start in the optimizer's flat moment tensors. */
  momentOffset: number;
  /** A ZeRO-3 block unit (its shard holds the parameters and their gradient), or null: the parameters are the model's. */
  unit: FsdpUnit | null;
}

/** One tensor of `parts` (concatenated when several; an empty float32 tensor when none). */
function joined(parts: Tensor[], device: string): Tensor {
  if (parts.length === 0) return zeros([0], { device });
  return parts.length === 1 ? parts[0]! : concat(parts, 0);
}

/**
 * AdamW with its moments sharded over the ranks (ZeRO-1, -2 or -3, see the module comment). It
 * wraps the trainer's AdamW, whose options and step count it uses; the AdamW itself then holds no
 * moments. With 'zero3' it also shards the model's parameters (`fsdp`) from construction on.
 */
export class ZeroOptimizer {
  /** The model's whole flat space over the ranks: what the checkpoint's optimizer shards cover. */
  readonly layout: FlatLayout;
  /** This rank's range of `layout` (its checkpoint shard). */
  readonly from: number;
  readonly to: number;
  /** ZeRO-3: the model's parameter sharding; null for zero1 and zero2. */
  readonly fsdp: FullyShardedModel | null;
  private readonly regions: Region[];
  private readonly momentLength: number;
  private expAvg: Tensor | null = null;
  private expAvgSq: Tensor | null = null;
  private last: StepResult | null = null;

  constructor(readonly adamw: AdamW, readonly stage: 'zero1' | 'zero2' | 'zero3', readonly split: Pick<StepSplit, 'rank' | 'ranks'>, readonly bucketBytes = DEFAULT_BUCKET_BYTES) {
    this.layout = flatLayout(adamw.module.namedParameters(), split.ranks);
    ({ from: this.from, to: this.to } = shardRange(this.layout, split.rank));
    if (this.layout.shardSize * (split.ranks - 1) >= this.layout.numel) {
      throw new MomaError('ERR_ARG', `ZeRO: ${this.layout.numel} parameters are too few to shard over ${split.ranks} ranks (the last rank would own none)`);
    }
    for (const p of adamw.module.parameters()) {
      if (p.dtype !== 'float32') throw new MomaError('ERR_ARG', `ZeRO: parameters must be float32, got ${p.dtype}`);
    }
    if (stage === 'zero3') {
      if (!(adamw.module instanceof Transformer)) throw new MomaError('ERR_ARG', 'ZeRO-3: the optimizer\'s module must be a Transformer (its decoder blocks are the FSDP units)');
      this.fsdp = new FullyShardedModel(adamw.module, split);
    } else {
      this.fsdp = null;
    }
    let momentOffset = 0;
    const units: { layout: FlatLayout; from: number; to: number; unit: FsdpUnit | null }[] = this.fsdp === null
      ? [{ layout: this.layout, from: this.from, to: this.to, unit: null }]
      : this.fsdp.units.map((unit) => ({ layout: unit.layout, from: unit.from, to: unit.to, unit: unit.shard === null ? null : unit }));
    this.regions = units.map((r) => {
      const region = { ...r, momentOffset };
      momentOffset += r.to - r.from;
      return region;
    });
    this.momentLength = momentOffset;
  }

  private device(): string {
    return this.adamw.module.parameters()[0]?.device ?? 'cpu';
  }

  /** zero1/zero2: this rank's moments (zeros before the first update), as a MomentShard the caller must not dispose. */
  moments(): MomentShard {
    if (this.fsdp !== null) throw new MomaError('ERR_ARG', 'ZeroOptimizer.moments: zero3 moments follow the units; use checkpointMoments()');
    this.ensureMoments();
    return { from: this.from, to: this.to, expAvg: this.expAvg!, expAvgSq: this.expAvgSq! };
  }

  /**
   * The moments of this rank's range [from, to) of the model's flat space (what its checkpoint
   * shard holds) and whether the caller owns (disposes) them. zero3: a collective (module comment).
   */
  checkpointMoments(): MomentShard & { owned: boolean } {
    if (this.fsdp === null) return { ...this.moments(), owned: false };
    this.ensureMoments();
    const device = this.device();
    const globalOffset = new Map(this.layout.entries.map((e) => [e.name, e.offset]));
    const pieces: { at: number; m: Tensor; v: Tensor }[] = [];
    noGrad(() => {
      for (const region of this.regions) {
        const S = region.layout.shardSize;
        const length = region.to - region.from;
        tidy(() => {
          const pad = (t: Tensor): Tensor[] => (S > length ? [t, zeros([S - length], { device })] : [t]);
          const mine = concat([
            ...pad(this.expAvg!.slice(0, region.momentOffset, region.momentOffset + length)),
            ...pad(this.expAvgSq!.slice(0, region.momentOffset, region.momentOffset + length)),
          ], 0);
          const all = allGather(mine); // rank q's block: [q·2S, q·2S + S) first moments, then S second moments
          for (const entry of region.layout.entries) {
            const base = globalOffset.get(entry.name)!;
            let begin = Math.max(this.from, base) - base;
            const end = Math.min(this.to, base + entry.numel) - base;
            while (begin < end) {
              const u = entry.offset + begin;
              const q = Math.floor(u / S);
              const n = Math.min(end - begin, (q + 1) * S - u);
              const at = q * 2 * S + u - q * S;
              pieces.push({ at: base + begin - this.from, m: untrack(all.slice(0, at, at + n)), v: untrack(all.slice(0, at + S, at + S + n)) });
              begin += n;
            }
          }
        });
      }
    });
    pieces.sort((a, b) => a.at - b.at);
    const expAvg = untrack(noGrad(() => joined(pieces.map((p) => p.m), device)));
    const expAvgSq = untrack(noGrad(() => joined(pieces.map((p) => p.v), device)));
    if (pieces.length > 1) for (const p of pieces) [p.m, p.v].forEach((t) => t.dispose());
    return { from: this.from, to: this.to, expAvg, expAvgSq, owned: true };
  }

  /** The ranges of the model's flat space that this rank's moments cover, in their order (loadMoments takes them concatenated). */
  momentRanges(): [number, number][] {
    if (this.fsdp === null) return [[this.from, this.to]];
    const globalOffset = new Map(this.layout.entries.map((e) => [e.name, e.offset]));
    const out: [number, number][] = [];
    for (const region of this.regions) {
      for (const { entry, begin, end } of piecesOf(region.layout, region.from, region.to)) {
        const base = globalOffset.get(entry.name)!;
        out.push([base + begin, base + end]);
      }
    }
    return out;
  }

  /** Replaces this rank's moments with values over momentRanges() (float32, concatenated). */
  loadMoments(expAvg: Float32Array, expAvgSq: Float32Array): void {
    const length = this.momentLength;
    if (expAvg.length !== length || expAvgSq.length !== length) {
      throw new MomaError('ERR_ARG', `ZeroOptimizer.loadMoments: need ${length} values each (this rank's ranges of the flat space), got ${expAvg.length} and ${expAvgSq.length}`);
    }
    this.disposeMoments();
    this.expAvg = tensor(expAvg, { shape: [length], device: this.device() });
    this.expAvgSq = tensor(expAvgSq, { shape: [length], device: this.device() });
  }

  private ensureMoments(): void {
    if (this.expAvg !== null) return;
    this.expAvg = zeros([this.momentLength], { device: this.device() });
    this.expAvgSq = zeros([this.momentLength], { device: this.device() });
  }

  /**
   * This rank's range of a region's gradients summed over the ranks, padded to its shardSize (a
   * new tensor); frees the region's full gradients under zero2 and zero3.
   */
  private gradientShard(region: Region): Tensor {
    const device = this.device();
    const { layout, from } = region;
    const S = layout.shardSize;
    if (region.unit !== null) {
      const shard = region.unit.shard!;
      const grad = shard.grad ?? untrack(zeros([S], { device }));
      shard.grad = null;
      return grad;
    }
    const named = this.adamw.module.namedParameters();
    const params = layout.entries.map((e) => named.get(e.name)!);
    if (this.stage === 'zero1') {
      allReduceGradients(params, this.bucketBytes);
      return untrack(noGrad(() => tidy(() => flatSlice(layout, params.map((p) => p.grad), from, from + S, S, device))));
    }
    const R = layout.ranks;
    const round = Math.max(1, Math.min(S, Math.floor(this.bucketBytes / 4 / R)));
    const pieces: Tensor[] = [];
    noGrad(() => {
      const grads = params.map((p) => p.grad);
      for (let lo = 0; lo < S; lo += round) {
        const hi = Math.min(S, lo + round);
        pieces.push(untrack(tidy(() => {
          const send = Array.from({ length: R }, (_, q) => flatSlice(layout, grads, q * S + lo, q * S + hi, hi - lo, device));
          return reduceScatter(concat(send, 0), { op: 'sum' });
        })));
      }
    });
    for (const p of params) {
      p.grad?.dispose();
      p.grad = null;
    }
    if (pieces.length === 1) return pieces[0]!;
    const shard = untrack(concat(pieces, 0));
    for (const t of pieces) t.dispose();
    return shard;
  }

  /**
   * One sharded AdamW step at learning rate `lr` (see the module comment): reduces the gradients,
   * clips by the global norm, updates this rank's ranges and all-gathers the parameters held in
   * full. Queues device work only. The result belongs to the optimizer until the next update or
   * dispose(). The finite flag is the same on every rank (the norm is global; `lossFinite` must be
   * agreed by the caller); with `skipNonfinite` a non-finite step leaves this rank's ranges of the
   * parameters and its moments as they were (lib/optim/adamw.ts).
   */
  update(lr = this.adamw.options.lr, options: UpdateOptions = {}): StepResult {
    const shards = this.regions.map((region) => this.gradientShard(region));
    this.ensureMoments();
    const o = this.adamw.options;
    const device = this.device();
    const result = noGrad(() => {
      const gradNorm = untrack(tidy(() => {
        const squares = shards.length === 1 ? shards[0]!.square().sum() : concat(shards.map((s) => s.square().sum().reshape([1])), 0).sum();
        return allReduce(squares.reshape([1]), { op: 'sum' }).reshape([]).sqrt();
      }));
      const clipScale = untrack(this.adamw.clips
        ? tidy(() => full([], o.clipNorm, { device }).div(gradNorm.add(CLIP_EPS)).minimum(1))
        : full([], 1, { device }));
      return { gradNorm, clipScale, finite: stepFinite(gradNorm, options.lossFinite) };
    });
    const guard = options.skipNonfinite === true;
    this.adamw.step++;
    const step = this.adamw.step;
    noGrad(() => tidy(() => {
      const named = this.adamw.module.namedParameters();
      const ms: Tensor[] = [];
      const vs: Tensor[] = [];
      const updated = this.regions.map((region, k) => {
        const grad = this.adamw.clips ? shards[k]!.mul(result.clipScale) : shards[k]!;
        const params: Tensor[] = [];
        for (const { entry, begin, end } of piecesOf(region.layout, region.from, region.to)) {
          const at = entry.offset + begin - region.from;
          const n = end - begin;
          const m = region.momentOffset + at;
          const before = {
            param: region.unit === null ? named.get(entry.name)!.reshape([entry.numel]).slice(0, begin, end) : region.unit.shard!.slice(0, at, at + n),
            grad: grad.slice(0, at, at + n), expAvg: this.expAvg!.slice(0, m, m + n), expAvgSq: this.expAvgSq!.slice(0, m, m + n),
          };
          const out = adamwStep(before, {
            lr, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weightDecay: o.decay(entry.name) ? o.weightDecay : 0, step,
          });
          params.push(guard ? selectFinite(result.finite, out.param, before.param) : out.param);
          ms.push(guard ? selectFinite(result.finite, out.expAvg, before.expAvg) : out.expAvg);
          vs.push(guard ? selectFinite(result.finite, out.expAvgSq, before.expAvgSq) : out.expAvgSq);
        }
        const pad = region.layout.shardSize - (region.to - region.from);
        if (pad > 0) params.push(zeros([pad], { device }));
        return joined(params, device);
      });
      this.disposeMoments();
      this.expAvg = untrack(joined(ms, device));
      this.expAvgSq = untrack(joined(vs, device));
      this.regions.forEach((region, k) => {
        if (region.unit !== null) {
          this.fsdp!.setShard(region.unit, untrack(updated[k]!));
          return;
        }
        const gathered = allGather(updated[k]!);
        for (const entry of region.layout.entries) {
          this.adamw.module.setParameter(entry.name, untrack(gathered.slice(0, entry.offset, entry.offset + entry.numel).reshape(entry.shape)));
        }
      });
    }));
    for (const shard of shards) shard.dispose();
    this.disposeLast();
    this.last = result;
    return result;
  }

  private disposeLast(): void {
    if (this.last === null) return;
    this.last.gradNorm.dispose();
    this.last.clipScale.dispose();
    this.last.finite.dispose();
    this.last = null;
  }

  private disposeMoments(): void {
    this.expAvg?.dispose();
    this.expAvgSq?.dispose();
    this.expAvg = null;
    this.expAvgSq = null;
  }

  dispose(): void {
    this.disposeLast();
    this.disposeMoments();
    this.fsdp?.dispose();
  }
}
