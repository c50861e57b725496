/**
 * The settings of a `moma train` run and where they come from. Precedence, lowest first:
 * built-in defaults, a JSON config file (`--config run.json`, the keys below), then values given
 * directly (command-line flags, or an object from code). A resumed run takes every setting from
 * its run.json; only `steps` and `skipNonfinite` may be given again.
 *
 * Every value is checked with a zod schema; a bad value or an unknown key throws
 * MomaError('ERR_ARG') naming the flag (`--batch-size`), the config file key, or the option key.
 * Command-line values arrive as strings and are parsed here, so the CLI stays a thin layer.
 */
import * as fs from 'fs';
import * as path from 'path';
import { z } from 'zod';
import { bestDevice, DeviceName, normalizeDevice, requireUsableDevice } from '../device';
import { MomaError } from '../errors';
import { readJson } from '../io/files';
import { preset, PresetOverrides } from '../model/presets';
import { Sharding, SHARDINGS } from '../train/zero';

/** Model overrides of the preset (config file or code only): shapes and options, not vocabulary or device. */
export type ModelOverrides = Pick<PresetOverrides, 'dModel' | 'layers' | 'heads' | 'ffn' | 'mod' | 'norm' | 'computeDtype' | 'zLoss' | 'initStd' | 'ropeTheta'>;

export interface RunSettings {
  /** Model preset (lib/model/presets.ts); its vocabSize is replaced by the dataset's. */
  preset: string;
  model: ModelOverrides;
  /** 'builtin' (captioned shapes) or a shard set folder. */
  data: string;
  /** Resolved by resolveRunConfig: 'cuda' becomes 'cuda:0'. */
  device: DeviceName;
  steps: number;
  batchSize: number;
  seqLen: number;
  /** Peak learning rate of the cosine schedule (decays to 1% of it). */
  lr: number;
  warmup: number;
  seed: number;
  /** Target share of image tokens per batch; null: documents in their drawn order. */
  imageFraction: number | null;
  /** Held-out evaluation every this many steps (0: only at the end). */
  evalEvery: number;
  /** Held-out batches evaluated each time. */
  evalBatches: number;
  /** Checkpoint every this many steps (0: only at the end). */
  checkpointEvery: number;
  /**
   * Also checkpoint at the first logged step that ends this many minutes (fractions allowed) of
   * wall time after the previous checkpoint, or after this invocation began (0: off). Kept on
   * resume. Optional in the type for run.json files written before it existed (default 0).
   */
  checkpointMinutes?: number;
  /**
   * Write TensorBoard event files into <run>/tensorboard/ (lib/run/tensorboard.ts): the metrics
   * as scalars, the sample generations as images and text. Kept on resume. Optional in the type
   * for run.json files written before it existed (default false).
   */
  tensorboard?: boolean;
  /**
   * Read the metrics back (one metrics.jsonl record with the means) every this many steps; the
   * steps between never wait for the device. Always set by resolveRunConfig; optional in the type
   * only so that settings objects written before it existed still type-check (default 10).
   */
  logEvery?: number;
  /**
   * Micro-batches per optimizer step on each rank (gradient accumulation): a step trains
   * ranks × gradAccum × batchSize sequences. Optional in the type for run.json files written before
   * it existed (default 1).
   */
  gradAccum?: number;
  /**
   * Data parallel: shard the AdamW moments ('zero1') and the gradients too ('zero2') over the
   * ranks (lib/train/zero.ts), or not ('none'). Kept on resume, on any number of ranks (one rank
   * has nothing to shard). Optional in the type for run.json files written before it existed
   * (default 'none').
   */
  sharding?: Sharding;
  /**
   * Expert parallel (Trainer option expertParallel): the ranks form groups of this many, each
   * spreading the experts of every MoE layer over its ranks; a group's micro-batch is
   * expertParallel × batchSize sequences (rank j trains the j-th batchSize of them), routed as one.
   * A resume keeps that micro-batch (lib/run/run.ts); it may be given again on resume. Optional in
   * the type for run.json files written before it existed (default 1).
   */
  expertParallel?: number;
  /**
   * Steps with a non-finite loss or gradient norm the run may skip (no update applied) before it
   * stops with ERR_NONFINITE (Trainer option skipNonfinite); 0 stops at the first. May be given
   * again on resume. Optional in the type for run.json files written before it existed (default 0).
   */
  skipNonfinite?: number;
  /**
   * The model's compute dtype (its computeDtype): 'bfloat16' runs activations and GEMMs in bf16
   * (bf16 x bf16 GEMMs with float32 sums where the CPU has a bf16 path, tensor cores on a GPU) with
   * float32 parameters, gradients and AdamW state; 'float32' everything in float32. Kept on resume.
   * The same as `model.computeDtype` of a config file, which it may not contradict. Optional in
   * the type for run.json files written before it existed (default: their model.computeDtype, else
   * 'float32').
   */
  dtype?: ComputeDtype;
  /** The run directory. */
  out: string;
}

export type ComputeDtype = 'float32' | 'bfloat16';

export type SettingKey = keyof RunSettings;

/**
 * Defaults, chosen by measuring `moma train` (no arguments) on a 2-core CPU shared with other jobs:
 * tiny-4t4i on the built-in shapes, batch 8 × 256 tokens, cosine lr 3e-3 with 50 warm-up steps.
 * 1000 steps took 2 min 52 s (12.4k tokens/s, 2.05M tokens, 8.7 TFLOPs), the loss falling from
 * 6.19 (text 6.27, image 6.11) to 0.27 (text 0.21, image 0.33), held-out 0.25 (text 0.20,
 * image 0.30); 600 steps took 1 min 51 s lightly loaded and 3 min 2 s under heavy load.
 */
export const RUN_DEFAULTS = {
  preset: 'tiny-4t4i',
  data: 'builtin',
  steps: 1000,
  batchSize: 8,
  seqLen: 256,
  lr: 3e-3,
  warmup: 50,
  seed: 0,
  evalEvery: 100,
  evalBatches: 4,
  checkpointEvery: 200,
  checkpointMinutes: 0,
  tensorboard: false,
  logEvery: 10,
  gradAccum: 1,
  sharding: 'none',
  expertParallel: 1,
  skipNonfinite: 0,
  dtype: 'float32',
} as const;

/** Runs whose run.json predates the logEvery setting logged every step, and go on doing so when resumed. */
const LOG_EVERY_BEFORE_IT_WAS_A_SETTING = 1;

const intIn = (min: number, max: number): z.ZodNumber => z.number().int().min(min).max(max);

const modelSchema = z.strictObject({
  dModel: intIn(1, 65536).optional(),
  layers: intIn(1, 1024).optional(),
  heads: intIn(1, 1024).optional(),
  ffn: z.record(z.string(), z.unknown()).optional(),
  mod: z.union([z.null(), z.strictObject({ interval: intIn(1, 1024).optional(), capacity: z.number().gt(0).max(1).optional() })]).optional(),
  norm: z.enum(['swin', 'pre']).optional(),
  computeDtype: z.enum(['float32', 'bfloat16']).optional(),
  zLoss: z.number().min(0).optional(),
  initStd: z.number().gt(0).optional(),
  ropeTheta: z.number().gt(0).optional(),
});

type TextParser = (text: string) => unknown;
const asInt: TextParser = (text) => (/^[+-]?\d+$/.test(text.trim()) ? Number(text) : text);
const asNumber: TextParser = (text) => (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text.trim()) ? Number(text) : text);
const asBoolean: TextParser = (text) => (text === 'true' ? true : text === 'false' ? false : text);
const asFraction: TextParser = (text) => (text === 'off' || text === 'auto' ? text : asNumber(text));

interface Setting {
  flag: string;
  /** What a valid value is, for error messages. */
  expect: string;
  schema: z.ZodType;
  /** How a command-line string becomes a value (absent: the key has no flag). */
  fromText?: TextParser;
}

const SETTINGS: Record<SettingKey, Setting> = {
  preset: { flag: '--preset', expect: 'a preset name', schema: z.string().trim().min(1), fromText: (t) => t },
  model: { flag: 'model', expect: 'an object of preset overrides (dModel, layers, heads, ffn, mod, norm, computeDtype, zLoss, initStd, ropeTheta)', schema: modelSchema },
  data: { flag: '--data', expect: "'builtin' or a shard set folder", schema: z.string().trim().min(1), fromText: (t) => t },
  device: { flag: '--device', expect: "'cpu', 'cuda' or 'cuda:N'", schema: z.string().trim().min(1), fromText: (t) => t },
  steps: { flag: '--steps', expect: 'an integer in [1, 1e9]', schema: intIn(1, 1e9), fromText: asInt },
  batchSize: { flag: '--batch-size', expect: 'an integer in [1, 4096]', schema: intIn(1, 4096), fromText: asInt },
  seqLen: { flag: '--seq-len', expect: 'an integer in [8, 65536]', schema: intIn(8, 65536), fromText: asInt },
  lr: { flag: '--lr', expect: 'a number in (0, 1]', schema: z.number().gt(0).max(1), fromText: asNumber },
  warmup: { flag: '--warmup', expect: 'an integer in [0, 1e9]', schema: intIn(0, 1e9), fromText: asInt },
  seed: { flag: '--seed', expect: 'an integer in [0, 2^31)', schema: intIn(0, 2 ** 31 - 1), fromText: asInt },
  imageFraction: {
    flag: '--image-fraction', expect: "a number in [0, 1], 'off' (null) or 'auto'",
    schema: z.union([z.number().min(0).max(1), z.null(), z.literal('off'), z.literal('auto')]), fromText: asFraction,
  },
  evalEvery: { flag: '--eval-every', expect: 'an integer in [0, 1e9] (0: only at the end)', schema: intIn(0, 1e9), fromText: asInt },
  evalBatches: { flag: '--eval-batches', expect: 'an integer in [1, 10000]', schema: intIn(1, 10000), fromText: asInt },
  checkpointEvery: { flag: '--checkpoint-every', expect: 'an integer in [0, 1e9] (0: only at the end)', schema: intIn(0, 1e9), fromText: asInt },
  checkpointMinutes: {
    flag: '--checkpoint-minutes', expect: 'a number of minutes in [0, 1e6] (0: off)', schema: z.number().min(0).max(1e6), fromText: asNumber,
  },
  tensorboard: { flag: '--tensorboard', expect: 'true or false', schema: z.boolean(), fromText: asBoolean },
  logEvery: { flag: '--log-every', expect: 'an integer in [1, 1e9]', schema: intIn(1, 1e9), fromText: asInt },
  gradAccum: { flag: '--grad-accum', expect: 'an integer in [1, 4096]', schema: intIn(1, 4096), fromText: asInt },
  sharding: { flag: '--sharding', expect: "'none', 'zero1', 'zero2' or 'zero3'", schema: z.enum(SHARDINGS as [Sharding, ...Sharding[]]), fromText: (t) => t },
  expertParallel: { flag: '--expert-parallel', expect: 'an integer in [1, 4096]', schema: intIn(1, 4096), fromText: asInt },
  skipNonfinite: { flag: '--skip-nonfinite', expect: 'an integer in [0, 1e9]', schema: intIn(0, 1e9), fromText: asInt },
  dtype: { flag: '--dtype', expect: "'float32' or 'bfloat16'", schema: z.enum(['float32', 'bfloat16']), fromText: (t) => t },
  out: { flag: '--out', expect: 'a folder path', schema: z.string().trim().min(1), fromText: (t) => t },
};

const SETTING_KEYS = Object.keys(SETTINGS) as SettingKey[];

type Origin = { kind: 'flags' } | { kind: 'values' } | { kind: 'file'; file: string };

function nameOf(key: SettingKey, origin: Origin): string {
  if (origin.kind === 'flags') return SETTINGS[key].flag;
  if (origin.kind === 'file') return `key '${key}' of ${origin.file}`;
  return `option '${key}'`;
}

function show(value: unknown): string {
  const text = JSON.stringify(value);
  return text === undefined ? String(value) : text;
}

/** Checks the given values of one source; returns them parsed (strings from flags converted). */
function checkSource(values: Record<string, unknown>, origin: Origin): Partial<Record<SettingKey, unknown>> {
  if (values === null || typeof values !== 'object' || Array.isArray(values)) {
    throw new MomaError('ERR_ARG', `run config: ${origin.kind === 'file' ? origin.file : 'the options'} must be a JSON object of settings`);
  }
  const out: Partial<Record<SettingKey, unknown>> = {};
  for (const [key, raw] of Object.entries(values)) {
    if (raw === undefined) continue;
    if (!SETTING_KEYS.includes(key as SettingKey)) {
      const where = origin.kind === 'file' ? `${origin.file} has unknown key '${key}'` : `unknown ${origin.kind === 'flags' ? 'flag' : 'option'} '${key}'`;
      throw new MomaError('ERR_ARG', `run config: ${where}; known keys: ${SETTING_KEYS.join(', ')}`);
    }
    const setting = SETTINGS[key as SettingKey];
    if (origin.kind === 'flags' && setting.fromText === undefined) {
      throw new MomaError('ERR_ARG', `run config: '${key}' can only be set in a config file`);
    }
    const value = origin.kind === 'flags' && typeof raw === 'string' ? setting.fromText!(raw) : raw;
    const parsed = setting.schema.safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const detail = issue && issue.path.length > 0 ? ` (at ${issue.path.join('.')}: ${issue.message})` : '';
      throw new MomaError('ERR_ARG', `run config: ${nameOf(key as SettingKey, origin)} must be ${setting.expect}, got ${show(raw)}${detail}`);
    }
    out[key as SettingKey] = parsed.data;
  }
  return out;
}

/** The image-token target for a preset: the image experts' share of all experts when every group serves one modality; null otherwise. */
export function autoImageFraction(presetName: string, model: ModelOverrides = {}): number | null {
  const config = preset(presetName, model);
  const groups = config.ffn.kind === 'moe' ? config.ffn.groups ?? [] : [];
  if (groups.length === 0 || groups.some((g) => Array.isArray(g.modality))) return null;
  const total = groups.reduce((sum, g) => sum + g.experts, 0);
  const image = groups.filter((g) => g.modality === 'image').reduce((sum, g) => sum + g.experts, 0);
  return total > 0 ? image / total : null;
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** runs/<yyyymmdd-hhmmss>-<preset> (local time). */
export function defaultRunDir(presetName: string, now: Date): string {
  const stamp = `${now.getFullYear()}${pad2(now.getMonth() + 1)}${pad2(now.getDate())}-${pad2(now.getHours())}${pad2(now.getMinutes())}${pad2(now.getSeconds())}`;
  return `runs/${stamp}-${presetName.toLowerCase()}`;
}

export interface RunConfigSources {
  /** Command-line values by setting key (strings as commander gives them); errors name the flag. */
  flags?: Record<string, unknown>;
  /** Values from code by setting key; errors name the key. */
  values?: Record<string, unknown>;
  /** A JSON config file of settings (flags and values override it). */
  configFile?: string;
  /** A run directory to resume: its run.json gives every setting; only `steps` and `skipNonfinite` may be given. */
  resume?: string;
  /** For the default run directory name (default: now). */
  now?: Date;
}

export interface ResolvedRunConfig {
  settings: RunSettings;
  /** The run directory to resume, or null for a new run. */
  resume: string | null;
}

/** The settings a run.json stores (its `config`), checked. */
export function readRunSettings(runDir: string): RunSettings {
  const file = path.join(runDir, 'run.json');
  if (!fs.existsSync(file)) throw new MomaError('ERR_ARG', `run config: --resume ${runDir}: no run.json there (not a moma run directory)`);
  const run = readJson(file, 'run config', 'ERR_ARG') as { format?: unknown; config?: unknown };
  if (run === null || typeof run !== 'object' || run.format !== 'moma-run' || typeof run.config !== 'object' || run.config === null) {
    throw new MomaError('ERR_FILE', `run config: ${file} is not a moma run file (format 'moma-run' with a config object)`);
  }
  const stored = checkSource(run.config as Record<string, unknown>, { kind: 'file', file });
  stored.logEvery ??= LOG_EVERY_BEFORE_IT_WAS_A_SETTING;
  stored.gradAccum ??= RUN_DEFAULTS.gradAccum;
  stored.sharding ??= RUN_DEFAULTS.sharding;
  stored.expertParallel ??= RUN_DEFAULTS.expertParallel;
  stored.skipNonfinite ??= RUN_DEFAULTS.skipNonfinite;
  stored.checkpointMinutes ??= RUN_DEFAULTS.checkpointMinutes;
  stored.tensorboard ??= RUN_DEFAULTS.tensorboard;
  stored.dtype ??= (stored.model as ModelOverrides | undefined)?.computeDtype ?? RUN_DEFAULTS.dtype;
  const missing = SETTING_KEYS.filter((k) => stored[k] === undefined);
  if (missing.length > 0) throw new MomaError('ERR_FILE', `run config: ${file} lacks setting(s) ${missing.join(', ')}`);
  return stored as unknown as RunSettings;
}

function checkPresetAndDevice(settings: RunSettings, nameOfKey: (key: SettingKey) => string): void {
  try {
    preset(settings.preset, settings.model);
  } catch (err) {
    if (!(err instanceof MomaError)) throw err;
    const overrides = Object.keys(settings.model).length > 0 ? ` with ${nameOfKey('model')} ${show(settings.model)}` : '';
    throw new MomaError('ERR_ARG', `run config: ${nameOfKey('preset')} '${settings.preset}'${overrides}: ${err.message}`);
  }
  let device: DeviceName;
  try {
    device = normalizeDevice(settings.device, 'run config');
  } catch (err) {
    throw new MomaError('ERR_ARG', `run config: ${nameOfKey('device')}: ${(err as Error).message}`);
  }
  settings.device = requireUsableDevice(device, `run config: ${nameOfKey('device')}`);
}

/** Merges defaults, config file, values and flags (or a resumed run's run.json) into checked settings. */
export function resolveRunConfig(sources: RunConfigSources = {}): ResolvedRunConfig {
  const flags = checkSource(sources.flags ?? {}, { kind: 'flags' });
  const values = checkSource(sources.values ?? {}, { kind: 'values' });
  const nameOfKey = (key: SettingKey): string => (flags[key] !== undefined ? SETTINGS[key].flag : values[key] !== undefined ? `option '${key}'` : `'${key}'`);

  if (sources.resume !== undefined) {
    if (typeof sources.resume !== 'string' || sources.resume.trim() === '') throw new MomaError('ERR_ARG', 'run config: --resume needs a run directory');
    if (sources.configFile !== undefined) throw new MomaError('ERR_ARG', 'run config: --config cannot be combined with --resume (a resumed run keeps its run.json settings)');
    const given = { ...values, ...flags };
    const changed = SETTING_KEYS.filter((k) => k !== 'steps' && k !== 'skipNonfinite' && k !== 'expertParallel' && given[k] !== undefined);
    if (changed.length > 0) {
      throw new MomaError('ERR_ARG', `run config: --resume keeps the run's settings; only --steps, --skip-nonfinite and --expert-parallel may be given, not ${changed.map((k) => nameOfKey(k)).join(', ')}`);
    }
    const settings = readRunSettings(sources.resume);
    if (given.steps !== undefined) settings.steps = given.steps as number;
    if (given.expertParallel !== undefined) settings.expertParallel = given.expertParallel as number;
    if (given.skipNonfinite !== undefined) settings.skipNonfinite = given.skipNonfinite as number;
    settings.out = sources.resume;
    checkPresetAndDevice(settings, nameOfKey);
    return { settings, resume: sources.resume };
  }

  const file = sources.configFile === undefined ? {} : checkSource(readJson(sources.configFile, 'run config', 'ERR_ARG') as Record<string, unknown>, { kind: 'file', file: sources.configFile });
  const merged = { ...file, ...values, ...flags } as Partial<Record<SettingKey, unknown>>;
  const presetName = ((merged.preset as string | undefined) ?? RUN_DEFAULTS.preset).toLowerCase();
  const model = (merged.model as ModelOverrides | undefined) ?? {};
  const given = merged as Partial<RunSettings>;
  if (given.dtype !== undefined && model.computeDtype !== undefined && given.dtype !== model.computeDtype) {
    throw new MomaError('ERR_ARG', `run config: ${nameOfKey('dtype')} '${given.dtype}' contradicts ${nameOfKey('model')}'s computeDtype '${model.computeDtype}' (give one of them)`);
  }
  const settings: RunSettings = {
    preset: presetName,
    model,
    data: given.data ?? RUN_DEFAULTS.data,
    device: given.device ?? bestDevice(),
    steps: given.steps ?? RUN_DEFAULTS.steps,
    batchSize: given.batchSize ?? RUN_DEFAULTS.batchSize,
    seqLen: given.seqLen ?? RUN_DEFAULTS.seqLen,
    lr: given.lr ?? RUN_DEFAULTS.lr,
    warmup: given.warmup ?? RUN_DEFAULTS.warmup,
    seed: given.seed ?? RUN_DEFAULTS.seed,
    imageFraction: null,
    evalEvery: given.evalEvery ?? RUN_DEFAULTS.evalEvery,
    evalBatches: given.evalBatches ?? RUN_DEFAULTS.evalBatches,
    checkpointEvery: given.checkpointEvery ?? RUN_DEFAULTS.checkpointEvery,
    checkpointMinutes: given.checkpointMinutes ?? RUN_DEFAULTS.checkpointMinutes,
    tensorboard: given.tensorboard ?? RUN_DEFAULTS.tensorboard,
    logEvery: given.logEvery ?? RUN_DEFAULTS.logEvery,
    gradAccum: given.gradAccum ?? RUN_DEFAULTS.gradAccum,
    sharding: given.sharding ?? RUN_DEFAULTS.sharding,
    expertParallel: given.expertParallel ?? RUN_DEFAULTS.expertParallel,
    skipNonfinite: given.skipNonfinite ?? RUN_DEFAULTS.skipNonfinite,
    dtype: given.dtype ?? model.computeDtype ?? RUN_DEFAULTS.dtype,
    out: given.out ?? defaultRunDir(presetName, sources.now ?? new Date()),
  };
  checkPresetAndDevice(settings, nameOfKey);
  const fraction = merged.imageFraction === undefined ? 'auto' : merged.imageFraction;
  settings.imageFraction = fraction === 'auto' ? autoImageFraction(presetName, model) : fraction === 'off' ? null : (fraction as number | null);
  return { settings, resume: null };
}
