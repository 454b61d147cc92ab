// CPU MLA decode benchmark: mlaDecodeAbsorbed (FlashMLA-style absorbed decode, one query per
// sequence) over the paged bf16 latent cache at the real LongCat-Flash shapes: 64 heads,
// kv_lora 512 + rope 64 = 576 values (1152 bytes) per cached token, block size 64.
// Batch 1..16 x context 1k..32k. Each call's block tables point at a different part of a pool
// larger than the last-level cache, so the cache is streamed from memory, never timed from cache.
//
// Rooflines, measured in this run:
//   bandwidth: benchReadBandwidth (1 GiB summed by every pool thread), before and after; the higher
//   compute:   the same math as a GEMM through the linear kernel (benchLinear): 64 head rows of
//              f32 x 576 against N cached rows of bf16 = the score product of one sequence
//   roofline time = max(cache bytes / bandwidth, FLOPs / GEMM rate); "% roof" = roofline / measured.
//
//   LONGCAT_ADDON=build-bench/Release/longcat.node node bench/cpu-mla.mjs [--quick] [--out f.json]
import { writeFileSync } from 'node:fs';
import { native } from '../dist/index.js';
import { benchFlags, now, median, readBandwidth, randomBf16, randomF32 } from './common.mjs';

const { quick, outPath } = benchFlags();

const NH = 64,
  DL = 512,
  DR = 64,
  DN = 128,
  W = DL + DR,
  BS = 64;
const FLOP_PER_TOKEN_HEAD = 2 * (DL + DR) + 2 * DL; // score dot (latent + rope) + value accumulate
const BYTES_PER_TOKEN = W * 2; // bf16 cache row

function main() {
  const t00 = now();
  const batches = quick ? [1, 4, 16] : [1, 4, 16];
  const contexts = quick ? [1024, 8192] : [1024, 4096, 32768];
  const cases = [];
  for (const B of batches) for (const ctx of contexts) if (!(quick && B * ctx > 65536)) cases.push([B, ctx]);
  const maxTokens = Math.max(...cases.map(([B, c]) => B * c));
  // Pool: at least 512 MiB so rotation streams from memory; all of the largest case.
  const poolBlocks = Math.ceil(Math.max(maxTokens, (512 << 20) / BYTES_PER_TOKEN) / BS / 64) * 64;
  const cache = new native.Tensor('bf16', [poolBlocks, BS, W], 'cpu');
  const chunk = randomBf16(64 * BS * W, 7, 123);
  for (let b = 0; b < poolBlocks; b += 64) {
    const v = cache.narrow(b, 64);
    v.copyFromBytes(chunk);
    v.dispose();
  }

  const bw0 = readBandwidth();
  // Compute roofline: one sequence's score product as a GEMM, [64, 576] f32 x [N, 576]^T bf16;
  // the fastest of the calls, best of two samples (before and after the cases).
  const gN = 8192;
  const gw = [new native.Tensor('bf16', [gN, W], 'cpu', randomBf16(gN * W, 3, 123))];
  const gx = new native.Tensor('f32', [NH, W], 'cpu', randomF32(NH * W, 4));
  const gy = new native.Tensor('f32', [NH, gN], 'cpu');
  const gemmRate = () => (2 * NH * gN * W) / native.benchLinear(gy, gx, gw, null, 2, quick ? 7 : 15).minMs / 1e6;
  const gemm0 = gemmRate();

  /**
   * One batch x context point; the roofline fractions are filled in once both rooflines are measured.
   * @type {Array<{ batch: number, context: number, iters: number, medianMs: number, cacheBytes: number,
   *   flops: number, gbps: number, gflops: number, fracBandwidth?: number, fracGemm?: number,
   *   bound?: 'memory' | 'compute', fracRoofline?: number }>}
   */
  const rows = [];
  let rot = 0;
  for (const [B, ctx] of cases) {
    const nb = ctx / BS;
    const qLat = new native.Tensor('f32', [B, NH, DL], 'cpu', randomF32(B * NH * DL, 11));
    const q = new native.Tensor('f32', [B, NH, DN + DR], 'cpu', randomF32(B * NH * (DN + DR), 12));
    const oLat = new native.Tensor('f32', [B, NH, DL], 'cpu');
    const seqLens = new native.Tensor('int32', [B], 'cpu', new Int32Array(B).fill(ctx));
    const table = new Int32Array(B * nb);
    const bt = new native.Tensor('int32', [B, nb], 'cpu', table);
    const setTable = () => {
      // Consecutive runs of blocks starting at a rotating offset of the pool.
      for (let i = 0; i < B * nb; i++) table[i] = (rot + i) % poolBlocks;
      rot = (rot + B * nb) % poolBlocks;
      bt.copyFromBytes(table);
    };
    const flops = B * ctx * NH * FLOP_PER_TOKEN_HEAD,
      bytes = B * ctx * BYTES_PER_TOKEN;
    const ms = [];
    const budget = quick ? 400 : 1200;
    const t0 = now();
    for (let i = 0; ; i++) {
      setTable();
      native.synchronize('cpu');
      const a = now();
      native.mlaDecodeAbsorbed(null, oLat, qLat, q, cache, bt, seqLens, 0.0625);
      native.synchronize('cpu');
      if (i > 0) ms.push(now() - a); // the first call is a warm-up
      if (ms.length >= 3 && (ms.length >= 9 || now() - t0 > budget)) break;
    }
    const o = new Float32Array(oLat.toBytes().buffer);
    if (!Number.isFinite(o[0]) || !Number.isFinite(o[o.length - 1]))
      throw new Error('mlaDecodeAbsorbed produced non-finite output');
    const m = median(ms);
    rows.push({
      batch: B,
      context: ctx,
      iters: ms.length,
      medianMs: m,
      cacheBytes: bytes,
      flops,
      gbps: bytes / m / 1e6,
      gflops: flops / m / 1e6,
    });
    for (const t of [qLat, q, oLat, seqLens, bt]) t.dispose();
  }
  cache.dispose();
  const gemm1 = gemmRate();
  const gemmGflops = Math.max(gemm0, gemm1);
  for (const t of [...gw, gx, gy]) t.dispose();
  const bw1 = readBandwidth();
  const bw = Math.max(bw0, bw1);
  for (const r of rows) {
    r.fracBandwidth = r.gbps / bw;
    r.fracGemm = r.gflops / gemmGflops;
    const roofMs = Math.max(r.cacheBytes / bw / 1e6, r.flops / gemmGflops / 1e6);
    r.bound = r.cacheBytes / bw >= r.flops / gemmGflops ? 'memory' : 'compute';
    r.fracRoofline = roofMs / r.medianMs;
  }
  const res = {
    bench: 'cpu-mla',
    date: new Date().toISOString(),
    threads: native.threads(),
    isa: native.cpuFeatures().isa,
    shapes: { heads: NH, kvLora: DL, rope: DR, blockSize: BS, cacheDtype: 'bf16' },
    rooflines: {
      readGbps: [bw0, bw1],
      readGbpsUsed: bw,
      gemmGflops,
      gemmGflopsSamples: [gemm0, gemm1],
      gemmShape: `[${NH}, ${W}] f32 x [${gN}, ${W}]^T bf16`,
    },
    rows,
    seconds: (now() - t00) / 1000,
  };
  if (outPath) writeFileSync(outPath, `${JSON.stringify(res, null, 2)}\n`);
  console.log(`## cpu-mla: mlaDecodeAbsorbed, ${NH} heads, latent ${DL} + rope ${DR}, bf16 paged cache (block ${BS})`);
  console.log(
    `threads ${res.threads}, isa ${res.isa}; read bandwidth ${bw0.toFixed(1)} / ${bw1.toFixed(1)} GB/s (before / after, using ${bw.toFixed(1)}); ` +
      `GEMM roofline ${gemmGflops.toFixed(0)} GFLOP/s (${res.rooflines.gemmShape})`,
  );
  console.log('| batch | context | ms | cache GB/s | % read bw | GFLOP/s | % GEMM | bound | % roofline |');
  console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |');
  for (const r of rows)
    console.log(
      `| ${r.batch} | ${r.context} | ${r.medianMs.toFixed(2)} | ${r.gbps.toFixed(1)} | ${(100 * r.fracBandwidth).toFixed(1)}% | ` +
        `${r.gflops.toFixed(1)} | ${(100 * r.fracGemm).toFixed(0)}% | ${r.bound} | ${(100 * r.fracRoofline).toFixed(0)}% |`,
    );
}

main();
