// loadModel: a checkpoint directory in, a ready Model out.
import { openCheckpoint, type Checkpoint, type LoadProgress } from '../checkpoint.js';
import { native } from '../native.js';
import { ArgumentError, DeviceError } from '../errors.js';
import { setThreads } from '../device.js';
import { modelDims } from './dims.js';
import { loadWeights, type UploadProgress } from './weights.js';
import { LongcatModel } from './model.js';
import { expertsPerRank } from '../parallel/placement.js';

export type Backend = 'auto' | 'cpu' | 'cuda';

export interface LoadModelOptions {
  /** 'auto' (default, or $LONGCAT_BACKEND): CUDA when available, else CPU. */
  backend?: Backend;
  /** CUDA device index (default 0). */
  deviceIndex?: number;
  /** CPU kernel threads (default: the cores this process may use). */
  threads?: number;
  signal?: AbortSignal;
  /** Mapping the shards (phase 'map'), then, on a GPU, copying the weights (phase 'upload'). */
  onProgress?: (p: LoadProgress | UploadProgress) => void;
  /** Longest sequence a session may reach (default: the config's max_position_embeddings, capped at 8192). */
  maxContext?: number;
  /** KV-cache blocks shared by all sessions (default: 4 full-length sequences). */
  cacheBlocks?: number;
  cacheDtype?: 'f32' | 'bf16';
  /** Expert parallelism over N ranks in this process (default 1): CPU ranks, or with backend
   *  'cuda' N virtual ranks on the one device (ranks on several GPUs are not implemented yet).
   *  Each layer's routed experts split into N equal contiguous blocks, one per rank; attention,
   *  dense FFNs, router, embedding and lm_head replicated (run once). N must divide n_routed_experts. */
  ranks?: number;
}

export function resolveDevice(backend: Backend = (process.env.LONGCAT_BACKEND as Backend) || 'auto', index = 0): string {
  const cuda = native.cudaStatus();
  if (backend === 'cpu') return 'cpu';
  if (backend === 'cuda') {
    if (!cuda.available) throw new DeviceError('E_DEVICE', `backend 'cuda' requested but CUDA is unavailable: ${cuda.reason}`);
    return `cuda:${index}`;
  }
  if (backend !== 'auto') throw new DeviceError('E_DEVICE', `unknown backend '${backend}' (expected 'auto', 'cpu' or 'cuda')`);
  return cuda.available ? `cuda:${index}` : 'cpu';
}

export interface LoadedModel {
  checkpoint: Checkpoint;
  model: LongcatModel;
}

export async function loadCheckpointModel(dir: string, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  const device = resolveDevice(opts.backend, opts.deviceIndex);
  const ranks = opts.ranks ?? 1;
  if (!Number.isInteger(ranks) || ranks < 1)
    throw new ArgumentError('E_ARGUMENT', `loadModel: ranks must be a whole number >= 1, got ${ranks}`);
  if (opts.threads) setThreads(opts.threads);
  const checkpoint = await openCheckpoint(dir, { onProgress: opts.onProgress, signal: opts.signal });
  try {
    const dims = modelDims(checkpoint.config);
    if (ranks > 1) expertsPerRank(ranks, dims.nRouted); // a typed error before any weight is read
    // What the upload copies: neither the MTP module nor the N-gram tables (read from host memory).
    const totalBytes = [...checkpoint.tensors.values()]
      .filter(t => !t.name.startsWith('model.mtp.') && !t.name.startsWith('model.ngram_embeddings.embedders.'))
      .reduce((a, t) => a + t.nbytes, 0);
    const weights = loadWeights(checkpoint, dims, device, {
      onProgress: opts.onProgress,
      totalBytes,
      expertDevices: ranks > 1 ? Array(ranks).fill(device) : undefined,
    });
    try {
      const model = new LongcatModel(dims, weights, {
        device,
        maxContext: opts.maxContext ?? Math.min(dims.maxContext, 8192),
        numBlocks: opts.cacheBlocks,
        cacheDtype: opts.cacheDtype,
        ranks,
      });
      return { checkpoint, model };
    } catch (e) {
      for (const t of weights.owned) t.dispose();
      throw e;
    }
  } catch (e) {
    checkpoint.close();
    throw e;
  }
}
