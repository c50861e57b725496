/**
 * Parameter counts and forward FLOPs of a TransformerConfig, computed from the config alone (no
 * tensors are allocated, so the Table 1 tiers can be counted anywhere).
 *
 * Parameter counting convention (d = dModel, f = ffn.dFF, V = vocabSize, L = layers, E = the
 * experts of all groups, E_g = the experts of group g, n_mod = MoD layers = ceil(L / interval)):
 *   - embedding            V·d
 *   - lmHead               d·V (untied)
 *   - attention            L·(4d² + 2·2·d): Wq, Wk, Wv, Wo, and the QK-norm LayerNorm weight and bias
 *                          of q and of k (d each: heads × head size)
 *   - norms                L·2d + d: the attention and FFN RMSNorm weights of each block, and the final RMSNorm
 *   - experts              L·E·3·d·f: SwiGLU W1, W3, W2 per expert (a dense FFN counts as one expert)
 *   - routers              L·d·Σ_{g: E_g > 1} E_g (expert routers of routed groups) + n_mod·d (MoD routers)
 *   - unusedRouterColumns  L·d·#{g: E_g = 1} for kind 'moe': MoMaFFN stores its router as one [d, E]
 *                          matrix whose columns for single-expert groups are zero and never used or
 *                          trained; they are counted so that `total` equals `Transformer.numParameters()`.
 *   - total                the sum of the above = `new Transformer(config).numParameters()` exactly.
 *   - active               parameters a row uses: total minus the expert weights it does not use. In every
 *                          FFN a row of group g uses a_g experts: a_g = 1 when E_g = 1; min(c, E_g) with
 *                          expert choice at capacity factor c (c = 1: one expert per row on average);
 *                          min(topK, E_g) with token choice. The maximum of a_g over the groups is used, so
 *                          active = total − L·(E − a)·3·d·f. Embedding, LM head, routers and MoD layers count
 *                          in full (MoD: the view of a row the MoD router selects; see FLOPs for expectations).
 * The paper's Table 1 totals ignore the norm weights and routers; they are < 0.1% of every tier.
 *
 * Forward FLOPs per row (docs/EXPERIMENTS.md, "Training FLOPs"; multiply-add = 2 FLOPs; expectations over rows):
 *   attention projections 8d², attention scores and weighted sum 4·d·L_t, FFN 6·d·f per (row, expert)
 *   assignment, routers 2·d·E_g (groups with E_g > 1) and 2·d per MoD router, LM head 2·d·V. A MoD layer
 *   runs its block on a fraction c_d of the rows, so its block terms are scaled by c_d, and a selected row
 *   attends to about c_d·L_t keys. L_t = seqLen / 2 (the mean causal span of a full, unpacked sequence).
 *   Norms, RoPE, softmax, SiLU and the embedding lookup are not counted. Training FLOPs = 3 × forward.
 */
import { MomaError } from '../errors';
import { isModLayer, modLayerCount } from '../formulas';
import { moeLayoutOf, MoeGroupConfig } from '../moe/moma_ffn';
import { TransformerConfig, validateConfig } from './transformer';
import { at } from '../checked';

export interface ParameterComponents {
  embedding: number;
  lmHead: number;
  attention: number;
  norms: number;
  experts: number;
  routers: number;
  unusedRouterColumns: number;
}

export interface ParameterCount {
  /** All parameters; equals `new Transformer(config).numParameters()`. */
  total: number;
  /** Parameters a row uses (one expert per row at c = 1); see the module comment. */
  active: number;
  components: ParameterComponents;
  layers: number;
  /** Layers wrapped in a MoD router (0 without MoD). */
  modLayers: number;
  /** Experts per FFN layer, all groups (1 for a dense FFN). */
  expertsPerLayer: number;
  /** Expert FFNs a row uses per layer (max over groups). */
  activeExpertsPerRow: number;
}

interface Resolved {
  c: ReturnType<typeof validateConfig>;
  /** Experts of each group ([1] for dense). */
  experts: number[];
  /** Group of each modality (-1: no group; 0 for dense). */
  groupOfModality: number[];
  /** Expert FFNs per row of each group. */
  assignments: number[];
  modLayers: number;
  modCapacity: number;
  modInterval: number;
}

function resolve(config: TransformerConfig): Resolved {
  const c = validateConfig(config);
  let experts: number[];
  let groupOfModality: number[];
  let assignments: number[];
  if (c.ffn.kind === 'dense') {
    experts = [1];
    groupOfModality = c.modalities.map(() => 0);
    assignments = [1];
  } else {
    const layout = moeLayoutOf({ groups: c.ffn.groups as MoeGroupConfig[], modalities: c.modalities });
    experts = layout.experts;
    groupOfModality = layout.groupOfModality;
    const tokenChoice = c.ffn.routing === 'token-choice';
    const perRow = tokenChoice ? (c.ffn.topK ?? 2) : (c.ffn.capacityFactor ?? 1);
    assignments = experts.map((e) => (e === 1 ? 1 : Math.min(perRow, e)));
  }
  const modInterval = c.mod === null ? 0 : c.mod.interval;
  const modLayers = c.mod === null ? 0 : modLayerCount(c.layers, modInterval);
  const modCapacity = c.mod === null ? 1 : c.mod.capacity;
  return { c, experts, groupOfModality, assignments, modLayers, modCapacity, modInterval };
}

/** Parameter counts of a config, without allocating tensors (convention: see the module comment). */
export function countParameters(config: TransformerConfig): ParameterCount {
  const r = resolve(config);
  const { vocabSize: V, dModel: d, layers: L } = r.c;
  const f = r.c.ffn.dFF;
  const E = r.experts.reduce((a, b) => a + b, 0);
  const moe = r.c.ffn.kind === 'moe';
  const routedExperts = r.experts.filter((e) => e > 1).reduce((a, b) => a + b, 0);
  const singleGroups = r.experts.filter((e) => e === 1).length;
  const components: ParameterComponents = {
    embedding: V * d,
    lmHead: d * V,
    attention: L * (4 * d * d + 4 * d),
    norms: L * 2 * d + d,
    experts: L * E * 3 * d * f,
    routers: (moe ? L * d * routedExperts : 0) + r.modLayers * d,
    unusedRouterColumns: moe ? L * d * singleGroups : 0,
  };
  const total = Object.values(components).reduce((a, b) => a + b, 0);
  const activeExpertsPerRow = Math.max(...r.assignments);
  const active = total - L * (E - activeExpertsPerRow) * 3 * d * f;
  return { total, active, components, layers: L, modLayers: r.modLayers, expertsPerLayer: E, activeExpertsPerRow };
}

export interface FlopsBreakdown {
  attentionProjections: number;
  attentionScores: number;
  ffn: number;
  routers: number;
  lmHead: number;
  /** Forward FLOPs without the attention-score term (independent of the sequence length). */
  excludingScores: number;
  /** Forward FLOPs including the attention-score term at the stated span. */
  total: number;
  /** Training FLOPs = 3 × total. */
  training: number;
}

export interface FlopsReport {
  seqLen: number;
  /** The assumed L_t (keys a row attends to in a full layer): seqLen / 2. */
  attendedKeys: number;
  /** Mean of the modalities' FLOPs (an equal mix; the presets' modalities differ only in router terms). */
  overall: FlopsBreakdown;
  perModality: Record<string, FlopsBreakdown>;
}

function finish(parts: Omit<FlopsBreakdown, 'excludingScores' | 'total' | 'training'>): FlopsBreakdown {
  const excludingScores = parts.attentionProjections + parts.ffn + parts.routers + parts.lmHead;
  const total = excludingScores + parts.attentionScores;
  return { ...parts, excludingScores, total, training: 3 * total };
}

/** Expected forward FLOPs per row (convention: see the module comment), at sequence length `seqLen` (default 4096). */
export function forwardFlopsPerRow(config: TransformerConfig, options: { seqLen?: number } = {}): FlopsReport {
  const r = resolve(config);
  const seqLen = options.seqLen ?? 4096;
  if (!Number.isInteger(seqLen) || seqLen < 1) throw new MomaError('ERR_ARG', `forwardFlopsPerRow: seqLen must be an integer >= 1, got ${String(seqLen)}`);
  const { vocabSize: V, dModel: d, layers: L } = r.c;
  const f = r.c.ffn.dFF;
  const keys = seqLen / 2;
  const moe = r.c.ffn.kind === 'moe';
  const perModality: Record<string, FlopsBreakdown> = {};
  for (const [m, name] of r.c.modalities.entries()) {
    const g = at(r.groupOfModality, m, 'forwardFlopsPerRow');
    const Eg = g < 0 ? 0 : at(r.experts, g, 'forwardFlopsPerRow');
    const a = g < 0 ? 0 : at(r.assignments, g, 'forwardFlopsPerRow');
    const parts = { attentionProjections: 0, attentionScores: 0, ffn: 0, routers: 0, lmHead: 2 * d * V };
    for (let i = 0; i < L; i++) {
      const routed = r.modLayers > 0 && isModLayer(i, r.modInterval);
      const share = routed ? r.modCapacity : 1;
      parts.attentionProjections += share * 8 * d * d;
      parts.attentionScores += share * 4 * d * keys * share;
      parts.ffn += share * a * 6 * d * f;
      if (moe && Eg > 1) parts.routers += share * 2 * d * Eg;
      if (routed) parts.routers += 2 * d;
    }
    perModality[name] = finish(parts);
  }
  const list = Object.values(perModality);
  const mean = (k: keyof FlopsBreakdown): number => list.reduce((s, b) => s + b[k], 0) / list.length;
  const overall = finish({
    attentionProjections: mean('attentionProjections'), attentionScores: mean('attentionScores'), ffn: mean('ffn'),
    routers: mean('routers'), lmHead: mean('lmHead'),
  });
  return { seqLen, attendedKeys: keys, overall, perModality };
}
