#!/usr/bin/env bash
# Prepares a GPU session's one device call on the build machine: the CUDA addon and the C++ harness
# (build/Release), dist/ (with dist/check/: the op-case table and the model checks, compiled: the device has
# no TypeScript compiler), and a stripped, xz'd node in .device/ (the device image has no Node.js).
# Then, with the device tool:
#   run  carry: [".device", "build/Release", "dist"]
#        command: xz -dc .device/node.xz > /tmp/node && chmod +x /tmp/node && OUT=$OUT scripts/gpu-check.sh /tmp/node
# and record what it prints in bench/RESULTS.md (card, commit, numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
npx cmake-js compile --out build
cmake --build build --target longcat_native_test
npm run build:ts
mkdir -p .device
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
cp "$(command -v node)" /tmp/longcat-node && strip /tmp/longcat-node && xz -T0 -c /tmp/longcat-node > .device/node.xz
git rev-parse --short HEAD > .device/commit
du -sh .device build/Release dist
