#!/usr/bin/env node
// prebuildify's --node-gyp stand-in (scripts/prebuild.js passes it): prebuildify runs
//   <this> rebuild --target=<node version> --devdir=<dir> --arch=<arch> --release|--debug
// in its working folder and then takes the addon and the shared libraries beside it from
// <working folder>/build/Release. This runs cmake-js on the moma sources instead, with that folder
// as cmake-js's output, building the addon target only (with the gloo plugin it depends on; not
// the native test and benchmark). --target and --devdir are not needed: the addon is built against Node-API
// (node-api-headers), not one Node version's headers. MOMA_PREBUILD_CUDA (ON|OFF, default ON) and
// MOMA_PREBUILD_CMAKE_ARGS (more cmake-js options, space-separated, e.g. a toolchain file for a
// cross build) come from scripts/prebuild.js's environment.
'use strict';
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
if (args[0] !== 'rebuild') {
  console.error(`prebuild-cmake-js: expected prebuildify's "rebuild" call, got: ${args.join(' ')}`);
  process.exit(2);
}
const option = (name) => {
  const hit = args.find((a) => a.startsWith(`--${name}=`));
  return hit === undefined ? undefined : hit.slice(name.length + 3);
};

const cuda = (process.env.MOMA_PREBUILD_CUDA || 'ON').toUpperCase();
if (cuda !== 'ON' && cuda !== 'OFF') {
  console.error(`prebuild-cmake-js: MOMA_PREBUILD_CUDA must be ON or OFF, got '${process.env.MOMA_PREBUILD_CUDA}'`);
  process.exit(2);
}
const jobs = String(os.availableParallelism ? os.availableParallelism() : os.cpus().length);
const cmakeJsArgs = [
  'rebuild',
  '--directory', root,
  '--out', path.resolve(process.cwd(), 'build'),
  '--parallel', jobs,
  '--target', 'moma',
  `--CDMOMA_CUDA=${cuda}`,
];
if (option('arch') !== undefined) cmakeJsArgs.push('--arch', option('arch'));
if (args.includes('--debug')) cmakeJsArgs.push('--debug');
const extra = (process.env.MOMA_PREBUILD_CMAKE_ARGS || '').split(/\s+/).filter(Boolean);
cmakeJsArgs.push(...extra);

console.log(`prebuild-cmake-js: cmake-js ${cmakeJsArgs.join(' ')}`);
const result = spawnSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js', { paths: [root] }), ...cmakeJsArgs], {
  cwd: root,
  stdio: 'inherit',
});
process.exit(result.status === null ? 1 : result.status);
