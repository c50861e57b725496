/**
 * Checkpoints: a directory with `config.json` (the model config), `model.safetensors` (the
 * parameters by their module names, readable by Python's `safetensors`), the AdamW moments, and
 * `trainer.json` (step, optimizer step, generator state, data position, anything the caller adds).
 * The directory is written under a temporary name and renamed into place, so a crash never leaves
 * a half checkpoint.
 *
 * The moments are in one of two forms:
 *   - unsharded: `optimizer.safetensors`, `exp_avg.<name>` / `exp_avg_sq.<name>` per parameter;
 *   - sharded (ZeRO-1/2, lib/train/zero.ts), written by every rank of an R-rank run: rank r's
 *     `optimizer.rank-RRRRR-of-NNNNN.safetensors` holds its range [from, to) of the flat parameter
 *     space as `exp_avg` / `exp_avg_sq` [to − from] (metadata: rank, ranks, from, to, step), and
 *     `optimizer.index.json` (rank 0) the parameter layout (name, shape, offset, numel in the
 *     model's parameter order) and each shard's file and range. Parameters are full on every rank,
 *     so rank 0 writes model.safetensors as in an unsharded run. The ranks meet at barriers: rank 0
 *     creates the temporary folder, every rank writes its shard into it (atomically), and rank 0
 *     renames it into place once all are written.
 * Loading reads whichever form is there into whichever the loader holds (resharding): a range of
 * the flat space is copied from the shards (or the per-parameter tensors) that cover it, so a
 * checkpoint of N ranks loads on M ranks, sharded or not. A missing or mismatched shard fails with
 * ERR_FILE naming the file.
 */
import * as fs from 'fs';
import * as path from 'path';
import { MomaError } from '../errors';
import { Tensor } from '../tensor';
import { tensor } from '../creation';
import { barrier } from '../distributed/process_group';
import { readJson, replaceDirAtomic, writeFileAtomic, writeJsonAtomic } from '../io/files';
import { decodeSafetensors, encodeSafetensors, HostTensor, loadSafetensors, saveSafetensors } from '../io/safetensors';
import { Module } from '../nn/module';
import { AdamW } from '../optim/adamw';
import { FlatEntry, FlatLayout, flatLayout, piecesOf, ZeroOptimizer } from './zero';

export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const OPTIMIZER_INDEX_FILE = 'optimizer.index.json';

/** The file of rank `rank`'s optimizer shard of `ranks`: optimizer.rank-00001-of-00004.safetensors. */
export function optimizerShardFile(rank: number, ranks: number): string {
  return `optimizer.rank-${String(rank).padStart(5, '0')}-of-${String(ranks).padStart(5, '0')}.safetensors`;
}

/** optimizer.index.json of a sharded checkpoint. */
export interface OptimizerIndex {
  format: 'moma-optimizer-shards';
  version: 1;
  sharding: 'zero1' | 'zero2';
  step: number;
  numel: number;
  ranks: number;
  shardSize: number;
  parameters: FlatEntry[];
  shards: { rank: number; file: string; from: number; to: number }[];
}

export interface TrainerState {
  step: number;
  optimizerStep: number;
  generator?: { seed: string; offset: string };
  dataPosition?: unknown;
  [key: string]: unknown;
}

/** What a checkpoint holds; `zero` (every rank calls saveCheckpoint) replaces `optimizer` with the sharded moments. */
export interface CheckpointParts {
  config: unknown;
  model: Module;
  optimizer?: AdamW;
  /** Sharded AdamW moments: every rank of the group calls saveCheckpoint with its own. */
  zero?: ZeroOptimizer;
  state: TrainerState;
  files?: Record<string, unknown>;
}

/**
 * Writes a checkpoint; `files` adds files next to the others: Buffers as they are, anything else
 * as JSON (e.g. vocab.json). With `zero`, every rank of the group must call it (module comment).
 */
export async function saveCheckpoint(dir: string, parts: CheckpointParts): Promise<void> {
  const target = path.resolve(dir);
  const zero = parts.zero;
  const writer = zero === undefined || zero.split.rank === 0;
  // the ranks of a sharded checkpoint agree on the temporary folder's name without communicating
  const partial = `${target}.partial-${zero === undefined ? process.pid : parts.state.step}`;
  if (writer) {
    fs.rmSync(partial, { recursive: true, force: true });
    fs.mkdirSync(partial, { recursive: true });
  }
  if (zero !== undefined) {
    await barrier();
    await saveOptimizerShard(partial, zero);
  }
  if (writer) {
    writeJsonAtomic(path.join(partial, 'config.json'), parts.config);
    await saveSafetensors(path.join(partial, 'model.safetensors'), parts.model.namedParameters(), { format: 'pt', library: 'moma' });
    if (zero !== undefined) writeJsonAtomic(path.join(partial, OPTIMIZER_INDEX_FILE), optimizerIndex(zero));
    else if (parts.optimizer) {
      const moments = new Map<string, Tensor>();
      for (const [name, s] of parts.optimizer.stateDict()) {
        moments.set(`exp_avg.${name}`, s.m);
        moments.set(`exp_avg_sq.${name}`, s.v);
      }
      await saveSafetensors(path.join(partial, OPTIMIZER_FILE), moments);
    }
    writeJsonAtomic(path.join(partial, 'trainer.json'), parts.state);
    for (const [name, value] of Object.entries(parts.files ?? {})) {
      if (name.includes('/') || name.includes('\\')) throw new MomaError('ERR_ARG', `saveCheckpoint: bad file name '${name}'`);
      if (Buffer.isBuffer(value)) writeFileAtomic(path.join(partial, name), value);
      else writeJsonAtomic(path.join(partial, name), value);
    }
  }
  if (zero !== undefined) await barrier();
  if (writer) replaceDirAtomic(partial, target);
  if (zero !== undefined) await barrier();
}

async function saveOptimizerShard(folder: string, zero: ZeroOptimizer): Promise<void> {
  const { from, to, expAvg, expAvgSq } = zero.moments();
  const metadata = { format: 'moma-optimizer-shard', rank: String(zero.split.rank), ranks: String(zero.split.ranks), from: String(from), to: String(to), step: String(zero.adamw.step) };
  await saveSafetensors(path.join(folder, optimizerShardFile(zero.split.rank, zero.split.ranks)), new Map([['exp_avg', expAvg], ['exp_avg_sq', expAvgSq]]), metadata);
}

function optimizerIndex(zero: ZeroOptimizer): OptimizerIndex {
  const { layout } = zero;
  return {
    format: 'moma-optimizer-shards', version: 1, sharding: zero.stage, step: zero.adamw.step, numel: layout.numel, ranks: layout.ranks,
    shardSize: layout.shardSize, parameters: layout.entries,
    shards: Array.from({ length: layout.ranks }, (_, rank) => {
      const from = Math.min(rank * layout.shardSize, layout.numel);
      return { rank, file: optimizerShardFile(rank, layout.ranks), from, to: Math.min(from + layout.shardSize, layout.numel) };
    }),
  };
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

/**
 * The AdamW moments of a checkpoint, sharded or not, by ranges of the flat parameter space of
 * `layout` (the loader's model): what resharding reads. Files are read when first needed.
 */
export class OptimizerMoments {
  private readonly index: OptimizerIndex | null;
  private readonly decoded = new Map<string, Map<string, HostTensor>>();

  constructor(readonly dir: string, readonly layout: FlatLayout) {
    const indexFile = path.join(dir, OPTIMIZER_INDEX_FILE);
    if (fs.existsSync(indexFile)) {
      this.index = readJson(indexFile, 'checkpoint') as OptimizerIndex;
      this.checkIndex(indexFile);
    } else {
      this.index = null;
      if (!fs.existsSync(path.join(dir, OPTIMIZER_FILE))) throw new MomaError('ERR_FILE', `checkpoint: ${dir} has neither ${OPTIMIZER_FILE} nor ${OPTIMIZER_INDEX_FILE}`);
    }
  }

  /** Whether the checkpoint's moments are sharded (and over how many ranks). */
  get shardedOver(): number | null {
    return this.index?.ranks ?? null;
  }

  private checkIndex(file: string): void {
    const index = this.index!;
    if (index === null || typeof index !== 'object' || index.format !== 'moma-optimizer-shards' || !Array.isArray(index.parameters) || !Array.isArray(index.shards)) {
      throw new MomaError('ERR_FILE', `checkpoint: ${file} is not a moma optimizer shard index`);
    }
    const expected = this.layout.entries;
    const mismatch = index.parameters.length !== expected.length ? `${index.parameters.length} parameters, the model has ${expected.length}`
      : index.parameters.map((e, i) => (e.name !== expected[i]!.name || e.numel !== expected[i]!.numel || e.offset !== expected[i]!.offset
        ? `parameter ${i} is '${e.name}' (${e.numel} at ${e.offset}), the model's is '${expected[i]!.name}' (${expected[i]!.numel} at ${expected[i]!.offset})` : null)).find((m) => m !== null);
    if (mismatch) throw new MomaError('ERR_FILE', `checkpoint: ${file}: the parameter layout does not match the model: ${mismatch}`);
    let covered = 0;
    for (const [i, shard] of index.shards.entries()) {
      if (shard.rank !== i || shard.from !== covered || !(shard.to >= shard.from) || typeof shard.file !== 'string' || shard.file.includes('/')) {
        throw new MomaError('ERR_FILE', `checkpoint: ${file}: shard ${i} does not continue the flat space at ${covered}`);
      }
      covered = shard.to;
    }
    if (covered !== this.layout.numel || index.shards.length !== index.ranks) {
      throw new MomaError('ERR_FILE', `checkpoint: ${file}: its ${index.shards.length} shards cover ${covered} of ${this.layout.numel} parameters`);
    }
  }

  private file(name: string): Map<string, HostTensor> {
    let tensors = this.decoded.get(name);
    if (tensors === undefined) {
      const file = path.join(this.dir, name);
      let bytes: Buffer;
      try {
        bytes = fs.readFileSync(file);
      } catch (err) {
        throw new MomaError('ERR_FILE', `checkpoint: cannot read optimizer file ${file} (${(err as Error).message})`);
      }
      tensors = decodeSafetensors(bytes, file).tensors;
      for (const [key, t] of tensors) if (t.dtype !== 'F32') throw new MomaError('ERR_FILE', `checkpoint: ${file}: '${key}' is ${t.dtype}, not F32`);
      this.decoded.set(name, tensors);
    }
    return tensors;
  }

  /** Moments over [from, to) of the flat space (zeros where an unsharded checkpoint has none for a parameter). */
  range(from: number, to: number): { expAvg: Float32Array; expAvgSq: Float32Array } {
    const expAvg = new Float32Array(to - from);
    const expAvgSq = new Float32Array(to - from);
    if (this.index === null) {
      const tensors = this.file(OPTIMIZER_FILE);
      for (const { entry, begin, end } of piecesOf(this.layout, from, to)) {
        const at = entry.offset + begin - from;
        for (const [kind, out] of [['exp_avg', expAvg], ['exp_avg_sq', expAvgSq]] as const) {
          const t = tensors.get(`${kind}.${entry.name}`);
          if (t === undefined) continue;
          if (t.data.length !== entry.numel) throw new MomaError('ERR_FILE', `checkpoint: ${path.join(this.dir, OPTIMIZER_FILE)}: '${kind}.${entry.name}' has ${t.data.length} values, the parameter ${entry.numel}`);
          out.set((t.data as Float32Array).subarray(begin, end), at);
        }
      }
      return { expAvg, expAvgSq };
    }
    for (const shard of this.index.shards) {
      const begin = Math.max(from, shard.from);
      const end = Math.min(to, shard.to);
      if (begin >= end) continue;
      const tensors = this.file(shard.file);
      for (const [kind, out] of [['exp_avg', expAvg], ['exp_avg_sq', expAvgSq]] as const) {
        const t = tensors.get(kind);
        if (t === undefined || t.data.length !== shard.to - shard.from) {
          throw new MomaError('ERR_FILE', `checkpoint: ${path.join(this.dir, shard.file)}: needs '${kind}' of ${shard.to - shard.from} values (range [${shard.from}, ${shard.to}))`);
        }
        out.set((t.data as Float32Array).subarray(begin - shard.from, end - shard.from), begin - from);
      }
    }
    return { expAvg, expAvgSq };
  }
}

/**
 * Loads the parameters (and the optimizer moments and step, when given: an AdamW, or a
 * ZeroOptimizer's range) of a checkpoint into a model built from its config; either form of
 * moments loads into either optimizer (module comment).
 */
export function loadCheckpointInto(dir: string, model: Module, optimizer?: AdamW | ZeroOptimizer): LoadedCheckpoint {
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
  if (optimizer instanceof ZeroOptimizer) {
    const moments = new OptimizerMoments(dir, optimizer.layout).range(optimizer.from, optimizer.to);
    optimizer.loadMoments(moments.expAvg, moments.expAvgSq);
    optimizer.adamw.step = loaded.state.optimizerStep;
  } else if (optimizer) {
    const source = new OptimizerMoments(dir, flatLayout(model.namedParameters(), 1));
    const state = optimizer.stateDict();
    for (const s of state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    state.clear();
    if (source.shardedOver === null) loadUnshardedMoments(dir, device, state);
    else {
      for (const entry of source.layout.entries) {
        const { expAvg, expAvgSq } = source.range(entry.offset, entry.offset + entry.numel);
        state.set(entry.name, { m: tensor(expAvg, { shape: entry.shape, device }), v: tensor(expAvgSq, { shape: entry.shape, device }) });
      }
    }
    optimizer.step = loaded.state.optimizerStep;
  }
  return loaded;
}

/** optimizer.safetensors into an AdamW's state, tensor by tensor (a parameter absent from the file starts with zero moments). */
function loadUnshardedMoments(dir: string, device: string, state: Map<string, { m: Tensor; v: Tensor }>): void {
  const ofile = path.join(dir, OPTIMIZER_FILE);
  const { tensors: moments } = loadSafetensors(ofile, device);
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
}

/**
 * Writes `dir` (a checkpoint, sharded or not) as one consolidated checkpoint folder `out`:
 * model.safetensors, config, vocabulary, trainer.json and every other file as they are, and the
 * moments as one unsharded optimizer.safetensors. Host only (no tensors); `out` is written under
 * a temporary name and renamed into place.
 */
export function exportCheckpoint(dir: string, out: string): { sharded: number | null } {
  readCheckpoint(dir);
  const header = decodeSafetensors(fs.readFileSync(path.join(dir, 'model.safetensors')), path.join(dir, 'model.safetensors'));
  const shapes = new Map<string, { shape: readonly number[]; numel: number }>();
  for (const [name, t] of header.tensors) shapes.set(name, { shape: t.shape, numel: t.data.length });
  const indexFile = path.join(dir, OPTIMIZER_INDEX_FILE);
  // the model's parameter order: the index's for a sharded checkpoint (model.safetensors need not keep it)
  const order = fs.existsSync(indexFile) ? ((readJson(indexFile, 'checkpoint export') as OptimizerIndex).parameters ?? []).map((e) => e.name) : [...shapes.keys()];
  const named = new Map(order.map((name) => {
    const entry = shapes.get(name);
    if (entry === undefined) throw new MomaError('ERR_FILE', `checkpoint export: ${indexFile} names parameter '${name}', which ${path.join(dir, 'model.safetensors')} lacks`);
    return [name, entry] as const;
  }));
  const hasOptimizer = fs.existsSync(indexFile) || fs.existsSync(path.join(dir, OPTIMIZER_FILE));
  const source = hasOptimizer ? new OptimizerMoments(dir, flatLayout(named, 1)) : null;
  const target = path.resolve(out);
  const partial = `${target}.partial-${process.pid}`;
  fs.rmSync(partial, { recursive: true, force: true });
  fs.mkdirSync(partial, { recursive: true });
  try {
    const sharded = (name: string): boolean => name === OPTIMIZER_INDEX_FILE || /^optimizer\.rank-\d+-of-\d+\.safetensors$/.test(name);
    for (const name of fs.readdirSync(dir)) {
      const from = path.join(dir, name);
      if (sharded(name) || !fs.statSync(from).isFile()) continue;
      writeFileAtomic(path.join(partial, name), fs.readFileSync(from));
    }
    if (source !== null && source.shardedOver !== null) {
      const entries: [string, HostTensor][] = [];
      for (const entry of source.layout.entries) {
        const { expAvg, expAvgSq } = source.range(entry.offset, entry.offset + entry.numel);
        entries.push([`exp_avg.${entry.name}`, { dtype: 'F32', shape: entry.shape, data: expAvg }]);
        entries.push([`exp_avg_sq.${entry.name}`, { dtype: 'F32', shape: entry.shape, data: expAvgSq }]);
      }
      writeFileAtomic(path.join(partial, OPTIMIZER_FILE), encodeSafetensors(entries));
    }
    replaceDirAtomic(partial, target);
    return { sharded: source?.shardedOver ?? null };
  } catch (err) {
    fs.rmSync(partial, { recursive: true, force: true });
    throw err;
  }
}
