/**
 * The file helpers every layer above shares, so that a crash never leaves a torn file and a bad
 * file always fails the same way:
 *   writeFileAtomic    temp file in the same folder, fsync, rename
 *   writeJsonAtomic    the same for a value as pretty-printed JSON (2 spaces, a final newline)
 *   replaceDirAtomic   moves a finished temporary folder into place, replacing what stood there
 *   readJson           reads and parses a JSON file; ERR_FILE (or the code asked for) naming the
 *                      operation, the file and the cause
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
export function replaceDirAtomic(partial: string, target: string): void {
  const old = `${path.resolve(target)}.old-${process.pid}`;
  if (fs.existsSync(target)) fs.renameSync(target, old);
  fs.renameSync(partial, target);
  fs.rmSync(old, { recursive: true, force: true });
}

/**
 * Reads and parses a JSON file. A file that cannot be read fails as `<op>: cannot read <file>
 * (<cause>)`, text that is not JSON as `<op>: <file>: not valid JSON (<cause>)`, both with `code`.
 */
export function readJson(file: string, op: string, code: MomaErrorCode = 'ERR_FILE'): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new MomaError(code, `${op}: cannot read ${file} (${(err as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new MomaError(code, `${op}: ${file}: not valid JSON (${(err as Error).message})`);
  }
}
