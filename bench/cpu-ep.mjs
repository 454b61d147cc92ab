// Expert-parallel dispatch and combine on CPU ranks (native/cpu/ep.cc), at LongCat-Flash's width
// (hidden 6144, top-12 over 512 FFN + 256 zero experts): per step, every home rank's epDispatch
// then every home rank's epCombine, each timed alone (queued on one stream, then synchronized), at
// 1, 128 and 512 tokens per rank. Payload GB/s = the u rows actually sent (once per token and
// destination rank) x 4 bytes x hidden / time; on one NUMA node this is a memcpy between buffers of
// the same memory, not an interconnect. Not a figure to compare with DeepEP / pplx on NVLink.
//   node bench/cpu-ep.mjs [--ranks 4] [--tokens 1,128,512] [--reps 5] [--out f.json]
import fs from 'node:fs';
import { native } from '../dist/native.js';
import { tensor, empty } from '../dist/tensor.js';
import { now, median, rng } from './common.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const ranks = Number(opt('--ranks', '4'));
const tokenList = opt('--tokens', '1,128,512').split(',').map(Number);
const reps = Number(opt('--reps', '5'));
const H = 6144,
  k = 12,
  nRouted = 512,
  nExperts = 768,
  per = nRouted / ranks;

const rows = [];
for (const T of tokenList) {
  const r = rng(T * 31 + ranks);
  const homes = Array.from({ length: ranks }, () => {
    const idx = new Int32Array(T * k);
    for (let t = 0; t < T; t++) {
      const chosen = new Set();
      while (chosen.size < k) chosen.add(r.int(nExperts));
      idx.set([...chosen], t * k);
    }
    const u = new Float32Array(T * H).map(() => r.uniform(-0.5, 0.5));
    return {
      u: tensor(u, [T, H]),
      idx: tensor(idx, [T, k], { dtype: 'int32' }),
      w: tensor(new Float32Array(T * k).fill(0.5), [T, k]),
      out: empty([T, H]),
      rowOf: empty([T, ranks], { dtype: 'int32' }),
      sent: (() => {
        let n = 0;
        for (let t = 0; t < T; t++)
          n += new Set(
            Array.from(idx.subarray(t * k, (t + 1) * k))
              .filter(e => e < nRouted)
              .map(e => Math.floor(e / per)),
          ).size;
        return n;
      })(),
    };
  });
  const recv = Array.from({ length: ranks }, () => ({
    count: empty([ranks], { dtype: 'int32' }),
    x: empty([ranks * T, H]),
    idx: empty([ranks * T, k], { dtype: 'int32' }),
    w: empty([ranks * T, k]),
    y: tensor(new Float32Array(ranks * T * H).fill(0.25), [ranks * T, H]),
  }));
  const slot = (t, s) => t.narrow(s * T, T);
  const args = homes.map((_h, s) => ({
    counts: recv.map(x => x.count.narrow(s, 1)),
    xs: recv.map(x => slot(x.x, s)),
    idxs: recv.map(x => slot(x.idx, s)),
    ws: recv.map(x => slot(x.w, s)),
    ys: recv.map(x => slot(x.y, s)),
  }));
  const dispatch = () => {
    homes.forEach((h, s) => {
      native.epDispatch(
        null,
        h.u,
        h.idx,
        h.w,
        nRouted,
        nExperts,
        per,
        h.rowOf,
        args[s].counts,
        args[s].xs,
        args[s].idxs,
        args[s].ws,
      );
    });
  };
  const combine = () =>
    homes.forEach((h, s) => {
      native.epCombine(null, h.out, h.u, h.idx, h.w, nRouted, nExperts, h.rowOf, args[s].ys);
    });
  const time = fn => {
    fn();
    native.synchronize('cpu');
    const v = [];
    for (let i = 0; i < reps; i++) {
      const t0 = now();
      fn();
      native.synchronize('cpu');
      v.push(now() - t0);
    }
    return median(v);
  };
  const sent = homes.reduce((a, h) => a + h.sent, 0),
    bytes = sent * H * 4;
  const d = time(dispatch),
    c = time(combine);
  rows.push({
    tokensPerRank: T,
    ranks,
    rowsSent: sent,
    dispatchUs: d * 1e3,
    combineUs: c * 1e3,
    dispatchGBps: bytes / d / 1e6,
    combineGBps: bytes / c / 1e6,
  });
  for (const x of [
    ...homes.flatMap(h => [h.u, h.idx, h.w, h.out, h.rowOf]),
    ...recv.flatMap(x => [x.count, x.x, x.idx, x.w, x.y]),
  ])
    x.dispose();
}
console.log(
  `expert-parallel dispatch / combine, ${ranks} CPU ranks, hidden ${H}, top-${k} of ${nRouted} + ${nExperts - nRouted} zero experts, ${native.threads()} threads`,
);
console.log('| tokens / rank | rows sent | dispatch µs | combine µs | dispatch GB/s | combine GB/s |');
console.log('|---:|---:|---:|---:|---:|---:|');
for (const x of rows)
  console.log(
    `| ${x.tokensPerRank} | ${x.rowsSent} | ${x.dispatchUs.toFixed(0)} | ${x.combineUs.toFixed(0)} | ${x.dispatchGBps.toFixed(2)} | ${x.combineGBps.toFixed(2)} |`,
  );
const out = opt('--out', null);
if (out) fs.writeFileSync(out, JSON.stringify({ bench: 'cpu-ep', date: new Date().toISOString(), rows }, null, 2));
