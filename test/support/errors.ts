/** Asserting MomaError codes in tests. */
import { MomaError, MomaErrorCode, Tensor } from '../../lib';

/**
 * fn must throw a MomaError with `code`. Whatever it returned instead (a Tensor, or an object of
 * Tensors, or anything with dispose()) is disposed before the assertion fails.
 */
export function throwsCode(fn: () => unknown, code: MomaErrorCode): void {
  let err: unknown;
  let result: unknown;
  try {
    result = fn();
  } catch (e) {
    err = e;
  }
  if (result !== undefined && typeof result === 'object' && result !== null) {
    if (typeof (result as { dispose?: unknown }).dispose === 'function') (result as { dispose(): void }).dispose();
    else for (const v of Object.values(result)) if (v instanceof Tensor) v.dispose();
  }
  expect(err).toBeInstanceOf(MomaError);
  expect((err as MomaError).code).toBe(code);
}

/** The message of the MomaError fn throws (fails when it throws anything else, or nothing). */
export function messageOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(MomaError);
    return (err as MomaError).message;
  }
  throw new Error('expected a MomaError');
}
