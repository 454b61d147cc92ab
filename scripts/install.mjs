// npm install hook: use a prebuilt addon when one loads, otherwise build from source —
// with cmake-js (CPU + CUDA when nvcc is on PATH), or with node-gyp (CPU only) without cmake.
// LONGCAT_FORCE_BUILD=1 skips the prebuild check; LONGCAT_REQUIRE_CUDA=1 fails the install
// unless the CUDA backend was built (CI uses it so CUDA compile errors cannot hide).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const env = process.env;

function log(msg) {
  console.log(`longcat-flash: ${msg}`);
}

function tryLoad() {
  try {
    return require('node-gyp-build')(root);
  } catch {
    return null;
  }
}

function has(cmd, args = ['--version']) {
  return spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
}

function run(cmd, args) {
  log(`${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...env, PATH: `${env.PATH}:/usr/local/cuda/bin` } });
  return r.status === 0;
}

if (!env.LONGCAT_FORCE_BUILD && !env.LONGCAT_REQUIRE_CUDA) {
  const addon = tryLoad();
  if (addon) {
    log(`using the prebuilt addon (CUDA backend: ${addon.buildInfo().cuda ? 'yes' : 'no'})`);
    process.exit(0);
  }
}

const nodedir = path.resolve(process.execPath, '../..');
let ok = false;
if (has('cmake')) {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  ok = run(process.execPath, [cmakeJs, 'compile', '--out', 'build']);
  if (!ok && !env.LONGCAT_REQUIRE_CUDA) {
    log('the cmake build failed; retrying without the CUDA backend');
    ok = run(process.execPath, [cmakeJs, 'compile', '--out', 'build', '--CDLONGCAT_CUDA=OFF']);
  }
} else {
  log('cmake not found: building the CPU backend with node-gyp (install cmake for the CUDA backend)');
  const gyp = env.npm_config_node_gyp || require.resolve('node-gyp/bin/node-gyp.js');
  ok = run(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`]);
}
if (!ok) {
  console.error(
    'longcat-flash: building the native addon failed. It needs a C++17 compiler (g++ >= 9 or clang >= 10) and\n' +
      'cmake >= 3.18 (or python3 + make for node-gyp). On Debian/Ubuntu: apt-get install -y g++ cmake',
  );
  process.exit(1);
}
const addon = tryLoad();
if (!addon) {
  console.error(
    'longcat-flash: the addon was built but does not load; run with LONGCAT_ADDON=build/Release/longcat.node to see why',
  );
  process.exit(1);
}
const info = addon.buildInfo();
log(`built ${info.buildSystem} addon, CUDA backend: ${info.cuda ? `yes (sm_${info.cudaArchs})` : 'no'}`);
if (env.LONGCAT_REQUIRE_CUDA && !info.cuda) {
  console.error('longcat-flash: LONGCAT_REQUIRE_CUDA is set but the CUDA backend was not built (is nvcc on PATH?)');
  process.exit(1);
}
