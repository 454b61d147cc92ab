// CPU ranks' experts placed on their rank's NUMA node (issue 14, deliverable 1; lib/parallel/numa.ts
// RankPlacer, native/placed.h): native placeTensors (bytes equal to the sources at odd sizes and
// dtypes, the pages on the pool's node by a move_pages(2) query, mbind refused softly, the source
// pages of a file mapping given back), the 'auto' choice on fake 1- and 2-node sysfs plans, and
// models whose experts were copied ('copy', forced on this one-node machine) computing the same
// logits bit for bit as models reading them from the shards ('mmap'), on 2 and 4 ranks, eagerly and
// replayed; model.memory's accounting; loadModel's expertPlacement option errors.
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../lib/native.js';
import { Stream } from '../lib/device.js';
import { type Tensor, tensor, toArray } from '../lib/tensor.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { type CpuNode, RankPlacer, planRankPools, resolveExpertPlacement } from '../lib/parallel/numa.js';
import { expectCode, rng } from './helpers.js';
import { fakeSysfs, loadWithSysfs, prompts, range } from './ep-helpers.js';
import { fixtureRoot } from './model-fixture.js';

const root = fixtureRoot('longcat-expert-placement-');

const bytesOf = (t: Tensor) => Buffer.from(t.toBytes());

/** The nodes of the first pages of `t` (null when move_pages(2) is refused here, e.g. by a seccomp filter). */
function nodesOf(t: Tensor, pages = 64): number[] | null {
  const q = native.pageNodes(t, pages);
  if (q.error !== null) {
    expect(q.error).toMatch(/^move_pages: E[A-Z]+$/);
    expect(q.nodes).toEqual([]);
    return null;
  }
  return q.nodes;
}

describe("placeTensors: copies on a pool's node", () => {
  it("copies tensors of odd sizes and dtypes bit for bit into pages of the pool's node (node 0 on this machine)", () => {
    const r = rng(11);
    const srcs = [
      tensor(r.array(3 * 1021), [3, 1021]),
      tensor(r.array(777), [777], { dtype: 'bf16' }),
      tensor(
        range(0, 4099).map(i => (i % 200) - 100),
        [4099],
        { dtype: 'int8' },
      ),
      tensor([], [0, 5]),
      tensor(r.array(600_001), [600_001]), // past a 2 MiB chunk boundary of the destination
    ];
    const s = new Stream('cpu');
    native.setStreamPool([s], 2);
    try {
      const out = native.placeTensors(s, srcs, null, true, false);
      expect(out.tensors.map(t => [t.dtype, t.shape])).toEqual(srcs.map(t => [t.dtype, t.shape]));
      for (const [i, t] of out.tensors.entries()) expect(bytesOf(t).equals(bytesOf(srcs[i]!))).toBe(true);
      expect(out.bytes).toBeGreaterThanOrEqual(srcs.reduce((a, t) => a + t.nbytes, 0));
      expect(out.bound).toBe(false);
      expect(out.bindError).toBeNull();
      expect(out.released).toBe(0); // not asked (and pool memory is no file mapping)
      const nodes = nodesOf(out.tensors[4]!);
      if (nodes) {
        expect(nodes.length).toBe(64);
        // every page written by the copy: present, on the one node this machine has
        const one = fs.readdirSync('/sys/devices/system/node').filter(n => /^node\d+$/.test(n)).length === 1;
        for (const n of nodes) expect(n).toBeGreaterThanOrEqual(0);
        if (one) expect(new Set(nodes)).toEqual(new Set([0]));
      }
      for (const t of out.tensors) t.dispose();
    } finally {
      for (const t of srcs) t.dispose();
      s.dispose();
    }
  });

  it('mbind to an existing node binds; to a node this machine lacks is refused softly (first touch only, the reason kept)', () => {
    const src = tensor(rng(2).array(5000), [5000]);
    const s = new Stream('cpu');
    try {
      const onto0 = native.placeTensors(s, [src], 0, false, false);
      // node 0 exists everywhere; a seccomp filter may still refuse the syscall: then it says so
      if (!onto0.bound) expect(onto0.bindError).toMatch(/^mbind: E[A-Z]+$/);
      expect(bytesOf(onto0.tensors[0]!).equals(bytesOf(src))).toBe(true);
      const nodes = fs.readdirSync('/sys/devices/system/node').filter(n => /^node\d+$/.test(n)).length;
      const far = native.placeTensors(s, [src], nodes + 7, false, false);
      expect(far.bound).toBe(false);
      expect(far.bindError).toMatch(/^mbind: E[A-Z]+$/);
      expect(bytesOf(far.tensors[0]!).equals(bytesOf(src))).toBe(true);
      const past = native.placeTensors(s, [src], 100, false, false);
      expect(past.bindError).toBe('mbind: node 100 is past the 64-node mask');
      for (const t of [...onto0.tensors, ...far.tensors, ...past.tensors]) t.dispose();
    } finally {
      src.dispose();
      s.dispose();
    }
  });

  it('releaseSource gives back the whole pages of file-mapped sources (the file still reads the same)', () => {
    const file = path.join(root, 'weights.bin');
    const n = 5 * 4096 + 3; // f32: 5 pages and a bit
    const values = rng(4).array(n);
    fs.writeFileSync(file, Buffer.from(values.buffer));
    const m = native.mapFile(file);
    const src = native.tensorFromMapping(m, 0, 'f32', [n]);
    const s = new Stream('cpu');
    try {
      const out = native.placeTensors(s, [src], null, true, true);
      expect(bytesOf(out.tensors[0]!).equals(Buffer.from(values.buffer))).toBe(true);
      // the mapping starts page aligned: every whole page of the tensor's n * 4 bytes
      expect(out.released).toBe(Math.floor((n * 4) / 4096) * 4096);
      expect(out.releaseHow).toMatch(/^(pageout|dontneed)$/);
      expect(toArray(src)).toEqual(values); // given back pages fault in again from the file
      // a pool-backed source is not a file mapping: nothing given back
      const pooled = tensor(values, [n]);
      const again = native.placeTensors(s, [pooled], null, true, true);
      expect([again.released, again.releaseHow]).toEqual([0, null]);
      expect(toArray(pooled)).toEqual(values);
      for (const t of [...out.tensors, ...again.tensors, pooled]) t.dispose();
    } finally {
      src.dispose();
      m.close();
      s.dispose();
    }
  });

  it("bad arguments are typed errors; setStreamPool(streams, other) shares the other stream's pool", () => {
    const t = tensor([1, 2, 3], [3]);
    const s = new Stream('cpu'),
      s2 = new Stream('cpu');
    try {
      expectCode(() => native.placeTensors(null as never, [t], null, true, false), 'E_ARGUMENT', /'stream' must be a CPU stream/);
      expectCode(() => native.placeTensors(s, [t], -1, true, false), 'E_ARGUMENT', /'node' must be null or in 0\.\.1023, got -1/);
      expectCode(() => native.placeTensors(s, [t, 5 as never], null, true, false), 'E_ARGUMENT', /tensors\[1\]' is not a Tensor/);
      expectCode(() => native.pageNodes(t, -1), 'E_ARGUMENT', /'maxPages' must be >= 0, got -1/);
      native.setStreamPool([s], 2);
      native.setStreamPool([s2], s);
      expect(native.streamPool(s2)).toEqual({ threads: 2, cpus: [] });
    } finally {
      t.dispose();
      s.dispose();
      s2.dispose();
    }
  });
});

describe("expertPlacement: 'auto' by the plan", () => {
  const twoNodes: CpuNode[] = [
    { node: 0, cpus: [0] },
    { node: 1, cpus: [1] },
  ];
  it("'auto' copies when the ranks' pools span several nodes, else reads the shards; 'copy' / 'mmap' force it", () => {
    const spread = planRankPools(2, { nodes: twoNodes, allowed: [0, 1] });
    const one = planRankPools(2, { nodes: [{ node: 0, cpus: [0, 1] }], allowed: [0, 1] });
    expect(resolveExpertPlacement('auto', spread)).toEqual({ copy: true, reason: '' });
    expect(resolveExpertPlacement('auto', one)).toEqual({
      copy: false,
      reason: 'one NUMA node: the shards are as near to every rank',
    });
    expect(resolveExpertPlacement('copy', one)).toEqual({
      copy: true,
      reason: "expertPlacement 'copy' on one NUMA node (unbound pools)",
    });
    expect(resolveExpertPlacement('mmap', spread)).toEqual({ copy: false, reason: "expertPlacement 'mmap'" });
  });

  it("a RankPlacer places each rank's tensors by its own pool (mbind to a node this machine lacks: first touch, reason kept)", () => {
    const allowed = native.allowedCpus();
    const plan = planRankPools(2, {
      nodes: [
        { node: 0, cpus: [allowed[0]!] },
        { node: 5, cpus: [allowed[1] ?? allowed[0]!] },
      ],
      allowed,
    });
    const placer = new RankPlacer(plan, true, '');
    const src = tensor(rng(9).array(40_000), [40_000]);
    try {
      expect(placer.streams.map(s => native.streamPool(s))).toEqual(plan.map(p => ({ threads: p.threads, cpus: p.cpus })));
      const [a] = placer.place(0, [src]),
        [b] = placer.place(1, [src]);
      for (const t of [a!, b!]) expect(bytesOf(t).equals(bytesOf(src))).toBe(true);
      const [r0, r1] = placer.report;
      expect(r0).toMatchObject({ rank: 0, node: 0, bytes: src.nbytes, released: 0 });
      expect(r0!.how === 'mbind' || /^mbind: E[A-Z]+: placed by first touch only$/.test(r0!.reason ?? '')).toBe(true);
      expect(r1).toMatchObject({ rank: 1, node: 5, how: 'copy', bytes: src.nbytes });
      expect(r1!.reason).toMatch(/^mbind: E[A-Z]+: placed by first touch only$/);
      const nodes = nodesOf(b!);
      if (nodes) for (const n of nodes) expect(n).toBeGreaterThanOrEqual(0); // present: written by the copy
      a!.dispose();
      b!.dispose();
    } finally {
      src.dispose();
      placer.dispose();
    }
  });
});

/** Prefill of the prompts, then `steps` greedy decode steps eagerly and `steps` replayed; all logits. */
function script(m: Awaited<ReturnType<typeof loadModel>>, steps: number) {
  const e = m.engine,
    V = e.dims.vocab;
  const seqs = prompts.map(() => e.newSequence());
  const read = (r: { logits: Tensor }) => {
    const v = toArray(r.logits) as Float32Array;
    r.logits.dispose();
    return v;
  };
  const out = [read(e.forward(seqs, prompts))];
  for (let i = 0; i < 2 * steps; i++) {
    const prev = out[out.length - 1]!;
    const toks = seqs.map((_, b) => {
      let best = 0;
      for (let j = 1; j < V; j++) if (prev[b * V + j]! > prev[b * V + best]!) best = j;
      return [best];
    });
    out.push(read(e.forward(seqs, toks, { eager: i < steps })));
  }
  for (const s of seqs) s.release();
  return out;
}

describe('models with placed experts', () => {
  it("'copy' (forced on one node) equals 'mmap' bit for bit on 2 and 4 ranks, eagerly and replayed; model.memory accounts for it", async () => {
    const dir = path.join(root, 'tiny');
    await initRandom({ preset: 'tiny', seed: 8, out: dir });
    const ck = await openCheckpoint(dir);
    const expertBytes = [...ck.tensors.values()]
      .filter(t => /\.mlp\.experts\.\d+\./.test(t.name))
      .reduce((a, t) => a + t.nbytes, 0);
    ck.close();
    expect(expertBytes).toBeGreaterThan(0);
    for (const ranks of [2, 4]) {
      const load = (expertPlacement: 'copy' | 'mmap') =>
        loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64, ranks, expertPlacement });
      const mm = await load('mmap');
      let want: Float32Array[], mmMemory: typeof mm.memory;
      try {
        want = script(mm, 2);
        mmMemory = mm.memory;
      } finally {
        mm.dispose();
      }
      const cp = await load('copy');
      try {
        const got = script(cp, 2);
        expect(got.length).toBe(want.length);
        for (const [i, g] of got.entries()) expect(Buffer.from(g.buffer).equals(Buffer.from(want[i]!.buffer))).toBe(true);
        const mem = cp.memory;
        expect(mmMemory.expertPlacement).toEqual(
          range(0, ranks).map(rank => ({
            rank,
            node: null,
            how: 'mmap',
            bytes: 0,
            hugepage: false,
            released: 0,
            reason: "expertPlacement 'mmap'",
          })),
        );
        expect(mem.expertPlacement!.map(p => [p.rank, p.node, p.how, p.reason])).toEqual(
          range(0, ranks).map(rank => [rank, null, 'copy', "expertPlacement 'copy' on one NUMA node (unbound pools)"]),
        );
        // every routed expert copied once, split evenly; no longer counted as read from the shards
        const bytes = mem.expertPlacement!.map(p => p.bytes);
        expect(bytes.reduce((a, b) => a + b, 0)).toBe(expertBytes);
        expect(new Set(bytes).size).toBe(1);
        expect(mem.hostMapped).toBe(mmMemory.hostMapped - expertBytes);
        for (const p of mem.expertPlacement!) expect(p.released).toBeLessThanOrEqual(p.bytes); // tiny experts: under a page each
        // a kernel with transparent huge pages takes MADV_HUGEPAGE on the copies
        if (fs.existsSync('/sys/kernel/mm/transparent_hugepage/enabled'))
          expect(mem.expertPlacement!.map(p => p.hugepage)).toEqual(range(0, ranks).map(() => true));
        expect(mem.cpuRanks).toEqual(mmMemory.cpuRanks);
        // the ranks' streams run on the pools that placed their experts (the plan's sizes)
        expect(cp.engine.expertParallel!.streams.map(s => native.streamPool(s))).toEqual(
          mem.cpuRanks!.map(p => ({ threads: p.threads, cpus: p.cpus })),
        );
      } finally {
        cp.dispose();
      }
    }
  }, 240_000);

  it("a fake 2-node sysfs root: 'auto' copies each rank's experts with its node's pool", async () => {
    const dir = path.join(root, 'tiny');
    const allowed = native.allowedCpus();
    const fake = fakeSysfs(path.join(root, 'sysfs-2'), [`${allowed[0]!}`, `${allowed[1] ?? allowed[0]!}`]);
    const m = await loadWithSysfs(fake, dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64, ranks: 2 });
    try {
      const [r0, r1] = m.memory.expertPlacement!;
      expect([r0!.node, r1!.node]).toEqual([0, 1]);
      for (const r of [r0!, r1!]) {
        expect(r.how === 'copy' || r.how === 'mbind').toBe(true);
        expect(r.bytes).toBeGreaterThan(0);
      }
      // node 1 is not this machine's: mbind refused, placed by the node-1 pool's first touch
      expect(r1!.how).toBe('copy');
      expect(r1!.reason).toMatch(/^mbind: E[A-Z]+: placed by first touch only$/);
      const got = script(m, 1);
      for (const v of got) for (const x of v) expect(Number.isFinite(x)).toBe(true);
    } finally {
      m.dispose();
    }
  }, 120_000);

  it('bad expertPlacement options are E_ARGUMENT naming the field, expected and got', async () => {
    const nowhere = path.join(root, 'not-read');
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ ranks: 2, expertPlacement: 'numa' }, /expertPlacement must be 'auto', 'copy' or 'mmap', got "numa"/],
      [{ ranks: 2, expertPlacement: true }, /expertPlacement must be 'auto', 'copy' or 'mmap', got true/],
      [{ expertPlacement: 'copy' }, /expertPlacement needs expert parallelism \(ranks > 1\), got ranks 1/],
    ];
    for (const [opts, msg] of cases)
      await expect(loadModel(nowhere, { backend: 'cpu', ...opts })).rejects.toMatchObject({
        code: 'E_ARGUMENT',
        message: expect.stringMatching(msg),
      });
  });
});
