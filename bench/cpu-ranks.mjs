// Expert parallelism on CPU ranks, whole model (issue 14's Benchmarks paragraph, CPU part): decode
// tokens/s of a model whose routed experts are split over 1, 2 and 4 CPU ranks (data-parallel
// attention, each rank on a thread pool of its own: lib/parallel/numa.ts), and the overlap figure:
// per layer the time from the branches' fork (u ready) to the join with overlapMoe true, over the
// larger of the two branches timed one after the other (overlapMoe false: the MoE branch from the
// fork to its output, then the dense branch to its end), from the steps' own CPU event timestamps
// (LongcatModel.profileLayers), summed over the layers, mean over the ranks, median over the steps.
// B sequences (--batch, default 4: one per rank at 4 ranks), greedy decode from short prompts,
// replayed decode graphs; tokens/s = B / median step (logits read back each step). Each rank count
// above 1 runs twice: the ranks on pools of their own, and all on the one global pool ("shared").
// On a machine with fewer cores than ranks x threads this measures the ranks' overhead, not scaling.
// --placement mmap,copy: the ranks' own-pool runs once per expertPlacement (loadModel's option:
// experts read from the mapped shards, or copied onto each rank's node by its pool), in the same run.
//   node bench/cpu-ranks.mjs [--ckpt bench/out/ckpt-small] [--ranks 1,2,4] [--batch 4] [--steps 12]
//        [--placement auto[,copy,mmap]] [--out f.json]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../dist/native.js';
import { loadModel } from '../dist/generate.js';
import { now, median, mean } from './common.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const ckpt = opt('--ckpt', path.join(import.meta.dirname, 'out', 'ckpt-small'));
const rankList = opt('--ranks', '1,2,4').split(',').map(Number);
const placements = opt('--placement', 'auto').split(',');
const B = Number(opt('--batch', '4')),
  steps = Number(opt('--steps', '12'));

/** One configuration: median step ms, and per step the layers' summed fork->moe / fork->dense / fork->end
 *  (mean over ranks). `sharedPool`: every rank's streams put back on the one global pool (as before
 *  the ranks had pools of their own), for comparison in the same run. */
async function run(ranks, overlapMoe, sharedPool = false, expertPlacement = undefined) {
  const m = await loadModel(ckpt, { backend: 'cpu', maxContext: 256, ranks, overlapMoe, expertPlacement });
  const e = m.engine,
    V = e.dims.vocab;
  try {
    if (sharedPool) native.setStreamPool(e.captureStreams, null); // every stream of the step
    e.profileLayers();
    const seqs = Array.from({ length: B }, () => e.newSequence());
    const first = e.forward(
      seqs,
      seqs.map((_, b) => [1 + b, 2 + b, 3 + b, 4 + b]),
    );
    first.logits.dispose();
    const ms = [],
      prof = [];
    for (let i = 0; i < steps + 2; i++) {
      const t0 = now();
      const r = e.forward(
        seqs,
        seqs.map((_, b) => [(7 * i + 3 * b + 1) % V]),
      );
      r.logits.toBytes(); // read back: the step is done
      const t = now() - t0;
      r.logits.dispose();
      const p = e.layerProfile(); // [rank][layer]
      if (i < 2) continue; // the first steps capture the graphs
      ms.push(t);
      const sum = key => mean(p.map(layers => layers.reduce((a, x) => a + x[key], 0)));
      prof.push({ moe: sum('moe'), dense: sum('dense'), layer: sum('layer') });
    }
    for (const s of seqs) s.release();
    return {
      stepMs: median(ms),
      moe: median(prof.map(x => x.moe)),
      dense: median(prof.map(x => x.dense)),
      layer: median(prof.map(x => x.layer)),
      pools: sharedPool ? null : (m.memory.cpuRanks ?? null),
      placement: m.memory.expertPlacement?.map(p => p.how).join('+') ?? '-',
    };
  } finally {
    m.dispose();
  }
}

const rows = [];
const configs = rankList.flatMap(r =>
  r > 1 ? [...placements.map(p => [r, false, p === 'auto' ? undefined : p]), [r, true, undefined]] : [[r, false, undefined]],
);
for (const [ranks, sharedPool, placement] of configs) {
  const on = await run(ranks, true, sharedPool, placement),
    off = await run(ranks, false, sharedPool, placement);
  // serial run: fork -> MoE output is the MoE branch alone, MoE output -> dense end the dense branch alone
  const moeAlone = off.moe,
    denseAlone = off.dense - off.moe;
  const mx = Math.max(moeAlone, denseAlone);
  rows.push({
    ranks,
    threads: on.pools ? on.pools.map(p => p.threads).join('+') : `${native.threads()} shared`,
    placement: on.placement,
    tokPerS: (1000 * B) / on.stepMs,
    tokPerSSerial: (1000 * B) / off.stepMs,
    stepMs: on.stepMs,
    stepMsSerial: off.stepMs,
    regionMs: on.layer,
    moeAloneMs: moeAlone,
    denseAloneMs: denseAlone,
    overlap: on.layer / mx, // PERF target <= 1.1
    serialOverMax: off.layer / mx,
  });
}

const load = os.loadavg()[0].toFixed(2);
console.log(
  `CPU ranks, ${path.basename(ckpt)}, batch ${B}, ${steps} decode steps (median), ${os.cpus().length} vCPUs, load ${load}; ` +
    `each rank on a pool of its own (threads per rank shown)`,
);
console.log(
  '| ranks | threads | experts | decode tok/s (overlap) | tok/s (overlapMoe false) | fork->join ms (sum over layers) | MoE branch alone | dense branch alone | join / max(branch) | serial / max(branch) |',
);
console.log('|---:|---|---|---:|---:|---:|---:|---:|---:|---:|');
for (const x of rows)
  console.log(
    `| ${x.ranks} | ${x.threads} | ${x.placement} | ${x.tokPerS.toFixed(1)} | ${x.tokPerSSerial.toFixed(1)} | ${x.regionMs.toFixed(2)} | ${x.moeAloneMs.toFixed(2)} | ${x.denseAloneMs.toFixed(2)} | ${x.overlap.toFixed(2)}x | ${x.serialOverMax.toFixed(2)}x |`,
  );
const out = opt('--out', null);
if (out)
  fs.writeFileSync(
    out,
    JSON.stringify({ bench: 'cpu-ranks', ckpt, batch: B, steps, load, date: new Date().toISOString(), rows }, null, 2),
  );
