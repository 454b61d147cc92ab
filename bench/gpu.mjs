// CUDA microbenchmarks, one script for one device call (< 8 min on an H100/H200). Needs only node,
// dist/ and a CUDA build of the addon (LONGCAT_ADDON); no PyTorch on the device, so the rooflines
// are measured here: device copy bandwidth (a 2 GiB device-to-device copy through `convert`) for
// memory-bound kernels, and our own dense GEMM at equal FLOPs as the peer of the grouped GEMM. The
// compute peak quoted per card (PERF.md: H100 ~800, H200 ~790 TFLOP/s bf16 dense, fp8 twice) is a
// reference, not a measurement of this run.
//
//   node bench/gpu.mjs [--quick] [--only gemm,moe,mla,wgmma] [--out bench/out/gpu.json]
//   --smoke [--device D]: tiny shapes on the CPU (or D, e.g. the emulated cuda:0 of test/emu), so
//   that the script is exercised without a GPU: two GEMM shapes, and per section the smallest sizes
//   that still take each kernel path (skinny and tiled GEMM, skinny and tiled MoE), each run once.
//
// Sections:
//   gemm  linear at the LongCat-Flash shapes (expert gate+up N=4096 K=6144, down N=6144 K=2048,
//         dense FFN gate+up N=24576 K=6144, attention q_a / q_b / kv_a / o_proj) x T = 1..4096, bf16
//         weights at precision 'bf16' (mma.sync tiles, and the opt-in TMA + wgmma kernel) and fp8
//         weights at precision 'fp8': TFLOP/s, GB/s, % of copy bandwidth (decode), fp8 / bf16 speedup.
//   moe   the grouped-expert MoE (64 experts of LongCat width, top-8) at 8..1024 rows per expert,
//         bf16 and fp8: TFLOP/s vs the dense linear pair (gate+up, down) at the same rows, and GB/s of
//         the expert weights touched vs copy bandwidth at decode sizes.
//   wgmma the opt-in TMA + wgmma GEMM against the mma.sync tiles on the GEMM shapes (and how far
//         their outputs differ), bf16 x and W.
//   mla   absorbed MLA decode (64 heads, 512 + 64, bf16 paged cache) at batch 1..64 x context 1k..32k:
//         GB/s of the cache read vs copy bandwidth, TFLOP/s; tensor cores (precision 'bf16') and,
//         for reference, the fp32 CUDA-core kernel (precision 'highest').
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { native } from '../dist/native.js';
import { Stream } from '../dist/device.js';
import { tensor, empty, toArray } from '../dist/tensor.js';
import { deviceRandom, eventTimes, median, randomF32 } from './common.mjs';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : null;
const outFile = args.includes('--out') ? args[args.indexOf('--out') + 1] : null;
const want = s => !only || only.includes(s);
const smoke = args.includes('--smoke');

const status = native.cudaStatus();
if (!smoke && !status.available) {
  console.error(`bench/gpu: CUDA unavailable: ${status.reason || 'not compiled in'}`);
  process.exit(2);
}
const dev = smoke ? (args.includes('--device') ? args[args.indexOf('--device') + 1] : 'cpu') : 'cuda:0';
/** The card as printed and recorded: the CUDA device's own info, or a stand-in for the CPU smoke run. */
function cardInfo() {
  if (dev === 'cpu') return { name: 'cpu (smoke)', computeCapability: '0.0', multiprocessors: 0 };
  const d = native.devices().find(x => x.id === dev);
  if (d?.kind !== 'cuda') throw new Error(`bench/gpu: ${dev} is not a CUDA device of this addon`);
  return d;
}
const card = cardInfo();
const stream = new Stream(dev);
console.log(`bench/gpu on ${card.name} (sm_${card.computeCapability.replace('.', '')}, ${card.multiprocessors} SMs)`);
// LongCat-Flash sizes; --smoke divides widths by 24 and counts by 8 and picks its own few sizes
const Z = smoke ? { w: 24, n: 8 } : { w: 1, n: 1 };
const wd = x => Math.max(1, Math.round(x / Z.w));
const results = { card: card.name, computeCapability: card.computeCapability };

/** Median milliseconds of `fn` on the stream, timed with CUDA events (--smoke: one untimed-quality run). */
function timeMs(fn, iters = quick ? 5 : 12) {
  if (smoke) iters = 1;
  else {
    fn();
    fn();
  }
  return median(eventTimes(dev, stream, fn, iters));
}

function withPrecision(p, fn) {
  const prev = native.setMatmulPrecision(p);
  try {
    return fn();
  } finally {
    native.setMatmulPrecision(prev);
  }
}

// Random device tensors: one random chunk per dtype is uploaded once, then copied on the device
// into every tensor (distinct addresses: no cache reuse across weights).
const random = deviceRandom(dev, stream, smoke ? 1 << 12 : 1 << 23);
const randomDevice = random.make;
const fp8Scales = (n, k) =>
  tensor(
    randomF32(Math.ceil(n / 128) * Math.ceil(k / 128), 7, 1).map(v => 0.01 + Math.abs(v) * 0.02),
    [Math.ceil(n / 128), Math.ceil(k / 128)],
    { device: dev },
  );

const _rows = [];
const table = (name, r) => {
  console.log(`\n== ${name}`);
  console.table(r);
};

// ---- copy bandwidth ------------------------------------------------------------------------------
let copyGBs = 0;
{
  const n = smoke ? 1 << 16 : 1 << 30; // bf16 elements: 2 GiB each way
  const a = randomDevice([n], 'bf16'),
    b = empty([n], { dtype: 'bf16', device: dev });
  const ms = timeMs(() => native.convert(stream, b, a), 5);
  copyGBs = (2 * 2 * n) / ms / 1e6;
  a.dispose();
  b.dispose();
  console.log(`device copy: ${copyGBs.toFixed(0)} GB/s (read + write of 2 GiB)`);
  results.copyGBs = copyGBs;
}

// ---- dense GEMMs ---------------------------------------------------------------------------------
/** @typedef {[name: string, n: number, k: number]} GemmShape */
const shapes = /** @type {GemmShape[]} */ ([
  ['expert gate+up', 4096, 6144],
  ['expert down', 6144, 2048],
  ['dense FFN gate+up', 24576, 6144],
  ['attn q_a', 1536, 6144],
  ['attn q_b', 12288, 1536],
  ['attn kv_a', 576, 6144],
  ['attn o_proj', 6144, 8192],
])
  .map(([name, n, k]) => /** @type {GemmShape} */ ([name, wd(n), wd(k)]))
  .slice(0, smoke ? 2 : undefined);
if (want('gemm')) {
  const Ts = smoke ? [1, 17] : quick ? [1, 64, 4096] : [1, 8, 64, 512, 4096];
  const out = [];
  for (const [name, n, k] of shapes) {
    const wb = randomDevice([n, k], 'bf16');
    const w8 = randomDevice([n, k], 'fp8_e4m3', 200);
    const s8 = fp8Scales(n, k);
    for (const t of Ts) {
      const x = randomDevice([t, k], 'bf16', 1),
        y = empty([t, n], { dtype: 'bf16', device: dev });
      const flops = 2 * t * n * k;
      const ms16 = withPrecision('bf16', () => timeMs(() => native.linear(stream, y, x, wb, null)));
      const ms8 = withPrecision('fp8', () => timeMs(() => native.linear(stream, y, x, w8, s8)));

      const bytes16 = 2 * n * k + 2 * t * (k + n),
        bytes8 = n * k + 2 * t * (k + n);
      out.push({
        shape: name,
        N: n,
        K: k,
        T: t,
        'bf16 us': (ms16 * 1e3).toFixed(1),
        'bf16 TFLOP/s': (flops / ms16 / 1e9).toFixed(1),
        'bf16 %copyBW': ((bytes16 / ms16 / 1e6 / copyGBs) * 100).toFixed(0),
        'fp8 us': (ms8 * 1e3).toFixed(1),
        'fp8 TFLOP/s': (flops / ms8 / 1e9).toFixed(1),
        'fp8 %copyBW': ((bytes8 / ms8 / 1e6 / copyGBs) * 100).toFixed(0),
        'fp8/bf16': (ms16 / ms8).toFixed(2),
      });
      x.dispose();
      y.dispose();
    }
    wb.dispose();
    w8.dispose();
    s8.dispose();
  }
  table(
    'linear (bf16 weights at precision bf16; fp8 weights at precision fp8; %copyBW = bytes moved / time / copy bandwidth)',
    out,
  );
  results.gemm = out;
}

// ---- grouped-expert MoE --------------------------------------------------------------------------
if (want('moe')) {
  const H = wd(6144),
    I = wd(2048),
    NR = 64 / Z.n,
    K = 8 / Z.n;
  const out = [];
  for (const [wdt, precision] of [
    ['bf16', 'bf16'],
    ['fp8_e4m3', 'fp8'],
  ]) {
    const fp8 = wdt === 'fp8_e4m3';
    const g = [],
      u = [],
      d = [],
      gs = [],
      us = [],
      ds = [];
    for (let e = 0; e < NR; e++) {
      g.push(randomDevice([I, H], wdt, fp8 ? 200 : 0.05));
      u.push(randomDevice([I, H], wdt, fp8 ? 200 : 0.05));
      d.push(randomDevice([H, I], wdt, fp8 ? 200 : 0.05));
      if (fp8) {
        gs.push(fp8Scales(I, H));
        us.push(fp8Scales(I, H));
        ds.push(fp8Scales(H, I));
      }
    }
    const set = native.moeExperts(g, u, d, fp8 ? gs : null, fp8 ? us : null, fp8 ? ds : null);
    // the dense peer: one gate+up and one down weight at the same rows
    const wgu = randomDevice([2 * I, H], wdt, fp8 ? 200 : 0.05),
      wd = randomDevice([H, I], wdt, fp8 ? 200 : 0.05);
    const sgu = fp8 ? fp8Scales(2 * I, H) : null,
      sd = fp8 ? fp8Scales(H, I) : null;
    for (const perExpert of smoke ? [1, 17] : quick ? [8, 256] : [8, 64, 256, 1024]) {
      const T = (perExpert * NR) / K;
      const ids = new Int32Array(T * K);
      for (let t = 0; t < T; t++) for (let j = 0; j < K; j++) ids[t * K + j] = (t * 7 + j * 8 + (t >> 3)) % NR; // balanced, distinct per token
      const idx = tensor(ids, [T, K], { dtype: 'int32', device: dev });
      const w = tensor(randomF32(T * K, 3, 1).map(Math.abs), [T, K], { device: dev });
      const x = randomDevice([T, H], 'f32', 1),
        y = empty([T, H], { device: dev });
      const ms = withPrecision(precision, () =>
        timeMs(() => native.moe(stream, y, x, idx, w, NR, set, null, null, null, null, null, NR)),
      );
      const M = T * K,
        flops = 6 * M * H * I;
      const xa = randomDevice([M, H], 'bf16', 1),
        ya = empty([M, 2 * I], { dtype: 'bf16', device: dev });
      const xd = randomDevice([M, I], 'bf16', 1),
        yd = empty([M, H], { dtype: 'bf16', device: dev });
      const msDense = withPrecision(precision, () =>
        timeMs(() => {
          native.linear(stream, ya, xa, wgu, sgu);
          native.linear(stream, yd, xd, wd, sd);
        }),
      );
      const wbytes = NR * 3 * H * I * (fp8 ? 1 : 2);
      out.push({
        weights: wdt,
        'rows/expert': perExpert,
        T,
        us: (ms * 1e3).toFixed(1),
        'TFLOP/s': (flops / ms / 1e9).toFixed(1),
        'dense pair TFLOP/s': (flops / msDense / 1e9).toFixed(1),
        'grouped/dense': (msDense / ms).toFixed(2),
        'weights GB/s': (wbytes / ms / 1e6).toFixed(0),
        '%copyBW': ((wbytes / ms / 1e6 / copyGBs) * 100).toFixed(0),
      });
      for (const t of [idx, w, x, y, xa, ya, xd, yd]) t.dispose();
    }
    set.dispose();
    for (const t of [...g, ...u, ...d, ...gs, ...us, ...ds, wgu, wd]) t.dispose();
    sgu?.dispose();
    sd?.dispose();
  }
  table('grouped MoE, 64 experts H=6144 I=2048 top-8 (grouped/dense = dense pair time / grouped time at equal FLOPs)', out);
  results.moe = out;
}

// ---- MLA decode ----------------------------------------------------------------------------------
if (want('mla')) {
  const NH = 64 / Z.n,
    DL = 512,
    DR = 64,
    BS = 64,
    ROW = DL + DR;
  const Bs = smoke ? [1, 2] : quick ? [1, 64] : [1, 8, 32, 64],
    ctxs = smoke ? [64, 192] : quick ? [1024, 32768] : [1024, 4096, 16384, 32768];
  const maxBlocks = Math.max(...Bs) * (Math.max(...ctxs) / BS);
  const cache = randomDevice([maxBlocks, BS, ROW], 'bf16', 1);
  const out = [];
  for (const B of Bs)
    for (const ctx of ctxs) {
      const mb = ctx / BS;
      const bt = tensor(
        Int32Array.from({ length: B * mb }, (_, i) => (i * 7919) % maxBlocks),
        [B, mb],
        { dtype: 'int32', device: dev },
      );
      const sl = tensor(new Int32Array(B).fill(ctx), [B], { dtype: 'int32', device: dev });
      const ql = randomDevice([B, NH, DL], 'f32', 0.3),
        q = randomDevice([B, NH, 7 + DR], 'f32', 0.3);
      const ol = empty([B, NH, DL], { device: dev });
      const run = () => native.mlaDecodeAbsorbed(stream, ol, ql, q, cache, bt, sl, 1 / Math.sqrt(192));
      const ms = withPrecision('bf16', () => timeMs(run)); // tensor cores (q, p in bf16)
      const ms32 = withPrecision('highest', () => timeMs(run, quick ? 3 : 5)); // fp32 CUDA cores
      const bytes = B * ctx * ROW * 2,
        flops = 2 * B * ctx * NH * (ROW + DL);
      out.push({
        batch: B,
        context: ctx,
        us: (ms * 1e3).toFixed(1),
        'GB/s': (bytes / ms / 1e6).toFixed(0),
        '%copyBW': ((bytes / ms / 1e6 / copyGBs) * 100).toFixed(0),
        'TFLOP/s': (flops / ms / 1e9).toFixed(1),
        'fp32-core %copyBW': ((bytes / ms32 / 1e6 / copyGBs) * 100).toFixed(0),
      });
      for (const t of [bt, sl, ql, q, ol]) t.dispose();
    }
  cache.dispose();
  table('MLA decode (absorbed, 64 heads, bf16 paged cache, block 64)', out);
  results.mla = out;
}

// ---- the opt-in TMA + wgmma GEMM (never run on a card before: last, and checked against mma) ----
if (want('wgmma') && dev !== 'cpu') {
  const out = [];
  for (const [name, n, k] of shapes) {
    const wb = randomDevice([n, k], 'bf16');
    for (const t of smoke ? [17] : quick ? [512] : [64, 512, 4096]) {
      const x = randomDevice([t, k], 'bf16', 1),
        y0 = empty([t, n], { device: dev }),
        y1 = empty([t, n], { device: dev });
      const flops = 2 * t * n * k;
      const msMma = withPrecision('bf16', () => timeMs(() => native.linear(stream, y0, x, wb, null)));
      const prev = native.setCudaGemm('wgmma');
      let msWg;
      try {
        msWg = withPrecision('bf16', () => timeMs(() => native.linear(stream, y1, x, wb, null)));
      } finally {
        native.setCudaGemm(prev);
      }
      const a = toArray(y0),
        b = toArray(y1);
      let scale = 1e-30,
        worst = 0;
      for (let i = 0; i < a.length; i++) scale = Math.max(scale, Math.abs(a[i]));
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Number.isNaN(b[i]) ? Infinity : Math.abs(a[i] - b[i]));
      out.push({
        shape: name,
        N: n,
        K: k,
        T: t,
        'mma TFLOP/s': (flops / msMma / 1e9).toFixed(1),
        'wgmma TFLOP/s': (flops / msWg / 1e9).toFixed(1),
        'wgmma/mma': (msMma / msWg).toFixed(2),
        'max |wgmma - mma| / max |y|': (worst / scale).toExponential(1),
      });
      for (const v of [x, y0, y1]) v.dispose();
    }
    wb.dispose();
  }
  table('bf16 GEMM: mma.sync tiles vs the TMA + wgmma kernel (setCudaGemm), x and W bf16', out);
  results.wgmma = out;
}

random.dispose();
if (outFile) {
  mkdirSync(path.dirname(outFile), { recursive: true });
  writeFileSync(outFile, JSON.stringify(results, null, 2));
}
