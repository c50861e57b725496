/**
 * experiment.json of a flops-savings experiment folder: the settings every variant shares, the
 * dataset's vocabulary hash, and one entry per invocation (time, command line, variants, device).
 * A rerun must repeat the shared settings (`sharedSettingsDiffer` names the first that differs);
 * the results step checks each variant's run.json against them.
 */
import * as fs from 'fs';
import * as path from 'path';
import { MomaError } from '../errors';
import { readJson, writeJsonAtomic } from '../io/files';
import type { RunSettings } from '../run/run_config';

export const EXPERIMENT_FILE = 'experiment.json';

/** The settings every variant shares (a run's settings without its preset), plus the tier, the variant list and the folder. */
export interface ExperimentSettings extends Omit<RunSettings, 'preset'> {
  tier: string;
  /** Short variant names (the preset is `<tier>-<name>`), the baseline first. */
  variants: string[];
}

export type SharedSettings = Omit<ExperimentSettings, 'variants' | 'device' | 'out'>;

/** The shared settings a rerun must repeat and every variant's run.json must hold (tier: in the preset name). */
export const SHARED_KEYS = ['tier', 'model', 'data', 'steps', 'batchSize', 'seqLen', 'lr', 'warmup', 'seed', 'imageFraction', 'evalEvery', 'evalBatches', 'checkpointEvery'] as const;

export interface ExperimentFile {
  format: 'moma-experiment';
  kind: 'flops-savings';
  version: 1;
  createdAt: string;
  settings: SharedSettings;
  dataset: { name: string; vocabHash: string };
  invocations: { at: string; command: string | null; variants: string[]; device: string }[];
}

/** JSON with object keys sorted (undefined members dropped), to compare settings. */
export function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function sharedOf(settings: ExperimentSettings): SharedSettings {
  const { variants: _v, device: _d, out: _o, ...shared } = settings;
  return shared;
}

/** The first shared key whose value differs between two settings objects, with both values; null when they agree. */
export function sharedSettingsDiffer(a: Record<string, unknown>, b: Record<string, unknown>, keys: readonly string[] = SHARED_KEYS): { key: string; a: string; b: string } | null {
  for (const key of keys) {
    const x = canonical(a[key]);
    const y = canonical(b[key]);
    if (x !== y) return { key, a: x, b: y };
  }
  return null;
}

/** Reads a folder's experiment.json (null when there is none; ERR_FILE when it is not one). */
export function readExperimentFile(dir: string): ExperimentFile | null {
  if (typeof dir !== 'string' || dir === '') throw new MomaError('ERR_ARG', 'experiment_file: dir must be a folder path');
  const file = path.join(dir, EXPERIMENT_FILE);
  if (!fs.existsSync(file)) return null;
  const parsed = readJson(file, 'experiment_file') as ExperimentFile;
  if (parsed === null || typeof parsed !== 'object' || parsed.format !== 'moma-experiment' || parsed.kind !== 'flops-savings'
    || parsed.settings === null || typeof parsed.settings !== 'object' || !Array.isArray(parsed.invocations) || typeof parsed.dataset?.vocabHash !== 'string') {
    throw new MomaError('ERR_FILE', `experiment_file: ${file} is not a flops-savings experiment file`);
  }
  return parsed;
}

export function writeExperimentFile(dir: string, experiment: ExperimentFile): void {
  try {
    writeJsonAtomic(path.join(dir, EXPERIMENT_FILE), experiment);
  } catch (err) {
    throw new MomaError('ERR_FILE', `experiment_file: cannot write ${path.join(dir, EXPERIMENT_FILE)} (${(err as Error).message})`);
  }
}
