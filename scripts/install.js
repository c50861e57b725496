#!/usr/bin/env node
// npm install hook: use the prebuilt binary when one for this platform loads; otherwise build the
// addon from source with cmake-js (CPU only without nvcc, CPU + CUDA with it).
// MOMA_BUILD_FROM_SOURCE=1 forces the source build.
'use strict';
const path = require('path');
const os = require('os');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');

// The ABI the JS side expects (lib/native_tables.ts); absent in a clone before tsc has run, where
// there is no prebuilt binary either.
function expectedAbi() {
  try {
    return require(path.join(root, 'dist', 'native_tables.js')).ABI_VERSION;
  } catch {
    return null;
  }
}

function prebuiltLoads() {
  let file;
  try {
    file = require('node-gyp-build').path(root);
  } catch {
    return false;  // no binary for this platform
  }
  if (!file.split(path.sep).includes('prebuilds')) return false;
  try {
    const binary = require(file);
    const want = expectedAbi();
    if (want !== null && binary.abiVersion !== want) {
      console.log(`moma: the prebuilt binary ${path.relative(root, file)} has ABI ${binary.abiVersion}, this JS expects ${want}`);
      return false;
    }
  } catch (err) {
    console.log(`moma: the prebuilt binary ${path.relative(root, file)} does not load here: ${err && err.message ? err.message.split('\n')[0] : err}`);
    return false;
  }
  console.log(`moma: using prebuilt binary ${path.relative(root, file)}`);
  return true;
}

if (process.env.MOMA_BUILD_FROM_SOURCE !== '1' && prebuiltLoads()) process.exit(0);

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const jobs = String(Math.max(1, os.availableParallelism ? os.availableParallelism() : os.cpus().length));
console.log(`moma: building the native addon from source (cmake-js, ${jobs} jobs)`);
const result = spawnSync(process.execPath, [cmakeJs, 'compile', '--parallel', jobs], { cwd: root, stdio: 'inherit' });
if (result.status !== 0) {
  console.error('moma: the source build failed. It needs CMake >= 3.20 and a C++17 compiler (and nvcc for CUDA).');
  process.exit(result.status === null ? 1 : result.status);
}
