/**
 * `moma experiment flops-savings`: trains the dense baseline and sparse variants of a tier at the
 * same settings on the same data order, then measures η (docs/EXPERIMENTS.md) of each sparse variant against
 * dense (lib/experiment/flops_savings_results.ts writes the tables and the figure).
 *
 * Experiment folder:
 *   experiment.json          the shared settings, the vocabulary hash and every invocation's command
 *   image_tokenizer.safetensors   (built-in data) the codebook all variants share, reused on a rerun
 *   variants/<name>/         one ordinary `moma train` run directory per variant (trainRun)
 *   results.json, results.md, loss_vs_flops.svg/.png
 *
 * Same data order: every variant gets the same dataset object, seed, batch size, sequence length
 * and one image fraction (default 0.5, not each preset's own 'auto' value), so the packer yields
 * the same batches; the results step checks the per-step token counts and image shares match.
 *
 * Resumable: a rerun with the same --out checks the settings against experiment.json, skips
 * variants whose newest checkpoint reached the steps, resumes partial ones from their newest
 * checkpoint (trainRun resume: bit for bit) and restarts any that died before their first one.
 */
import * as fs from 'fs';
import * as path from 'path';
import { MomaError } from '../errors';
import { builtinDataset } from '../data/builtin';
import type { MixedModalDataset } from '../data/dataset';
import { IMAGE_TOKENIZER_FILE } from '../data/image_tokenizer';
import { openShardSet } from '../data/shard_set';
import { writeFileAtomic } from '../io/files';
import { listPresets } from '../model/presets';
import type { EvalRecord, StepRecord } from '../run/records';
import { writeReport } from '../run/report';
import { RunSummary, trainRun } from '../run/run';
import { ModelOverrides, resolveRunConfig, RunSettings } from '../run/run_config';
import { ExperimentFile, ExperimentSettings, readExperimentFile, sharedOf, sharedSettingsDiffer, writeExperimentFile } from './experiment_file';
import { analyzeFlopsSavings, FlopsSavingsResults, ResultFiles } from './flops_savings_results';

/** The variants of each tier (short names; the preset is `<tier>-<name>`), the dense baseline first. */
export const FLOPS_SAVINGS_TIERS: Readonly<Record<string, readonly string[]>> = {
  tiny: ['dense', '1t1i', 'moe8x', '4t4i', '4t4i-mod'],
};
export const BASELINE_VARIANT = 'dense';
export const FLOPS_SAVINGS_DEFAULTS = { tier: 'tiny', imageFraction: 0.5 } as const;
export type { ExperimentSettings } from './experiment_file';

export interface FlopsSavingsOptions {
  /** Command-line values (strings): tier, variants, out, imageFraction and the run flags steps, batchSize, seqLen, lr, warmup, seed, device, data, evalEvery, evalBatches, checkpointEvery. */
  flags?: Record<string, unknown>;
  /** The same keys from code (numbers, `variants` as an array). */
  values?: Record<string, unknown>;
  /** Preset overrides applied to every variant (code only; tests shrink the models with it). */
  model?: ModelOverrides;
  /** Train on this dataset instead of opening `data` (custom data, tests). */
  dataset?: MixedModalDataset;
  /** The command line to record in experiment.json and results.md. */
  commandLine?: string;
  /** For the default folder name (default: now). */
  now?: Date;
}

export type VariantAction = 'train' | 'resume' | 'skip';

export interface VariantStartInfo {
  name: string;
  preset: string;
  runDir: string;
  action: VariantAction;
  /** Steps already done (the checkpoint resumed from, or all of them when skipped). */
  fromStep: number;
  index: number;
  count: number;
}

export interface FlopsSavingsHooks {
  onStart?(info: { settings: ExperimentSettings; dataset: string; resumed: boolean }): void;
  onVariantStart?(info: VariantStartInfo): void;
  onVariantEnd?(info: { name: string; summary: RunSummary | null }): void;
  onStep?(variant: string, record: StepRecord): void;
  onEval?(variant: string, record: EvalRecord): void;
  /** Aborting stops the running variant after its current step (it checkpoints); later variants do not start. */
  signal?: AbortSignal;
}

export interface FlopsSavingsRun {
  dir: string;
  settings: ExperimentSettings;
  /** True when the signal stopped the experiment before every variant finished (no results then). */
  stopped: boolean;
  results: FlopsSavingsResults | null;
  files: ResultFiles | null;
}

const CHECKPOINT_NAME = /^step-(\d+)$/;
/** Flags of the experiment's own keys; the other keys are run settings (run_config.ts names them). */
const OWN_FLAGS = { tier: '--tier', variants: '--variants', out: '--out', imageFraction: '--image-fraction' } as const;
const RUN_KEYS = ['steps', 'batchSize', 'seqLen', 'lr', 'warmup', 'seed', 'device', 'data', 'evalEvery', 'evalBatches', 'checkpointEvery'] as const;
type OwnKey = keyof typeof OWN_FLAGS;

function fail(message: string): never {
  throw new MomaError('ERR_ARG', `flops-savings: ${message}`);
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** runs/flops-savings-<yyyymmdd-hhmmss> (local time). */
export function defaultExperimentDir(now: Date): string {
  return `runs/flops-savings-${now.getFullYear()}${pad2(now.getMonth() + 1)}${pad2(now.getDate())}-${pad2(now.getHours())}${pad2(now.getMinutes())}${pad2(now.getSeconds())}`;
}

function parseVariants(raw: unknown, tier: string, name: string): string[] {
  const list = typeof raw === 'string' ? raw.split(',') : Array.isArray(raw) ? raw : null;
  if (list === null || list.some((v) => typeof v !== 'string')) fail(`${name} must be a comma-separated list of variant names, got ${JSON.stringify(raw)}`);
  const known = listPresets().filter((p) => p.startsWith(`${tier}-`)).map((p) => p.slice(tier.length + 1));
  const names = (list as string[]).map((v) => v.trim().toLowerCase()).filter((v) => v !== '').map((v) => (v.startsWith(`${tier}-`) ? v.slice(tier.length + 1) : v));
  if (names.length === 0) fail(`${name} names no variant`);
  for (const v of names) if (!known.includes(v)) fail(`${name}: unknown ${tier} variant '${v}'; known: ${known.join(', ')}`);
  return [...new Set([BASELINE_VARIANT, ...names])];
}

function parseImageFraction(raw: unknown, fromFlags: boolean, name: string): number | null {
  if (raw === 'auto') fail(`${name} must be one value for every variant (a number in [0, 1] or 'off'), not 'auto' (each preset's own share)`);
  if (raw === null || raw === 'off') return null;
  const value = fromFlags && typeof raw === 'string' && /^\s*(\d+\.?\d*|\.\d+)\s*$/.test(raw) ? Number(raw) : raw;
  if (typeof value !== 'number' || !(value >= 0 && value <= 1)) fail(`${name} must be a number in [0, 1] or 'off', got ${JSON.stringify(raw)}`);
  return value;
}

/** Checks the options and resolves the shared settings (run settings through run_config.ts, so its errors name the flags). */
export function resolveFlopsSavingsConfig(options: FlopsSavingsOptions = {}): ExperimentSettings {
  if (options === null || typeof options !== 'object') fail('options must be an object');
  const split = (source: unknown, kind: 'flags' | 'values'): { own: Partial<Record<OwnKey, unknown>>; run: Record<string, unknown> } => {
    if (source === undefined) return { own: {}, run: {} };
    if (source === null || typeof source !== 'object' || Array.isArray(source)) fail(`${kind} must be an object of settings`);
    const own: Partial<Record<OwnKey, unknown>> = {};
    const run: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(source as Record<string, unknown>)) {
      if (value === undefined) continue;
      if (key in OWN_FLAGS) own[key as OwnKey] = value;
      else if ((RUN_KEYS as readonly string[]).includes(key)) run[key] = value;
      else fail(`unknown ${kind === 'flags' ? 'flag' : 'option'} '${key}'; known: ${[...Object.keys(OWN_FLAGS), ...RUN_KEYS].join(', ')}`);
    }
    return { own, run };
  };
  const flags = split(options.flags, 'flags');
  const values = split(options.values, 'values');
  const own = (key: OwnKey): { raw: unknown; fromFlags: boolean; name: string } | null => {
    if (flags.own[key] !== undefined) return { raw: flags.own[key], fromFlags: true, name: OWN_FLAGS[key] };
    if (values.own[key] !== undefined) return { raw: values.own[key], fromFlags: false, name: `option '${key}'` };
    return null;
  };

  const tierGiven = own('tier');
  const tier = tierGiven === null ? FLOPS_SAVINGS_DEFAULTS.tier : String(tierGiven.raw).trim().toLowerCase();
  if (FLOPS_SAVINGS_TIERS[tier] === undefined) fail(`${tierGiven?.name ?? '--tier'} must be one of ${Object.keys(FLOPS_SAVINGS_TIERS).join(', ')}, got ${JSON.stringify(tierGiven?.raw)}`);
  const variantsGiven = own('variants');
  const variants = variantsGiven === null ? [...FLOPS_SAVINGS_TIERS[tier]!] : parseVariants(variantsGiven.raw, tier, variantsGiven.name);
  const fractionGiven = own('imageFraction');
  const imageFraction = fractionGiven === null ? FLOPS_SAVINGS_DEFAULTS.imageFraction : parseImageFraction(fractionGiven.raw, fractionGiven.fromFlags, fractionGiven.name);
  const outGiven = own('out');
  if (outGiven !== null && (typeof outGiven.raw !== 'string' || outGiven.raw.trim() === '')) fail(`${outGiven.name} must be a folder path`);
  const out = path.resolve(outGiven === null ? defaultExperimentDir(options.now ?? new Date()) : (outGiven.raw as string));
  if (options.model !== undefined && (options.model === null || typeof options.model !== 'object' || Array.isArray(options.model))) fail('model must be an object of preset overrides');

  let base: RunSettings | null = null;
  for (const variant of variants) {
    const { settings } = resolveRunConfig({
      flags: flags.run,
      values: { ...values.run, preset: `${tier}-${variant}`, model: options.model ?? {}, imageFraction, out: path.join(out, 'variants', variant) },
    });
    base ??= settings;
  }
  const s = base!;
  const data = options.dataset !== undefined || s.data === 'builtin' ? s.data : path.resolve(s.data);
  return {
    tier, variants, model: s.model, data, device: s.device, steps: s.steps, batchSize: s.batchSize, seqLen: s.seqLen,
    lr: s.lr, warmup: s.warmup, seed: s.seed, imageFraction: s.imageFraction, evalEvery: s.evalEvery,
    evalBatches: s.evalBatches, checkpointEvery: s.checkpointEvery, out,
  };
}

function onDisk<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof MomaError) throw err;
    throw new MomaError('ERR_FILE', `flops-savings: cannot ${what} (${(err as Error).message})`);
  }
}

/** A rerun must repeat the shared settings; names the first that differs. */
function checkRerun(previous: ExperimentFile, settings: ExperimentSettings, dir: string): void {
  const differ = sharedSettingsDiffer(sharedOf(settings) as Record<string, unknown>, previous.settings as Record<string, unknown>);
  if (differ === null) return;
  const flag = differ.key in OWN_FLAGS ? OWN_FLAGS[differ.key as OwnKey] : differ.key;
  fail(`${dir} holds an experiment with ${flag} ${differ.b}; this run asks for ${differ.a}. Repeat its settings to continue it, or choose another --out`);
}

/** The dataset every variant trains on: the given one, a shard set, or the built-in shapes with the folder's saved codebook. */
async function openExperimentDataset(settings: ExperimentSettings, given: MixedModalDataset | undefined): Promise<MixedModalDataset> {
  if (given !== undefined) return given;
  if (settings.data !== 'builtin') {
    if (!fs.existsSync(settings.data) || !fs.statSync(settings.data).isDirectory()) fail(`--data ${settings.data} is not a folder (a shard set folder, or 'builtin')`);
    return openShardSet(settings.data);
  }
  const saved = path.join(settings.out, IMAGE_TOKENIZER_FILE);
  const imageTokenizer = fs.existsSync(saved) ? onDisk(`read ${saved}`, () => fs.readFileSync(saved)) : undefined;
  const dataset = await builtinDataset({ seed: settings.seed, imageTokenizer });
  if (imageTokenizer === undefined) onDisk(`write ${saved}`, () => writeFileAtomic(saved, dataset.files[IMAGE_TOKENIZER_FILE] as Buffer));
  return dataset;
}

/** The step of a run directory's newest complete checkpoint (-1 without one). */
function newestCheckpointStep(runDir: string): number {
  const root = path.join(runDir, 'checkpoints');
  if (!fs.existsSync(root)) return -1;
  return fs.readdirSync(root).reduce((best, name) => {
    const match = CHECKPOINT_NAME.exec(name);
    return match === null ? best : Math.max(best, Number(match[1]));
  }, -1);
}

/** What to do with a variant's run directory; removes one that died before its first checkpoint. */
function planVariant(runDir: string, steps: number): { action: VariantAction; fromStep: number } {
  if (!fs.existsSync(runDir)) return { action: 'train', fromStep: 0 };
  const step = fs.existsSync(path.join(runDir, 'run.json')) ? newestCheckpointStep(runDir) : -1;
  if (step < 0) {
    onDisk(`remove the unfinished run ${runDir}`, () => fs.rmSync(runDir, { recursive: true, force: true }));
    return { action: 'train', fromStep: 0 };
  }
  return step >= steps ? { action: 'skip', fromStep: step } : { action: 'resume', fromStep: step };
}

/** Runs (or continues) the experiment, then writes its results; see the module comment. */
export async function runFlopsSavings(options: FlopsSavingsOptions = {}, hooks: FlopsSavingsHooks = {}): Promise<FlopsSavingsRun> {
  const settings = resolveFlopsSavingsConfig(options);
  if (options.commandLine !== undefined && typeof options.commandLine !== 'string') fail('commandLine must be a string');
  const dir = settings.out;
  if (fs.existsSync(dir) && !fs.statSync(dir).isDirectory()) fail(`--out ${dir} exists and is not a folder`);
  const previous = readExperimentFile(dir);
  if (previous === null && fs.existsSync(dir) && fs.readdirSync(dir).length > 0) fail(`--out ${dir} is not empty and holds no experiment.json`);
  if (previous !== null) checkRerun(previous, settings, dir);
  onDisk(`create ${dir}`, () => fs.mkdirSync(path.join(dir, 'variants'), { recursive: true }));

  const dataset = await openExperimentDataset(settings, options.dataset);
  if (previous !== null && previous.dataset.vocabHash !== dataset.layout.hash) {
    fail(`${dir} was trained with vocabulary ${previous.dataset.vocabHash.slice(0, 12)}…, the data now gives ${dataset.layout.hash.slice(0, 12)}…; choose another --out`);
  }
  const experiment: ExperimentFile = previous ?? {
    format: 'moma-experiment', kind: 'flops-savings', version: 1, createdAt: new Date().toISOString(),
    settings: sharedOf(settings), dataset: { name: dataset.name, vocabHash: dataset.layout.hash }, invocations: [],
  };
  experiment.invocations.push({ at: new Date().toISOString(), command: options.commandLine ?? null, variants: settings.variants, device: settings.device });
  writeExperimentFile(dir, experiment);
  hooks.onStart?.({ settings, dataset: dataset.name, resumed: previous !== null });

  for (const [index, name] of settings.variants.entries()) {
    if (hooks.signal?.aborted === true) break;
    const runDir = path.join(dir, 'variants', name);
    const preset = `${settings.tier}-${name}`;
    const plan = planVariant(runDir, settings.steps);
    hooks.onVariantStart?.({ name, preset, runDir, action: plan.action, fromStep: plan.fromStep, index, count: settings.variants.length });
    if (plan.action === 'skip') {
      if (!fs.existsSync(path.join(runDir, 'report.html'))) await writeReport(runDir);
      hooks.onVariantEnd?.({ name, summary: null });
      continue;
    }
    const runHooks = {
      signal: hooks.signal,
      onStep: (r: StepRecord) => hooks.onStep?.(name, r),
      onEval: (r: EvalRecord) => hooks.onEval?.(name, r),
    };
    const summary = plan.action === 'resume'
      ? await trainRun({ resume: runDir, dataset }, runHooks)
      : await trainRun({
        values: {
          preset, model: settings.model, data: settings.data, device: settings.device, steps: settings.steps, batchSize: settings.batchSize,
          seqLen: settings.seqLen, lr: settings.lr, warmup: settings.warmup, seed: settings.seed, imageFraction: settings.imageFraction,
          evalEvery: settings.evalEvery, evalBatches: settings.evalBatches, checkpointEvery: settings.checkpointEvery, out: runDir,
          logEvery: 1, // η smooths the loss curve of every step
        },
        dataset,
      }, runHooks);
    hooks.onVariantEnd?.({ name, summary });
    if (summary.stopped) return { dir, settings, stopped: true, results: null, files: null };
  }
  if (hooks.signal?.aborted === true) return { dir, settings, stopped: true, results: null, files: null };
  const { results, files } = await analyzeFlopsSavings(dir, settings.variants);
  return { dir, settings, stopped: false, results, files };
}
