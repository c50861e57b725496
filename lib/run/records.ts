/**
 * The records a run leaves in its directory (lib/run/run.ts writes them; the report, the
 * experiments and the tests read them):
 *   run.json        RunFile: the resolved settings, model config, dataset, optimiser, version,
 *                   start time, the environment it ran in, and resumes
 *   metrics.jsonl   one record per line, each with a `kind` and an ISO 8601 `time`: a StepRecord
 *                   ('step') per logged step, an EvalRecord ('eval') per held-out evaluation, a
 *                   SampleRecord ('sample') per sample generation, a SkipRecord ('skip') when a
 *                   logged step found skipped non-finite steps. Files written before records had a
 *                   kind and a time hold step records without either; readers take a record
 *                   without a kind as a step record.
 */
import * as fs from 'fs';
import * as path from 'path';
import { MomaError } from '../errors';
import { readJsonWithSchema, runFileSchema } from '../train/checkpoint_schema';
import type { TransformerConfig } from '../model/transformer';
import type { NonfiniteSkip, StepMetrics } from '../train/trainer';
import type { RunEnvironment } from './environment';
import type { RunSettings } from './run_config';

/** A metrics.jsonl line of a logged training step: the means over the steps since the previous one. */
export interface StepRecord extends StepMetrics {
  /** 'step' (absent in files written before records had a kind). */
  kind?: 'step';
  /** When the record was written, ISO 8601 (absent in files written before records had a time). */
  time?: string;
  /** Image tokens / all tokens of the interval's batches (the mean of their shares: every batch holds B × S tokens). */
  imageFraction: number;
}

/** A metrics.jsonl line of a held-out evaluation (after `step` training steps). */
export interface EvalRecord {
  kind: 'eval';
  /** When the evaluation ended, ISO 8601 (absent in files written before records had a time). */
  time?: string;
  step: number;
  tokens: number;
  flops: { total: number; perModality: Record<string, number> };
  loss: number;
  lossPerModality: Record<string, number>;
  targets: number;
  targetsPerModality: Record<string, number>;
  seconds: number;
}

/**
 * A metrics.jsonl line of a sample generation at an evaluation (lib/run/samples.ts): the held-out
 * caption drawn as an image, and the held-out image of the same document captioned.
 */
export interface SampleRecord {
  kind: 'sample';
  time: string;
  step: number;
  tokens: number;
  /** The held-out caption prompted, and the generated image's PNG (a path relative to the run directory). */
  prompt: string;
  image: string;
  /** The caption generated for the held-out image; the PNG of that image (relative path). */
  caption: string;
  source: string;
  /** Sampling seed (the run's seed: the same model gives the same sample) and temperature. */
  seed: number;
  temperature: number;
  seconds: number;
}

/** A metrics.jsonl line of a logged step that found skipped non-finite steps. */
export type SkipRecord = NonfiniteSkip & { kind: 'skip'; time?: string };

export type MetricsRecord = StepRecord | EvalRecord | SampleRecord;

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
  /** Where the run started: host, CPU, GPUs, Node, the moma binary, git checkout, command line (absent in runs before it was recorded). */
  environment?: RunEnvironment;
  /** Each resume: the checkpoint step it continued from, when, the steps it ran to, and where it ran (absent in resumes before it was recorded). */
  resumes: { step: number; at: string; steps: number; environment?: RunEnvironment }[];
  /** Data parallel: ranks, micro-batches per rank per step, sequences per step (absent in runs before it was recorded: one rank). */
  parallel?: { worldSize: number; gradAccum: number; globalBatch: number };
}

/** The records of a run's metrics.jsonl by kind. */
export interface RunMetrics {
  /** Training step records (kind 'step', or no kind: files written before records had one). */
  steps: StepRecord[];
  evals: EvalRecord[];
  samples: SampleRecord[];
  skips: SkipRecord[];
}

/**
 * The records of a run's metrics.jsonl by kind (a torn last line, from a killed run, is ignored;
 * so are records of a kind this version does not know).
 */
export function readMetrics(runDir: string): RunMetrics {
  const file = path.join(runDir, 'metrics.jsonl');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new MomaError('ERR_FILE', `report: cannot read ${file} (${(err as Error).message})`);
  }
  const read: RunMetrics = { steps: [], evals: [], samples: [], skips: [] };
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
    if (r.kind === undefined || r.kind === 'step') read.steps.push(record as StepRecord);
    else if (r.kind === 'eval') read.evals.push(record as EvalRecord);
    else if (r.kind === 'sample') read.samples.push(record as SampleRecord);
    else if (r.kind === 'skip') read.skips.push(record as SkipRecord);
  });
  return read;
}

/**
 * Reads a run's run.json checked by its schema (runFileSchema of lib/train/checkpoint_schema.ts):
 * ERR_FILE naming `op`, the file, the key and what was expected when it is not a moma run file.
 */
export function readRunFile(runDir: string, op: string): RunFile {
  return readJsonWithSchema(runFileSchema, path.join(runDir, 'run.json'), op) as unknown as RunFile;
}
