// The op-case table (lib/check/op-cases.ts) on the CPU: every case at every ISA this CPU has (AVX2,
// AVX-512) against the scalar kernels, within the bounds of the error model (lib/check/error-model.ts);
// and the bounds' power: bugs planted in the inputs of the side under test (a dropped scale, a skipped
// K block, a dropped key, a dropped routing weight) must fail the bounds a GPU run is held to.
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../lib/native.js';
import { encode, toArray } from '../lib/tensor.js';
import type { Tensor } from '../lib/tensor.js';
import { budgetMs, cases, compareOutputs, makeCase, overLimits, SLOW_RUN_LIMITS, type Made } from '../lib/check/op-cases.js';

type Isa = 'scalar' | 'avx2' | 'avx512';
const startIsa = native.cpuFeatures().isa as Isa;
// Every ISA this CPU can run (setIsa clamps to the best available).
const isas = (['scalar', 'avx2', 'avx512'] as Isa[]).filter(i => native.setIsa(i) === i);
native.setIsa(startIsa);

// The larger cases (LongCat-width GEMMs, long-context attention) run on a GPU only.
const limits = SLOW_RUN_LIMITS;

describe(`op cases: ${isas.slice(1).join(', ') || 'the scalar kernels'} against the scalar kernels within the error bounds`, () => {
  afterAll(() => native.setIsa(startIsa));
  for (const c of cases.filter(x => !x.gpuOnly))
    it(
      c.name,
      ctx => {
        if (overLimits(c, limits)) return ctx.skip('over the CPU work limit of the ISA parity run');
        native.setIsa('scalar');
        const ref = makeCase(c, 'cpu');
        ref.run(null);
        for (const isa of isas.length > 1 ? isas.slice(1) : isas) {
          native.setIsa(isa);
          const dut = makeCase(c, 'cpu');
          dut.run(null);
          const r = compareOutputs(ref, dut, { ref: 'cpu', dut: 'cpu' });
          expect(r.ratio, `${isa}: error / bound ${r.ratio}: ${r.detail}`).toBeLessThanOrEqual(1);
        }
        native.setIsa(startIsa);
      },
      2 * budgetMs(c),
    ); // three runs instead of two
});

const write = (t: Tensor, values: ArrayLike<number>) => t.copyFromBytes(encode(values, t.dtype));
const input = (m: Made, name: string) => {
  const t = m.inputs?.[name];
  if (!t) throw new Error(`no input ${name}`);
  return t;
};
/** Plants a bug: `change` edits the values of the named input in place before they are written back. */
const edit = (m: Made, name: string, change: (v: Float32Array) => void) => {
  const v = Float32Array.from(toArray(input(m, name)));
  change(v);
  write(input(m, name), v);
};

// Each bug: a case, what it changes in the inputs of the side under test, and what real bug that is.
// Both sides run on the CPU; the comparison uses the bounds of a CUDA side under test (tensor-core
// accumulators, the loosest ones), so these are the bounds the first GPU run is held to.
const bugs: [string, string, (m: Made) => void][] = [
  ['linear t=129 k=515 n=257 w=fp8_e4m3 fp8', 'the fp8 block scales dropped', m => edit(m, 'scale', s => s.fill(1))],
  [
    'linear t=129 k=515 n=257 w=fp8_e4m3 fp8',
    'two block scales swapped',
    m =>
      edit(m, 'scale', s => {
        [s[0], s[1]] = [s[1]!, s[0]!];
      }),
  ],
  ['linear t=129 k=515 n=257 w=int8 bf16', 'the int8 row scales dropped', m => edit(m, 'scale', s => s.fill(1))],
  [
    'linear t=129 k=515 n=257 w=bf16 bf16',
    'one 32-wide K step skipped',
    m =>
      edit(m, 'x', x => {
        for (let t = 0; t < 129; t++) x.fill(0, t * 515 + 256, t * 515 + 288);
      }),
  ],
  [
    'linear t=17 k=127 n=333 w=f32 highest',
    'the last K element skipped',
    m =>
      edit(m, 'x', x => {
        for (let t = 0; t < 17; t++) x[t * 127 + 126] = 0;
      }),
  ],
  ['rmsnorm rows=17 dim=1000 (+add, bf16 w)', 'the norm weight dropped', m => edit(m, 'w', w => w.fill(1))],
  [
    'moe T=256 H=520 I=392 routed=4 zero=2 k=4 w=fp8_e4m3 fp8',
    "expert 0's down-projection scales dropped",
    m => edit(m, 'downScale0', s => s.fill(1)),
  ],
  [
    'moe T=40 H=136 I=80 routed=4 zero=3 k=5 w=bf16 (repeated ids) bf16',
    'one routing weight dropped',
    m =>
      edit(m, 'weights', w => {
        w[7] = 0;
      }),
  ],
  [
    'mlaDecodeAbsorbed B=1 nh=3 dl=37 dr=5 bs=4 lens=13 cache=f32 highest',
    'the last key dropped',
    m => write(input(m, 'seqLens'), [12]),
  ],
  [
    'mlaDecodeAbsorbed B=5 nh=5 dl=40 dr=8 bs=7 lens=1,64,65,300,2 cache=bf16 bf16',
    'the last key of a 2-token sequence dropped',
    m => write(input(m, 'seqLens'), [1, 64, 65, 300, 1]),
  ],
  [
    'mlaDecodeAbsorbed B=2 nh=3 dl=128 dr=6 bs=5 lens=20,9 cache=fp8 highest',
    'the last key of the fp8 cache dropped',
    m => write(input(m, 'seqLens'), [20, 8]),
  ],
  [
    'mlaPrefill nh=3 dn=5 dr=3 dv=4 seqs=1/1,7/10,33/33 highest',
    'one key / value row read from its neighbour',
    m =>
      edit(m, 'kvb', kv => {
        const row = 3 * 9;
        kv.copyWithin(4 * row, 5 * row, 6 * row); // key 3 of the 7/10 sequence replaced by key 4
      }),
  ],
];

describe('the error bounds catch planted bugs', () => {
  for (const [name, what, plant] of bugs) {
    const c = cases.find(x => x.name === name);
    if (!c) throw new Error(`no case ${name}`);
    it(
      `${name}: ${what}`,
      () => {
        const ref = makeCase(c, 'cpu');
        ref.run(null);
        const clean = makeCase(c, 'cpu');
        clean.run(null);
        expect(compareOutputs(ref, clean, { ref: 'cpu', dut: 'cuda' }).ok, 'the unchanged case passes').toBe(true);
        const buggy = makeCase(c, 'cpu');
        plant(buggy);
        buggy.run(null);
        const r = compareOutputs(ref, buggy, { ref: 'cpu', dut: 'cuda' });
        expect(r.ratio, `the planted bug passed: ${r.detail}`).toBeGreaterThan(1);
      },
      2 * budgetMs(c),
    ); // three runs and the bound's CPU passes
  }
});
