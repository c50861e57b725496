/**
 * Text that came from a model or a file, made safe to print: C0 and C1 control characters (escape
 * sequences, carriage returns, bells, …), DEL, and the Unicode line and paragraph separators are
 * shown as escapes (`\n`, `\t`, `\x1b`, `\u2028`) instead of reaching the terminal, so generated or
 * stored text can never move the cursor, recolour the screen or hide what precedes it. Everything
 * else, non-ASCII letters included, prints as it is.
 */
const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t', '\\': '\\\\' };

// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\\]/g;

export function printable(text: string): string {
  return String(text).replace(UNSAFE, (c) => {
    const named = NAMED[c];
    if (named !== undefined) return named;
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}
