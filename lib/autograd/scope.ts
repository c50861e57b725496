/**
 * Scoped memory for training steps (like TensorFlow.js's tidy): every tensor created inside
 * `tidy(fn)` is disposed when fn returns, except the tensors in its result and those passed to
 * `keep`. Scopes nest; a kept tensor moves to the enclosing scope. fn must be synchronous: ops
 * queue their work and return at once, so a whole step fits in one tidy.
 */
import { MomaError } from '../errors';
import { openScopes, Tensor } from '../tensor';

function collect(value: unknown, out: Set<Tensor>, depth = 0): void {
  if (depth > 8 || value === null || value === undefined) return;
  if (value instanceof Tensor) {
    out.add(value);
  } else if (Array.isArray(value)) {
    for (const v of value) collect(v, out, depth + 1);
  } else if (value instanceof Map) {
    for (const v of value.values()) collect(v, out, depth + 1);
  } else if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value as Record<string, unknown>)) collect(v, out, depth + 1);
  }
}

/** Runs fn and disposes every tensor it created that is not in its result or kept. */
export function tidy<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw new MomaError('ERR_ARG', 'tidy: expected a function');
  const scope = new Set<Tensor>();
  openScopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (err) {
    openScopes.pop();
    for (const t of scope) t.dispose();
    throw err;
  }
  openScopes.pop();
  if (result instanceof Promise) {
    for (const t of scope) t.dispose();
    throw new MomaError('ERR_ARG', 'tidy: fn must be synchronous (it returned a Promise)');
  }
  const survivors = new Set<Tensor>();
  collect(result, survivors);
  const parent = openScopes[openScopes.length - 1];
  for (const t of scope) {
    if (survivors.has(t)) parent?.add(t);
    else t.dispose();
  }
  return result;
}

/** Keeps `t` alive past the innermost tidy (it moves to the enclosing scope, if any). */
export function keep<T extends Tensor>(t: T): T {
  const inner = openScopes[openScopes.length - 1];
  if (inner?.delete(t)) openScopes[openScopes.length - 2]?.add(t);
  return t;
}

/** Takes `t` out of every open tidy scope: its owner (a cache, say) disposes it. */
export function untrack<T extends Tensor>(t: T): T {
  for (const scope of openScopes) scope.delete(t);
  return t;
}
