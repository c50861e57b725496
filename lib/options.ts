/** Checks of the options objects that public functions take after their leading positional arguments. */
import { MomaError } from './errors';

/**
 * Throws ERR_ARG naming `fn` and the option when `options` is not an object or lacks one of
 * `required` (undefined or null counts as missing); returns `options` for chaining.
 */
export function requireOptions<T extends object>(options: T, fn: string, required: readonly (keyof T & string)[]): T {
  if (typeof options !== 'object' || options === null) throw new MomaError('ERR_ARG', `${fn}: expected an options object, got ${options === null ? 'null' : typeof options}`);
  for (const name of required) {
    if (options[name] === undefined || options[name] === null) throw new MomaError('ERR_ARG', `${fn}: options.${name} is required`);
  }
  return options;
}
