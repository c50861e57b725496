/** `moma.distributed`: the process group and its collectives, the rank environment, and the launcher. */
export { init, isInitialized, world, destroy, worldGroup, newGroup, allReduce, reduceScatter, allReduceAsync, reduceScatterAsync, allGather, allToAll, broadcast, barrier } from './process_group';
export type { Backend, ReduceOp, InitOptions, World, AllToAllOptions, Group, Work } from './process_group';
export { worldFromEnv, deviceForRank, cpuThreadsForRank } from './env';
export type { WorldEnv, Launcher } from './env';
export { launch } from './launcher';
export type { LaunchOptions, LaunchResult } from './launcher';
