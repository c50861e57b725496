/**
 * Checkpoints: a directory with `config.json` (the model config), `model.safetensors` (the
 * parameters by their module names, readable by Python's `safetensors`), the AdamW moments, and
 * `trainer.json` (step, optimizer step, generator state, data position, anything the caller adds).
 * The directory is written under a temporary name and renamed into place, so a crash never leaves
 * a half checkpoint.
 *
 * The moments are in one of two forms:
 *   - unsharded: `optimizer.safetensors`, `exp_avg.<name>` / `exp_avg_sq.<name>` per parameter;
 *   - sharded (ZeRO-1/2/3, lib/train/zero.ts), written by every rank of an R-rank run: rank r's
 *     `optimizer.rank-RRRRR-of-NNNNN.safetensors` holds its range [from, to) of the flat parameter
 *     space as `exp_avg` / `exp_avg_sq` [to − from] (metadata: rank, ranks, from, to, step), and
 *     `optimizer.index.json` (rank 0) the parameter layout (name, shape, offset, numel in the
 *     model's parameter order) and each shard's file and range. Parameters are full on every rank,
 *     so rank 0 writes model.safetensors as in an unsharded run; under ZeRO-3 the ranks first
 *     all-gather the blocks' parameters unit by unit and rank 0 copies them to the host, so
 *     model.safetensors is the same consolidated file (ZeRO-3's moments, spread over the units'
 *     shards, are moved into the same per-rank ranges first: ZeroOptimizer.checkpointMoments). The
 *     ranks meet at barriers: rank 0
 *     creates the temporary folder, every rank writes its shard into it (atomically), and rank 0
 *     renames it into place once all are written.
 * Loading reads whichever form is there into whichever the loader holds (resharding): a range of
 * the flat space is copied from the shards (or the per-parameter tensors) that cover it, so a
 * checkpoint of N ranks loads on M ranks, sharded or not. A missing or mismatched shard fails with
 * ERR_FILE naming the file.
 *
 * Integrity (docs/TRAINING.md, "What a checkpoint guarantees"): the last file written into the
 * temporary folder, after every rank's shard (rank 0, after the barrier), is `checksums.json`,
 * the SHA-256 of every other file in it. Every file a load reads is checked against it before it
 * is parsed; a checkpoint written before checksums existed (no checksums.json) loads unverified.
 * Every JSON file is checked by its schema (./checkpoint_schema.ts), config.json by
 * validateConfig; every parameter and every moment must be there with its exact name, shape and
 * dtype (the unsharded moments are written for every parameter, zeros for one that has no
 * AdamW state yet: what AdamW would start it from). Nothing is changed in the model or the
 * optimizer until everything has been read and checked.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { z } from 'zod';
import { MomaError } from '../errors';
import { Tensor } from '../tensor';
import { tensor } from '../creation';
import { describeKey } from '../checked';
import { barrier } from '../distributed/process_group';
import { jsonSyntaxProblem, replaceDirAtomic, writeFileAtomic, writeJsonAtomic } from '../io/files';
import { decodeSafetensors, encodeSafetensors, HostSafetensors, HostTensor, hostToTensor, safetensorsDtype, saveSafetensors } from '../io/safetensors';
import { TransformerConfig, validateConfig } from '../model/transformer';
import { Module } from '../nn/module';
import { AdamW } from '../optim/adamw';
import {
  Checksums, checksumsSchema, CHECKSUMS_FORMAT, optimizerIndexSchema, optimizerShardMetadataSchema, parseWithSchema, trainerResumeSchema, trainerStateSchema,
} from './checkpoint_schema';
import { FlatEntry, FlatLayout, flatLayout, piecesOf, ZeroOptimizer } from './zero';

export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const OPTIMIZER_INDEX_FILE = 'optimizer.index.json';
export const CHECKSUMS_FILE = 'checksums.json';
export const MODEL_FILE = 'model.safetensors';

/** The file of rank `rank`'s optimizer shard of `ranks`: optimizer.rank-00001-of-00004.safetensors. */
export function optimizerShardFile(rank: number, ranks: number): string {
  return `optimizer.rank-${String(rank).padStart(5, '0')}-of-${String(ranks).padStart(5, '0')}.safetensors`;
}

/** optimizer.index.json of a sharded checkpoint. */
export interface OptimizerIndex {
  format: 'moma-optimizer-shards';
  version: 1;
  sharding: 'zero1' | 'zero2' | 'zero3';
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
  // ZeRO-3: the blocks' parameters exist only as shards; every rank takes part in gathering them
  const gathered = zero?.fsdp ? await zero.fsdp.hostParameters(writer) : null;
  if (writer) {
    writeJsonAtomic(path.join(partial, 'config.json'), parts.config);
    const metadata = { format: 'pt', library: 'moma' };
    if (gathered !== null) writeFileAtomic(path.join(partial, MODEL_FILE), encodeSafetensors(gathered, metadata));
    else await saveSafetensors(path.join(partial, MODEL_FILE), parts.model.namedParameters(), metadata);
    if (zero !== undefined) writeJsonAtomic(path.join(partial, OPTIMIZER_INDEX_FILE), optimizerIndex(zero));
    else if (parts.optimizer) writeFileAtomic(path.join(partial, OPTIMIZER_FILE), await unshardedMoments(parts.model, parts.optimizer));
    writeJsonAtomic(path.join(partial, 'trainer.json'), parts.state);
    for (const [name, value] of Object.entries(parts.files ?? {})) {
      if (name.includes('/') || name.includes('\\') || name === CHECKSUMS_FILE) throw new MomaError('ERR_ARG', `saveCheckpoint: bad file name '${name}'`);
      if (Buffer.isBuffer(value)) writeFileAtomic(path.join(partial, name), value);
      else writeJsonAtomic(path.join(partial, name), value);
    }
  }
  if (zero !== undefined) await barrier();
  if (writer) {
    // last: after every rank's shard is in the folder (the barrier above)
    writeChecksums(partial);
    replaceDirAtomic(partial, target);
  }
  if (zero !== undefined) await barrier();
}

/** optimizer.safetensors of an AdamW: both moments of every parameter of `model` (zeros where it has no state yet). */
async function unshardedMoments(model: Module, optimizer: AdamW): Promise<Buffer> {
  const state = optimizer.stateDict();
  const entries: [string, HostTensor][] = [];
  for (const [name, p] of model.namedParameters()) {
    const s = state.get(name);
    const shape = p.shape.slice();
    const m = s === undefined ? new Float32Array(p.numel) : (await s.m.toArray()) as Float32Array;
    const v = s === undefined ? new Float32Array(p.numel) : (await s.v.toArray()) as Float32Array;
    entries.push([`exp_avg.${name}`, { dtype: 'F32', shape, data: m }], [`exp_avg_sq.${name}`, { dtype: 'F32', shape, data: v }]);
  }
  return encodeSafetensors(entries);
}

async function saveOptimizerShard(folder: string, zero: ZeroOptimizer): Promise<void> {
  const { from, to, expAvg, expAvgSq, owned } = zero.checkpointMoments();
  const metadata = { format: 'moma-optimizer-shard', rank: String(zero.split.rank), ranks: String(zero.split.ranks), from: String(from), to: String(to), step: String(zero.adamw.step) };
  try {
    await saveSafetensors(path.join(folder, optimizerShardFile(zero.split.rank, zero.split.ranks)), new Map([['exp_avg', expAvg], ['exp_avg_sq', expAvgSq]]), metadata);
  } finally {
    if (owned) {
      expAvg.dispose();
      expAvgSq.dispose();
    }
  }
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

function sha256OfFile(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Writes checksums.json into `folder`: the SHA-256 of every other (non-hidden) file in it. */
export function writeChecksums(folder: string): void {
  const files: Record<string, string> = {};
  for (const name of fs.readdirSync(folder).sort()) {
    const file = path.join(folder, name);
    if (name === CHECKSUMS_FILE || name.startsWith('.') || !fs.statSync(file).isFile()) continue;
    files[name] = sha256OfFile(file);
  }
  const checksums: Checksums = { format: CHECKSUMS_FORMAT, version: 1, algorithm: 'sha256', files };
  writeJsonAtomic(path.join(folder, CHECKSUMS_FILE), checksums);
}

/**
 * The files of one checkpoint folder as a load reads them: each checked against checksums.json
 * (when the checkpoint has one) before anything parses it. `op` prefixes errors.
 */
export class CheckpointFiles {
  /** SHA-256 by file name; null for a checkpoint written before checksums (nothing is verified). */
  readonly checksums: ReadonlyMap<string, string> | null;

  constructor(readonly dir: string, readonly op = 'checkpoint') {
    const file = path.join(dir, CHECKSUMS_FILE);
    if (!fs.existsSync(file)) {
      this.checksums = null;
      return;
    }
    const parsed = parseWithSchema(checksumsSchema, this.parseJson(file, this.read(file)), file, op);
    this.checksums = new Map(Object.entries(parsed.files));
  }

  /** Whether the checkpoint folder has file `name`. */
  has(name: string): boolean {
    return fs.existsSync(path.join(this.dir, name));
  }

  /** The bytes of file `name`, verified against checksums.json (ERR_FILE naming the file when they differ or it is not listed). */
  bytes(name: string): Buffer {
    const file = path.join(this.dir, name);
    const expected = this.checksums?.get(name);
    if (this.checksums !== null && expected === undefined) {
      throw new MomaError('ERR_FILE', `${this.op}: ${file} is not listed in ${path.join(this.dir, CHECKSUMS_FILE)} (a file added to the checkpoint after it was written)`);
    }
    const bytes = this.read(file);
    if (expected !== undefined) {
      const actual = createHash('sha256').update(bytes).digest('hex');
      if (actual !== expected) {
        throw new MomaError('ERR_FILE', `${this.op}: ${file}: SHA-256 ${actual} differs from ${expected} recorded in ${CHECKSUMS_FILE}: the file is corrupt or was changed`);
      }
    }
    return bytes;
  }

  /** File `name` parsed as JSON (verified first). */
  json(name: string): unknown {
    return this.parseJson(path.join(this.dir, name), this.bytes(name));
  }

  /** File `name` decoded as safetensors (verified first). */
  safetensors(name: string): HostSafetensors {
    return decodeSafetensors(this.bytes(name), path.join(this.dir, name));
  }

  private read(file: string): Buffer {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new MomaError('ERR_FILE', `${this.op}: cannot read ${file} (${(err as Error).message})`);
    }
  }

  private parseJson(file: string, bytes: Buffer): unknown {
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new MomaError('ERR_FILE', `${this.op}: ${file}: not valid JSON (not UTF-8 text)`);
    }
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new MomaError('ERR_FILE', `${this.op}: ${file}: not valid JSON (${jsonSyntaxProblem(err, text)})`);
    }
  }
}

export interface LoadedCheckpoint {
  config: unknown;
  state: TrainerState;
}

export interface ReadCheckpointOptions {
  /**
   * trainer.json must hold everything a Trainer restores (tokens, FLOPs, generator, data
   * position), as a Trainer writes it: a resume never silently restarts the data.
   */
  trainerResume?: boolean;
}

/** config.json checked as a Transformer config (validateConfig), its problems as ERR_FILE naming the file. */
function checkConfig(config: unknown, file: string, op: string): void {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw new MomaError('ERR_FILE', `${op}: ${file}: must be a Transformer config object`);
  try {
    // the device is checked where the model is built (checkpointDevice: a CUDA checkpoint on a CPU-only machine)
    validateConfig({ ...(config as TransformerConfig), device: undefined });
  } catch (err) {
    if (err instanceof MomaError) throw new MomaError('ERR_FILE', `${op}: ${file}: ${err.message}`);
    throw err;
  }
  const device = (config as { device?: unknown }).device;
  if (device !== undefined && (typeof device !== 'string' || !/^(cpu|cuda|cuda:\d{1,3})$/.test(device))) {
    throw new MomaError('ERR_FILE', `${op}: ${file}: device must be 'cpu', 'cuda' or 'cuda:N', got ${describeKey(String(device))}`);
  }
}

function readVerified(files: CheckpointFiles, options: ReadCheckpointOptions): LoadedCheckpoint {
  const { dir, op } = files;
  const stateFile = path.join(dir, 'trainer.json');
  const schema = options.trainerResume ? trainerResumeSchema : trainerStateSchema;
  const state = parseWithSchema(schema as z.ZodType<TrainerState>, files.json('trainer.json'), stateFile, op);
  const configFile = path.join(dir, 'config.json');
  const config = files.json('config.json');
  checkConfig(config, configFile, op);
  return { config, state };
}

/** Reads config.json and trainer.json of a checkpoint directory, verified and checked (module comment). */
export function readCheckpoint(dir: string, options: ReadCheckpointOptions = {}): LoadedCheckpoint {
  return readVerified(new CheckpointFiles(dir), options);
}

/** The moments of one parameter (host arrays, `numel` values each). */
interface HostMoments {
  expAvg: Float32Array;
  expAvgSq: Float32Array;
}

/**
 * The AdamW moments of a checkpoint, sharded or not, by ranges of the flat parameter space of
 * `layout` (the loader's model): what resharding reads. Files are read (and checked) when first needed.
 */
export class OptimizerMoments {
  private readonly index: OptimizerIndex | null;
  private readonly files: CheckpointFiles;
  private readonly shards = new Map<string, { expAvg: Float32Array; expAvgSq: Float32Array }>();
  private unsharded: Map<string, HostMoments> | null = null;

  constructor(readonly dir: string, readonly layout: FlatLayout, files?: CheckpointFiles) {
    this.files = files ?? new CheckpointFiles(dir);
    const indexFile = path.join(dir, OPTIMIZER_INDEX_FILE);
    if (this.files.has(OPTIMIZER_INDEX_FILE)) {
      this.index = parseWithSchema(optimizerIndexSchema, this.files.json(OPTIMIZER_INDEX_FILE), indexFile, this.files.op) as OptimizerIndex;
      this.checkIndex(indexFile);
    } else {
      this.index = null;
      if (!this.files.has(OPTIMIZER_FILE)) throw new MomaError('ERR_FILE', `${this.files.op}: ${dir} has neither ${OPTIMIZER_FILE} nor ${OPTIMIZER_INDEX_FILE}`);
    }
  }

  /** Whether the checkpoint's moments are sharded (and over how many ranks). */
  get shardedOver(): number | null {
    return this.index?.ranks ?? null;
  }

  private checkIndex(file: string): void {
    const index = this.index!;
    const expected = this.layout.entries;
    const mismatch = index.parameters.length !== expected.length ? `${index.parameters.length} parameters, the model has ${expected.length}`
      : index.parameters.map((e, i) => (e.name !== expected[i]!.name || e.numel !== expected[i]!.numel || e.offset !== expected[i]!.offset || e.shape.join() !== expected[i]!.shape.join()
        ? `parameter ${i} is ${describeKey(e.name)} ([${e.shape.join(', ')}], ${e.numel} at ${e.offset}), the model's is '${expected[i]!.name}' ([${expected[i]!.shape.join(', ')}], ${expected[i]!.numel} at ${expected[i]!.offset})` : null)).find((m) => m !== null);
    if (mismatch) throw new MomaError('ERR_FILE', `${this.files.op}: ${file}: the parameter layout does not match the model: ${mismatch}`);
    let covered = 0;
    for (const [i, shard] of index.shards.entries()) {
      if (shard.rank !== i || shard.from !== covered || !(shard.to >= shard.from)) {
        throw new MomaError('ERR_FILE', `${this.files.op}: ${file}: shard ${i} does not continue the flat space at ${covered}`);
      }
      covered = shard.to;
    }
    if (covered !== this.layout.numel || index.shards.length !== index.ranks) {
      throw new MomaError('ERR_FILE', `${this.files.op}: ${file}: its ${index.shards.length} shards cover ${covered} of ${this.layout.numel} parameters`);
    }
  }

  /** A shard file's two moments, checked: exactly exp_avg and exp_avg_sq, F32 [to − from], and metadata naming this shard. */
  private shard(shard: OptimizerIndex['shards'][number]): { expAvg: Float32Array; expAvgSq: Float32Array } {
    let moments = this.shards.get(shard.file);
    if (moments !== undefined) return moments;
    const file = path.join(this.dir, shard.file);
    const { op } = this.files;
    const { metadata, tensors } = this.files.safetensors(shard.file);
    const meta = parseWithSchema(optimizerShardMetadataSchema, metadata, `${file} (__metadata__)`, op);
    const said = { rank: Number(meta.rank), ranks: Number(meta.ranks), from: Number(meta.from), to: Number(meta.to) };
    const wanted = { rank: shard.rank, ranks: this.index!.ranks, from: shard.from, to: shard.to };
    for (const key of ['rank', 'ranks', 'from', 'to'] as const) {
      if (said[key] !== wanted[key]) throw new MomaError('ERR_FILE', `${op}: ${file}: its metadata says ${key} ${said[key]}, ${OPTIMIZER_INDEX_FILE} says ${wanted[key]}`);
    }
    for (const key of tensors.keys()) if (key !== 'exp_avg' && key !== 'exp_avg_sq') throw new MomaError('ERR_FILE', `${op}: ${file} has unknown entry ${describeKey(key)} (expected exp_avg and exp_avg_sq)`);
    const get = (kind: 'exp_avg' | 'exp_avg_sq'): Float32Array => {
      const t = tensors.get(kind);
      const n = shard.to - shard.from;
      if (t === undefined) throw new MomaError('ERR_FILE', `${op}: ${file} lacks '${kind}' (F32 [${n}], range [${shard.from}, ${shard.to}))`);
      if (t.dtype !== 'F32' || t.shape.length !== 1 || t.shape[0] !== n) {
        throw new MomaError('ERR_FILE', `${op}: ${file}: '${kind}' is ${t.dtype} [${t.shape.join(', ')}], expected F32 [${n}] (range [${shard.from}, ${shard.to}))`);
      }
      return t.data as Float32Array;
    };
    moments = { expAvg: get('exp_avg'), expAvgSq: get('exp_avg_sq') };
    this.shards.set(shard.file, moments);
    return moments;
  }

  /**
   * optimizer.safetensors, checked: `exp_avg.<name>` and `exp_avg_sq.<name>` of every parameter
   * of the layout, F32 of its exact shape, and nothing else. A checkpoint without checksums.json
   * (written before every parameter's moments were) may lack both moments of a parameter: zeros.
   */
  private unshardedMoments(): Map<string, HostMoments> {
    if (this.unsharded !== null) return this.unsharded;
    const file = path.join(this.dir, OPTIMIZER_FILE);
    const { op } = this.files;
    const { tensors } = this.files.safetensors(OPTIMIZER_FILE);
    const known = new Set(this.layout.entries.map((e) => e.name));
    for (const key of tensors.keys()) {
      const kind = key.startsWith('exp_avg_sq.') ? 'exp_avg_sq.' : key.startsWith('exp_avg.') ? 'exp_avg.' : null;
      if (kind === null || !known.has(key.slice(kind.length))) {
        throw new MomaError('ERR_FILE', `${op}: ${file} has unknown entry ${describeKey(key)} (not exp_avg.<parameter> or exp_avg_sq.<parameter> of a parameter of the model)`);
      }
    }
    const legacy = this.files.checksums === null;
    const out = new Map<string, HostMoments>();
    for (const entry of this.layout.entries) {
      const m = tensors.get(`exp_avg.${entry.name}`);
      const v = tensors.get(`exp_avg_sq.${entry.name}`);
      if (m === undefined && v === undefined && legacy) {
        out.set(entry.name, { expAvg: new Float32Array(entry.numel), expAvgSq: new Float32Array(entry.numel) });
        continue;
      }
      const check = (kind: string, t: HostTensor | undefined): Float32Array => {
        const shape = `F32 [${entry.shape.join(', ')}]`;
        if (t === undefined) throw new MomaError('ERR_FILE', `${op}: ${file} lacks '${kind}.${entry.name}', the ${kind === 'exp_avg' ? 'first' : 'second'} moment of parameter '${entry.name}' (${shape})`);
        if (t.dtype !== 'F32' || t.shape.join() !== entry.shape.join()) {
          throw new MomaError('ERR_FILE', `${op}: ${file}: '${kind}.${entry.name}' is ${t.dtype} [${t.shape.join(', ')}], parameter '${entry.name}' needs ${shape}`);
        }
        return t.data as Float32Array;
      };
      out.set(entry.name, { expAvg: check('exp_avg', m), expAvgSq: check('exp_avg_sq', v) });
    }
    this.unsharded = out;
    return out;
  }

  /** Moments over [from, to) of the flat space. */
  range(from: number, to: number): { expAvg: Float32Array; expAvgSq: Float32Array } {
    const expAvg = new Float32Array(to - from);
    const expAvgSq = new Float32Array(to - from);
    if (this.index === null) {
      const moments = this.unshardedMoments();
      for (const { entry, begin, end } of piecesOf(this.layout, from, to)) {
        const at = entry.offset + begin - from;
        const m = moments.get(entry.name)!;
        expAvg.set(m.expAvg.subarray(begin, end), at);
        expAvgSq.set(m.expAvgSq.subarray(begin, end), at);
      }
      return { expAvg, expAvgSq };
    }
    for (const shard of this.index.shards) {
      const begin = Math.max(from, shard.from);
      const end = Math.min(to, shard.to);
      if (begin >= end) continue;
      const moments = this.shard(shard);
      expAvg.set(moments.expAvg.subarray(begin - shard.from, end - shard.from), begin - from);
      expAvgSq.set(moments.expAvgSq.subarray(begin - shard.from, end - shard.from), begin - from);
    }
    return { expAvg, expAvgSq };
  }
}

/**
 * model.safetensors checked against `expected` (the model's parameters): every parameter by its
 * exact name, shape and dtype, and nothing else; ERR_FILE naming the file and the parameter.
 */
function checkedParameters(files: CheckpointFiles, expected: Map<string, Tensor>): Map<string, HostTensor> {
  const file = path.join(files.dir, MODEL_FILE);
  const { op } = files;
  const { tensors } = files.safetensors(MODEL_FILE);
  for (const [name, p] of expected) {
    const t = tensors.get(name);
    const want = `${safetensorsDtype(p.dtype as 'float32')} [${p.shape.join(', ')}]`;
    if (t === undefined) throw new MomaError('ERR_FILE', `${op}: ${file} lacks parameter '${name}' (${want})`);
    if (t.dtype !== safetensorsDtype(p.dtype as 'float32') || t.shape.join() !== p.shape.join()) {
      throw new MomaError('ERR_FILE', `${op}: ${file}: parameter '${name}' is ${t.dtype} [${t.shape.join(', ')}], the model's is ${want}`);
    }
  }
  for (const name of tensors.keys()) if (!expected.has(name)) throw new MomaError('ERR_FILE', `${op}: ${file} has unknown parameter ${describeKey(name)}`);
  return tensors;
}

/**
 * Loads the parameters (and the optimizer moments and step, when given: an AdamW, or a
 * ZeroOptimizer's range) of a checkpoint into a model built from its config; either form of
 * moments loads into either optimizer (module comment). Every file is read and checked before
 * the model or the optimizer changes.
 */
export function loadCheckpointInto(dir: string, model: Module, optimizer?: AdamW | ZeroOptimizer, options: ReadCheckpointOptions = {}): LoadedCheckpoint {
  const files = new CheckpointFiles(dir);
  const loaded = readVerified(files, options);
  const device = model.parameters()[0]?.device ?? 'cpu';
  const expected = model.namedParameters();
  const parameters = checkedParameters(files, expected);
  let zeroMoments: HostMoments | null = null;
  const adamMoments = new Map<string, HostMoments>();
  if (optimizer instanceof ZeroOptimizer) {
    // the ranges of the flat space this rank's moments cover (one for zero1/2, a piece per parameter and unit for zero3)
    const source = new OptimizerMoments(dir, optimizer.layout, files);
    const ranges = optimizer.momentRanges();
    const length = ranges.reduce((n, [from, to]) => n + to - from, 0);
    zeroMoments = { expAvg: new Float32Array(length), expAvgSq: new Float32Array(length) };
    let at = 0;
    for (const [from, to] of ranges) {
      const moments = source.range(from, to);
      zeroMoments.expAvg.set(moments.expAvg, at);
      zeroMoments.expAvgSq.set(moments.expAvgSq, at);
      at += to - from;
    }
  } else if (optimizer) {
    const source = new OptimizerMoments(dir, flatLayout(expected, 1), files);
    for (const entry of source.layout.entries) adamMoments.set(entry.name, source.range(entry.offset, entry.offset + entry.numel));
  }
  // everything is read and checked: now the model and the optimizer change
  if (optimizer instanceof ZeroOptimizer && optimizer.fsdp !== null) optimizer.fsdp.loadParameters(parameters);
  else for (const [name, host] of parameters) model.setParameter(name, hostToTensor(host, device));
  if (optimizer instanceof ZeroOptimizer) {
    optimizer.loadMoments(zeroMoments!.expAvg, zeroMoments!.expAvgSq);
    optimizer.adamw.step = loaded.state.optimizerStep;
  } else if (optimizer) {
    const state = optimizer.stateDict();
    for (const s of state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    state.clear();
    for (const [name, { expAvg, expAvgSq }] of adamMoments) {
      const shape = [...expected.get(name)!.shape];
      state.set(name, { m: tensor(expAvg, { shape, device }), v: tensor(expAvgSq, { shape, device }) });
    }
    optimizer.step = loaded.state.optimizerStep;
  }
  return loaded;
}

/**
 * Writes `dir` (a checkpoint, sharded or not) as one consolidated checkpoint folder `out`:
 * model.safetensors, config, vocabulary, trainer.json and every other file as they are, and the
 * moments as one unsharded optimizer.safetensors. Host only (no tensors); every file is verified
 * against the source's checksums.json and `out` gets its own; `out` is written under a temporary
 * name and renamed into place.
 */
export function exportCheckpoint(dir: string, out: string): { sharded: number | null } {
  const files = new CheckpointFiles(dir, 'checkpoint export');
  readVerified(files, {});
  const header = files.safetensors(MODEL_FILE);
  const shapes = new Map<string, { shape: readonly number[]; numel: number }>();
  for (const [name, t] of header.tensors) shapes.set(name, { shape: t.shape, numel: t.data.length });
  const indexFile = path.join(dir, OPTIMIZER_INDEX_FILE);
  // the model's parameter order: the index's for a sharded checkpoint (model.safetensors need not keep it)
  const index = files.has(OPTIMIZER_INDEX_FILE) ? parseWithSchema(optimizerIndexSchema, files.json(OPTIMIZER_INDEX_FILE), indexFile, files.op) : null;
  const order = index !== null ? index.parameters.map((e) => e.name) : [...shapes.keys()];
  const named = new Map(order.map((name) => {
    const entry = shapes.get(name);
    if (entry === undefined) throw new MomaError('ERR_FILE', `checkpoint export: ${indexFile} names parameter ${describeKey(name)}, which ${path.join(dir, MODEL_FILE)} lacks`);
    return [name, entry] as const;
  }));
  const hasOptimizer = index !== null || files.has(OPTIMIZER_FILE);
  const source = hasOptimizer ? new OptimizerMoments(dir, flatLayout(named, 1), files) : null;
  const target = path.resolve(out);
  const partial = `${target}.partial-${process.pid}`;
  fs.rmSync(partial, { recursive: true, force: true });
  fs.mkdirSync(partial, { recursive: true });
  try {
    const sharded = (name: string): boolean => name === OPTIMIZER_INDEX_FILE || /^optimizer\.rank-\d+-of-\d+\.safetensors$/.test(name);
    for (const name of fs.readdirSync(dir)) {
      if (sharded(name) || name === CHECKSUMS_FILE || name.startsWith('.') || !fs.statSync(path.join(dir, name)).isFile()) continue;
      // a file added after the checkpoint was written (e.g. aux_routers.safetensors by train-aux) is copied as it is
      const bytes = files.checksums === null || files.checksums.has(name) ? files.bytes(name) : fs.readFileSync(path.join(dir, name));
      writeFileAtomic(path.join(partial, name), bytes);
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
    writeChecksums(partial);
    replaceDirAtomic(partial, target);
    return { sharded: source?.shardedOver ?? null };
  } catch (err) {
    fs.rmSync(partial, { recursive: true, force: true });
    throw err;
  }
}
