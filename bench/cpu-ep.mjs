// Expert-parallel dispatch and combine on CPU ranks (native/cpu/ep.cc), at LongCat-Flash's width
// (hidden 6144, top-12 over 512 FFN + 256 zero experts), in the single-kernel flag form the runner
// uses (lib/parallel/expert-parallel.ts): each rank on its own stream (a thread), the dispatch
// phase = every rank's epDispatch (send, release the receivers' flags, then acquire its own), the
// combine phase = every rank's epCombine (release its "partials ready" flags, acquire the others',
// sum), each phase timed alone (queued on all rank streams, then all synchronized), at 1, 128 and
// 4,096 tokens per rank. Payload GB/s = the u rows actually sent (once per token and destination
// rank) x 4 bytes x hidden / time. These are CPU ranks on one machine (the development VM: 2 vCPUs
// shared with other work), so a "transfer" is a memcpy between buffers of the same memory: not
// NVLink, not a figure to compare with DeepEP / pplx. The dispatch is timed with the fp32 payload and
// with the FP8 one (e4m3 + 1 x 128 scales, quantized by the sender, decoded by the receiver's wait).
// Then a whole decode step (--step-preset, default the 'small' preset cut to 2 layers, random
// weights): B sequences (--batch, default 8) on one device, and spread over the ranks with
// data-parallel attention (each rank its sequences' attention and KV pages, the experts split),
// the median step of each and their ratio, measured in the same run. On CPU ranks of one machine
// the ranks share its cores: the ratio is the cost (or gain) of the split, not a scaling figure.
//   node bench/cpu-ep.mjs [--ranks 4] [--tokens 1,128,4096] [--reps 5] [--batch 8] [--device cpu|cuda:N] [--out f.json]
import fs from 'node:fs';
import { native } from '../dist/native.js';
import { tensor, empty, toArray } from '../dist/tensor.js';
import os from 'node:os';
import path from 'node:path';
import { initRandom } from '../dist/init-random.js';
import { loadModel } from '../dist/generate.js';
import { now, median, rng } from './common.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const ranks = Number(opt('--ranks', '4'));
const tokenList = opt('--tokens', '1,128,4096').split(',').map(Number);
const reps = Number(opt('--reps', '5'));
// --device cuda:0: the ranks as virtual ranks of one GPU (the GPU check's case: the fused kernels
// spinning on each other on a card; their own cost and memory bandwidth, not NVLink).
const device = opt('--device', 'cpu'),
  onCpu = device === 'cpu',
  blocks = 16,
  timeoutMs = onCpu ? 600_000 : 10_000;
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
      u: tensor(u, [T, H], { device }),
      idx: tensor(idx, [T, k], { dtype: 'int32', device }),
      w: tensor(new Float32Array(T * k).fill(0.5), [T, k], { device }),
      out: empty([T, H], { device }),
      rowOf: empty([T, ranks], { dtype: 'int32', device }),
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
    count: empty([ranks], { dtype: 'int32', device }),
    x: empty([ranks * T, H], { device }),
    idx: empty([ranks * T, k], { dtype: 'int32', device }),
    w: empty([ranks * T, k], { device }),
    y: tensor(new Float32Array(ranks * T * H).fill(0.25), [ranks * T, H], { device }),
    q: empty([ranks * T, H], { dtype: 'fp8_e4m3', device }),
    scales: empty([ranks * T, H / 128], { device }),
  }));
  const slot = (t, s) => t.narrow(s * T, T);
  const streams = homes.map(() => new native.Stream(device));
  const abort = tensor(Int32Array.of(0), [1], { dtype: 'int32', device });
  const ready = homes.map(() => tensor(new Int32Array(ranks), [ranks], { dtype: 'int32', device })),
    done = homes.map(() => tensor(new Int32Array(ranks + 1), [ranks + 1], { dtype: 'int32', device }));
  const all = homes.map((_h, d) => d);
  const args = homes.map((_h, s) => ({
    counts: recv.map(x => x.count.narrow(s, 1)),
    xs: recv.map(x => slot(x.x, s)),
    idxs: recv.map(x => slot(x.idx, s)),
    ws: recv.map(x => slot(x.w, s)),
    ys: recv.map(x => slot(x.y, s)),
    qs: recv.map(x => slot(x.q, s)),
    scs: recv.map(x => slot(x.scales, s)),
  }));
  // fp8: e4m3 rows with one scale per 1 x 128 group, decoded to f32 by each rank's wait.
  const dispatch = fp8 => {
    homes.forEach((h, s) => {
      native.epDispatch(
        streams[s],
        h.u,
        h.idx,
        h.w,
        nRouted,
        nExperts,
        per,
        h.rowOf,
        args[s].counts,
        fp8 ? args[s].qs : args[s].xs,
        args[s].idxs,
        args[s].ws,
        abort,
        false,
        ready.map(f => f.narrow(s, 1)),
        {
          flags: ready[s],
          peers: all,
          rank: s,
          kind: 1,
          timeoutMs,
          decode: fp8 ? { q: recv[s].q, scales: recv[s].scales, x: recv[s].x } : null,
        },
        blocks,
        fp8 ? args[s].scs : null,
      );
    });
  };
  const combine = () =>
    homes.forEach((h, s) => {
      native.epCombine(
        streams[s],
        h.out,
        h.u,
        h.idx,
        h.w,
        nRouted,
        nExperts,
        h.rowOf,
        args[s].ys,
        abort,
        done.map(f => f.narrow(s, 1)),
        { flags: done[s].narrow(0, ranks), peers: all, rank: s, kind: 2, timeoutMs, counter: done[s].narrow(ranks, 1) },
        blocks,
      );
    });
  const sync = () => {
    for (const st of streams) st.synchronize();
  };
  const time = fn => {
    fn();
    sync();
    const v = [];
    for (let i = 0; i < reps; i++) {
      const t0 = now();
      fn();
      sync();
      v.push(now() - t0);
    }
    return median(v);
  };
  const sent = homes.reduce((a, h) => a + h.sent, 0),
    bytes = sent * H * 4;
  const d = time(() => dispatch(false)),
    d8 = time(() => dispatch(true)),
    c = time(combine);
  if (toArray(abort)[0] !== 0) throw new Error('a wait timed out: the figures are void');
  rows.push({
    tokensPerRank: T,
    ranks,
    rowsSent: sent,
    dispatchUs: d * 1e3,
    dispatchFp8Us: d8 * 1e3,
    combineUs: c * 1e3,
    dispatchGBps: bytes / d / 1e6,
    // the e4m3 bytes and their scales that crossed
    dispatchFp8GBps: (sent * (H + (4 * H) / 128)) / d8 / 1e6,
    combineGBps: bytes / c / 1e6,
  });
  for (const x of [
    ...homes.flatMap(h => [h.u, h.idx, h.w, h.out, h.rowOf]),
    ...recv.flatMap(x => [x.count, x.x, x.idx, x.w, x.y, x.q, x.scales]),
    abort,
    ...ready,
    ...done,
  ])
    x.dispose();
  for (const st of streams) st.dispose();
}
console.log(
  `expert-parallel dispatch / combine (flag protocol, single-kernel form), ${ranks} ${onCpu ? 'CPU ranks' : `virtual ranks of ${device}`}, hidden ${H}, top-${k} of ${nRouted} + ${nExperts - nRouted} zero experts, ${onCpu ? `${native.threads()} threads` : `${blocks} blocks per launch`}, fp32 and FP8 (e4m3, 1 x 128 scales) dispatch payloads`,
);
console.log(
  onCpu
    ? "CPU ranks sharing one machine's cores and memory (a memcpy, not NVLink): not comparable with DeepEP / pplx figures"
    : "virtual ranks on one GPU: the kernels' own cost and memory bandwidth, not NVLink",
);
console.log(
  '| tokens / rank | rows sent | dispatch µs (f32) | dispatch µs (FP8) | combine µs | dispatch GB/s (f32) | dispatch GB/s (FP8 bytes) | combine GB/s |',
);
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const x of rows)
  console.log(
    `| ${x.tokensPerRank} | ${x.rowsSent} | ${x.dispatchUs.toFixed(0)} | ${x.dispatchFp8Us.toFixed(0)} | ${x.combineUs.toFixed(0)} | ${x.dispatchGBps.toFixed(2)} | ${x.dispatchFp8GBps.toFixed(2)} | ${x.combineGBps.toFixed(2)} |`,
  );

// ---- a whole decode step: one device vs data-parallel attention over the ranks ----------------
if (!onCpu) {
  const out = opt('--out', null);
  if (out) fs.writeFileSync(out, JSON.stringify({ bench: 'cpu-ep', device, date: new Date().toISOString(), rows }, null, 2));
  process.exit(0);
}
const B = Number(opt('--batch', '8')),
  preset = opt('--step-preset', 'small');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longcat-bench-ep-'));
const step = {};
try {
  await initRandom({ preset, out: dir, seed: 1, overrides: { num_layers: 2 } });
  for (const ranksOpt of [1, ranks]) {
    const name = ranksOpt === 1 ? 'one device' : `${ranks} ranks`;
    const m = await loadModel(dir, { backend: 'cpu', maxContext: 256, ranks: ranksOpt });
    const e = m.engine;
    const seqs = Array.from({ length: B }, () => e.newSequence());
    e.forward(
      seqs,
      seqs.map((_, b) => [1 + b, 2 + b, 3 + b, 4 + b]),
    ).logits.dispose();
    const v = [];
    for (let i = 0; i < reps + 1; i++) {
      const t0 = now();
      const r = e.forward(
        seqs,
        seqs.map((_, b) => [(7 * i + b) % e.dims.vocab]),
      );
      r.logits.toBytes(); // the step's logits read back: the step is done
      r.logits.dispose();
      if (i > 0) v.push(now() - t0); // the first step captures the graph
    }
    step[name] = median(v);
    for (const s of seqs) s.release();
    m.dispose();
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
const ratio = step[`${ranks} ranks`] / step['one device'];
console.log(
  `\ndecode step, '${preset}' preset (2 layers, random weights), batch ${B}: one device ${step['one device'].toFixed(2)} ms, ` +
    `${ranks} ranks with data-parallel attention ${step[`${ranks} ranks`].toFixed(2)} ms (ratio ${ratio.toFixed(2)}, same run)`,
);
const out = opt('--out', null);
if (out)
  fs.writeFileSync(
    out,
    JSON.stringify(
      { bench: 'cpu-ep', date: new Date().toISOString(), rows, decodeStep: { preset, batch: B, ranks, ms: step, ratio } },
      null,
      2,
    ),
  );
