/**
 * Checkpoints: a directory with `config.json` (the model config), `model.safetensors` (the
 * parameters by their module names, readable by Python's `safetensors`), `optimizer.safetensors`
 * (AdamW moments as `exp_avg.<name>` / `exp_avg_sq.<name>`) and `trainer.json` (step, optimizer
 * step, generator state, data position, anything the caller adds). The directory is written
 * under a temporary name and renamed into place, so a crash never leaves a half checkpoint.
 */
import * as fs from 'fs';
import * as path from 'path';
import { MomaError } from '../errors';
import { Tensor } from '../tensor';
import { readJson, replaceDirAtomic, writeFileAtomic, writeJsonAtomic } from '../io/files';
import { loadSafetensors, saveSafetensors } from '../io/safetensors';
import { Module } from '../nn/module';
import { AdamW } from '../optim/adamw';

export interface TrainerState {
  step: number;
  optimizerStep: number;
  generator?: { seed: string; offset: string };
  dataPosition?: unknown;
  [key: string]: unknown;
}

/** Writes a checkpoint; `files` adds files next to the others: Buffers as they are, anything else as JSON (e.g. vocab.json). */
export async function saveCheckpoint(dir: string, parts: { config: unknown; model: Module; optimizer?: AdamW; state: TrainerState; files?: Record<string, unknown> }): Promise<void> {
  const target = path.resolve(dir);
  const partial = `${target}.partial-${process.pid}`;
  fs.rmSync(partial, { recursive: true, force: true });
  fs.mkdirSync(partial, { recursive: true });
  writeJsonAtomic(path.join(partial, 'config.json'), parts.config);
  await saveSafetensors(path.join(partial, 'model.safetensors'), parts.model.namedParameters(), { format: 'pt', library: 'moma' });
  if (parts.optimizer) {
    const moments = new Map<string, Tensor>();
    for (const [name, s] of parts.optimizer.stateDict()) {
      moments.set(`exp_avg.${name}`, s.m);
      moments.set(`exp_avg_sq.${name}`, s.v);
    }
    await saveSafetensors(path.join(partial, 'optimizer.safetensors'), moments);
  }
  writeJsonAtomic(path.join(partial, 'trainer.json'), parts.state);
  for (const [name, value] of Object.entries(parts.files ?? {})) {
    if (name.includes('/') || name.includes('\\')) throw new MomaError('ERR_ARG', `saveCheckpoint: bad file name '${name}'`);
    if (Buffer.isBuffer(value)) writeFileAtomic(path.join(partial, name), value);
    else writeJsonAtomic(path.join(partial, name), value);
  }
  replaceDirAtomic(partial, target);
}

export interface LoadedCheckpoint {
  config: unknown;
  state: TrainerState;
}

/** Reads config.json and trainer.json of a checkpoint directory. */
export function readCheckpoint(dir: string): LoadedCheckpoint {
  const state = readJson(path.join(dir, 'trainer.json'), 'checkpoint') as TrainerState;
  if (typeof state !== 'object' || state === null || !Number.isInteger(state.step) || !Number.isInteger(state.optimizerStep)) {
    throw new MomaError('ERR_FILE', `checkpoint: ${path.join(dir, 'trainer.json')} lacks integer step / optimizerStep`);
  }
  return { config: readJson(path.join(dir, 'config.json'), 'checkpoint'), state };
}

/** Loads the parameters (and the optimizer moments and step, when given) of a checkpoint into a model built from its config. */
export function loadCheckpointInto(dir: string, model: Module, optimizer?: AdamW): LoadedCheckpoint {
  const loaded = readCheckpoint(dir);
  const device = model.parameters()[0]?.device ?? 'cpu';
  const file = path.join(dir, 'model.safetensors');
  const { tensors } = loadSafetensors(file, device);
  try {
    const expected = model.namedParameters();
    for (const name of expected.keys()) if (!tensors.has(name)) throw new MomaError('ERR_FILE', `checkpoint: ${file} lacks parameter '${name}'`);
    for (const name of tensors.keys()) if (!expected.has(name)) throw new MomaError('ERR_FILE', `checkpoint: ${file} has unknown parameter '${name}'`);
    for (const [name, t] of tensors) {
      model.setParameter(name, t);
      tensors.delete(name);
    }
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  if (optimizer) {
    const ofile = path.join(dir, 'optimizer.safetensors');
    const { tensors: moments } = loadSafetensors(ofile, device);
    const state = optimizer.stateDict();
    for (const s of state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    state.clear();
    for (const [key, t] of moments) {
      const kind = key.startsWith('exp_avg_sq.') ? 'v' : key.startsWith('exp_avg.') ? 'm' : null;
      if (kind === null) {
        for (const m of moments.values()) m.dispose();
        throw new MomaError('ERR_FILE', `checkpoint: ${ofile} has unknown entry '${key}'`);
      }
      const name = key.slice(kind === 'v' ? 'exp_avg_sq.'.length : 'exp_avg.'.length);
      const entry = state.get(name) ?? ({} as { m: Tensor; v: Tensor });
      entry[kind] = t;
      state.set(name, entry);
    }
    optimizer.step = loaded.state.optimizerStep;
  }
  return loaded;
}
