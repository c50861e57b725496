/** Creating tensors: from JS data, constant fills, ranges and seeded random values. */
import { native } from './binding';
import { DeviceInput, getDefaultDevice } from './device';
import { DType, dtypeCode } from './dtype';
import { MomaError } from './errors';
import { philoxBlocksNormal, philoxBlocksUniform } from './formulas';
import { requireOptions } from './options';
import { defaultGenerator, Generator } from './random';
import { Tensor, wrap } from './tensor';

export interface CreateOptions {
  dtype?: DType;
  /** A DeviceInput, or any string (validated by the addon: configs and checkpoints carry device names as strings). */
  device?: DeviceInput | (string & {});
}

export interface RandomOptions extends CreateOptions {
  generator?: Generator;
}

type Nested = number | boolean | Nested[];
export type TensorData = Nested | Float32Array | Float64Array | Int32Array | Uint8Array | Uint16Array;

function deviceOf(options: CreateOptions): string {
  return options.device === undefined ? getDefaultDevice() : options.device === 'cuda' ? 'cuda:0' : options.device;
}

function inferShape(data: Nested, op: string): number[] {
  const shape: number[] = [];
  let level: Nested = data;
  while (Array.isArray(level)) {
    shape.push(level.length);
    if (level.length === 0) break;
    level = level[0] as Nested;
  }
  if (shape.length > 8) throw new MomaError('ERR_SHAPE', `${op}: nested data has more than 8 dimensions`);
  return shape;
}

/** What a value that is not tensor data is, for the error message ('a string', 'null', …). */
function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'object') return ArrayBuffer.isView(value) ? `a ${value.constructor.name} inside nested arrays` : 'an object';
  return `a ${typeof value}`;
}

function badData(op: string, value: unknown, where: string): MomaError {
  const at = where === '' ? '' : ` at ${where}`;
  return new MomaError('ERR_ARG', `${op}: data must be numbers, booleans, a typed array or nested arrays of numbers; got ${kindOf(value)}${at}`);
}

function flatten(data: Nested, shape: number[], op: string): number[] {
  const out: number[] = [];
  const walk = (v: unknown, dim: number, where: string): void => {
    const isScalar = typeof v === 'number' || typeof v === 'boolean';
    if (!isScalar && !Array.isArray(v)) throw badData(op, v, where);
    if (dim === shape.length) {
      if (Array.isArray(v)) throw new MomaError('ERR_SHAPE', `${op}: expected a number at data${where}, found an array (ragged data)`);
      out.push(typeof v === 'boolean' ? (v ? 1 : 0) : (v as number));
      return;
    }
    if (!Array.isArray(v) || v.length !== shape[dim]) {
      throw new MomaError('ERR_SHAPE', `${op}: ragged data at data${where}: expected an array of length ${shape[dim]}`);
    }
    // holes of sparse arrays are undefined, like an explicit undefined
    for (let i = 0; i < v.length; i++) walk(v[i], dim + 1, `${where}[${i}]`);
  };
  walk(data, 0, '');
  return out;
}

/**
 * A tensor from nested arrays, a number or a TypedArray (flat; give `shape`). The default dtype is
 * int32 for an Int32Array, uint8 for a Uint8Array, float32 otherwise. A Uint16Array holds raw
 * bfloat16 bits.
 */
export function tensor(data: TensorData, options: CreateOptions & { shape?: number[] } = {}): Tensor {
  const op = 'tensor';
  const device = deviceOf(options);
  if (ArrayBuffer.isView(data)) {
    const shape = options.shape ?? [data.length];
    let src: Float32Array | Int32Array | Uint8Array | Uint16Array;
    let srcDtype: DType;
    if (data instanceof Int32Array) [src, srcDtype] = [data, 'int32'];
    else if (data instanceof Uint8Array) [src, srcDtype] = [data, 'uint8'];
    else if (data instanceof Uint16Array) [src, srcDtype] = [data, 'bfloat16'];
    else if (data instanceof Float32Array) [src, srcDtype] = [data, 'float32'];
    else if (data instanceof Float64Array) [src, srcDtype] = [Float32Array.from(data), 'float32'];
    else throw new MomaError('ERR_ARG', `${op}: unsupported TypedArray ${(data as object).constructor.name}`);
    const dtype = options.dtype ?? srcDtype;
    return wrap(native().fromData(src, dtypeCode(srcDtype, op), shape, dtypeCode(dtype, op), device));
  }
  if (typeof data !== 'number' && typeof data !== 'boolean' && !Array.isArray(data)) throw badData(op, data, '');
  const shape = options.shape ?? inferShape(data, op);
  const flat = options.shape && Array.isArray(data) ? flatten(data, inferShape(data, op), op) : flatten(data, shape, op);
  const dtype = options.dtype ?? 'float32';
  if (dtype === 'float32' || dtype === 'bfloat16') {
    return wrap(native().fromData(Float32Array.from(flat), dtypeCode('float32', op), shape, dtypeCode(dtype, op), device));
  }
  for (const v of flat) {
    const [lo, hi] = dtype === 'uint8' ? [0, 255] : [-2147483648, 2147483647];
    if (!Number.isInteger(v) || v < lo || v > hi) {
      throw new MomaError('ERR_RANGE', `${op}: value ${v} is not representable as ${dtype}`);
    }
  }
  const src = dtype === 'uint8' ? Uint8Array.from(flat) : Int32Array.from(flat);
  return wrap(native().fromData(src, dtypeCode(dtype, op), shape, dtypeCode(dtype, op), device));
}

export function empty(shape: readonly number[], options: CreateOptions = {}): Tensor {
  return wrap(native().empty(shape, dtypeCode(options.dtype ?? 'float32', 'empty'), deviceOf(options)));
}

export function full(shape: readonly number[], value: number, options: CreateOptions = {}): Tensor {
  return wrap(native().full(shape, value, dtypeCode(options.dtype ?? 'float32', 'full'), deviceOf(options)));
}

export function zeros(shape: readonly number[], options: CreateOptions = {}): Tensor {
  return full(shape, 0, options);
}

export function ones(shape: readonly number[], options: CreateOptions = {}): Tensor {
  return full(shape, 1, options);
}

/** Options of `arange`: where and in which dtype, and the step between values. */
export interface ArangeOptions extends CreateOptions {
  /**
   * Distance between consecutive values (default 1; negative counts down; 0, NaN or ±Infinity are
   * ERR_ARG). The dtype defaults to int32 when start, end and step are all integers, float32 otherwise.
   */
  step?: number;
}

/**
 * Values start, start+step, … below end (like torch.arange); arange(n) counts 0..n-1 and
 * `arange(10, 0, { step: -3 })` gives 10, 7, 4, 1.
 */
export function arange(start: number, end?: number, options: ArangeOptions = {}): Tensor {
  const { step = 1 } = requireOptions(options, 'arange', []);
  const [from, to] = end === undefined ? [0, start] : [start, end];
  const dtype = options.dtype ?? (Number.isInteger(from) && Number.isInteger(to) && Number.isInteger(step) ? 'int32' : 'float32');
  return wrap(native().arange(from, to, step, dtypeCode(dtype, 'arange'), deviceOf(options)));
}

/** Elements of a shape the native op has accepted. */
function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Uniform values in (low, high] from the seeded Philox generator (same numbers on CPU and CUDA). */
export function rand(shape: readonly number[], options: RandomOptions & { low?: number; high?: number } = {}): Tensor {
  const gen = options.generator ?? defaultGenerator;
  const dtype = dtypeCode(options.dtype ?? 'float32', 'rand');
  const handle = native().randUniform(shape, options.low ?? 0, options.high ?? 1, gen.seed, gen.offset, dtype, deviceOf(options));
  gen.take(philoxBlocksUniform(numel(shape)));
  return wrap(handle);
}

/** Normal values (Box–Muller over Philox) with the given mean and std. */
export function randn(shape: readonly number[], options: RandomOptions & { mean?: number; std?: number } = {}): Tensor {
  const gen = options.generator ?? defaultGenerator;
  const dtype = dtypeCode(options.dtype ?? 'float32', 'randn');
  const handle = native().randNormal(shape, options.mean ?? 0, options.std ?? 1, gen.seed, gen.offset, dtype, deviceOf(options));
  gen.take(philoxBlocksNormal(numel(shape)));
  return wrap(handle);
}
