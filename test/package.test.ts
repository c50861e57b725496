/**
 * The packed tarball with a prebuilt binary installs into an empty project without compiling
 * (a failing `cmake` is first on PATH) and loads and computes there.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

interface PackReport {
  usedPrebuilt: boolean;
  cmakeCalled: boolean;
  buildDirCreated: boolean;
  binary: { kind: string; path: string };
  backends: string[];
  values: number[];
  sourceMaps: number;
  trainLosses: number[];
}

test('npm pack tarball installs from its prebuild and loads without compiling', () => {
  const script = path.join(__dirname, '..', 'scripts', 'pack-check.js');
  const out = execFileSync(process.execPath, [script], { encoding: 'utf8', timeout: 300_000 });
  const report = JSON.parse(out.trim().split('\n').pop() as string) as PackReport;
  expect(report.usedPrebuilt).toBe(true);
  expect(report.cmakeCalled).toBe(false);
  expect(report.buildDirCreated).toBe(false);
  expect(report.binary.kind).toBe('prebuilt');
  expect(report.binary.path).toMatch(/node_modules[\\/]moma[\\/]prebuilds[\\/]linux-x64[\\/]moma\.glibc\.node$/);
  expect(report.sourceMaps).toBe(0);
  expect(report.values).toEqual([2, 4, 6]);
  // the installed CLI trains (3 steps, every compiler stubbed out): finite losses near ln(vocab) at the start
  expect(report.trainLosses).toHaveLength(3);
  for (const loss of report.trainLosses) expect(loss).toBeGreaterThan(1);
  for (const loss of report.trainLosses) expect(loss).toBeLessThan(10);
}, 300_000);

test('when no binary loads, one MomaError lists what was tried and the likely fixes', () => {
  const fs = require('fs') as typeof import('fs');
  const os = require('os') as typeof import('os');
  const root = path.join(__dirname, '..');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-noload-'));
  try {
    fs.cpSync(path.join(root, 'dist'), path.join(dir, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
    const probe = `try { require('./dist').inspect(); } catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); }`;
    const out = execFileSync(process.execPath, ['-e', probe], { cwd: dir, encoding: 'utf8' });
    const err = JSON.parse(out.trim()) as { name: string; code: string; message: string };
    expect(err.name).toBe('MomaError');
    expect(err.code).toBe('ERR_LOAD');
    expect(err.message).toContain(path.join(dir, 'build', 'Release', 'moma.node'));
    expect(err.message).toContain(path.join(dir, 'prebuilds', `${process.platform}-${process.arch}`));
    expect(err.message).toMatch(/npm rebuild moma/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('from a clone, `npx moma` runs the built CLI (dist/cli/main.js is executable with a node shebang)', () => {
  const root = path.join(__dirname, '..');
  const main = path.join(root, 'dist', 'cli', 'main.js');
  expect(fs.statSync(main).mode & 0o111).toBe(0o111);
  expect(fs.readFileSync(main, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
  const report = JSON.parse(execFileSync('npx', ['--no-install', 'moma', 'inspect', '--json'], { cwd: root, encoding: 'utf8' })) as { version: string };
  expect(report.version).toBe(JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version);
}, 60000);
