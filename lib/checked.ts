/**
 * Checked element access for arrays whose index the type system cannot prove in range
 * (`noUncheckedIndexedAccess` is on): the element, or a MomaError that names the place and the
 * index instead of an `undefined` that would surface later as NaN or a confusing TypeError.
 */
import { MomaError } from './errors';

/** `array[index]`, or ERR_RANGE naming `where` when index is outside [0, array.length). */
export function at<T>(array: ArrayLike<T>, index: number, where: string): T {
  const value = array[index];
  if (value === undefined) throw new MomaError('ERR_RANGE', `${where}: index ${index} is outside [0, ${array.length})`);
  return value;
}

/** The last element of a non-empty array, or ERR_RANGE naming `where` when it is empty. */
export function last<T>(array: ArrayLike<T>, where: string): T {
  return at(array, array.length - 1, where);
}
