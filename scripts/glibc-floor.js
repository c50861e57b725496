#!/usr/bin/env node
// What a built shared object needs from the C and C++ runtime libraries, read from its dynamic
// symbol table with `objdump -T` (binutils): the symbol versions it requires, by family (GLIBC_,
// GLIBCXX_, CXXABI_, GCC_), and the symbols whose GLIBC_ version is newer than the floor the
// release binaries promise (GLIBC_2.28, csrc/compat/glibc_compat.cc).
//   node scripts/glibc-floor.js FILE...   prints each file's newest GLIBC_ version; exits 1 naming
//                                         the offending symbols when one is above the floor
// Used by scripts/prebuild.js (a prebuild above the floor is not written) and
// test/glibc_floor.test.ts.
'use strict';
const { execFileSync } = require('child_process');

const GLIBC_FLOOR = '2.28';

function compareVersions(a, b) {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] || 0) - (y[i] || 0);
    if (d !== 0) return d;
  }
  return 0;
}

function dynamicSymbols(file) {
  try {
    return execFileSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    if (err && err.code === 'ENOENT') throw new Error('objdump not found: install binutils (apt-get install binutils) to check the glibc floor');
    throw new Error(`objdump -T ${file} failed: ${String(err && err.stderr ? err.stderr : err).trim()}`);
  }
}

// { file, newestGlibc, aboveFloor: [{ symbol, version }], families: { GLIBC: [...], GLIBCXX: [...], ... } }
// where the symbols are those the object imports (undefined) or defines with that version.
function glibcRequirements(file, floor = GLIBC_FLOOR) {
  const families = {};
  const aboveFloor = [];
  let newestGlibc = null;
  for (const line of dynamicSymbols(file).split('\n')) {
    const m = /\s\(?((GLIBC|GLIBCXX|CXXABI|GCC)_([0-9][0-9.]*|PRIVATE))\)?\s+(\S+)\s*$/.exec(line);
    if (!m) continue;
    const [, version, family, number, symbol] = m;
    (families[family] = families[family] || new Set()).add(version);
    if (family !== 'GLIBC') continue;
    if (number === 'PRIVATE') {
      aboveFloor.push({ symbol, version });
      continue;
    }
    if (newestGlibc === null || compareVersions(number, newestGlibc) > 0) newestGlibc = number;
    if (compareVersions(number, floor) > 0) aboveFloor.push({ symbol, version });
  }
  aboveFloor.sort((a, b) => compareVersions(b.version.replace('GLIBC_', ''), a.version.replace('GLIBC_', '')) || a.symbol.localeCompare(b.symbol));
  const sorted = {};
  for (const [family, set] of Object.entries(families)) sorted[family] = [...set].sort((a, b) => compareVersions(a.replace(/^[A-Z]+_/, ''), b.replace(/^[A-Z]+_/, '')));
  return { file, floor, newestGlibc, aboveFloor, families: sorted };
}

function describeOffenders(report) {
  return report.aboveFloor.map((o) => `${o.symbol}@${o.version}`).join(', ');
}

module.exports = { GLIBC_FLOOR, compareVersions, glibcRequirements, describeOffenders };

if (require.main === module) {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error('usage: node scripts/glibc-floor.js FILE...');
    process.exit(2);
  }
  let failed = false;
  for (const file of files) {
    const report = glibcRequirements(file);
    if (report.aboveFloor.length > 0) {
      failed = true;
      console.error(`${file}: needs GLIBC_${report.newestGlibc}, above the floor GLIBC_${GLIBC_FLOOR}: ${describeOffenders(report)}`);
    } else {
      console.log(`${file}: needs at most GLIBC_${report.newestGlibc} (floor GLIBC_${GLIBC_FLOOR})`);
    }
  }
  process.exit(failed ? 1 : 0);
}
