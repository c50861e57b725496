/**
 * valgrind (memcheck) over moma's error paths, a worker_threads Worker and process exit
 * (test/fixtures/valgrind/error_paths.js). Node's own reports (V8's conservative stack scan reads
 * uninitialised stack words) are not ours; every report whose stack passes through moma's addon or
 * plugin fails the test: invalid reads or writes, mismatched allocators, uses of freed memory.
 * Skipped, saying so, where valgrind is not installed (.ci/run installs it).
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { ensureDist } from './support/cli';

const root = path.join(__dirname, '..');
const haveValgrind = spawnSync('valgrind', ['--version']).status === 0;
if (!haveValgrind) console.log('valgrind test skipped: valgrind is not installed (apt-get install valgrind)');
const testIf = haveValgrind ? test : test.skip;

/** The reports in a valgrind log: each a headline and its stack lines. */
function reports(log: string): string[][] {
  const out: string[][] = [];
  let current: string[] | null = null;
  for (const line of log.split('\n')) {
    const m = /^==\d+== (.*)$/.exec(line);
    if (m === null) continue;
    const text = m[1]!;
    if (/^(Invalid|Mismatched|Conditional jump|Use of uninitialised|Syscall param|Source and destination overlap|Argument|Jump to)/.test(text)) {
      current = [text];
      out.push(current);
    } else if (text.trim() === '') {
      current = null;
    } else if (current !== null) {
      current.push(text.trim());
    }
  }
  return out;
}

testIf('no memcheck report passes through moma on error paths, in a worker, and at exit', () => {
  ensureDist();
  const result = spawnSync('valgrind', ['--leak-check=no', '--num-callers=30', process.execPath, path.join(root, 'test', 'fixtures', 'valgrind', 'error_paths.js'), path.join(root, 'dist')], {
    encoding: 'utf8', timeout: 600_000, env: { ...process.env, MOMA_DEVICE: 'cpu' },
  });
  expect(result.stdout.split('\n').filter(Boolean)).toEqual(['sync ERR_SHAPE', 'worker thread ERR_RANGE', 'poisoned ERR_RANGE', 'in worker 1', 'done 12']);
  const ours = reports(result.stderr).filter((r) => r.some((line) => /moma\.node|libmoma_gloo|moma::/.test(line)));
  expect(ours.map((r) => r.slice(0, 6).join('\n'))).toEqual([]);
  expect(result.stderr).toContain('ERROR SUMMARY');
}, 900_000);

test('the report parser finds a report and its stack', () => {
  const log = ['==1== Mismatched free() / delete / delete []', '==1==    at 0x1: free', '==1==    by 0x2: moma::f() (in /x/moma.node)', '==1== ', '==1== HEAP SUMMARY:'].join('\n');
  expect(reports(log)).toEqual([['Mismatched free() / delete / delete []', 'at 0x1: free', 'by 0x2: moma::f() (in /x/moma.node)']]);
});
