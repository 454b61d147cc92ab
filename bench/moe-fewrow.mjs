// The grouped-expert op at few rows per expert (issue 16: a batch-8 speculative step's verify runs 16
// rows, 1-3 per routed expert; the plain batch-8 step 8 rows, 1-2 per expert), at the small
// preset's expert shapes (hidden 512, expert ffn 256, 32 routed + 16 zero experts, top-6, bf16:
// 768 KiB per expert), as the model calls it (native.moe over a prepared moeExperts set).
// LAYERS expert sets of their own memory (default 8: 192 MiB, far above the 32 MiB L3) are used in
// turn, so each call streams its experts from DRAM as a decode step does. Every call routes its
// T tokens afresh: each token picks 6 distinct experts of the 48 uniformly (zero experts read
// nothing). Variants (LONGCAT_MOE_SCHED values, read by moe() on every call) alternate call by
// call, so they see the same load; printed per T: median us per call, GB/s over the distinct
// experts' bytes, and each variant's time over the first's (median of the per-round ratios).
//   node bench/moe-fewrow.mjs [--tokens 8,16] [--variants auto,experts] [--calls 400] [--layers 8] [--dist DIR]
import { distImporter, median, now, randomBf16 } from './common.mjs';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const { native } = await distImporter(args)('index.js');
const TOKENS = arg('--tokens', '8,16').split(',').map(Number);
const VARIANTS = arg('--variants', 'auto,experts').split(',');
const CALLS = Number(arg('--calls', 400));
const LAYERS = Number(arg('--layers', 8));
const H = 512,
  I = 256,
  NR = 32,
  NZ = 16,
  K = 6;
const EXPERT_BYTES = 3 * H * I * 2;

const sets = [];
for (let l = 0; l < LAYERS; l++) {
  const gate = [],
    up = [],
    down = [];
  for (let e = 0; e < NR; e++) {
    gate.push(new native.Tensor('bf16', [I, H], 'cpu', randomBf16(I * H, 1000 * l + 3 * e, 120)));
    up.push(new native.Tensor('bf16', [I, H], 'cpu', randomBf16(I * H, 1000 * l + 3 * e + 1, 120)));
    down.push(new native.Tensor('bf16', [H, I], 'cpu', randomBf16(H * I, 1000 * l + 3 * e + 2, 120)));
  }
  sets.push(native.moeExperts(gate, up, down));
}
let seed = 12345;
const rnd = n => {
  seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
  return Math.floor((seed / 2 ** 32) * n);
};

console.log(`moe-fewrow: hidden ${H}, ffn ${I}, ${NR}+${NZ} experts, top-${K}, ${LAYERS} sets, threads ${native.threads()}`);
for (const T of TOKENS) {
  const u = new native.Tensor(
    'f32',
    [T, H],
    'cpu',
    Float32Array.from({ length: T * H }, (_, i) => Math.sin(i) * 0.1),
  );
  const o = new native.Tensor('f32', [T, H], 'cpu', new Float32Array(T * H));
  const idx = new Int32Array(T * K);
  const it = new native.Tensor('int32', [T, K], 'cpu', idx);
  const wt = new native.Tensor('f32', [T, K], 'cpu', new Float32Array(T * K).fill(0.5));
  const ms = VARIANTS.map(() => []),
    gbps = VARIANTS.map(() => []),
    ratio = VARIANTS.map(() => []);
  const hist = new Map();
  for (let c = 0; c < CALLS; c++) {
    const round = [];
    for (let v = 0; v < VARIANTS.length; v++) {
      const vv = (v + c) % VARIANTS.length; // rotate who goes first
      const touched = new Map();
      for (let t = 0; t < T; t++) {
        const pick = new Set();
        while (pick.size < K) pick.add(rnd(NR + NZ));
        let j = 0;
        for (const e of pick) {
          idx[t * K + j++] = e;
          if (e < NR) touched.set(e, (touched.get(e) ?? 0) + 1);
        }
      }
      it.copyFromBytes(idx);
      for (const r of touched.values()) hist.set(r, (hist.get(r) ?? 0) + 1);
      process.env.LONGCAT_MOE_SCHED = VARIANTS[vv];
      const set = sets[(c * VARIANTS.length + v) % LAYERS];
      native.synchronize('cpu');
      const a = now();
      native.moe(null, o, u, it, wt, NR, set, null, null, null, null, null, NR + NZ);
      native.synchronize('cpu');
      const dt = now() - a;
      round[vv] = dt;
      if (c >= 4) {
        ms[vv].push(dt);
        gbps[vv].push((touched.size * EXPERT_BYTES) / dt / 1e6);
      }
    }
    if (c >= 4) for (let v = 0; v < VARIANTS.length; v++) ratio[v].push(round[v] / round[0]);
  }
  const h = [...hist.entries()].sort((a, b) => a[0] - b[0]).map(([r, n]) => `${r}:${n}`);
  console.log(`T ${T} (rows per active expert, count: ${h.join(' ')})`);
  for (let v = 0; v < VARIANTS.length; v++)
    console.log(
      `  ${VARIANTS[v].padEnd(10)} ${(median(ms[v]) * 1000).toFixed(1).padStart(7)} us  ${median(gbps[v]).toFixed(1).padStart(5)} GB/s  /${VARIANTS[0]} ${median(ratio[v]).toFixed(3)}`,
    );
  delete process.env.LONGCAT_MOE_SCHED;
}
