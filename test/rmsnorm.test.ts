// rmsnorm (with and without the fused residual add) vs a float64 reference, every ISA path,
// f32/bf16 weights and outputs, odd dims, poisoned outputs.
import { describe, it } from 'vitest';
import { full, native, tensor, toArray } from '../lib/index.js';
import { roundBf16 } from '../lib/numeric.js';
import { eachIsa, expectClose, rng, expectCode } from './helpers.js';

describe('rmsnorm', () => {
  it('matches float64 with and without the fused add, f32/bf16 weights and outputs', () => {
    const r = rng(909);
    eachIsa(isa => {
      for (const T of [1, 3, 17])
        for (const H of [1, 7, 127, 129, 1000])
          for (const wdt of ['f32', 'bf16'] as const)
            for (const ydt of ['f32', 'bf16'] as const)
              for (const fused of [false, true]) {
                const eps = 1e-5;
                const x = Float32Array.from({ length: T * H }, () => r.normal() * 3);
                const a = Float32Array.from({ length: T * H }, () => r.normal());
                const wv = Float32Array.from({ length: H }, () => 1 + r.normal() * 0.2);
                const w = tensor(wv, [H], { dtype: wdt });
                const wr = toArray(w);
                const y = full([T, H], NaN, { dtype: ydt });
                const hOut = full([T, H], NaN);
                if (fused) native.rmsnorm(null, y, tensor(x, [T, H]), w, eps, tensor(a, [T, H]), hOut);
                else native.rmsnorm(null, y, tensor(x, [T, H]), w, eps);
                const want = new Float64Array(T * H),
                  hw = new Float64Array(T * H);
                for (let t = 0; t < T; t++) {
                  let ss = 0;
                  for (let i = 0; i < H; i++) {
                    const h = fused ? Math.fround(x[t * H + i]! + a[t * H + i]!) : x[t * H + i]!;
                    hw[t * H + i] = h;
                    ss += h * h;
                  }
                  const inv = 1 / Math.sqrt(ss / H + eps);
                  for (let i = 0; i < H; i++) want[t * H + i] = hw[t * H + i]! * inv * wr[i]!;
                }
                const what = `${isa} T=${T} H=${H} w=${wdt} y=${ydt} fused=${fused}`;
                if (ydt === 'bf16') expectClose(toArray(y), Array.from(want, roundBf16), 1e-6, 2 ** -8, what);
                else expectClose(toArray(y), want, 1e-6, 4e-6, what);
                if (fused) expectClose(toArray(hOut), hw, 0, 0, `hOut ${what}`);
              }
    });
  });

  it('hOut may alias x (the in-place residual stream)', () => {
    const r = rng(910);
    eachIsa(isa => {
      const T = 3,
        H = 129;
      const x = r.array(T * H, -2, 2),
        a = r.array(T * H, -2, 2);
      const xt = tensor(x, [T, H]);
      const y = full([T, H], NaN);
      native.rmsnorm(null, y, xt, full([H], 1), 1e-6, tensor(a, [T, H]), xt);
      expectClose(
        toArray(xt),
        Float64Array.from(x, (v, i) => Math.fround(v + a[i]!)),
        0,
        0,
        `aliased hOut ${isa}`,
      );
      const y2 = full([T, H], NaN);
      native.rmsnorm(null, y2, xt, full([H], 1), 1e-6);
      expectClose(toArray(y), toArray(y2), 0, 1e-6, `aliased y ${isa}`);
    });
  });

  it('rejects bad arguments', () => {
    const x = full([3, 8], 0);
    expectCode(() => native.rmsnorm(null, full([3, 8], 0), x, full([7], 1), 1e-5), 'E_SHAPE');
    expectCode(() => native.rmsnorm(null, full([3, 7], 0), x, full([8], 1), 1e-5), 'E_SHAPE');
    expectCode(() => native.rmsnorm(null, full([3, 8], 0), x, full([8], 1, { dtype: 'f16' }), 1e-5), 'E_DTYPE');
    expectCode(() => native.rmsnorm(null, full([3, 8], 0), x, full([8], 1), -1), 'E_ARGUMENT');
    expectCode(() => native.rmsnorm(null, full([3, 8], 0), x, full([8], 1), 1e-5, full([3, 9], 0)), 'E_SHAPE');
  });
});
