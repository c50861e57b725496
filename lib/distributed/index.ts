/** `moma.distributed`: the process group and its collectives, the rank environment, and the launcher. */
export { init, isInitialized, world, destroy, allReduce, reduceScatter, allGather, allToAll, broadcast, barrier } from './process_group';
export type { Backend, ReduceOp, InitOptions, World, AllToAllOptions } from './process_group';
export { worldFromEnv, deviceForRank, cpuThreadsForRank } from './env';
export type { WorldEnv, Launcher } from './env';
export { launch } from './launcher';
export type { LaunchOptions, LaunchResult } from './launcher';
