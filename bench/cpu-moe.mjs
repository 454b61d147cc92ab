// CPU MoE benchmark: the grouped-expert op (native.moe with a prepared moeExperts set, as the model
// calls it) at LongCat-Flash expert shapes (hidden 6144, expert intermediate 2048, bf16: 75.5 MB per
// expert) for decode (T = 1..8 tokens) and prefill shapes. Each token picks 8 distinct FFN experts
// + 4 zero experts (k = 12, LongCat's average of ~8 FFN experts per token), drawn at random from a
// pool larger than the last-level cache and redrawn every call, so weights are streamed.
//
// Rooflines, measured in this run:
//   bandwidth: benchReadBandwidth (all pool threads): 1 GiB before and after, 512 MiB before each
//              case; the highest sample is used.
//              Decode figure: bytes of the DISTINCT experts a call touches / time, as % of it.
//   GEMM peer: the same expert GEMM through the linear kernel (benchLinear, [rows, 6144] x
//              [2048, 6144]^T bf16, rows = tokens per expert), timed after every MoE call;
//              MoE GFLOP/s as % of it (the prefill figure).
// The kernel's in-wave schedule can be forced with LONGCAT_MOE_SCHED (auto | experts | linear).
//
//   LONGCAT_ADDON=build-bench/Release/longcat.node node bench/cpu-moe.mjs [--quick] [--out f.json]
import { writeFileSync } from 'node:fs';
import { native } from '../dist/index.js';
import { benchFlags, now, median, readBandwidth, randomBf16, rng } from './common.mjs';

const { quick, outPath } = benchFlags();

const H = 6144,
  I = 2048,
  K = 12,
  NF = 8;
const BYTES_PER_EXPERT = 3 * I * H * 2;

const f32 = (shape, fill) =>
  new native.Tensor('f32', shape, 'cpu', new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill));

function main() {
  const t00 = now();
  const nRouted = quick ? 16 : 24; // 16 x 75.5 MB = 1.2 GB: far above any cache
  // Every expert has its own memory; contents repeat across experts (irrelevant to bandwidth).
  const gu = randomBf16(I * H, 1, 120),
    dn = randomBf16(H * I, 2, 120);
  const gate = [],
    up = [],
    down = [];
  for (let e = 0; e < nRouted; e++) {
    gate.push(new native.Tensor('bf16', [I, H], 'cpu', gu));
    up.push(new native.Tensor('bf16', [I, H], 'cpu', gu));
    down.push(new native.Tensor('bf16', [H, I], 'cpu', dn));
  }
  const experts = native.moeExperts(gate, up, down);
  const bw0 = readBandwidth();
  const bwSamples = [bw0]; // + one 512 MiB sample before each case; the roofline is the highest

  const rand = rng(12345);
  const decodeT = quick ? [1, 4] : [1, 2, 4, 8];
  const prefillT = quick ? [64] : [64, 256];
  /**
   * One phase x token-count point; the bandwidth and linear fractions are filled in after the closing
   * bandwidth sample.
   * @type {Array<{ phase: string, T: number, k: number, ffnPerToken: number, iters: number, medianMs: number,
   *   touchedExperts: number, linearRows: number, linearMs: number, linearGflops: number, linearGbps: number,
   *   tokensPerExpert: number, weightBytes: number, gbps: number, gflops: number, tokensPerSecond: number,
   *   fracBandwidth?: number, fracLinear?: number, linearFracBandwidth?: number }>}
   */
  const rows = [];
  for (const T of [...decodeT, ...prefillT]) {
    const phase = T <= 8 ? 'decode' : 'prefill';
    const u = f32([T, H], 0.01),
      o = f32([T, H], 0);
    const idx = new Int32Array(T * K),
      w = new Float32Array(T * K).fill(0.5);
    const it = new native.Tensor('int32', [T, K], 'cpu', idx),
      wt = new native.Tensor('f32', [T, K], 'cpu', w);
    const route = () => {
      // Per token: NF distinct random FFN experts, then K - NF distinct zero experts.
      const touched = new Set();
      for (let t = 0; t < T; t++) {
        const pick = new Set();
        while (pick.size < NF) pick.add(rand.int(nRouted));
        let j = 0;
        for (const e of pick) {
          idx[t * K + j++] = e;
          touched.add(e);
        }
        for (; j < K; j++) idx[t * K + j] = nRouted + j - NF;
      }
      it.copyFromBytes(idx);
      return touched.size;
    };
    // Peer: the same expert GEMM through the linear kernel, [rows, H] x [I, H]^T with rows = this
    // case's tokens per expert, timed natively right after every MoE call (same load on the machine).
    const peerRows = Math.max(1, Math.round((T * NF) / Math.min(nRouted, T * NF)));
    const px = f32([peerRows, H], 0.01),
      py = f32([peerRows, I], 0);
    const peer = [];
    bwSamples.push(native.benchReadBandwidth(1 << 29, 2).gbps);
    const ms = [],
      touchedCounts = [];
    const budget = phase === 'decode' ? (quick ? 300 : 1500) : quick ? 800 : 2500;
    const t0 = now();
    for (let i = 0; ; i++) {
      const touched = route();
      native.synchronize('cpu');
      const a = now();
      native.moe(null, o, u, it, wt, nRouted, experts, null, null, null, null, null, nRouted + K);
      native.synchronize('cpu');
      if (i > 0) {
        ms.push(now() - a);
        touchedCounts.push(touched);
      } // first call: warm-up
      peer.push(native.benchLinear(py, px, [gate[(5 * i + T) % nRouted]], null, 0, 1).medianMs); // a different weight each time
      if (ms.length >= 2 && (ms.length >= 15 || now() - t0 > budget)) break;
    }
    const out = new Float32Array(o.toBytes().buffer);
    if (!Number.isFinite(out[0]) || out[0] === 0) throw new Error(`moe produced ${out[0]} at T=${T}`);
    const m = median(ms);
    const touched = touchedCounts.reduce((a, b) => a + b, 0) / touchedCounts.length;
    const bytes = touched * BYTES_PER_EXPERT,
      flops = 2 * 3 * T * NF * H * I;
    const pm = median(peer);
    px.dispose();
    py.dispose();
    rows.push({
      phase,
      T,
      k: K,
      ffnPerToken: NF,
      iters: ms.length,
      medianMs: m,
      touchedExperts: touched,
      linearRows: peerRows,
      linearMs: pm,
      linearGflops: (2 * peerRows * I * H) / pm / 1e6,
      linearGbps: (I * H * 2) / pm / 1e6,
      tokensPerExpert: (T * NF) / touched,
      weightBytes: bytes,
      gbps: bytes / m / 1e6,
      gflops: flops / m / 1e6,
      tokensPerSecond: T / (m / 1e3),
    });
    for (const x of [u, o, it, wt]) x.dispose();
  }

  experts.dispose();
  for (const t of [...gate, ...up, ...down]) t.dispose();
  const bw1 = readBandwidth();
  bwSamples.push(bw1);
  const bw = Math.max(...bwSamples);
  for (const r of rows) {
    r.fracBandwidth = r.gbps / bw;
    r.fracLinear = r.gflops / r.linearGflops;
    r.linearFracBandwidth = r.linearGbps / bw;
  }
  const res = {
    bench: 'cpu-moe',
    date: new Date().toISOString(),
    threads: native.threads(),
    isa: native.cpuFeatures().isa,
    sched: process.env.LONGCAT_MOE_SCHED ?? 'auto',
    shapes: {
      hidden: H,
      intermediate: I,
      dtype: 'bf16',
      nRoutedPool: nRouted,
      k: K,
      ffnPerToken: NF,
      bytesPerExpert: BYTES_PER_EXPERT,
    },
    rooflines: { readGbps: bwSamples, readGbpsUsed: bw },
    rows,
    seconds: (now() - t00) / 1000,
  };
  if (outPath) writeFileSync(outPath, `${JSON.stringify(res, null, 2)}\n`);
  console.log(
    `## cpu-moe: moe(), hidden ${H}, expert ffn ${I}, bf16 (${(BYTES_PER_EXPERT / 1e6).toFixed(1)} MB/expert), ` +
      `${NF} FFN + ${K - NF} zero experts per token from a pool of ${nRouted}`,
  );
  console.log(
    `threads ${res.threads}, isa ${res.isa}, sched ${res.sched}; read bandwidth ${bwSamples.map(b => b.toFixed(1)).join(' / ')} GB/s (before, each case, after; using ${bw.toFixed(1)})`,
  );
  console.log(
    '| phase | T | experts touched | tok/expert | ms | tokens/s | weight GB/s | % read bw | GFLOP/s | linear GEMM peer | % of peer |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |');
  for (const r of rows)
    console.log(
      `| ${r.phase} | ${r.T} | ${r.touchedExperts.toFixed(1)} | ${r.tokensPerExpert.toFixed(1)} | ${r.medianMs.toFixed(2)} | ` +
        `${r.tokensPerSecond.toFixed(1)} | ${r.gbps.toFixed(1)} | ${(100 * r.fracBandwidth).toFixed(0)}% | ${r.gflops.toFixed(1)} | ` +
        `${r.linearRows} rows: ${r.linearGflops.toFixed(1)} GFLOP/s, ${(100 * r.linearFracBandwidth).toFixed(0)}% bw | ${(100 * r.fracLinear).toFixed(0)}% |`,
    );
}

main();
