/**
 * The glibc floor: the addon (build/Release/moma.node as `npm install` builds it, and every
 * prebuilt binary under prebuilds/) needs at most GLIBC_2.28, so it loads on RHEL/Rocky 8,
 * Debian 10, Ubuntu 20.04 and newer, and takes no libstdc++ / libgcc_s symbol versions from the
 * system (both are linked in statically). Read from the dynamic symbol table with `objdump -T`.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

interface FloorReport {
  file: string;
  floor: string;
  newestGlibc: string | null;
  aboveFloor: { symbol: string; version: string }[];
  families: Record<string, string[]>;
}
interface FloorModule {
  GLIBC_FLOOR: string;
  compareVersions(a: string, b: string): number;
  glibcRequirements(file: string, floor?: string): FloorReport;
  describeOffenders(report: FloorReport): string;
}

const root = path.join(__dirname, '..');
const floor = require(path.join(root, 'scripts', 'glibc-floor.js')) as FloorModule;

function builtBinaries(): string[] {
  const files: string[] = [];
  const built = path.join(root, 'build', 'Release', 'moma.node');
  if (fs.existsSync(built)) files.push(built);
  const prebuilds = path.join(root, 'prebuilds');
  if (fs.existsSync(prebuilds)) {
    for (const platform of fs.readdirSync(prebuilds)) {
      if (!platform.startsWith('linux-')) continue;
      for (const name of fs.readdirSync(path.join(prebuilds, platform))) {
        if (name.endsWith('.node')) files.push(path.join(prebuilds, platform, name));
      }
    }
  }
  return files;
}

const linux = process.platform === 'linux';

(linux ? describe : describe.skip)('glibc floor', () => {
  const files = builtBinaries();

  test('there is a built addon to check', () => {
    expect(files.length).toBeGreaterThan(0);
  });

  test.each(files.map((f) => [path.relative(root, f), f]))('%s needs at most GLIBC_2.28', (_name, file) => {
    const report = floor.glibcRequirements(file);
    expect(floor.GLIBC_FLOOR).toBe('2.28');
    expect(report.newestGlibc).not.toBeNull();
    // the offenders, by name, in the failure message
    expect({ file: report.file, aboveFloor: floor.describeOffenders(report) }).toEqual({ file, aboveFloor: '' });
    expect(floor.compareVersions(report.newestGlibc as string, '2.28')).toBeLessThanOrEqual(0);
  });

  test.each(files.map((f) => [path.relative(root, f), f]))('%s needs no libstdc++ or libgcc_s from the system', (_name, file) => {
    const { families } = floor.glibcRequirements(file);
    expect({ GLIBCXX: families.GLIBCXX ?? [], CXXABI: families.CXXABI ?? [], GCC: families.GCC ?? [] }).toEqual({ GLIBCXX: [], CXXABI: [], GCC: [] });
  });

  test('the check names what a library linked without the floor needs above GLIBC_2.28', () => {
    // On glibc >= 2.34 a plain link binds pthread_create to GLIBC_2.34 (merged into libc): the
    // checker must flag it. Older build machines bind it below the floor, so there is nothing to see.
    const runtime = (process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header.glibcVersionRuntime;
    if (runtime === undefined || floor.compareVersions(runtime, '2.34') < 0) return;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-glibc-'));
    try {
      const source = path.join(dir, 'plain.c');
      const lib = path.join(dir, 'libplain.so');
      fs.writeFileSync(source, '#include <pthread.h>\nstatic void *run(void *a) { return a; }\nint start(pthread_t *t) { return pthread_create(t, 0, run, 0); }\n');
      execFileSync('cc', ['-shared', '-fPIC', '-o', lib, source, '-pthread'], { stdio: 'pipe' });
      const report = floor.glibcRequirements(lib);
      expect(report.aboveFloor).toContainEqual({ symbol: 'pthread_create', version: 'GLIBC_2.34' });
      expect(floor.describeOffenders(report)).toContain('pthread_create@GLIBC_2.34');
      expect(floor.compareVersions(report.newestGlibc as string, '2.34')).toBeGreaterThanOrEqual(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('versions compare numerically', () => {
    expect(floor.compareVersions('2.2.5', '2.28')).toBeLessThan(0);
    expect(floor.compareVersions('2.29', '2.28')).toBeGreaterThan(0);
    expect(floor.compareVersions('2.28', '2.28.0')).toBe(0);
    expect(floor.compareVersions('2.3.4', '2.17')).toBeLessThan(0);
  });
});
