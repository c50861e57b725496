/**
 * The records a run leaves in its directory (lib/run/run.ts writes them; the report, the
 * experiments and the tests read them):
 *   run.json        RunFile: the resolved settings, model config, dataset, optimiser, version,
 *                   start time and resumes
 *   metrics.jsonl   one MetricsRecord per line: a StepRecord per logged step, an EvalRecord per
 *                   held-out evaluation
 */
import * as fs from 'fs';
import * as path from 'path';
import { MomaError } from '../errors';
import { readJsonWithSchema, runFileSchema } from '../train/checkpoint_schema';
import type { TransformerConfig } from '../model/transformer';
import type { StepMetrics } from '../train/trainer';
import type { RunSettings } from './run_config';

/** A metrics.jsonl line of a logged training step: the means over the steps since the previous one. */
export interface StepRecord extends StepMetrics {
  /** Image tokens / all tokens of the interval's batches (the mean of their shares: every batch holds B × S tokens). */
  imageFraction: number;
}

/** A metrics.jsonl line of a held-out evaluation (after `step` training steps). */
export interface EvalRecord {
  kind: 'eval';
  step: number;
  tokens: number;
  flops: { total: number; perModality: Record<string, number> };
  loss: number;
  lossPerModality: Record<string, number>;
  targets: number;
  targetsPerModality: Record<string, number>;
  seconds: number;
}

export type MetricsRecord = StepRecord | EvalRecord;

/** run.json. */
export interface RunFile {
  format: 'moma-run';
  version: 1;
  moma: string;
  startedAt: string;
  config: RunSettings;
  model: TransformerConfig;
  parameters: { total: number; active: number };
  dataset: { name: string; vocabHash: string; vocabSize: number; files: string[] };
  optimizer: {
    kind: 'adamw'; betas: [number, number]; eps: number; weightDecay: number; clipNorm: number;
    schedule: { shape: 'cosine'; peak: number; warmup: number; total: number; floor: number };
  };
  /** Each resume: the checkpoint step it continued from, when, and the steps it ran to. */
  resumes: { step: number; at: string; steps: number }[];
  /** Data parallel: ranks, micro-batches per rank per step, sequences per step (absent in runs before it was recorded: one rank). */
  parallel?: { worldSize: number; gradAccum: number; globalBatch: number };
}

/** The step and eval records of a run's metrics.jsonl (a torn last line, from a killed run, is ignored). */
export function readMetrics(runDir: string): { steps: StepRecord[]; evals: EvalRecord[] } {
  const file = path.join(runDir, 'metrics.jsonl');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new MomaError('ERR_FILE', `report: cannot read ${file} (${(err as Error).message})`);
  }
  const steps: StepRecord[] = [];
  const evals: EvalRecord[] = [];
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  lines.forEach((line, i) => {
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      if (i === lines.length - 1) return;
      throw new MomaError('ERR_FILE', `report: ${file} line ${i + 1} is not JSON`);
    }
    const r = record as { kind?: unknown; step?: unknown; loss?: unknown; tokens?: unknown };
    if (r === null || typeof r !== 'object' || !Number.isInteger(r.step) || typeof r.tokens !== 'number') {
      throw new MomaError('ERR_FILE', `report: ${file} line ${i + 1} lacks an integer step and tokens`);
    }
    if (r.kind === 'eval') evals.push(record as EvalRecord);
    else steps.push(record as StepRecord);
  });
  return { steps, evals };
}

/**
 * Reads a run's run.json checked by its schema (runFileSchema of lib/train/checkpoint_schema.ts):
 * ERR_FILE naming `op`, the file, the key and what was expected when it is not a moma run file.
 */
export function readRunFile(runDir: string, op: string): RunFile {
  return readJsonWithSchema(runFileSchema, path.join(runDir, 'run.json'), op) as unknown as RunFile;
}
