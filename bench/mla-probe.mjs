// The absorbed-MLA decode ops (batch B sequences of one query each) at one preset's shapes, per call, inside a replayed graph
// (the region's per-node profile, native.graphProfile) over N layer copies of kv_b_proj and of the
// latent cache (so both are cold, as in a decode step), next to their peer: a one-row linear of
// the same bytes as W_UK (its GB/s in the same run is the rate absorbQ / mlaOutput should reach).
//   node bench/mla-probe.mjs [--preset small|medium] [--threads 2] [--copies 48] [--reps 30]
//                            [--ctx 64] [--batch 1] [--dist DIR: the build to measure]
//                            [--hash: print the bits of the outputs, for an A/B of two builds]
// With --batch B, sequence b attends ctx + b keys (lengths differ, as in a serving step).
import { bitsHash, distImporter, profileByOp, readBandwidth, randomBf16, randomF32 } from './common.mjs';

const args = process.argv.slice(2);
const arg = (n, d) => (args.includes(n) ? args[args.indexOf(n) + 1] : d);
const load = distImporter(args);
const { native } = await load('index.js');
const { Stream } = await load('device.js');
const B = Number(arg('--batch', 1));
const preset = arg('--preset', 'medium');
const copies = Number(arg('--copies', 48));
const reps = Number(arg('--reps', 30));
const ctx = Number(arg('--ctx', 64));
native.setThreads(Number(arg('--threads', 2)));
const P = {
  small: { nh: 8, dn: 32, dr: 16, dv: 32, dl: 128 },
  medium: { nh: 16, dn: 64, dr: 32, dv: 64, dl: 256 },
}[preset];
const { nh, dn, dr, dv, dl } = P;
const rowsKvb = nh * (dn + dv);
const T = (dt, shape, data) => new native.Tensor(dt, shape, 'cpu', data);
const ws = [],
  lw = [];
for (let i = 0; i < copies; i++) {
  ws.push(T('bf16', [rowsKvb, dl], randomBf16(rowsKvb * dl, 100 + i, 120)));
  lw.push(T('bf16', [(nh * dn * dl) / 1024, 1024], randomBf16(nh * dn * dl, 900 + i, 120)));
}
const q = T('f32', [B, nh, dn + dr], randomF32(B * nh * (dn + dr), 1));
const qLat = T('f32', [B, nh, dl]);
const oLat = T('f32', [B, nh, dl], randomF32(B * nh * dl, 2));
const o = T('f32', [B, nh, dv]);
const xl = T('f32', [1, 1024], randomF32(1024, 3));
const yl = T('f32', [1, (nh * dn * dl) / 1024]);
const BS = 64,
  nb = Math.ceil((ctx + B) / BS) + 1;
const caches = ws.map((_, i) => T('bf16', [B * nb, BS, dl + dr], randomBf16(B * nb * BS * (dl + dr), 5 + i, 120)));
const bt = T(
  'int32',
  [B, nb],
  new Int32Array(B * nb).map((_, i) => i),
);
const sl = T(
  'int32',
  [B],
  new Int32Array(B).map((_, b) => ctx + b),
);
const ckv = T('f32', [B, dl], randomF32(B * dl, 6)),
  kpe = T('f32', [B, dr], randomF32(B * dr, 7)),
  slot = T(
    'int32',
    [B],
    new Int32Array(B).map((_, b) => b * nb * BS + ctx + b - 1),
  );
const s = new Stream('cpu');
const g = native.captureGraph([s], () => {
  for (let i = 0; i < copies; i++) {
    native.mlaCacheWrite(s, caches[i], ckv, kpe, slot);
    native.mlaAbsorbQ(s, qLat, q, ws[i], dn);
    native.mlaDecodeAbsorbed(s, oLat, qLat, q, caches[i], bt, sl, 0.1);
    native.mlaOutput(s, o, oLat, ws[i]);
    native.linear(s, yl, xl, lw[i]);
  }
});
const bw = readBandwidth();
const { regionMs, byOp } = profileByOp(g, s, 5, reps, native);
console.log(
  `${preset} copies ${copies} batch ${B} ctx ${ctx} threads ${native.threads()} probe ${bw.toFixed(1)} GB/s; region ${regionMs.toFixed(3)} ms`,
);
for (const b of byOp)
  console.log(
    `${b.op.padEnd(18)} ${b.us.toFixed(2).padStart(7)} us/call  ${b.gbps ? (b.gbps | 0).toString().padStart(3) : '  -'} GB/s  wait ${b.waitUs.toFixed(2)} us  jobs/call ${b.jobs.toFixed(2)}`,
  );
// bits of the last copy's outputs (A/B of two builds: the kernels must agree bit for bit)
if (args.includes('--hash')) console.log(`hash qLat ${bitsHash(qLat)} oLat ${bitsHash(oLat)} o ${bitsHash(o)}`);
