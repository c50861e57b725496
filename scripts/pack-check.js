#!/usr/bin/env node
// Proves that the packed tarball, with a prebuilt binary, installs into an empty project and loads
// without compiling anything:
//   1. stage the package's files with a prebuild (prebuilds/ as is, or build/Release/moma.node when
//      there is none yet) and `npm pack` it;
//   2. `npm install` the tarball into an empty project with a `cmake` on PATH that fails loudly,
//      so any attempt to compile would break the install;
//   3. load it there, run an op, train tiny-4t4i for 3 steps with its CLI (every compiler on PATH
//      stubbed to fail) and print a JSON report (last line of stdout).
// Before installing, it checks what the tarball holds and throws naming the problem when
//   - a source map ships without its sources (a .map whose sources are absent and not inlined, or
//     a .js whose sourceMappingURL names a file that is not in the tarball),
//   - a file that CMakeLists.txt includes (cmake/*.cmake) is missing, so a source build would fail,
//   - a prebuilt Linux addon needs a GLIBC_ version above the floor (scripts/glibc-floor.js).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');
const { GLIBC_FLOOR, glibcRequirements, describeOffenders } = require('./glibc-floor.js');

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
  fs.copyFileSync(built, path.join(prebuildDir, 'moma.glibc.node'));
}
const tarball = path.join(stage, npm(['pack', '--ignore-scripts', '--silent'], stage).trim().split('\n').pop());

// What the tarball holds (paths under package/).
const unpacked = path.join(work, 'unpacked');
fs.mkdirSync(unpacked);
execFileSync('tar', ['xzf', tarball, '-C', unpacked]);
const pkgDir = path.join(unpacked, 'package');
const shipped = [];
(function walk(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full);
    else shipped.push(path.relative(pkgDir, full).split(path.sep).join('/'));
  }
})(pkgDir);
const shippedSet = new Set(shipped);
const problems = [];
for (const file of shipped) {
  const full = path.join(pkgDir, file);
  if (file.endsWith('.map')) {
    const map = JSON.parse(fs.readFileSync(full, 'utf8'));
    const inlined = Array.isArray(map.sourcesContent) && map.sourcesContent.length === (map.sources || []).length && map.sourcesContent.every((c) => typeof c === 'string');
    const missing = (map.sources || []).map((s) => path.posix.normalize(path.posix.join(path.posix.dirname(file), map.sourceRoot || '', s))).filter((s) => !shippedSet.has(s));
    if (!inlined && missing.length > 0) problems.push(`${file} maps sources that are not in the tarball (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', …' : ''})`);
  } else if (/\.(c|m)?js$/.test(file)) {
    const m = /\/\/# sourceMappingURL=(\S+)\s*$/.exec(fs.readFileSync(full, 'utf8'));
    if (m && !m[1].startsWith('data:') && !shippedSet.has(path.posix.normalize(path.posix.join(path.posix.dirname(file), m[1])))) {
      problems.push(`${file} names a source map that is not in the tarball (${m[1]})`);
    }
  }
}
const cmakeLists = fs.readFileSync(path.join(pkgDir, 'CMakeLists.txt'), 'utf8');
for (const m of cmakeLists.matchAll(/^\s*include\((cmake\/[^)\s]+)\)/gm)) {
  if (!shippedSet.has(m[1])) problems.push(`CMakeLists.txt includes ${m[1]}, which is not in the tarball (a source build would fail)`);
}
const prebuildGlibc = {};
for (const file of shipped.filter((f) => /^prebuilds\/linux-[^/]+\/[^/]+\.node$/.test(f))) {
  const report = glibcRequirements(path.join(pkgDir, file));
  prebuildGlibc[file] = report.newestGlibc;
  if (report.aboveFloor.length > 0) problems.push(`${file} needs GLIBC_${report.newestGlibc}, above the floor GLIBC_${GLIBC_FLOOR}: ${describeOffenders(report)}`);
}
if (problems.length > 0) throw new Error(`pack-check: the tarball ${path.basename(tarball)} is not fit to publish:\n  ${problems.join('\n  ')}`);

// 2. install into an empty project; a failing cmake on PATH catches any compile attempt
const project = path.join(work, 'project');
const fakeBin = path.join(work, 'fake-bin');
fs.mkdirSync(project);
fs.mkdirSync(fakeBin);
const marker = path.join(work, 'cmake-was-called');
for (const tool of ['cmake', 'cc', 'gcc', 'c++', 'g++', 'clang', 'clang++', 'nvcc', 'make']) {
  fs.writeFileSync(path.join(fakeBin, tool), `#!/bin/sh\ntouch ${marker}\necho "${tool} must not run" >&2\nexit 1\n`, { mode: 0o755 });
}
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
const cli = path.join(project, 'node_modules', '.bin', 'moma');
const trainArgs = ['train', '--preset', 'tiny-4t4i', '--steps', '3', '--batch-size', '2', '--seq-len', '64', '--eval-every', '0', '--log-every', '1', '--device', 'cpu', '--out', 'run', '--json-log'];
execFileSync(cli, trainArgs, { cwd: project, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const trainLosses = fs.readFileSync(path.join(project, 'run', 'metrics.jsonl'), 'utf8').trim().split('\n')
  .map((l) => JSON.parse(l)).filter((r) => r.kind === 'step').map((r) => r.loss);
const installed = path.join(project, 'node_modules', 'moma');
console.log(JSON.stringify({
  tarball: path.basename(tarball),
  tarballBytes: fs.statSync(tarball).size,
  usedPrebuilt: /using prebuilt binary/.test(installLog),
  cmakeCalled: fs.existsSync(marker),
  buildDirCreated: fs.existsSync(path.join(installed, 'build')),
  sourceMaps: shipped.filter((f) => f.endsWith('.map')).length,
  prebuildGlibc,
  trainLosses,
  ...report,
}));
fs.rmSync(work, { recursive: true, force: true });
