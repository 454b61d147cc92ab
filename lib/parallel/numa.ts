// CPU ranks' thread pools and their NUMA placement (issue 14, deliverable 1). Under expert
// parallelism on the CPU (loadModel's ranks) every rank runs its kernels on a pool of its own
// (native setStreamPool: its streams' jobs run under that pool), so that the ranks' replayed steps
// do not contend for one pool. The cores are split between the ranks: on a machine with several
// NUMA nodes rank r goes to node r mod nodes, and the ranks that share a node split its CPUs into
// disjoint contiguous slices, each pool's threads bound to its slice (sched_setaffinity; its
// pages then come from that node by first touch); on one node the ranks split the thread count and
// stay unbound (the OS places them). The topology is read from sysfs
// (/sys/devices/system/node/node*/cpulist); LONGCAT_SYSFS_ROOT names another root (tests give a
// fake 2- or 4-node machine).
//
// A rank's KV pages reach its node by first touch (its own kernels write them first). Its routed
// experts are pages of the mapped shards, in the page cache on whatever node read them; so where the
// ranks span several nodes (expertPlacement 'auto', or 'copy' to force it) each rank's experts are
// copied at load into memory placed on its node (RankPlacer: native placeTensors, the copy run by
// the rank's own pool's threads, MADV_HUGEPAGE, mbind(MPOL_BIND) first when the kernel allows it),
// and the shards' pages of those experts are given back so the bytes are not held twice.
import fs from 'node:fs';
import path from 'node:path';
import { ArgumentError, showValue } from '../errors.js';
import { native } from '../native.js';
import { Stream } from '../device.js';
import type { Tensor } from '../tensor.js';

/** A NUMA node and its CPUs. */
export interface CpuNode {
  node: number;
  cpus: number[];
}

/** A CPU rank's pool: its threads, its node (null: one node, unbound) and the CPUs its threads are
 *  bound to (empty: unbound). */
export interface RankPool {
  rank: number;
  threads: number;
  node: number | null;
  cpus: number[];
}

/** A sysfs cpulist ("0-3,8,10-11") as CPU numbers, ascending. */
export function parseCpuList(text: string): number[] {
  const out: number[] = [];
  for (const part of text.trim().split(',')) {
    if (part === '') continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new ArgumentError('E_ARGUMENT', `cpulist: '${part}' is not a CPU number or range (in '${text.trim()}')`);
    const a = Number(m[1]),
      b = m[2] === undefined ? a : Number(m[2]);
    for (let c = a; c <= b; c++) out.push(c);
  }
  return [...new Set(out)].sort((x, y) => x - y);
}

/** The machine's NUMA nodes with CPUs, by node number ([] when sysfs has no node directory). */
export function numaNodes(root: string = process.env.LONGCAT_SYSFS_ROOT || '/sys'): CpuNode[] {
  const dir = path.join(root, 'devices/system/node');
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const nodes: CpuNode[] = [];
  for (const name of names) {
    const m = /^node(\d+)$/.exec(name);
    if (!m) continue;
    let text: string;
    try {
      text = fs.readFileSync(path.join(dir, name, 'cpulist'), 'utf8');
    } catch {
      continue;
    }
    const cpus = parseCpuList(text);
    if (cpus.length) nodes.push({ node: Number(m[1]), cpus });
  }
  return nodes.sort((a, b) => a.node - b.node);
}

export interface RankPoolOptions {
  /** The machine's nodes (numaNodes()). */
  nodes: readonly CpuNode[];
  /** The CPUs this process may run on (native.allowedCpus()); a node's others are not used. */
  allowed: readonly number[];
  /** Threads of all ranks together (default: the allowed CPUs); split evenly, at least 1 each. */
  threads?: number;
  /** Threads per rank (overrides the even split). */
  rankThreads?: number;
}

/** Each CPU rank's pool: threads split evenly, and with several NUMA nodes rank r on node r mod
 *  nodes, bound to its slice of that node's CPUs (see the file comment). */
export function planRankPools(ranks: number, opts: RankPoolOptions): RankPool[] {
  if (!Number.isInteger(ranks) || ranks < 1)
    throw new ArgumentError('E_ARGUMENT', `planRankPools: ranks must be a whole number >= 1, got ${showValue(ranks)}`);
  const allowed = new Set(opts.allowed);
  const nodes = opts.nodes.map(n => ({ node: n.node, cpus: n.cpus.filter(c => allowed.has(c)) })).filter(n => n.cpus.length > 0);
  const total = opts.threads ?? Math.max(opts.allowed.length, 1);
  const even = Math.max(1, Math.floor(total / ranks));
  const per = opts.rankThreads ?? even;
  if (nodes.length < 2) return Array.from({ length: ranks }, (_, rank) => ({ rank, threads: per, node: null, cpus: [] }));
  return Array.from({ length: ranks }, (_, rank) => {
    const n = nodes[rank % nodes.length]!;
    // the ranks on this node: rank % nodes.length, + nodes.length, ...; this one is the j-th of k
    const k = Math.ceil((ranks - (rank % nodes.length)) / nodes.length),
      j = Math.floor(rank / nodes.length);
    const m = n.cpus.length;
    // k >= m: several ranks on a CPU (slices of one); else contiguous slices of floor / ceil size
    const cpus = k >= m ? [n.cpus[j % m]!] : n.cpus.slice(Math.floor((j * m) / k), Math.floor(((j + 1) * m) / k));
    return { rank, threads: opts.rankThreads ?? (opts.threads === undefined ? cpus.length : even), node: n.node, cpus };
  });
}

/** loadModel's rankThreads, checked. */
export function checkRankThreads(v: unknown): number | undefined {
  if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 1024))
    throw new ArgumentError('E_ARGUMENT', `loadModel: rankThreads must be an integer in [1, 1024], got ${showValue(v)}`);
  return v as number | undefined;
}

/** loadModel's expertPlacement: where CPU ranks' routed experts live. 'auto' (default): 'copy'
 *  when the ranks' pools span several NUMA nodes, else 'mmap'. 'copy': copied into memory placed on
 *  each rank's node (first written by its pool's threads). 'mmap': read from the mapped shards. */
export type ExpertPlacement = 'auto' | 'copy' | 'mmap';

/** loadModel's expertPlacement, checked. */
export function checkExpertPlacement(v: unknown): ExpertPlacement | undefined {
  if (v !== undefined && v !== 'auto' && v !== 'copy' && v !== 'mmap')
    throw new ArgumentError('E_ARGUMENT', `loadModel: expertPlacement must be 'auto', 'copy' or 'mmap', got ${showValue(v)}`);
  return v;
}

/** Where a CPU rank's routed experts ended up (model.memory.expertPlacement). */
export interface RankPlacement {
  rank: number;
  /** The node of the rank's pool (null: one node, unbound pool). */
  node: number | null;
  /** 'mbind': copied into memory bound to `node` (MPOL_BIND) and first written by the rank's pool;
   *  'copy': copied, placed by first touch only; 'mmap': left in the mapped shards. */
  how: 'copy' | 'mbind' | 'mmap';
  /** Bytes of the rank's expert tensors copied (0 for 'mmap'). */
  bytes: number;
  /** Whether the copies' memory took MADV_HUGEPAGE (false for 'mmap'). */
  hugepage: boolean;
  /** Bytes of mapped shard pages given back after the copy (whole pages inside the copied tensors). */
  released: number;
  /** Why not 'mbind' (or why 'mmap'), when it is not. */
  reason?: string;
}

/** The placement 'auto' resolves to for a plan, and why. */
export function resolveExpertPlacement(mode: ExpertPlacement, pools: readonly RankPool[]): { copy: boolean; reason: string } {
  const nodes = new Set(pools.map(p => p.node).filter(n => n !== null)).size;
  if (mode === 'mmap') return { copy: false, reason: "expertPlacement 'mmap'" };
  if (mode === 'copy') return { copy: true, reason: nodes > 1 ? '' : "expertPlacement 'copy' on one NUMA node (unbound pools)" };
  return nodes > 1 ? { copy: true, reason: '' } : { copy: false, reason: 'one NUMA node: the shards are as near to every rank' };
}

/**
 * Places CPU ranks' experts on their nodes at load (see the file comment): one CPU stream per rank on
 * a pool of the rank's plan (its threads, its CPUs), which copies the rank's tensors (place); the
 * model then runs the rank's streams on that same pool (LongcatModel's rankPoolStreams), so the
 * threads that first wrote the experts are the ones that read them.
 */
export class RankPlacer {
  /** Per rank: the stream whose pool copies its experts (none when not copying). */
  readonly streams: Stream[] = [];
  readonly report: RankPlacement[];
  constructor(
    pools: readonly RankPool[],
    readonly copy: boolean,
    reason: string,
  ) {
    this.report = pools.map(p => ({
      rank: p.rank,
      node: p.node,
      how: 'mmap' as const,
      bytes: 0,
      hugepage: false,
      released: 0,
      ...(reason ? { reason } : {}),
    }));
    if (!copy) return;
    try {
      for (const p of pools) {
        const s = new Stream('cpu');
        this.streams.push(s);
        native.setStreamPool([s], p.threads, p.cpus);
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** Rank `rank`'s tensors copied onto its node (mbind to it first where the pool has one); the
   *  sources' mapped pages given back. */
  place(rank: number, tensors: Tensor[]): Tensor[] {
    const r = this.report[rank]!,
      s = this.streams[rank];
    if (!this.copy || !s) return tensors;
    const out = native.placeTensors(s, tensors, r.node, true, true);
    r.bytes += tensors.reduce((a, t) => a + t.nbytes, 0);
    r.released += out.released;
    r.hugepage = r.hugepage || out.hugepage;
    // a rank is 'mbind' only when every one of its placements was bound
    const how = out.bound ? 'mbind' : 'copy';
    r.how = r.how === 'mmap' ? how : r.how === 'mbind' && how === 'mbind' ? 'mbind' : 'copy';
    if (!out.bound && r.node !== null && out.bindError) r.reason = `${out.bindError}: placed by first touch only`;
    return out.tensors;
  }

  /** The placement streams (their pools live on in the streams that share them). */
  dispose() {
    for (const s of this.streams) s.dispose();
    this.streams.length = 0;
  }
}
