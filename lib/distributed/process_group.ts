/**
 * The process group: one per process, like torch.distributed's default group. `init()` reads this
 * rank's place from its launcher's variables (env.ts), takes the backend from the device (gloo for
 * CPU tensors, NCCL for CUDA tensors) and joins the rendezvous at MASTER_ADDR:MASTER_PORT, where
 * rank 0 hosts the store (csrc/dist/tcp_store.h); the rendezvous runs off the JS thread.
 *
 * The collectives are ops like any other: validated (shapes, dtypes, device of the group), queued
 * on the tensor's device in order with the compute around them, and they return new tensors
 * (tensors are immutable). Nothing waits on the host but `barrier()`. A peer that dies or hangs
 * fails the next collective with ERR_DIST after the group's timeout (default 300 s,
 * MOMA_DIST_TIMEOUT_S).
 */
import { native, NativeDistInfo } from '../binding';
import { cudaDeviceCount, DeviceInput, DeviceName, normalizeDevice } from '../device';
import { MomaError } from '../errors';
import { handleOf, Tensor, wrap } from '../tensor';
import { cpuThreadsForRank, deviceForRank, LAUNCHER_PID_VARIABLE, worldFromEnv, WorldEnv } from './env';
import { availableParallelism } from 'os';

export type Backend = 'gloo' | 'nccl';
export type ReduceOp = 'sum' | 'avg' | 'max';

export interface InitOptions {
  /** The device this rank computes on; default `cuda:LOCAL_RANK` when GPUs are visible, else 'cpu'. */
  device?: DeviceInput;
  /** Collective and rendezvous timeout in milliseconds (default MOMA_DIST_TIMEOUT_S, else 300 s). */
  timeoutMs?: number;
  /** The variables to read the rank from (default process.env). */
  env?: Readonly<Record<string, string | undefined>>;
}

/** This process's place in the job and its process group. */
export interface World extends WorldEnv {
  backend: Backend;
  device: DeviceName;
  timeoutMs: number;
}

let current: World | null = null;
let launcherWatch: NodeJS.Timeout | null = null;

/** Ends this rank when the `moma launch` process that started it is gone (killed with SIGKILL), so no rank outlives its job. */
function watchLauncher(env: Readonly<Record<string, string | undefined>>): void {
  const pid = Number(env[LAUNCHER_PID_VARIABLE]);
  if (!Number.isInteger(pid) || pid <= 0 || launcherWatch !== null) return;
  launcherWatch = setInterval(() => {
    try {
      process.kill(pid, 0);
    } catch {
      process.stderr.write(`moma: ERR_DIST: the launcher (pid ${pid}) is gone; rank ${current?.rank ?? '?'} exits\n`);
      process.exit(1);
    }
  }, 2000);
  launcherWatch.unref();
}

/**
 * Joins the process group of this job (resolves when every rank has arrived). Call it once, before
 * any tensor op: on the CPU it also sets this rank's share of the node's threads
 * (MOMA_NUM_THREADS) when the launcher did not.
 */
export async function init(options: InitOptions = {}): Promise<World> {
  if (current !== null) throw new MomaError('ERR_DIST', `distributed.init: this process already joined a group (rank ${current.rank} of ${current.worldSize}); call destroy() first`);
  const env = options.env ?? process.env;
  const place = worldFromEnv(env);
  const device = options.device === undefined ? normalizeDevice(deviceForRank(place, cudaDeviceCount()), 'distributed.init')
    : normalizeDevice(options.device, 'distributed.init: device');
  const backend: Backend = device === 'cpu' ? 'gloo' : 'nccl';
  if (options.timeoutMs !== undefined && !(Number.isInteger(options.timeoutMs) && options.timeoutMs > 0)) {
    throw new MomaError('ERR_ARG', `distributed.init: timeoutMs must be a positive integer, got ${String(options.timeoutMs)}`);
  }
  if (device === 'cpu' && process.env.MOMA_NUM_THREADS === undefined) {
    process.env.MOMA_NUM_THREADS = String(cpuThreadsForRank(place, availableParallelism()));
  }
  await native().distInit({
    rank: place.rank, worldSize: place.worldSize, masterAddr: place.masterAddr, masterPort: place.masterPort, backend, device,
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  });
  const info = native().distInfo() as Extract<NativeDistInfo, { initialized: true }>;
  current = { ...place, backend, device, timeoutMs: info.timeoutMs };
  watchLauncher(env);
  return current;
}

/** Whether init() has joined a group (and destroy() has not left it). */
export function isInitialized(): boolean {
  return current !== null;
}

/** The group this process joined; ERR_DIST before init(). */
export function world(): World {
  if (current === null) throw new MomaError('ERR_DIST', 'distributed: no process group: call `await distributed.init()` first');
  return current;
}

/** Leaves the group (its connections close; queued collectives finish first). */
export function destroy(): void {
  if (current === null) return;
  native().distDestroy();
  current = null;
  if (launcherWatch !== null) clearInterval(launcherWatch);
  launcherWatch = null;
}

function reduceOp(op: unknown, fn: string): ReduceOp {
  if (op === 'sum' || op === 'avg' || op === 'max') return op;
  throw new MomaError('ERR_ARG', `${fn}: op must be 'sum', 'avg' or 'max', got ${String(op)}`);
}

/** Every rank gets the element-wise reduction (sum by default) of every rank's `x` (same shape and dtype everywhere; bf16 sums in float32). */
export function allReduce(x: Tensor, options: { op?: ReduceOp } = {}): Tensor {
  const op = 'dist_all_reduce';
  return wrap(native().distAllReduce(handleOf(x, op, 'x'), reduceOp(options.op ?? 'sum', 'allReduce')));
}

/** The reduction of every rank's `x`, split along dim 0 into worldSize equal chunks: rank r gets chunk r. */
export function reduceScatter(x: Tensor, options: { op?: ReduceOp } = {}): Tensor {
  const op = 'dist_reduce_scatter';
  return wrap(native().distReduceScatter(handleOf(x, op, 'x'), reduceOp(options.op ?? 'sum', 'reduceScatter')));
}

/** Every rank's `x` concatenated along dim 0 in rank order. */
export function allGather(x: Tensor): Tensor {
  const op = 'dist_all_gather';
  return wrap(native().distAllGather(handleOf(x, op, 'x')));
}

export interface AllToAllOptions {
  /** Rows of `x` (dim 0) for each rank, in order; they sum to x's rows. */
  sendCounts: readonly number[];
  /** Rows this rank receives from each rank, in order (what each sends to it). */
  recvCounts: readonly number[];
}

/** All-to-all(v): rank r sends its rows [Σ sendCounts[<p], +sendCounts[p]) to rank p; the result holds what each rank sent here, in rank order. */
export function allToAll(x: Tensor, options: AllToAllOptions): Tensor {
  const op = 'dist_all_to_all_v';
  if (typeof options !== 'object' || options === null || !Array.isArray(options.sendCounts) || !Array.isArray(options.recvCounts)) {
    throw new MomaError('ERR_ARG', 'allToAll: options.sendCounts and options.recvCounts (arrays of row counts per rank) are required');
  }
  return wrap(native().distAllToAllV(handleOf(x, op, 'x'), [...options.sendCounts], [...options.recvCounts]));
}

/** Every rank gets rank `root`'s `x` (default root 0). */
export function broadcast(x: Tensor, options: { root?: number } = {}): Tensor {
  const op = 'dist_broadcast';
  const root = options.root ?? 0;
  if (!Number.isInteger(root) || root < 0) throw new MomaError('ERR_ARG', `broadcast: root must be an integer >= 0, got ${String(root)}`);
  return wrap(native().distBroadcast(handleOf(x, op, 'x'), root));
}

/** Resolves when every rank has reached its barrier (after the work queued before it). */
export function barrier(): Promise<void> {
  world();
  return native().distBarrier();
}
