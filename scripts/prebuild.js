#!/usr/bin/env node
// npm run prebuild: builds the release addon (CPU + CUDA, fatbin for sm_80/86/89/90 + PTX for
// sm_90, cudart static) into build-prebuild/ and copies it to prebuilds/linux-x64/moma.napi.node,
// where node-gyp-build finds it, with the gloo collectives plugin libmoma_gloo.so beside it (the
// addon dlopens it from its own folder; it needs Debian's libgloo0 at run time, only for CPU
// collectives). MOMA_CUDA_ARCHS overrides the architecture list.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const archs = process.env.MOMA_CUDA_ARCHS || '80-real;86-real;89-real;90';
const out = path.join(root, 'build-prebuild');
const jobs = String(os.availableParallelism ? os.availableParallelism() : os.cpus().length);

console.log(`moma prebuild: CUDA architectures ${archs}`);
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const result = spawnSync(process.execPath, [cmakeJs, 'rebuild', '--out', out, '--parallel', jobs, '--CDMOMA_CUDA=ON'], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, MOMA_CUDA_ARCHS: archs },
});
if (result.status !== 0) process.exit(result.status === null ? 1 : result.status);

const target = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
fs.mkdirSync(target, { recursive: true });
const dest = path.join(target, 'moma.napi.node');
fs.copyFileSync(path.join(out, 'Release', 'moma.node'), dest);
console.log(`moma prebuild: wrote ${path.relative(root, dest)} (${(fs.statSync(dest).size / 2 ** 20).toFixed(1)} MiB)`);
const plugin = path.join(out, 'Release', 'libmoma_gloo.so');
if (fs.existsSync(plugin)) {
  fs.copyFileSync(plugin, path.join(target, 'libmoma_gloo.so'));
  console.log(`moma prebuild: wrote ${path.relative(root, path.join(target, 'libmoma_gloo.so'))} (CPU collectives over gloo)`);
} else {
  console.log('moma prebuild: gloo not found (apt-get install libgloo-dev): the prebuild has no CPU collectives plugin');
}
