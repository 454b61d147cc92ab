// The read probes of the benchmarks (native/ops/bench.cc over cpu::read_sum): benchReadTensors reads
// exactly the given tensors' bytes -- odd sizes, odd offsets, the lines split over the pool threads
// across tensor boundaries -- on every ISA path, checked by its checksum against the sum computed
// here; benchReadBandwidth's fresh buffer likewise; benchDotPeak's instruction per ISA and precision
// and the multiply-adds it ran (from its exact sums); typed errors for bad arguments. No timing is
// asserted beyond a positive rate. decodeWeightTensors (what the benches' weight probe reads) against
// weightAccounting, for a model as stored and one quantized to int4 at load.
import { afterAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { native } from '../lib/index.js';
import { decodeWeightTensors, weightAccounting } from '../lib/bench.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { cudaAvailable, eachIsa, expectCode, rng } from './helpers.js';
import { fixtureRoot } from './model-fixture.js';

const M64 = (1n << 64n) - 1n;

/** The bytes as little-endian 64-bit words (the last one zero-padded), summed modulo 2^64. */
function wordSum(bytes: Uint8Array): bigint {
  const padded = new Uint8Array(Math.ceil(bytes.length / 8) * 8);
  padded.set(bytes);
  const v = new DataView(padded.buffer);
  let s = 0n;
  for (let o = 0; o < padded.length; o += 8) s = (s + v.getBigUint64(o, true)) & M64;
  return s;
}

const threads0 = native.threads();
afterAll(() => native.setThreads(threads0));

describe('benchReadTensors', () => {
  const r = rng(19);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => r.int(256));
  // odd sizes (tails of 1..63 bytes, a lone tail, several 64 KiB pieces), an int8 view at an odd offset
  const base = new native.Tensor('int8', [3 * 65536 + 4099], 'cpu', bytes(3 * 65536 + 4099));
  const tensors = [
    new native.Tensor('int8', [1], 'cpu', bytes(1)),
    new native.Tensor('f32', [3, 5], 'cpu', new Float32Array(new Uint8Array(bytes(60)).buffer)),
    new native.Tensor('bf16', [4097], 'cpu', new Uint16Array(bytes(8194).buffer)),
    base.narrow(13, 2 * 65536 + 77),
    new native.Tensor('int8', [65536 + 64], 'cpu', bytes(65536 + 64)),
  ];
  afterAll(() => {
    for (const t of tensors) t.dispose();
    base.dispose();
  });
  const want = tensors.reduce((s, t) => (s + wordSum(t.toBytes())) & M64, 0n);
  const total = tensors.reduce((s, t) => s + t.nbytes, 0);

  it('reads every byte of the tensors once (checksum, byte count), every ISA, 1 and 2 threads', () => {
    eachIsa(isa => {
      for (const th of [1, 2]) {
        native.setThreads(th);
        const p = native.benchReadTensors(tensors, 3);
        expect(p.bytes, `${isa} ${th} threads`).toBe(total);
        expect(p.checksum, `${isa} ${th} threads`).toBe(want);
        expect(p.samples).toHaveLength(3);
        expect(p.gbps).toBeGreaterThan(0);
        // each tensor alone and a tensor twice
        for (const t of tensors) expect(native.benchReadTensors([t], 1).checksum, `${isa} ${t.shape}`).toBe(wordSum(t.toBytes()));
        const t3 = tensors[3]!;
        expect(native.benchReadTensors([t3, t3], 1).checksum).toBe((2n * wordSum(t3.toBytes())) & M64);
      }
    });
    native.setThreads(threads0);
  });

  it('typed errors: no tensors, no bytes, passes < 1, not a tensor, a device tensor', () => {
    expectCode(() => native.benchReadTensors([], 1), 'E_ARGUMENT', /need >= 1 tensor/);
    const empty = new native.Tensor('f32', [0], 'cpu');
    expectCode(() => native.benchReadTensors([empty], 1), 'E_ARGUMENT', /no bytes/);
    empty.dispose();
    expectCode(() => native.benchReadTensors(tensors, 0), 'E_ARGUMENT', /passes >= 1/);
    expectCode(() => native.benchReadTensors([{} as never], 1), 'E_ARGUMENT');
    if (cudaAvailable) {
      // (the emulated CUDA build of the CI: test:emu)
      const g = new native.Tensor('f32', [4], 'cuda:0', new Float32Array(4));
      expectCode(() => native.benchReadTensors([tensors[0]!, g], 1), 'E_DEVICE', /tensors\[1\] is not a CPU tensor/);
      g.dispose();
    }
  });
});

describe('benchReadBandwidth', () => {
  it('reads its whole buffer (every byte 1) on every ISA; typed errors', () => {
    const n = (1 << 20) + 4096 + 100; // rounded down to 4 KiB
    const words = BigInt(((1 << 20) + 4096) / 8);
    eachIsa(isa => {
      const p = native.benchReadBandwidth(n, 2);
      expect(p.bytes, isa).toBe((1 << 20) + 4096);
      expect(p.checksum, isa).toBe((words * 0x0101010101010101n) & M64);
      expect(p.gbps).toBeGreaterThan(0);
    });
    expectCode(() => native.benchReadBandwidth(1 << 19, 1), 'E_ARGUMENT', /bytes >= 1 MiB/);
    expectCode(() => native.benchReadBandwidth(1 << 20, 0), 'E_ARGUMENT', /passes >= 1/);
  });
});

describe('benchDotPeak', () => {
  // the instruction the GEMM of bf16 weights runs on at each ISA and precision
  const instruction = (isa: string, precision: string) =>
    isa === 'avx512' && native.cpuFeatures().avx512bf16 && precision !== 'highest'
      ? 'vdpbf16ps zmm'
      : isa === 'avx512'
        ? 'vfmadd231ps zmm'
        : isa === 'avx2'
          ? 'vfmadd231ps ymm'
          : 'scalar fp32 multiply-add';

  it("runs the GEMM's instruction the FLOPs it counts (each multiply-add adds 2^-24), every ISA, precision, 1 and 2 threads", () => {
    const precision0 = native.setMatmulPrecision('bf16');
    try {
      eachIsa(isa => {
        for (const precision of ['bf16', 'highest'] as const) {
          native.setMatmulPrecision(precision);
          for (const th of [1, 2]) {
            native.setThreads(th);
            const p = native.benchDotPeak(1000, 2);
            const at = `${isa} ${precision} ${th} threads`;
            expect(p.instruction, at).toBe(instruction(isa, precision));
            expect(p.threads, at).toBe(th);
            expect(p.samples, at).toHaveLength(2);
            expect(p.flops % (8 * th * 1000), at).toBe(0); // 8 chunks a thread of 1000 rounds
            expect(p.macs, at).toBe(p.flops / 2);
            expect(p.gflops, at).toBeGreaterThan(0);
          }
        }
      });
    } finally {
      native.setMatmulPrecision(precision0);
      native.setThreads(threads0);
    }
  });

  it('typed errors: iters and passes out of range', () => {
    expectCode(() => native.benchDotPeak(0, 1), 'E_ARGUMENT', /1 <= iters <= 2\^20/);
    expectCode(() => native.benchDotPeak((1 << 20) + 1, 1), 'E_ARGUMENT', /got 1048577 and 1/);
    expectCode(() => native.benchDotPeak(10, 0), 'E_ARGUMENT', /1 <= passes <= 100/);
    expectCode(() => native.benchDotPeak(10, 101), 'E_ARGUMENT', /got 10 and 101/);
  });
});

describe('decodeWeightTensors', () => {
  const root = fixtureRoot('longcat-read-probe-');
  it("every weight of weightAccounting's decode bytes, every routed expert; int4 at load: the made experts", async () => {
    const dir = path.join(root, 'tiny');
    await initRandom({ preset: 'tiny', seed: 5, out: dir });
    for (const quantize of [undefined, 'int4'] as const) {
      const model = await loadModel(dir, { backend: 'cpu', maxContext: 64, ...(quantize ? { quantize } : {}) });
      try {
        const d = model.engine.dims;
        const acc = weightAccounting(model);
        const ts = decodeWeightTensors(model);
        const bytes = ts.reduce((a, t) => a + t.nbytes, 0);
        expect(bytes, quantize).toBe(acc.denseBytes + acc.headBytes + d.layers * d.nRouted * acc.expertBytes);
        const experts = model.engine.w.layers.flatMap(L => L.moe.expertTensors);
        expect(experts).toHaveLength(d.layers * d.nRouted);
        for (const e of experts) expect(e).toHaveLength(quantize ? 6 : 3); // gate, up, down (+ their scales)
        expect(experts[0]![0]!.dtype).toBe(quantize ? 'int8' : 'bf16');
        const p = native.benchReadTensors(ts, 1);
        expect(p.bytes).toBe(bytes);
        // one expert as stored (bf16 [n, k] x 3), or in the int4 format: per row and group of 128,
        // 64 bytes of codes and a 2-byte scale
        const x = model.checkpoint.expertWeights(0, 0);
        const want = [x.gate, x.up, x.down].reduce((a, t) => {
          const [n, k] = t.shape as [number, number];
          return a + (quantize ? n * Math.ceil(k / 128) * (64 + 2) : t.nbytes);
        }, 0);
        expect(acc.expertBytes, quantize).toBe(want);
      } finally {
        model.dispose();
      }
    }
  });
});
