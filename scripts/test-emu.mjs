// npm run test:emu [-- vitest args]: the CUDA backend on the CPU emulator of test/emu. Builds the
// addon with -DLONGCAT_CUDA_EMU=ON into build-emu/ (the kernels of cuda/ compiled as host C++, one
// fiber per CUDA thread), then runs the whole vitest suite against it -- so test/cuda.test.ts's
// CUDA-vs-CPU cases (those under the emulator's size limit) and the whole model on "cuda:0" (graph
// capture, two streams, the device pool) run without a GPU -- and the C++ harnesses, whose CUDA
// half then runs on the emulated device too.
import { spawnSync } from 'node:child_process';

const dir = process.env.LONGCAT_EMU_BUILD_DIR || 'build-emu';
const run = (cmd, args, env = {}) => {
  const r = spawnSync(cmd, args, { stdio: 'inherit', env: { ...process.env, ...env }, shell: process.platform === 'win32' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
run('npx', ['cmake-js', 'compile', '--out', dir, '--CDLONGCAT_CUDA_EMU=ON']);
run('npx', ['vitest', 'run', ...process.argv.slice(2)], { LONGCAT_ADDON: `${dir}/Release/longcat.node` });
run('node', ['scripts/test-native.mjs'], { LONGCAT_BUILD_DIR: dir });
