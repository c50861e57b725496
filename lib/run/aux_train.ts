/**
 * The second training stage (`moma train-aux`, docs/INFERENCE.md): the main model is frozen (evaluated under
 * noGrad, its parameters never see a gradient or an optimizer) and the auxiliary routers learn,
 * with AdamW, the binary cross-entropy against the batch top-k selections of training-mode
 * forwards on the run's training data. Learning rate: linear warm-up to `lr`, then linear decay to
 * `lrEnd` (the paper: 1e-4 → 1e-6). The routers are saved into the checkpoint as
 * aux_routers.safetensors, with aux_routers.json (settings, held-out metrics before and after).
 */
import * as path from 'path';
import { backward } from '../autograd/tape';
import { tidy } from '../autograd/scope';
import type { DeviceInput } from '../device';
import { MomaError } from '../errors';
import { AuxRouters, AUX_ROUTERS_FILE } from '../model/aux_router';
import { disposeBatch, makeBatch } from '../model/transformer';
import { AdamW, learningRate } from '../optim/adamw';
import { writeJsonAtomic } from '../io/files';
import { saveSafetensors } from '../io/safetensors';
import { Tensor } from '../tensor';
import { vocabFromSpec } from '../data/vocab';
import { auxLoss, collectAuxExamples } from '../train/aux_targets';
import { AuxRouterMetrics, evaluateAuxRouters } from '../train/causal_eval';
import { loadModel, newAuxRouters, openCheckpoint, openStageData, stageBatches, stageHeldOut } from './checkpoint_source';

export const AUX_SUMMARY_FILE = 'aux_routers.json';

export interface AuxTrainOptions {
  /** Checkpoint folder, run folder, or undefined for the newest run under ./runs. */
  checkpoint?: string;
  steps?: number;
  lr?: number;
  lrEnd?: number;
  warmup?: number;
  /** Data order and router init (default: the run's seed + 1). */
  seed?: number;
  /** 'builtin' or a shard-set folder (needed for a checkpoint outside a run). */
  data?: string;
  device?: DeviceInput;
  /** Held-out metrics every this many steps (0: only before and after). */
  evalEvery?: number;
  /** Working folder for relative paths (default process.cwd()). */
  cwd?: string;
}

export interface AuxStepRecord {
  step: number;
  lr: number;
  /** Σ over routers of the mean BCE of this batch. */
  loss: number;
  seconds: number;
}

export interface AuxTrainHooks {
  onStart?(info: { checkpoint: string; routers: number; parameters: number; steps: number }): void;
  onStep?(record: AuxStepRecord): void;
  onEval?(step: number, metrics: AuxRouterMetrics[]): void;
  /** Aborting stops after the current step; the routers trained so far are saved. */
  signal?: AbortSignal;
}

export interface AuxTrainSummary {
  checkpoint: string;
  file: string;
  steps: number;
  stopped: boolean;
  seconds: number;
  settings: Required<Omit<AuxTrainOptions, 'checkpoint' | 'data' | 'device' | 'cwd'>>;
  /** Mean training loss of the first and the last 5% of steps. */
  trainLoss: { first: number; last: number };
  /** Held-out metrics before training and after. */
  before: AuxRouterMetrics[];
  after: AuxRouterMetrics[];
}

export const AUX_DEFAULTS = { steps: 1000, lr: 1e-4, lrEnd: 1e-6, warmup: 100, evalEvery: 0 };

function checkOptions(o: AuxTrainOptions, seed: number): AuxTrainSummary['settings'] {
  const int = (v: unknown, name: string, min: number): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new MomaError('ERR_ARG', `train-aux: ${name} must be an integer >= ${min}, got ${String(v)}`);
    return v;
  };
  const positive = (v: unknown, name: string): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new MomaError('ERR_ARG', `train-aux: ${name} must be a number > 0, got ${String(v)}`);
    return v;
  };
  const steps = int(o.steps ?? AUX_DEFAULTS.steps, 'steps', 1);
  const lr = positive(o.lr ?? AUX_DEFAULTS.lr, 'lr');
  const lrEnd = positive(o.lrEnd ?? AUX_DEFAULTS.lrEnd, 'lrEnd');
  if (lrEnd > lr) throw new MomaError('ERR_ARG', `train-aux: lrEnd (${lrEnd}) must not exceed lr (${lr})`);
  const warmup = int(o.warmup ?? Math.min(AUX_DEFAULTS.warmup, Math.floor(steps / 10)), 'warmup', 0);
  if (warmup >= steps) throw new MomaError('ERR_ARG', `train-aux: warmup (${warmup}) must be below steps (${steps})`);
  return { steps, lr, lrEnd, warmup, seed: int(o.seed ?? seed, 'seed', 0), evalEvery: int(o.evalEvery ?? AUX_DEFAULTS.evalEvery, 'evalEvery', 0) };
}

/** Trains the auxiliary routers of a checkpoint and saves them into it. */
export async function trainAuxRouters(options: AuxTrainOptions = {}, hooks: AuxTrainHooks = {}): Promise<AuxTrainSummary> {
  const started = Date.now();
  const op = 'train-aux';
  const source = openCheckpoint(options.checkpoint, op, options.cwd);
  const settings = checkOptions(options, (source.run?.config.seed ?? 0) + 1);
  const data = await openStageData(source, op, options.data);
  const heldOut = stageHeldOut(data);
  const vocab = vocabFromSpec(source.layout);
  const batches = stageBatches(data, settings.seed);
  const model = loadModel(source, options.device);
  let aux: AuxRouters | null = null;
  let optimizer: AdamW | null = null;
  try {
    aux = newAuxRouters(model, settings.seed);
    if (aux.empty) throw new MomaError('ERR_ARG', `${op}: the model at ${source.dir} has no routed layers (dense without MoD): there is nothing to train`);
    for (const p of model.parameters()) p.requiresGrad = false;
    optimizer = new AdamW(aux, { lr: settings.lr, weightDecay: 0, clipNorm: 1 });
    hooks.onStart?.({ checkpoint: source.dir, routers: aux.namedParameters().size / 2, parameters: aux.numParameters(), steps: settings.steps });
    const evalNow = async (): Promise<AuxRouterMetrics[]> => (heldOut === null ? [] : evaluateAuxRouters(model, heldOut, { aux: aux!, vocab, batchSize: data.settings.batchSize }));
    const before = await evalNow();
    hooks.onEval?.(0, before);
    const losses: number[] = [];
    let step = 0;
    while (step < settings.steps && hooks.signal?.aborted !== true) {
      const begun = process.hrtime.bigint();
      const batch = makeBatch(batches.next(), {
        padId: vocab.padId, bosId: vocab.bosId, modalityOf: (id) => vocab.modalityOf(id), modalities: model.config.modalities.length,
        device: model.config.device, vocabSize: model.config.vocabSize,
      });
      const examples = await collectAuxExamples(model, aux, batch);
      disposeBatch(batch);
      const lr = learningRate(step, { peak: settings.lr, warmup: settings.warmup, total: settings.steps, floor: settings.lrEnd / settings.lr, shape: 'linear' });
      const loss = tidy(() => {
        const { loss: total } = auxLoss(examples);
        if (total !== null) backward(total);
        return total;
      });
      for (const e of examples) e.dispose();
      await optimizer.update(lr);
      optimizer.zeroGrad();
      const value = loss === null ? 0 : await (loss as Tensor).item();
      loss?.dispose();
      step++;
      losses.push(value);
      hooks.onStep?.({ step, lr, loss: value, seconds: Number(process.hrtime.bigint() - begun) / 1e9 });
      if (settings.evalEvery > 0 && step % settings.evalEvery === 0 && step < settings.steps) hooks.onEval?.(step, await evalNow());
    }
    const after = await evalNow();
    hooks.onEval?.(step, after);
    const file = path.join(source.dir, AUX_ROUTERS_FILE);
    await saveSafetensors(file, aux.namedParameters(), { format: 'pt', library: 'moma', steps: String(step) });
    const window = Math.max(1, Math.ceil(losses.length * 0.05));
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const summary: AuxTrainSummary = {
      checkpoint: source.dir, file, steps: step, stopped: step < settings.steps, seconds: (Date.now() - started) / 1000, settings,
      trainLoss: { first: mean(losses.slice(0, window)), last: mean(losses.slice(-window)) }, before, after,
    };
    writeJsonAtomic(path.join(source.dir, AUX_SUMMARY_FILE), summary);
    return summary;
  } finally {
    optimizer?.dispose();
    aux?.dispose();
    model.dispose();
  }
}
