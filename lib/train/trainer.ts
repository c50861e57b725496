/**
 * Trainer: the training loop over a data source of token batches. Each step builds the batch
 * (targets, positions, document segments, modality per row from the vocabulary), runs forward and
 * backward inside one `tidy`, clips and applies AdamW with the scheduled learning rate, and emits
 * a 'step' event with the metrics the paper plots: tokens, cumulative training FLOPs overall and
 * per modality (SPEC §6), loss overall and per modality, learning rate, gradient norm, tokens/s,
 * model FLOPs utilisation against the device peak and, every `statsEvery` steps, routing
 * statistics. Checkpoints every `checkpointEvery` steps and at the end (lib/train/checkpoint.ts);
 * `resume` continues exactly where a checkpoint left off (data position and generator included).
 */
import { EventEmitter } from 'events';
import { backward } from '../autograd/tape';
import { tidy } from '../autograd/scope';
import { MomaError } from '../errors';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { MoEFeedForward } from '../model/layers';
import { Batch, disposeBatch, makeBatch, Transformer, TransformerConfig } from '../model/transformer';
import { AdamW, AdamWOptions, learningRate } from '../optim/adamw';
import { loadCheckpointInto, saveCheckpoint } from './checkpoint';
import { trainingFlops } from './flops';
import { VocabSpec, vocabFromSpec } from './evaluate';

/** Where batches come from: B sequences of S token ids per call, with a resumable position. */
export interface TokenBatchSource {
  next(): Promise<number[][]> | number[][];
  state(): unknown;
  restore(state: unknown): void;
}

/** How token ids map to modalities (the data layer's vocabulary layout provides one). */
export interface VocabInfo {
  padId: number;
  bosId?: number;
  modalityOf(id: number): number;
}

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
  /** FLOP/s the device can do (MFU denominator); default from MOMA_PEAK_FLOPS, else 256e9 on CPU, 989e12 on CUDA. */
  peakFlops?: number;
}

export interface ExpertStat {
  layer: number;
  group: number;
  expert: number;
  rows: number;
  meanGate: number;
}

export interface StepMetrics {
  step: number;
  tokens: number;
  flops: { total: number; perModality: Record<string, number> };
  loss: number;
  lossPerModality: Record<string, number>;
  lr: number;
  gradNorm: number;
  tokensPerSecond: number;
  mfu: number;
  seconds: number;
  routing?: ExpertStat[];
}

export class Trainer extends EventEmitter {
  readonly model: Transformer;
  readonly optimizer: AdamW;
  step = 0;
  tokens = 0;
  flops = { total: 0, perModality: [] as number[] };
  private readonly generator: Generator;
  private readonly vocab: VocabInfo;
  private stopRequested = false;

  constructor(readonly options: TrainerOptions) {
    super();
    if (!(options.model instanceof Transformer)) throw new MomaError('ERR_ARG', 'Trainer: model must be a Transformer');
    if (!Number.isInteger(options.steps) || options.steps < 0) throw new MomaError('ERR_ARG', `Trainer: steps must be an integer >= 0, got ${String(options.steps)}`);
    if (!(options.schedule?.peak >= 0) || !Number.isInteger(options.schedule.warmup) || options.schedule.warmup < 0) {
      throw new MomaError('ERR_ARG', 'Trainer: schedule needs peak >= 0 and an integer warmup >= 0');
    }
    this.model = options.model;
    this.optimizer = new AdamW(this.model, { lr: options.schedule.peak, ...options.optimizer });
    this.generator = new Generator(options.seed ?? 0);
    this.vocab = vocabFromSpec(options.vocab);
    this.flops.perModality = this.modalities().map(() => 0);
    for (const ffn of this.moeLayers()) ffn.collectStats = true;
  }

  private modalities(): string[] {
    return this.model.config.modalities;
  }

  private moeLayers(): MoEFeedForward[] {
    return [...this.model.modules()].filter((m): m is MoEFeedForward => m instanceof MoEFeedForward);
  }

  /** Asks the loop to stop after the current step (then it checkpoints, if configured). */
  requestStop(): void {
    this.stopRequested = true;
  }

  /** Loads a checkpoint written by this trainer: parameters, optimizer, step, tokens, FLOPs, data position, generator. */
  resume(dir: string): void {
    const { state } = loadCheckpointInto(dir, this.model, this.optimizer);
    this.step = state.step;
    this.tokens = Number(state.tokens ?? 0);
    const flops = state.flops as { total: number; perModality: number[] } | undefined;
    if (flops) this.flops = { total: flops.total, perModality: flops.perModality.slice() };
    if (state.generator) this.generator.setState(state.generator);
    if (state.dataPosition !== undefined) this.options.data.restore(state.dataPosition);
  }

  async checkpoint(dir = this.options.checkpointDir): Promise<void> {
    if (!dir) throw new MomaError('ERR_ARG', 'Trainer.checkpoint: no checkpoint directory');
    await saveCheckpoint(dir, {
      config: this.model.config as unknown as TransformerConfig,
      model: this.model,
      optimizer: this.optimizer,
      state: {
        step: this.step, optimizerStep: this.optimizer.step, tokens: this.tokens, flops: this.flops,
        generator: this.generator.getState(), dataPosition: this.options.data.state(),
      },
      files: { ...this.options.checkpointFiles, 'vocab.json': this.options.vocab },
    });
    this.emit('checkpoint', { step: this.step, dir });
  }

  private toBatch(sequences: number[][]): Batch {
    const { vocab } = this;
    return makeBatch(sequences, {
      padId: vocab.padId, bosId: vocab.bosId, modalityOf: (id) => vocab.modalityOf(id), modalities: this.modalities().length,
      device: this.model.config.device, vocabSize: this.model.config.vocabSize,
    });
  }

  /** One training step; returns its metrics. */
  async trainStep(): Promise<StepMetrics> {
    const started = process.hrtime.bigint();
    const sequences = await this.options.data.next();
    const batch = this.toBatch(sequences);
    const { schedule } = this.options;
    const lr = learningRate(this.step, { ...schedule, total: schedule.total ?? this.options.steps });
    const [loss, ...perModality] = tidy(() => {
      const out = this.model.loss(batch, { training: true, generator: this.generator });
      backward(out.loss);
      return [out.loss, ...out.perModality];
    });
    const { gradNorm } = await this.optimizer.update(lr);
    this.optimizer.zeroGrad();
    const values = await Promise.all([loss, ...perModality].map((t) => (t as Tensor).item()));
    for (const t of [loss, ...perModality]) (t as Tensor).dispose();
    disposeBatch(batch);

    this.step++;
    const rows = batch.counts.rows;
    this.tokens += rows;
    const f = trainingFlops(this.model.config, batch.host);
    this.flops.total += f.total;
    f.perModality.forEach((x, m) => (this.flops.perModality[m] = (this.flops.perModality[m] ?? 0) + x));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const peak = this.options.peakFlops ?? (Number(process.env.MOMA_PEAK_FLOPS) || (this.model.config.device.startsWith('cuda') ? 989e12 : 256e9));
    const names = this.modalities();
    const metrics: StepMetrics = {
      step: this.step, tokens: this.tokens,
      flops: { total: this.flops.total, perModality: Object.fromEntries(names.map((n, m) => [n, this.flops.perModality[m] ?? 0])) },
      loss: values[0] as number,
      lossPerModality: Object.fromEntries(names.map((n, m) => [n, batch.counts.perModality[m] ? (values[m + 1] as number) : NaN])),
      lr, gradNorm, tokensPerSecond: rows / seconds, mfu: f.total / seconds / peak, seconds,
    };
    const every = this.options.statsEvery ?? 0;
    if (every > 0 && this.step % every === 0) metrics.routing = await this.routingStats();
    return metrics;
  }

  private async routingStats(): Promise<ExpertStat[]> {
    const out: ExpertStat[] = [];
    for (const [layer, ffn] of this.moeLayers().entries()) {
      const s = ffn.lastStats;
      if (s === null) continue;
      const e = await s.expertStats.toArray();
      let index = 0;
      ffn.ffn.layout.experts.forEach((count, group) => {
        for (let expert = 0; expert < count; expert++, index++) {
          out.push({ layer, group, expert, rows: e[2 * index] as number, meanGate: e[2 * index + 1] as number });
        }
      });
    }
    return out;
  }

  /** Runs until `steps` (counting a resumed run's earlier steps) or requestStop(). */
  async run(): Promise<{ steps: number; tokens: number; flops: number }> {
    const { checkpointEvery, checkpointDir } = this.options;
    while (this.step < this.options.steps && !this.stopRequested) {
      const metrics = await this.trainStep();
      this.emit('step', metrics);
      if (checkpointDir && checkpointEvery && this.step % checkpointEvery === 0) await this.checkpoint();
    }
    if (checkpointDir) await this.checkpoint();
    this.emit('end', { step: this.step });
    return { steps: this.step, tokens: this.tokens, flops: this.flops.total };
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}
