// npm run test:native: builds and runs the C++ harnesses in the cmake build the install made
// (build/): test/native/simd_harness.cc (native/cpu/simd.h against scalar references),
// test/native/gemm_harness.cc (+ the fragment simulator; the same kernel objects as the
// addon, its CUDA half where a GPU is present) and test/native/emu_harness.cc (the CUDA kernels'
// sources under the CPU emulator of test/emu, against the CPU kernels). No Node at run time.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const dir = process.env.LONGCAT_BUILD_DIR || 'build';
if (!existsSync(`${dir}/CMakeCache.txt`)) {
  console.error(`test:native: ${dir}/ is not a cmake build (the install fell back to node-gyp, or build:gyp replaced it). ` +
    'Run `npm run build:native` first.');
  process.exit(1);
}
const run = (cmd, args) => {
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
run('cmake', ['--build', dir, '--target', 'longcat_native_test', 'longcat_emu_test', 'longcat_simd_test']);
run(`${dir}/Release/longcat_simd_test`, []);
run(`${dir}/Release/longcat_native_test`, []);
run(`${dir}/Release/longcat_emu_test`, []);
