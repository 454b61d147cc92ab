// Child process of test/lifetimes.test.ts: terminates worker threads while they are in native
// calls (queueing matmuls on their streams and waiting for them), at a different point each time,
// then checks that this thread still computes. Prints "ok <n>" after terminating n workers.
import { Worker, isMainThread, workerData } from 'node:worker_threads';

if (isMainThread) {
  const { native } = await import('../../dist/native.js');
  const { tensor, toArray } = await import('../../dist/tensor.js');
  const device = process.argv[2] ?? 'cpu';
  const workers = Number(process.argv[3] ?? 6);
  for (let i = 0; i < workers; i++) {
    const counter = new Int32Array(new SharedArrayBuffer(4));
    const w = new Worker(new URL(import.meta.url), { workerData: { device, counter } });
    const failed = new Promise((_, reject) => w.once('error', reject));
    // Wait until the worker has finished i + 1 rounds of native work (it never stops by itself).
    while (Atomics.load(counter, 0) <= i) {
      await Promise.race([new Promise(r => setTimeout(r, 1)), failed]);
    }
    await w.terminate();
  }
  const a = tensor([1, 2], [2], { device });
  native.add(null, a, a, a);
  process.stdout.write(`ok ${workers} ${Array.from(toArray(a)).join(',')}`);
} else {
  const { native } = await import('../../dist/native.js');
  const { empty, full } = await import('../../dist/tensor.js');
  const { device, counter } = workerData;
  const n = 64;
  const x = full([n, n], 0.5, { device });
  const w = full([n, n], 0.25, { device });
  const y = empty([n, n], { device });
  const own = new native.Stream(device);
  for (;;) {
    for (let k = 0; k < 10; k++) {
      native.linear(own, y, x, w, null, null);
      native.linear(null, y, x, w, null, null);
    }
    own.synchronize();
    y.toBytes(); // waits for the default stream too
    Atomics.add(counter, 0, 1);
  }
}
