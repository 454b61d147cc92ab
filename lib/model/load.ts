// loadModel: a checkpoint directory in, a ready Model out.
import { openCheckpoint, type Checkpoint, type LoadProgress } from '../checkpoint.js';
import { native } from '../native.js';
import { ArgumentError, DeviceError, showValue } from '../errors.js';
import { setThreads } from '../device.js';
import { modelDims } from './dims.js';
import {
  type ModelWeights,
  type WeightsPopulated,
  copyToHugePages,
  loadWeights,
  memAvailable,
  populateMappedWeights,
  type UploadProgress,
} from './weights.js';
import { type QuantizeFormat, QuantizingSource, checkQuantizeFormat } from '../quantize.js';
import { Int4Source } from '../int4.js';
import { LongcatModel } from './model.js';
import { expertsPerRank, rankExperts } from '../parallel/placement.js';
import { NcclComm, type NcclInitOptions } from '../parallel/nccl.js';
import { CrossHostExperts } from '../parallel/cross-host.js';
import { type ExpertParallelOptions, checkExpertParallelOptions } from '../parallel/expert-parallel.js';
import {
  type ExpertPlacement,
  type RankPlacement,
  type RankPool,
  RankPlacer,
  checkExpertPlacement,
  checkRankThreads,
  numaNodes,
  planRankPools,
  resolveExpertPlacement,
} from '../parallel/numa.js';
import { type CacheDtype, latentCacheRow } from '../kv-cache.js';

export type Backend = 'auto' | 'cpu' | 'cuda';

export interface LoadModelOptions {
  /** 'auto' (default, or $LONGCAT_BACKEND): CUDA when available, else CPU. */
  backend?: Backend;
  /** CUDA device index (default 0). */
  deviceIndex?: number;
  /** CPU kernel threads (default: the cores this process may use). */
  threads?: number;
  signal?: AbortSignal;
  /** Mapping the shards (phase 'map'), then, on a GPU, copying the weights (phase 'upload'), then
   *  one event per N-gram table, which stays in host memory (phase 'host'). */
  onProgress?: (p: LoadProgress | UploadProgress | HostProgress) => void;
  /** Longest sequence a session may reach (default: the config's max_position_embeddings, capped at 8192). */
  maxContext?: number;
  /** KV-cache blocks shared by all sessions (default: 4 full-length sequences). */
  cacheBlocks?: number;
  /** The latent KV cache's format (default 'bf16'): 'fp8' stores FlashMLA's quantized rows, 656
   *  bytes per token and attention sub-layer at the real 512 + 64 sizes against 1152 in bf16 (kv-cache.ts latentCacheRow). */
  cacheDtype?: CacheDtype;
  /** Expert parallelism over N ranks in this process (default 1, or the size of `devices`): CPU
   *  ranks, or with backend 'cuda' ranks on the devices of `devices` (rank r on
   *  devices[r % devices.length]; without `devices`, N virtual ranks on the one device). Each
   *  layer's routed experts split into N equal contiguous blocks, one per rank, each uploaded to
   *  its rank's device only; attention, dense FFNs, router, embedding and lm_head replicated (one
   *  copy per device of the group) and run data-parallel: each rank owns the sequences assigned to
   *  it (lib/parallel/data-parallel.ts) and their KV pages (a pool of cacheBlocks per rank). N must
   *  divide n_routed_experts and be a multiple of the group size. */
  ranks?: number;
  /** CPU ranks (backend 'cpu', ranks > 1): threads of each rank's own pool (default: `threads`,
   *  else the cores this process may use, split evenly). On a machine with several NUMA nodes rank
   *  r's pool is bound to node r mod nodes (its slice of that node's CPUs; lib/parallel/numa.ts;
   *  LONGCAT_SYSFS_ROOT overrides /sys for the topology); on one node the ranks just split the
   *  thread count. model.memory.cpuRanks reports the plan. */
  rankThreads?: number;
  /** CPU ranks (backend 'cpu', ranks > 1): where each rank's routed experts live. 'auto' (default):
   *  'copy' when the ranks' pools span several NUMA nodes, else 'mmap'. 'copy': at load each rank's
   *  experts are copied into memory first written by its own pool's threads (so on its node by first
   *  touch; mbind(MPOL_BIND) to the node as well where the kernel allows it; MADV_HUGEPAGE) and the
   *  shards' pages they came from are given back. 'mmap': read from the mapped shards in place.
   *  model.memory.expertPlacement reports the outcome per rank. */
  expertPlacement?: ExpertPlacement;
  /** The expert-parallel protocol's settings (ranks > 1): fp8Payload (dispatch sends e4m3 rows
   *  with 1 x 128 scales, default false), timeoutMs (a rank's wait for a peer before the step
   *  fails with E_RANK_FAILED, default 60000), blocks (the CUDA block budget of a dispatch or
   *  combine launch, default 16). */
  expertParallel?: ExpertParallelOptions;
  /** Run the shortcut MoE branch on its own stream, overlapping the dense branch (default true);
   *  false serialises it, to measure what the overlap buys. */
  overlapMoe?: boolean;
  /** The CUDA device group (backend 'cuda'): device indices, or 'all' for every device present.
   *  Peer access is enabled between every pair (E_DEVICE naming both when two cannot reach each
   *  other). Not with deviceIndex. */
  devices?: readonly number[] | 'all';
  /** Prompt tokens per forward step of a prefill (default 512): generate awaits each chunk, so the
   *  event loop stays free and an abort takes effect between chunks. generate's `prefillChunk` overrides it. */
  prefillChunk?: number;
  /** The most prompt tokens a prefill chunk computes while other sequences are decoding (default
   *  128): each chunk stalls every running stream for its own time, so a long prompt arriving among
   *  them runs in smaller chunks (its first token comes later); alone it runs in `prefillChunk`s. */
  prefillChunkWhileDecoding?: number;
  /** Load the checkpoint's MTP head when it has one (default true): speculative decoding drafts with it. */
  mtp?: boolean;
  /** CPU backend: copy the weights the decode step streams from the mapped shards into anonymous
   *  memory advised for transparent huge pages, at load on a libuv worker (weights.ts copyToHugePages):
   *  the dense weights (attention, dense MLPs, norms, router, lm_head, MTP layer; not the embeddings or
   *  N-gram tables) and, on one device (not CPU ranks: expertPlacement places theirs), every layer's
   *  routed experts. The GEMVs then read 2 MiB pages instead of walking the page tables every 4 KiB
   *  (bench/RESULTS.md session 13: the medium step 1.04-1.06x faster). Costs those bytes of resident,
   *  unevictable process memory (model.memory.hugePages; the shards' pages are unmapped once copied,
   *  kept in the page cache) and the copy's time at load. Default false: opt-in, for weights that fit
   *  well inside MemAvailable. */
  hugePages?: boolean;
  /** CPU backend: fault in, at load and off the JS thread, the mapped pages the decode step reads
   *  (the dense weights and every layer's routed experts; not the embeddings or N-gram tables), as
   *  llama.cpp's mmap prefetch does: otherwise an expert no step has read yet page-faults on its
   *  first read, for the first hundred-odd steps. Default true; skipped (model.memory.populated says
   *  why) when those bytes exceed MemAvailable (/proc/meminfo). loadModel resolves once they are in. */
  populate?: boolean;
  /** Quantize the eligible linears of a BF16 / F16 / F32 checkpoint while loading, for a quick try
   *  without writing files (`longcat quantize` writes them): 'fp8' (e4m3, one scale per 128x128
   *  block: attention, dense MLP, expert and MTP linears) or 'int8' (symmetric per-row: the same
   *  but kv_b_proj) or 'int4' (symmetric, groups of 128 columns with f16 scales, native/cpu/linear.h:
   *  the same as int8 but the MTP eh_proj and linears whose sizes are not multiples of 8, so that
   *  it matches `longcat quantize --to int4`). Embeddings, lm_head, norms, router and N-gram tables
   *  keep their dtype. The codes are made on the CPU (host memory; on a GPU then uploaded and the
   *  host copies freed). An already-quantized checkpoint is E_ARGUMENT. GPTQ / AutoRound int4
   *  checkpoints load without this option (lib/int4.ts Int4Source). */
  quantize?: QuantizeFormat;
  /** Prefix caching (default true): full KV pages of finished prompts and answers stay cached while
   *  the memory is not needed, and a later prompt that starts with the same tokens shares them. */
  prefixCache?: boolean;
  /**
   * Expert parallelism across hosts through NCCL (lib/parallel/cross-host.ts), SPMD as torchrun
   * runs it: every host runs the same program, and this process is host `rank` of `worldSize`
   * (true: RANK, WORLD_SIZE, LONGCAT_NCCL_ID and LONGCAT_NCCL_PATH from the environment; or the
   * options of NcclComm.init, whose `device` is the model's). Each layer's routed experts split
   * into worldSize equal blocks and this host loads only its own; attention is data-parallel between
   * hosts (each owns its sequences). forward is then a collective call: every host calls it in the
   * same order, a host with no sequences calls forward([], []); a wait for the other hosts is bounded
   * by timeoutMs (default 10 minutes), past which the communicator is aborted and the step fails
   * with E_NCCL on every host. One rank per host (ranks 1, no devices group); decode runs eagerly
   * and speculative steps are not available. loadModel resolves once every host has joined.
   */
  nccl?: boolean | (Omit<NcclInitOptions, 'device'> & { timeoutMs?: number });
}

export function resolveDevice(backend: Backend = (process.env.LONGCAT_BACKEND as Backend) || 'auto', index = 0): string {
  const cuda = native.cudaStatus();
  if (backend === 'cpu') return 'cpu';
  if (backend === 'cuda') {
    if (!cuda.available) throw new DeviceError('E_DEVICE', `backend 'cuda' requested but CUDA is unavailable: ${cuda.reason}`);
    return `cuda:${index}`;
  }
  if (backend !== 'auto') throw new DeviceError('E_DEVICE', `unknown backend '${backend}' (expected 'auto', 'cpu' or 'cuda')`);
  if (cuda.driverTooOld) warnDriverOnce(cuda.reason);
  return cuda.available ? `cuda:${index}` : 'cpu';
}

let driverWarned = false;
/** A GPU whose driver is older than the CUDA runtime linked in: 'auto' runs on the CPU, and says why once. */
function warnDriverOnce(reason: string) {
  if (driverWarned) return;
  driverWarned = true;
  process.emitWarning(reason, { code: 'LONGCAT_CUDA_DRIVER' });
}

/** A part of the weights that is not uploaded: read from the memory-mapped shards on the host. */
export interface HostProgress {
  phase: 'host';
  tensor: string;
  /** Bytes of such tensors so far / in all. */
  bytes: number;
  totalBytes: number;
}

/** Where the weights live once loaded, in checkpoint bytes (the MTP module counted when it was loaded). */
export interface ModelMemory {
  /** Bytes copied to each device ('upload' phase); empty on the CPU. */
  uploaded: Record<string, number>;
  /** Bytes read from the memory-mapped shards in host memory: on the CPU every weight; on a GPU the N-gram tables. */
  hostMapped: number;
  /** Of hostMapped, the N-gram tables (0 without an N-gram embedding): never uploaded. */
  ngramTables: number;
  /** Bytes of the latent KV caches on each device (under expert parallelism every rank's pool, on its device). */
  kvCache: Record<string, number>;
  /** CPU ranks: each rank's own thread pool (threads, NUMA node or null on one node, the CPUs its
   *  threads are bound to, empty: unbound). A rank's KV pages are first written by its own kernels,
   *  so with bound pools they are allocated on its node (first touch); its experts are pages of the
   *  mapped shards, which stay where the page cache put them. Absent without CPU ranks. */
  cpuRanks?: RankPool[];
  /** CPU ranks: where each rank's routed experts are (loadModel's expertPlacement): copied onto its
   *  node ('copy' / 'mbind', `bytes` of them, no longer in hostMapped) or read from the shards
   *  ('mmap'), with the reason when not 'mbind'. Absent without CPU ranks. */
  expertPlacement?: RankPlacement[];
  /** The bytes the CPU model reads from its hugepage-advised copies (loadModel's `hugePages`: dense
   *  weights and, on one device, the routed experts, some of them made at load; 0 when off or on a
   *  GPU): resident anonymous memory of the process. */
  hugePages: number;
  /** CPU: what loadModel's `populate` faulted in at load (bytes of mapped pages, or 0 and why not);
   *  null on a GPU or when turned off. */
  populated: WeightsPopulated | null;
  /** Bytes of weights made at load in host memory that the CPU model reads (loadModel's `quantize`,
   *  GPTQ / AutoRound linears repacked into the int4 format); the checkpoint tensors they replace are
   *  not in hostMapped. 0 on a GPU (the made tensors are uploaded, counted in `uploaded`, and freed). */
  hostMade: number;
}

/** Weights a CPU model holds made at load: their bytes and the checkpoint tensors they replace. */
export interface MadeWeights {
  replaced: ReadonlySet<string>;
  bytes: number;
}

const isMtp = (name: string) => name.startsWith('model.mtp.');
const isNgramTable = (name: string) => name.startsWith('model.ngram_embeddings.embedders.');

/** Checkpoint bytes a GPU model uploads: not the N-gram tables (read from host memory), the MTP module only when loaded. */
export function uploadBytes(checkpoint: Checkpoint, mtpLoaded: boolean): number {
  return [...checkpoint.tensors.values()]
    .filter(t => (mtpLoaded || !isMtp(t.name)) && !isNgramTable(t.name))
    .reduce((a, t) => a + t.nbytes, 0);
}

export function modelMemory(
  checkpoint: Checkpoint,
  device: string,
  uploaded: Record<string, number>,
  mtpLoaded: boolean,
  kvCache: Record<string, number> = {},
  made: MadeWeights | null = null,
  cpuRanks: readonly RankPool[] | null = null,
  expertPlacement: readonly RankPlacement[] | null = null,
  hugePages = 0,
  populated: WeightsPopulated | null = null,
): ModelMemory {
  const cpu = device === 'cpu';
  let loaded = 0,
    ngramTables = 0;
  for (const t of checkpoint.tensors.values()) {
    if ((!mtpLoaded && isMtp(t.name)) || (cpu && made?.replaced.has(t.name))) continue;
    loaded += t.nbytes;
    if (isNgramTable(t.name)) ngramTables += t.nbytes;
  }
  // copied experts of checkpoint tensors (not of made ones) are no longer read from the shards
  const placed = cpu && !made ? (expertPlacement ?? []).reduce((a, p) => a + p.bytes, 0) : 0;
  return {
    uploaded: { ...uploaded },
    hostMapped: cpu ? loaded - placed : ngramTables,
    ngramTables,
    kvCache: { ...kvCache },
    hostMade: cpu ? (made?.bytes ?? 0) : 0,
    hugePages: cpu ? hugePages : 0,
    populated: cpu && populated ? { ...populated } : null,
    ...(cpuRanks ? { cpuRanks: cpuRanks.map(p => ({ ...p, cpus: [...p.cpus] })) } : {}),
    ...(expertPlacement ? { expertPlacement: expertPlacement.map(p => ({ ...p })) } : {}),
  };
}

export interface LoadedModel {
  checkpoint: Checkpoint;
  model: LongcatModel;
  /** On the CPU, the weights made at load (null without a quantizer or on a GPU). */
  made: MadeWeights | null;
  /** On the CPU, the bytes of weights copied into hugepage-advised memory (0: none). */
  hugePages: number;
  /** On the CPU, what `populate` faulted in (null: off, or on a GPU). */
  populated: WeightsPopulated | null;
}

/** Every option of loadModel checked before any file is read, with a typed error naming it. */
function checkLoadOptions(opts: LoadModelOptions): void {
  if (typeof opts !== 'object' || opts === null) throw new ArgumentError('E_ARGUMENT', 'loadModel: options must be an object');
  const int = (name: 'threads' | 'maxContext' | 'cacheBlocks' | 'deviceIndex', min: number, max = 2 ** 31 - 1) => {
    const v = opts[name];
    if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max))
      throw new ArgumentError('E_ARGUMENT', `loadModel: ${name} must be an integer in [${min}, ${max}], got ${showValue(v)}`);
  };
  int('threads', 1, 1024);
  int('maxContext', 1);
  int('cacheBlocks', 1);
  int('deviceIndex', 0);
  checkRankThreads(opts.rankThreads);
  checkExpertPlacement(opts.expertPlacement);
  if (opts.expertParallel !== undefined) checkExpertParallelOptions(opts.expertParallel);
  for (const flag of ['mtp', 'prefixCache', 'overlapMoe', 'populate'] as const)
    if (opts[flag] !== undefined && typeof opts[flag] !== 'boolean')
      throw new ArgumentError('E_ARGUMENT', `loadModel: ${flag} must be true or false, got ${showValue(opts[flag])}`);
  if (opts.quantize !== undefined) checkQuantizeFormat(opts.quantize, 'loadModel: quantize');
  if (opts.hugePages !== undefined && typeof opts.hugePages !== 'boolean')
    throw new ArgumentError('E_ARGUMENT', `loadModel: hugePages must be a boolean, got ${showValue(opts.hugePages)}`);
  if (opts.cacheDtype !== undefined && opts.cacheDtype !== 'f32' && opts.cacheDtype !== 'bf16' && opts.cacheDtype !== 'fp8')
    throw new ArgumentError(
      'E_ARGUMENT',
      `loadModel: cacheDtype must be 'f32', 'bf16' or 'fp8', got ${showValue(opts.cacheDtype)}`,
    );
}

/** The CUDA devices of a `devices` option: distinct, present, in the order given. */
export function resolveDeviceGroup(devices: readonly number[] | 'all'): string[] {
  const cuda = native.cudaStatus();
  if (!cuda.available) throw new DeviceError('E_DEVICE', `devices: CUDA is unavailable: ${cuda.reason}`);
  const present = cuda.deviceCount;
  const list = devices === 'all' ? Array.from({ length: present }, (_, i) => i) : devices;
  if (!Array.isArray(list) || list.length === 0)
    throw new ArgumentError('E_ARGUMENT', "loadModel: devices must be a non-empty array of CUDA device indices or 'all'");
  for (const i of list)
    if (!Number.isInteger(i) || i < 0 || i >= present)
      throw new DeviceError('E_DEVICE', `loadModel: devices: cuda:${i} does not exist (${present} CUDA device(s) present)`);
  if (new Set(list).size !== list.length)
    throw new ArgumentError('E_ARGUMENT', `loadModel: devices [${list.join(', ')}] names a device twice`);
  return list.map(i => `cuda:${i}`);
}

export async function loadCheckpointModel(dir: string, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  checkLoadOptions(opts);
  if (opts.devices !== undefined && opts.backend !== 'cuda')
    throw new ArgumentError('E_ARGUMENT', "loadModel: devices is a CUDA device group: it needs backend: 'cuda'");
  if (opts.devices !== undefined && opts.deviceIndex !== undefined)
    throw new ArgumentError('E_ARGUMENT', 'loadModel: give devices or deviceIndex, not both');
  const group = opts.devices !== undefined ? resolveDeviceGroup(opts.devices) : null;
  const device = group ? group[0]! : resolveDevice(opts.backend, opts.deviceIndex);
  const ranks = opts.ranks ?? group?.length ?? 1;
  if (!Number.isInteger(ranks) || ranks < 1)
    throw new ArgumentError('E_ARGUMENT', `loadModel: ranks must be a whole number >= 1, got ${ranks}`);
  if (group && ranks % group.length !== 0)
    throw new ArgumentError(
      'E_ARGUMENT',
      `loadModel: ranks: ${ranks} is not a multiple of the ${group.length} devices of the group (each device holds as many ranks)`,
    );
  const rankDevices = Array.from({ length: ranks }, (_, r) => (group ? group[r % group.length]! : device));
  const epOnly = (['expertParallel', 'rankThreads', 'expertPlacement'] as const).find(k => opts[k] !== undefined);
  if (ranks === 1 && epOnly)
    throw new ArgumentError('E_ARGUMENT', `loadModel: ${epOnly} needs expert parallelism (ranks > 1), got ranks 1`);
  for (const k of ['rankThreads', 'expertPlacement'] as const)
    if (opts[k] !== undefined && device !== 'cpu')
      throw new ArgumentError('E_ARGUMENT', `loadModel: ${k} is for CPU ranks (backend 'cpu'), got device ${device}`);
  const rankPools =
    device === 'cpu' && ranks > 1
      ? planRankPools(ranks, {
          nodes: numaNodes(),
          allowed: native.allowedCpus(),
          threads: opts.threads,
          rankThreads: opts.rankThreads,
        })
      : undefined;
  if (group && group.length > 1) native.enablePeerAccess(group); // a typed error before any weight is read
  if (opts.threads !== undefined) setThreads(opts.threads);
  const comm = opts.nccl ? await joinHosts(opts, ranks, device) : null;
  let checkpoint: Checkpoint;
  let placer: RankPlacer | null = null;
  try {
    checkpoint = await openCheckpoint(dir, { onProgress: opts.onProgress, signal: opts.signal });
  } catch (e) {
    comm?.abort();
    throw e;
  }
  try {
    const dims = modelDims(checkpoint.config);
    if (ranks > 1) expertsPerRank(ranks, dims.nRouted); // a typed error before any weight is read
    const perHost = comm ? expertsPerRank(comm.worldSize, dims.nRouted) : 0;
    latentCacheRow(dims.kvLora, dims.rope, opts.cacheDtype ?? 'bf16'); // (fp8: sizes it cannot hold) likewise
    const mtp = opts.mtp !== false && checkpoint.hasMtp;
    const totalBytes = uploadBytes(checkpoint, mtp);
    // quantize at load, or a GPTQ / AutoRound checkpoint read into the int4 format: made tensors either way
    const quantizer = opts.quantize
      ? new QuantizingSource(checkpoint, checkQuantizeFormat(opts.quantize, 'loadModel'))
      : checkpoint.quantization === 'int4'
        ? new Int4Source(checkpoint)
        : null;
    // CPU ranks' experts copied onto their nodes (or left in the shards), by pools the ranks then keep
    if (rankPools) {
      const p = resolveExpertPlacement(opts.expertPlacement ?? 'auto', rankPools);
      placer = new RankPlacer(rankPools, p.copy, p.reason);
    }
    const rankPlacer = placer;
    let weights: ModelWeights;
    try {
      weights = loadWeights(quantizer ?? checkpoint, dims, device, {
        placeExperts: rankPlacer?.copy ? (rank, tensors) => rankPlacer.place(rank, tensors) : undefined,
        onProgress: opts.onProgress,
        totalBytes,
        mtp,
        expertDevices: ranks > 1 ? rankDevices : undefined,
        expertRange: comm ? rankExperts(comm.rank, perHost) : undefined,
      });
    } catch (e) {
      for (const t of quantizer?.created ?? []) t.dispose();
      throw e;
    }
    // Data-parallel attention: a replica of the dense weights on every other device of the group
    // (the routed experts stay split, shared by the replicas).
    const replicas = new Map<string, ModelWeights>([[device, weights]]);
    try {
      for (const dev of rankDevices)
        if (!replicas.has(dev))
          replicas.set(
            dev,
            loadWeights(quantizer ?? checkpoint, dims, dev, {
              mtp,
              experts: weights.layers.map(l => l.moe.experts),
            }),
          );
    } catch (e) {
      for (const w of replicas.values()) for (const t of w.owned) t.dispose();
      for (const t of quantizer?.created ?? []) t.dispose();
      throw e;
    }
    // On the CPU the model reads the quantized tensors themselves; a GPU has its own copies.
    const made: MadeWeights | null =
      quantizer && device === 'cpu'
        ? { replaced: quantizer.replaced, bytes: quantizer.created.reduce((a, t) => a + t.nbytes, 0) }
        : null;
    if (quantizer && device === 'cpu') weights.owned.push(...quantizer.created);
    else for (const t of quantizer?.created ?? []) t.dispose();
    if (opts.onProgress && weights.ngram) {
      const tables = [...checkpoint.tensors.values()].filter(t => isNgramTable(t.name));
      const hostBytes = tables.reduce((a, t) => a + t.nbytes, 0);
      let bytes = 0;
      for (const t of tables) {
        bytes += t.nbytes;
        opts.onProgress({ phase: 'host', tensor: t.name, bytes, totalBytes: hostBytes });
      }
    }
    // one device: the routed experts too (CPU ranks' are expertPlacement's); a copy that fails
    // (a truncated shard: E_CHECKPOINT) leaves the weights as they were, which are freed below
    let hugePages = 0;
    try {
      if (device === 'cpu' && opts.hugePages === true)
        hugePages = (await copyToHugePages(weights, { experts: ranks === 1 })).bytes;
    } catch (e) {
      for (const w of replicas.values()) for (const t of w.owned) t.dispose();
      throw e;
    }
    let model: LongcatModel;
    try {
      model = new LongcatModel(dims, weights, {
        device,
        maxContext: opts.maxContext ?? Math.min(dims.maxContext, 8192),
        numBlocks: opts.cacheBlocks,
        cacheDtype: opts.cacheDtype,
        ranks,
        rankPools,
        rankPoolStreams: placer?.copy ? placer.streams : undefined,
        expertPlacement: placer?.report,
        expertParallel: opts.expertParallel,
        overlapMoe: opts.overlapMoe,
        // On the CPU the weights are the mapped shards themselves (a GPU has its own copy).
        verifyWeights: device === 'cpu' ? () => checkpoint.verifyMappings() : undefined,
        rankDevices,
        rankWeights: rankDevices.map(d => replicas.get(d)!),
        crossHost: comm
          ? w =>
              new CrossHostExperts(
                comm,
                device,
                {
                  hidden: dims.hidden,
                  topk: dims.topk,
                  nRouted: dims.nRouted,
                  nExperts: dims.nRouted + dims.nZero,
                  layers: dims.layers,
                },
                l => w.layers[l]!.moe.experts,
                typeof opts.nccl === 'object' ? opts.nccl.timeoutMs : undefined,
              )
          : undefined,
      });
    } catch (e) {
      for (const w of replicas.values()) for (const t of w.owned) t.dispose();
      throw e;
    }
    // the KV caches zeroed and the mapped weights faulted in, both off the JS thread
    try {
      const populate = device === 'cpu' && opts.populate !== false ? populateMappedWeights(weights, memAvailable()) : null;
      const [, populated] = await Promise.all([model.ready(), populate]);
      return { checkpoint, model, made, hugePages, populated };
    } catch (e) {
      model.dispose();
      throw e;
    }
  } catch (e) {
    checkpoint.close();
    comm?.abort();
    throw e;
  } finally {
    placer?.dispose(); // the ranks' streams share its pools
  }
}

/** This host's NCCL communicator for loadModel's `nccl` option (resolves once every host joined). */
async function joinHosts(opts: LoadModelOptions, ranks: number, device: string): Promise<NcclComm> {
  if (ranks !== 1 || opts.devices !== undefined)
    throw new ArgumentError(
      'E_ARGUMENT',
      'loadModel: nccl (expert parallelism across hosts) runs one rank per host for now: not with ranks > 1 or devices',
    );
  const o = opts.nccl === true ? {} : (opts.nccl as Exclude<LoadModelOptions['nccl'], boolean | undefined>);
  if (typeof o !== 'object' || o === null)
    throw new ArgumentError('E_ARGUMENT', `loadModel: nccl must be true or an object, got ${showValue(opts.nccl)}`);
  const t = o.timeoutMs;
  if (t !== undefined && !(typeof t === 'number' && Number.isFinite(t) && t > 0))
    throw new ArgumentError('E_ARGUMENT', `loadModel: nccl.timeoutMs must be a positive number, got ${showValue(t)}`);
  return NcclComm.init({ rank: o.rank, worldSize: o.worldSize, id: o.id, libraryPath: o.libraryPath, device });
}
