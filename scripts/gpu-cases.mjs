// The CUDA-vs-CPU parity cases: every op that has a CUDA kernel, on identical random inputs
// on 'cpu' (the oracle) and 'cuda:0'. Used by scripts/gpu-check.mjs (parity + timings on a
// GPU machine that has only node, dist/ and the addon) and by test/cuda.test.ts (npm test, skipped
// without a GPU). Imports only core modules: a GPU machine may have no node_modules.
import { native } from '../dist/native.js';
import { Event, Stream } from '../dist/device.js';
import { tensor, toArray, empty, numel } from '../dist/tensor.js';
import { roundBf16 } from '../dist/numeric.js';

export const dev = 'cuda:0';

let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 4294967296) * 2 - 1;
const randArr = (n, s = 1) => Float32Array.from({ length: n }, () => rand() * s);

function maxRelErr(got, want) {
  let worst = 0, scale = 1e-6;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
  }
  return worst / scale;
}

// Times `fn` on the GPU stream with CUDA events: median of `iters` runs after warmup.
function timeMs(stream, fn, iters = 20) {
  for (let i = 0; i < 3; i++) fn();
  const times = [];
  for (let i = 0; i < iters; i++) {
    const a = new Event(dev), b = new Event(dev);
    a.record(stream);
    fn();
    b.record(stream);
    b.synchronize();
    times.push(a.elapsedMs(b));
  }
  times.sort((x, y) => x - y);
  return times[times.length >> 1];
}

// Every case runs CPU and GPU under one matmul precision (`precision`, default 'highest'): 'bf16' lets
// the GPU's tensor cores round activations (and dequantized weights) to bf16, so it gets a bf16
// tolerance; 'fp8' quantizes activations identically on both sides (bit-exact quantizers).
const TOL = { highest: 1e-4, bf16: 5e-3, fp8: 1e-4 };
const cases = [];
for (const [t, k, n] of [[1, 129, 67], [3, 1000, 130], [16, 1001, 130], [17, 127, 333], [129, 515, 257], [8, 6144, 4096], [512, 6144, 4096]]) {
  for (const wdt of ['f32', 'bf16', 'fp8_e4m3', 'int8']) {
    // the skinny path (t <= 16) multiplies in fp32 whatever the precision
    const precisions = t <= 16 ? ['highest'] : ['highest', 'bf16', ...(wdt === 'fp8_e4m3' ? ['fp8'] : [])];
    for (const precision of precisions) {
      cases.push({
        name: `linear t=${t} k=${k} n=${n} w=${wdt} ${precision}`,
        precision,
        make(device) {
          const x = tensor(randArr(t * k), [t, k], { device });
          const w = wdt === 'int8' ? tensor(Array.from({ length: n * k }, () => Math.round(rand() * 127)), [n, k], { dtype: 'int8', device })
            : tensor(randArr(n * k, 0.1), [n, k], { dtype: wdt, device });
          const scale = wdt === 'fp8_e4m3' ? tensor(randArr(Math.ceil(n / 128) * Math.ceil(k / 128)).map(Math.abs), [Math.ceil(n / 128), Math.ceil(k / 128)], { device })
            : wdt === 'int8' ? tensor(randArr(n).map((v) => Math.abs(v) * 0.01), [n], { device }) : null;
          const y = empty([t, n], { device });
          return { out: y, run: (s) => native.linear(s, y, x, w, scale), bytes: w.nbytes, flops: 2 * t * n * k, tol: TOL[precision] };
        },
      });
    }
  }
}
// The sm_90a TMA + wgmma GEMM (opt-in: setCudaGemm('wgmma')): bf16 x and weights, K % 8 == 0 (the
// last shape has K % 8 != 0 and checks the fall back to the mma.sync tiles).
for (const [t, k, n] of [[17, 136, 77], [129, 520, 257], [300, 1000, 333], [512, 6144, 4096], [40, 127, 77]]) {
  cases.push({
    name: `linear wgmma t=${t} k=${k} n=${n} x=bf16 w=bf16`,
    precision: 'bf16',
    gemm: 'wgmma',
    make(device) {
      const x = tensor(randArr(t * k), [t, k], { dtype: 'bf16', device });
      const w = tensor(randArr(n * k, 0.1), [n, k], { dtype: 'bf16', device });
      const y = empty([t, n], { device });
      return { out: y, run: (s) => native.linear(s, y, x, w, null), bytes: w.nbytes, flops: 2 * t * n * k, tol: TOL.bf16 };
    },
  });
}
for (const [rows, dim] of [[1, 7], [3, 129], [17, 1000], [64, 6144]]) {
  cases.push({
    name: `rmsnorm rows=${rows} dim=${dim} (+add, bf16 w)`,
    make(device) {
      const x = tensor(randArr(rows * dim), [rows, dim], { device });
      const a = tensor(randArr(rows * dim), [rows, dim], { device });
      const w = tensor(randArr(dim), [dim], { dtype: 'bf16', device });
      const y = empty([rows, dim], { device });
      const h = empty([rows, dim], { device });
      return { out: y, run: (s) => native.rmsnorm(s, y, x, w, 1e-5, a, h), bytes: 3 * 4 * rows * dim, flops: 0, tol: 1e-5 };
    },
  });
}

// ==== small ops, FP8 quantization, RoPE, router, latent cache (cuda/small.cu, quant.cu, rope.cu,
// router.cu, cache.cu). Multi-output cases return `outs` (each compared on its own); `gpuOnly`
// cases have no CPU twin to compare with and return `check()` -> error (0 = pass).
{
  const randInt = (n) => Math.min(n - 1, Math.floor((rand() + 1) / 2 * n));
  const ints = (len, n) => Array.from({ length: len }, () => randInt(n));
  const i32 = (vals, shape, device) => tensor(vals, shape, { dtype: 'int32', device });
  for (const [V, H, dt] of [[1000, 4096, 'f32'], [1000, 4096, 'bf16'], [300, 130, 'f32'], [300, 130, 'bf16']]) {
    cases.push({ name: `embedding V=${V} H=${H} ${dt}`, make(device) {
      const table = tensor(randArr(V * H), [V, H], { dtype: dt, device });
      const ids = i32(ints(7, V), [7], device);
      const y = empty([7, H], { device });
      return { out: y, run: (s) => native.embedding(s, y, table, ids), bytes: 7 * H * 8, tol: 0 };
    } });
  }
  for (const n of [1, 1003, 64 * 4096]) {
    cases.push({ name: `siluMul n=${n}`, make(device) {
      const g = tensor(randArr(n, 8), [n], { device }), u = tensor(randArr(n), [n], { device }), y = empty([n], { device });
      return { out: y, run: (s) => native.siluMul(s, y, g, u), bytes: 12 * n, tol: 1e-6 };
    } });
    for (const alpha of [1, 0.37]) {
      cases.push({ name: `add n=${n} alpha=${alpha}`, make(device) {
        const a = tensor(randArr(n), [n], { device }), b = tensor(randArr(n), [n], { device }), y = empty([n], { device });
        return { out: y, run: (s) => native.add(s, y, a, b, alpha), bytes: 12 * n, tol: alpha === 1 ? 0 : 1e-7 };
      } });
    }
    cases.push({ name: `scaleGroups n=${n}`, make(device) {
      const cols = n % 512 === 0 ? 512 : n, rows = n / cols, R = rows % 4 === 0 ? 4 : 1, G = Math.ceil(cols / 128);
      const x = tensor(randArr(n), [rows, cols], { device }), sc = tensor(randArr(R * G).map(Math.abs), [R, G], { device }), y = empty([rows, cols], { device });
      return { out: y, run: (s) => native.scaleGroups(s, y, x, sc, 128), bytes: 8 * n, tol: 0 };
    } });
    cases.push({ name: `scale n=${n}`, make(device) {
      const x = tensor(randArr(n), [n], { device }), y = empty([n], { device });
      return { out: y, run: (s) => native.scale(s, y, x, 0.3), bytes: 8 * n, tol: 0 };
    } });
  }
  for (const [from, to] of [['f32', 'bf16'], ['f32', 'f16'], ['f32', 'fp8_e4m3'], ['bf16', 'f32'], ['fp8_e4m3', 'bf16'], ['f16', 'fp8_e4m3'], ['bf16', 'bf16']]) {
    for (const n of [1000, 1 << 20]) {
      cases.push({ name: `convert ${from}->${to} n=${n}`, make(device) {
        const x = tensor(randArr(n, from === 'f32' ? 600 : 300), [n], { dtype: from, device }), y = empty([n], { dtype: to, device });
        return { out: y, run: (s) => native.convert(s, y, x), bytes: n * 6, tol: 0 };
      } });
    }
  }
  for (const [T, K] of [[3, 1000], [64, 7168]]) {
    cases.push({ name: `quantizeFp8Act T=${T} K=${K}`, make(device) {
      const x = tensor(randArr(T * K, 50), [T, K], { device });
      const q = empty([T, K], { dtype: 'fp8_e4m3', device }), sc = empty([T, Math.ceil(K / 128)], { device });
      return { outs: [q, sc], run: (s) => native.quantizeFp8Act(s, q, sc, x), bytes: 5 * T * K, tol: 0 };
    } });
  }
  for (const [N, K] of [[5, 1], [257, 300], [1024, 7168]]) {
    for (const dt of ['f32', 'bf16']) {
      cases.push({ name: `quantizeInt8Rows ${N}x${K} ${dt}`, make(device) {
        const w = tensor(randArr(N * K, 3).map((v, i) => (i % 97 === 0 ? 0 : v)), [N, K], { dtype: dt, device });
        const q = empty([N, K], { dtype: 'int8', device }), sc = empty([N], { device });
        return { outs: [q, sc], run: (s) => native.quantizeInt8Rows(s, q, sc, w), bytes: 5 * N * K, tol: 0 };
      } });
      cases.push({ name: `quantizeFp8Blocks ${N}x${K} ${dt}`, make(device) {
        const w = tensor(randArr(N * K, 3), [N, K], { dtype: dt, device });
        const q = empty([N, K], { dtype: 'fp8_e4m3', device }), sc = empty([Math.ceil(N / 128), Math.ceil(K / 128)], { device });
        return { outs: [q, sc], run: (s) => native.quantizeFp8Blocks(s, q, sc, w), bytes: 5 * N * K, tol: 0 };
      } });
      cases.push({ name: `dequantizeFp8Blocks ${N}x${K} ${dt}`, make(device) {
        const q = tensor(randArr(N * K, 400), [N, K], { dtype: 'fp8_e4m3', device });
        const sc = tensor(randArr(Math.ceil(N / 128) * Math.ceil(K / 128)).map(Math.abs), [Math.ceil(N / 128), Math.ceil(K / 128)], { device });
        const w = empty([N, K], { dtype: dt, device });
        return { out: w, run: (s) => native.dequantizeFp8Blocks(s, w, q, sc), bytes: 5 * N * K, tol: 0 };
      } });
    }
  }
  for (const [R, V, ties] of [[1, 131072, false], [7, 1000, true], [3, 131072, true]]) {
    cases.push({ name: `argmax ${R}x${V}${ties ? ' (ties)' : ''}`, make(device) {
      const x = tensor(randArr(R * V, 3).map((v) => (ties ? Math.round(v) : v)), [R, V], { device }), idx = empty([R], { dtype: 'int32', device });
      return { out: idx, run: (s) => native.argmax(s, idx, x), bytes: 4 * R * V, tol: 0 };
    } });
  }
  for (const [R, V] of [[1, 131072], [5, 1000], [3, 7]]) {
    for (const op of ['softmax', 'logSoftmax']) {
      cases.push({ name: `${op} ${R}x${V}`, make(device) {
        const x = tensor(randArr(R * V, 10), [R, V], { device }), y = empty([R, V], { device });
        return { out: y, run: (s) => native[op](s, y, x), bytes: 12 * R * V, tol: 1e-5 };
      } });
    }
  }
  // sample: the CPU and GPU draws agree only when the filtered set has one token (see cuda/small.cu).
  for (const [temp, topK, topP, minP] of [[0, 0, 1, 0], [0.8, 1, 0.9, 0.1]]) {
    cases.push({ name: `sample 4x131072 T=${temp} topK=${topK}`, make(device) {
      const x = tensor(randArr(4 * 131072, 5), [4, 131072], { device }), ids = empty([4], { dtype: 'int32', device });
      return { out: ids, run: (s) => native.sample(s, ids, x, temp, topK, topP, minP, 7, 3), bytes: 4 * 4 * 131072, tol: 0 };
    } });
  }
  for (const [topK, topP, minP] of [[0, 1, 0], [50, 0.9, 0.05], [5000, 0.5, 0], [0, 0.95, 0.01]]) {
    cases.push({ name: `sample 4x131072 T=0.9 topK=${topK} topP=${topP} minP=${minP} (GPU: seeded repeat + filter check)`, gpuOnly: true, make(device) {
      const R = 4, V = 131072;
      const host = randArr(R * V, 5);
      const x = tensor(host, [R, V], { device });
      const a = empty([R], { dtype: 'int32', device }), b = empty([R], { dtype: 'int32', device });
      const run = (s, out = a) => native.sample(s, out, x, 0.9, topK, topP, minP, 11, 5);
      return { run, bytes: 4 * R * V, check(stream) {
        run(stream, b);
        stream.synchronize();
        const ga = toArray(a), gb = toArray(b);
        let bad = 0;
        for (let r = 0; r < R; r++) {
          if (ga[r] !== gb[r]) bad++;
          const row = host.subarray(r * V, (r + 1) * V), mine = row[ga[r]];
          if (!(ga[r] >= 0 && ga[r] < V)) { bad++; continue; }
          let greater = 0;  // tokens strictly more likely than the draw
          for (let j = 0; j < V; j++) if (row[j] > mine) greater++;
          if (topK > 0 && greater >= topK) bad++;
          let mx = -Infinity;
          for (let j = 0; j < V; j++) mx = Math.max(mx, row[j]);
          if (minP > 0 && Math.exp((mine - mx) / 0.9) < minP * (1 - 1e-5)) bad++;
        }
        return bad;
      } };
    } });
  }
  for (const [hd, off, rd, nh] of [[192, 128, 64, 16], [64, 0, 64, 1], [96, 32, 62, 3]]) {
    for (const t of [1, 37]) {
      cases.push({ name: `rope t=${t} heads=${nh} hd=${hd} rope=[${off},${off + rd})`, make(device) {
        const x = tensor(randArr(t * nh * hd), [t, nh, hd], { device });
        const pos = i32(ints(t, 100000), [t], device);
        const inv = tensor(Array.from({ length: rd / 2 }, (_, i) => Math.pow(10000, (-2 * i) / rd)), [rd / 2], { device });
        return { out: x, run: (s) => native.rope(s, x, pos, off, inv, 1.1), bytes: 8 * t * nh * rd, tol: 0 };
      } });
    }
  }
  for (const t of [1, 7, 129]) {
    cases.push({ name: `routerTopk t=${t} e=768 k=12`, make(device) {
      const E = 768, K = 12;
      const logits = tensor(randArr(t * E, 4), [t, E], { device }), bias = tensor(randArr(E, 0.01), [E], { device });
      const idx = empty([t, K], { dtype: 'int32', device }), w = empty([t, K], { device }), nffn = empty([t], { dtype: 'int32', device });
      return { outs: [idx, w, nffn], run: (s) => native.routerTopk(s, idx, w, nffn, logits, bias, 512, 6), bytes: 4 * t * E, tol: 1e-6 };
    } });
  }
  for (const dt of ['f32', 'bf16']) {
    cases.push({ name: `mlaCacheWrite T=37 ${dt} cache 9x64x576`, make(device) {
      const nb = 9, bs = 64, dl = 512, dr = 64, T = 37;
      const cache = tensor(new Float32Array(nb * bs * (dl + dr)), [nb, bs, dl + dr], { dtype: dt, device });
      const ckv = tensor(randArr(T * dl), [T, dl], { device }), kpe = tensor(randArr(T * dr), [T, dr], { device });
      const perm = Array.from({ length: nb * bs }, (_, i) => i).sort(() => rand());
      const slots = i32(perm.slice(0, T), [T], device);
      return { out: cache, run: (s) => native.mlaCacheWrite(s, cache, ckv, kpe, slots), bytes: T * (dl + dr) * 8, tol: 0 };
    } });
    cases.push({ name: `mlaCacheGather start=5 length=500 ${dt} cache 9x64x576`, make(device) {
      const nb = 9, bs = 64, dl = 512, dr = 64, L = 500;
      const cache = tensor(randArr(nb * bs * (dl + dr)), [nb, bs, dl + dr], { dtype: dt, device });
      const bt = i32(Array.from({ length: nb }, (_, i) => (i * 4) % nb), [nb], device);
      const ckv = empty([L, dl], { device }), kpe = empty([L, dr], { device });
      return { outs: [ckv, kpe], run: (s) => native.mlaCacheGather(s, ckv, kpe, cache, bt, 5, L), bytes: L * (dl + dr) * 8, tol: 0 };
    } });
  }
}
// ==== end of small-op cases

// ==== MLA attention (cuda/mla.cu) and grouped-expert MoE (cuda/moe.cu)
{
  const randIdx = (n) => Math.min(n - 1, Math.floor((rand() + 1) / 2 * n));
  const i32 = (vals, shape, device) => tensor(vals, shape, { dtype: 'int32', device });
  // [T, nh, dn, dr, dv, dl]
  for (const [T, nh, dn, dr, dv, dl] of [[1, 3, 5, 3, 4, 37], [3, 4, 16, 8, 16, 64], [17, 2, 7, 3, 5, 33], [1, 64, 128, 64, 128, 512], [8, 64, 128, 64, 128, 512], [64, 64, 128, 64, 128, 512]]) {
    for (const wdt of ['f32', 'bf16']) {
      cases.push({ name: `mlaAbsorbQ T=${T} nh=${nh} dn=${dn} dl=${dl} w=${wdt}`, make(device) {
        const q = tensor(randArr(T * nh * (dn + dr)), [T, nh, dn + dr], { device });
        const w = tensor(randArr(nh * (dn + dv) * dl, 0.1), [nh * (dn + dv), dl], { dtype: wdt, device });
        const ql = empty([T, nh, dl], { device });
        return { out: ql, run: (s) => native.mlaAbsorbQ(s, ql, q, w, dn), bytes: w.nbytes * dn / (dn + dv), flops: 2 * T * nh * dn * dl, tol: 1e-4 };
      } });
      cases.push({ name: `mlaOutput T=${T} nh=${nh} dv=${dv} dl=${dl} w=${wdt}`, make(device) {
        const ol = tensor(randArr(T * nh * dl), [T, nh, dl], { device });
        const w = tensor(randArr(nh * (dn + dv) * dl, 0.1), [nh * (dn + dv), dl], { dtype: wdt, device });
        const o = empty([T, nh, dv], { device });
        return { out: o, run: (s) => native.mlaOutput(s, o, ol, w), bytes: w.nbytes * dv / (dn + dv), flops: 2 * T * nh * dv * dl, tol: 1e-4 };
      } });
    }
  }
  // Decode: [nh, dl, dr, blockSize, seqLens]; block tables are a shuffled partition of the cache.
  for (const [nh, dl, dr, bs, lens] of [[3, 37, 5, 4, [13]], [17, 64, 16, 16, [0, 1, 200]], [5, 40, 8, 7, [1, 64, 65, 300, 2]],
    [64, 512, 64, 64, [1, 777, 4096, 8192]], [64, 512, 64, 64, Array(32).fill(1024)], [128, 512, 64, 64, [3000]]]) {
    // bf16 cache at precision 'bf16': the tensor-core decode for dl 512 / dr 64 (q and p in bf16)
    for (const [cdt, precision] of [['f32', 'highest'], ['bf16', 'highest'], ['bf16', 'bf16']]) {
      if (cdt === 'f32' && nh >= 64 && lens.length > 4) continue;
      cases.push({ name: `mlaDecodeAbsorbed B=${lens.length} nh=${nh} dl=${dl} dr=${dr} bs=${bs} lens=${lens.length > 4 && lens.every((l) => l === lens[0]) ? `${lens.length}x${lens[0]}` : lens.join(',')} cache=${cdt} ${precision}`, precision, make(device) {
        const B = lens.length, dn = 7, row = dl + dr;
        const mb = Math.max(1, ...lens.map((l) => Math.ceil(l / bs))) + 1;
        const nb = B * mb + 3;
        const perm = Array.from({ length: nb }, (_, i) => i);
        for (let i = nb - 1; i > 0; i--) { const j = randIdx(i + 1); [perm[i], perm[j]] = [perm[j], perm[i]]; }
        const cache = tensor(randArr(nb * bs * row), [nb, bs, row], { dtype: cdt, device });
        const bt = i32(Array.from({ length: B * mb }, (_, i) => perm[i]), [B, mb], device);
        const sl = i32(lens, [B], device);
        const ql = tensor(randArr(B * nh * dl, 0.3), [B, nh, dl], { device });
        const q = tensor(randArr(B * nh * (dn + dr), 0.3), [B, nh, dn + dr], { device });
        const ol = empty([B, nh, dl], { device });
        const toks = lens.reduce((a, b) => a + b, 0);
        return { out: ol, run: (s) => native.mlaDecodeAbsorbed(s, ol, ql, q, cache, bt, sl, 1 / Math.sqrt(192)),
          bytes: toks * row * (cdt === 'bf16' ? 2 : 4), flops: 2 * toks * nh * (row + dl), tol: TOL[precision] };
      } });
    }
  }
  // Prefill (expanded form): [nh, dn, dr, dv, [[qLen, kvLen], ...]] with a gap row between sequences.
  for (const [nh, dn, dr, dv, seqs] of [[3, 5, 3, 4, [[1, 1], [7, 10], [33, 33]]], [2, 16, 8, 16, [[0, 5], [65, 100], [1, 40]]],
    [64, 128, 64, 128, [[256, 256], [64, 320]]], [16, 128, 64, 128, [[1000, 1000]]], [8, 128, 64, 128, [[1, 1], [70, 133], [0, 9], [129, 129]]]]) {
   // precision 'bf16' with dn 128 / dr 64 / dv 128: the tensor-core prefill (q, k, v, p in bf16)
   for (const precision of dn === 128 && dr === 64 && dv === 128 ? ['highest', 'bf16'] : ['highest']) {
    cases.push({ name: `mlaPrefill nh=${nh} dn=${dn} dr=${dr} dv=${dv} seqs=${seqs.map((x) => x.join('/')).join(',')} ${precision}`, precision, make(device) {
      const qs = [0], ks = [0];
      for (const [ql, kl] of seqs) { qs.push(qs[qs.length - 1] + ql); ks.push(ks[ks.length - 1] + kl); }
      const T = qs[qs.length - 1] + 1, S = ks[ks.length - 1] + 2;  // trailing rows outside every sequence stay untouched
      const q = tensor(randArr(T * nh * (dn + dr)), [T, nh, dn + dr], { device });
      const kvb = tensor(randArr(S * nh * (dn + dv)), [S, nh, dn + dv], { device });
      const kpe = tensor(randArr(S * dr), [S, dr], { device });
      const o = tensor(new Float32Array(T * nh * dv).fill(0.5), [T, nh, dv], { device });
      let flops = 0;
      for (const [ql, kl] of seqs) flops += 2 * nh * ql * (kl - ql / 2) * (dn + dr + dv);
      const qst = i32(qs, [qs.length], device), kst = i32(ks, [ks.length], device);
      return { out: o, run: (s) => native.mlaPrefill(s, o, q, kvb, kpe, qst, kst, 1 / Math.sqrt(dn + dr)),
        bytes: q.nbytes + kvb.nbytes + o.nbytes, flops, tol: TOL[precision] };
    } });
   }
  }
  // MoE with zero experts: [T, H, I, nRouted, nZero, k, weight dtype, distinct ids per token, precision].
  // Decode-sized batches take the CUDA-core skinny path (fp32 products) in every precision; prefill
  // takes fp32 tiles ('highest'), bf16 tensor cores ('bf16') or e4m3 tensor cores ('fp8': every
  // routed expert here gets >= 17 rows, so the CPU quantizes the same activations per expert).
  for (const [T, H, I, nr, nz, k, wdt, distinct, precision = 'highest'] of [[1, 64, 32, 8, 2, 3, 'bf16', true], [5, 129, 67, 6, 3, 4, 'f32', false],
    [3, 72, 48, 5, 2, 4, 'int8', true], [40, 72, 48, 4, 2, 4, 'fp8_e4m3', true], [40, 136, 80, 4, 3, 5, 'bf16', false],
    [40, 136, 80, 4, 3, 5, 'bf16', false, 'bf16'], [100, 200, 96, 3, 1, 2, 'int8', true, 'bf16'], [60, 250, 130, 3, 2, 3, 'fp8_e4m3', true, 'bf16'],
    [9, 256, 128, 16, 0, 6, 'fp8_e4m3', true], [1, 1024, 512, 16, 8, 12, 'bf16', true], [8, 1024, 512, 16, 8, 12, 'bf16', true],
    [256, 1024, 512, 16, 8, 12, 'bf16', true], [256, 1024, 512, 16, 8, 12, 'bf16', true, 'bf16'], [4, 1024, 512, 16, 8, 12, 'fp8_e4m3', true],
    [256, 520, 392, 4, 2, 4, 'fp8_e4m3', true, 'fp8'], [64, 1024, 512, 0, 4, 2, 'bf16', true]]) {
    cases.push({ name: `moe T=${T} H=${H} I=${I} routed=${nr} zero=${nz} k=${k} w=${wdt}${distinct ? '' : ' (repeated ids)'} ${precision}`, precision, make(device) {
      const E = nr + nz;
      const wt = (rows, cols) => (wdt === 'int8'
        ? tensor(Array.from({ length: rows * cols }, () => Math.round(rand() * 127)), [rows, cols], { dtype: 'int8', device })
        : tensor(randArr(rows * cols, wdt === 'fp8_e4m3' ? 2 : 0.1), [rows, cols], { dtype: wdt, device }));
      const sc = (rows, cols) => (wdt === 'fp8_e4m3'
        ? tensor(randArr(Math.ceil(rows / 128) * Math.ceil(cols / 128)).map((v) => Math.abs(v) * 0.05 + 0.01), [Math.ceil(rows / 128), Math.ceil(cols / 128)], { device })
        : wdt === 'int8' ? tensor(randArr(rows).map((v) => Math.abs(v) * 0.001 + 1e-4), [rows], { device }) : null);
      const gate = [], up = [], down = [], gs = [], us = [], ds = [];
      for (let e = 0; e < nr; e++) {
        gate.push(wt(I, H)); gs.push(sc(I, H));
        up.push(wt(I, H)); us.push(sc(I, H));
        down.push(wt(H, I)); ds.push(sc(H, I));
      }
      const scaled = wdt === 'fp8_e4m3' || wdt === 'int8';
      const set = native.moeExperts(gate, up, down, scaled ? gs : null, scaled ? us : null, scaled ? ds : null);
      const ids = [];
      for (let t = 0; t < T; t++) {
        const pool = Array.from({ length: E }, (_, i) => i);
        for (let j = 0; j < k; j++) {
          if (distinct) { const r = j + randIdx(E - j); [pool[j], pool[r]] = [pool[r], pool[j]]; ids.push(pool[j]); } else ids.push(randIdx(E));
        }
      }
      const u = tensor(randArr(T * H), [T, H], { device });
      const idx = i32(ids, [T, k], device);
      const w = tensor(randArr(T * k).map((v) => Math.abs(v) * 2), [T, k], { device });
      const out = empty([T, H], { device });
      const used = new Set(ids.filter((e) => e < nr)).size;
      const wbytes = nr ? gate[0].nbytes * 3 : 0;
      const run = (s) => native.moe(s, out, u, idx, w, nr, set, null, null, null, null, null, E);
      return { out, run, bytes: used * wbytes, flops: 6 * ids.filter((e) => e < nr).length * H * I,
        tol: precision === 'fp8' ? 2e-2 : TOL[precision] }; // fp8: an act element may round to a neighbouring e4m3 code
    } });
  }
}
// ==== end of MLA / MoE cases

export { cases, timeMs };

/**
 * `made.run` under the case's matmul precision (read at launch on CUDA, when the queued work runs on
 * the CPU) and, on the GPU, its CUDA GEMM kernel (`gemm`).
 */
export function withPrecision(c, made, device) {
  const run = made.run;
  const gpuGemm = c.gemm && device !== 'cpu'; // the CUDA GEMM kernel the case targets
  made.run = (s) => {
    const prev = native.setMatmulPrecision(c.precision ?? 'highest');
    const prevGemm = gpuGemm ? native.setCudaGemm(c.gemm) : null;
    try {
      run(s);
      if (device === 'cpu') native.synchronize('cpu');
    } finally {
      native.setMatmulPrecision(prev);
      if (prevGemm) native.setCudaGemm(prevGemm);
    }
  };
  return made;
}

/**
 * Runs case `c` on the CPU and on the GPU (same seed, so the same inputs); returns its error and
 * tolerance. With `limits` ({ flops, bytes }: the emulated device of test/emu is slow) a larger
 * case is not run on the GPU and comes back as { skipped: true }.
 */
export function checkCase(c, stream, limits = null) {
  const s0 = seed;
  const outsOf = (o) => (o.outs ?? [o.out]).map((t) => toArray(t));
  const tooBig = (m) => limits && ((m.flops ?? 0) > limits.flops || (m.bytes ?? 0) > limits.bytes);
  const cpu = c.gpuOnly ? null : withPrecision(c, c.make('cpu'), 'cpu');
  if (cpu && tooBig(cpu)) return { skipped: true };
  if (cpu) cpu.run(null);
  const want = cpu ? outsOf(cpu) : null;
  seed = s0; // identical inputs on the GPU
  const g = withPrecision(c, c.make(dev), dev);
  if (tooBig(g)) return { skipped: true };
  g.run(stream);
  stream.synchronize();
  const err = c.gpuOnly ? g.check(stream) : Math.max(...outsOf(g).map((got, i) => maxRelErr(got, want[i])));
  const tol = g.tol ?? 0; // make() returns the tolerance with the tensors (gpuOnly checks return 0 = pass)
  return { err, tol, ok: err <= tol, gpu: g };
}
