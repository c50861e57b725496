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
export { Linear, Embedding, RMSNorm, HeadNorm, Attention, SwiGLU, MoEFeedForward, DecoderBlock, MoDBlock } from './model/layers';
export type { AttentionContext, BlockContext, InitOptions, NormPlacement } from './model/layers';
export { Transformer, makeBatch, disposeBatch, validateConfig } from './model/transformer';
export type { TransformerConfig, FFNConfig, Batch, LossOutput } from './model/transformer';
export { AdamW, learningRate, defaultDecay } from './optim/adamw';
export type { AdamWOptions, StepResult } from './optim/adamw';
export { Trainer } from './train/trainer';
export type { TrainerOptions, TokenBatchSource, VocabInfo, StepMetrics, ScheduleOptions, ExpertStat } from './train/trainer';
export { saveCheckpoint, loadCheckpointInto, readCheckpoint } from './train/checkpoint';
export type { TrainerState, LoadedCheckpoint } from './train/checkpoint';
export { evaluate, readTokenFile, vocabFromSpec } from './train/evaluate';
export type { EvalResult, VocabSpec } from './train/evaluate';
export { trainingFlops } from './train/flops';
export type { FlopsCount, StepRows } from './train/flops';
export { upcycleCheckpoint } from './train/upcycle';
export type { UpcycleOptions } from './train/upcycle';
export { SyntheticSource, syntheticVocab, SYNTHETIC_VOCAB_SIZE } from './train/synthetic';
export { saveSafetensors, loadSafetensors, writeFileAtomic } from './io/safetensors';
export type { SafetensorsFile } from './io/safetensors';
export { preset, listPresets, describePreset, swigluHidden, TABLE1_TIERS } from './model/presets';
export type { PresetOverrides } from './model/presets';
export { countParameters, forwardFlopsPerRow } from './model/params';
export type { ParameterCount, ParameterComponents, FlopsBreakdown, FlopsReport } from './model/params';
export { SPECIALS, buildVocabLayout, parseVocabLayout, vocabHash, modalityOfId, describeId } from './data/vocab';
export type { VocabLayout, TextTokenizerInfo, ImageTokenizerInfo, SpecialName } from './data/vocab';
export { ByteTokenizer, HFTokenizer, loadTextTokenizer } from './data/text_tokenizer';
export type { TextTokenizer } from './data/text_tokenizer';
export { ImageTokenizer, listImageFiles } from './data/image_tokenizer';
export type { ImageTokenizerTrainOptions, ImageTokenizerTrainStats } from './data/image_tokenizer';
export { documentTokens, splitDocument, textIds } from './data/document';
export type { TokenSegment } from './data/document';
export { SequencePacker } from './data/packer';
export type { DocumentStore, PackerOptions, PackerState } from './data/packer';
export type { MixedModalDataset, Split } from './data/dataset';
export { builtinDataset, describeDocument, renderScene, sampleScene, captionOf } from './data/builtin';
export type { BuiltinDataset, BuiltinOptions } from './data/builtin';
export { ShardWriter, ShardReader } from './data/shard';
export type { ShardStats, ShardDtype } from './data/shard';
export { openShardSet, ShardSet } from './data/shard_set';
export { packShardSet } from './data/pack';
export type { PackOptions, PackReport } from './data/pack';
export { trainRun } from './train/run';
export type { RunOptions, RunHooks, RunSummary, StepRecord, EvalRecord } from './train/run';
export { resolveRunConfig, RUN_DEFAULTS } from './train/run_config';
export type { RunSettings } from './train/run_config';
export { writeReport } from './report/report';
