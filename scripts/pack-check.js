#!/usr/bin/env node
// Proves that the packed tarball, with a prebuilt binary, installs into an empty project and loads
// without compiling anything:
//   1. stage the package's files with a prebuild (prebuilds/ as is, or build/Release/moma.node when
//      there is none yet) and `npm pack` it;
//   2. `npm install` the tarball into an empty project with a `cmake` on PATH that fails loudly,
//      so any attempt to compile would break the install;
//   3. load it there, run an op and print a JSON report (last line of stdout).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-pack-'));
const npm = (args, cwd, env) => execFileSync('npm', args, { cwd, env: env || process.env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

// 1. stage and pack
const stage = path.join(work, 'stage');
fs.mkdirSync(stage);
for (const entry of pkg.files) {
  const src = path.join(root, entry);
  if (fs.existsSync(src)) fs.cpSync(src, path.join(stage, entry), { recursive: true });
}
fs.copyFileSync(path.join(root, 'package.json'), path.join(stage, 'package.json'));
const prebuildDir = path.join(stage, 'prebuilds', `${process.platform}-${process.arch}`);
if (!fs.existsSync(prebuildDir)) {
  const built = path.join(root, 'build', 'Release', 'moma.node');
  if (!fs.existsSync(built)) throw new Error('no prebuilds/ and no build/Release/moma.node: run npm install or npm run prebuild first');
  fs.mkdirSync(prebuildDir, { recursive: true });
  fs.copyFileSync(built, path.join(prebuildDir, 'moma.napi.node'));
}
const tarball = path.join(stage, npm(['pack', '--ignore-scripts', '--silent'], stage).trim().split('\n').pop());

// 2. install into an empty project; a failing cmake on PATH catches any compile attempt
const project = path.join(work, 'project');
const fakeBin = path.join(work, 'fake-bin');
fs.mkdirSync(project);
fs.mkdirSync(fakeBin);
const marker = path.join(work, 'cmake-was-called');
fs.writeFileSync(path.join(fakeBin, 'cmake'), `#!/bin/sh\ntouch ${marker}\necho "cmake must not run" >&2\nexit 1\n`, { mode: 0o755 });
fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'moma-pack-check', version: '1.0.0', private: true }));
const env = { ...process.env, PATH: `${fakeBin}${path.delimiter}${process.env.PATH}` };
delete env.MOMA_BUILD_FROM_SOURCE;
const installLog = npm(['install', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', tarball], project, env);

// 3. load and run
const probe = `
const moma = require('moma');
const r = moma.inspect();
moma.tensor([1, 2, 3]).mul(2).toArray().then((v) => {
  console.log(JSON.stringify({ binary: r.binary, backends: r.backends, values: Array.from(v) }));
});`;
const out = execFileSync(process.execPath, ['-e', probe], { cwd: project, env, encoding: 'utf8' });
const report = JSON.parse(out.trim().split('\n').pop());
const installed = path.join(project, 'node_modules', 'moma');
console.log(JSON.stringify({
  tarball: path.basename(tarball),
  tarballBytes: fs.statSync(tarball).size,
  usedPrebuilt: /using prebuilt binary/.test(installLog),
  cmakeCalled: fs.existsSync(marker),
  buildDirCreated: fs.existsSync(path.join(installed, 'build')),
  ...report,
}));
fs.rmSync(work, { recursive: true, force: true });
