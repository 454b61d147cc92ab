// Shapes that once crashed the process or were silently accepted (issue 13, memory safety): element
// counts and byte sizes that overflow, views with impossible shapes, zero-width rows. Each must end
// as a typed error or a correct no-op, never a signal.
import { describe, expect, it } from 'vitest';
import { Tensor, empty, full, native, toArray } from '../lib/index.js';
import { expectCode } from './helpers.js';

describe('shapes that overflow', () => {
  it('new Tensor, empty and full refuse element counts past 2^53 or what they can build, with E_SHAPE', () => {
    expectCode(() => new Tensor('f32', [2 ** 32, 2 ** 32]), 'E_SHAPE', /more than 2\^53 elements/);
    expectCode(() => new Tensor('bf16', [2 ** 62]), 'E_SHAPE', /more than 2\^53 elements/);
    expectCode(() => empty([2 ** 40, 2 ** 30]), 'E_SHAPE', /\[1099511627776, 1073741824\]/);
    expectCode(() => full([1e12], 0), 'E_SHAPE', /full: shape \[1000000000000\]/);
  });

  it('view refuses a shape whose element count overflows instead of wrapping to the tensor size', () => {
    const t = full([4], 1);
    expectCode(() => t.view([4, 1380655685, 3340214413]), 'E_SHAPE', /more than 2\^53 elements/);
    expect(t.view([2, 2]).shape).toEqual([2, 2]);
    t.dispose();
  });
});

describe('zero-width rows', () => {
  it('rmsnorm over a last dimension of 0 is a no-op (it raised SIGFPE)', () => {
    const x = empty([3, 0]),
      w = empty([0]),
      y = empty([3, 0]);
    native.rmsnorm(null, y, x, w, 1e-6);
    native.synchronize('cpu');
    expect(toArray(y).length).toBe(0);
    const after = full([2, 3], 1);
    expect(Array.from(toArray(after))).toEqual([1, 1, 1, 1, 1, 1]); // the process and the stream still work
    for (const t of [x, w, y, after]) t.dispose();
  });
});
