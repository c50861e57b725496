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
 *   - AdamW: the same fused kernel (adamwStep) on cells: a cell is the part of one parameter in
 *     the range, and in a region held whole (zero1/2, the root unit of zero3) also split at the
 *     rounds of the reduce-scatter (~25 MiB over the R ranks, [lo, hi) of every rank's range). Per
 *     cell, in a scope of its own: its slice of the parameter and of the gradient shard, clipped,
 *     and its moments, with that parameter's weight decay; the new moments replace the cell's
 *     (moments are kept per cell), the new parameter slice is kept. AdamW is element-wise, so
 *     element for element this is the unsharded update; only the norm's and the gradients'
 *     summation orders differ (results agree with unsharded training to ~1e-7 relative).
 *   - zero1, zero2 and the root unit of zero3: round by round, this rank's new [lo, hi) (padded)
 *     is all-gathered and each parameter is replaced as soon as all its parts have arrived, so
 *     every rank holds the full parameters again. zero3 block units: the new parameter slices,
 *     joined, are the unit's new shard; the block's full parameters exist only while a forward or
 *     backward gathers them. So the update's transients are bounded by a round or a unit, not the
 *     whole shard (lib/train/memory_model.ts).
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
import { FlatEntry, FlatLayout, flatLayout, flatSlice, piecesOf, shardRange } from './flat';
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

/** What one AdamW call of the update covers: elements [begin, end) of parameter `entry`, at `at` in its region's range. */
interface Cell {
  entry: FlatEntry;
  begin: number;
  end: number;
  at: number;
}

/** A round of a region held whole: [lo, hi) of every rank's range, its cells [first, last) on this rank. */
interface Round {
  lo: number;
  hi: number;
  first: number;
  last: number;
}

/** A part of the parameters this rank updates: a flat layout and this rank's range [from, to) of it. */
interface Region {
  layout: FlatLayout;
  from: number;
  to: number;
  /** A ZeRO-3 block unit (its shard holds the parameters and their gradient), or null: the parameters are the model's. */
  unit: FsdpUnit | null;
  /** The range's cells in flat order: a block unit's are its pieces, a region held whole splits its pieces at the rounds. */
  cells: Cell[];
  /** A region held whole: its rounds (the reduce-scatter's and the all-gather's); a block unit: one round over the range. */
  rounds: Round[];
}

/** The cells and rounds of this rank's range [from, to) of `layout`, with rounds of `round` elements (module comment). */
function regionCells(layout: FlatLayout, from: number, to: number, round: number): { cells: Cell[]; rounds: Round[] } {
  const cells: Cell[] = [];
  const rounds: Round[] = [];
  for (let lo = 0; lo < layout.shardSize; lo += round) {
    const hi = Math.min(layout.shardSize, lo + round);
    const first = cells.length;
    for (const { entry, begin, end } of piecesOf(layout, from + lo, Math.min(from + hi, to))) cells.push({ entry, begin, end, at: entry.offset + begin - from });
    rounds.push({ lo, hi, first, last: cells.length });
  }
  return { cells, rounds };
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
  /** The moments of every region's cells (per region, per cell: float32 [end − begin]); null before the first update. */
  private expAvg: Tensor[][] | null = null;
  private expAvgSq: Tensor[][] | null = null;
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
    const units: { layout: FlatLayout; from: number; to: number; unit: FsdpUnit | null }[] = this.fsdp === null
      ? [{ layout: this.layout, from: this.from, to: this.to, unit: null }]
      : this.fsdp.units.map((unit) => ({ layout: unit.layout, from: unit.from, to: unit.to, unit: unit.shard === null ? null : unit }));
    this.regions = units.map((r) => ({ ...r, ...regionCells(r.layout, r.from, r.to, r.unit === null ? this.roundSize(r.layout) : r.layout.shardSize) }));
    this.momentLength = this.regions.reduce((sum, r) => sum + r.to - r.from, 0);
  }

  private device(): string {
    return this.adamw.module.parameters()[0]?.device ?? 'cpu';
  }

  /** Elements of one round of a region held whole: R rounds' pieces make one ~bucketBytes reduce-scatter or all-gather. */
  private roundSize(layout: FlatLayout): number {
    return Math.max(1, Math.min(layout.shardSize, Math.floor(this.bucketBytes / 4 / layout.ranks)));
  }

  /**
   * The moments of this rank's range [from, to) of the model's flat space (what its checkpoint
   * shard holds) and whether the caller owns (disposes) them. zero3: a collective (module comment).
   */
  checkpointMoments(): MomentShard & { owned: boolean } {
    this.ensureMoments();
    const device = this.device();
    if (this.fsdp === null) {
      const [ms, vs] = [this.expAvg![0]!, this.expAvgSq![0]!];
      if (ms.length === 1) return { from: this.from, to: this.to, expAvg: ms[0]!, expAvgSq: vs[0]!, owned: false };
      const [expAvg, expAvgSq] = [ms, vs].map((parts) => untrack(noGrad(() => joined(parts, device))));
      return { from: this.from, to: this.to, expAvg: expAvg!, expAvgSq: expAvgSq!, owned: true };
    }
    const globalOffset = new Map(this.layout.entries.map((e) => [e.name, e.offset]));
    const pieces: { at: number; m: Tensor; v: Tensor }[] = [];
    noGrad(() => {
      this.regions.forEach((region, k) => {
        const S = region.layout.shardSize;
        const length = region.to - region.from;
        tidy(() => {
          const pad = S > length ? [zeros([S - length], { device })] : [];
          const mine = concat([...this.expAvg![k]!, ...pad, ...this.expAvgSq![k]!, ...pad], 0);
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
      });
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
    const device = this.device();
    // the cells cover momentRanges() in the same order, each region's range from its start
    const split = (values: Float32Array): Tensor[][] => {
      let offset = 0;
      return this.regions.map((region) => {
        const out = region.cells.map((c) => tensor(values.slice(offset + c.at, offset + c.at + c.end - c.begin), { shape: [c.end - c.begin], device }));
        offset += region.to - region.from;
        return out;
      });
    };
    this.expAvg = split(expAvg);
    this.expAvgSq = split(expAvgSq);
  }

  private ensureMoments(): void {
    if (this.expAvg !== null) return;
    const device = this.device();
    const make = (): Tensor[][] => this.regions.map((region) => region.cells.map((c) => zeros([c.end - c.begin], { device })));
    this.expAvg = make();
    this.expAvgSq = make();
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
    const pieces: Tensor[] = [];
    noGrad(() => {
      const grads = params.map((p) => p.grad);
      for (const { lo, hi } of region.rounds) {
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
        // one region's squares at a time (each sum in a scope of its own)
        const squares = shards.length === 1 ? shards[0]!.square().sum() : concat(shards.map((s) => tidy(() => s.square().sum().reshape([1]))), 0).sum();
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
    noGrad(() => {
      const named = this.adamw.module.namedParameters();
      this.regions.forEach((region, k) => {
        const grad = shards[k]!;
        const ms = this.expAvg![k]!;
        const vs = this.expAvgSq![k]!;
        // AdamW on cell c in a scope of its own: its moments are replaced, its new parameter slice returned (in the caller's scope)
        const updateCell = (c: number): Tensor => {
          const { entry, begin, end, at } = region.cells[c]!;
          const n = end - begin;
          const out = tidy(() => {
            const param = region.unit === null ? named.get(entry.name)!.reshape([entry.numel]).slice(0, begin, end) : region.unit.shard!.slice(0, at, at + n);
            const slice = grad.slice(0, at, at + n);
            const before = { param, grad: this.adamw.clips ? slice.mul(result.clipScale) : slice, expAvg: ms[c]!, expAvgSq: vs[c]! };
            const next = adamwStep(before, {
              lr, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weightDecay: o.decay(entry.name) ? o.weightDecay : 0, step,
            });
            if (!guard) return next;
            return { param: selectFinite(result.finite, next.param, param), expAvg: selectFinite(result.finite, next.expAvg, before.expAvg), expAvgSq: selectFinite(result.finite, next.expAvgSq, before.expAvgSq) };
          });
          ms[c]!.dispose();
          vs[c]!.dispose();
          ms[c] = untrack(out.expAvg);
          vs[c] = untrack(out.expAvgSq);
          return out.param;
        };
        // the round's new parameters on this rank, padded to its length
        const updateRound = ({ lo, hi, first, last }: Round): Tensor => {
          const params = Array.from({ length: last - first }, (_, i) => updateCell(first + i));
          const filled = Math.max(0, Math.min(hi, region.to - region.from) - lo);
          if (hi - lo > filled) params.push(zeros([hi - lo - filled], { device }));
          return joined(params, device);
        };
        if (region.unit !== null) {
          this.fsdp!.setShard(region.unit, untrack(tidy(() => updateRound(region.rounds[0]!))));
          return;
        }
        this.gatherRounds(region, updateRound);
      });
    });
    for (const shard of shards) shard.dispose();
    this.disposeLast();
    this.last = result;
    return result;
  }

  /**
   * A region held whole, round by round: `updateRound` gives this rank's new [lo, hi) of its range,
   * all ranks' are all-gathered, and each parameter is replaced in the model as soon as every
   * part of it has arrived (its parts are held until then).
   */
  private gatherRounds(region: Region, updateRound: (round: Round) => Tensor): void {
    const { layout } = region;
    const S = layout.shardSize;
    const pending = new Map<FlatEntry, { parts: { begin: number; t: Tensor }[]; received: number }>();
    for (const round of region.rounds) {
      tidy(() => {
        const length = round.hi - round.lo;
        const gathered = allGather(updateRound(round)); // rank q's block: [q·S + lo, q·S + hi) of the flat space
        for (let q = 0; q < layout.ranks; q++) {
          for (const { entry, begin, end } of piecesOf(layout, q * S + round.lo, q * S + round.hi)) {
            const at = q * length + entry.offset + begin - q * S - round.lo;
            const held = pending.get(entry) ?? { parts: [], received: 0 };
            held.parts.push({ begin, t: untrack(gathered.slice(0, at, at + end - begin)) });
            held.received += end - begin;
            if (held.received < entry.numel) {
              pending.set(entry, held);
              continue;
            }
            pending.delete(entry);
            const parts = held.parts.sort((a, b) => a.begin - b.begin).map((p) => p.t);
            this.adamw.module.setParameter(entry.name, untrack(joined(parts, parts[0]!.device).reshape(entry.shape)));
            for (const t of parts) t.dispose();
          }
        }
      });
    }
  }

  private disposeLast(): void {
    if (this.last === null) return;
    this.last.gradNorm.dispose();
    this.last.clipScale.dispose();
    this.last.finite.dispose();
    this.last = null;
  }

  private disposeMoments(): void {
    for (const t of [...(this.expAvg ?? []), ...(this.expAvgSq ?? [])].flat()) t.dispose();
    this.expAvg = null;
    this.expAvgSq = null;
  }

  dispose(): void {
    this.disposeLast();
    this.disposeMoments();
    this.fsdp?.dispose();
  }
}
