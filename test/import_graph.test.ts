/**
 * The import graph of lib/ (.dependency-cruiser.cjs): no circular imports, no import from a
 * layer to a layer above it, every file in a layer, nothing from tests or build output. Runs the
 * dependency-cruiser CLI as `npx depcruise lib --config .dependency-cruiser.cjs` does and
 * asserts that it read every source file of lib/ and found no violation.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.join(__dirname, '..');

interface Violation {
  rule: { name: string; severity: string };
  from: string;
  to: string;
  cycle?: { name: string }[];
}

interface CruiseResult {
  modules: { source: string }[];
  summary: { violations: Violation[]; error: number; warn: number; totalCruised: number };
}

function librarySources(folder: string): string[] {
  return fs.readdirSync(path.join(root, folder), { withFileTypes: true }).flatMap((entry) => {
    const relative = `${folder}/${entry.name}`;
    if (entry.isDirectory()) return librarySources(relative);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [relative] : [];
  });
}

function shown(v: Violation): string {
  const via = v.cycle !== undefined && v.cycle.length > 0 ? ` (cycle: ${[v.from, ...v.cycle.map((c) => c.name)].join(' -> ')})` : '';
  return `${v.rule.name}: ${v.from} -> ${v.to}${via}`;
}

test('lib/ has no import cycles and no upward imports between its layers', () => {
  const cli = path.join(root, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs');
  const run = spawnSync(process.execPath, [cli, 'lib', '--config', '.dependency-cruiser.cjs', '--output-type', 'json'], {
    cwd: root, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024,
  });
  if (run.error !== undefined) throw run.error;
  let result: CruiseResult;
  try {
    result = JSON.parse(run.stdout) as CruiseResult;
  } catch {
    throw new Error(`dependency-cruiser gave no JSON (exit ${String(run.status)}): ${run.stderr}`);
  }
  const cruised = new Set(result.modules.map((m) => m.source));
  expect(librarySources('lib').filter((file) => !cruised.has(file))).toEqual([]);
  expect(result.summary.violations.map(shown)).toEqual([]);
  expect(result.summary.error).toBe(0);
  expect(run.status).toBe(0);
}, 120_000);
