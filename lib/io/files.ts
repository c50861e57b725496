/**
 * The file helpers every layer above shares, so that a crash never leaves a torn file and a bad
 * file always fails the same way:
 *   writeFileAtomic    temp file in the same folder, fsync, rename
 *   writeJsonAtomic    the same for a value as pretty-printed JSON (2 spaces, a final newline)
 *   replaceDirAtomic   moves a finished temporary folder into place, replacing what stood there
 *   readJson           reads and parses a JSON file; ERR_FILE (or the code asked for) naming the
 *                      operation, the file and the cause (never the file's content)
 */
import * as fs from 'fs';
import * as path from 'path';
import { MomaError, MomaErrorCode } from '../errors';

/** Writes `data` to `file` atomically: a temp file in the same folder, fsync, rename (ERR_FILE naming the file on failure, no temp file left). */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    fs.mkdirSync(dir, { recursive: true });
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // the folder itself is unusable: there is no temp file to remove
    }
    throw new MomaError('ERR_FILE', `cannot write ${file} (${(err as Error).message})`);
  }
}

/** Writes `value` as JSON (2-space indent, final newline) to `file` atomically. */
export function writeJsonAtomic(file: string, value: unknown): void {
  writeFileAtomic(file, JSON.stringify(value, null, 2) + '\n');
}

/**
 * Moves the complete folder `partial` to `target`: a folder already at `target` is renamed aside
 * first and removed only after the new one is in place, so `target` is at every moment either the
 * old folder or the new one (a crash between the renames leaves `<target>.old-<pid>`).
 */
/** Checks an output folder may be written: absent, an empty folder, or (with force) a folder to replace. */
export function checkOutFolder(op: string, out: string, force: boolean): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(out);
  } catch {
    return;
  }
  if (!stat.isDirectory()) throw new MomaError('ERR_FILE', `${op}: --out ${out} exists and is not a folder`);
  if (fs.readdirSync(out).length > 0 && !force) throw new MomaError('ERR_FILE', `${op}: --out ${out} is not empty (pass --force to replace it)`);
}

export function replaceDirAtomic(partial: string, target: string): void {
  const old = `${path.resolve(target)}.old-${process.pid}`;
  if (fs.existsSync(target)) fs.renameSync(target, old);
  fs.renameSync(partial, target);
  fs.rmSync(old, { recursive: true, force: true });
}

/**
 * Reads and parses a JSON file. A file that cannot be read fails as `<op>: cannot read <file>
 * (<cause>)`, bytes that are not UTF-8 or text that is not JSON as `<op>: <file>: not valid JSON
 * (<where>)`, both with `code`. The messages never quote the file's content (jsonSyntaxProblem).
 */
export function readJson(file: string, op: string, code: MomaErrorCode = 'ERR_FILE'): unknown {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw new MomaError(code, `${op}: cannot read ${file} (${(err as Error).message})`);
  }
  let text: string;
  try {
    text = STRICT_UTF8.decode(bytes);
  } catch {
    throw new MomaError(code, `${op}: ${file}: not valid JSON (not UTF-8 text)`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new MomaError(code, `${op}: ${file}: not valid JSON (${jsonSyntaxProblem(err, text)})`);
  }
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Where JSON.parse of `text` failed, without quoting the text (V8's messages can hold a snippet
 * of it): 'a syntax error at line L, column C', or 'it ends early' at an unexpected end.
 */
export function jsonSyntaxProblem(err: unknown, text: string): string {
  const message = err instanceof Error ? err.message : '';
  if (message.startsWith('Unexpected end of JSON input')) return 'it ends early';
  const stated = /at position (\d+)/.exec(message);
  const offset = stated !== null ? Math.min(Number(stated[1]), text.length) : firstBadCharacter(text);
  if (offset < 0) return 'a syntax error';
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  const column = offset - before.lastIndexOf('\n');
  return `a syntax error at line ${line}, column ${column}`;
}

/**
 * The offset of the character JSON.parse stops at, found by bisection: a prefix that ends before
 * it parses or ends early (at its end); a prefix that holds it fails before its end. -1 when the
 * whole text does not fail so.
 */
function firstBadCharacter(text: string): number {
  const failsBefore = (length: number): boolean => {
    try {
      JSON.parse(text.slice(0, length));
      return false;
    } catch (e) {
      // cut inside a token ('[1.', '"\\u12') fails at the cut: that is ending early too
      const message = e instanceof Error ? e.message : '';
      const at = /at position (\d+)/.exec(message);
      return !message.startsWith('Unexpected end of JSON input') && !(at !== null && Number(at[1]) >= length);
    }
  };
  if (!failsBefore(text.length)) return -1;
  let lo = 0;  // the prefix of length lo does not fail (the empty one ends early)
  let hi = text.length;  // the prefix of length hi fails
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (failsBefore(mid)) hi = mid;
    else lo = mid;
  }
  return hi - 1;
}

/**
 * The names moma writes into run, checkpoint and shard-set folders for itself. A file name that
 * comes from a file (a tokenizer a vocab.json names, a file copied into a run) may be none of them,
 * so that copying it in can never overwrite the weights, the state or the records.
 */
export const RESERVED_FILE_NAMES: ReadonlySet<string> = new Set([
  'run.json', 'vocab.json', 'metrics.jsonl', 'report.html', 'report.svg', 'report.png', 'checkpoints',
  'config.json', 'trainer.json', 'model.safetensors', 'optimizer.safetensors', 'aux_routers.safetensors', 'aux_routers.json',
  'index.json', 'shards', 'checksums.json',
]);

/** Prefixes of reserved names: model and optimizer files, sharded ones included (optimizer.rank-…). */
const RESERVED_PREFIXES = ['model.', 'optimizer.'];

/**
 * Why `name` (read from a file) cannot name a file inside its folder, or null when it can: it must
 * be a plain file name (no folder part, not '.' or '..', no NUL or control characters, at most 255
 * bytes) and not one of RESERVED_FILE_NAMES.
 */
export function fileNameProblem(name: unknown): string | null {
  if (typeof name !== 'string' || name === '') return 'must be a non-empty file name';
  // eslint-disable-next-line no-control-regex
  if (name === '.' || name === '..' || /[/\\\u0000-\u001f\u007f]/.test(name) || Buffer.byteLength(name) > 255) {
    return 'must be a plain file name inside the folder (no folder part, no control characters)';
  }
  const lower = name.toLowerCase();
  if (RESERVED_FILE_NAMES.has(lower) || RESERVED_PREFIXES.some((p) => lower.startsWith(p))) return `is a name moma reserves for its own files (${lower})`;
  return null;
}
