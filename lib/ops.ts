/** Functional forms of the tensor ops (torch-style), plus the ops that take several tensors. */
import { native } from './binding';
import { MomaError } from './errors';
import { requireOptions } from './options';
import { handleOf, Tensor, TensorOrScalar, wrap } from './tensor';

function asTensor(x: Tensor, op: string, arg: string): Tensor {
  handleOf(x, op, arg);
  return x;
}

export const add = (a: Tensor, b: TensorOrScalar): Tensor => asTensor(a, 'add', 'a').add(b);
export const sub = (a: Tensor, b: TensorOrScalar): Tensor => asTensor(a, 'sub', 'a').sub(b);
export const mul = (a: Tensor, b: TensorOrScalar): Tensor => asTensor(a, 'mul', 'a').mul(b);
export const div = (a: Tensor, b: TensorOrScalar): Tensor => asTensor(a, 'div', 'a').div(b);
export const maximum = (a: Tensor, b: TensorOrScalar): Tensor => asTensor(a, 'maximum', 'a').maximum(b);
export const minimum = (a: Tensor, b: TensorOrScalar): Tensor => asTensor(a, 'minimum', 'a').minimum(b);
export const exp = (x: Tensor): Tensor => asTensor(x, 'exp', 'x').exp();
export const log = (x: Tensor): Tensor => asTensor(x, 'log', 'x').log();
export const silu = (x: Tensor): Tensor => asTensor(x, 'silu', 'x').silu();
export const sigmoid = (x: Tensor): Tensor => asTensor(x, 'sigmoid', 'x').sigmoid();
export const tanh = (x: Tensor): Tensor => asTensor(x, 'tanh', 'x').tanh();
export const softmax = (x: Tensor, axis = -1): Tensor => asTensor(x, 'softmax', 'x').softmax(axis);
export const logSoftmax = (x: Tensor, axis = -1): Tensor => asTensor(x, 'log_softmax', 'x').logSoftmax(axis);

export function matmul(a: Tensor, b: Tensor, options: { transA?: boolean; transB?: boolean } = {}): Tensor {
  return asTensor(a, 'matmul', 'a').matmul(b, options);
}

/** cond (uint8, nonzero = true) ? a : b, with broadcasting. */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  return wrap(native().where(handleOf(cond, 'where', 'cond'), handleOf(a, 'where', 'a'), handleOf(b, 'where', 'b')));
}

export function concat(tensors: Tensor[], axis = 0): Tensor {
  if (!Array.isArray(tensors)) throw new MomaError('ERR_ARG', 'concat: tensors must be an array of Tensors');
  return wrap(native().concat(tensors.map((t, i) => handleOf(t, 'concat', `tensors[${i}]`)), axis));
}

export function indexSelect(x: Tensor, axis: number, index: Tensor): Tensor {
  return asTensor(x, 'index_select', 'x').indexSelect(axis, index);
}

/** What `scatterAdd` adds into x, and where. */
export interface ScatterAddOptions {
  /** The axis of x that `index` addresses (negative counts from the end). */
  axis: number;
  /** int32 [n]: slice index[i] of x along `axis` receives slice i of src (repeats accumulate). */
  index: Tensor;
  /** Values to add: x's shape with `axis` of size n, in x's dtype. */
  src: Tensor;
}

/** A copy of x with src added at `index` along `axis` (the functional form of `x.scatterAdd(axis, index, src)`). */
export function scatterAdd(x: Tensor, options: ScatterAddOptions): Tensor {
  const { axis, index, src } = requireOptions(options, 'scatterAdd', ['axis', 'index', 'src']);
  return asTensor(x, 'scatter_add', 'x').scatterAdd(axis, index, src);
}
