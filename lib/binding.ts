/**
 * The typed interface of the native addon, and its loader. Every native export is declared here;
 * nothing untyped crosses this boundary. The addon is found by node-gyp-build: a source build in
 * build/Release first, then the prebuilt binary in prebuilds/<platform>-<arch>/.
 */
import * as fs from 'fs';
import * as path from 'path';
import nodeGypBuild = require('node-gyp-build');
import { MomaError, MomaErrorCode } from './errors';
import { ABI_VERSION, NATIVE_TABLES, NativeTables } from './native_tables';

/** Opaque native tensor handle (owned by a Tensor). */
export interface TensorHandle {
  readonly shape: number[];
  readonly dtype: number;
  readonly device: string;
  readonly disposed: boolean;
  dispose(): void;
}

export interface NativeDeviceInfo {
  index: number;
  name: string;
  totalMemory: number;
  computeCapability: string;
  multiprocessors: number;
}

export interface NativeInfo {
  /**
   * runtimeVersion: the CUDA runtime compiled in (e.g. 13000; 0 without CUDA); driverVersion: the
   * CUDA version the driver supports (0: no driver); deviceCountError: cudaGetDeviceCount's error
   * when it failed; devices: every GPU the runtime lists, including ones moma refuses (lib/cuda_probe.ts);
   * architectures: the CUDA architectures the kernels were built for ('80-real,86-real,89-real,90'; '' unknown).
   */
  cuda: {
    compiled: boolean;
    runtimeVersion: number;
    driverVersion: number;
    deviceCountError: { name: string; message: string } | null;
    devices: NativeDeviceInfo[];
    architectures: string;
  };
  cpu: { threads: number; simd: string; gemm: string; gemmBf16: string };
}

export interface NativeMemoryStats {
  allocated: number;
  reserved: number;
  peakAllocated: number;
  numAllocs: number;
  numDeviceMallocs: number;
  liveStorages: number;
  pendingTasks: number;
}

/** One device's work queue (csrc/core/queue.h). */
export interface NativeRuntimeStats {
  /** Times the host waited for this device's queue (reads, synchronize, drains, device-to-host copies) since start. */
  hostSyncs: number;
  /** Tasks queued on this device since start. */
  tasksSubmitted: number;
  /** Tasks of this device waiting or running now. */
  pendingTasks: number;
}

type H = TensorHandle;

/** One AdamW step's hyper-parameters (csrc/core/nn_types.h); biasC1/C2 = 1 - beta^step. */
export interface NativeAdamWParams {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  gradScale: number;
  biasC1: number;
  biasC2: number;
}

/** The C++ statements of host-side sizes (csrc/napi/constants_exports.cc), for checking lib/formulas.ts. */
export interface NativeFormulas {
  philoxBlocks(n: number, normal: boolean): number;
  expertChoiceCapacity(n: number, experts: number, capacityFactor: number): number;
  tokenChoiceCapacity(n: number, experts: number, topK: number, capacityFactor: number): number;
  moeSlotBound(rows: number, experts: number[], groupOfModality: number[], mode: number, capacityFactor: number, topK: number): number;
}

/** distInit's options (csrc/napi/dist_exports.cc). */
export interface NativeDistInit {
  rank: number;
  worldSize: number;
  masterAddr: string;
  masterPort: number;
  backend: 'gloo' | 'nccl';
  device?: string;
  timeoutMs?: number;
}

/** The process group of this process, as the addon holds it. */
export type NativeDistInfo =
  | { initialized: false }
  | { initialized: true; rank: number; worldSize: number; backend: string; device: string; masterAddr: string; masterPort: number; timeoutMs: number };

export interface BindingModule {
  /** The binding interface version (checked at load against ABI_VERSION). */
  abiVersion: number;
  /** Name -> code tables of the C++ enums (checked at load against NATIVE_TABLES). */
  constants: NativeTables;
  formulas: NativeFormulas;
  TensorHandle: new () => TensorHandle;
  fromData(data: Float32Array | Int32Array | Uint8Array | Uint16Array, srcDtype: number, shape: number[], dtype: number, device: string): H;
  empty(shape: readonly number[], dtype: number, device: string): H;
  full(shape: readonly number[], value: number, dtype: number, device: string): H;
  arange(start: number, end: number, step: number, dtype: number, device: string): H;
  randUniform(shape: readonly number[], low: number, high: number, seed: bigint, offset: bigint, dtype: number, device: string): H;
  randNormal(shape: readonly number[], mean: number, std: number, seed: bigint, offset: bigint, dtype: number, device: string): H;
  to(x: H, device: string): H;
  astype(x: H, dtype: number): H;
  reshape(x: H, shape: number[]): H;
  clone(x: H): H;
  permute(x: H, dims: number[]): H;
  transpose(x: H, dim0: number, dim1: number): H;
  slice(x: H, axis: number, start: number, end: number): H;
  concat(xs: H[], axis: number): H;
  broadcastTo(x: H, shape: number[]): H;
  unary(op: number, x: H, scalar?: number): H;
  binary(op: number, a: H, b: H): H;
  where(cond: H, a: H, b: H): H;
  reduce(op: number, x: H, axis: number, keepdim: boolean): H;
  softmax(x: H, axis: number, log: boolean): H;
  indexSelect(x: H, axis: number, index: H): H;
  scatterAdd(x: H, axis: number, index: H, src: H): H;
  matmul(a: H, b: H, transA: boolean, transB: boolean): H;
  moePartition(modality: H, experts: number[], groupOfModality: number[]): [H, H, H, H];
  moeRouterScores(logits: H, rowGroup: H, experts: number[], groupOfModality: number[], fn: number, gumbel: boolean, seed: bigint, offset: bigint): H;
  moeRouterScoresBackward(scores: H, dscores: H, rowGroup: H, experts: number[], groupOfModality: number[], fn: number): H;
  moeRoute(scores: H, rowGroup: H, counts: H, offsets: H, perm: H, experts: number[], groupOfModality: number[], mode: number, capacityFactor: number, topK: number, select: H | null): [H, H, H, H];
  moeGatherRows(x: H, slotRow: H, scale: H | null): H;
  moeCombine(src: H, rowSlots: H, weight: H | null): H;
  moeGateGrad(out: H, dy: H, slotRow: H, expertOffsets: H, experts: number[], groupOfModality: number[]): H;
  groupedMatmul(x: H, w: H, offsets: H, transW: boolean): H;
  groupedMatmulWgrad(x: H, dy: H, offsets: H): H;
  groupedMatmulSwiglu(x: H, w1: H, w3: H, offsets: H, keepPreactivations: boolean): H[];
  swiglu(h1: H, h3: H): H;
  modSelect(scores: H, modality: H, k: number): H;
  segmentStarts(seg: H): H;
  swigluBackward(h1: H, h3: H, da: H): [H, H];
  moeRoutingStats(rowGroup: H, counts: H, offsets: H, perm: H, expertOffsets: H, slotRow: H, slotGate: H, rowSlots: H, experts: number[], groupOfModality: number[]): [H, H];
  rmsNorm(x: H, weight: H, eps: number): [H, H];
  rmsNormBackward(x: H, weight: H, rstd: H, dy: H): [H, H];
  layerNorm(x: H, weight: H, bias: H, eps: number): [H, H, H];
  layerNormBackward(x: H, weight: H, mean: H, rstd: H, dy: H): [H, H, H];
  rope(x: H, positions: H, theta: number, inverse: boolean): H;
  attention(q: H, k: H, v: H, segStart: H, scale: number): [H, H];
  attentionBackward(q: H, k: H, v: H, o: H, lse: H, dout: H, segStart: H, scale: number): [H, H, H];
  crossEntropy(logits: H, targets: H): [H, H];
  crossEntropyBackward(logits: H, targets: H, lse: H, gradNll: H, gradZ: H | null): H;
  adamw(param: H, grad: H, expAvg: H, expAvgSq: H, hyper: NativeAdamWParams, wantBf16: boolean): H[];
  read(x: H): Promise<Float32Array | Int32Array | Uint8Array>;
  distInit(options: NativeDistInit): Promise<void>;
  distDestroy(): void;
  distInfo(): NativeDistInfo;
  /** Registers the world's next sub-group (every rank calls it alike); returns its id. */
  distNewGroup(ranks: number[]): number;
  distAllReduce(x: H, op: 'sum' | 'avg' | 'max', group?: number): H;
  distReduceScatter(x: H, op: 'sum' | 'avg' | 'max', group?: number): H;
  distAllGather(x: H, group?: number): H;
  distAllToAllV(x: H, sendCounts: number[], recvCounts: number[], group?: number): H;
  distBroadcast(x: H, root: number, group?: number): H;
  distBarrier(group?: number): Promise<void>;
  /** A started all-reduce / reduce-scatter (an opaque handle for distWait). */
  distAllReduceStart(x: H, op: 'sum' | 'avg' | 'max', group?: number): object;
  distReduceScatterStart(x: H, op: 'sum' | 'avg' | 'max', group?: number): object;
  /** Queues the wait for a started collective; its result. */
  distWait(work: object): H;
  synchronize(device: string): Promise<void>;
  info(): NativeInfo;
  memoryStats(device: string): NativeMemoryStats;
  runtimeStats(device: string): NativeRuntimeStats;
  resetPeakMemory(device: string): void;
  emptyCache(device: string): void;
  setErrorClass(ctor: new (code: MomaErrorCode, message: string) => MomaError): void;
}

/** Where the loaded addon came from (for `moma inspect`). */
export interface LoadedBinary {
  path: string;
  kind: 'prebuilt' | 'source';
}

export const packageRoot = path.resolve(__dirname, '..');

let cached: { binding: BindingModule; loaded: LoadedBinary } | undefined;

function loadFailure(cause: unknown): MomaError {
  const tried = [
    path.join(packageRoot, 'build', 'Release', 'moma.node'),
    path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, '*.node'),
  ];
  const present = tried.filter((p) => !p.includes('*') && fs.existsSync(p));
  const reason = cause instanceof Error ? cause.message.split('\n')[0] : String(cause);
  return new MomaError(
    'ERR_LOAD',
    [
      `moma: the native addon could not be loaded (${reason}).`,
      `Tried: ${tried.join(', ')}${present.length ? ` (present: ${present.join(', ')})` : ''}.`,
      'Likely fixes: prebuilt binaries exist for linux-x64 and linux-arm64 (glibc ≥ 2.28; arm64 CPU only); elsewhere build from source with',
      "`npm rebuild moma` (needs CMake >= 3.20 and a C++17 compiler; nvcc for CUDA). Set MOMA_PREBUILD to a",
      'folder holding a prebuilds/ tree to load another binary.',
    ].join('\n'),
  );
}

/**
 * Whether the binary at `file` speaks this JS's binding interface: its `abiVersion` must equal
 * `expected.abiVersion` and its `constants` tables must hold exactly `expected.tables`' entries
 * with the same codes. Returns the ERR_LOAD error naming the first disagreement, or null. Pure, so
 * a test can hand it a simulated binary.
 */
export function checkNativeInterface(
  binary: { abiVersion?: unknown; constants?: unknown },
  file: string,
  expected: { abiVersion: number; tables: NativeTables } = { abiVersion: ABI_VERSION, tables: NATIVE_TABLES },
): MomaError | null {
  const fix = 'rebuild with `npm run build:native` or reinstall moma';
  if (binary.abiVersion !== expected.abiVersion) {
    return new MomaError('ERR_LOAD', `moma: the native binary at ${file} has ABI ${String(binary.abiVersion)}, this JS expects ${expected.abiVersion}: ${fix}`);
  }
  const disagree = (what: string): MomaError => new MomaError('ERR_LOAD', `moma: the native binary at ${file} (ABI ${expected.abiVersion}) disagrees with this JS on ${what}: ${fix}`);
  const tables = binary.constants;
  if (typeof tables !== 'object' || tables === null) return disagree('the constants tables (none exported)');
  for (const [name, table] of Object.entries(expected.tables)) {
    const theirs: unknown = (tables as Record<string, unknown>)[name];
    if (typeof theirs !== 'object' || theirs === null) return disagree(`table '${name}' (missing in the binary)`);
    for (const [entry, code] of Object.entries(table)) {
      const got = (theirs as Record<string, unknown>)[entry];
      if (got !== code) return disagree(`table '${name}' entry '${entry}': the binary has ${got === undefined ? 'no such entry' : `code ${String(got)}`}, this JS has ${code}`);
    }
    for (const entry of Object.keys(theirs)) {
      if (!Object.prototype.hasOwnProperty.call(table, entry)) return disagree(`table '${name}' entry '${entry}': the binary has code ${String((theirs as Record<string, unknown>)[entry])}, this JS has no such entry`);
    }
  }
  return null;
}

/** Loads the addon once; throws MomaError('ERR_LOAD') listing what was tried and how to fix it. */
export function loadBinding(): { binding: BindingModule; loaded: LoadedBinary } {
  if (cached) return cached;
  let file: string;
  let binding: BindingModule;
  try {
    file = nodeGypBuild.path(packageRoot);
    binding = require(file) as BindingModule;
  } catch (err) {
    throw loadFailure(err);
  }
  const mismatch = checkNativeInterface(binding, file);
  if (mismatch !== null) throw mismatch;
  binding.setErrorClass(MomaError);
  const kind = file.split(path.sep).includes('prebuilds') ? 'prebuilt' : 'source';
  cached = { binding, loaded: { path: file, kind } };
  return cached;
}

export function native(): BindingModule {
  return loadBinding().binding;
}
