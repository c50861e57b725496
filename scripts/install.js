#!/usr/bin/env node
// npm install hook: use the prebuilt binary when one for this platform loads; otherwise build the
// addon from source with cmake-js (CPU only without nvcc, CPU + CUDA with it).
// MOMA_BUILD_FROM_SOURCE=1 forces the source build.
'use strict';
const path = require('path');
const os = require('os');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');

function prebuiltLoads() {
  try {
    const file = require('node-gyp-build').path(root);
    if (!file.split(path.sep).includes('prebuilds')) return false;
    require(file);
    console.log(`moma: using prebuilt binary ${path.relative(root, file)}`);
    return true;
  } catch {
    return false;
  }
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
