import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native kernels use every core already; running files in parallel only adds noise.
    fileParallelism: false,
    testTimeout: 60_000,
    pool: 'forks',
    // test/core.test.ts checks that the GC finalizer releases undisposed tensors.
    execArgv: ['--expose-gc'],
  },
});
