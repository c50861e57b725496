#!/usr/bin/env node
// npm install hook: use the prebuilt binary when one for this platform loads; otherwise say why
// not (no binary for this platform, a C library too old for it, the loader's error) and build the
// addon from source with cmake-js (CPU only without nvcc, CPU + CUDA with it).
// MOMA_BUILD_FROM_SOURCE=1 forces the source build.
// The reasons go to stderr: npm shows an install script's output when the script fails (and
// always with --foreground-scripts), so a failed source build comes with the prebuild's story.
'use strict';
const path = require('path');
const os = require('os');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
// The glibc the prebuilt Linux binaries need (scripts/glibc-floor.js, csrc/compat/glibc_compat.cc).
const GLIBC_FLOOR = '2.28';

// The ABI the JS side expects (lib/native_tables.ts); absent in a clone before tsc has run, where
// there is no prebuilt binary either.
function expectedAbi() {
  try {
    return require(path.join(root, 'dist', 'native_tables.js')).ABI_VERSION;
  } catch {
    return null;
  }
}

// This process's glibc version ('2.31'), or null on musl and other C libraries.
function runtimeGlibc() {
  if (process.platform !== 'linux' || !process.report) return null;
  const header = process.report.getReport().header;
  return header && header.glibcVersionRuntime ? header.glibcVersionRuntime : null;
}

function olderThan(version, floor) {
  const a = version.split('.').map(Number);
  const b = floor.split('.').map(Number);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] || 0) !== (b[i] || 0)) return (a[i] || 0) < (b[i] || 0);
  }
  return false;
}

// Returns null when the prebuilt binary loads (and says so), else the reason it cannot be used.
function prebuiltProblem() {
  const platform = `${process.platform}-${process.arch}`;
  let file;
  try {
    file = require('node-gyp-build').path(root);
  } catch (err) {
    const libc = process.platform === 'linux' && runtimeGlibc() === null ? ' with a C library other than glibc (musl?)' : '';
    return `there is no prebuilt binary for ${platform}${libc} (${String(err && err.message ? err.message : err).split('\n')[0]})`;
  }
  if (!file.split(path.sep).includes('prebuilds')) return `${path.relative(root, file)} is a source build: it is brought up to date`;
  const shown = path.relative(root, file);
  try {
    const binary = require(file);
    const want = expectedAbi();
    if (want !== null && binary.abiVersion !== want) {
      return `the prebuilt binary ${shown} has ABI ${binary.abiVersion}, this JS expects ${want}`;
    }
  } catch (err) {
    const reason = err && err.message ? err.message.split('\n')[0] : String(err);
    const glibc = runtimeGlibc();
    const floor = glibc !== null && olderThan(glibc, GLIBC_FLOOR)
      ? ` This system has glibc ${glibc}; the prebuilt binary needs glibc ${GLIBC_FLOOR} or newer (RHEL/Rocky 8, Debian 10, Ubuntu 20.04 and later).`
      : '';
    return `the prebuilt binary ${shown} does not load here: ${reason}.${floor}`;
  }
  console.log(`moma: using prebuilt binary ${shown}`);
  return null;
}

let problem = 'MOMA_BUILD_FROM_SOURCE=1 asks for a source build';
if (process.env.MOMA_BUILD_FROM_SOURCE !== '1') {
  problem = prebuiltProblem();
  if (problem === null) process.exit(0);
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const jobs = String(Math.max(1, os.availableParallelism ? os.availableParallelism() : os.cpus().length));
console.error(`moma: ${problem}`);
console.error(`moma: building the native addon from source (cmake-js, ${jobs} jobs; a few minutes, more with CUDA)`);
const result = spawnSync(process.execPath, [cmakeJs, 'compile', '--parallel', jobs], { cwd: root, stdio: 'inherit' });
if (result.status !== 0) {
  console.error(`moma: the source build failed. It needs CMake >= 3.20 and a C++17 compiler (and nvcc for CUDA). It was tried because ${problem}`);
  process.exit(result.status === null ? 1 : result.status);
}
