/**
 * The numeric codes that cross the native boundary, stated once on the JS side, and the binding
 * interface version this JS was written for. The addon exports the same tables built from its C++
 * enums (csrc/napi/constants_exports.cc: `constants`, `abiVersion`); lib/binding.ts refuses to load
 * a binary whose tables or ABI version differ from these (ERR_LOAD). No imports: every module may
 * read these, the loader included.
 */

/** The binding interface version (kAbiVersion in csrc/napi/constants_exports.cc). */
export const ABI_VERSION = 5;

/** Name -> code tables, one per C++ enum (csrc/core/dtype.h, kernel_types.h, moe_types.h). */
export const NATIVE_TABLES = {
  /** DType (csrc/core/dtype.h) */
  dtype: { float32: 0, bfloat16: 1, int32: 2, uint8: 3 },
  /** UnaryOp (csrc/core/kernel_types.h) */
  unaryOp: {
    neg: 0, exp: 1, log: 2, silu: 3, sigmoid: 4, tanh: 5, sqrt: 6, rsqrt: 7, abs: 8, square: 9,
    scale: 10, addScalar: 11, pow: 12,
  },
  /** BinaryOp (csrc/core/kernel_types.h) */
  binaryOp: { add: 0, sub: 1, mul: 2, div: 3, maximum: 4, minimum: 5 },
  /** ReduceOp (csrc/core/kernel_types.h) */
  reduceOp: { sum: 0, mean: 1, max: 2, argmax: 3 },
  /** RouterFn (csrc/core/moe_types.h) */
  routerFn: { sigmoid: 0, softmax: 1 },
  /** RoutingMode (csrc/core/moe_types.h) */
  routingMode: { 'expert-choice': 0, 'token-choice': 1, threshold: 2 },
} as const;

export type NativeTableName = keyof typeof NATIVE_TABLES;
/** What the addon exports as `constants`: one name -> code table per enum. */
export type NativeTables = Record<string, Readonly<Record<string, number>>>;
