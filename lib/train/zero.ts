/**
 * Sharded optimizer state and gradients (ZeRO-1 and ZeRO-2, Rajbhandari et al. 2020) for
 * data-parallel training over the process group of lib/distributed.
 *
 * The flat parameter space: the model's parameters in `model.parameters()` order, each flattened
 * (row-major), laid end to end as one float32 vector of N elements. It is split into R contiguous
 * ranges of S = ceil(N / R) elements (the space padded with zeros to R·S); rank r owns
 * [r·S, min((r + 1)·S, N)). A rank's AdamW moments exist only for its range, as two flat float32
 * tensors of its range's length: optimizer memory per rank is 8N/R bytes instead of 8N.
 *
 * One optimizer step on rank r:
 *   - zero1: the gradients are all-reduced as in plain data parallel (bucketed, lib/train/
 *     data_parallel.ts); the rank copies its range of the summed gradient into a flat shard.
 *   - zero2: the gradients are reduce-scattered instead: in rounds of at most ~25 MiB, round k
 *     sends, for every rank q, the k-th piece of q's range, so each rank receives only the sum of
 *     its own range. The full gradients are freed as soon as the rounds are queued (after the
 *     backward), so what is held through the update is the 4N/R-byte shard.
 *   - clipping: each rank's sum of squares of its shard, all-reduced (one scalar), is the squared
 *     global norm; the shard is multiplied by min(1, clip / (norm + 1e-6)) as lib/optim/adamw.ts
 *     multiplies whole gradients.
 *   - AdamW: the same fused kernel (adamwStep) on flat slices: for every parameter that meets the
 *     range, its slice of the parameter, of the clipped shard and of the moments, with that
 *     parameter's weight decay. Element for element this is the unsharded update; only the norm's
 *     summation order differs (results agree with unsharded training to ~1e-7 relative).
 *   - the updated ranges (padded to S) are all-gathered, and every parameter is replaced by its
 *     slice of the gathered vector, so every rank holds the full parameters again.
 * A parameter without a gradient counts as a zero gradient (as plain data parallel does), so every
 * rank reduces the same buffers.
 *
 * What moma does not do (yet): the reduce-scatter runs after the backward, not overlapped with it,
 * so the full gradients exist at the end of the backward (moma's autograd accumulates leaf
 * gradients until the backward returns); ZeRO-2 saves their memory through the update, not during
 * the backward. Parameters are not sharded (ZeRO-3).
 *
 * Per-rank memory (memoryPerRank, printed by `moma model info --world-size R --sharding …`), in
 * bytes, N parameters, float32 everywhere:
 *   parameters  4N on every rank
 *   gradients   4N (none, zero1: the summed gradients are held through the update);
 *               zero2: 4N/R held through the update, the full 4N only at the end of the backward
 *   optimizer   8N (none) or 8N/R (zero1, zero2): AdamW's two moments
 *   activations of one micro-batch, see activationBytes
 *   peak        parameters + optimizer + max(backward, update), where backward = the full
 *               gradients + activations, and update = the gradients held + the update's transients
 *               (none: new parameters and moments of one tensor at a time, at most 3·4·max tensor;
 *               zero1/zero2: the clipped shard, the new moments and parameter range 4·4N/R and the
 *               gathered parameters 4N).
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
import { countParameters } from '../model/params';
import type { TransformerConfig } from '../model/transformer';
import { allReduceGradients, DEFAULT_BUCKET_BYTES, StepSplit } from './data_parallel';

export type Sharding = 'none' | 'zero1' | 'zero2';

export const SHARDINGS: readonly Sharding[] = ['none', 'zero1', 'zero2'];

/** Checks a sharding option value (`what` names it in the error). */
export function checkSharding(value: unknown, what: string): Sharding {
  if (value === undefined) return 'none';
  if (!SHARDINGS.includes(value as Sharding)) throw new MomaError('ERR_ARG', `${what} must be 'none', 'zero1' or 'zero2', got ${String(value)}`);
  return value as Sharding;
}

/** One parameter in the flat space: its elements are [offset, offset + numel). */
export interface FlatEntry {
  name: string;
  shape: number[];
  offset: number;
  numel: number;
}

/** The flat parameter space split over `ranks`: rank r owns [r·shardSize, min((r + 1)·shardSize, numel)). */
export interface FlatLayout {
  entries: FlatEntry[];
  numel: number;
  ranks: number;
  shardSize: number;
}

/** The flat layout of named parameters (in their order) over `ranks` ranks. */
export function flatLayout(parameters: Map<string, { shape: readonly number[]; numel: number }>, ranks: number): FlatLayout {
  if (!Number.isInteger(ranks) || ranks < 1) throw new MomaError('ERR_ARG', `flatLayout: ranks must be an integer >= 1, got ${String(ranks)}`);
  const entries: FlatEntry[] = [];
  let offset = 0;
  for (const [name, p] of parameters) {
    entries.push({ name, shape: [...p.shape], offset, numel: p.numel });
    offset += p.numel;
  }
  return { entries, numel: offset, ranks, shardSize: Math.ceil(offset / ranks) };
}

/** The range [from, to) of the flat space that `rank` owns. */
export function shardRange(layout: FlatLayout, rank: number): { from: number; to: number } {
  const from = Math.min(rank * layout.shardSize, layout.numel);
  return { from, to: Math.min(from + layout.shardSize, layout.numel) };
}

/** The parts of [from, to) that fall in each parameter: entry, and the range inside the parameter. */
export function piecesOf(layout: FlatLayout, from: number, to: number): { entry: FlatEntry; begin: number; end: number }[] {
  const out: { entry: FlatEntry; begin: number; end: number }[] = [];
  for (const entry of layout.entries) {
    const begin = Math.max(from, entry.offset);
    const end = Math.min(to, entry.offset + entry.numel);
    if (begin < end) out.push({ entry, begin: begin - entry.offset, end: end - entry.offset });
  }
  return out;
}

/**
 * Elements [from, to) of the flat concatenation of `tensors` (one per layout entry, float32; null:
 * zeros), followed by zeros up to `length` elements (the padding past the end of the space).
 */
function flatSlice(layout: FlatLayout, tensors: (Tensor | null)[], from: number, to: number, length: number, device: string): Tensor {
  const parts: Tensor[] = [];
  for (const { entry, begin, end } of piecesOf(layout, from, to)) {
    const t = tensors[layout.entries.indexOf(entry)] ?? null;
    parts.push(t === null ? zeros([end - begin], { device }) : t.reshape([entry.numel]).slice(0, begin, end));
  }
  const filled = Math.max(0, Math.min(to, layout.numel) - from);
  if (length > filled) parts.push(zeros([length - filled], { device }));
  return parts.length === 1 ? parts[0]! : concat(parts, 0);
}

/** What a rank saves of its optimizer state: its range of the flat space and the moments over it (flat float32 tensors of to − from). */
export interface MomentShard {
  from: number;
  to: number;
  expAvg: Tensor;
  expAvgSq: Tensor;
}

/**
 * AdamW with its moments sharded over the ranks (ZeRO-1 or ZeRO-2, see the module comment). It
 * wraps the trainer's AdamW, whose options and step count it uses; the AdamW itself then holds no
 * moments.
 */
export class ZeroOptimizer {
  readonly layout: FlatLayout;
  readonly from: number;
  readonly to: number;
  private expAvg: Tensor | null = null;
  private expAvgSq: Tensor | null = null;
  private last: StepResult | null = null;

  constructor(readonly adamw: AdamW, readonly stage: 'zero1' | 'zero2', readonly split: Pick<StepSplit, 'rank' | 'ranks'>, readonly bucketBytes = DEFAULT_BUCKET_BYTES) {
    this.layout = flatLayout(adamw.module.namedParameters(), split.ranks);
    ({ from: this.from, to: this.to } = shardRange(this.layout, split.rank));
    if (this.layout.shardSize * (split.ranks - 1) >= this.layout.numel) {
      throw new MomaError('ERR_ARG', `ZeRO: ${this.layout.numel} parameters are too few to shard over ${split.ranks} ranks (the last rank would own none)`);
    }
    for (const p of adamw.module.parameters()) {
      if (p.dtype !== 'float32') throw new MomaError('ERR_ARG', `ZeRO: parameters must be float32, got ${p.dtype}`);
    }
  }

  private device(): string {
    return this.adamw.module.parameters()[0]?.device ?? 'cpu';
  }

  /** This rank's moments (zeros before the first update), as a MomentShard the caller must not dispose. */
  moments(): MomentShard {
    this.ensureMoments();
    return { from: this.from, to: this.to, expAvg: this.expAvg!, expAvgSq: this.expAvgSq! };
  }

  /** Replaces this rank's moments with values for its range (float32, to − from each). */
  loadMoments(expAvg: Float32Array, expAvgSq: Float32Array): void {
    const length = this.to - this.from;
    if (expAvg.length !== length || expAvgSq.length !== length) {
      throw new MomaError('ERR_ARG', `ZeroOptimizer.loadMoments: need ${length} values each for [${this.from}, ${this.to}), got ${expAvg.length} and ${expAvgSq.length}`);
    }
    this.disposeMoments();
    this.expAvg = tensor(expAvg, { shape: [length], device: this.device() });
    this.expAvgSq = tensor(expAvgSq, { shape: [length], device: this.device() });
  }

  private ensureMoments(): void {
    if (this.expAvg !== null) return;
    this.expAvg = zeros([this.to - this.from], { device: this.device() });
    this.expAvgSq = zeros([this.to - this.from], { device: this.device() });
  }

  /** This rank's range of the gradients summed over the ranks, padded to shardSize (a new tensor); frees the full gradients under zero2. */
  private gradientShard(): Tensor {
    const params = this.adamw.module.parameters();
    const device = this.device();
    const { layout } = this;
    const S = layout.shardSize;
    if (this.stage === 'zero1') {
      allReduceGradients(params, this.bucketBytes);
      return untrack(noGrad(() => tidy(() => flatSlice(layout, params.map((p) => p.grad), this.from, this.from + S, S, device))));
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
    this.adamw.zeroGrad();
    if (pieces.length === 1) return pieces[0]!;
    const shard = untrack(concat(pieces, 0));
    for (const t of pieces) t.dispose();
    return shard;
  }

  /**
   * One sharded AdamW step at learning rate `lr` (see the module comment): reduces the gradients,
   * clips by the global norm, updates this rank's range and all-gathers the parameters. Queues
   * device work only. The result belongs to the optimizer until the next update or dispose().
   * The finite flag is the same on every rank (the norm is global; `lossFinite` must be agreed by
   * the caller); with `skipNonfinite` a non-finite step leaves this rank's range of the parameters
   * and its moments as they were (lib/optim/adamw.ts).
   */
  update(lr = this.adamw.options.lr, options: UpdateOptions = {}): StepResult {
    const shard = this.gradientShard();
    this.ensureMoments();
    const o = this.adamw.options;
    const device = this.device();
    const { layout } = this;
    const result = noGrad(() => {
      const gradNorm = untrack(tidy(() => allReduce(shard.square().sum().reshape([1]), { op: 'sum' }).reshape([]).sqrt()));
      const clipScale = untrack(this.adamw.clips
        ? tidy(() => full([], o.clipNorm, { device }).div(gradNorm.add(CLIP_EPS)).minimum(1))
        : full([], 1, { device }));
      return { gradNorm, clipScale, finite: stepFinite(gradNorm, options.lossFinite) };
    });
    const guard = options.skipNonfinite === true;
    this.adamw.step++;
    const step = this.adamw.step;
    noGrad(() => tidy(() => {
      const grad = this.adamw.clips ? shard.mul(result.clipScale) : shard;
      const named = this.adamw.module.namedParameters();
      const params: Tensor[] = [];
      const ms: Tensor[] = [];
      const vs: Tensor[] = [];
      for (const { entry, begin, end } of piecesOf(layout, this.from, this.to)) {
        const p = named.get(entry.name)!;
        const at = entry.offset + begin - this.from;
        const before = {
          param: p.reshape([entry.numel]).slice(0, begin, end), grad: grad.slice(0, at, at + end - begin),
          expAvg: this.expAvg!.slice(0, at, at + end - begin), expAvgSq: this.expAvgSq!.slice(0, at, at + end - begin),
        };
        const out = adamwStep(before, {
          lr, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weightDecay: o.decay(entry.name) ? o.weightDecay : 0, step,
        });
        params.push(guard ? selectFinite(result.finite, out.param, before.param) : out.param);
        ms.push(guard ? selectFinite(result.finite, out.expAvg, before.expAvg) : out.expAvg);
        vs.push(guard ? selectFinite(result.finite, out.expAvgSq, before.expAvgSq) : out.expAvgSq);
      }
      const pad = layout.shardSize - (this.to - this.from);
      if (pad > 0) params.push(zeros([pad], { device }));
      this.disposeMoments();
      this.expAvg = untrack(ms.length === 1 ? ms[0]! : concat(ms, 0));
      this.expAvgSq = untrack(vs.length === 1 ? vs[0]! : concat(vs, 0));
      const gathered = allGather(params.length === 1 ? params[0]! : concat(params, 0));
      for (const entry of layout.entries) {
        this.adamw.module.setParameter(entry.name, untrack(gathered.slice(0, entry.offset, entry.offset + entry.numel).reshape(entry.shape)));
      }
    }));
    shard.dispose();
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
  }
}

/** Per-rank memory of training, in bytes (see the module comment for each term). */
export interface MemoryEstimate {
  worldSize: number;
  sharding: Sharding;
  parameters: number;
  /** Gradients held through the optimizer step. */
  gradients: number;
  optimizer: number;
  activations: number;
  /** The peak: parameters + optimizer + max(full gradients + activations, held gradients + update transients). */
  total: number;
}

/**
 * Float32 activations the autograd tape keeps for the backward of one micro-batch of B sequences
 * of S tokens, T = B·S rows, d = dModel, f = dFF, V = vocabSize, L layers, E experts per layer (a
 * dense FFN: one expert that takes every row; expert choice at capacity factor c takes about c·T
 * rows per expert group, so about c·T expert rows per layer in all):
 *   per layer: the block input and two RMSNorm outputs (3·T·d), q, k, v before and after QK-norm
 *   and RoPE, the attention output and its projection (about 10·T·d), the FFN input and output
 *   (2·T·d), and per expert row the SwiGLU hidden values W1·x, W3·x and their product (3·f);
 *   the LM head: the logits and their softmax (2·T·V).
 * An estimate: the kernels' own scratch buffers and the tape's bookkeeping are not counted.
 */
export function activationBytes(config: TransformerConfig, batch: { batchSize: number; seqLen: number }): number {
  const T = batch.batchSize * batch.seqLen;
  const d = config.dModel;
  const f = config.ffn.dFF;
  const capacity = config.ffn.kind === 'moe' ? (config.ffn.capacityFactor ?? 1) : 1;
  const perLayer = 15 * T * d + capacity * T * 3 * f;
  return 4 * (config.layers * perLayer + 2 * T * config.vocabSize);
}

/** The per-rank memory of training `config` on `worldSize` ranks with `sharding` (module comment). */
export function memoryPerRank(config: TransformerConfig, options: { worldSize: number; sharding: Sharding; batchSize: number; seqLen: number }): MemoryEstimate {
  const { worldSize: R, sharding } = options;
  if (!Number.isInteger(R) || R < 1) throw new MomaError('ERR_ARG', `memoryPerRank: worldSize must be an integer >= 1, got ${String(R)}`);
  checkSharding(sharding, 'memoryPerRank: sharding');
  const N = countParameters(config).total;
  const sharded = sharding !== 'none' && R > 1;
  const shard = Math.ceil(N / R);
  const parameters = 4 * N;
  const gradients = sharded && sharding === 'zero2' ? 4 * shard : 4 * N;
  const optimizer = sharded ? 8 * shard : 8 * N;
  const activations = activationBytes(config, options);
  const largest = largestParameter(config);
  const transients = sharded ? 4 * 4 * shard + 4 * N : 3 * 4 * largest;
  const total = parameters + optimizer + Math.max(4 * N + activations, gradients + transients);
  return { worldSize: R, sharding, parameters, gradients, optimizer, activations, total };
}

/** Elements of the largest parameter tensor of `config` (the embedding or LM head, or an expert weight stack). */
function largestParameter(config: TransformerConfig): number {
  const d = config.dModel;
  const experts = config.ffn.kind === 'moe' ? (config.ffn.groups ?? []).reduce((s, g) => s + g.experts, 0) : 1;
  return Math.max(config.vocabSize * d, experts * d * config.ffn.dFF, d * d);
}
