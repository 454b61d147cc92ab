// npm install hook. The package carries a prebuilt addon (prebuilds/linux-x64, scripts/prebuild.mjs):
// when it loads there is nothing to do, and nothing here needs the build tools (cmake-js,
// node-addon-api: optional peer dependencies, absent from a normal install). The addon loads without
// this script too (npm --ignore-scripts; lib/native.ts finds it). Otherwise, or with
// `npm rebuild longcat-flash --build-from-source` / LONGCAT_FORCE_BUILD=1, it builds from source:
// cmake-js (CPU + CUDA when nvcc is on PATH, for LONGCAT_CUDA_ARCHS) or, without cmake, node-gyp
// (CPU only). LONGCAT_REQUIRE_CUDA=1 fails the install unless the CUDA backend was built (CI uses it
// so CUDA compile errors cannot hide). A build that cannot run says what to install and run.
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

// What to do when no addon loads and none can be built here.
const HOW_TO_BUILD =
  'To build it from source, in your project:\n' +
  '  npm install --save-dev cmake-js node-addon-api\n' +
  '  npm rebuild longcat-flash --build-from-source\n' +
  'which needs cmake >= 3.18 and a C++17 compiler (g++ >= 9 or clang >= 10; on Debian/Ubuntu:\n' +
  'apt-get install -y g++ cmake), and the CUDA toolkit >= 13.0 (nvcc) for the CUDA backend\n' +
  '(LONGCAT_CUDA_ARCHS=86 for one GPU generation; README: Build from source).';

let loadError = '';
function tryLoad() {
  try {
    return require('node-gyp-build')(root);
  } catch (e) {
    loadError = String(e.message).split('\n')[0];
    return null;
  }
}

function resolves(id) {
  try {
    return require.resolve(id);
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

function fail(why) {
  console.error(`longcat-flash: ${why}\n${HOW_TO_BUILD}`);
  process.exit(1);
}

const forced = env.LONGCAT_FORCE_BUILD || env.LONGCAT_REQUIRE_CUDA || env.npm_config_build_from_source === 'true';
if (!forced) {
  const addon = tryLoad();
  if (addon) {
    log(`using the prebuilt addon (CUDA backend: ${addon.buildInfo().cuda ? 'yes' : 'no'})`);
    process.exit(0);
  }
  log(`no prebuilt addon loads here (${loadError}); building from source`);
}

const cmakeJs = resolves('cmake-js/bin/cmake-js');
if (!resolves('node-addon-api')) fail('building the addon needs the node-addon-api package, which is not installed.');
let ok = false;
if (cmakeJs && has('cmake')) {
  ok = run(process.execPath, [cmakeJs, 'compile', '--out', 'build']);
  if (!ok && !env.LONGCAT_REQUIRE_CUDA) {
    log('the cmake build failed; retrying without the CUDA backend');
    ok = run(process.execPath, [cmakeJs, 'compile', '--out', 'build', '--CDLONGCAT_CUDA=OFF']);
  }
} else {
  log(
    `${cmakeJs ? 'cmake' : 'cmake-js'} not found: building the CPU backend with node-gyp (cmake-js and cmake build the CUDA backend)`,
  );
  const gyp = env.npm_config_node_gyp || resolves('node-gyp/bin/node-gyp.js');
  if (!gyp) fail('neither cmake-js nor node-gyp is installed.');
  if (!has('python3') || !has('make') || !(has('g++') || has('c++')))
    fail('node-gyp needs python3, make and a C++ compiler, and one of them is not on PATH.');
  ok = run(process.execPath, [gyp, 'rebuild', `--nodedir=${path.resolve(process.execPath, '../..')}`]);
}
if (!ok) fail('building the native addon failed (see above).');
const addon = tryLoad();
if (!addon) {
  console.error(
    `longcat-flash: the addon was built but does not load (${loadError}); run with LONGCAT_ADDON=build/Release/longcat.node to see why`,
  );
  process.exit(1);
}
const info = addon.buildInfo();
log(`built ${info.buildSystem} addon, CUDA backend: ${info.cuda ? `yes (${info.cudaArchs})` : 'no'}`);
if (env.LONGCAT_REQUIRE_CUDA && !info.cuda) {
  console.error('longcat-flash: LONGCAT_REQUIRE_CUDA is set but the CUDA backend was not built (is nvcc on PATH?)');
  process.exit(1);
}
