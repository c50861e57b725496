/**
 * Trainer: the training loop over a data source of token batches. Each step takes its batch
 * (targets, positions, document segments, modality per row from the vocabulary), runs forward and
 * backward inside one `tidy`, clips and applies AdamW with the scheduled learning rate on the
 * device, adds its losses and gradient norm to device accumulators, and builds and uploads the
 * next step's batch while the device works. Nothing is read back inside a step: the host waits on
 * the device only on logged steps, every `logEvery` steps (and at checkpoints of `run()`, the
 * last step and `flushMetrics()`), where one read fetches the interval's sums and a 'step' event
 * carries the means since the previous one: tokens, cumulative training FLOPs overall and per
 * modality (docs/EXPERIMENTS.md, "Training FLOPs"), loss overall and per modality, learning rate, gradient norm, tokens/s, model
 * FLOPs utilisation against the device peak, the data-wait time, the host waits so far and, on
 * the first logged step of every `statsEvery` steps, routing statistics (read in the same read).
 * Checkpoints every `checkpointEvery` steps and at the end (lib/train/checkpoint.ts); `resume`
 * continues exactly where a checkpoint left off (data position and generator included).
 *
 * Non-finite steps are found on the device, without a host wait: each step computes a finite flag
 * from its loss and its gradient norm (agreed by every rank in data-parallel training), adds
 * 1 − flag and what the step's record must leave out to the interval's sums, and masks the step's
 * loss and norm out of them with where(). A logged step reads the count with the rest: when the
 * run's non-finite steps exceed `skipNonfinite` (default 0) it throws MomaError('ERR_NONFINITE')
 * naming the first such step and whether the loss or the gradient norm was not finite, and the
 * trainer refuses to checkpoint from then on; within the budget the optimizer leaves parameters
 * and moments unchanged on those steps (lib/optim/adamw.ts), the data moves on, and a 'skip' event
 * reports them. Checkpoints are taken only on logged steps (run() logs them), and checkpoint()
 * also reads one finite flag per parameter before writing, so no checkpoint holds a non-finite
 * value; resume() checks the parameters (and unsharded moments) it loads the same way.
 */
import { EventEmitter } from 'events';
import { backward } from '../autograd/tape';
import { scale } from '../autograd/functions';
import { tidy, untrack } from '../autograd/scope';
import { MomaError } from '../errors';
import { runtimeStats } from '../memory';
import { concat, where } from '../ops';
import { full, zeros } from '../creation';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { MoEFeedForward } from '../model/layers';
import { Batch, disposeBatch, makeBatch, Transformer, TransformerConfig } from '../model/transformer';
import { batchRows, BatchRowsOptions } from '../model/batch_rows';
import { AdamW, AdamWOptions, finiteIndicator, learningRate, StepResult } from '../optim/adamw';
import { loadCheckpointInto, saveCheckpoint } from './checkpoint';
import { trainingFlops } from './flops';
import { agreeFinite, GradientReducer, microBatchGenerator, ReducedParameters, StepSplit, stepSplit, sumOverRanks } from './data_parallel';
import { checkSharding, Sharding, ZeroOptimizer } from './zero';
import { consolidate, ExpertParallelAdamW, ExpertParallelPlan, loadExpertParallel, planExpertParallel } from './expert_parallel';
import type { TokenBatchSource } from '../data/dataset';
import { VocabInfo, VocabSpec, vocabFromSpec } from '../data/vocab';
import { at } from '../checked';

export interface ScheduleOptions {
  peak: number;
  warmup: number;
  /** Steps the schedule spans (default: the run's steps). */
  total?: number;
  floor?: number;
  shape?: 'linear' | 'cosine';
}

export interface TrainerOptions {
  model: Transformer;
  data: TokenBatchSource;
  /** The vocabulary (saved as vocab.json with every checkpoint; a data layer VocabLayout is one). */
  vocab: VocabSpec;
  /** More files saved with every checkpoint (e.g. the tokenizer files a VocabLayout names): Buffers raw, others as JSON. */
  checkpointFiles?: Record<string, unknown>;
  steps: number;
  schedule: ScheduleOptions;
  optimizer?: AdamWOptions;
  /** Gumbel routing noise and other training randomness. */
  seed?: number;
  checkpointDir?: string;
  checkpointEvery?: number;
  statsEvery?: number;
  /** Read the metrics and emit 'step' every this many steps (default 10); the steps between only queue device work. */
  logEvery?: number;
  /** FLOP/s the device can do (MFU denominator); default from MOMA_PEAK_FLOPS, else 256e9 on CPU, 989e12 on CUDA. */
  peakFlops?: number;
  /**
   * Micro-batches per optimizer step on each rank (gradient accumulation; default 1). Each is one
   * `data.next()`; the step's gradient is the mean of its micro-batches' gradients.
   */
  gradAccum?: number;
  /**
   * Data parallel over the process group (lib/distributed): default on when `distributed.init()`
   * joined a group of more than one rank. A step then trains ranks × gradAccum micro-batches, rank r
   * the r-th contiguous share (lib/train/data_parallel.ts); rank 0 writes the checkpoints.
   */
  dataParallel?: boolean;
  /**
   * Data parallel only: shard the AdamW moments ('zero1') and also the gradients ('zero2') over
   * the ranks (lib/train/zero.ts); default 'none'. Each rank then writes its optimizer shard with
   * every checkpoint. With one rank there is nothing to shard and it has no effect.
   */
  sharding?: Sharding;
  /**
   * Expert parallel (lib/train/expert_parallel.ts; default 1: off): the world's ranks form
   * data-parallel replicas of groups of this many consecutive ranks, over which the experts of
   * every MoE layer are spread (the Trainer shards the model's MoE layers: each rank keeps its
   * experts). Each `data.next()` is then one group micro-batch of expertParallel × b sequences,
   * rank j of a group training the j-th b of them: the run trains like one process whose
   * micro-batches are those batches. Must divide the world size and every group's expert count;
   * not with mixture-of-depths layers or sharding. A world of D × N ranks holds D data-parallel
   * replicas of an N-rank group: replica k trains the step's batches k·A … k·A + A − 1.
   */
  expertParallel?: number;
  /**
   * Data parallel without sharding: all-reduce the gradients in buckets during the backward of the
   * step's last micro-batch, each bucket as soon as its gradients are final (default true;
   * GradientReducer in lib/train/data_parallel.ts). false all-reduces them after the backward. The
   * sums are the same bit for bit either way.
   */
  overlapGrads?: boolean;
  /**
   * Steps with a non-finite loss or gradient norm the run may skip (default 0): such a step then
   * changes no parameter or moment, and the next logged step reports it ('skip' event). One more
   * stops training with MomaError('ERR_NONFINITE') at the logged step that finds it.
   */
  skipNonfinite?: number;
}

/** What a logged step found of steps with a non-finite loss or gradient norm since the previous one (the 'skip' event). */
export interface NonfiniteSkip {
  /** The logged step that found them. */
  step: number;
  tokens: number;
  /** Non-finite steps since the previous logged step (skipped: no update applied). */
  skipped: number;
  /** Of those, the steps whose loss was not finite and those whose gradient norm was not finite. */
  lossSteps: number;
  gradNormSteps: number;
  /** The first of them. */
  firstStep: number;
  /** Non-finite steps skipped over the whole run (resumes included), and how many it may skip. */
  total: number;
  budget: number;
}

export interface ExpertStat {
  layer: number;
  group: number;
  expert: number;
  rows: number;
  meanGate: number;
}

export interface StepMetrics {
  /** The step the record was taken at (1-based, counting a resumed run's earlier steps). */
  step: number;
  /** Steps the means below cover: those since the previous record. */
  interval: number;
  /** Non-padding rows trained on so far. */
  tokens: number;
  flops: { total: number; perModality: Record<string, number> };
  /** Training loss per target over the interval (each step's loss weighted by its valid targets). */
  loss: number;
  /** Loss per target of each modality over the interval; NaN where the interval had none. */
  lossPerModality: Record<string, number>;
  /** Learning rate of the record's step. */
  lr: number;
  /** Mean over the interval's steps of the global gradient norm before clipping. */
  gradNorm: number;
  /** Non-padding rows of the interval per second of step time. */
  tokensPerSecond: number;
  mfu: number;
  /** Step time of the interval: its trainStep calls (the logged one waits for the device) less the data wait. */
  seconds: number;
  /** Milliseconds the interval's steps waited for their batch (building it when none was prefetched, or awaiting the source). */
  dataWaitMs: number;
  /** Host waits on the model's device since the process began (runtimeStats), this record's read included. */
  hostSyncs: number;
  /** Steps of the interval with a non-finite loss or gradient norm, skipped (absent when none): the means above leave them out. */
  skipped?: number;
  routing?: ExpertStat[];
}

/** What a whole step (every rank's micro-batches) adds up to, from the host rows of all of them. */
interface StepTotals {
  rows: number;
  targets: number;
  targetsPerModality: number[];
  flops: number;
  flopsPerModality: number[];
}

/**
 * This rank's micro-batches of a step and what the whole step adds up to; `lossScales[a]`: the
 * factor of micro-batch a's loss, its counted targets over those of its expert-parallel group's
 * micro-batch (1 without expert parallel).
 */
interface StepBatches {
  batches: Batch[];
  lossScales: number[];
  totals: StepTotals;
}

/** A step's micro-batches (this rank's share) built ahead of time, with the data position before them (what a checkpoint saves). */
interface NextStep {
  position: unknown;
  result: Promise<StepBatches | { error: unknown }>;
}

/**
 * Layout of the interval's device sums (float32 [7 + 2M], M modalities): Σ loss · targets,
 * Σ loss_m · targets_m per modality and Σ gradient norm over the finite steps (those three masked
 * to 0 on a non-finite step), then the non-finite steps, those with a non-finite loss, those with
 * a non-finite gradient norm, the first non-finite step (0: none), and the targets, overall and
 * per modality, of the non-finite steps (what the means must leave out).
 */
const SLOT = {
  gradNorm: (M: number): number => 1 + M,
  nonfinite: (M: number): number => 2 + M,
  lossNonfinite: (M: number): number => 3 + M,
  normNonfinite: (M: number): number => 4 + M,
  firstNonfinite: (M: number): number => 5 + M,
  skippedTargets: (M: number): number => 6 + M,
  length: (M: number): number => 7 + 2 * M,
};

/** What the steps since the last record add up to; `sums` stays on the device until it is logged. */
interface Interval {
  steps: number;
  rows: number;
  flops: number;
  targets: number;
  targetsPerModality: number[];
  /** float32 [SLOT.length(M)], see SLOT. */
  sums: Tensor | null;
  stepNs: bigint;
  dataWaitNs: bigint;
  lr: number;
}

/** The events a Trainer emits, each with its one payload: `trainer.on('step', (m) => …)` is typed from here. */
export interface TrainerEvents {
  /** Metrics read every `logEvery` steps, and once more at the end for the steps since the last read. */
  step: StepMetrics;
  /** A checkpoint was written to `dir` after step `step`. */
  checkpoint: { step: number; dir: string };
  /** A logged step found steps with a non-finite loss or gradient norm, skipped within the `skipNonfinite` budget. */
  skip: NonfiniteSkip;
  /** run() finished after step `step`. */
  end: { step: number };
}

/** A listener of the Trainer event `E`: called with that event's one payload. */
export type TrainerListener<E extends keyof TrainerEvents> = (payload: TrainerEvents[E]) => void;

export class Trainer extends EventEmitter {
  readonly model: Transformer;
  readonly optimizer: AdamW;
  /** The sharded optimizer of a data-parallel run with sharding 'zero1' or 'zero2' (it steps `optimizer`, which then holds no moments); else null. */
  readonly zero: ZeroOptimizer | null;
  step = 0;
  tokens = 0;
  flops = { total: 0, perModality: [] as number[] };
  private readonly generator: Generator;
  private readonly vocab: VocabInfo;
  private readonly logEvery: number;
  private readonly peakFlops: number;
  private stopRequested = false;
  /** Data parallel: some rank asked to stop, as the ranks learned at the last logged step. */
  private stopAgreed = false;
  private next: NextStep | null = null;
  /** This rank's share of a step: ranks × accumulation micro-batches per step. */
  readonly split: StepSplit;
  /** Expert parallel (lib/train/expert_parallel.ts): this rank's place, or null without it. */
  readonly expertParallel: ExpertParallelPlan | null;
  private interval: Interval;
  /** The step of the last record (or where training started): routing statistics follow it. */
  private lastLogged = 0;
  /** Non-finite steps the run may skip, and those it skipped (resumes included). */
  private readonly skipBudget: number;
  private skippedSteps = 0;
  /** Set when training met more non-finite steps than the budget: the state is not fit to checkpoint. */
  private failure: MomaError | null = null;
  /** The finite check of the state resume() loaded (awaited before the first step and checkpoint). */
  private resumeCheck: Promise<void> | null = null;

  constructor(readonly options: TrainerOptions) {
    super();
    if (!(options.model instanceof Transformer)) throw new MomaError('ERR_ARG', 'Trainer: model must be a Transformer');
    if (!Number.isInteger(options.steps) || options.steps < 0) throw new MomaError('ERR_ARG', `Trainer: steps must be an integer >= 0, got ${String(options.steps)}`);
    if (!(options.schedule?.peak >= 0) || !Number.isInteger(options.schedule.warmup) || options.schedule.warmup < 0) {
      throw new MomaError('ERR_ARG', 'Trainer: schedule needs peak >= 0 and an integer warmup >= 0');
    }
    const logEvery = options.logEvery ?? 10;
    if (!Number.isInteger(logEvery) || logEvery < 1) throw new MomaError('ERR_ARG', `Trainer: logEvery must be an integer >= 1, got ${String(options.logEvery)}`);
    this.logEvery = logEvery;
    const budget = options.skipNonfinite ?? 0;
    if (!Number.isInteger(budget) || budget < 0) throw new MomaError('ERR_ARG', `Trainer: skipNonfinite must be an integer >= 0, got ${String(options.skipNonfinite)}`);
    this.skipBudget = budget;
    if (options.overlapGrads !== undefined && typeof options.overlapGrads !== 'boolean') throw new MomaError('ERR_ARG', `Trainer: overlapGrads must be true or false, got ${String(options.overlapGrads)}`);
    this.split = stepSplit(options.gradAccum, options.dataParallel);
    this.model = options.model;
    this.expertParallel = planExpertParallel(this.model, options.expertParallel, { sharding: checkSharding(options.sharding, 'Trainer: sharding'), dataParallel: options.dataParallel });
    const adamw = { lr: options.schedule.peak, ...options.optimizer };
    this.optimizer = this.expertParallel === null ? new AdamW(this.model, adamw) : new ExpertParallelAdamW(this.model, adamw, this.expertParallel);
    const sharding = checkSharding(options.sharding, 'Trainer: sharding');
    this.zero = sharding !== 'none' && this.split.ranks > 1 ? new ZeroOptimizer(this.optimizer, sharding, this.split) : null;
    this.generator = new Generator(options.seed ?? 0);
    this.vocab = vocabFromSpec(options.vocab);
    this.flops.perModality = this.modalities().map(() => 0);
    const peakPerDevice = options.peakFlops ?? (Number(process.env.MOMA_PEAK_FLOPS) || (this.model.config.device.startsWith('cuda') ? 989e12 : 256e9));
    this.peakFlops = peakPerDevice * this.split.ranks;
    this.interval = this.emptyInterval();
  }

  /** How the step's batches are split: over the ranks, or with expert parallel over the replicas of an EP group. */
  private dataSplit(): { rank: number; ranks: number } {
    const ep = this.expertParallel;
    return ep === null ? { rank: this.split.rank, ranks: this.split.ranks } : { rank: ep.replica, ranks: ep.replicas };
  }

  /** The parameters every rank holds (all but the expert weights of an expert-parallel run), in model order. */
  private replicatedParameters(): Tensor[] {
    const ep = this.expertParallel;
    if (ep === null) return this.model.parameters();
    return [...this.model.namedParameters()].filter(([name]) => !ep.experts.has(name)).map(([, p]) => p);
  }

  /**
   * The gradient sums of a data-parallel step without sharding: the replicated parameters over the
   * world, and with D > 1 expert-parallel replicas the expert weights over this rank's
   * data-parallel group (the ranks holding the same experts); overlapped unless overlapGrads is false.
   */
  private gradientReducer(): GradientReducer {
    const ep = this.expertParallel;
    const lists: ReducedParameters[] = [{ parameters: this.replicatedParameters() }];
    if (ep !== null && ep.dataGroup !== null && ep.dataGroup.size > 1) {
      lists.push({ parameters: [...this.model.namedParameters()].filter(([name]) => ep.experts.has(name)).map(([, p]) => p), group: ep.dataGroup });
    }
    return new GradientReducer(lists.filter((l) => l.parameters.length > 0), { overlap: this.options.overlapGrads ?? true });
  }

  /** Batches of `data` per step: its `next()` calls (with expert parallel each is one EP-group micro-batch). */
  get batchesPerStep(): number {
    return this.dataSplit().ranks * this.split.accumulation;
  }

  private modalities(): string[] {
    return this.model.config.modalities;
  }

  private moeLayers(): MoEFeedForward[] {
    return [...this.model.modules()].filter((m): m is MoEFeedForward => m instanceof MoEFeedForward);
  }

  private emptyInterval(): Interval {
    return {
      steps: 0, rows: 0, flops: 0, targets: 0, targetsPerModality: this.modalities().map(() => 0), sums: null,
      stepNs: 0n, dataWaitNs: 0n, lr: 0,
    };
  }

  /**
   * Asks the loop to stop (then it checkpoints, if configured): after the current step, or, in
   * data-parallel training, at the next logged step, where the ranks agree on it so that all of
   * them stop after the same step.
   */
  requestStop(): void {
    this.stopRequested = true;
  }

  /** Whether training stops now: asked with requestStop() and, with several ranks, agreed by all of them at a logged step. */
  get stopping(): boolean {
    return this.split.ranks === 1 ? this.stopRequested : this.stopAgreed;
  }

  /**
   * Loads a checkpoint written by this trainer: parameters, optimizer, step, tokens, FLOPs, data
   * position, generator. The state is loaded when it returns; the promise (also awaited by the
   * next step and checkpoint) rejects with ERR_NONFINITE naming the checkpoint and a parameter
   * when one of them or of the moments is not finite (one read).
   */
  resume(dir: string): Promise<void> {
    const { state } = this.expertParallel === null ? loadCheckpointInto(dir, this.model, this.zero ?? this.optimizer, { trainerResume: true })
      : loadExpertParallel(dir, this.model, this.optimizer, this.expertParallel, { trainerResume: true });
    if (state.flops !== undefined && (state.flops as { perModality: number[] }).perModality.length !== this.modalities().length) {
      throw new MomaError('ERR_FILE', `Trainer.resume: ${dir}/trainer.json: flops.perModality has ${(state.flops as { perModality: number[] }).perModality.length} entries, the model has ${this.modalities().length} modalities`);
    }
    this.failure = null;
    this.skippedSteps = typeof state.nonfiniteSkipped === 'number' ? state.nonfiniteSkipped : 0;
    this.step = state.step;
    this.tokens = Number(state.tokens ?? 0);
    const flops = state.flops as { total: number; perModality: number[] } | undefined;
    if (flops) this.flops = { total: flops.total, perModality: flops.perModality.slice() };
    if (state.generator) this.generator.setState(state.generator);
    this.dropNextBatch();
    if (state.dataPosition !== undefined) this.options.data.restore(state.dataPosition);
    this.interval.sums?.dispose();
    this.interval = this.emptyInterval();
    this.lastLogged = this.step;
    const check = this.findNonfinite(true).then((bad) => {
      if (bad !== null) {
        throw new MomaError('ERR_NONFINITE', `Trainer.resume: checkpoint ${dir} holds non-finite values (NaN or ±inf) in ${bad}; resume from an earlier checkpoint`);
      }
    });
    check.catch(() => undefined); // reported by whoever awaits it: the caller, the next step or checkpoint
    this.resumeCheck = check;
    return check;
  }

  /**
   * The first parameter (or, with `moments`, AdamW moment of an unsharded optimizer) holding a
   * non-finite value, named, or null: one finite flag per tensor on the device, one read.
   */
  private async findNonfinite(moments: boolean): Promise<string | null> {
    // ZeRO-3: the blocks' parameters are shards, checked on every rank together
    const probes = this.zero?.fsdp?.finiteProbes() ?? null;
    const named: [string, Tensor][] = probes?.named ?? [...this.model.namedParameters()].map(([name, t]) => [`parameter '${name}'`, t]);
    if (moments && this.zero === null) {
      for (const [name, s] of this.optimizer.stateDict()) named.push([`the first moment of '${name}'`, s.m], [`the second moment of '${name}'`, s.v]);
    }
    if (named.length === 0) return null;
    const flags = tidy(() => concat(named.map(([, t]) => finiteIndicator([t]).reshape([1])), 0));
    let values: ArrayLike<number>;
    try {
      values = await flags.toArray();
    } finally {
      flags.dispose();
      probes?.dispose();
    }
    const index = Array.from(values).findIndex((v) => v !== 1);
    return index < 0 ? null : named[index]![0];
  }

  /**
   * Throws unless the trainer's state may be checkpointed: no failed step, the steps since the last
   * record within the budget (a read of their sums, when there are any), every parameter finite.
   */
  private async assertCheckpointable(dir: string): Promise<void> {
    if (this.resumeCheck !== null) await this.resumeCheck;
    const refuse = (why: string): MomaError => new MomaError('ERR_NONFINITE', `Trainer.checkpoint: not writing ${dir}: ${why}`);
    if (this.failure !== null) throw refuse(this.failure.message);
    const sums = this.interval.sums;
    if (sums !== null && this.interval.steps > 0) {
      const M = this.modalities().length;
      const values = await sums.toArray();
      const pending = at(values, SLOT.nonfinite(M), 'Trainer.checkpoint');
      if (this.skippedSteps + pending > this.skipBudget) {
        throw refuse(`${pending} of the ${this.interval.steps} steps since step ${this.lastLogged} had a non-finite loss or gradient norm (first at step ${at(values, SLOT.firstNonfinite(M), 'Trainer.checkpoint')}), more than skipNonfinite ${this.skipBudget} allows`);
      }
    }
    const bad = await this.findNonfinite(false);
    if (bad !== null) throw refuse(`${bad} holds non-finite values (NaN or ±inf) after step ${this.step}`);
  }

  /**
   * Saves a checkpoint; the data position is the next step's batch (one built ahead is built again
   * on resume). Data parallel: rank 0 writes it; with sharding, every rank writes its optimizer
   * shard into it (every rank must call this).
   */
  async checkpoint(dir = this.options.checkpointDir): Promise<void> {
    if (!dir) throw new MomaError('ERR_ARG', 'Trainer.checkpoint: no checkpoint directory');
    // every rank checks (the flags are the same on all of them) so that all refuse together
    await this.assertCheckpointable(dir);
    // expert parallel: the EP groups gather their experts for rank 0, which writes the whole model as one process does
    const whole = this.expertParallel === null ? null : await consolidate(this.model, this.optimizer, this.expertParallel);
    if (this.split.rank !== 0 && this.zero === null) return;
    await saveCheckpoint(dir, {
      config: this.model.config as unknown as TransformerConfig,
      model: whole?.model ?? this.model,
      ...(this.zero === null ? { optimizer: whole?.optimizer ?? this.optimizer } : { zero: this.zero }),
      state: {
        step: this.step, optimizerStep: this.optimizer.step, tokens: this.tokens, flops: this.flops, nonfiniteSkipped: this.skippedSteps,
        generator: this.generator.getState(), dataPosition: this.next === null ? this.options.data.state() : this.next.position,
      },
      files: { ...this.options.checkpointFiles, 'vocab.json': this.options.vocab },
    }).finally(() => {
      whole?.optimizer.dispose();
      whole?.model.dispose();
    });
    if (this.split.rank === 0) this.emit('checkpoint', { step: this.step, dir });
  }

  private rowsOptions(): BatchRowsOptions {
    const { vocab } = this;
    return { padId: vocab.padId, bosId: vocab.bosId, modalityOf: (id) => vocab.modalityOf(id), modalities: this.modalities().length, vocabSize: this.model.config.vocabSize };
  }

  /**
   * Builds this rank's micro-batches of a step (uploads queued now) from all ranks × accumulation
   * sequence sets, and adds up the step's rows, targets and FLOPs over all of them (host only).
   */
  private toStep(sets: number[][][]): StepBatches | { error: unknown } {
    const { rank } = this.dataSplit();
    const { accumulation } = this.split;
    const ep = this.expertParallel;
    const M = this.modalities().length;
    const totals: StepTotals = { rows: 0, targets: 0, targetsPerModality: new Array<number>(M).fill(0), flops: 0, flopsPerModality: new Array<number>(M).fill(0) };
    const batches: Batch[] = [];
    const lossScales: number[] = [];
    const options = this.rowsOptions();
    try {
      sets.forEach((sequences, j) => {
        const mine = j >= rank * accumulation && j < (rank + 1) * accumulation;
        if (ep !== null && sequences.length % ep.size !== 0) {
          throw new MomaError('ERR_ARG', `Trainer: expert parallel over ${ep.size} ranks needs batches of a multiple of ${ep.size} sequences (each rank trains its share), got ${sequences.length}`);
        }
        const share = ep === null ? sequences : sequences.slice(ep.rank * (sequences.length / ep.size), (ep.rank + 1) * (sequences.length / ep.size));
        const rows = mine && ep === null ? makeBatch(sequences, { ...options, device: this.model.config.device }) : batchRows(sequences, options);
        if (mine) {
          const batch = ep === null ? rows as Batch : makeBatch(share, { ...options, device: this.model.config.device });
          batches.push(batch);
          lossScales.push(ep === null ? 1 : rows.counts.total > 0 ? batch.counts.total / rows.counts.total : 0);
        }
        const f = trainingFlops(this.model.config, 'host' in rows ? rows.host : rows);
        totals.rows += rows.counts.rows;
        totals.targets += rows.counts.total;
        rows.counts.perModality.forEach((n, m) => (totals.targetsPerModality[m]! += n));
        totals.flops += f.total;
        f.perModality.forEach((x, m) => (totals.flopsPerModality[m]! += x));
      });
      return { batches, lossScales, totals };
    } catch (error) {
      batches.forEach(disposeBatch);
      return { error };
    }
  }

  /**
   * Takes the next step's sequence sets from the source (ranks × accumulation of them) and builds
   * this rank's batches now; an async source's are built when they arrive.
   */
  private fetchStep(): NextStep {
    const position = this.options.data.state();
    const count = this.dataSplit().ranks * this.split.accumulation;
    const sets: number[][][] = [];
    const pull = (): Promise<NextStep['result'] extends Promise<infer R> ? R : never> | ReturnType<Trainer['toStep']> => {
      while (sets.length < count) {
        const got = this.options.data.next();
        if (!Array.isArray(got)) {
          return Promise.resolve(got).then((s) => {
            sets.push(s);
            return pull();
          }, (error: unknown) => ({ error }));
        }
        sets.push(got);
      }
      return this.toStep(sets);
    };
    let result: NextStep['result'];
    try {
      result = Promise.resolve(pull());
    } catch (error) {
      result = Promise.resolve({ error });
    }
    return { position, result };
  }

  private dropNextBatch(): void {
    if (this.next === null) return;
    void this.next.result.then((r) => {
      if ('batches' in r) r.batches.forEach(disposeBatch);
    });
    this.next = null;
  }

  /** The step's micro-batches: those built ahead, or built now; the time spent waiting is the data wait. */
  private async takeStep(): Promise<StepBatches> {
    const begun = process.hrtime.bigint();
    const next = this.next ?? this.fetchStep();
    this.next = null;
    const got = await next.result;
    this.interval.dataWaitNs += process.hrtime.bigint() - begun;
    if ('error' in got) throw got.error;
    return got;
  }

  /** Whether the record at `step` carries routing statistics: the first record of every `statsEvery` steps. */
  private routingDue(step: number): boolean {
    const every = this.options.statsEvery ?? 0;
    return every > 0 && Math.floor(step / every) > Math.floor(this.lastLogged / every);
  }

  /**
   * One training step. It queues the step's device work, builds the next batch, and returns
   * without waiting for the device, with null, unless the step is logged: every `logEvery`
   * steps, the last step, or when `log` is true (a caller about to evaluate or checkpoint). A
   * logged step reads the interval's sums in one read and returns its record.
   */
  async trainStep(options: { log?: boolean } = {}): Promise<StepMetrics | null> {
    if (this.resumeCheck !== null) await this.resumeCheck;
    if (this.failure !== null) throw new MomaError('ERR_NONFINITE', `Trainer.trainStep: training stopped: ${this.failure.message}`);
    const started = process.hrtime.bigint();
    const step = this.step + 1;
    const log = options.log === true || step % this.logEvery === 0 || step >= this.options.steps;
    const routing = log && this.routingDue(step);
    for (const ffn of this.moeLayers()) ffn.collectStats = routing;
    const { batches, lossScales, totals } = await this.takeStep();
    try {
      const { schedule } = this.options;
      const lr = learningRate(this.step, { ...schedule, total: schedule.total ?? this.options.steps });
      const { ranks, accumulation } = this.split;
      // micro-batches of the step: ranks × accumulation, or with expert parallel one per replica of an EP group and accumulation
      const { rank, ranks: batchRanks } = this.dataSplit();
      const perStep = batchRanks * accumulation;
      // data parallel without sharding: the step's gradient all-reduce, started during the last backward (per step: the optimizer replaces the parameter tensors)
      const reducer = this.zero === null && ranks > 1 ? this.gradientReducer() : null;
      // per micro-batch: [loss · targets, loss_m · targets_m …] and the loss itself (for its finite flag)
      const weighted: Tensor[] = [];
      const losses: Tensor[] = [];
      batches.forEach((batch, a) => {
        const generator = perStep === 1 ? this.generator : microBatchGenerator(this.generator.seed, this.step, rank * accumulation + a, perStep);
        const [loss, parts] = tidy(() => {
          const out = this.model.loss(batch, { training: true, generator });
          const factor = lossScales[a]! / perStep;
          const last = reducer !== null && a === batches.length - 1;
          backward(factor === 1 ? out.loss : scale(out.loss, factor), undefined, last ? { onGradReady: reducer.hook } : undefined);
          const counts = batch.counts;
          return [out.loss, concat([out.loss.scale(counts.total), ...out.perModality.map((t, m) => t.scale(counts.perModality[m] ?? 0))].map((t) => t.reshape([1])), 0)];
        });
        losses.push(untrack(loss));
        weighted.push(untrack(parts));
      });
      let lossFinite: Tensor | null = null;
      try {
        const local = untrack(finiteIndicator(losses));
        lossFinite = ranks > 1 ? agreeFinite(local) : local;
        if (lossFinite !== local) local.dispose();
        const update = { lossFinite, skipNonfinite: this.skipBudget > 0 };
        let result: StepResult;
        if (this.zero !== null) result = this.zero.update(lr, update);
        else {
          reducer?.finish();
          result = this.optimizer.update(lr, update);
        }
        this.optimizer.zeroGrad();
        this.accumulateStep(step, weighted, lossFinite, result, totals);
      } finally {
        for (const t of [...weighted, ...losses]) t.dispose();
        lossFinite?.dispose();
      }
      this.interval.lr = lr;
    } finally {
      batches.forEach(disposeBatch);
    }
    // the next step's batches: built and their uploads queued now, while the device runs this step
    if (step < this.options.steps && !this.stopping) this.next = this.fetchStep();

    this.step++;
    this.tokens += totals.rows;
    this.flops.total += totals.flops;
    totals.flopsPerModality.forEach((x, m) => (this.flops.perModality[m] = (this.flops.perModality[m] ?? 0) + x));
    const iv = this.interval;
    iv.steps++;
    iv.rows += totals.rows;
    iv.flops += totals.flops;
    iv.targets += totals.targets;
    totals.targetsPerModality.forEach((n, m) => (iv.targetsPerModality[m]! += n));
    if (!log) {
      this.interval.stepNs += process.hrtime.bigint() - started;
      return null;
    }
    return this.record(started, routing);
  }

  /** The record of the steps since the last one (null when there are none): call before stopping between logged steps. */
  async flushMetrics(): Promise<StepMetrics | null> {
    if (this.interval.steps === 0) return null;
    return this.record(process.hrtime.bigint(), false);
  }

  /**
   * Adds step `step` to the interval's device sums (SLOT): its micro-batches' weighted losses and
   * its gradient norm where the step was finite (where(), as NaN · 0 is NaN), else the non-finite
   * counts, the step number if it is the interval's first such step, and the step's targets.
   */
  private accumulateStep(step: number, weighted: Tensor[], lossFinite: Tensor, result: StepResult, totals: StepTotals): void {
    const previous = this.interval.sums;
    const M = this.modalities().length;
    const device = this.model.config.device;
    this.interval.sums = untrack(tidy(() => {
      const finite = result.finite;
      const bad = finite.neg().add(1);
      const losses = weighted.length === 1 ? weighted[0]! : concat(weighted.map((w) => w.reshape([1, 1 + M])), 0).sum(0);
      const kept = where(finite.astype('uint8'), concat([losses, result.gradNorm.reshape([1])], 0), zeros([2 + M], { device }));
      const noneBefore = previous === null ? full([], 1, { device }) : previous.slice(0, SLOT.nonfinite(M), SLOT.nonfinite(M) + 1).reshape([]).neg().add(1).maximum(0);
      const counts = concat([
        bad, lossFinite.neg().add(1), finiteIndicator([result.gradNorm]).neg().add(1), bad.mul(noneBefore).scale(step),
        bad.scale(totals.targets), ...totals.targetsPerModality.map((n) => bad.scale(n)),
      ].map((t) => t.reshape([1])), 0);
      const sums = concat([kept, counts], 0);
      return previous === null ? sums : previous.add(sums);
    }));
    previous?.dispose();
  }

  /** Reads the interval's sums (and routing statistics when asked) in one read and turns them into its record. */
  private async record(started: bigint, routing: boolean): Promise<StepMetrics> {
    const iv = this.interval;
    const sums = iv.sums as Tensor;
    const layers = routing ? this.moeLayers().filter((ffn) => ffn.lastStats !== null) : [];
    const local = layers.length === 0 ? sums : tidy(() => concat([sums, ...layers.map((ffn) => ffn.lastStats!.expertStats.reshape([ffn.lastStats!.expertStats.numel]))], 0));
    // data parallel: the ranks' loss sums add up; the gradient norm (the same on every rank) and
    // the routing statistics become their means over the ranks
    const flat = this.split.ranks === 1 ? local
      : tidy(() => sumOverRanks(concat([local, full([1], this.stopRequested ? 1 : 0, { device: this.model.config.device })], 0)));
    let values: ArrayLike<number>;
    try {
      values = await flat.toArray();
    } finally {
      if (local !== sums) local.dispose();
      if (flat !== local) flat.dispose();
    }
    if (this.split.ranks > 1) {
      const R = this.split.ranks;
      if (at(values, values.length - 1, 'Trainer stop flag') > 0) this.stopAgreed = true;
      values = Array.from(values, (v, i) => (i >= 1 + this.modalities().length ? v / R : v));
    }
    iv.stepNs += process.hrtime.bigint() - started;
    const names = this.modalities();
    const M = names.length;
    const value = (index: number): number => at(values, index, 'Trainer metrics');
    const nonfinite = value(SLOT.nonfinite(M));
    if (nonfinite > 0) this.nonfiniteFound(values, iv);
    // the means leave out the non-finite steps (their sums were masked to 0)
    const targets = iv.targets - value(SLOT.skippedTargets(M));
    const seconds = Number(iv.stepNs - iv.dataWaitNs) / 1e9;
    const metrics: StepMetrics = {
      step: this.step, interval: iv.steps, tokens: this.tokens,
      flops: { total: this.flops.total, perModality: Object.fromEntries(names.map((n, m) => [n, this.flops.perModality[m] ?? 0])) },
      loss: targets > 0 ? value(0) / targets : NaN,
      lossPerModality: Object.fromEntries(names.map((n, m) => {
        const modalityTargets = at(iv.targetsPerModality, m, 'Trainer metrics') - value(SLOT.skippedTargets(M) + 1 + m);
        return [n, modalityTargets > 0 ? value(1 + m) / modalityTargets : NaN];
      })),
      lr: iv.lr, gradNorm: iv.steps > nonfinite ? value(SLOT.gradNorm(M)) / (iv.steps - nonfinite) : NaN,
      tokensPerSecond: iv.rows / seconds, mfu: iv.flops / seconds / this.peakFlops, seconds,
      dataWaitMs: Number(iv.dataWaitNs) / 1e6,
      hostSyncs: runtimeStats(this.model.config.device).hostSyncs,
    };
    if (nonfinite > 0) metrics.skipped = nonfinite;
    if (layers.length > 0) metrics.routing = this.routingStats(layers, values, SLOT.length(M));
    sums.dispose();
    this.interval = this.emptyInterval();
    this.lastLogged = this.step;
    return metrics;
  }

  /**
   * A logged step found `values`' non-finite steps: within the budget they were skipped (a 'skip'
   * event); past it training stops here (ERR_NONFINITE, the interval dropped, no checkpoint).
   */
  private nonfiniteFound(values: ArrayLike<number>, iv: Interval): void {
    const M = this.modalities().length;
    const value = (index: number): number => at(values, index, 'Trainer metrics');
    const skip: NonfiniteSkip = {
      step: this.step, tokens: this.tokens, skipped: value(SLOT.nonfinite(M)), lossSteps: value(SLOT.lossNonfinite(M)),
      gradNormSteps: value(SLOT.normNonfinite(M)), firstStep: value(SLOT.firstNonfinite(M)), total: this.skippedSteps + value(SLOT.nonfinite(M)), budget: this.skipBudget,
    };
    if (skip.total <= this.skipBudget) {
      this.skippedSteps = skip.total;
      this.emit('skip', skip);
      return;
    }
    const which = skip.lossSteps > 0 ? (skip.gradNormSteps > 0 ? 'the loss and the gradient norm were' : 'the loss was') : 'the gradient norm was';
    const span = iv.steps === 1 ? `step ${this.step}` : `steps ${this.step - iv.steps + 1}-${this.step}`;
    const allowed = this.skipBudget === 0 ? 'skipping none is allowed' : `${this.skippedSteps} skipped before, skipNonfinite allows ${this.skipBudget}`;
    this.failure = new MomaError('ERR_NONFINITE',
      `Trainer: training diverged at step ${skip.firstStep}: ${which} not finite (NaN or ±inf) `
      + `(non-finite loss in ${skip.lossSteps}, non-finite gradient norm in ${skip.gradNormSteps} of ${span}; ${allowed}); `
      + `stopped at step ${this.step} without a checkpoint of this state. Resume from the last checkpoint (with a lower learning rate), or allow skipping such steps (skipNonfinite, moma train --skip-nonfinite N)`);
    iv.sums?.dispose();
    this.interval = this.emptyInterval();
    this.lastLogged = this.step;
    throw this.failure;
  }

  /** Per-expert statistics of `layers` from `values`, where they follow the sums from `offset` on ([E, 2] per layer). */
  private routingStats(layers: MoEFeedForward[], values: ArrayLike<number>, offset: number): ExpertStat[] {
    const out: ExpertStat[] = [];
    const all = this.moeLayers();
    let index = offset;
    for (const ffn of layers) {
      const layer = all.indexOf(ffn);
      ffn.ffn.layout.experts.forEach((count, group) => {
        for (let expert = 0; expert < count; expert++, index += 2) {
          out.push({ layer, group, expert, rows: at(values, index, 'Trainer.routingStats'), meanGate: at(values, index + 1, 'Trainer.routingStats') });
        }
      });
    }
    return out;
  }

  /** Runs until `steps` (counting a resumed run's earlier steps) or requestStop(). */
  async run(): Promise<{ steps: number; tokens: number; flops: number }> {
    const { checkpointEvery, checkpointDir } = this.options;
    while (this.step < this.options.steps && !this.stopping) {
      const checkpointDue = Boolean(checkpointDir && checkpointEvery && (this.step + 1) % checkpointEvery === 0);
      const metrics = await this.trainStep({ log: checkpointDue });
      if (metrics !== null) this.emit('step', metrics);
      if (checkpointDue) await this.checkpoint();
    }
    const rest = await this.flushMetrics();
    if (rest !== null) this.emit('step', rest);
    if (checkpointDir) await this.checkpoint();
    this.emit('end', { step: this.step });
    return { steps: this.step, tokens: this.tokens, flops: this.flops.total };
  }

  /** Calls `listener` with the payload of every `event` (see TrainerEvents). */
  override on<E extends keyof TrainerEvents>(event: E, listener: TrainerListener<E>): this {
    return super.on(event, listener);
  }

  /** on() under its other name. */
  override addListener<E extends keyof TrainerEvents>(event: E, listener: TrainerListener<E>): this {
    return super.addListener(event, listener);
  }

  /** on(), with `listener` called before the listeners added so far. */
  override prependListener<E extends keyof TrainerEvents>(event: E, listener: TrainerListener<E>): this {
    return super.prependListener(event, listener);
  }

  /** Calls `listener` with the payload of the next `event` only. */
  override once<E extends keyof TrainerEvents>(event: E, listener: TrainerListener<E>): this {
    return super.once(event, listener);
  }

  /** once(), with `listener` called before the listeners added so far. */
  override prependOnceListener<E extends keyof TrainerEvents>(event: E, listener: TrainerListener<E>): this {
    return super.prependOnceListener(event, listener);
  }

  /** Removes a listener added with on(), once() or their aliases. */
  override off<E extends keyof TrainerEvents>(event: E, listener: TrainerListener<E>): this {
    return super.off(event, listener);
  }

  /** off() under its other name. */
  override removeListener<E extends keyof TrainerEvents>(event: E, listener: TrainerListener<E>): this {
    return super.removeListener(event, listener);
  }

  /** Calls the listeners of `event` with `payload` (the Trainer emits its own events; typed for subclasses and tests). */
  override emit<E extends keyof TrainerEvents>(event: E, payload: TrainerEvents[E]): boolean {
    return super.emit(event, payload);
  }

  dispose(): void {
    this.dropNextBatch();
    this.interval.sums?.dispose();
    this.interval = this.emptyInterval();
    this.zero?.dispose();
    this.optimizer.dispose();
  }

  /** `using` support: the same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
