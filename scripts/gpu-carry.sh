#!/usr/bin/env bash
# Prepares .node/ (git-ignored) for scripts/gpu-check.sh's Node runs on a machine without npm:
#   .node/node.xz           the Node binary (xz)
#   .node/include/          Node-API headers (node-api-headers' include, node-addon-api's *.h)
#   .node/modules.tar.xz    the runtime dependency tree of dist/: package.json's dependencies and
#                           everything they need (sharp with its libvips binary, vega, zod,
#                           cli-progress, @huggingface/tokenizers, commander, node-gyp-build, …),
#                           without the build-only ones (cmake-js, node-addon-api, node-api-headers)
# Run after `npm install` and `npm run build:ts`; then name `.node` and `dist` in the device tool's
# carry list. Fails when the carried total (.node + dist) is not well under the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f dist/index.js ] || { echo "gpu-carry: dist/ is missing: run npm run build:ts first" >&2; exit 1; }
[ -d node_modules ] || { echo "gpu-carry: node_modules/ is missing: run npm install first" >&2; exit 1; }
limit=$((48 << 20))  # "well under" the carry limit of 64 MiB

rm -rf .node && mkdir -p .node/include
xz -T0 -6 -c "$(command -v node)" >.node/node.xz
cp -r node_modules/node-api-headers/include/. .node/include/
cp node_modules/node-addon-api/*.h .node/include/

# The runtime closure: from package.json's dependencies (less the build-only ones), each package's
# dependencies and installed optionalDependencies, resolved as Node resolves them (the nearest
# node_modules folder upward from the requiring package).
node - >.node/modules.list <<'JS'
const fs = require('fs');
const path = require('path');
const root = process.cwd();
const buildOnly = new Set(['cmake-js', 'node-addon-api', 'node-api-headers']);
const read = (dir) => JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
function resolveFrom(dir, name) {
  for (let d = dir; ; d = path.dirname(d)) {
    const candidate = path.join(d, 'node_modules', name);
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (d === root || d === path.dirname(d)) return null;
  }
}
const seen = new Set();
const queue = [];
const want = (from, deps, optional) => {
  for (const name of Object.keys(deps || {})) {
    if (from === root && buildOnly.has(name)) continue;
    const dir = resolveFrom(from, name);
    if (dir === null) {
      if (optional) continue;
      throw new Error(`gpu-carry: ${name} (needed by ${path.relative(root, from) || 'moma'}) is not installed`);
    }
    if (!seen.has(dir)) {
      seen.add(dir);
      queue.push(dir);
    }
  }
};
want(root, read(root).dependencies, false);
while (queue.length) {
  const dir = queue.shift();
  const pkg = read(dir);
  want(dir, pkg.dependencies, false);
  want(dir, pkg.optionalDependencies, true);
}
// a nested package travels inside its parent's folder: list only the outermost folders
const dirs = [...seen].map((d) => path.relative(root, d)).sort();
const outer = dirs.filter((d) => !dirs.some((p) => p !== d && d.startsWith(p + path.sep)));
process.stdout.write(outer.join('\n') + '\n');
JS
tar -cJf .node/modules.tar.xz -T .node/modules.list

size() { du -sb "$@" | awk '{ s += $1 } END { print s }'; }
node_xz=$(size .node/node.xz)
modules=$(size .node/modules.tar.xz)
headers=$(size .node/include)
dist=$(size dist)
total=$((node_xz + modules + headers + dist + $(size .node/modules.list)))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "gpu-carry: $(wc -l <.node/modules.list) packages"
echo "gpu-carry: node.xz $(mib "$node_xz"), modules.tar.xz $(mib "$modules"), include $(mib "$headers"), dist $(mib "$dist"); total $(mib "$total") (limit 64 MiB)"
if [ "$total" -gt "$limit" ]; then
  echo "gpu-carry: the carried total is over $(mib "$limit")" >&2
  exit 1
fi
