#!/usr/bin/env node
// npm run prebuild: the release binary, made by prebuildify (--napi --strip --tag-libc) driving
// cmake-js through scripts/prebuild-cmake-js.js. It builds in build-prebuild/ (the development
// build in build/ is left alone) and, once the binary passed its checks, replaces
// prebuilds/<platform>-<arch>/ with prebuilds/<platform>-<arch>/moma.glibc.node, where
// node-gyp-build finds it, with the gloo collectives plugin libmoma_gloo.so beside it (the addon
// dlopens it from its own folder; it needs Debian's libgloo0 at run time, only for CPU
// collectives). On Linux the addon must need at most GLIBC_2.28 (scripts/glibc-floor.js): a
// binary above that floor fails the prebuild and leaves prebuilds/ as it was.
// Environment: MOMA_CUDA_ARCHS (default "80-real;86-real;89-real;90": sm_80/86/89/90 code and
// PTX for sm_90); MOMA_PREBUILD_CUDA=OFF for a CPU-only binary; PREBUILD_ARCH,
// PREBUILD_STRIP_BIN and MOMA_PREBUILD_CMAKE_ARGS for a cross build (e.g. linux-arm64:
// PREBUILD_ARCH=arm64 PREBUILD_STRIP_BIN=aarch64-linux-gnu-strip
// MOMA_PREBUILD_CMAKE_ARGS=--CDCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64.cmake MOMA_PREBUILD_CUDA=OFF).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');
const { GLIBC_FLOOR, glibcRequirements, describeOffenders } = require('./glibc-floor.js');

const root = path.resolve(__dirname, '..');
const archs = process.env.MOMA_CUDA_ARCHS || '80-real;86-real;89-real;90';
const cuda = (process.env.MOMA_PREBUILD_CUDA || 'ON').toUpperCase();
const arch = process.env.PREBUILD_ARCH || os.arch();
const work = path.join(root, 'build-prebuild');
const folder = `${process.platform}-${arch}`;
const staged = path.join(work, 'prebuilds', folder);
const target = path.join(root, 'prebuilds', folder);

console.log(`moma prebuild: ${folder}, CUDA ${cuda === 'OFF' ? 'off' : `on (architectures ${archs})`}`);
fs.rmSync(staged, { recursive: true, force: true });
fs.mkdirSync(work, { recursive: true });

const prebuildify = require.resolve('prebuildify/bin.js', { paths: [root] });
const result = spawnSync(process.execPath, [
  prebuildify,
  '--napi', '--strip', '--tag-libc',
  '--name', 'moma',
  '--arch', arch,
  '--out', work,
  '--node-gyp', path.join(__dirname, 'prebuild-cmake-js.js'),
], {
  cwd: work,
  stdio: 'inherit',
  env: { ...process.env, MOMA_CUDA_ARCHS: archs, MOMA_PREBUILD_CUDA: cuda },
});
if (result.status !== 0) process.exit(result.status === null ? 1 : result.status);

const built = fs.readdirSync(staged).map((name) => path.join(staged, name));
const addons = built.filter((f) => f.endsWith('.node'));
if (addons.length !== 1) {
  console.error(`moma prebuild: expected one addon in ${path.relative(root, staged)}, found: ${built.map((f) => path.basename(f)).join(', ') || 'nothing'}`);
  process.exit(1);
}
if (process.platform === 'linux') {
  const report = glibcRequirements(addons[0]);
  if (report.aboveFloor.length > 0) {
    console.error(`moma prebuild: ${path.relative(root, addons[0])} needs GLIBC_${report.newestGlibc}, above the floor GLIBC_${GLIBC_FLOOR}: ${describeOffenders(report)}`);
    console.error('moma prebuild: bind them to older versions in csrc/compat (glibc_rebind.def, glibc_compat.cc)');
    process.exit(1);
  }
  console.log(`moma prebuild: ${path.relative(root, addons[0])} needs at most GLIBC_${report.newestGlibc} (floor GLIBC_${GLIBC_FLOOR})`);
}
// Replace the whole folder: a binary left from an earlier prebuild would be found by
// node-gyp-build beside the new one.
fs.rmSync(target, { recursive: true, force: true });
fs.mkdirSync(path.dirname(target), { recursive: true });
fs.renameSync(staged, target);
const written = fs.readdirSync(target).map((name) => path.join(target, name));
for (const file of written) {
  console.log(`moma prebuild: wrote ${path.relative(root, file)} (${(fs.statSync(file).size / 2 ** 20).toFixed(1)} MiB)`);
}
if (!written.some((f) => path.basename(f) === 'libmoma_gloo.so')) {
  console.log('moma prebuild: gloo not found (apt-get install libgloo-dev): the prebuild has no CPU collectives plugin');
}
