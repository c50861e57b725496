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
