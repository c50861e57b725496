/**
 * Which rank this process is, from the environment its launcher set: `moma launch` and torchrun
 * (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT), Slurm's
 * srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_TASKS_PER_NODE) and Open
 * MPI's mpirun (OMPI_COMM_WORLD_*). torchrun's variables take precedence over Slurm's, Slurm's over
 * Open MPI's; none of them → one process, rank 0 of 1. A malformed or inconsistent value throws a
 * MomaError naming the variable: a rank must never guess and then wait for a rendezvous that cannot
 * happen. Also the device and the CPU-thread share each rank takes on its node.
 */
import { MomaError } from '../errors';

export type Launcher = 'moma' | 'torchrun' | 'slurm' | 'mpirun' | 'single';

/** This process's place in the job: global and node-local rank and size, its node, and the rendezvous address (rank 0's TCP store). */
export interface WorldEnv {
  rank: number;
  localRank: number;
  worldSize: number;
  localWorldSize: number;
  nodeRank: number;
  masterAddr: string;
  masterPort: number;
  launcher: Launcher;
}

type Env = Readonly<Record<string, string | undefined>>;

/** The address and port a one-process world uses (nothing connects to them). */
export const DEFAULT_MASTER_ADDR = '127.0.0.1';
export const DEFAULT_MASTER_PORT = 29500;
/** Set by `moma launch` in every rank it starts (the launcher's pid): tells a moma launch from a torchrun one. */
export const LAUNCHER_PID_VARIABLE = 'MOMA_LAUNCHER_PID';

const TORCHRUN = ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE'] as const;
const SLURM = ['SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID', 'SLURM_NODEID'] as const;
const OMPI = ['OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_RANK', 'OMPI_COMM_WORLD_LOCAL_SIZE'] as const;

function bad(message: string): MomaError {
  return new MomaError('ERR_DIST', `distributed environment: ${message}`);
}

/** The named variables that are missing, when at least one of the set is present. */
function requireAll(env: Env, names: readonly string[], launcher: string): void {
  const missing = names.filter((n) => env[n] === undefined);
  if (missing.length > 0) {
    const present = names.filter((n) => env[n] !== undefined);
    throw bad(`${present.join(', ')} ${present.length === 1 ? 'is' : 'are'} set but ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not: `
      + `${launcher} sets all of ${names.join(', ')}; set them all or none`);
  }
}

/** A non-negative decimal integer (no sign, no spaces), `min` or more. */
function integer(env: Env, name: string, min: number): number {
  const text = env[name];
  if (text === undefined) throw bad(`${name} is not set`);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw bad(`${name} must be an integer, got '${text}'`);
  const value = Number(text);
  if (value < min) throw bad(`${name} must be at least ${min}, got ${value}`);
  return value;
}

/** value < bound; `boundName` is the variable the bound came from, or a phrase with the bound in it (then `bound` is not repeated). */
function below(value: number, name: string, bound: number, boundName: string): void {
  if (value >= bound) throw bad(`${name}=${value} must be less than ${/^[A-Z_]+$/.test(boundName) ? `${boundName}=${bound}` : boundName}`);
}

/** MASTER_ADDR and MASTER_PORT; a world of more than one process needs the address. */
function rendezvous(env: Env, worldSize: number, addrHint: string): { masterAddr: string; masterPort: number } {
  const addr = env.MASTER_ADDR;
  let masterAddr = DEFAULT_MASTER_ADDR;
  if (addr !== undefined) {
    if (addr === '' || /\s/.test(addr)) throw bad(`MASTER_ADDR must be a host name or IP address, got '${addr}'`);
    masterAddr = addr;
  } else if (worldSize > 1) {
    throw bad(`MASTER_ADDR is not set: the ${worldSize} ranks need the address of rank 0's host (${addrHint})`);
  }
  let masterPort = DEFAULT_MASTER_PORT;
  if (env.MASTER_PORT !== undefined) {
    masterPort = integer(env, 'MASTER_PORT', 1);
    if (masterPort > 65535) throw bad(`MASTER_PORT must be a TCP port in [1, 65535], got ${masterPort}`);
  }
  return { masterAddr, masterPort };
}

function fromTorchrun(env: Env): WorldEnv {
  requireAll(env, TORCHRUN, 'torchrun (and moma launch)');
  const worldSize = integer(env, 'WORLD_SIZE', 1);
  const localWorldSize = integer(env, 'LOCAL_WORLD_SIZE', 1);
  const rank = integer(env, 'RANK', 0);
  const localRank = integer(env, 'LOCAL_RANK', 0);
  below(rank, 'RANK', worldSize, 'WORLD_SIZE');
  below(localRank, 'LOCAL_RANK', localWorldSize, 'LOCAL_WORLD_SIZE');
  if (localWorldSize > worldSize) throw bad(`LOCAL_WORLD_SIZE=${localWorldSize} must not exceed WORLD_SIZE=${worldSize}`);
  // A node's ranks are contiguous: rank - LOCAL_RANK is the node's first rank, and all its LOCAL_WORLD_SIZE ranks exist.
  if (rank < localRank || rank - localRank + localWorldSize > worldSize) {
    throw bad(`RANK=${rank}, LOCAL_RANK=${localRank}, LOCAL_WORLD_SIZE=${localWorldSize} and WORLD_SIZE=${worldSize} do not fit together: `
      + `this node's ranks ${rank - localRank}..${rank - localRank + localWorldSize - 1} must lie in 0..${worldSize - 1}`);
  }
  const nodes = Math.ceil(worldSize / localWorldSize);
  let nodeRank = Math.floor(rank / localWorldSize);
  if (env.GROUP_RANK !== undefined) {
    nodeRank = integer(env, 'GROUP_RANK', 0);
    below(nodeRank, 'GROUP_RANK', nodes, `the node count WORLD_SIZE / LOCAL_WORLD_SIZE = ${nodes}`);
  }
  const launcher: Launcher = env[LAUNCHER_PID_VARIABLE] !== undefined ? 'moma' : 'torchrun';
  return { rank, localRank, worldSize, localWorldSize, nodeRank, ...rendezvous(env, worldSize, 'moma launch and torchrun set it'), launcher };
}

/** Slurm's task counts per node: '2(x3),1' → [2, 2, 2, 1]. */
function tasksPerNode(name: string, text: string): number[] {
  const counts: number[] = [];
  for (const part of text.split(',')) {
    const m = /^(\d+)(?:\(x(\d+)\))?$/.exec(part);
    if (m === null || Number(m[1]) < 1 || (m[2] !== undefined && Number(m[2]) < 1)) {
      throw bad(`${name} must be a list like '4' or '2(x3),1', got '${text}'`);
    }
    for (let i = 0; i < Number(m[2] ?? 1); i++) counts.push(Number(m[1]));
  }
  return counts;
}

function fromSlurm(env: Env): WorldEnv {
  requireAll(env, SLURM, 'srun');
  const worldSize = integer(env, 'SLURM_NTASKS', 1);
  const rank = integer(env, 'SLURM_PROCID', 0);
  const localRank = integer(env, 'SLURM_LOCALID', 0);
  const nodeRank = integer(env, 'SLURM_NODEID', 0);
  below(rank, 'SLURM_PROCID', worldSize, 'SLURM_NTASKS');
  let localWorldSize: number;
  const perNodeName = ['SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE'].find((n) => env[n] !== undefined);
  if (perNodeName !== undefined) {
    const counts = tasksPerNode(perNodeName, env[perNodeName]!);
    const total = counts.reduce((a, b) => a + b, 0);
    if (total !== worldSize) throw bad(`${perNodeName}='${env[perNodeName]}' adds up to ${total} tasks, but SLURM_NTASKS=${worldSize}`);
    below(nodeRank, 'SLURM_NODEID', counts.length, `the ${counts.length} nodes of ${perNodeName}='${env[perNodeName]}'`);
    localWorldSize = counts[nodeRank]!;
  } else if (env.SLURM_NTASKS_PER_NODE !== undefined) {
    localWorldSize = integer(env, 'SLURM_NTASKS_PER_NODE', 1);
    if (localWorldSize > worldSize) throw bad(`SLURM_NTASKS_PER_NODE=${localWorldSize} must not exceed SLURM_NTASKS=${worldSize}`);
  } else {
    throw bad('SLURM_LOCALID is set but neither SLURM_TASKS_PER_NODE nor SLURM_NTASKS_PER_NODE is: the tasks on this node are unknown');
  }
  below(localRank, 'SLURM_LOCALID', localWorldSize, `the ${localWorldSize} tasks on this node`);
  const hint = 'in the batch script: export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1), see docs/DISTRIBUTED.md';
  return { rank, localRank, worldSize, localWorldSize, nodeRank, ...rendezvous(env, worldSize, hint), launcher: 'slurm' };
}

function fromOpenMpi(env: Env): WorldEnv {
  requireAll(env, OMPI, 'mpirun');
  const worldSize = integer(env, 'OMPI_COMM_WORLD_SIZE', 1);
  const localWorldSize = integer(env, 'OMPI_COMM_WORLD_LOCAL_SIZE', 1);
  const rank = integer(env, 'OMPI_COMM_WORLD_RANK', 0);
  const localRank = integer(env, 'OMPI_COMM_WORLD_LOCAL_RANK', 0);
  below(rank, 'OMPI_COMM_WORLD_RANK', worldSize, 'OMPI_COMM_WORLD_SIZE');
  below(localRank, 'OMPI_COMM_WORLD_LOCAL_RANK', localWorldSize, 'OMPI_COMM_WORLD_LOCAL_SIZE');
  if (localWorldSize > worldSize) throw bad(`OMPI_COMM_WORLD_LOCAL_SIZE=${localWorldSize} must not exceed OMPI_COMM_WORLD_SIZE=${worldSize}`);
  // Open MPI names no node index; with its default by-slot mapping a node holds consecutive ranks.
  const nodeRank = Math.floor(rank / localWorldSize);
  const hint = 'pass it to every rank: mpirun -x MASTER_ADDR=<host of rank 0> ...';
  return { rank, localRank, worldSize, localWorldSize, nodeRank, ...rendezvous(env, worldSize, hint), launcher: 'mpirun' };
}

/**
 * This process's rank and world from the environment (see the module comment). Slurm's variables
 * count only inside a job step (SLURM_STEP_ID set, as srun does): a batch script's own shell also
 * has SLURM_PROCID=0 and the job's SLURM_NTASKS, and a process started there directly is alone.
 */
export function worldFromEnv(env: Env = process.env): WorldEnv {
  const has = (names: readonly string[]): boolean => names.some((n) => env[n] !== undefined);
  if (has([...TORCHRUN, 'GROUP_RANK'])) return fromTorchrun(env);
  if (has(SLURM) && (env.SLURM_STEP_ID !== undefined || env.SLURM_STEPID !== undefined)) return fromSlurm(env);
  if (has(OMPI)) return fromOpenMpi(env);
  const { masterAddr, masterPort } = rendezvous(env, 1, '');
  return { rank: 0, localRank: 0, worldSize: 1, localWorldSize: 1, nodeRank: 0, masterAddr, masterPort, launcher: 'single' };
}

/** The device a rank trains on: `cuda:LOCAL_RANK` when the node has GPUs, else the CPU. */
export function deviceForRank(world: WorldEnv, cudaCount: number): string {
  if (!Number.isInteger(cudaCount) || cudaCount < 0) throw new MomaError('ERR_ARG', `deviceForRank: cudaCount must be a non-negative integer, got ${cudaCount}`);
  if (cudaCount === 0) return 'cpu';
  if (world.localWorldSize > cudaCount) {
    throw new MomaError('ERR_DEVICE', `distributed: ${world.localWorldSize} ranks on this node (node ${world.nodeRank}) need one GPU each, but ${cudaCount} `
      + `${cudaCount === 1 ? 'is' : 'are'} visible: start at most ${cudaCount} ranks per node, or make every GPU visible to every rank (CUDA_VISIBLE_DEVICES)`);
  }
  return `cuda:${world.localRank}`;
}

/** A local rank's share of the node's `cores` CPU threads: an even split, the first `cores % ranks` ranks one more, at least 1. */
export function cpuThreadsForRank(world: Pick<WorldEnv, 'localRank' | 'localWorldSize'>, cores: number): number {
  if (!Number.isInteger(cores) || cores < 1) throw new MomaError('ERR_ARG', `cpuThreadsForRank: cores must be a positive integer, got ${cores}`);
  const share = Math.floor(cores / world.localWorldSize) + (world.localRank < cores % world.localWorldSize ? 1 : 0);
  return Math.max(1, share);
}
