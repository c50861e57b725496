/**
 * Data parallelism and gradient accumulation for the Trainer, on the process group of
 * lib/distributed (gloo for CPU tensors, NCCL for CUDA tensors).
 *
 * A step trains on a global batch of R·A micro-batches (R ranks, A accumulation steps), taken in
 * order from the data source, which every rank runs identically: rank r trains micro-batches
 * r·A … r·A + A − 1 (a contiguous split) and reads only the host counts of the others, so every
 * rank knows the global tokens, targets and FLOPs without communicating. Each micro-batch's loss
 * is its own mean over its counted rows (SPEC §1), and the step's gradient is the mean of the R·A
 * micro-batch gradients (as Megatron-Core does without per-token loss): each backward is scaled
 * by 1/(R·A) and the ranks' sums are all-reduced. R ranks with accumulation A therefore train
 * exactly like one rank with accumulation R·A on the same micro-batches, up to the order of the
 * float sums. Expert choice routes within each micro-batch, as in the paper.
 *
 * Gradients are all-reduced in buckets (about 25 MiB, last parameters first, as torch's DDP
 * orders them), each bucket one flat all-reduce queued on the device after the backward.
 */
import { tidy, untrack } from '../autograd/scope';
import { noGrad } from '../autograd/tape';
import { allReduce, isInitialized, world } from '../distributed/process_group';
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
 * Sums every parameter's gradient over the ranks, in place of the local one (a parameter without
 * one gets zeros first, so every rank reduces the same buffers in the same order).
 */
export function allReduceGradients(parameters: Tensor[], bucketBytes = DEFAULT_BUCKET_BYTES): void {
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
        const summed = allReduce(flat, { op: 'sum' });
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
