/**
 * Named model presets (docs/MODELS.md): tiny configs that train in minutes on a CPU, and the paper's
 * Table 1 tiers (90M, 435M, 1.4B) as dense, MoE 8x, 1t1i, MoMa 4t4i and their MoD versions.
 *
 * Table tiers: vocabulary 65,536 (incl. 8,192 image codes), SwiGLU hidden size
 * f = 2/3 · ffn rounded up to a multiple of 8 (`swigluHidden`), capacity factor 1, sigmoid
 * expert-choice routers, swin norm placement, z-loss 1e-5 (Chameleon), init std 0.02. MoD
 * presets use the table's MoD column (layers, d, ffn, heads) with interval 2 and c_d 0.25
 * (MOD_DEFAULTS).
 *
 * Tiny presets: vocabulary 512 — room for a byte-level text vocabulary (256 bytes plus the
 * specials) and a small image codebook. Which ids are image codes (and which are specials) is
 * decided by the data layer's vocabulary layout, not here; the presets only fix the size.
 *
 * `preset(name, overrides)` returns a fresh config each call; it does not allocate tensors.
 */
import { MomaError } from '../errors';
import { moeLayoutOf, MoeGroupConfig } from '../moe/moma_ffn';
import { FFNConfig, MOD_DEFAULTS, TransformerConfig, validateConfig } from './transformer';

/** SwiGLU hidden size for a nominal FFN width: 2/3 · ffn rounded up to a multiple of 8. */
export function swigluHidden(ffn: number): number {
  return Math.ceil(ffn / 12) * 8;
}

/** Overrides for `preset`: top-level fields replace, `ffn` and `mod` are merged one level deep (`mod: null` turns MoD off). */
export type PresetOverrides = Partial<Omit<TransformerConfig, 'ffn' | 'mod'>> & {
  ffn?: Partial<FFNConfig>;
  mod?: { interval?: number; capacity?: number } | null;
};

interface Shape {
  layers: number;
  dModel: number;
  /** Nominal FFN width (Table 1's `ffn`); the SwiGLU hidden size is swigluHidden(ffn). */
  ffn: number;
  heads: number;
}

type Variant = 'dense' | 'moe8x' | '1t1i' | '4t4i';

interface PresetEntry {
  description: string;
  build: () => TransformerConfig;
}

const GROUPS: Record<Exclude<Variant, 'dense'>, MoeGroupConfig[]> = {
  moe8x: [{ modality: ['text', 'image'], experts: 8 }],
  '1t1i': [{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }],
  '4t4i': [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }],
};

const VARIANT_TEXT: Record<Variant, string> = {
  dense: 'dense SwiGLU FFN',
  moe8x: 'MoE, one group of 8 experts for both modalities (expert choice, c = 1)',
  '1t1i': 'one FFN expert per modality (no router)',
  '4t4i': 'MoMa, 4 text experts + 4 image experts (expert choice, c = 1)',
};

function makeConfig(shape: Shape, variant: Variant, vocabSize: number, mod: boolean): TransformerConfig {
  const dFF = swigluHidden(shape.ffn);
  const ffn: FFNConfig = variant === 'dense'
    ? { kind: 'dense', dFF }
    : { kind: 'moe', dFF, groups: GROUPS[variant].map((g) => ({ ...g, modality: Array.isArray(g.modality) ? [...g.modality] : g.modality })), capacityFactor: 1, router: 'sigmoid', routing: 'expert-choice' };
  return {
    vocabSize, dModel: shape.dModel, layers: shape.layers, heads: shape.heads, ffn,
    mod: mod ? { ...MOD_DEFAULTS } : null,
    modalities: ['text', 'image'], norm: 'swin', zLoss: 1e-5, initStd: 0.02, seed: 0,
  };
}

const REGISTRY = new Map<string, PresetEntry>();

function register(name: string, description: string, build: () => TransformerConfig): void {
  REGISTRY.set(name, { description, build });
}

// Tiny presets: d 128, 4 heads (head size 32), nominal ffn 512 (SwiGLU f = 344), vocabulary 512.
// The plain ones have 3 layers; the MoD ones 5 (layers 0, 2 and 4 routed at c_d 0.25: 2.75
// layer-equivalents), whose expected FLOPs per row (excluding attention scores) are 0.92 of the
// plain ones' — the closest whole-layer match at c_d 0.25 (4 layers give 0.85, 6 give 1.22).
const TINY_VOCAB = 512;
const TINY: Shape = { layers: 3, dModel: 128, ffn: 512, heads: 4 };
const TINY_MOD: Shape = { layers: 5, dModel: 128, ffn: 512, heads: 4 };
for (const v of ['dense', 'moe8x', '1t1i', '4t4i'] as const) {
  register(`tiny-${v}`, `tiny (CPU) — ${VARIANT_TEXT[v]}`, () => makeConfig(TINY, v, TINY_VOCAB, false));
}
for (const v of ['dense', 'moe8x', '4t4i'] as const) {
  register(`tiny-${v}-mod`, `tiny (CPU) — ${VARIANT_TEXT[v]}; MoD every 2nd layer, c_d 0.25`, () => makeConfig(TINY_MOD, v, TINY_VOCAB, true));
}

/** The paper's Table 1: the dense column and the MoD column of each tier. */
export const TABLE1_TIERS: Readonly<Record<'90m' | '435m' | '1.4b', { dense: Shape; mod: Shape }>> = {
  '90m': { dense: { layers: 8, dModel: 512, ffn: 2048, heads: 8 }, mod: { layers: 14, dModel: 512, ffn: 2048, heads: 8 } },
  '435m': { dense: { layers: 24, dModel: 1024, ffn: 4096, heads: 16 }, mod: { layers: 40, dModel: 1024, ffn: 4096, heads: 16 } },
  '1.4b': { dense: { layers: 24, dModel: 2048, ffn: 8192, heads: 16 }, mod: { layers: 32, dModel: 2304, ffn: 9216, heads: 18 } },
};
const TABLE_VOCAB = 65536;
for (const [tier, shapes] of Object.entries(TABLE1_TIERS)) {
  for (const v of ['dense', 'moe8x', '1t1i', '4t4i'] as const) {
    register(`${v}-${tier}`, `Table 1 ${tier.toUpperCase()} tier — ${VARIANT_TEXT[v]}`, () => makeConfig(shapes.dense, v, TABLE_VOCAB, false));
  }
  for (const v of ['dense', 'moe8x', '4t4i'] as const) {
    register(`${v}-mod-${tier}`, `Table 1 ${tier.toUpperCase()} tier, MoD column — ${VARIANT_TEXT[v]}; MoD every 2nd layer, c_d 0.25`,
      () => makeConfig(shapes.mod, v, TABLE_VOCAB, true));
  }
}

/** The preset names, tiny ones first, then the Table 1 tiers. */
export function listPresets(): string[] {
  return [...REGISTRY.keys()];
}

/** A one-line description of a preset (throws ERR_ARG for unknown names). */
export function describePreset(name: string): string {
  return entryOf(name).description;
}

function entryOf(name: string): PresetEntry {
  const key = typeof name === 'string' ? name.trim().toLowerCase() : '';
  const entry = REGISTRY.get(key);
  if (entry === undefined) {
    throw new MomaError('ERR_ARG', `unknown preset '${String(name)}'; known presets: ${listPresets().join(', ')}`);
  }
  return entry;
}

/**
 * The TransformerConfig of a named preset (names are case-insensitive), with optional overrides
 * (e.g. `{ device: 'cuda', seed: 1 }`, `{ ffn: { capacityFactor: 2 } }`, `{ mod: null }`).
 * The result is validated (no tensors are allocated); unknown names throw MomaError('ERR_ARG')
 * listing the known presets.
 */
export function preset(name: string, overrides: PresetOverrides = {}): TransformerConfig {
  const base = entryOf(name).build();
  const { ffn, mod, ...rest } = overrides ?? {};
  const config: TransformerConfig = { ...base, ...rest, ffn: { ...base.ffn, ...(ffn ?? {}) } as FFNConfig };
  if (mod === null) config.mod = null;
  else if (mod !== undefined) config.mod = { ...(base.mod ?? MOD_DEFAULTS), ...mod };
  const checked = validateConfig(config);
  if (checked.ffn.kind === 'moe') moeLayoutOf({ groups: checked.ffn.groups as MoeGroupConfig[], modalities: checked.modalities });
  return config;
}
