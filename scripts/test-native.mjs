// npm run test:native: builds and runs the C++ harnesses in the cmake build the install made
// (build/): test/native/simd_harness.cc (native/cpu/simd.h against scalar references),
// test/native/gemm_harness.cc (+ the fragment simulator; the same kernel objects as the
// addon, its CUDA half where a GPU is present) and test/native/emu_harness.cc (the CUDA kernels'
// sources under the CPU emulator of test/emu, against the CPU kernels), test/native/emu_race.cc (the
// attention kernels under ThreadSanitizer on the emulator), test/native/pool_race.cc (the thread
// pool's parallel regions under ThreadSanitizer) and, in an emulator build,
// test/native/device_harness.cc (pool and streams on the emulated device). No Node at run time.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { machine } from 'node:os';

const dir = process.env.LONGCAT_BUILD_DIR || 'build';
if (!existsSync(`${dir}/CMakeCache.txt`)) {
  console.error(
    `test:native: ${dir}/ is not a cmake build (the install fell back to node-gyp, or build:gyp replaced it). ` +
      'Run `npm run build:native` first.',
  );
  process.exit(1);
}
const run = (cmd, args, env = {}) => {
  const r = spawnSync(cmd, args, { stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
// an emulator build (-DLONGCAT_CUDA_EMU=ON) also has the device runtime harness
const emulated = /^LONGCAT_CUDA_EMU:BOOL=ON$/m.test(readFileSync(`${dir}/CMakeCache.txt`, 'utf8'));
run('cmake', [
  '--build',
  dir,
  '--target',
  'longcat_native_test',
  'longcat_emu_test',
  'longcat_emu_race_test',
  'longcat_simd_test',
  'longcat_pool_race_test',
  ...(emulated ? ['longcat_device_test'] : []),
]);
run(`${dir}/Release/longcat_simd_test`, []);
run(`${dir}/Release/longcat_native_test`, []);
if (emulated) run(`${dir}/Release/longcat_device_test`, []);
run(`${dir}/Release/longcat_emu_test`, []);
// A data race report fails the run. ThreadSanitizer wants the address layout it was built for:
// without ASLR (setarch -R) it also runs on kernels with more mmap randomization.
const race = `${dir}/Release/longcat_emu_race_test`,
  tsan = { TSAN_OPTIONS: 'halt_on_error=1 exitcode=66' };
const underTsan = bin => {
  if (process.platform === 'linux' && spawnSync('setarch', ['--version']).status === 0)
    run('setarch', [machine(), '-R', bin], tsan);
  else run(bin, [], tsan);
};
underTsan(race);
underTsan(`${dir}/Release/longcat_pool_race_test`);
