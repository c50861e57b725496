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
  groupedMatmulWgrad, swiglu, swigluBackward, routingStats, modSelect, segmentStarts,
} from './moe/ops';
export type { MoeLayout, Partition, Routing, RoutingOptions, RoutingMode, RouterFn, RoutingStats } from './moe/ops';
export { MoMaFFN, moeLayoutOf } from './moe/moma_ffn';
export type { MoMaFFNConfig, MoMaFFNContext, MoeGroupConfig, RoutingStatsReport } from './moe/moma_ffn';
export { SwiGLUFFN } from './moe/swiglu_ffn';
export type { SwiGLUFFNConfig, SwiGLUFFNContext } from './moe/swiglu_ffn';
export {
  rmsNorm, rmsNormBackward, layerNorm, layerNormBackward, rope, attention, attentionBackward, crossEntropy,
  crossEntropyBackward, adamwStep,
} from './nn/ops';
export type { AdamWStep } from './nn/ops';
export { tidy, keep } from './autograd/scope';
export { backward, noGrad, gradEnabled, zeroGrad } from './autograd/tape';
export * as F from './autograd/functions';
export { Module } from './nn/module';
export { Linear, Embedding, RMSNorm, HeadNorm, Attention, SwiGLU, MoEFeedForward, DecoderBlock } from './model/layers';
export type { AttentionContext, InitOptions, NormPlacement } from './model/layers';
export { Transformer, makeBatch, validateConfig } from './model/transformer';
export type { TransformerConfig, FFNConfig, Batch, LossOutput } from './model/transformer';
export { AdamW, learningRate, defaultDecay } from './optim/adamw';
export type { AdamWOptions, StepResult } from './optim/adamw';
