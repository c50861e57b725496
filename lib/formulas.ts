/**
 * The sizes the host derives before it queues an op or counts FLOPs, each stated once. Where the
 * native code has the same formula (named in each comment), test/binding_tables.test.ts holds this
 * module to the addon's `formulas` export (csrc/napi/constants_exports.cc). No imports: any layer
 * may use these.
 */

/** Philox counter blocks a uniform op over n values consumes: ceil(n / 4) (philox_blocks_uniform, csrc/core/philox.h). */
export function philoxBlocksUniform(n: number): number {
  return Math.ceil(n / 4);
}

/** Philox counter blocks a normal op over n values consumes: ceil(n / 2) (philox_blocks_normal). */
export function philoxBlocksNormal(n: number): number {
  return Math.ceil(n / 2);
}

/** Philox blocks Gumbel router noise over `entries` scores consumes: two uniforms each (csrc/ops/moe.h). */
export function philoxBlocksGumbel(entries: number): number {
  return philoxBlocksUniform(2 * entries);
}

/**
 * Rows expert choice gives each expert of a group with n rows and E experts at capacity factor c
 * (docs/MOE.md): min(n, ceil(c n / E)); a single-expert group takes all of its rows
 * (expert_choice_capacity, csrc/core/moe_types.h).
 */
export function expertChoiceCapacity(n: number, experts: number, c: number): number {
  if (experts === 1) return n;
  return Math.min(n, Math.ceil((c * n) / experts));
}

/** Token choice: rows each expert keeps at most, ceil(c k n / E); all n for a single expert (token_choice_capacity). */
export function tokenChoiceCapacity(n: number, experts: number, topK: number, c: number): number {
  if (experts === 1) return n;
  return Math.ceil((c * topK * n) / experts);
}

/**
 * R, the slots a routing of `rows` rows may fill at most (moe_slot_bound, csrc/core/moe_types.h):
 * expert choice min(T W, ceil(max(c, 1) T) + E), token choice T min(k, W), threshold T W, with
 * W = the largest group's experts and E = all experts.
 */
export function slotBound(rows: number, experts: readonly number[], mode: 'expert-choice' | 'token-choice' | 'threshold', c: number, topK: number): number {
  const W = Math.max(...experts);
  if (mode === 'token-choice') return rows * Math.min(topK, W);
  if (mode === 'threshold') return rows * W;
  const E = experts.reduce((a, b) => a + b, 0);
  return Math.min(Math.ceil(Math.max(c, 1) * rows) + E, rows * W);
}

/** Mixture-of-depths: layer i is routed when i is a multiple of the interval (layers 0, interval, 2·interval, …). */
export function isModLayer(layer: number, interval: number): boolean {
  return layer % interval === 0;
}

/** Mixture-of-depths layers of a `layers`-layer model: ceil(layers / interval). */
export function modLayerCount(layers: number, interval: number): number {
  return Math.ceil(layers / interval);
}

/** Rows a MoD block processes in training mode (docs/TRAINING.md, "The model"): k = min(T_valid, ceil(c_d T_valid)). */
export function modRows(validRows: number, capacity: number): number {
  return Math.min(validRows, Math.ceil(capacity * validRows));
}
