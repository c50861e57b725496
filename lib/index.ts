/** moma: mixed-modal early-fusion pre-training with modality-aware experts. */
export { MomaError } from './errors';
export type { MomaErrorCode } from './errors';
export type { DType, HostArray } from './dtype';
export { Tensor } from './tensor';
export type { TensorOrScalar } from './tensor';
export { tensor, empty, full, zeros, ones, arange, rand, randn } from './creation';
export type { CreateOptions, RandomOptions, TensorData } from './creation';
export * from './ops';
export { Generator, manualSeed, defaultGenerator } from './random';
export { bestDevice, cudaAvailable, cudaDeviceCount, getDefaultDevice, setDefaultDevice } from './device';
export { memoryStats, resetPeakMemory, emptyCache, synchronize } from './memory';
export type { MemoryStats } from './memory';
export { inspect } from './inspect';
export type { InspectReport } from './inspect';
export {
  moePartition, routerScores, routerScoresBackward, route, moeSlotBound, gatherRows, combineRows, gateGrad, groupedMatmul,
  groupedMatmulWgrad, swiglu, swigluBackward, routingStats,
} from './moe/ops';
export type { MoeLayout, Partition, Routing, RoutingOptions, RoutingMode, RouterFn, RoutingStats } from './moe/ops';
export { MoMaFFN, moeLayoutOf } from './moe/moma_ffn';
export type { MoMaFFNConfig, MoMaFFNContext, MoeGroupConfig, RoutingStatsReport } from './moe/moma_ffn';
export { SwiGLUFFN } from './moe/swiglu_ffn';
export type { SwiGLUFFNConfig, SwiGLUFFNContext } from './moe/swiglu_ffn';
