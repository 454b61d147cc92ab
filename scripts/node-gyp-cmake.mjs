#!/usr/bin/env node
// A node-gyp stand-in for prebuildify: `prebuildify --node-gyp scripts/node-gyp-cmake.mjs` then
// builds the prebuilt addon with cmake-js (CPU + CUDA when nvcc is on PATH) instead of node-gyp.
// prebuildify passes `rebuild --target=V --devdir=D --arch=A --release|--debug`; N-API builds
// need no per-target headers, so only the build type matters here.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';

const args = process.argv.slice(2);
if (args[0] !== 'rebuild') {
  console.error(`node-gyp-cmake: only 'rebuild' is supported, got '${args[0]}'`);
  process.exit(2);
}
const cmakeJs = createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js');
const r = spawnSync(process.execPath, [cmakeJs, 'rebuild', '--out', 'build', ...(args.includes('--debug') ? ['--debug'] : [])], {
  stdio: 'inherit',
  env: { ...process.env, PATH: `${process.env.PATH}:/usr/local/cuda/bin` },
});
process.exit(r.status ?? 1);
