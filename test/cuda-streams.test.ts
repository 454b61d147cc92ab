// The device pool on streams that appear after work was queued, through the public API, on the
// emulated CUDA device (a -DLONGCAT_CUDA_EMU=ON build): its streams really defer work until
// something waits for them (test/emu/runtime_emu.cc), so a pool block handed to a new stream while
// queued work still reads it shows as a wrong result. On a GPU the same sequence passes or fails
// by timing, so it runs only emulated (test/native/device_harness.cc also covers a stream
// destroyed with work in flight).
import { describe, expect, it } from 'vitest';
import { native } from '../lib/native.js';
import { Stream } from '../lib/device.js';
import { tensor, toArray, empty } from '../lib/tensor.js';
import { rng } from './helpers.js';

const emulated = native.buildInfo().cudaArchs === 'emulated';
const device = 'cuda:0';

describe.skipIf(!emulated)('device pool with a stream created while work is queued (emulated device)', () => {
  it('queued work still reads a freed block that a stream created later is handed and overwrites', () => {
    // This file's process has no stream on cuda:0 yet: s1 is the only one when `a` is freed.
    const r = rng(41);
    const [t, k, n] = [37, 129, 23];
    const av = r.array(t * k),
      wv = r.array(n * k);
    const a = tensor(av, [t, k], { device }),
      w = tensor(wv, [n, k], { device });
    const c = tensor(r.array(t * k), [t, k], { device }); // made now: after the free it would take a's block
    const y = empty([t, n], { device });
    const s1 = new Stream(device);
    const precision = native.setMatmulPrecision('highest'); // fp32 products: a tight check
    try {
      native.linear(s1, y, a, w); // queued on s1: reads a
      a.dispose(); // one stream on the device: cached without a fence
      const s2 = new Stream(device);
      const b = empty([t, k], { device }); // a's block
      native.add(s2, b, c, c, 1); // overwrites it on s2
      s2.synchronize();
      const got = toArray(y); // waits for the device: s1's linear runs now at the latest
      let worst = 0;
      for (let i = 0; i < t; i++)
        for (let j = 0; j < n; j++) {
          let want = 0;
          for (let q = 0; q < k; q++) want += av[i * k + q]! * wv[j * k + q]!;
          worst = Math.max(worst, Math.abs(got[i * n + j]! - want));
        }
      expect(worst).toBeLessThan(1e-3);
      for (const x of [w, c, y, b]) x.dispose();
      s2.dispose();
    } finally {
      native.setMatmulPrecision(precision);
      s1.dispose();
    }
  });
});
