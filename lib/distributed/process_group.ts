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
 *
 * Sub-groups (`newGroup`, like torch.distributed.new_group): every collective takes `group`
 * (default: the world, `worldGroup()`); ranks, roots and sizes are then those of the group. A
 * group has a communicator of its own (csrc/dist/communicator.h), connected on its first
 * collective, so groups do not wait for one another. A Group belongs to the world that made it:
 * after `destroy()` it is refused (ERR_DIST).
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

/** A process group: the world or a sub-group of it. `rank` is this process's rank in it, `ranks` the world ranks of its members (group rank i is world rank ranks[i]). */
export interface Group {
  readonly id: number;
  readonly rank: number;
  readonly size: number;
  readonly ranks: readonly number[];
}

let current: World | null = null;
/** The world's group and the sub-groups this process made in the current world (made anew at init and destroy). */
let liveGroups = new WeakSet<Group>();
let currentWorldGroup: Group | null = null;

function makeGroup(id: number, rank: number, ranks: readonly number[]): Group {
  const group: Group = Object.freeze({ id, rank, size: ranks.length, ranks: Object.freeze([...ranks]) });
  liveGroups.add(group);
  return group;
}
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
  liveGroups = new WeakSet<Group>();
  currentWorldGroup = makeGroup(0, place.rank, Array.from({ length: place.worldSize }, (_, r) => r));
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
  liveGroups = new WeakSet<Group>();
  currentWorldGroup = null;
  if (launcherWatch !== null) clearInterval(launcherWatch);
  launcherWatch = null;
}

/** The world as a Group (id 0): every rank, in order. ERR_DIST before init(). */
export function worldGroup(): Group {
  world();
  return currentWorldGroup as Group;
}

/**
 * Makes a sub-group of the world's ranks `ranks` (distinct, each in [0, worldSize), any order; the
 * group's rank i is world rank ranks[i]), like torch.distributed.new_group: EVERY rank calls it,
 * with the same list, in the same order relative to its other newGroup calls. Returns the group on
 * its members and null on the other ranks. Never waits: the group connects on its first collective.
 */
export function newGroup(ranks: readonly number[]): Group | null {
  const fn = 'newGroup';
  const w = world();
  if (!Array.isArray(ranks)) throw new MomaError('ERR_ARG', `${fn}: ranks must be an array of world ranks, got ${typeof ranks}`);
  const seen = new Set<number>();
  ranks.forEach((r, i) => {
    if (!Number.isInteger(r) || r < 0 || r >= w.worldSize) {
      throw new MomaError('ERR_ARG', `${fn}: ranks[${i}] = ${String(r)} is not a rank of the world (integers 0..${w.worldSize - 1})`);
    }
    if (seen.has(r)) throw new MomaError('ERR_ARG', `${fn}: rank ${r} appears twice in ranks [${ranks.join(', ')}]`);
    seen.add(r);
  });
  if (ranks.length === 0) throw new MomaError('ERR_ARG', `${fn}: ranks is empty; a group needs at least one rank`);
  const id = native().distNewGroup([...ranks]);
  const rank = ranks.indexOf(w.rank);
  return rank < 0 ? null : makeGroup(id, rank, ranks);
}

/** The id of `group` for the native collectives (0 for the world); ERR_DIST for a group of another world, ERR_ARG for what is no Group. */
function groupId(group: Group | undefined, fn: string): number {
  if (group === undefined) return 0;
  if (typeof group !== 'object' || group === null) throw new MomaError('ERR_ARG', `${fn}: group must be a Group from newGroup() or worldGroup(), got ${String(group)}`);
  if (!liveGroups.has(group)) {
    throw new MomaError('ERR_DIST', `${fn}: group ${String(group.id)} does not belong to the current process group (it was made before destroy(), or not by newGroup()/worldGroup())`);
  }
  return group.id;
}

function reduceOp(op: unknown, fn: string): ReduceOp {
  if (op === 'sum' || op === 'avg' || op === 'max') return op;
  throw new MomaError('ERR_ARG', `${fn}: op must be 'sum', 'avg' or 'max', got ${String(op)}`);
}

/** Every rank of the group gets the element-wise reduction (sum by default) of every member's `x` (same shape and dtype everywhere; bf16 sums in float32). */
export function allReduce(x: Tensor, options: { op?: ReduceOp; group?: Group } = {}): Tensor {
  const op = 'dist_all_reduce';
  const group = groupId(options.group, 'allReduce');
  return wrap(native().distAllReduce(handleOf(x, op, 'x'), reduceOp(options.op ?? 'sum', 'allReduce'), group));
}

/** The reduction of every member's `x`, split along dim 0 into group-size equal chunks: group rank r gets chunk r. */
export function reduceScatter(x: Tensor, options: { op?: ReduceOp; group?: Group } = {}): Tensor {
  const op = 'dist_reduce_scatter';
  const group = groupId(options.group, 'reduceScatter');
  return wrap(native().distReduceScatter(handleOf(x, op, 'x'), reduceOp(options.op ?? 'sum', 'reduceScatter'), group));
}

/** A started collective: `wait()` queues the wait on the device (in order with the compute queued before it; the JS thread never waits) and returns the result. Call it once. */
export interface Work {
  wait(): Tensor;
}

function work(started: object, fn: string): Work {
  let waited = false;
  return {
    wait(): Tensor {
      if (waited) throw new MomaError('ERR_ARG', `${fn}: wait() was called already for this collective`);
      waited = true;
      return wrap(native().distWait(started));
    },
  };
}

/**
 * allReduce that overlaps with the compute queued after it: the collective starts once the work
 * that produced `x` is done and runs beside the device's compute (gloo: on the group's
 * communication thread; NCCL: on a side stream); `wait()` orders the result before whatever uses
 * it. A failed collective poisons the result (ERR_DIST). Every member must start its collectives
 * in the same order.
 */
export function allReduceAsync(x: Tensor, options: { op?: ReduceOp; group?: Group } = {}): Work {
  const op = 'dist_all_reduce_async';
  const group = groupId(options.group, 'allReduceAsync');
  return work(native().distAllReduceStart(handleOf(x, op, 'x'), reduceOp(options.op ?? 'sum', 'allReduceAsync'), group), 'allReduceAsync');
}

/** reduceScatter that overlaps with the compute queued after it (see allReduceAsync). */
export function reduceScatterAsync(x: Tensor, options: { op?: ReduceOp; group?: Group } = {}): Work {
  const op = 'dist_reduce_scatter_async';
  const group = groupId(options.group, 'reduceScatterAsync');
  return work(native().distReduceScatterStart(handleOf(x, op, 'x'), reduceOp(options.op ?? 'sum', 'reduceScatterAsync'), group), 'reduceScatterAsync');
}

/** Every member's `x` concatenated along dim 0 in group-rank order. */
export function allGather(x: Tensor, options: { group?: Group } = {}): Tensor {
  const op = 'dist_all_gather';
  const group = groupId(options.group, 'allGather');
  return wrap(native().distAllGather(handleOf(x, op, 'x'), group));
}

export interface AllToAllOptions {
  /** Rows of `x` (dim 0) for each rank of the group, in order; they sum to x's rows. */
  sendCounts: readonly number[];
  /** Rows this rank receives from each rank of the group, in order (what each sends to it). */
  recvCounts: readonly number[];
  /** The group (default: the world); counts are per group rank. */
  group?: Group;
}

/** All-to-all(v): group rank r sends its rows [Σ sendCounts[<p], +sendCounts[p]) to group rank p; the result holds what each member sent here, in group-rank order. */
export function allToAll(x: Tensor, options: AllToAllOptions): Tensor {
  const op = 'dist_all_to_all_v';
  if (typeof options !== 'object' || options === null || !Array.isArray(options.sendCounts) || !Array.isArray(options.recvCounts)) {
    throw new MomaError('ERR_ARG', 'allToAll: options.sendCounts and options.recvCounts (arrays of row counts per rank) are required');
  }
  const group = groupId(options.group, 'allToAll');
  return wrap(native().distAllToAllV(handleOf(x, op, 'x'), [...options.sendCounts], [...options.recvCounts], group));
}

/** Every member gets group rank `root`'s `x` (default root 0). */
export function broadcast(x: Tensor, options: { root?: number; group?: Group } = {}): Tensor {
  const op = 'dist_broadcast';
  const root = options.root ?? 0;
  if (!Number.isInteger(root) || root < 0) throw new MomaError('ERR_ARG', `broadcast: root must be an integer >= 0, got ${String(root)}`);
  const group = groupId(options.group, 'broadcast');
  return wrap(native().distBroadcast(handleOf(x, op, 'x'), root, group));
}

/** Resolves when every member of the group has reached its barrier (after the work queued before it). */
export function barrier(options: { group?: Group } = {}): Promise<void> {
  const group = groupId(options.group, 'barrier');
  return native().distBarrier(group);
}
