import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native kernels use every core already; running files in parallel only adds noise.
    fileParallelism: false,
    // A hang detector, not a performance check (no test asserts a time): tests whose work can take
    // minutes on a busy machine (the op cases, the smoke runs, the whole-model checks) set their own
    // limits from that work; the rest use well under 10 s of CPU, and 5 minutes leaves room for a
    // machine oversubscribed many times over (CI runs beside other jobs).
    testTimeout: 300_000,
    pool: 'forks',
    // test/core.test.ts checks that the GC finalizer releases undisposed tensors.
    execArgv: ['--expose-gc'],
  },
});
