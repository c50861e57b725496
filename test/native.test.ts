/**
 * Runs the native test executable (every CUDA kernel against the CPU kernel; CPU sanity checks
 * when no GPU is present), built next to the addon by `npm install`.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

function findExecutable(): string {
  const build = path.join(__dirname, '..', 'build');
  for (const candidate of ['moma_native_test', 'Release/moma_native_test']) {
    const file = path.join(build, candidate);
    if (fs.existsSync(file)) return file;
  }
  throw new Error(`moma_native_test not found under ${build}: run npm install (or npm run build:native)`);
}

test('native test executable: CUDA kernels match CPU kernels (CPU checks only without a GPU)', () => {
  const out = execFileSync(findExecutable(), [], { encoding: 'utf8', timeout: 600_000 });
  const summary = out.split('\n').map((l) => /^(\d+) passed, (\d+) failed/.exec(l.trim())).filter(Boolean).pop();
  expect(summary).toBeDefined();
  const [, passed, failed] = summary as RegExpExecArray;
  expect(Number(failed)).toBe(0);
  expect(Number(passed)).toBeGreaterThan(0);
  if (process.env.MOMA_TEST_DEVICES !== 'cuda' && /no CUDA device/.test(out)) {
    // eslint-disable-next-line no-console
    console.log('moma tests: no CUDA device visible; the native CUDA cases were skipped');
  }
}, 600_000);
