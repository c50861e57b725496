/**
 * The runs of the expert-parallel training tests (test/expert_parallel_train.test.ts on CPU ranks,
 * test/dist_nccl.test.ts on GPUs), as `moma train` flags on a device: tiny-4t4i, a record every
 * step, no held-out evaluation, documents in order (ratio control off, so the packer's 2b
 * sequences are exactly an expert-parallel group's two ranks' b, in rank order). The multi-step
 * runs route really with capacity factor 2 (C2_CONFIG, written to the run's folder as c2.json),
 * one 32-token sequence per rank, seed 2: the setting expert_parallel_train.test.ts found free of
 * near-tied top-k picks over their steps.
 */
export const C2_CONFIG = { model: { ffn: { capacityFactor: 2 } } };

/** tiny-4t4i, micro-batches of b × 64 tokens per rank, on `device`. */
export function epBase(device: string): string[] {
  return ['--seq-len', '64', '--log-every', '1', '--eval-every', '0', '--device', device, '--preset', 'tiny-4t4i', '--image-fraction', 'off'];
}

/** The multi-step runs: c2.json (C2_CONFIG) in the working folder, sequences of 32 tokens, seed 2. */
export function epMulti(device: string): string[] {
  return ['--config', 'c2.json', ...epBase(device), '--seq-len', '32', '--seed', '2'];
}
