/**
 * Data parallelism and gradient accumulation for the Trainer, on the process group of
 * lib/distributed (gloo for CPU tensors, NCCL for CUDA tensors).
 *
 * A step trains on a global batch of R·A micro-batches (R ranks, A accumulation steps), taken in
 * order from the data source, which every rank runs identically: rank r trains micro-batches
 * r·A … r·A + A − 1 (a contiguous split) and reads only the host counts of the others, so every
 * rank knows the global tokens, targets and FLOPs without communicating. Each micro-batch's loss
 * is its own mean over its counted rows (lib/model/batch_rows.ts), and the step's gradient is the mean of the R·A
 * micro-batch gradients (as Megatron-Core does without per-token loss): each backward is scaled
 * by 1/(R·A) and the ranks' sums are all-reduced. R ranks with accumulation A therefore train
 * exactly like one rank with accumulation R·A on the same micro-batches, up to the order of the
 * float sums. Expert choice routes within each micro-batch, as in the paper.
 *
 * Gradients are all-reduced in buckets (about 25 MiB, last parameters first, as torch's DDP
 * orders them), each bucket one flat all-reduce. GradientReducer overlaps them with the backward
 * of the step's last micro-batch: backward's onGradReady hook reports each parameter as soon as
 * its gradient is final, and a bucket starts (allReduceAsync: beside the device's compute) once
 * all its members are ready and every earlier bucket has started, so every rank starts the same
 * buckets in the same order; `finish()` starts the rest and waits. The sums are bit for bit those
 * of allReduceGradients (the same buckets, the same collective), which stays as the path without
 * overlap.
 */
import { tidy, untrack } from '../autograd/scope';
import { noGrad } from '../autograd/tape';
import { allReduce, allReduceAsync, Group, isInitialized, Work, world } from '../distributed/process_group';
import { MomaError } from '../errors';
import { zeros } from '../creation';
import { concat } from '../ops';
import { Generator } from '../random';
import { Tensor } from '../tensor';

/** torch DDP's default bucket size. */
export const DEFAULT_BUCKET_BYTES = 25 * 2 ** 20;

/** How one optimizer step is split: `ranks` processes, `accumulation` micro-batches each. */
export interface StepSplit {
  rank: number;
  ranks: number;
  accumulation: number;
}

/** The split of a Trainer: the process group when one of more than one rank is joined, else this process alone. */
export function stepSplit(accumulation: number | undefined, dataParallel: boolean | undefined): StepSplit {
  const A = accumulation ?? 1;
  if (!Number.isInteger(A) || A < 1 || A > 1_000_000) throw new MomaError('ERR_ARG', `Trainer: gradAccum must be an integer in [1, 1e6], got ${String(accumulation)}`);
  const joined = isInitialized() && world().worldSize > 1;
  if (dataParallel === true && !joined) {
    throw new MomaError('ERR_DIST', 'Trainer: dataParallel needs a process group of more than one rank: start the ranks with `moma launch` (or torchrun, srun, mpirun) and call `await distributed.init()` first');
  }
  if (!joined || dataParallel === false) return { rank: 0, ranks: 1, accumulation: A };
  const w = world();
  return { rank: w.rank, ranks: w.worldSize, accumulation: A };
}

/**
 * The generator of global micro-batch `index` of step `step` (0-based) when a step has several
 * micro-batches: Philox keyed by the seed at offset (step·(R·A) + index)·2^40, so the Gumbel noise
 * of a micro-batch does not depend on which rank trains it or in which order.
 */
export function microBatchGenerator(seed: bigint, step: number, index: number, perStep: number): Generator {
  const offset = ((BigInt(step) * BigInt(perStep) + BigInt(index)) << 40n) & ((1n << 64n) - 1n);
  return new Generator(seed).setState({ seed: seed.toString(), offset: offset.toString() });
}

/**
 * Sums every parameter's gradient over the ranks (of `group`, default the world), in place of the
 * local one (a parameter without one gets zeros first, so every rank reduces the same buffers in
 * the same order).
 */
export function allReduceGradients(parameters: Tensor[], bucketBytes = DEFAULT_BUCKET_BYTES, group?: Group): void {
  noGrad(() => {
    for (const p of parameters) {
      if (p.grad === null) p.grad = untrack(zeros(p.shape, { device: p.device }));
    }
    let bucket: Tensor[] = [];
    let bytes = 0;
    const flush = (): void => {
      if (bucket.length === 0) return;
      const members = bucket;
      tidy(() => {
        const grads = members.map((p) => (p.grad as Tensor).reshape([(p.grad as Tensor).numel]));
        const flat = grads.length === 1 ? grads[0]! : concat(grads, 0);
        const summed = allReduce(flat, { op: 'sum', group });
        let offset = 0;
        for (const p of members) {
          const g = p.grad as Tensor;
          const reduced = untrack(summed.slice(0, offset, offset + g.numel).reshape([...g.shape]));
          offset += g.numel;
          g.dispose();
          p.grad = reduced;
        }
      });
      bucket = [];
      bytes = 0;
    };
    for (const p of [...parameters].reverse()) {
      bucket.push(p);
      bytes += (p.grad as Tensor).numel * 4;
      if (bytes >= bucketBytes) flush();
    }
    flush();
  });
}

/** The parameters whose gradients one process group sums (GradientReducer). */
export interface ReducedParameters {
  parameters: Tensor[];
  /** Default: the world. */
  group?: Group;
}

export interface GradientReducerOptions {
  /** Bucket size in bytes of float32 gradient (default DEFAULT_BUCKET_BYTES). */
  bucketBytes?: number;
  /** Start buckets during the backward (true) or all-reduce after it as allReduceGradients does (false). */
  overlap: boolean;
}

interface Bucket {
  members: Tensor[];
  group: Group | undefined;
  ready: Set<Tensor>;
  work: Work | null;
}

/**
 * The gradient all-reduce of data parallelism, overlapped with the backward. Use per optimizer
 * step: pass `hook` as backward's onGradReady on the step's LAST micro-batch (earlier micro-batches
 * only accumulate), then call `finish()`, which leaves in every parameter's grad its sum over its
 * group's ranks. Buckets as allReduceGradients makes them (per list, reverse parameter order),
 * numbered over the lists in order; with overlap off, finish() is allReduceGradients per list.
 */
export class GradientReducer {
  /** Pass as backward's onGradReady on the step's last micro-batch. */
  readonly hook: (leaf: Tensor) => void;
  private readonly buckets: Bucket[] = [];
  private readonly bucketOf = new Map<Tensor, Bucket>();
  private readonly lists: ReducedParameters[];
  private readonly bucketBytes: number;
  private readonly overlap: boolean;
  private nextStart = 0;

  constructor(lists: ReducedParameters[], options: GradientReducerOptions) {
    const fn = 'GradientReducer';
    if (!Array.isArray(lists)) throw new MomaError('ERR_ARG', `${fn}: lists must be an array of { parameters, group? }`);
    const bucketBytes = options.bucketBytes ?? DEFAULT_BUCKET_BYTES;
    if (!(Number.isFinite(bucketBytes) && bucketBytes > 0)) throw new MomaError('ERR_ARG', `${fn}: bucketBytes must be a positive number, got ${String(bucketBytes)}`);
    if (typeof options.overlap !== 'boolean') throw new MomaError('ERR_ARG', `${fn}: overlap must be true or false, got ${String(options.overlap)}`);
    this.lists = lists;
    this.bucketBytes = bucketBytes;
    this.overlap = options.overlap;
    lists.forEach(({ parameters, group }, k) => {
      if (!Array.isArray(parameters) || parameters.some((p) => !(p instanceof Tensor))) throw new MomaError('ERR_ARG', `${fn}: lists[${k}].parameters must be an array of Tensors`);
      let bucket: Bucket = { members: [], group, ready: new Set(), work: null };
      let bytes = 0;
      for (const p of [...parameters].reverse()) {
        if (this.bucketOf.has(p)) throw new MomaError('ERR_ARG', `${fn}: a parameter of shape [${p.shape.join(', ')}] is listed twice`);
        bucket.members.push(p);
        this.bucketOf.set(p, bucket);
        bytes += p.numel * 4;
        if (bytes >= bucketBytes) {
          this.buckets.push(bucket);
          bucket = { members: [], group, ready: new Set(), work: null };
          bytes = 0;
        }
      }
      if (bucket.members.length > 0) this.buckets.push(bucket);
    });
    this.hook = (leaf: Tensor): void => {
      if (!this.overlap) return;
      const bucket = this.bucketOf.get(leaf);
      if (bucket === undefined || bucket.work !== null) return;
      bucket.ready.add(leaf);
      while (this.nextStart < this.buckets.length) {
        const next = this.buckets[this.nextStart]!;
        if (next.ready.size < next.members.length) break;
        this.start(next);
      }
    };
  }

  /** Starts what is left (parameters without a gradient count as zeros), waits, and puts each sum in place of its gradient. */
  finish(): void {
    try {
      if (!this.overlap) {
        for (const { parameters, group } of this.lists) allReduceGradients(parameters, this.bucketBytes, group);
        return;
      }
      for (; this.nextStart < this.buckets.length; this.nextStart++) this.start(this.buckets[this.nextStart]!, false);
      noGrad(() => {
        for (const bucket of this.buckets) {
          const work = bucket.work as Work;
          tidy(() => {
            const summed = work.wait();
            let offset = 0;
            for (const p of bucket.members) {
              const g = p.grad as Tensor;
              const reduced = untrack(summed.slice(0, offset, offset + g.numel).reshape([...g.shape]));
              offset += g.numel;
              g.dispose();
              p.grad = reduced;
            }
          });
        }
      });
    } finally {
      for (const bucket of this.buckets) {
        bucket.ready.clear();
        bucket.work = null;
      }
      this.nextStart = 0;
    }
  }

  /** Starts a bucket's all-reduce (the hook moves nextStart itself unless `advance` is false). */
  private start(bucket: Bucket, advance = true): void {
    noGrad(() => {
      for (const p of bucket.members) {
        if (p.grad === null) p.grad = untrack(zeros(p.shape, { device: p.device }));
      }
      tidy(() => {
        const grads = bucket.members.map((p) => (p.grad as Tensor).reshape([(p.grad as Tensor).numel]));
        const flat = grads.length === 1 ? grads[0]! : concat(grads, 0);
        bucket.work = allReduceAsync(flat, { op: 'sum', group: bucket.group });
      });
    });
    if (advance) this.nextStart++;
  }
}

/** Sums a small float32 tensor of per-rank statistics over the ranks (a new tensor). */
export function sumOverRanks(x: Tensor): Tensor {
  return allReduce(x, { op: 'sum' });
}

/**
 * A finite flag (float32 0/1 scalar) agreed by every rank: 1 when it is 1 on all of them. Each
 * rank's loss is its own, so a step's loss flag is summed over the ranks as 1 − flag (one scalar
 * all-reduce, queued with the step's other collectives, no host wait); every rank then skips or
 * applies the same steps.
 */
export function agreeFinite(flag: Tensor): Tensor {
  return untrack(tidy(() => noGrad(() => allReduce(flag.neg().add(1).reshape([1]), { op: 'sum' }).reshape([]).minimum(1).neg().add(1))));
}
