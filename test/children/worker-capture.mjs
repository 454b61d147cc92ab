// Child process of test/lifetimes.test.ts: two worker threads capture graphs on their default
// stream at the same time. Worker A holds its capture open (blocked in the captured function) until
// worker B is about to capture; each then replays and reads its own graph. Each environment has its
// own default stream, so neither sees the other's capture (on the CPU they overlap; on a CUDA device
// B's capture waits for A's to end). Prints both results.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

if (isMainThread) {
  const device = process.argv[2] ?? 'cpu';
  // [0]: A is capturing, [1]: B is (about to be) capturing, [2]: B has its stream and tensors (on a
  // CUDA device a stream made during A's capture would wait for it to end, and A waits for B).
  const flags = new Int32Array(new SharedArrayBuffer(12));
  const run = role =>
    new Promise((resolve, reject) => {
      const w = new Worker(new URL(import.meta.url), { workerData: { role, device, flags } });
      w.once('message', resolve);
      w.once('error', reject);
      w.once('exit', code => reject(new Error(`worker ${role} exited with ${code} before answering`)));
    });
  const results = await Promise.allSettled([run('A'), run('B')]);
  process.stdout.write(JSON.stringify(results.map(r => (r.status === 'fulfilled' ? r.value : `error: ${r.reason}`))));
} else {
  const { native } = await import('../../dist/native.js');
  const { tensor, toArray } = await import('../../dist/tensor.js');
  const { role, device, flags } = workerData;
  try {
    const x = tensor([1, 2, 3], [3], { device });
    const y = tensor([0, 0, 0], [3], { device });
    const s = native.defaultStream(device);
    let graph;
    if (role === 'A') {
      Atomics.wait(flags, 2, 0); // until B is ready to capture
      graph = native.captureGraph([s], () => {
        native.add(s, y, y, x);
        Atomics.store(flags, 0, 1);
        Atomics.notify(flags, 0);
        Atomics.wait(flags, 1, 0); // until B is about to capture
      });
    } else {
      Atomics.store(flags, 2, 1);
      Atomics.notify(flags, 2);
      Atomics.wait(flags, 0, 0); // until A is inside its capture
      s.synchronize(); // B's own stream: nothing of A's to wait for
      // On the CPU B signals from inside its capture, so the two overlap; on a CUDA device just
      // before it (B's capture waits for A's to end).
      const signal = () => {
        Atomics.store(flags, 1, 1);
        Atomics.notify(flags, 1);
      };
      if (device !== 'cpu') signal();
      graph = native.captureGraph([s], () => {
        native.add(s, y, y, x, 2);
        if (device === 'cpu') signal();
      });
    }
    graph.replay();
    graph.replay();
    parentPort.postMessage(Array.from(toArray(y)));
  } catch (e) {
    for (const i of [0, 1, 2]) {
      Atomics.store(flags, i, 1);
      Atomics.notify(flags, i);
    }
    parentPort.postMessage(`error: ${e.code ?? ''} ${e.message}`);
  }
}
