/**
 * Per-rank memory of training (printed by `moma model info --world-size R --sharding …`), in
 * bytes, N parameters (float32), R ranks, one micro-batch of T = B·S rows.
 *
 * What lives when. A training step runs the forward and the backward inside one `tidy` (lib/train/
 * trainer.ts), so every tensor the forward creates — not only what a backward closure saves —
 * lives until the backward has been queued. Ops allocate their outputs when they are queued, on
 * the host thread, and a disposed tensor is freed only when the device queue has run the tasks
 * that read it (csrc/core/queue.h). Hence two regimes:
 *   - queued (the CPU): the worker computes the kernels and runs behind the host, which queues the
 *     whole backward long before the worker frees the backward's first transient gradient. The
 *     step's peak is then everything the forward and the backward allocate.
 *   - launched (CUDA): the worker only launches kernels and keeps up with the host; a tensor is
 *     freed (to the caching allocator) when the host disposes it, so the backward's transient
 *     gradients come and go; the peak is what the tidy holds plus the largest transient.
 *
 * The terms (memoryPerRank; N parameters, N_root of them in zero3's root unit — embedding, final
 * norm, LM head — and n_b in block b; S(n) = ceil(n / R)):
 *   parameters   4N, or under zero3 4·N_root + 4·Σ_b S(n_b) (the blocks' shards)
 *   optimizer    AdamW's two moments: 8N (none), 8·S(N) (zero1, zero2), 8·(S(N_root) + Σ_b S(n_b)) (zero3)
 *   backwardGradients  the gradients the backward leaves: 4N, or under zero3 4·N_root + 4·Σ_b S(n_b)
 *   gradients    held through the update (launched): 4N (none, zero1), 4·S(N) (zero2),
 *                4·(S(N_root) + Σ_b S(n_b)) (zero3)
 *   activations  what the forward allocates (activationBytes); zero3 queued: the root's forward and
 *                per block its all-gather (the flat 4·R·S(n_b) and the parameters sliced out, 4·n_b)
 *                and its forward; zero3 launched: the root's forward and every block's output
 *   backward     what the backward allocates besides the gradients (queued) or holds at its largest
 *                moment (launched): the held temporaries (the embedding's dense zero gradient V·d,
 *                MoD's dense gradients) and the transients (backwardBytes). zero3 adds per block
 *                the gather again, the recompute's forward, the block's backward, the full
 *                parameter gradients 4·n_b and the flat gradient the reduce-scatter sends (slices,
 *                padding and their join, 2·4·R·S(n_b)); launched, only the largest block's
 *                (gathered parameters, recompute, full gradients, flat gradient) or the LM head's
 *                transient, whichever is larger
 *   peak         max(backward moment, update moment), where
 *                backward moment = parameters + optimizer + backwardGradients + activations + backward
 *                update moment   = parameters + optimizer + backwardGradients (queued: the full
 *                                  gradients are freed only once the queue reaches the update) or
 *                                  gradients (launched) + the update's transients.
 *
 * The update's transients (lib/optim/adamw.ts, lib/train/zero.ts, lib/train/data_parallel.ts; a
 * slice is a copy, a reshape is not). Queued, everything the update allocates:
 *   none         the norm's squares 4N, the clipped gradients 4N, AdamW's new parameters and
 *                moments 12N; on R > 1 ranks allReduceGradients' flat buckets, their sums and the
 *                slices back, 3·4N
 *   zero1        the all-reduce 3·4N, this rank's range of it (slices and their join) 2·4·S(N)
 *   zero2        the reduce-scatter: the R pieces' slices, their joins and the send buffer 3·4·R·S(N),
 *                the result 4·S(N) (and the rounds' join 4·S(N) when there are several ~25 MiB rounds)
 *   zero3        the root unit's reduce-scatter as zero2's (the blocks' shards of the gradient are
 *                already reduced in the backward)
 *   all sharded  over the M = S(N) (zero1/2) or S(N_root) + Σ_b S(n_b) (zero3) elements a rank
 *                updates: the norm's squares 4M, and per cell (one AdamW call: a parameter's part
 *                of the range, split at the rounds where the region is held whole) the slices of
 *                parameter and gradient, the clipped gradient and AdamW's three outputs, 6·4M in
 *                all (the moments are kept per cell: no slices or joins of them); the joins of the
 *                new parameters, 4M (the rounds' send buffers, or a block unit's new shard).
 *                What is held whole (N, or N_root under zero3) is all-gathered in the rounds:
 *                4·R·S(n) and the parameters sliced out of it 4n, and the joins of parameters that
 *                arrive in several parts, 4n when there are several rounds (not counted for one).
 * Launched, the largest moment of: the reduction (one bucket or round: its copies 3×); the norm's
 * squares of the largest region, 4·S; a block unit's update (its new parameters and the last
 * cell's scope, at most 4·S(n_b) + 6·4·min(S(n_b), P) with P the largest parameter tensor, or the
 * parts and their join 2·4·S(n_b)); a round of a region held whole (its cells' new parameters and
 * the last cell's scope, their join, the gathered round and its slices, the parts of parameters
 * still incomplete — at most two per rank's range, bounded by min(4n, 4·(2R + 1)·P) with the join
 * of one). None: the norm's squares 4N or one all-reduce bucket.
 * Measured (test/zero_memory.test.ts, queued regime, CPU): every term above within 4% on one rank
 * (dense, MoE, MoD, MoE + MoD, bf16) and on two (none, zero1, zero2, zero3 dense and MoE + MoD);
 * the launched regime is not measured (no GPU there).
 *
 * Per-op allocations (activationBytes, backwardBytes; s = 4 or 2 bytes per activation element for
 * float32 or bfloat16 compute, d = dModel, f = dFF, H heads, V vocabulary, n rows of the layer):
 *   Linear in→out     forward s·n·out (+ a bf16 copy of the weight, 2·out·in, under bf16);
 *                     backward dx s·n·in (+ under bf16 the gradient cast to bf16 2·n·out and dx
 *                     cast back to float32 4·n·in, as the tape keeps float32 gradients)
 *   RMSNorm           forward y s·n·d, rstd 4n; backward dx s·n·d (+ bf16 casts 6·n·d)
 *   QK LayerNorm      forward y s·n·d, mean and rstd 4·n·H each; backward as RMSNorm
 *   RoPE              forward s·n·d; backward s·n·d (+ bf16 casts 6·n·d)
 *   attention         forward o s·n·d and lse 4·n·H; backward dq, dk, dv 3·s·n·d (+ 2·n·d + 3·4·n·d)
 *   SwiGLU            forward s·n·f; backward dh1, dh3 2·s·n·f (+ 2·n·f + 2·4·n·f)
 *   residual add      forward s·n·d; backward two float32 clones of the gradient 8·n·d
 *   a second gradient into one tensor: its float32 sum 4·n·d (the block input gets 4: the
 *                     residual, wq, wk, wv; the FFN input 3 (dense: residual, w1, w3) or 2 (MoE))
 *   MoE FFN (R slots, the capacity bound of lib/moe/ops moeSlotBound; E experts, W the largest
 *                     group, G groups): forward partition and routing int32 4·(2n + 2G + E + 2 + R
 *                     + n·W), float32 router logits and scores 8·n·E and slot gates 4R, dispatched
 *                     rows xd and expert outputs 2·s·R·d, h1, h3 and a 3·s·R·f, combined y s·n·d;
 *                     backward dscores and dlogits 8·n·E, dout, dxd1, dxd3 and their sum 4·s·R·d,
 *                     da, dh1, dh3 3·s·R·f, combined dx s·n·d, router dx and the sum 8·n·d
 *   MoD block (k = ceil(c_d·T) rows): forward router T, gate s·T, rows and their positions,
 *                     segments and modalities 4·5k, gathered rows s·k·d, mix 2·s·k·d + s·k, output
 *                     s·T·d; backward 2·4·T·d (base clone, scatter of the gathered rows' gradient),
 *                     a dense zero gradient 4·T·d, the mix's 7·4·k·d, the gate's 24·T
 *   embedding         forward 4·T·d (+ 2·T·d bf16 cast); backward a dense zero table 4·V·d
 *   loss              logits s·T·V; cross-entropy nll and lse 8T, weighted sums 4T·(1 + modalities),
 *                     z-loss 12T; backward dlogits s·T·V (+ 4·T·V under bf16 and the bf16 cast
 *                     2·T·V for the head's backward)
 * Sequence packing and padding rows are not modelled (padding rows cost as much as others; MoD
 * counts its k from all rows).
 */
import { MomaError } from '../errors';
import { isModLayer, modRows } from '../formulas';
import { moeLayoutOf, MoeGroupConfig } from '../moe/moma_ffn';
import { moeSlotBound } from '../moe/ops';
import { countParameters } from '../model/params';
import { TransformerConfig, validateConfig } from '../model/transformer';
import { DEFAULT_BUCKET_BYTES } from './data_parallel';
import { checkSharding, Sharding } from './zero';

/** How the device queue frees memory: 'queued' (CPU: the worker runs behind the host) or 'launched' (CUDA). */
export type QueueRegime = 'queued' | 'launched';

/** Per-rank memory of training, in bytes (see the module comment for each term). */
export interface MemoryEstimate {
  worldSize: number;
  sharding: Sharding;
  regime: QueueRegime;
  parameters: number;
  /** Gradients at the end of the backward: the full 4N, or under zero3 the root's full gradients and the blocks' shards. */
  backwardGradients: number;
  /** Gradients held through the optimizer step. */
  gradients: number;
  optimizer: number;
  /** What the forward of one micro-batch allocates (held until the backward is queued). */
  activations: number;
  /** What the backward allocates besides the leaf gradients (queued) or holds besides them at its largest moment (launched). */
  backward: number;
  /** Bytes held at the end of the backward: parameters + optimizer + backwardGradients + activations + backward. */
  backwardMoment: number;
  /** Bytes held during the optimizer step: parameters + optimizer + gradients (queued: backwardGradients, not freed yet) + the update's transients. */
  updateMoment: number;
  /** The peak: max(backwardMoment, updateMoment). */
  total: number;
}

/** One micro-batch: B sequences of S tokens. */
export interface MicroBatch {
  batchSize: number;
  seqLen: number;
}

/** Bytes one part of a step allocates: its forward, its backward's held temporaries and its backward's transients. */
interface PartBytes {
  forward: number;
  held: number;
  transient: number;
}

/**
 * Bytes a step allocates: the root (embedding, final norm, LM head and loss), each decoder block
 * (the FSDP units of zero3), their totals, and the largest single transient (the LM head's).
 */
interface StepBytes {
  root: PartBytes;
  blocks: PartBytes[];
  forward: number;
  backwardHeld: number;
  backwardTransient: number;
  headTransient: number;
}

/** Allocations of the forward and backward of `config` on one micro-batch (module comment, per op). */
function stepBytes(config: TransformerConfig, batch: MicroBatch): StepBytes {
  const c = validateConfig(config);
  const T = batch.batchSize * batch.seqLen;
  if (!Number.isInteger(T) || T < 1) throw new MomaError('ERR_ARG', `memory model: batchSize and seqLen must be integers >= 1, got ${batch.batchSize} and ${batch.seqLen}`);
  const d = c.dModel;
  const f = c.ffn.dFF;
  const H = c.heads;
  const V = c.vocabSize;
  const bf = c.computeDtype === 'bfloat16';
  const s = bf ? 2 : 4;
  // under bf16, a gradient enters an op cast to bf16 (2 bytes) and each input gradient leaves it cast back to float32 (4 bytes)
  const castIn = (n: number): number => (bf ? 2 * n : 0);
  const castOut = (n: number): number => (bf ? 4 * n : 0);
  const root: PartBytes = { forward: 0, held: 0, transient: 0 };
  // the part being counted: the root, or the block of the layer being counted
  let part = root;
  const linear = (n: number, inF: number, outF: number): void => {
    part.forward += (bf ? 2 * outF * inF : 0) + s * n * outF;
    part.transient += castIn(n * outF) + s * n * inF + castOut(n * inF);
  };
  const rmsNorm = (n: number): void => {
    part.forward += s * n * d + 4 * n;
    part.transient += castIn(n * d) + s * n * d + castOut(n * d);
  };
  const headNorm = (n: number): void => {
    part.forward += s * n * d + 8 * n * H;
    part.transient += castIn(n * d) + s * n * d + castOut(n * d);
  };
  const rope = (n: number): void => {
    part.forward += s * n * d;
    part.transient += castIn(n * d) + s * n * d + castOut(n * d);
  };
  const residual = (n: number): void => {
    part.forward += s * n * d;
    part.transient += 8 * n * d;
  };
  const gradientSums = (n: number, count: number): void => {
    part.transient += 4 * n * d * count;
  };
  const moeLayout = c.ffn.kind === 'moe' ? moeLayoutOf({ groups: c.ffn.groups as MoeGroupConfig[], modalities: c.modalities }) : null;
  const ffn = (n: number): void => {
    if (moeLayout === null) {
      linear(n, d, f);
      linear(n, d, f);
      part.forward += s * n * f;
      part.transient += castIn(n * f) + 2 * s * n * f + castOut(2 * n * f);
      linear(n, f, d);
      gradientSums(n, 2);
      return;
    }
    const E = moeLayout.experts.reduce((a, b) => a + b, 0);
    const W = Math.max(...moeLayout.experts);
    const G = moeLayout.experts.length;
    const R = moeSlotBound(n, moeLayout, { mode: c.ffn.routing ?? 'expert-choice', capacityFactor: c.ffn.capacityFactor ?? 1, topK: c.ffn.topK ?? 2 });
    part.forward += (bf ? 3 * 2 * E * d * f + 4 * n * d : 0) + 4 * (2 * n + 2 * G + E + 2 + R + n * W) + 8 * n * E + 4 * R;
    part.forward += 2 * s * R * d + 3 * s * R * f + s * n * d;
    part.transient += (bf ? 2 * n * d : 0) + 8 * n * E + 4 * s * R * d + 3 * s * R * f + s * n * d + 8 * n * d;
    part.transient += bf ? 4 * n * d + 4 * n * d + 2 * n * d + castOut(n * d) : 0;
    gradientSums(n, 1);
  };
  const block = (n: number): void => {
    for (let i = 0; i < 3; i++) {
      linear(n, d, d);
      if (i < 2) {
        headNorm(n);
        rope(n);
      }
    }
    part.forward += s * n * d + 4 * n * H;
    part.transient += castIn(n * d) + 3 * s * n * d + castOut(3 * n * d);
    linear(n, d, d);
    gradientSums(n, 3);
    rmsNorm(n);
    residual(n);
    ffn(n);
    rmsNorm(n);
    residual(n);
  };
  const mod = (k: number): void => {
    linear(T, d, 1);
    part.forward += s * T + (bf ? 4 * T : 0) + 4 * 5 * k + s * k * d;
    block(k);
    part.forward += s * k + 2 * s * k * d + s * T * d;
    part.transient += 8 * T * d + 6 * 4 * k * d + 4 * k + 20 * T + (bf ? 4 * k + 4 * k * d + 4 * T : 0);
    part.held += 4 * T * d + 4 * T;
    gradientSums(T, 2);
  };
  // embedding (float32 table rows, cast to the compute dtype) and its backward's dense zero table
  part.forward += 4 * T * d + (bf ? 2 * T * d : 0);
  part.held += 4 * V * d;
  const blocks: PartBytes[] = [];
  for (let i = 0; i < c.layers; i++) {
    part = { forward: 0, held: 0, transient: 0 };
    if (c.mod !== null && isModLayer(i, c.mod.interval)) mod(modRows(T, c.mod.capacity));
    else block(T);
    blocks.push(part);
  }
  part = root;
  rmsNorm(T);
  // LM head, cross-entropy (nll, lse), the weighted loss and per-modality sums, the z-loss
  const M = c.modalities.length;
  part.forward += (bf ? 2 * V * d : 0) + s * T * V + 8 * T + 4 * (T + 1) * (1 + M) + (c.zLoss > 0 ? 12 * T + 8 : 0);
  part.held += 8 + 4 * T + (c.zLoss > 0 ? 4 * T : 0);
  const headTransient = s * T * V + castOut(T * V) + castIn(T * V);
  part.transient += headTransient + s * T * d + castOut(T * d);
  const total = (key: keyof PartBytes): number => blocks.reduce((sum, b) => sum + b[key], root[key]);
  return { root, blocks, forward: total('forward'), backwardHeld: total('held'), backwardTransient: total('transient'), headTransient };
}

/**
 * Bytes the forward of one micro-batch of B sequences of S tokens allocates (module comment, per
 * op): all of it lives until the backward has been queued.
 */
export function activationBytes(config: TransformerConfig, batch: MicroBatch): number {
  return stepBytes(config, batch).forward;
}

/**
 * Bytes the backward allocates besides the leaf gradients: everything it allocates (queued), or
 * what it holds to its end plus its largest transient, the LM head's gradient (launched).
 */
export function backwardBytes(config: TransformerConfig, batch: MicroBatch, regime: QueueRegime = 'queued'): number {
  const b = stepBytes(config, batch);
  return regime === 'queued' ? b.backwardHeld + b.backwardTransient : b.backwardHeld + b.headTransient;
}

/** Parameters of the FSDP units of zero3 (lib/train/fsdp.ts): the root (embedding, final norm, LM head) and each decoder block (a MoD block with its router), from the config alone. */
export function unitParameters(config: TransformerConfig): { root: number; blocks: number[] } {
  const c = validateConfig(config);
  const p = countParameters(c);
  const d = c.dModel;
  const root = p.components.embedding + p.components.lmHead + d;
  const modRouters = p.modLayers * d;
  const perBlock = (p.total - root - modRouters) / c.layers;
  const blocks = Array.from({ length: c.layers }, (_, i) => perBlock + (c.mod !== null && isModLayer(i, c.mod.interval) ? d : 0));
  return { root, blocks };
}

/**
 * Bytes the update queues besides the state (the queued regime: all of it is allocated before the
 * first is freed), or holds at its largest moment (launched), module comment "the update". `largest`:
 * the elements of the largest parameter tensor.
 */
function updateTransients(sharding: Sharding, R: number, N: number, units: { root: number; blocks: number[] }, largest: number, regime: QueueRegime, bucketBytes: number): number {
  const queued = regime === 'queued';
  if (sharding === 'none' || R === 1) {
    // the norm's squares, the clipped gradients, AdamW's new parameters and moments; on R > 1 the all-reduce's flat bucket, its sum and the slices back
    if (queued) return 4 * N + 4 * N + 12 * N + (R > 1 ? 3 * 4 * N : 0);
    return Math.max(4 * N, R > 1 ? 3 * Math.min(4 * N, bucketBytes) : 0);
  }
  const shard = (n: number): number => Math.ceil(n / R);
  // elements of one round of a region of n parameters held whole (the reduce-scatter's and the all-gather's)
  const roundOf = (n: number): number => Math.max(1, Math.min(shard(n), Math.floor(bucketBytes / 4 / R)));
  // the reduce-scatter of n parameters in rounds: per round the R pieces' slices (and the pieces' joins), the send buffer and the result; the rounds' join
  const reduceScatter = (n: number): number => {
    const S = shard(n);
    const round = roundOf(n);
    const join = S > round ? 4 * S : 0;
    return queued ? 3 * 4 * R * S + 4 * S + join : 3 * 4 * R * round + 4 * round + join;
  };
  // AdamW over c elements in one scope: the slices of parameter and gradient, the clipped gradient, the new parameter and moments
  const cell = (c: number): number => 6 * 4 * c;
  // a region of n parameters held whole, updated and all-gathered round by round. Queued: the
  // cells of its S(n) elements, the rounds' joins, the gathered rounds 4·R·S(n), the parameters
  // sliced out 4n and the joins of parameters in several parts (4n when there are several rounds).
  // Launched, one round: its cells' new parameters and the last cell's scope, the join, the
  // gathered round and its slices, and the parts of parameters not complete yet (at most two per
  // rank's range: the one the round ends in and the one across the range's start) and one join.
  const heldWhole = (n: number): number => {
    const S = shard(n);
    const round = roundOf(n);
    if (queued) return cell(S) + 4 * S + 4 * R * S + 4 * n + (S > round ? 4 * n : 0);
    const c = Math.min(round, largest);
    return 4 * round + cell(c) + 4 * round + 2 * 4 * R * round + Math.min(4 * n, 4 * (2 * R + 1) * largest);
  };
  // a zero3 block unit of n parameters: its cells (one per parameter), their join into the new shard.
  // Launched: the new parameters so far and the last cell's scope, or the parts and their join.
  const block = (n: number): number => {
    const S = shard(n);
    return queued ? cell(S) + 4 * S : Math.max(2 * 4 * S, 4 * S + cell(Math.min(S, largest)));
  };
  // the gradient norm's squares: all regions' queued; launched, the largest region's
  if (sharding === 'zero1' || sharding === 'zero2') {
    const S = shard(N);
    const reduce = sharding === 'zero1'
      // the bucketed all-reduce (flat bucket, sum, slices back), then this rank's range of it (slices and their join)
      ? (queued ? 3 * 4 * N + 2 * 4 * S : Math.max(3 * Math.min(4 * N, bucketBytes), 2 * 4 * S))
      : reduceScatter(N);
    return queued ? reduce + 4 * S + heldWhole(N) : Math.max(reduce, 4 * S, heldWhole(N));
  }
  const regions = [units.root, ...units.blocks];
  if (queued) return reduceScatter(units.root) + regions.reduce((sum, n) => sum + 4 * shard(n), 0) + heldWhole(units.root) + units.blocks.reduce((sum, n) => sum + block(n), 0);
  return Math.max(reduceScatter(units.root), 4 * Math.max(...regions.map(shard)), heldWhole(units.root), ...units.blocks.map(block));
}

/** Elements of the largest parameter tensor of `config`: the embedding (V·d), a layer's stacked expert weights (E·d·f), or an attention projection (d²). */
function largestParameter(config: TransformerConfig): number {
  const c = validateConfig(config);
  const p = countParameters(c);
  return Math.max(c.vocabSize * c.dModel, p.components.experts / (3 * c.layers), c.dModel * c.dModel);
}

/** The per-rank memory of training `config` on `worldSize` ranks with `sharding` (module comment). */
export function memoryPerRank(config: TransformerConfig, options: MicroBatch & { worldSize: number; sharding: Sharding; regime?: QueueRegime; bucketBytes?: number }): MemoryEstimate {
  const { worldSize: R, sharding } = options;
  if (!Number.isInteger(R) || R < 1) throw new MomaError('ERR_ARG', `memoryPerRank: worldSize must be an integer >= 1, got ${String(R)}`);
  checkSharding(sharding, 'memoryPerRank: sharding');
  const regime = options.regime ?? 'queued';
  if (regime !== 'queued' && regime !== 'launched') throw new MomaError('ERR_ARG', `memoryPerRank: regime must be 'queued' or 'launched', got ${String(regime)}`);
  const bucketBytes = options.bucketBytes ?? DEFAULT_BUCKET_BYTES;
  if (!(Number.isFinite(bucketBytes) && bucketBytes > 0)) throw new MomaError('ERR_ARG', `memoryPerRank: bucketBytes must be a positive number, got ${String(bucketBytes)}`);
  const N = countParameters(config).total;
  const units = unitParameters(config);
  const sharded = sharding !== 'none' && R > 1;
  const zero3 = sharded && sharding === 'zero3';
  const shard = (n: number): number => Math.ceil(n / R);
  const blockShards = units.blocks.reduce((sum, n) => sum + shard(n), 0);
  const parameters = zero3 ? 4 * units.root + 4 * blockShards : 4 * N;
  const optimizer = 8 * (!sharded ? N : zero3 ? shard(units.root) + blockShards : shard(N));
  const backwardGradients = zero3 ? 4 * units.root + 4 * blockShards : 4 * N;
  const gradients = !sharded || sharding === 'zero1' ? 4 * N : sharding === 'zero2' ? 4 * shard(N) : 4 * (shard(units.root) + blockShards);
  const step = stepBytes(config, options);
  let activations: number;
  let backward: number;
  if (!zero3) {
    activations = step.forward;
    backward = regime === 'queued' ? step.backwardHeld + step.backwardTransient : step.backwardHeld + step.headTransient;
  } else {
    // per block unit: the all-gather of its shard (the flat result and the parameters sliced out of
    // it), and in the backward the flat gradient the reduce-scatter sends (slices, padding, join)
    const gathered = (n: number): number => 4 * R * shard(n) + 4 * n;
    const flatGradient = (n: number): number => 2 * 4 * R * shard(n);
    if (regime === 'queued') {
      activations = step.root.forward + step.blocks.reduce((sum, b, i) => sum + gathered(units.blocks[i]!) + b.forward, 0);
      backward = step.root.held + step.root.transient + step.blocks.reduce((sum, b, i) => {
        const n = units.blocks[i]!;
        return sum + gathered(n) + b.forward + b.held + b.transient + 4 * n + flatGradient(n);
      }, 0);
    } else {
      const s = validateConfig(config).computeDtype === 'bfloat16' ? 2 : 4;
      activations = step.root.forward + step.blocks.length * s * options.batchSize * options.seqLen * validateConfig(config).dModel;
      const blockMoment = Math.max(...step.blocks.map((b, i) => {
        const n = units.blocks[i]!;
        return 4 * n + b.forward + b.held + 4 * n + flatGradient(n);
      }));
      backward = step.root.held + Math.max(step.headTransient, blockMoment);
    }
  }
  const backwardMoment = parameters + optimizer + backwardGradients + activations + backward;
  const updateMoment = parameters + optimizer + (regime === 'queued' ? backwardGradients : gradients) + updateTransients(sharding, R, N, units, largestParameter(config), regime, bucketBytes);
  const total = Math.max(backwardMoment, updateMoment);
  return { worldSize: R, sharding, regime, parameters, backwardGradients, gradients, optimizer, activations, backward, backwardMoment, updateMoment, total };
}
