// The batch-1 grouped-expert op (native.moe, one token's experts) at one preset's expert shapes,
// per call, inside a replayed graph (the region's per-node profile, native.graphProfile) over N
// layer copies of the routed experts (so the weights come from DRAM, as in a decode step), next to
// its peer: a one-row linear of about the same bytes as one call's experts (its GB/s in the same
// run is the rate the expert phase should reach), and the read probe. Each copy's token routes
// to `--ffn` distinct random FFN experts + the rest zero experts (k: the preset's moe_topk).
// --peer-k K: the peer's row length (default 1024 columns; the experts' rows are h and inter long:
// small 512 and 256, where the GEMV streams slower per byte than at 1024).
//   node bench/moe-probe.mjs [--preset small|medium] [--threads 2] [--copies 8] [--reps 20]
//                            [--ffn 6] [--peer-k 1024] [--hash: print the bits of the outputs, for an A/B of two builds]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Stream } from '../dist/device.js';
import { loadModel } from '../dist/generate.js';
import { native } from '../dist/index.js';
import { bitsHash, profileByOp, randomBf16, randomF32, readBandwidth, rng } from './common.mjs';

const args = process.argv.slice(2);
const arg = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const preset = arg('--preset', 'medium');
const fromModel = args.includes('--model');
const model = fromModel
  ? await loadModel(path.join(path.dirname(fileURLToPath(import.meta.url)), 'out', `ckpt-${preset}`), {
      backend: 'cpu',
      maxContext: 64,
    })
  : null;
const copies = model ? model.engine.w.layers.length : Number(arg('--copies', 8));
const reps = Number(arg('--reps', 20));
const nffn = Number(arg('--ffn', 6));
native.setThreads(Number(arg('--threads', 2)));
const P = {
  small: { h: 512, inter: 256, nr: 32, nz: 16, k: 6 },
  medium: { h: 1024, inter: 512, nr: 48, nz: 24, k: 8 },
}[preset];
const { h, inter, nr, nz, k } = P;
const T = (dt, shape, data) => new native.Tensor(dt, shape, 'cpu', data);
const gu = randomBf16(inter * h, 1, 120),
  dn = randomBf16(h * inter, 2, 120);
const sets = [],
  peers = [],
  idxs = [];
const rand = rng(11);
const peerK = Number(arg('--peer-k', 1024));
const peerRows = Math.round((3 * nffn * inter * h) / peerK);
for (let c = 0; c < copies; c++) {
  if (model) sets.push(model.engine.w.layers[c].moe.experts);
  else {
    const gate = [],
      up = [],
      down = [];
    for (let e = 0; e < nr; e++) {
      gate.push(T('bf16', [inter, h], gu));
      up.push(T('bf16', [inter, h], gu));
      down.push(T('bf16', [h, inter], dn));
    }
    sets.push(native.moeExperts(gate, up, down));
  }
  peers.push(T('bf16', [peerRows, peerK], randomBf16(peerRows * peerK, 900 + c, 120)));
  const pick = new Set();
  while (pick.size < nffn) pick.add(rand.int(nr));
  const idx = [...pick];
  while (idx.length < k) idx.push(nr + rand.int(nz));
  idxs.push(T('int32', [1, k], new Int32Array(idx)));
}
const u = T('f32', [1, h], randomF32(h, 3));
const w = T('f32', [1, k], randomF32(k, 4));
const outs = sets.map(() => T('f32', [1, h]));
const xl = T('f32', [1, peerK], randomF32(peerK, 5));
const yl = T('f32', [1, peerRows]);
const s = new Stream('cpu');
const g = native.captureGraph([s], () => {
  for (let c = 0; c < copies; c++) {
    native.moe(s, outs[c], u, idxs[c], w, nr, sets[c], null, null, null, null, null, nr + nz);
    native.linear(s, yl, xl, peers[c]);
  }
});
const bw = readBandwidth();
const { regionMs, byOp } = profileByOp(g, s, 3, reps);
console.log(
  `${preset}${model ? ' (model)' : ''} copies ${copies} ffn experts ${nffn} threads ${native.threads()} probe ${bw.toFixed(1)} GB/s; region ${regionMs.toFixed(3)} ms`,
);
for (const o of byOp)
  console.log(
    `${o.op.padEnd(8)} ${o.us.toFixed(2).padStart(8)} us/call  ${o.mb.toFixed(2)} MB  ${(o.gbps ?? 0).toFixed(1)} GB/s = ${((o.gbps ?? 0) / bw).toFixed(2)} of probe  wait ${o.waitUs.toFixed(2)} us  jobs/call ${o.jobs.toFixed(2)}`,
  );
if (args.includes('--hash')) console.log(`hash out ${outs.map(bitsHash).join(' ')}`);
