// CPU ranks' own thread pools and NUMA placement (issue 14, deliverable 1; lib/parallel/numa.ts):
// the sysfs topology parser and the split / binding plan on fake 2- and 4-node machines, streams
// whose kernels run on a pool of their own (bound to CPUs) computing what the global pool does,
// eagerly and in captured graphs, and a model on 2 CPU ranks bound to the 2 nodes of a fake sysfs
// root equal to the single-device run; loadModel's expertParallel and rankThreads options.
import { describe, expect, it } from 'vitest';
import path from 'node:path';
import { native } from '../lib/native.js';
import { Event, Stream } from '../lib/device.js';
import { empty, full, tensor, toArray } from '../lib/tensor.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { type CpuNode, numaNodes, parseCpuList, planRankPools } from '../lib/parallel/numa.js';
import { EP_BLOCKS, EP_TIMEOUT_MS } from '../lib/parallel/expert-parallel.js';
import { expectCode, rng } from './helpers.js';
import { expectEqualLogits, fakeSysfs as fakeSysfsAt, loadWithSysfs, prompts, range, runScript } from './ep-helpers.js';
import { fixtureRoot } from './model-fixture.js';

const root = fixtureRoot('longcat-cpu-ranks-');

const fakeSysfs = (name: string, nodes: string[]) => fakeSysfsAt(path.join(root, name), nodes);

const all = (n: number) => range(0, n);

describe('NUMA topology and the rank pool plan', () => {
  it('parses sysfs cpulists (ranges, singles, duplicates) and rejects anything else with a typed error', () => {
    expect(parseCpuList('0-3,8,10-11\n')).toEqual([0, 1, 2, 3, 8, 10, 11]);
    expect(parseCpuList('5,1-2,2')).toEqual([1, 2, 5]);
    expect(parseCpuList('\n')).toEqual([]);
    expectCode(() => parseCpuList('0-3,x'), 'E_ARGUMENT', /'x' is not a CPU number or range/);
  });

  it('reads the nodes of a sysfs root (LONGCAT_SYSFS_ROOT in loadModel), skipping nodes without CPUs', () => {
    const dir = fakeSysfs('topo-4', ['0-3,16-19', '4-7,20-23', '', '8-15']);
    expect(numaNodes(dir)).toEqual([
      { node: 0, cpus: [0, 1, 2, 3, 16, 17, 18, 19] },
      { node: 1, cpus: [4, 5, 6, 7, 20, 21, 22, 23] },
      { node: 3, cpus: range(8, 16) },
    ]);
    expect(numaNodes(path.join(root, 'no-such-root'))).toEqual([]);
  });

  const twoNodes: CpuNode[] = [
    { node: 0, cpus: range(0, 8) },
    { node: 1, cpus: range(8, 16) },
  ];
  const fourNodes: CpuNode[] = range(0, 4).map(n => ({ node: n, cpus: range(4 * n, 4 * n + 4) }));

  it('2 nodes: rank r on node r mod 2, the ranks of a node on disjoint slices of its CPUs, threads = slice', () => {
    expect(planRankPools(2, { nodes: twoNodes, allowed: all(16) })).toEqual([
      { rank: 0, threads: 8, node: 0, cpus: range(0, 8) },
      { rank: 1, threads: 8, node: 1, cpus: range(8, 16) },
    ]);
    expect(planRankPools(4, { nodes: twoNodes, allowed: all(16) })).toEqual([
      { rank: 0, threads: 4, node: 0, cpus: range(0, 4) },
      { rank: 1, threads: 4, node: 1, cpus: range(8, 12) },
      { rank: 2, threads: 4, node: 0, cpus: range(4, 8) },
      { rank: 3, threads: 4, node: 1, cpus: range(12, 16) },
    ]);
    // 3 ranks: node 0 holds two (slices of 4), node 1 one (all 8)
    expect(planRankPools(3, { nodes: twoNodes, allowed: all(16) }).map(p => [p.node, p.cpus])).toEqual([
      [0, range(0, 4)],
      [1, range(8, 16)],
      [0, range(4, 8)],
    ]);
  });

  it('4 nodes: one rank per node, or the ranks of a node splitting it; more ranks than CPUs share them', () => {
    expect(planRankPools(4, { nodes: fourNodes, allowed: all(16) })).toEqual(
      range(0, 4).map(r => ({ rank: r, threads: 4, node: r, cpus: range(4 * r, 4 * r + 4) })),
    );
    const eight = planRankPools(8, { nodes: fourNodes, allowed: all(16) });
    expect(eight.map(p => [p.node, p.cpus])).toEqual(
      range(0, 8).map(r => [r % 4, range(4 * (r % 4) + 2 * Math.floor(r / 4), 4 * (r % 4) + 2 * Math.floor(r / 4) + 2)]),
    );
    // no CPU in two ranks' slices
    expect(new Set(eight.flatMap(p => p.cpus)).size).toBe(16);
    const tiny: CpuNode[] = [
      { node: 0, cpus: [0] },
      { node: 1, cpus: [1] },
    ];
    expect(planRankPools(4, { nodes: tiny, allowed: [0, 1] }).map(p => [p.node, p.cpus, p.threads])).toEqual([
      [0, [0], 1],
      [1, [1], 1],
      [0, [0], 1],
      [1, [1], 1],
    ]);
  });

  it('threads / rankThreads set the pools sizes; CPUs outside the affinity mask are not used', () => {
    expect(planRankPools(2, { nodes: twoNodes, allowed: all(16), threads: 6 }).map(p => p.threads)).toEqual([3, 3]);
    expect(planRankPools(4, { nodes: twoNodes, allowed: all(16), rankThreads: 5 }).map(p => p.threads)).toEqual([5, 5, 5, 5]);
    // only node 0's CPUs allowed (e.g. taskset): one usable node, the ranks split the threads unbound
    expect(planRankPools(2, { nodes: twoNodes, allowed: range(0, 8) })).toEqual([
      { rank: 0, threads: 4, node: null, cpus: [] },
      { rank: 1, threads: 4, node: null, cpus: [] },
    ]);
    expect(planRankPools(2, { nodes: twoNodes, allowed: [1, 2, 9] }).map(p => p.cpus)).toEqual([[1, 2], [9]]);
  });

  it('one node (or no sysfs): the ranks split the threads evenly, at least one each, unbound', () => {
    expect(planRankPools(4, { nodes: [{ node: 0, cpus: all(16) }], allowed: all(16) }).map(p => p.threads)).toEqual([4, 4, 4, 4]);
    expect(planRankPools(3, { nodes: [], allowed: [0, 1] })).toEqual(
      range(0, 3).map(rank => ({ rank, threads: 1, node: null, cpus: [] })),
    );
    expectCode(() => planRankPools(0, { nodes: [], allowed: [0] }), 'E_ARGUMENT', /ranks must be a whole number >= 1, got 0/);
  });
});

describe('streams on a thread pool of their own', () => {
  it('setStreamPool / streamPool: the pool, its CPUs, back to the global pool; bad arguments are typed errors', () => {
    const allowed = native.allowedCpus();
    expect(allowed.length).toBeGreaterThan(0);
    const s = new Stream('cpu');
    try {
      expect(native.streamPool(s)).toBeNull();
      native.setStreamPool([s], 3, [allowed[0]!]);
      expect(native.streamPool(s)).toEqual({ threads: 3, cpus: [allowed[0]] });
      native.setStreamPool([s], null);
      expect(native.streamPool(s)).toBeNull();
      expectCode(() => native.setStreamPool([s], 0), 'E_ARGUMENT', /thread count must be in 1\.\.1024, got 0/);
      expectCode(() => native.setStreamPool([s], 2, [100_000]), 'E_ARGUMENT', /cpus\[0\] is not a CPU this process may run on/);
      expectCode(() => native.setStreamPool([s], 2, [-1]), 'E_ARGUMENT', /cpus\[0\] is not a CPU/);
      expectCode(() => native.setStreamPool([s, 'x' as never], 2), 'E_ARGUMENT', /streams\[1\] is not a Stream/);
      expectCode(() => native.setStreamPool(s as never, 2), 'E_ARGUMENT', /'streams' must be an array of Streams/);
    } finally {
      s.dispose();
    }
  });

  it('kernels on two streams with a pool each (bound, unbound) compute what the global pool does, eagerly and replayed', () => {
    const allowed = native.allowedCpus();
    const r = rng(5);
    const [t, k, n] = [9, 257, 131];
    const x = tensor(r.array(t * k), [t, k]),
      w = tensor(r.array(n * k), [n, k]),
      w2 = tensor(r.array(n * n), [n, n]);
    const ye = empty([t, n]),
      ze = empty([t, n]);
    native.linear(null, ye, x, w);
    native.linear(null, ze, ye, w2);
    const want = toArray(ze) as Float32Array;
    const s1 = new Stream('cpu'),
      s2 = new Stream('cpu');
    native.setStreamPool([s1], 2, [allowed[allowed.length - 1]!]);
    native.setStreamPool([s2], 3);
    const e = new Event('cpu');
    const poisoned = () => [full([t, n], Number.NaN), full([t, n], Number.NaN)] as const;
    const [y, z] = poisoned(),
      [gy, gz] = poisoned();
    const run = (yo: typeof y, zo: typeof z) => {
      native.linear(s1, yo, x, w);
      e.record(s1);
      s2.waitEvent(e);
      native.linear(s2, zo, yo, w2);
    };
    try {
      run(y, z);
      s2.synchronize();
      expect(toArray(z)).toEqual(want); // each output is one thread's sum: the same bits at any thread count
      const graph = native.captureGraph([s1, s2], () => run(gy, gz));
      for (let i = 0; i < 3; i++) graph.replay();
      s1.synchronize();
      s2.synchronize();
      expect(toArray(gz)).toEqual(want);
      graph.dispose();
    } finally {
      for (const v of [x, w, w2, ye, ze, y, z, gy, gz]) v.dispose();
      s1.dispose();
      s2.dispose();
    }
  });
});

describe('loadModel on CPU ranks with pools of their own', () => {
  it('2 ranks on the 2 nodes of a fake sysfs root: each pool bound to its node, model.memory reports the plan, logits equal the single-device run', async () => {
    const dir = path.join(root, 'tiny');
    await initRandom({ preset: 'tiny', seed: 3, out: dir });
    const single = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64 });
    let want: ReturnType<typeof runScript>;
    try {
      want = runScript(single, prompts, 2);
      expect(single.memory.cpuRanks).toBeUndefined();
    } finally {
      single.dispose();
    }
    const allowed = native.allowedCpus();
    const [a, b] = [allowed[0]!, allowed[1] ?? allowed[0]!];
    const m = await loadWithSysfs(fakeSysfs('topo-model', [`${a}`, `${b}`]), dir, {
      backend: 'cpu',
      cacheDtype: 'f32',
      maxContext: 64,
      ranks: 2,
    });
    try {
      expect(m.memory.cpuRanks).toEqual([
        { rank: 0, threads: 1, node: 0, cpus: [a] },
        { rank: 1, threads: 1, node: 1, cpus: [b] },
      ]);
      const ep = m.engine.expertParallel!;
      expect(ep.streams.map(s => native.streamPool(s))).toEqual([
        { threads: 1, cpus: [a] },
        { threads: 1, cpus: [b] },
      ]);
      const got = runScript(m, prompts, 2, want.chosen);
      for (const [i, g] of got.out.entries()) expectEqualLogits(g, want.out[i]!, m.engine.dims.vocab, 1e-5);
    } finally {
      m.dispose();
    }
    // one node here: the ranks split the threads (rankThreads sets them), unbound
    const m4 = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64, ranks: 4, rankThreads: 2 });
    try {
      expect(m4.memory.cpuRanks!.map(p => [p.threads, p.cpus])).toEqual(range(0, 4).map(() => [2, []]));
      expect(native.streamPool(m4.engine.expertParallel!.streams[3]!)).toEqual({ threads: 2, cpus: [] });
      const got = runScript(m4, prompts, 2, want.chosen);
      for (const [i, g] of got.out.entries()) expectEqualLogits(g, want.out[i]!, m4.engine.dims.vocab, 1e-5);
    } finally {
      m4.dispose();
    }
  }, 120_000);

  it('expertParallel: fp8Payload, timeoutMs and blocks reach the group; defaults otherwise', async () => {
    const dir = path.join(root, 'tiny');
    const m = await loadModel(dir, {
      backend: 'cpu',
      maxContext: 64,
      ranks: 2,
      expertParallel: { fp8Payload: true, timeoutMs: 1234, blocks: 8 },
    });
    try {
      const ep = m.engine.expertParallel!;
      expect([ep.fp8Payload, ep.timeoutMs, ep.blocks]).toEqual([true, 1234, 8]);
    } finally {
      m.dispose();
    }
    const d = await loadModel(dir, { backend: 'cpu', maxContext: 64, ranks: 2, expertParallel: {} });
    try {
      const ep = d.engine.expertParallel!;
      expect([ep.fp8Payload, ep.timeoutMs, ep.blocks]).toEqual([false, EP_TIMEOUT_MS, EP_BLOCKS]);
    } finally {
      d.dispose();
    }
  }, 60_000);

  it('bad expertParallel / rankThreads / overlapMoe options are E_ARGUMENT naming the field, expected and got', async () => {
    const nowhere = path.join(root, 'not-read'); // every check comes before the checkpoint is opened
    const cases: [Record<string, unknown>, RegExp][] = [
      [
        { ranks: 2, expertParallel: 'fast' },
        /expertParallel must be an object \{ fp8Payload\?, timeoutMs\?, blocks\? \}, got "fast"/,
      ],
      [{ ranks: 2, expertParallel: { fp8Payload: 1 } }, /expertParallel\.fp8Payload must be true or false, got 1/],
      [
        { ranks: 2, expertParallel: { timeoutMs: 0 } },
        /expertParallel\.timeoutMs must be a number of milliseconds in \(0, 3600000\], got 0/,
      ],
      [{ ranks: 2, expertParallel: { timeoutMs: 4e6 } }, /timeoutMs .* got 4000000/],
      [{ ranks: 2, expertParallel: { blocks: 2.5 } }, /expertParallel\.blocks must be an integer in \[1, 65535\], got 2\.5/],
      [{ ranks: 2, expertParallel: { block: 4 } }, /unknown field 'block' \(expected fp8Payload, timeoutMs or blocks\)/],
      [{ expertParallel: { blocks: 4 } }, /expertParallel needs expert parallelism \(ranks > 1\), got ranks 1/],
      [{ ranks: 2, rankThreads: 0 }, /rankThreads must be an integer in \[1, 1024\], got 0/],
      [{ rankThreads: 2 }, /rankThreads needs expert parallelism \(ranks > 1\), got ranks 1/],
      [{ ranks: 2, overlapMoe: 'no' }, /overlapMoe must be true or false, got "no"/],
    ];
    for (const [opts, msg] of cases)
      await expect(loadModel(nowhere, { backend: 'cpu', ...opts })).rejects.toMatchObject({
        code: 'E_ARGUMENT',
        message: expect.stringMatching(msg),
      });
  });
});
