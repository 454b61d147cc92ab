// The model's weights as the forward pass uses them, taken from a checkpoint (memory-mapped on
// the CPU, uploaded once for CUDA). Only small tensors are transformed at load: norm weights get
// the MLA scales folded in (SPEC 3.5), the router classifier and bias become f32, and an FP8
// an FP8 kv_b_proj is kept exact for the absorbed attention (codes + block scales, or f32).
import fs from 'node:fs';
import { native } from '../native.js';
import { type Tensor, empty, tensor, toArray } from '../tensor.js';
import { CheckpointError, LongcatError, OutOfMemoryError } from '../errors.js';
import type { ModelDims } from './dims.js';
import type { MoeExpertSet } from '../../types/ops-moe.js';
import { ShardedExperts, expertsPerRank, rankExperts } from '../parallel/placement.js';
import { ngramProjectionName, ngramTableName } from '../config-ngram.js';
import { MTP_PREFIX } from '../config.js';
import { scaleNameOf } from '../checkpoint.js';

/** A linear layer's weight [out, in] and, for fp8 / int8 weights, its scale. */
export interface Linear {
  weight: Tensor;
  scale: Tensor | null;
  /** Act-order GPTQ (lib/int4.ts gptqActOrder): int32 [k], the weight's columns are the inputs
   *  x[perm]; the activations are gathered by it before the product. */
  perm?: Tensor | null;
}

export interface MlaWeights {
  qA: Linear;
  qNorm: Tensor; // q_a_layernorm * mla_scale_q (f32)
  qB: Linear;
  kvLatent: Linear; // kv_a_proj_with_mqa rows 0..kvLora-1: the latent c_kv
  kvRope: Linear; // the remaining rows: the rope key shared by all heads
  kvNorm: Tensor; // kv_a_layernorm * mla_scale_kv (f32)
  /** kv_b_proj as plain floats for the absorbed form (W_UK / W_UV): the stored bf16 / f32 weight; for
   *  an FP8 kv_b with 128-wide heads its e4m3 codes as bf16 (exact) and the block scales in
   *  kvBScales (applied to q_lat / o_lat by scaleGroups); for other FP8 shapes dequantized to f32. */
  kvB: Tensor;
  /** Per head: the 128x128 block scales of its W_UK rows (uk) and W_UV rows (uv), [nh, ceil(kvLora / 128)]. */
  kvBScales: { uk: Tensor; uv: Tensor } | null;
  kvBLinear: Linear; // kv_b_proj as stored, for the expanded (prefill) form
  o: Linear;
}

export interface MlpWeights {
  gate: Linear;
  up: Linear;
  down: Linear;
}

export interface MoeWeights {
  classifier: Tensor; // f32 [nRouted + nZero, hidden]
  bias: Tensor; // f32 [nRouted + nZero]
  /** The routed experts, checked and packed once (a decode step then passes one handle, not 3 x 512 tensors);
   *  a ShardedExperts, one set per rank, under expert parallelism. */
  experts: MoeExpertSet;
  /** Per routed expert the set packs (all ranks'), its tensors as a step reads them (gate, up, down,
   *  their scales): for byte accounting and the benches' read probe; empty on a replica sharing
   *  another's experts. */
  expertTensors: Tensor[][];
  /** The lists `experts` was packed from (moeExperts' arguments), so that a copy can repack it
   *  (copyToHugePages); absent for CPU ranks' shards and for a replica sharing another's experts. */
  expertLists?: ExpertLists;
}

/** One layer's routed experts as lists, in native.moeExperts' order (a list null when absent). */
export type ExpertLists = [
  gate: Tensor[],
  up: Tensor[],
  down: Tensor[],
  gateScale: Tensor[] | null,
  upScale: Tensor[] | null,
  downScale: Tensor[] | null,
  perm: (Tensor | null)[] | null,
];

export interface LayerWeights {
  inputNorm: [Tensor, Tensor];
  postAttnNorm: [Tensor, Tensor];
  attn: [MlaWeights, MlaWeights];
  mlp: [MlpWeights, MlpWeights];
  moe: MoeWeights;
}

/** LongCat-Flash-Lite's N-gram embedding (SPEC-LITE 3.4). */
export interface NgramWeights {
  /** The E hashed tables, as the checkpoint maps them on the host: never uploaded (tens of GiB,
   *  E rows read per token); each step gathers its rows on the host. One dtype (bf16 or f32). */
  tables: Tensor[];
  /** post_projs stacked, [E, hidden, D], on the model's device. */
  proj: Tensor;
}

/** The MTP (NextN) head, SPEC 2.2 / 6.1: one dense decoder layer drafting the token after next. */
export interface MtpWeights {
  /** model.mtp.embed_tokens (SPEC O5: the checkpoint's own copy is used, as vLLM does). */
  embed: Tensor;
  enorm: Tensor;
  hnorm: Tensor;
  /** eh_proj [hidden, 2 * hidden] over concat(enorm(embedding), hnorm(hidden)), split at load into its
   *  column halves: eh(concat(e, h)) = ehEmbed(e) + ehHidden(h), so no concatenation at run time. */
  ehEmbed: Linear;
  ehHidden: Linear;
  inputNorm: Tensor;
  attn: MlaWeights;
  postAttnNorm: Tensor;
  mlp: MlpWeights;
  norm: Tensor;
}

export interface ModelWeights {
  embed: Tensor;
  /** Null for models without an N-gram embedding. */
  ngram: NgramWeights | null;
  layers: LayerWeights[];
  norm: Tensor;
  lmHead: Linear;
  /** Null when the checkpoint has no MTP module or loading it was turned off. */
  mtp: MtpWeights | null;
  /** Everything this object created (not the checkpoint's own tensors), to dispose with the model. */
  owned: { dispose(): void }[];
  /** Checkpoint bytes copied to each device (as they are, or converted as the scaled norms);
   *  empty when every weight is read in place from host memory. The N-gram tables are never copied. */
  uploaded: Record<string, number>;
}

/** What the loader needs from a checkpoint: tensors by their original names. */
export interface TensorSource {
  get(name: string): Tensor;
  has(name: string): boolean;
  expertWeights(
    layer: number,
    expert: number,
  ): {
    gate: Tensor;
    up: Tensor;
    down: Tensor;
    gateScale?: Tensor | null;
    upScale?: Tensor | null;
    downScale?: Tensor | null;
    /** Act-order experts: gate and up read the token's columns in this order (int32 [hidden]). */
    perm?: Tensor | null;
  };
}

/** Progress of the weight upload to a GPU (one event per tensor copied). */
export interface UploadProgress {
  phase: 'upload';
  device: string;
  tensor: string;
  /** Bytes copied so far / the checkpoint's bytes (an upper bound). */
  bytes: number;
  totalBytes: number;
}

export interface LoadWeightsOptions {
  onProgress?: (p: UploadProgress) => void;
  /** Bytes the upload will copy at most (for progress and error messages). */
  totalBytes?: number;
  /** Load the MTP head when the checkpoint has one (default true). */
  mtp?: boolean;
  /** Expert parallelism: the device of each rank. Each layer's routed experts are split into equal
   *  contiguous blocks, rank r's placed on expertDevices[r] only; the rest stays on `device`. */
  expertDevices?: readonly string[];
  /** A replica of the dense weights on `device` (data-parallel attention, a rank on another
   *  device): each layer's routed experts are these, already loaded (not owned by the replica). */
  experts?: readonly MoeExpertSet[];
  /** Expert parallelism across hosts (lib/parallel/cross-host.ts): only the routed experts
   *  first .. first + count - 1 of each layer, on `device` (this host's block; its local ids 0 .. count - 1). */
  expertRange?: { first: number; count: number };
  /** CPU ranks (with expertDevices): rank r's experts of a layer, all their tensors at once
   *  (weights, scales, permutations), handed over once loaded and replaced by what it returns, in
   *  the same order: copies placed on the rank's NUMA node (lib/parallel/numa.ts RankPlacer). The
   *  copies are owned by the weights. */
  placeExperts?: (rank: number, tensors: Tensor[], names: string[]) => Tensor[];
}

const gb = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

export function loadWeights(src: TensorSource, dims: ModelDims, device: string, opts: LoadWeightsOptions = {}): ModelWeights {
  const owned: { dispose(): void }[] = [];
  try {
    return buildWeights(src, dims, device, opts, owned);
  } catch (e) {
    for (const t of owned) t.dispose(); // what was uploaded before the failure
    throw e;
  }
}

function buildWeights(
  src: TensorSource,
  dims: ModelDims,
  device: string,
  opts: LoadWeightsOptions,
  owned: { dispose(): void }[],
): ModelWeights {
  const own = <T extends { dispose(): void }>(t: T) => {
    owned.push(t);
    return t;
  };
  const totalBytes = opts.totalBytes ?? 0;
  let uploaded = 0;
  const uploadedTo: Record<string, number> = {};
  const count = (bytes: number, to: string) => {
    uploaded += bytes;
    uploadedTo[to] = (uploadedTo[to] ?? 0) + bytes;
  };
  // Checkpoint tensors are mmapped on the CPU; on another device each is copied once.
  const place = (t: Tensor, name: string, to = device) => {
    if (t.device === to) return t;
    let copy: Tensor;
    try {
      copy = t.to(to);
    } catch (e) {
      if (!(e instanceof LongcatError) || e.code !== 'E_OOM') throw e;
      const dev = native.devices().find(d => d.id === to && 'totalBytes' in d) as { totalBytes: number } | undefined;
      throw new OutOfMemoryError(
        'E_OOM',
        `loading the weights onto ${to}: out of memory at '${name}' ([${t.shape.join(', ')}] ${t.dtype}, ${gb(t.nbytes)}) ` +
          `after ${gb(uploaded)}${totalBytes ? ` of about ${gb(totalBytes)}` : ''} were uploaded` +
          `${dev ? ` (the device has ${gb(dev.totalBytes)})` : ''}. The weights do not fit: use a device with more memory, ` +
          `an FP8 checkpoint, or backend 'cpu'.`,
        { cause: e },
      );
    }
    count(t.nbytes, to);
    opts.onProgress?.({ phase: 'upload', device: to, tensor: name, bytes: uploaded, totalBytes: Math.max(totalBytes, uploaded) });
    return own(copy);
  };
  const get = (name: string) => place(src.get(name), name);
  const linear = (name: string): Linear => {
    const scale = scaleNameOf(name, n => src.has(n));
    const perm = src.has(`${name}.weight_perm`) ? get(`${name}.weight_perm`) : null;
    return { weight: get(`${name}.weight`), scale: scale ? get(scale) : null, ...(perm ? { perm } : {}) };
  };
  // int8 weights carry one scale per row ([n] f32), FP8 weights one per 128x128 block.
  const rowScaled = (l: Linear) => l.weight.dtype === 'int8';
  const f32 = (t: Tensor) => (t.dtype === 'f32' ? t : own(converted(t, 'f32')));
  const scaledNorm = (name: string, s: number) => {
    const source = src.get(name);
    if (source.device !== device) count(source.nbytes, device);
    const w = toArray(source);
    return own(
      tensor(
        Float32Array.from(w, v => v * s),
        [w.length],
        { device },
      ),
    );
  };
  const dequantized = (l: Linear, dtype: 'f32' | 'bf16'): Tensor => {
    if (!l.scale) return l.weight;
    const w = own(empty(l.weight.shape, { dtype, device }));
    native.dequantizeFp8Blocks(null, w, l.weight, l.scale);
    return w;
  };
  // Row views of one weight; FP8 block scales split with it when the cut is on a block edge, int8 row scales always.
  const splitRows = (l: Linear, at: number): [Linear, Linear] => {
    const n = l.weight.shape[0]!;
    if (l.scale && !rowScaled(l) && at % 128 !== 0) l = { weight: dequantized(l, 'f32'), scale: null, perm: l.perm }; // only reduced-size models
    const rows = (t: Tensor, a: number, len: number) => own(t.narrow(a, len));
    const sb = rowScaled(l) ? at : at / 128,
      sn = l.scale ? l.scale.shape[0]! : 0;
    return [
      { weight: rows(l.weight, 0, at), scale: l.scale ? rows(l.scale, 0, sb) : null, perm: l.perm }, // both halves read the same x
      { weight: rows(l.weight, at, n - at), scale: l.scale ? rows(l.scale, sb, sn - sb) : null, perm: l.perm },
    ];
  };

  // eh_proj's column halves [n, k/2] (with their FP8 scale columns when k/2 is on a block edge; an
  // int8 weight's row scales serve both halves): row r of a [n, k] matrix is rows 2r and 2r + 1 of its [2n, k/2] view.
  const ehHalves = (l: Linear): Pick<MtpWeights, 'ehEmbed' | 'ehHidden'> => {
    const half = l.weight.shape[1]! / 2;
    if (l.scale && !rowScaled(l) && half % 128 !== 0) l = { weight: dequantized(l, 'f32'), scale: null }; // only reduced-size models
    const columns = (t: Tensor, odd: number) => {
      const [n, k] = t.shape as [number, number];
      const pick = tensor(
        Array.from({ length: n }, (_, r) => 2 * r + odd),
        [n],
        { dtype: 'int32', device },
      );
      const pairs = t.view([2 * n, k / 2]);
      const out = own(empty([n, k / 2], { dtype: t.dtype, device }));
      native.gatherRows(null, out, pairs, pick);
      pick.dispose();
      pairs.dispose();
      return out;
    };
    const part = (odd: number): Linear => ({
      weight: columns(l.weight, odd),
      scale: l.scale && rowScaled(l) ? l.scale : l.scale ? columns(l.scale, odd) : null,
    });
    return { ehEmbed: part(0), ehHidden: part(1) };
  };

  // The absorbed form's kv_b (see MlaWeights.kvB). With 128-row heads (DeepSeek / LongCat: nope = v = 128)
  // every head's W_UK and W_UV is one row of 128x128 scale blocks, so the codes (exact in bf16) can be
  // multiplied as they are and each head's column-block scales applied to q_lat / o_lat.
  const absorbedKvB = (p: string, kvBLinear: Linear): Pick<MlaWeights, 'kvB' | 'kvBScales'> => {
    if (!kvBLinear.scale) return { kvB: kvBLinear.weight, kvBScales: null };
    if (dims.nope !== 128 || dims.v !== 128) return { kvB: dequantized(kvBLinear, 'f32'), kvBScales: null };
    const codes = own(empty(kvBLinear.weight.shape, { dtype: 'bf16', device }));
    native.convert(null, codes, kvBLinear.weight);
    const s = toArray(src.get(`${p}.kv_b_proj.weight_scale_inv`)),
      G = Math.ceil(dims.kvLora / 128);
    const rowsOf = (first: (h: number) => number) => {
      const out = new Float32Array(dims.heads * G);
      for (let h = 0; h < dims.heads; h++) out.set(s.subarray((first(h) / 128) * G, (first(h) / 128 + 1) * G), h * G);
      return own(tensor(out, [dims.heads, G], { device }));
    };
    const stride = dims.nope + dims.v;
    return { kvB: codes, kvBScales: { uk: rowsOf(h => h * stride), uv: rowsOf(h => h * stride + dims.nope) } };
  };

  const mla = (p: string): MlaWeights => {
    const kvBLinear = linear(`${p}.kv_b_proj`);
    const [kvLatent, kvRope] = splitRows(linear(`${p}.kv_a_proj_with_mqa`), dims.kvLora);
    return {
      qA: linear(`${p}.q_a_proj`),
      qNorm: scaledNorm(`${p}.q_a_layernorm.weight`, dims.scaleQ),
      qB: linear(`${p}.q_b_proj`),
      kvLatent,
      kvRope,
      kvNorm: scaledNorm(`${p}.kv_a_layernorm.weight`, dims.scaleKV),
      // Exact in every case, so that decode (absorbed) and prefill (expanded, reading the fp8 weight)
      // see the same weights: dequantizing to bf16 would round them by 2^-9 and make the two forms
      // disagree by ~3e-3 of the logits.
      ...absorbedKvB(p, kvBLinear),
      kvBLinear,
      o: linear(`${p}.o_proj`),
    };
  };
  const mlp = (p: string): MlpWeights => ({
    gate: linear(`${p}.gate_proj`),
    up: linear(`${p}.up_proj`),
    down: linear(`${p}.down_proj`),
  });

  const mtpWeights = (): MtpWeights => {
    const p = MTP_PREFIX;
    return {
      embed: get('model.mtp.embed_tokens.weight'),
      enorm: get(`${p}.enorm.m.weight`),
      hnorm: get(`${p}.hnorm.m.weight`),
      ...ehHalves(linear(`${p}.eh_proj`)),
      inputNorm: get(`${p}.input_layernorm.weight`),
      attn: mla(`${p}.self_attn`),
      postAttnNorm: get(`${p}.post_attention_layernorm.weight`),
      mlp: mlp(`${p}.transformer_layer.mlp`),
      norm: get('model.mtp.norm.weight'),
    };
  };

  const layers: LayerWeights[] = [];
  for (let l = 0; l < dims.layers; l++) {
    const p = `model.layers.${l}`;
    const expertName = (e: number, m: string) => `${p}.mlp.experts.${e}.${m}`;
    // The routed experts first..first+count-1, read from the checkpoint and placed on `to` only
    // (rank's: then through opts.placeExperts, when given).
    const expertTensors: Tensor[][] = [];
    let expertLists: ExpertLists | undefined;
    const expertSet = (first: number, count: number, to: string, rank?: number) => {
      const experts = Array.from({ length: count }, (_, i) => src.expertWeights(l, first + i));
      const scales = (k: 'gateScale' | 'upScale' | 'downScale') =>
        experts[0]?.[k]
          ? experts.map((x, i) => {
              const s = x[k];
              if (!s)
                throw new CheckpointError(
                  'E_CHECKPOINT',
                  `expert ${first + i} of layer ${l} has no ${k} while expert ${first} has one`,
                );
              return place(s, expertName(first + i, `${k.replace('Scale', '_proj')}.weight_scale_inv`), to);
            })
          : null;
      const list = (m: 'gate' | 'up' | 'down') =>
        experts.map((x, i) => place(x[m], expertName(first + i, `${m}_proj.weight`), to));
      const perms = experts.some(x => x.perm)
        ? experts.map((x, i) => (x.perm ? place(x.perm, expertName(first + i, 'gate_proj.weight_perm'), to) : null))
        : null;
      const gate = list('gate'),
        up = list('up'),
        down = list('down'),
        gs = scales('gateScale'),
        us = scales('upScale'),
        ds = scales('downScale');
      if (opts.placeExperts && rank !== undefined) {
        // every tensor of the rank's block in one placement, then put back where it came from
        const groups: [(Tensor | null)[] | null, string][] = [
          [gate, 'gate_proj.weight'],
          [up, 'up_proj.weight'],
          [down, 'down_proj.weight'],
          [gs, 'gate_proj.weight_scale_inv'],
          [us, 'up_proj.weight_scale_inv'],
          [ds, 'down_proj.weight_scale_inv'],
          [perms, 'gate_proj.weight_perm'],
        ];
        const flat: Tensor[] = [],
          names: string[] = [];
        for (const [g, m] of groups)
          for (const [i, t] of (g ?? []).entries())
            if (t) {
              flat.push(t);
              names.push(expertName(first + i, m));
            }
        const placed = opts.placeExperts(rank, flat, names).map(own);
        let k = 0;
        for (const [g] of groups) for (const [i, t] of (g ?? []).entries()) if (t) g![i] = placed[k++]!;
      }
      for (let i = 0; i < count; i++) expertTensors.push([gate, up, down, gs, us, ds].flatMap(g => (g ? [g[i]!] : [])));
      if (rank === undefined) expertLists = [gate, up, down, gs, us, ds, perms];
      return own(native.moeExperts(gate, up, down, gs, us, ds, perms));
    };
    const ranks = opts.expertDevices;
    let experts: MoeExpertSet;
    if (opts.experts) experts = opts.experts[l]!;
    else if (opts.expertRange) experts = expertSet(opts.expertRange.first, opts.expertRange.count, device);
    else if (!ranks) experts = expertSet(0, dims.nRouted, device);
    else {
      const per = expertsPerRank(ranks.length, dims.nRouted);
      // Owned per shard (already in `owned`), so the wrapper is not owned again.
      experts = new ShardedExperts(
        ranks.map((to, r) => expertSet(rankExperts(r, per).first, per, to, r)),
        per,
      );
    }
    layers.push({
      inputNorm: [get(`${p}.input_layernorm.0.weight`), get(`${p}.input_layernorm.1.weight`)],
      postAttnNorm: [get(`${p}.post_attention_layernorm.0.weight`), get(`${p}.post_attention_layernorm.1.weight`)],
      attn: [mla(`${p}.self_attn.0`), mla(`${p}.self_attn.1`)],
      mlp: [mlp(`${p}.mlps.0`), mlp(`${p}.mlps.1`)],
      moe: {
        classifier: f32(get(`${p}.mlp.router.classifier.weight`)),
        bias: f32(get(`${p}.mlp.router.e_score_correction_bias`)),
        experts,
        expertTensors,
        ...(expertLists ? { expertLists } : {}),
      },
    });
  }
  return {
    embed: get('model.embed_tokens.weight'),
    ngram: dims.ngram ? ngramWeights(src, dims, place, own) : null,
    layers,
    norm: get('model.norm.weight'),
    lmHead: linear('lm_head'),
    mtp: opts.mtp !== false && src.has(`${MTP_PREFIX}.eh_proj.weight`) ? mtpWeights() : null,
    owned,
    uploaded: uploadedTo,
  };
}

function ngramWeights(
  src: TensorSource,
  dims: ModelDims,
  place: (t: Tensor, name: string) => Tensor,
  own: <T extends { dispose(): void }>(t: T) => T,
): NgramWeights {
  const nd = dims.ngram!;
  const tables = Array.from({ length: nd.tables }, (_, i) => src.get(ngramTableName(i)));
  const dtype = tables[0]!.dtype;
  tables.forEach((t, i) => {
    if (t.device !== 'cpu' || t.dtype !== dtype)
      throw new CheckpointError(
        'E_CHECKPOINT',
        `N-gram table '${ngramTableName(i)}' is ${t.dtype} on ${t.device}; every table must be ${dtype} in host memory, like table 0`,
      );
  });
  // The projections stacked on the host ([E * H, D], bf16 unless one of them is f32), then placed.
  const projs = Array.from({ length: nd.tables }, (_, i) => src.get(ngramProjectionName(i)));
  const pdtype = projs.every(p => p.dtype === 'bf16') ? 'bf16' : 'f32';
  const H = dims.hidden;
  const stacked = empty([nd.tables * H, nd.dim], { dtype: pdtype, device: 'cpu' });
  try {
    projs.forEach((p, i) => {
      const part = stacked.narrow(i * H, H);
      native.convert(null, part, p);
      part.dispose();
    });
    const shaped = stacked.view([nd.tables, H, nd.dim]);
    const proj = place(shaped, 'model.ngram_embeddings.post_projs');
    if (proj === shaped) own(shaped);
    else shaped.dispose();
    return { tables, proj };
  } finally {
    stacked.dispose();
  }
}

function converted(t: Tensor, dtype: 'f32'): Tensor {
  const r = empty(t.shape, { dtype, device: t.device });
  native.convert(null, r, t);
  return r;
}

/** Where each dense weight a decode step streams sits in `w` (holder, key, tensor): see copyToHugePages. */
function denseSlots(w: ModelWeights): [Record<string, unknown>, string, Tensor][] {
  const slots: [Record<string, unknown>, string, Tensor][] = [];
  const add = (holder: object, key: string) => {
    const t = (holder as Record<string, unknown>)[key];
    if (t) slots.push([holder as Record<string, unknown>, key, t as Tensor]);
  };
  const linear = (l: Linear) => {
    for (const k of ['weight', 'scale', 'perm'] as const) add(l, k);
  };
  const mla = (a: MlaWeights) => {
    for (const k of ['qA', 'qB', 'kvLatent', 'kvRope', 'kvBLinear', 'o'] as const) linear(a[k]);
    for (const k of ['qNorm', 'kvNorm', 'kvB'] as const) add(a, k);
    if (a.kvBScales) for (const k of ['uk', 'uv'] as const) add(a.kvBScales, k);
  };
  const mlp = (m: MlpWeights) => {
    for (const l of [m.gate, m.up, m.down]) linear(l);
  };
  for (const L of w.layers) {
    for (const i of [0, 1] as const) {
      add(L.inputNorm, String(i));
      add(L.postAttnNorm, String(i));
      mla(L.attn[i]);
      mlp(L.mlp[i]);
    }
    add(L.moe, 'classifier');
    add(L.moe, 'bias');
  }
  add(w, 'norm');
  linear(w.lmHead);
  if (w.mtp) {
    for (const k of ['enorm', 'hnorm', 'inputNorm', 'postAttnNorm', 'norm'] as const) add(w.mtp, k);
    linear(w.mtp.ehEmbed);
    linear(w.mtp.ehHidden);
    mla(w.mtp.attn);
    mlp(w.mtp.mlp);
  }
  return slots;
}

/** What copyToHugePages copied. */
export interface HugePagesCopy {
  /** Bytes of weights copied (dense and, when asked, the routed experts). */
  bytes: number;
  /** Bytes of the copy the kernel backs with huge pages right after it (AnonHugePages; -1: unreadable). */
  hugeBytes: number;
}

/**
 * Copies the weights a CPU decode step streams into one anonymous mapping advised for transparent
 * huge pages (native placeTensorsAsync: the copy on a libuv worker over the global pool, off the JS
 * thread), and points `w` at the copies: the dense weights (every attention and dense-MLP linear,
 * the norms, the router, the final norm, lm_head and the MTP layer; not the embeddings, of which a
 * step reads one row, nor the N-gram tables) and, with `experts`, every layer's routed experts
 * whose set was packed from lists (one device: not CPU ranks' shards, which expertPlacement
 * places), repacked over the copies. The checkpoint's mapped pages are page-cache pages mapped
 * 4 KiB at a time, so a GEMV over them walks the page tables every 4 KiB (MADV_HUGEPAGE does nothing
 * for them); the copy sits in 2 MiB pages. Memory: the copies are the process's own (anonymous,
 * resident, not evictable without swap); the shards' pages they came from are unmapped
 * (MADV_DONTNEED: never written, they are refilled from the file if anything reads them again), so
 * the process does not hold the bytes twice; the page cache keeps them, clean and reclaimable, for
 * the next load. Weights made at load (quantized,
 * converted norms) are freed once copied. A shard truncated since it was mapped rejects with
 * E_CHECKPOINT (the copy faults each source page in first) and leaves `w` as it was.
 */
export async function copyToHugePages(w: ModelWeights, opts: { experts: boolean }): Promise<HugePagesCopy> {
  const slots = denseSlots(w);
  const layers = opts.experts ? w.layers.filter(L => L.moe.expertLists) : [];
  const expertSources = layers.flatMap(L => L.moe.expertLists!.flatMap(list => (list ?? []).filter(t => t !== null)));
  const cpu = [...new Set([...slots.map(s => s[2]), ...expertSources])].filter(t => t.device === 'cpu');
  if (!cpu.length) return { bytes: 0, hugeBytes: 0 };
  const bytes = cpu.reduce((a, t) => a + t.nbytes, 0);
  await native.synchronizeAsync('cpu'); // whatever made the sources (quantize at load) has finished
  const r = await native.placeTensorsAsync(cpu, true, true);
  w.owned.push(...r.tensors); // the copies are this object's from here
  const copyOf = new Map(cpu.map((t, i) => [t, r.tensors[i]!]));
  const copied = <T extends Tensor | null>(t: T): T => (t ? ((copyOf.get(t) ?? t) as T) : t);
  for (const [holder, key, t] of slots) holder[key] = copied(t);
  // the experts repacked over the copies; the old sets (and what made tensors they hold) let go
  const oldSets = new Set<unknown>();
  for (const L of layers) {
    const lists = L.moe.expertLists!.map(list => (list ? list.map(copied) : null)) as ExpertLists;
    const set = native.moeExperts(...lists);
    oldSets.add(L.moe.experts);
    w.owned.push(set);
    L.moe.experts = set;
    L.moe.expertLists = lists;
    L.moe.expertTensors = L.moe.expertTensors.map(ts => ts.map(copied));
  }
  // what this object made and now holds twice: freed
  const owned = new Set<unknown>(w.owned);
  const made = cpu.filter(t => owned.has(t));
  const drop = (o: unknown) => copyOf.has(o as Tensor) || oldSets.has(o);
  const dropped = w.owned.filter(drop);
  w.owned.splice(0, w.owned.length, ...w.owned.filter(o => !drop(o)));
  for (const t of made) t.dispose();
  for (const o of dropped) if (oldSets.has(o)) (o as MoeExpertSet).dispose();
  return { bytes, hugeBytes: r.hugeBytes };
}

/** What loadModel's `populate` faulted in: the bytes, or 0 and why not. */
export interface WeightsPopulated {
  /** Bytes of mapped pages faulted in at load (whole pages; 0 when skipped). */
  bytes: number;
  /** Why nothing was faulted in (one line), or null. */
  skipped: string | null;
}

/** The bytes this system can still give (/proc/meminfo MemAvailable), or null where it says nothing. */
export function memAvailable(meminfo = '/proc/meminfo'): number | null {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(fs.readFileSync(meminfo, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * Faults in, off the JS thread, the mapped pages a CPU decode step reads (the dense weights of
 * denseSlots and every layer's routed experts; not the embeddings or N-gram tables, of which a step
 * reads a few rows), as llama.cpp's mmap prefetch does, so that the first steps take no page faults
 * on experts no step has read yet (native populateMapped: MADV_POPULATE_READ, else MADV_WILLNEED and
 * a touch per page). Weights that are copies (hugePages, expertPlacement 'copy', quantized at load)
 * are not mappings and are skipped. Skipped as a whole, with the reason, when the mapped bytes
 * exceed `available` (MemAvailable): faulting them in would only evict each other.
 */
export async function populateMappedWeights(w: ModelWeights, available: number | null): Promise<WeightsPopulated> {
  const experts = w.layers.flatMap(L => (L.moe.experts instanceof ShardedExperts ? L.moe.experts.shards : [L.moe.experts]));
  const items = [...denseSlots(w).map(s => s[2]), ...experts];
  if (available === null) return { bytes: 0, skipped: 'MemAvailable unknown (no /proc/meminfo)' };
  const r = await native.populateMapped(items, available);
  if (r.populated || r.bytes === 0) return { bytes: r.bytes, skipped: null };
  return {
    bytes: 0,
    skipped: `the mapped weights (${(r.bytes / 2 ** 30).toFixed(2)} GiB) exceed MemAvailable (${(available / 2 ** 30).toFixed(2)} GiB)`,
  };
}
