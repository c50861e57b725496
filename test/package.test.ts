/**
 * The packed tarball with a prebuilt binary installs into an empty project without compiling
 * (a failing `cmake` is first on PATH) and loads and computes there.
 */
import { execFileSync } from 'child_process';
import * as path from 'path';

interface PackReport {
  usedPrebuilt: boolean;
  cmakeCalled: boolean;
  buildDirCreated: boolean;
  binary: { kind: string; path: string };
  backends: string[];
  values: number[];
}

test('npm pack tarball installs from its prebuild and loads without compiling', () => {
  const script = path.join(__dirname, '..', 'scripts', 'pack-check.js');
  const out = execFileSync(process.execPath, [script], { encoding: 'utf8', timeout: 300_000 });
  const report = JSON.parse(out.trim().split('\n').pop() as string) as PackReport;
  expect(report.usedPrebuilt).toBe(true);
  expect(report.cmakeCalled).toBe(false);
  expect(report.buildDirCreated).toBe(false);
  expect(report.binary.kind).toBe('prebuilt');
  expect(report.binary.path).toMatch(/node_modules[\\/]moma[\\/]prebuilds[\\/]linux-x64[\\/]moma\.napi\.node$/);
  expect(report.values).toEqual([2, 4, 6]);
}, 300_000);
