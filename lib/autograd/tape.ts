/**
 * Reverse-mode autograd over native ops, define-by-run. Differentiable functions
 * (lib/autograd/functions.ts) compute their output with native ops and, when grad mode is on and
 * an input needs a gradient, record a node: the inputs and a closure mapping the output's
 * gradient to the inputs' gradients (holding the tensors it saved). `backward(loss)` walks the
 * nodes reachable from `loss` in reverse topological order, sums gradients per tensor (in a fixed
 * order, so runs are bitwise repeatable), and adds each leaf's gradient into `leaf.grad`
 * (gradient accumulation across calls until `zeroGrad`) as soon as no later node can add to it
 * (then `onGradReady(leaf)` fires, for overlapping communication with the rest of the backward). Intermediate gradients are disposed as
 * soon as they have been used; saved tensors go with the step's `tidy` scope.
 */
import { zeros } from '../creation';
import { MomaError } from '../errors';
import { openScopes, Tensor } from '../tensor';

type Backward = (grad: Tensor) => (Tensor | null)[];

interface Node {
  readonly inputs: Tensor[];
  readonly backward: Backward;
  readonly seq: number;
}

const nodes = new WeakMap<Tensor, Node>();
let seqCounter = 0;
let gradDisabled = 0;

/** True when operations record nodes (outside `noGrad`). */
export function gradEnabled(): boolean {
  return gradDisabled === 0;
}

/** Runs fn without recording (evaluation, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  gradDisabled++;
  try {
    return fn();
  } finally {
    gradDisabled--;
  }
}

/** Whether a gradient flows to `t` (a leaf with requiresGrad, or the output of a recorded node). */
export function needsGrad(t: Tensor): boolean {
  return t.requiresGrad || nodes.has(t);
}

/**
 * Records `output = f(inputs)`; `backward(dOutput)` returns one gradient per input (null where
 * none flows). Does nothing when grad mode is off or no input needs a gradient.
 */
export function record(output: Tensor, inputs: Tensor[], backward: Backward): Tensor {
  if (!gradEnabled() || !inputs.some(needsGrad)) return output;
  nodes.set(output, { inputs, backward, seq: seqCounter++ });
  return output;
}

function accumulate(map: Map<Tensor, Tensor>, t: Tensor, g: Tensor): void {
  const prev = map.get(t);
  if (prev === undefined) {
    map.set(t, g);
    return;
  }
  const sum = prev.add(g);
  prev.dispose();
  g.dispose();
  map.set(t, sum);
}

export interface BackwardOptions {
  /**
   * Called once per leaf with requiresGrad that this backward reaches, right after that leaf's
   * gradient from this backward has been added into `leaf.grad` (as soon as no later node can
   * contribute to it), in processing order: the hook of data parallelism's overlapped all-reduce.
   */
  onGradReady?: (leaf: Tensor) => void;
}

/**
 * Backpropagates from `loss` (a scalar unless `gradient` is given) and accumulates float32
 * gradients into the `grad` of every leaf with requiresGrad that it reaches. Each leaf's gradient
 * is finished right after the last node (in processing order) that has it as an input; the sums
 * are the same, in the same order, as when every leaf is finished at the end.
 */
export function backward(loss: Tensor, gradient?: Tensor, options: BackwardOptions = {}): void {
  if (!(loss instanceof Tensor)) throw new MomaError('ERR_ARG', 'backward: loss must be a Tensor');
  if (!nodes.has(loss)) {
    throw new MomaError('ERR_ARG', 'backward: loss does not depend on any tensor with requiresGrad (or was computed under noGrad)');
  }
  if (gradient === undefined && loss.numel !== 1) {
    throw new MomaError('ERR_SHAPE', `backward: loss has shape [${loss.shape.join(', ')}]; pass a gradient for a non-scalar`);
  }
  if (gradient !== undefined && gradient.shape.join() !== loss.shape.join()) {
    throw new MomaError('ERR_SHAPE', `backward: gradient [${gradient.shape.join(', ')}] does not match loss [${loss.shape.join(', ')}]`);
  }
  const onGradReady = options.onGradReady;
  if (onGradReady !== undefined && typeof onGradReady !== 'function') throw new MomaError('ERR_ARG', 'backward: onGradReady must be a function');
  // nodes reachable from loss, in decreasing creation order (a valid reverse topological order:
  // every node is created after the nodes of its inputs)
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: Tensor[] = [loss];
  while (stack.length > 0) {
    const t = stack.pop() as Tensor;
    if (seen.has(t)) continue;
    seen.add(t);
    const node = nodes.get(t);
    if (node === undefined) continue;
    order.push(t);
    for (const input of node.inputs) if (!seen.has(input)) stack.push(input);
  }
  order.sort((a, b) => (nodes.get(b) as Node).seq - (nodes.get(a) as Node).seq);

  // the leaves (no node, requiresGrad) to finish after each node: those it is the last to feed
  const lastFeeder = new Map<Tensor, number>();
  order.forEach((t, i) => {
    for (const input of (nodes.get(t) as Node).inputs) if (input.requiresGrad && !nodes.has(input)) lastFeeder.set(input, i);
  });
  const finishAfter: Tensor[][] = order.map(() => []);
  for (const [leaf, i] of lastFeeder) finishAfter[i]!.push(leaf);

  const grads = new Map<Tensor, Tensor>();
  grads.set(loss, gradient !== undefined ? gradient.astype('float32') : (zeros(loss.shape, { device: loss.device }).add(1)));
  order.forEach((t, i) => {
    const g = grads.get(t);
    if (g !== undefined) {
      grads.delete(t);
      const node = nodes.get(t) as Node;
      const inputGrads = node.backward(g);
      if (!inputGrads.includes(g)) g.dispose(); // a node may pass its gradient through as is
      node.inputs.forEach((input, k) => {
        const gi = inputGrads[k];
        if (gi === null || gi === undefined) return;
        if (!needsGrad(input)) {
          gi.dispose();
          return;
        }
        const g32 = gi.dtype === 'float32' ? gi : gi.astype('float32');
        if (g32 !== gi) gi.dispose();
        accumulate(grads, input, g32);
      });
    }
    for (const leaf of finishAfter[i]!) {
      const lg = grads.get(leaf);
      if (lg === undefined) continue;
      grads.delete(leaf);
      addIntoGrad(leaf, lg);
      onGradReady?.(leaf);
    }
  });
}

/** leaf.grad += g (or = g), owned by the leaf. */
function addIntoGrad(leaf: Tensor, g: Tensor): void {
  keepOutOfScopes(g);
  if (leaf.grad === null) {
    leaf.grad = g;
    return;
  }
  const sum = leaf.grad.add(g);
  keepOutOfScopes(sum);
  leaf.grad.dispose();
  g.dispose();
  leaf.grad = sum;
}

/** Leaf gradients outlive the step's tidy scope: they belong to their leaf. */
function keepOutOfScopes(t: Tensor): void {
  for (const scope of openScopes) scope.delete(t);
}

/** Drops the gradients of `params` (they are disposed). */
export function zeroGrad(params: Iterable<Tensor>): void {
  for (const p of params) {
    p.grad?.dispose();
    p.grad = null;
  }
}
