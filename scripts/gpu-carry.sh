#!/usr/bin/env bash
# Prepares .node/ (git-ignored) for scripts/gpu-check.sh's Node smoke run on a machine without npm:
# the xz'd Node binary, the Node-API headers and the two runtime modules dist/ needs. Run after
# `npm install`; then name `.node` and `dist` in the device tool's carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .node && mkdir -p .node/include .node/modules
xz -c "$(command -v node)" >.node/node.xz
cp -r node_modules/node-api-headers/include/. .node/include/
cp node_modules/node-addon-api/*.h .node/include/
cp -r node_modules/node-gyp-build node_modules/commander .node/modules/
du -sh .node
