/**
 * A training run with everything around the Trainer loop: the run directory, metrics, held-out
 * evaluation, rolling checkpoints, resume and the report. `moma train` is a thin layer over
 * `trainRun`; tests call it directly.
 *
 * Run directory:
 *   run.json             the resolved settings, model config, dataset, optimiser, version, start
 *                        time, environment (lib/run/environment.ts), resumes
 *   vocab.json + files   the vocabulary layout and the tokenizer files the dataset names
 *   metrics.jsonl        one JSON object per logged step, {"kind":"step", "time": ISO 8601, …}
 *                        (every `logEvery` steps, and at each evaluation, checkpoint and stop) with
 *                        the means since the previous one,
 *                        and {"kind":"eval", …} per held-out evaluation,
 *                        {"kind":"sample", …} per sample generation (lib/run/samples.ts),
 *                        and {"kind":"skip", …} when a logged step found steps with a non-finite loss
 *                        or gradient norm that were skipped (`skipNonfinite`)
 *   checkpoints/step-NNNNNN/   the newest two checkpoints (an older one is deleted only after the
 *                        new one is complete; each is written under a temporary name and renamed),
 *                        every `checkpointEvery` steps and at the first logged step
 *                        `checkpointMinutes` of wall time after the previous one (when set)
 *   samples/             the sample generations at each evaluation, for models that can generate
 *   tensorboard/         TensorBoard event files (`tensorboard`; lib/run/tensorboard.ts)
 *
 * Diverged training (a non-finite loss or gradient norm, lib/train/trainer.ts) stops the run with
 * ERR_NONFINITE at the next logged step, past the `skipNonfinite` budget: every checkpoint is taken
 * at a logged step from a state the trainer has found finite, so no checkpoint holds NaN and none
 * of the good ones is rotated out; the report is still written. Resuming a checkpoint that holds a
 * non-finite value fails at once.
 *   report.html/.svg/.png
 *
 * Resume loads the newest checkpoint, drops metrics lines past its step and continues: the data
 * position, generator and optimizer continue exactly, so a run stopped and resumed equals an
 * uninterrupted one bit for bit. Raising `steps` on resume stretches the cosine schedule over the
 * new total (the steps already taken keep the rates they had).
 *
 * Data parallel: when `distributed.init()` has joined a group of more than one rank, every rank
 * runs trainRun with the same settings; a step trains ranks × gradAccum micro-batches
 * (lib/train/data_parallel.ts). Rank 0 alone writes the run directory (run.json, metrics,
 * checkpoints, report); every rank evaluates the held-out set (the same numbers; rank 0 records
 * them), and a stop asked of any rank is agreed at the next logged step. Checkpoints hold the full
 * model and optimizer state (with `sharding` zero1/zero2, each rank writes its optimizer shard
 * into rank 0's checkpoint; lib/train/checkpoint.ts), so a run resumes on any number of ranks.
 */
import * as fs from 'fs';
import * as path from 'path';
import { packageRoot } from '../binding';
import { MomaError } from '../errors';
import { countParameters, ParameterCount } from '../model/params';
import { preset } from '../model/presets';
import { Transformer, TransformerConfig } from '../model/transformer';
import { builtinDataset } from '../data/builtin';
import type { MixedModalDataset, TokenBatchSource } from '../data/dataset';
import { SequencePacker } from '../data/packer';
import { openShardSet } from '../data/shard_set';
import { modalityOfId, parseVocabLayout, VocabLayout, vocabFromSpec } from '../data/vocab';
import { readJson, writeFileAtomic, writeJsonAtomic } from '../io/files';
import { barrier, broadcast, isInitialized, world } from '../distributed/process_group';
import { full } from '../creation';
import { readCheckpoint } from '../train/checkpoint';
import { evaluate } from '../train/evaluate';
import { StepMetrics, Trainer } from '../train/trainer';
import { runEnvironment } from './environment';
import { EvalRecord, MetricsRecord, readMetrics, readRunFile, RunFile, SampleRecord, SkipRecord, StepRecord } from './records';
import { RunSampler } from './samples';
import { EVENTS_DIR, evalScalars, stepScalars, TensorBoardWriter, truncateEvents, wallTimeOf } from './tensorboard';
import { summarizeMetrics, trainingRecords, writeReport, MetricsSummary, ReportFiles } from './report';
import { RunConfigSources, resolveRunConfig, RUN_DEFAULTS, RunSettings } from './run_config';

export interface RunOptions extends RunConfigSources {
  /** Train on this dataset instead of opening settings.data (custom data, tests). */
  dataset?: MixedModalDataset;
  /** The command line recorded in run.json's environment (default: process.argv less the node executable). */
  commandLine?: string[];
  /** Milliseconds since some origin, read for `checkpointMinutes` (default Date.now). */
  clock?: () => number;
}

export interface RunStartInfo {
  runDir: string;
  settings: RunSettings;
  model: TransformerConfig;
  parameters: ParameterCount;
  dataset: string;
  /** The step training starts from (the checkpoint's step on resume, else 0). */
  startStep: number;
  /** The checkpoint resumed from, or null. */
  resumedFrom: string | null;
}

export type { SkipRecord } from './records';

export interface RunHooks {
  onStart?(info: RunStartInfo): void;
  onStep?(record: StepRecord): void;
  onSkip?(record: SkipRecord): void;
  onEval?(record: EvalRecord): void;
  /** A sample generation after an evaluation (models that can generate: lib/run/samples.ts). */
  onSample?(record: SampleRecord): void;
  onCheckpoint?(info: { step: number; dir: string }): void;
  /** Aborting stops the run after the current step; it then checkpoints and writes the report. */
  signal?: AbortSignal;
}

export interface RunSummary extends MetricsSummary {
  runDir: string;
  /** True when the signal ended the run before `steps`. */
  stopped: boolean;
  /** Steps, tokens and step seconds of this invocation (a resumed run counts from its checkpoint). */
  session: { steps: number; tokens: number; trainSeconds: number; tokensPerSecond: number };
  /** Wall-clock seconds of this invocation, setup and report included. */
  wallSeconds: number;
  checkpoint: string;
  /** The report's files; null on data-parallel ranks other than 0 (rank 0 writes the run directory). */
  report: ReportFiles | null;
  /** The folder of the TensorBoard event files, or null without `tensorboard` (and on ranks other than 0). */
  tensorboard: string | null;
}

const SCHEDULE_FLOOR = 0.01;
const KEEP_CHECKPOINTS = 2;
const CHECKPOINT_NAME = /^step-(\d+)$/;

function momaVersion(): string {
  return (readJson(path.join(packageRoot, 'package.json'), 'trainRun') as { version: string }).version;
}

/** Runs a file system step, turning its errors (permissions, missing files, full disk) into MomaError('ERR_FILE'). */
function onDisk<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof MomaError) throw err;
    throw new MomaError('ERR_FILE', `trainRun: cannot ${what} (${(err as Error).message})`);
  }
}

/** Opens the dataset a run's settings name; a resumed builtin run reuses the image tokenizer saved in its directory. */
export async function openDataset(settings: RunSettings, runDir: string | null): Promise<MixedModalDataset> {
  if (settings.data === 'builtin') {
    let imageTokenizer: Buffer | undefined;
    if (runDir !== null) {
      const layout = parseVocabLayout(readJson(path.join(runDir, 'vocab.json'), 'trainRun'), path.join(runDir, 'vocab.json'));
      const file = layout.image === null ? null : path.join(runDir, layout.image.tokenizer.file);
      if (file !== null) imageTokenizer = onDisk(`read the run's image tokenizer ${file}`, () => fs.readFileSync(file));
    }
    return builtinDataset({ seed: settings.seed, imageTokenizer });
  }
  if (!fs.existsSync(settings.data) || !fs.statSync(settings.data).isDirectory()) {
    throw new MomaError('ERR_ARG', `trainRun: --data ${settings.data} is not a folder (a shard set folder, or 'builtin')`);
  }
  return openShardSet(settings.data);
}

/** Checkpoint folders of a run, newest first. */
export function listCheckpoints(runDir: string): { step: number; dir: string }[] {
  const root = path.join(runDir, 'checkpoints');
  if (!fs.existsSync(root)) return [];
  return fs.readdirSync(root)
    .map((name) => ({ match: CHECKPOINT_NAME.exec(name), name }))
    .filter((e) => e.match !== null)
    .map((e) => ({ step: Number(e.match![1]), dir: path.join(root, e.name) }))
    .sort((a, b) => b.step - a.step);
}

/** Removes temporary checkpoint folders a killed process left behind. */
function removePartialCheckpoints(runDir: string): void {
  const root = path.join(runDir, 'checkpoints');
  if (!fs.existsSync(root)) return;
  for (const name of fs.readdirSync(root)) {
    if (/\.(partial|old)-\d+$/.test(name)) fs.rmSync(path.join(root, name), { recursive: true, force: true });
  }
}

function checkpointDirOf(runDir: string, step: number): string {
  return path.join(runDir, 'checkpoints', `step-${String(step).padStart(6, '0')}`);
}

/** Keeps metrics lines up to `step` (a resume drops what came after its checkpoint, and a torn last line). */
/** The records of a run's metrics.jsonl up to `step` (a torn last line is dropped). */
function metricsUpTo(file: string, step: number): MetricsRecord[] {
  if (!fs.existsSync(file)) return [];
  const kept: MetricsRecord[] = [];
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '');
  lines.forEach((line, i) => {
    let record: MetricsRecord;
    try {
      record = JSON.parse(line) as MetricsRecord;
    } catch {
      if (i === lines.length - 1) return;
      throw new MomaError('ERR_FILE', `trainRun: ${file} line ${i + 1} is not JSON`);
    }
    if (record.step <= step) kept.push(record);
  });
  return kept;
}

/** Drops the records of a run's metrics.jsonl past `step` (those of steps after the checkpoint resumed from); returns the rest. */
function truncateMetrics(file: string, step: number): MetricsRecord[] {
  const kept = metricsUpTo(file, step);
  if (fs.existsSync(file)) writeFileAtomic(file, kept.map((r) => JSON.stringify(r) + '\n').join(''));
  return kept;
}

/**
 * The packer as the trainer's batch source, remembering the image share of each batch handed out
 * (the trainer takes them in order, one step built ahead; ranks × gradAccum batches per step) until
 * a record reports it.
 */
class ObservedPacker implements TokenBatchSource {
  private readonly fractions: number[] = [];

  constructor(private readonly packer: SequencePacker) {}

  next(): number[][] {
    const batch = this.packer.next();
    this.fractions.push(this.packer.imageFractionOf(batch));
    return batch;
  }

  /** The mean image share of the `count` oldest batches not yet reported (the steps of one record). */
  takeImageFraction(count: number): number {
    const taken = this.fractions.splice(0, count);
    return taken.length === 0 ? 0 : taken.reduce((sum, f) => sum + f, 0) / taken.length;
  }

  state(): unknown {
    return this.packer.state();
  }

  restore(state: unknown): void {
    this.packer.restore(state);
    this.fractions.length = 0;
  }
}

export function isImageOf(layout: VocabLayout): (id: number) => boolean {
  return (id) => modalityOfId(layout, id) === 1;
}

/** The fixed held-out sequences: the first `evalBatches` batches of the eval split, packed as the training batches are. */
export function heldOutSequences(dataset: MixedModalDataset, settings: RunSettings): number[][] | null {
  const store = dataset.store('eval', settings.seed);
  if (store === null) return null;
  // an expert-parallel group's micro-batch: expertParallel × batchSize sequences
  const packer = new SequencePacker(store, { batchSize: settings.batchSize * (settings.expertParallel ?? 1), seqLen: settings.seqLen, isImage: isImageOf(dataset.layout), imageFraction: settings.imageFraction });
  const sequences: number[][] = [];
  for (let i = 0; i < settings.evalBatches; i++) sequences.push(...packer.next());
  return sequences;
}

/** The ranks of a data-parallel run: the process group when one of more than one rank is joined, else this process alone. */
function runRanks(): { rank: number; ranks: number } {
  if (!isInitialized() || world().worldSize === 1) return { rank: 0, ranks: 1 };
  return { rank: world().rank, ranks: world().worldSize };
}

function newRunFile(settings: RunSettings, dataset: MixedModalDataset, commandLine: string[] | undefined): RunFile {
  const model = preset(settings.preset, {
    ...settings.model, vocabSize: dataset.layout.size, modalities: ['text', 'image'], device: settings.device, seed: settings.seed,
    computeDtype: settings.dtype ?? RUN_DEFAULTS.dtype,
  });
  const parameters = countParameters(model);
  return {
    format: 'moma-run', version: 1, moma: momaVersion(), startedAt: new Date().toISOString(),
    environment: runEnvironment(commandLine),
    config: settings, model, parameters: { total: parameters.total, active: parameters.active },
    dataset: { name: dataset.name, vocabHash: dataset.layout.hash, vocabSize: dataset.layout.size, files: Object.keys(dataset.files) },
    optimizer: {
      kind: 'adamw', betas: [0.9, 0.95], eps: 1e-5, weightDecay: 0.1, clipNorm: 1,
      schedule: { shape: 'cosine', peak: settings.lr, warmup: settings.warmup, total: settings.steps, floor: SCHEDULE_FLOOR },
    },
    resumes: [],
    parallel: parallelOf(settings),
  };
}

function parallelOf(settings: RunSettings): RunFile['parallel'] {
  const { ranks } = runRanks();
  const gradAccum = settings.gradAccum ?? 1;
  return { worldSize: ranks, gradAccum, globalBatch: ranks * gradAccum * settings.batchSize };
}

/** Creates the run directory of a new run (refusing one that already holds a run or other files). */
function createRunDir(runDir: string, run: RunFile, dataset: MixedModalDataset): void {
  if (fs.existsSync(runDir)) {
    if (!fs.statSync(runDir).isDirectory()) throw new MomaError('ERR_ARG', `trainRun: --out ${runDir} exists and is not a folder`);
    if (fs.existsSync(path.join(runDir, 'run.json'))) {
      throw new MomaError('ERR_ARG', `trainRun: --out ${runDir} already holds a run; continue it with --resume ${runDir} or choose another --out`);
    }
    if (fs.readdirSync(runDir).length > 0) throw new MomaError('ERR_ARG', `trainRun: --out ${runDir} is not empty`);
  }
  for (const name of Object.keys(dataset.files)) {
    if (name.includes('/') || name.includes('\\') || name === 'run.json' || name === 'vocab.json') {
      throw new MomaError('ERR_ARG', `trainRun: dataset file name '${name}' is not allowed in a run directory`);
    }
  }
  onDisk(`create the run directory ${runDir}`, () => {
    fs.mkdirSync(path.join(runDir, 'checkpoints'), { recursive: true });
    for (const [name, bytes] of Object.entries(dataset.files)) writeFileAtomic(path.join(runDir, name), bytes);
    writeJsonAtomic(path.join(runDir, 'vocab.json'), dataset.layout);
    writeFileAtomic(path.join(runDir, 'metrics.jsonl'), '');
    writeJsonAtomic(path.join(runDir, 'run.json'), run);
  });
}

interface Prepared {
  run: RunFile;
  checkpoint: { step: number; dir: string } | null;
  records: MetricsRecord[];
}

/** What a resume starts from, read (nothing written: every rank reads it before rank 0 rewrites it, commitResume). */
function prepareResume(runDir: string, settings: RunSettings, dataset: MixedModalDataset): Prepared {
  const run = readRunFile(runDir, 'trainRun');
  const saved = parseVocabLayout(readJson(path.join(runDir, 'vocab.json'), 'trainRun'), path.join(runDir, 'vocab.json'));
  if (dataset.layout.hash !== saved.hash || run.dataset?.vocabHash !== saved.hash) {
    throw new MomaError('ERR_FILE', `trainRun: --resume ${runDir}: the dataset's vocabulary (hash ${dataset.layout.hash.slice(0, 12)}…) differs from the run's vocab.json (${saved.hash.slice(0, 12)}…)`);
  }
  const newest = listCheckpoints(runDir)[0];
  if (newest === undefined) throw new MomaError('ERR_FILE', `trainRun: --resume ${runDir}: no complete checkpoint in ${path.join(runDir, 'checkpoints')}`);
  const { state } = readCheckpoint(newest.dir);
  if (state.step !== newest.step) throw new MomaError('ERR_FILE', `trainRun: ${newest.dir} holds step ${state.step}, its name says ${newest.step}`);
  if (settings.steps < newest.step) {
    throw new MomaError('ERR_ARG', `trainRun: --steps ${settings.steps} is below the step of the newest checkpoint (${newest.step}) of ${runDir}`);
  }
  keepGlobalBatch(run, settings, runDir);
  return { run, checkpoint: newest, records: metricsUpTo(path.join(runDir, 'metrics.jsonl'), newest.step) };
}

/** Rank 0's part of a resume: drops partial checkpoints and the metrics past the checkpoint, and records the resume in run.json. */
function commitResume(runDir: string, settings: RunSettings, prepared: Prepared, commandLine: string[] | undefined): void {
  const { run, checkpoint } = prepared;
  removePartialCheckpoints(runDir);
  truncateMetrics(path.join(runDir, 'metrics.jsonl'), checkpoint!.step);
  onDisk('truncate the TensorBoard event files', () => truncateEvents(path.join(runDir, EVENTS_DIR), checkpoint!.step));
  run.config = settings;
  run.optimizer.schedule.total = settings.steps;
  run.resumes = [...(run.resumes ?? []), { step: checkpoint!.step, at: new Date().toISOString(), steps: settings.steps, environment: runEnvironment(commandLine) }];
  run.parallel = parallelOf(settings);
  writeJsonAtomic(path.join(runDir, 'run.json'), run);
}

/**
 * A run resumed on another number of ranks or expert-parallel size keeps its global batch and its
 * routing micro-batch (expertParallel × batchSize sequences, routed as one): gradAccum becomes the
 * run's micro-batches per step over the data-parallel replicas now (ranks / expertParallel), which
 * must divide them, and batchSize the micro-batch's share per rank. The stored expertParallel
 * becomes 1 when it does not divide the ranks now (unless given again with --expert-parallel).
 */
function keepGlobalBatch(run: RunFile, settings: RunSettings, runDir: string): void {
  const before = run.parallel ?? { worldSize: 1, gradAccum: settings.gradAccum ?? 1 };
  const storedN = run.config.expertParallel ?? 1;
  const { ranks } = runRanks();
  if (ranks % (settings.expertParallel ?? 1) !== 0 && settings.expertParallel === storedN) settings.expertParallel = 1;
  const N = settings.expertParallel ?? 1;
  if (ranks === before.worldSize && N === storedN) return;
  const sequences = storedN * run.config.batchSize;
  const micro = (before.worldSize / storedN) * before.gradAccum;
  const replicas = ranks / N;
  if (sequences % N !== 0 || !Number.isInteger(replicas) || micro % replicas !== 0) {
    throw new MomaError('ERR_ARG', `trainRun: --resume ${runDir}: the run trains ${micro} micro-batches of ${sequences} sequences per step `
      + `(${before.worldSize} rank(s), expert parallel ${storedN}, gradAccum ${before.gradAccum}); resume it on a number of ranks R and an expert-parallel size N `
      + `with N dividing R and ${sequences}, and R / N dividing ${micro}, not R = ${ranks}, N = ${N}`);
  }
  settings.batchSize = sequences / N;
  settings.gradAccum = micro / replicas;
}

/** Trains as the settings say (see the module comment); resolves when done, stopped by the signal, or rejects on an error. */
export async function trainRun(options: RunOptions = {}, hooks: RunHooks = {}): Promise<RunSummary> {
  const started = Date.now();
  const { settings, resume } = resolveRunConfig(options);
  const { rank, ranks } = runRanks();
  const writer = rank === 0;
  if (ranks > 1) {
    const groupDevice = world().device;
    if ((groupDevice === 'cpu') !== (settings.device === 'cpu')) {
      throw new MomaError('ERR_DIST', `trainRun: the process group runs on ${groupDevice} (backend ${world().backend}) but the run asks for device ${settings.device}`);
    }
    settings.device = groupDevice;
  }
  const runDir = path.resolve(settings.out);
  const dataset = options.dataset ?? await openDataset(settings, resume === null ? null : runDir);
  let prepared: Prepared;
  if (resume !== null) {
    prepared = prepareResume(runDir, settings, dataset);
    // every rank has read run.json, the metrics and the checkpoint list before rank 0 rewrites them
    if (ranks > 1) await barrier();
    if (writer) commitResume(runDir, settings, prepared, options.commandLine);
  } else {
    const run = newRunFile(settings, dataset, options.commandLine);
    if (writer) createRunDir(runDir, run, dataset);
    prepared = { run, checkpoint: null, records: [] };
  }
  const { run } = prepared;
  const trainStore = dataset.store('train', settings.seed);
  if (trainStore === null) throw new MomaError('ERR_ARG', `trainRun: dataset ${dataset.name} has no train split`);
  const data = new ObservedPacker(new SequencePacker(trainStore, {
    batchSize: settings.batchSize * (settings.expertParallel ?? 1), seqLen: settings.seqLen, isImage: isImageOf(dataset.layout), imageFraction: settings.imageFraction,
  }));
  const heldOut = heldOutSequences(dataset, settings);
  const vocabInfo = vocabFromSpec(dataset.layout);
  const metricsFile = path.join(runDir, 'metrics.jsonl');
  const appendRecord = (record: MetricsRecord | SkipRecord): void => {
    if (writer) onDisk(`append to ${metricsFile}`, () => fs.appendFileSync(metricsFile, JSON.stringify(record) + '\n'));
  };
  const clock = options.clock ?? Date.now;

  const model = new Transformer(run.model);
  let trainer: Trainer | null = null;
  let events: TensorBoardWriter | null = null;
  let sampler: RunSampler | null = null;
  try {
    if (writer && settings.tensorboard === true) events = TensorBoardWriter.create(path.join(runDir, EVENTS_DIR));
    // decoding on rank 0 alone needs the whole model there (not ZeRO-3's released parameters)
    if (writer && (settings.sharding ?? 'none') !== 'zero3') sampler = RunSampler.create(model, dataset, runDir, settings.seed);
    trainer = new Trainer({
      model, data, vocab: dataset.layout, checkpointFiles: dataset.files, steps: settings.steps,
      schedule: { peak: settings.lr, warmup: settings.warmup, shape: 'cosine', floor: SCHEDULE_FLOOR },
      optimizer: { betas: run.optimizer.betas, eps: run.optimizer.eps, weightDecay: run.optimizer.weightDecay, clipNorm: run.optimizer.clipNorm },
      seed: settings.seed, statsEvery: settings.evalEvery > 0 ? settings.evalEvery : Math.max(1, Math.floor(settings.steps / 10)),
      logEvery: settings.logEvery ?? RUN_DEFAULTS.logEvery, gradAccum: settings.gradAccum ?? RUN_DEFAULTS.gradAccum,
      sharding: settings.sharding ?? RUN_DEFAULTS.sharding, expertParallel: settings.expertParallel ?? RUN_DEFAULTS.expertParallel, skipNonfinite: settings.skipNonfinite ?? RUN_DEFAULTS.skipNonfinite,
    });
    if (prepared.checkpoint !== null) await trainer.resume(prepared.checkpoint.dir);
    trainer.on('skip', (skip) => {
      const record: SkipRecord = { kind: 'skip', time: new Date().toISOString(), ...skip };
      appendRecord(record);
      hooks.onSkip?.(record);
    });
    const startStep = trainer.step;
    const startTokens = trainer.tokens;
    hooks.onStart?.({
      runDir, settings, model: run.model, parameters: countParameters(run.model), dataset: dataset.name, startStep,
      resumedFrom: prepared.checkpoint?.dir ?? null,
    });

    const t = trainer;
    let lastEvalStep = prepared.records.filter((r) => 'kind' in r && r.kind === 'eval').reduce((s, r) => Math.max(s, r.step), -1);
    let lastCheckpoint = prepared.checkpoint;
    let lastCheckpointAt = clock();
    let trainSeconds = 0;
    const checkpointMs = (settings.checkpointMinutes ?? 0) * 60_000;
    // checked at logged steps; the ranks checkpoint together, so rank 0's clock decides for all
    const checkpointTimeDue = async (): Promise<boolean> => {
      if (checkpointMs <= 0) return false;
      const due = clock() - lastCheckpointAt >= checkpointMs;
      if (ranks === 1) return due;
      const agreed = broadcast(full([1], due ? 1 : 0, { device: settings.device }));
      try {
        return (await agreed.item()) > 0;
      } finally {
        agreed.dispose();
      }
    };

    const runEval = async (): Promise<void> => {
      if (heldOut === null) return;
      const begun = process.hrtime.bigint();
      const result = await evaluate(model, heldOut, { vocab: vocabInfo, batchSize: settings.batchSize * (settings.expertParallel ?? 1) });
      const names = model.config.modalities;
      const record: EvalRecord = {
        kind: 'eval', time: new Date().toISOString(), step: t.step, tokens: t.tokens,
        flops: { total: t.flops.total, perModality: Object.fromEntries(names.map((n, m) => [n, t.flops.perModality[m] ?? 0])) },
        loss: result.loss, lossPerModality: result.perModality, targets: result.targets, targetsPerModality: result.targetsPerModality,
        seconds: Number(process.hrtime.bigint() - begun) / 1e9,
      };
      appendRecord(record);
      events?.summary(record.step, evalScalars(record), wallTimeOf(record));
      lastEvalStep = t.step;
      hooks.onEval?.(record);
      if (sampler !== null) {
        const sample = await sampler.sample(t.step, t.tokens);
        appendRecord(sample.record);
        events?.summary(sample.record.step, [
          { tag: 'samples/caption_to_image', image: { png: sample.png, width: sample.width, height: sample.height, channels: sample.channels } },
          { tag: 'samples/captions', text: `**caption → image:** ${sample.record.prompt}\n\n**held-out image → caption:** ${sample.record.caption}` },
        ], wallTimeOf(sample.record));
        hooks.onSample?.(sample.record);
      }
    };
    // Trainer.checkpoint refuses a state it has not found finite, and writes under a temporary name
    // renamed when complete: the old checkpoints go only once the new one is there
    const runCheckpoint = async (): Promise<void> => {
      const dir = checkpointDirOf(runDir, t.step);
      await t.checkpoint(dir);
      lastCheckpoint = { step: t.step, dir };
      lastCheckpointAt = clock();
      if (writer && fs.existsSync(path.join(dir, 'trainer.json'))) {
        for (const old of listCheckpoints(runDir).slice(KEEP_CHECKPOINTS)) fs.rmSync(old.dir, { recursive: true, force: true });
      }
      hooks.onCheckpoint?.({ step: t.step, dir });
    };

    const logRecord = (metrics: StepMetrics | null): void => {
      if (metrics === null) return;
      trainSeconds += metrics.seconds;
      const record: StepRecord = { kind: 'step', time: new Date().toISOString(), ...metrics, imageFraction: data.takeImageFraction(metrics.interval * t.batchesPerStep) };
      appendRecord(record);
      events?.summary(record.step, stepScalars(record), wallTimeOf(record));
      hooks.onStep?.(record);
    };

    // Steps between records only queue device work; evaluations and checkpoints wait for the
    // device anyway, so their steps are logged too (each record then covers training only).
    const onAbort = (): void => t.requestStop();
    if (hooks.signal?.aborted === true) t.requestStop();
    hooks.signal?.addEventListener('abort', onAbort);
    try {
      while (t.step < settings.steps && !t.stopping) {
        const step = t.step + 1;
        const evalDue = settings.evalEvery > 0 && step % settings.evalEvery === 0;
        const checkpointDue = settings.checkpointEvery > 0 && step % settings.checkpointEvery === 0;
        const metrics = await t.trainStep({ log: evalDue || checkpointDue });
        logRecord(metrics);
        if (evalDue) await runEval();
        if (checkpointDue || (metrics !== null && await checkpointTimeDue())) await runCheckpoint();
      }
      logRecord(await t.flushMetrics());
    } catch (err) {
      hooks.signal?.removeEventListener('abort', onAbort);
      // a diverged run keeps its report of the steps before; the error says what happened
      if (writer && err instanceof MomaError && err.code === 'ERR_NONFINITE') await writeReport(runDir).catch(() => undefined);
      throw err;
    }
    const stopped = t.step < settings.steps;
    if (!stopped && lastEvalStep !== t.step) await runEval();
    if (lastCheckpoint?.step !== t.step) await runCheckpoint();
    hooks.signal?.removeEventListener('abort', onAbort);
    if (!writer) {
      const session = { steps: t.step - startStep, tokens: t.tokens - startTokens, trainSeconds, tokensPerSecond: trainSeconds > 0 ? (t.tokens - startTokens) / trainSeconds : 0 };
      return { ...summarizeMetrics([], []), runDir, stopped, session, wallSeconds: (Date.now() - started) / 1000, checkpoint: lastCheckpoint?.dir ?? '', report: null, tensorboard: null };
    }
    const report = await writeReport(runDir);
    const { steps: records, evals } = readMetrics(runDir);
    const steps = trainingRecords(records);
    const session = { steps: t.step - startStep, tokens: t.tokens - startTokens, trainSeconds, tokensPerSecond: trainSeconds > 0 ? (t.tokens - startTokens) / trainSeconds : 0 };
    return {
      ...summarizeMetrics(steps, evals), runDir, stopped, session,
      wallSeconds: (Date.now() - started) / 1000, checkpoint: lastCheckpoint!.dir, report,
      tensorboard: events === null ? null : path.dirname(events.file),
    };
  } finally {
    events?.close();
    sampler?.dispose();
    trainer?.dispose();
    model.dispose();
  }
}
