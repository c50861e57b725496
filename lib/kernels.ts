/**
 * The raw kernels: plain functions on tensors with no autograd, each returning what its backward
 * reads (`rmsNorm` gives { y, rstd }, `attention` { o, lse }). Reached as the package subpath
 * `moma/kernels` or as the namespace `kernels` of the root; the root's `F` namespace holds the
 * differentiable versions (`F.rmsNorm` returns a Tensor and records its gradient).
 */
export {
  rmsNorm, rmsNormBackward, layerNorm, layerNormBackward, rope, attention, attentionBackward, crossEntropy,
  crossEntropyBackward, adamwStep,
} from './nn/ops';
export type {
  AdamWStep, AdamWTensors, AttentionOptions, AttentionSaved, CrossEntropySaved, LayerNormAffine, LayerNormSaved, NormOptions, RmsNormSaved,
} from './nn/ops';
export {
  moePartition, routerScores, routerScoresBackward, route, moeSlotBound, gatherRows, combineRows, gateGrad, groupedMatmul,
  groupedMatmulSwiglu, groupedMatmulWgrad, swiglu, swigluBackward, routingStats, modSelect, segmentStarts,
} from './moe/ops';
export type {
  GateGradOptions, GroupedOptions, MoeLayout, Partition, RouteOptions, RouterFn, RouterScoresBackwardOptions, RouterScoresOptions, Routing,
  RoutingMode, RoutingOptions, RoutingStats, SwigluWeights,
} from './moe/ops';
