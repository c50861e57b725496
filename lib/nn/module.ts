/**
 * Module: a named tree of parameters, like torch.nn.Module. Parameters are float32 leaf tensors
 * with requiresGrad; names are dotted paths ('layers.0.attn.wq.weight'). Tensors are immutable,
 * so an optimizer step replaces a parameter through `setParameter`. A module is the one owner of
 * its parameters: layers read them with `param(name)` at each forward and keep no copy.
 */
import { MomaError } from '../errors';
import { Tensor } from '../tensor';

export abstract class Module {
  private readonly ownParams = new Map<string, Tensor>();
  private readonly children = new Map<string, Module>();

  protected addParameter(name: string, tensor: Tensor): Tensor {
    tensor.requiresGrad = true;
    this.ownParams.set(name, tensor);
    return tensor;
  }

  protected addModule<M extends Module>(name: string, module: M): M {
    this.children.set(name, module);
    return module;
  }

  protected param(name: string): Tensor {
    const t = this.ownParams.get(name);
    if (t === undefined) throw new MomaError('ERR_ARG', `${this.constructor.name}: no parameter '${name}'`);
    return t;
  }

  /** Every parameter, by dotted name, in registration order. */
  namedParameters(prefix = ''): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, t] of this.ownParams) out.set(prefix + name, t);
    for (const [name, child] of this.children) for (const [n, t] of child.namedParameters(`${prefix}${name}.`)) out.set(n, t);
    return out;
  }

  /** This module and every module below it, depth first. */
  *modules(): Generator<Module> {
    yield this;
    for (const child of this.children.values()) yield* child.modules();
  }

  parameters(): Tensor[] {
    return [...this.namedParameters().values()];
  }

  /** Number of parameter elements. */
  numParameters(): number {
    let n = 0;
    for (const t of this.parameters()) n += t.numel;
    return n;
  }

  /** Replaces the parameter at a dotted name (shape, dtype and device must match; the old one is disposed). */
  setParameter(name: string, tensor: Tensor): void {
    for (const [childName, child] of this.children) {
      if (name.startsWith(`${childName}.`)) {
        child.setParameter(name.slice(childName.length + 1), tensor);
        return;
      }
    }
    const old = this.ownParams.get(name);
    if (old === undefined) throw new MomaError('ERR_ARG', `${this.constructor.name}.setParameter: no parameter '${name}'`);
    if (old.shape.join() !== tensor.shape.join() || old.dtype !== tensor.dtype || old.device !== tensor.device) {
      throw new MomaError('ERR_SHAPE', `setParameter '${name}': expected ${old.dtype}[${old.shape.join(', ')}] on ${old.device}, got ${tensor.dtype}[${tensor.shape.join(', ')}] on ${tensor.device}`);
    }
    tensor.requiresGrad = true;
    tensor.grad = old.grad;
    old.grad = null;
    if (old !== tensor) old.dispose();
    this.ownParams.set(name, tensor);
  }

  dispose(): void {
    for (const t of this.ownParams.values()) {
      t.grad?.dispose();
      t.dispose();
    }
    for (const child of this.children.values()) child.dispose();
  }

  /** `using` support: the same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
