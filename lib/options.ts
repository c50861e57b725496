/** Checks of the options objects (and saved-tensor bundles) that public functions take after their leading positional arguments. */
import { MomaError } from './errors';

/**
 * Throws ERR_ARG naming `fn` and the option when `options` is not an object or lacks one of
 * `required` (undefined or null counts as missing); returns `options` for chaining.
 */
export function requireOptions<T extends object>(options: T, fn: string, required: readonly (keyof T & string)[]): T {
  return requireFields(options, { fn, argument: 'options' }, required);
}

/**
 * requireOptions for an object argument with another name, e.g. the `saved` tensors of a backward
 * kernel: ERR_ARG says `${fn}: saved.lse is required`.
 */
export function requireFields<T extends object>(value: T, where: { fn: string; argument: string }, required: readonly (keyof T & string)[]): T {
  const { fn, argument } = where;
  if (typeof value !== 'object' || value === null) throw new MomaError('ERR_ARG', `${fn}: expected an object for ${argument}, got ${value === null ? 'null' : typeof value}`);
  for (const name of required) {
    if (value[name] === undefined || value[name] === null) throw new MomaError('ERR_ARG', `${fn}: ${argument}.${name} is required`);
  }
  return value;
}
