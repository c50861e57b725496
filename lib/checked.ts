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

/**
 * What a value is, without its content: for error messages about values read from files or given
 * by callers, which must not echo text that may not be what it claims to be (a 1 MB string, a
 * path, control bytes). Numbers, booleans, null and undefined are shown as they are (they carry
 * no text), and so is a short plain word (at most 64 letters, digits, '_', '-', '.' or ':',
 * quoted); any other string by its length, an array by its length, an object by its number of keys.
 */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of ${value.length} element${value.length === 1 ? '' : 's'}`;
  switch (typeof value) {
    case 'undefined': return 'undefined';
    case 'string':
      if (value.length === 0) return 'an empty string';
      return PLAIN_WORD.test(value) ? `'${value}'` : `a string of ${value.length} character${value.length === 1 ? '' : 's'}`;
    case 'number':
    case 'boolean': return String(value);
    case 'bigint': return 'a bigint';
    case 'symbol': return 'a symbol';
    case 'function': return 'a function';
    default: {
      const keys = Object.keys(value as object).length;
      return `an object with ${keys} key${keys === 1 ? '' : 's'}`;
    }
  }
}

const PLAIN_WORD = /^[A-Za-z0-9_.:-]{1,64}$/;

/** A key as an error message may show it: quoted when it is a plain name, else described. */
export function describeKey(key: string): string {
  return PLAIN_WORD.test(key) ? `'${key}'` : `a key of ${key.length} characters`;
}

/** Levenshtein distance of two short strings. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/**
 * The known key a mistyped `key` most likely meant: the one spelled the same ignoring case, else
 * the nearest within an edit distance of 2 (and less than half the key's length); null when none.
 */
export function suggestKey(key: string, known: readonly string[]): string | null {
  const lower = key.toLowerCase();
  const sameCase = known.find((k) => k.toLowerCase() === lower);
  if (sameCase !== undefined) return sameCase;
  let best: string | null = null;
  let bestDistance = Math.min(2, Math.floor((key.length - 1) / 2));
  for (const k of known) {
    const d = editDistance(lower, k.toLowerCase());
    if (d <= bestDistance && (best === null || d < bestDistance)) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

/**
 * Rejects the keys of `object` (whose value is not undefined) that are not in `known`: ERR_ARG
 * `${where}: unknown key 'x' (did you mean 'y'?); known keys: …`. `prefix` names the object's
 * place in a larger config ('ffn.' gives 'ffn.capacityfactor').
 */
export function rejectUnknownKeys(object: object, known: readonly string[], where: string, prefix = ''): void {
  for (const [key, value] of Object.entries(object)) {
    if (value === undefined || known.includes(key)) continue;
    const suggestion = suggestKey(key, known);
    const hint = suggestion === null ? '' : ` (did you mean '${prefix}${suggestion}'?)`;
    const shown = describeKey(key);
    throw new MomaError('ERR_ARG', `${where}: unknown key ${shown.startsWith("'") ? `'${prefix}${key}'` : `${shown} in ${prefix === '' ? 'the config' : prefix.slice(0, -1)}`}${hint}; known keys: ${known.join(', ')}`);
  }
}
