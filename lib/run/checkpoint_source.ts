/**
 * Finding and opening a trained checkpoint for the stages after training (train-aux, eval,
 * generate). `--checkpoint` may name a checkpoint folder (config.json, model.safetensors, …), a
 * run folder (its newest checkpoint), or be left out (the newest run under ./runs). A checkpoint
 * inside a run finds the run's settings in ../../run.json, so the stages reuse the run's data.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { ImageTokenizer } from '../data/image_tokenizer';
import { cudaDeviceCount, DeviceInput, DeviceName, isDeviceName, normalizeDevice } from '../device';
import { describeValue } from '../checked';
import { MomaError } from '../errors';
import { Transformer, TransformerConfig } from '../model/transformer';
import { AuxRouters, AUX_ROUTERS_FILE } from '../model/aux_router';
import { parseVocabLayout, VocabLayout } from '../data/vocab';
import { loadSafetensors } from '../io/safetensors';
import { CheckpointFiles, loadCheckpointInto, readCheckpoint } from '../train/checkpoint';
import { readRunFile, RunFile } from './records';
import { heldOutSequences, isImageOf, listCheckpoints, openDataset } from './run';
import { RUN_DEFAULTS, RunSettings } from './run_config';
import type { MixedModalDataset } from '../data/dataset';
import { SequencePacker } from '../data/packer';

export interface CheckpointSource {
  /** The checkpoint folder. */
  dir: string;
  /** The run folder it belongs to, or null for a loose checkpoint. */
  runDir: string | null;
  run: RunFile | null;
  config: TransformerConfig;
  layout: VocabLayout;
  step: number;
}

const RUNS_DIR = 'runs';

function isCheckpoint(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'config.json')) && fs.existsSync(path.join(dir, 'model.safetensors'));
}

function isRun(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'run.json'));
}

/** The run folder under `root` whose run.json was written last (a resumed run counts as new); null when none has a checkpoint. */
function newestRun(root: string): string | null {
  if (fs.statSync(root, { throwIfNoEntry: false })?.isDirectory() !== true) return null;
  const runs = fs.readdirSync(root)
    .map((name) => path.join(root, name))
    .filter((dir) => fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory() === true && isRun(dir) && listCheckpoints(dir).length > 0)
    .map((dir) => ({ dir, mtime: fs.statSync(path.join(dir, 'run.json')).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime || b.dir.localeCompare(a.dir));
  return runs[0]?.dir ?? null;
}

/** The checkpoint folder `arg` names (see the module comment); `op` prefixes errors. */
export function resolveCheckpointDir(arg: string | undefined, op: string, cwd = process.cwd()): string {
  if (arg === undefined) {
    const run = newestRun(path.join(cwd, RUNS_DIR));
    if (run === null) throw new MomaError('ERR_ARG', `${op}: no --checkpoint given and no trained run under ${path.join(cwd, RUNS_DIR)} (run moma train first)`);
    return listCheckpoints(run)[0]!.dir;
  }
  const dir = path.resolve(cwd, arg);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new MomaError('ERR_ARG', `${op}: --checkpoint ${arg} is not a folder`);
  if (isCheckpoint(dir)) return dir;
  if (isRun(dir)) {
    const newest = listCheckpoints(dir)[0];
    if (newest === undefined) throw new MomaError('ERR_ARG', `${op}: run ${arg} has no checkpoint yet`);
    return newest.dir;
  }
  throw new MomaError('ERR_ARG', `${op}: --checkpoint ${arg} is neither a checkpoint (config.json + model.safetensors) nor a run folder (run.json)`);
}

/** Reads a checkpoint's config, vocabulary and (when inside a run) the run file. */
export function openCheckpoint(arg: string | undefined, op: string, cwd = process.cwd()): CheckpointSource {
  const dir = resolveCheckpointDir(arg, op, cwd);
  const files = new CheckpointFiles(dir, op);
  const { config, state } = readCheckpoint(dir);
  const vocabFile = path.join(dir, 'vocab.json');
  if (!files.has('vocab.json')) throw new MomaError('ERR_FILE', `${op}: ${dir} has no vocab.json (not written by moma train?)`);
  const layout = parseVocabLayout(files.json('vocab.json'), vocabFile);
  const runDir = path.dirname(path.dirname(dir));
  const run = path.basename(path.dirname(dir)) === 'checkpoints' && isRun(runDir) ? readRunFile(runDir, op) : null;
  return { dir, runDir: run === null ? null : runDir, run, config: config as TransformerConfig, layout, step: state.step };
}

/**
 * The device to build a checkpoint's model on: `requested` when given (--device, `device:`),
 * else the device its config.json says it was trained on. As torch.load of a CUDA checkpoint on
 * a machine without CUDA, a saved CUDA device that is not visible here is an error (ERR_DEVICE)
 * that says how to load it on the CPU instead; nothing moves to another device silently.
 * `dir` names the checkpoint and `op` the command in errors.
 */
export function checkpointDevice(config: unknown, requested: DeviceInput | undefined, dir: string, op: string): DeviceName {
  if (requested !== undefined) return normalizeDevice(requested, `${op}: device`);
  const saved = (config as { device?: unknown } | null)?.device ?? 'cpu';
  if (typeof saved !== 'string' || (saved !== 'cuda' && !isDeviceName(saved))) {
    throw new MomaError('ERR_FILE', `${op}: ${path.join(dir, 'config.json')}: device is ${describeValue(saved)}, not a device name ('cpu' or 'cuda:N')`);
  }
  if (saved !== 'cpu') {
    const index = saved === 'cuda' ? 0 : Number(saved.slice('cuda:'.length));
    const visible = cudaDeviceCount();
    if (index >= visible) {
      const here = visible === 0
        ? `no CUDA device is visible here${process.env.MOMA_DEVICE === 'cpu' ? ' (MOMA_DEVICE=cpu)' : ''}`
        : `only ${visible} CUDA device${visible === 1 ? ' is' : 's are'} visible here (cuda:0${visible > 1 ? `..cuda:${visible - 1}` : ''})`;
      throw new MomaError('ERR_DEVICE', `${op}: the checkpoint ${dir} was trained on ${saved}, but ${here}; pass --device cpu (in TypeScript: device: 'cpu') to load it on the CPU${visible > 0 ? ', or another --device cuda:N' : ''}`);
    }
  }
  return normalizeDevice(saved, op);
}

/** The model of a checkpoint on `device` (default: the device it was trained on, see checkpointDevice). */
export function loadModel(source: CheckpointSource, device?: DeviceInput, op = 'load checkpoint'): Transformer {
  const model = new Transformer({ ...source.config, device: checkpointDevice(source.config, device, source.dir, op) });
  try {
    loadCheckpointInto(source.dir, model);
  } catch (err) {
    model.dispose();
    throw err;
  }
  return model;
}

/**
 * The checkpoint's image tokenizer: the file its vocab.json names (a file name inside the folder,
 * checked by parseVocabLayout), verified against checksums.json when the checkpoint has one and
 * always against the SHA-256 vocab.json records for it (ERR_FILE naming the file otherwise).
 */
export function loadImageTokenizer(source: CheckpointSource, op: string): ImageTokenizer {
  const image = source.layout.image;
  if (image === null) throw new MomaError('ERR_ARG', `${op}: the vocabulary of ${source.dir} has no image tokenizer`);
  const file = path.join(source.dir, image.tokenizer.file);
  const files = new CheckpointFiles(source.dir, op);
  if (!files.has(image.tokenizer.file)) throw new MomaError('ERR_FILE', `${op}: ${file}, the image tokenizer vocab.json names, does not exist`);
  const bytes = files.bytes(image.tokenizer.file);
  const actual = createHash('sha256').update(bytes).digest('hex');
  if (actual !== image.tokenizer.sha256) {
    throw new MomaError('ERR_FILE', `${op}: image tokenizer ${file} has SHA-256 ${actual}, vocab.json records ${image.tokenizer.sha256}: it is not the tokenizer the model was trained with`);
  }
  return ImageTokenizer.fromBuffer(bytes, file);
}

/** Fresh auxiliary routers for a model (N(0, 0.02²) init from `seed`). */
export function newAuxRouters(model: Transformer, seed: number): AuxRouters {
  return new AuxRouters(model.config.dModel, model.routingSites(), { device: model.config.device, seed, initStd: model.config.initStd });
}

/** The checkpoint's trained auxiliary routers for `model`; a missing file is an error naming the command that makes it. */
export function loadAuxRouters(dir: string, model: Transformer, op: string): AuxRouters {
  const file = path.join(dir, AUX_ROUTERS_FILE);
  const aux = newAuxRouters(model, 0);
  if (aux.empty) return aux;
  if (!fs.existsSync(file)) {
    aux.dispose();
    throw new MomaError('ERR_FILE', `${op}: ${dir} has no ${AUX_ROUTERS_FILE}; train the auxiliary routers first (moma train-aux --checkpoint ${dir})`);
  }
  const { tensors } = loadSafetensors(file, model.config.device);
  try {
    const expected = aux.namedParameters();
    for (const name of expected.keys()) if (!tensors.has(name)) throw new MomaError('ERR_FILE', `${op}: ${file} lacks '${name}'`);
    for (const name of tensors.keys()) if (!expected.has(name)) throw new MomaError('ERR_FILE', `${op}: ${file} has unknown tensor '${name}'`);
    for (const [name, t] of tensors) {
      aux.setParameter(name, t);
      tensors.delete(name);
    }
  } catch (err) {
    aux.dispose();
    throw err;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  return aux;
}

/** The data a post-training stage reads: the run's dataset and packing settings. */
export interface StageData {
  dataset: MixedModalDataset;
  settings: Pick<RunSettings, 'batchSize' | 'seqLen' | 'imageFraction' | 'evalBatches' | 'seed'>;
}

/**
 * The dataset of a checkpoint's run (its settings: data, batch size, sequence length, text:image
 * ratio), or `data` ('builtin' or a shard-set folder) for a checkpoint outside a run.
 */
export async function openStageData(source: CheckpointSource, op: string, data?: string): Promise<StageData> {
  if (source.run === null && data === undefined) {
    throw new MomaError('ERR_ARG', `${op}: ${source.dir} is not inside a run folder; pass --data (builtin or a shard-set folder)`);
  }
  const base = source.run?.config ?? { ...RUN_DEFAULTS, imageFraction: null, model: {}, out: '', device: 'cpu' } as unknown as RunSettings;
  const settings = { ...base, data: data ?? base.data };
  const dataset = await openDataset(settings, settings.data === base.data ? source.runDir : null);
  if (dataset.layout.hash !== source.layout.hash) {
    throw new MomaError('ERR_ARG', `${op}: the data's vocabulary (hash ${dataset.layout.hash.slice(0, 12)}) is not the checkpoint's (${source.layout.hash.slice(0, 12)})`);
  }
  return { dataset, settings };
}

/** Packed training batches of a stage's data, from the train split shuffled by `seed`. */
export function stageBatches(data: StageData, seed: number): SequencePacker {
  const store = data.dataset.store('train', seed);
  if (store === null) throw new MomaError('ERR_ARG', `dataset ${data.dataset.name} has no train split`);
  const { batchSize, seqLen, imageFraction } = data.settings;
  return new SequencePacker(store, { batchSize, seqLen, isImage: isImageOf(data.dataset.layout), imageFraction });
}

/** The run's fixed held-out sequences (null when the data has no eval split). */
export function stageHeldOut(data: StageData): number[][] | null {
  return heldOutSequences(data.dataset, data.settings as RunSettings);
}
