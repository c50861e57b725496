/**
 * Tensor: a handle to device memory with a dtype and shape. Ops are queued on the tensor's device
 * and return at once; `await t.toArray()` waits for the values. Free memory early with
 * `dispose()` (or `using t = ...`); a FinalizationRegistry frees tensors that are garbage
 * collected without it (it only drops a reference; it never calls CUDA).
 */
import { native, TensorHandle } from './binding';
import { DType, dtypeCode, dtypeName, HostArray } from './dtype';
import { MomaError } from './errors';
import { at } from './checked';
import { NATIVE_TABLES } from './native_tables';
import { DeviceInput, DeviceName, isDeviceName } from './device';

/** Op codes of the native unary, binary and reduce kernels (lib/native_tables.ts). */
export const UnaryOp = NATIVE_TABLES.unaryOp;
export const BinaryOp = NATIVE_TABLES.binaryOp;
export const ReduceOp = NATIVE_TABLES.reduceOp;

let collectedWithoutDispose = 0;
const registry = new FinalizationRegistry<TensorHandle>((handle) => {
  if (!handle.disposed) {
    collectedWithoutDispose++;
    handle.dispose();
  }
});

/** Number of tensors freed by the garbage collector rather than dispose() (a leak indicator). */
export function tensorsCollectedWithoutDispose(): number {
  return collectedWithoutDispose;
}

/**
 * Scopes (see lib/autograd/scope.ts, `tidy`): every Tensor created while a scope is open is
 * recorded in the innermost one, which disposes what it recorded when it closes.
 * @internal
 */
export const openScopes: Set<Tensor>[] = [];

export type Scalar = number;
export type TensorOrScalar = Tensor | Scalar;

export class Tensor {
  /** @internal */
  readonly handle: TensorHandle;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: DeviceName;
  /** Autograd: a leaf that collects gradients in `grad` when backward() reaches it. */
  requiresGrad = false;
  /** Autograd: the accumulated gradient of a leaf with requiresGrad (float32), or null. */
  grad: Tensor | null = null;

  /** @internal Use moma.tensor(), zeros(), randn() … to create tensors. */
  constructor(handle: TensorHandle) {
    this.handle = handle;
    this.shape = Object.freeze(handle.shape);
    this.dtype = dtypeName(handle.dtype);
    if (!isDeviceName(handle.device)) throw new MomaError('ERR_INTERNAL', `Tensor: the addon named a device '${handle.device}', not 'cpu' or 'cuda:N'`);
    this.device = handle.device;
    registry.register(this, handle, this);
    openScopes[openScopes.length - 1]?.add(this);
  }

  get ndim(): number {
    return this.shape.length;
  }

  /** Length of dimension `dim` (negative counts from the end); ERR_RANGE when there is no such dimension. */
  size(dim: number): number {
    const length = this.shape[dim < 0 ? this.shape.length + dim : dim];
    if (length === undefined || !Number.isInteger(dim)) {
      throw new MomaError('ERR_RANGE', `size: dimension ${String(dim)} is out of range for a tensor of shape [${this.shape.join(', ')}]`);
    }
    return length;
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get disposed(): boolean {
    return this.handle.disposed;
  }

  dispose(): void {
    if (!this.handle.disposed) {
      registry.unregister(this);
      this.handle.dispose();
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}[${this.shape.join(', ')}] on ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  // ---- reading values

  /** Values in row-major order (bfloat16 widened to Float32Array). Waits for queued work. */
  async toArray(): Promise<HostArray> {
    return native().read(this.handle);
  }

  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.numel !== 1) {
      throw new MomaError('ERR_SHAPE', `item: tensor has ${this.numel} elements (shape [${this.shape.join(', ')}]), expected 1`);
    }
    const values = await this.toArray();
    return at(values, 0, 'item');
  }

  /** Nested JS arrays, like torch's tolist(). */
  async tolist(): Promise<unknown> {
    const flat = Array.from(await this.toArray());
    const build = (dim: number, offset: number): [unknown, number] => {
      if (dim === this.shape.length) return [flat[offset], offset + 1];
      const out: unknown[] = [];
      for (let i = 0; i < this.size(dim); i++) {
        const [v, next] = build(dim + 1, offset);
        out.push(v);
        offset = next;
      }
      return [out, offset];
    };
    return build(0, 0)[0];
  }

  // ---- device, dtype, layout

  to(device: DeviceInput): Tensor {
    return wrap(native().to(this.handle, device === 'cuda' ? 'cuda:0' : device));
  }

  astype(dtype: DType): Tensor {
    return wrap(native().astype(this.handle, dtypeCode(dtype, 'astype')));
  }

  reshape(...shape: number[] | [number[]]): Tensor {
    return wrap(native().reshape(this.handle, flatArgs(shape)));
  }

  clone(): Tensor {
    return wrap(native().clone(this.handle));
  }

  permute(...dims: number[] | [number[]]): Tensor {
    return wrap(native().permute(this.handle, flatArgs(dims)));
  }

  transpose(dim0 = -2, dim1 = -1): Tensor {
    return wrap(native().transpose(this.handle, dim0, dim1));
  }

  /** Elements [start, end) along `axis` (negative values count from the end). */
  slice(axis: number, start: number, end?: number): Tensor {
    const size = this.shape[axis < 0 ? axis + this.ndim : axis];
    return wrap(native().slice(this.handle, axis, start, end ?? size ?? 0));
  }

  broadcastTo(shape: number[]): Tensor {
    return wrap(native().broadcastTo(this.handle, shape));
  }

  // ---- element-wise

  add(other: TensorOrScalar): Tensor {
    return typeof other === 'number' ? this.unary(UnaryOp.addScalar, other) : this.binary(BinaryOp.add, other);
  }

  sub(other: TensorOrScalar): Tensor {
    return typeof other === 'number' ? this.unary(UnaryOp.addScalar, -other) : this.binary(BinaryOp.sub, other);
  }

  mul(other: TensorOrScalar): Tensor {
    return typeof other === 'number' ? this.unary(UnaryOp.scale, other) : this.binary(BinaryOp.mul, other);
  }

  div(other: TensorOrScalar): Tensor {
    return this.binary(BinaryOp.div, other);
  }

  maximum(other: TensorOrScalar): Tensor {
    return this.binary(BinaryOp.maximum, other);
  }

  minimum(other: TensorOrScalar): Tensor {
    return this.binary(BinaryOp.minimum, other);
  }

  neg(): Tensor { return this.unary(UnaryOp.neg); }
  exp(): Tensor { return this.unary(UnaryOp.exp); }
  log(): Tensor { return this.unary(UnaryOp.log); }
  silu(): Tensor { return this.unary(UnaryOp.silu); }
  sigmoid(): Tensor { return this.unary(UnaryOp.sigmoid); }
  tanh(): Tensor { return this.unary(UnaryOp.tanh); }
  sqrt(): Tensor { return this.unary(UnaryOp.sqrt); }
  rsqrt(): Tensor { return this.unary(UnaryOp.rsqrt); }
  abs(): Tensor { return this.unary(UnaryOp.abs); }
  square(): Tensor { return this.unary(UnaryOp.square); }
  scale(alpha: number): Tensor { return this.unary(UnaryOp.scale, alpha); }
  pow(exponent: number): Tensor { return this.unary(UnaryOp.pow, exponent); }

  // ---- reductions

  /** Sum over `axis`, or over every element when axis is omitted (result shape []). */
  sum(axis?: number, keepdim = false): Tensor { return this.reduce(ReduceOp.sum, axis, keepdim); }
  mean(axis?: number, keepdim = false): Tensor { return this.reduce(ReduceOp.mean, axis, keepdim); }
  max(axis?: number, keepdim = false): Tensor { return this.reduce(ReduceOp.max, axis, keepdim); }
  argmax(axis?: number, keepdim = false): Tensor { return this.reduce(ReduceOp.argmax, axis, keepdim); }

  softmax(axis = -1): Tensor {
    return wrap(native().softmax(this.handle, axis, false));
  }

  logSoftmax(axis = -1): Tensor {
    return wrap(native().softmax(this.handle, axis, true));
  }

  // ---- indexing and matmul

  indexSelect(axis: number, index: Tensor): Tensor {
    return wrap(native().indexSelect(this.handle, axis, handleOf(index, 'index_select', 'index')));
  }

  scatterAdd(axis: number, index: Tensor, src: Tensor): Tensor {
    return wrap(native().scatterAdd(this.handle, axis, handleOf(index, 'scatter_add', 'index'), handleOf(src, 'scatter_add', 'src')));
  }

  matmul(other: Tensor, options: { transA?: boolean; transB?: boolean } = {}): Tensor {
    return wrap(native().matmul(this.handle, handleOf(other, 'matmul', 'b'), options.transA ?? false, options.transB ?? false));
  }

  // ---- helpers

  private unary(op: number, scalar?: number): Tensor {
    return wrap(native().unary(op, this.handle, scalar));
  }

  private binary(op: number, other: TensorOrScalar): Tensor {
    if (typeof other === 'number') {
      const scalar = new Tensor(native().full([], other, dtypeCode(this.dtype, 'binary'), this.device));
      try {
        return wrap(native().binary(op, this.handle, scalar.handle));
      } finally {
        scalar.dispose();
      }
    }
    const name = Object.keys(BinaryOp).find((k) => BinaryOp[k as keyof typeof BinaryOp] === op) ?? 'binary';
    return wrap(native().binary(op, this.handle, handleOf(other, name, 'b')));
  }

  private reduce(op: number, axis: number | undefined, keepdim: boolean): Tensor {
    if (axis !== undefined) return wrap(native().reduce(op, this.handle, axis, keepdim));
    const flat = native().reshape(this.handle, [this.numel]);
    try {
      const out = native().reduce(op, flat, 0, false);
      if (!keepdim) return wrap(out);
      const kept = native().reshape(out, this.shape.map(() => 1));
      out.dispose();
      return wrap(kept);
    } finally {
      flat.dispose();
    }
  }
}

/** @internal */
export function wrap(handle: TensorHandle): Tensor {
  return new Tensor(handle);
}

/** @internal */
export function handleOf(value: unknown, op: string, arg: string): TensorHandle {
  if (!(value instanceof Tensor)) throw new MomaError('ERR_ARG', `${op}: ${arg} must be a Tensor`);
  return value.handle;
}

function flatArgs(args: number[] | [number[]]): number[] {
  return Array.isArray(args[0]) ? (args[0] as number[]) : (args as number[]);
}
