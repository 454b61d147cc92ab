// The LongCat-Flash architecture (SPEC 3, 4, 5.2) as native ops over the model's dims and weights:
// embedding, the ScMoE decoder layer (two MLA sub-layers, two dense MLPs, the shortcut MoE on its
// own stream), the final norm and the LM head. Where it runs -- streams, the batch's positions and
// cache slots, the latent caches, how the routed experts are computed -- comes in through the Step
// the runner (model.ts) builds. The forward pass is a generator that yields once per MoE layer,
// right after handing its tokens to Step.experts: a rendezvous where, under data-parallel
// attention, the runner queues one all-to-all over every rank's tokens (lib/parallel) before any
// rank goes on; on one device nothing happens there (runToEnd). Prefill runs the expanded MLA over
// each sequence's cached latents; decode (and a prefill chunk behind a cached prefix) runs the
// absorbed MLA against the paged latent cache (one query row per new token, each with its own
// length: a verify step's rows see the drafts before them). mtpForward is the MTP draft head of
// SPEC 6, one dense layer over the main model's hidden states.
import { native } from '../native.js';
import { type Tensor, empty } from '../tensor.js';
import type { Stream } from '../device.js';
import { Arena, type Step } from './step.js';
import type { Linear, LayerWeights, MlaWeights, MlpWeights, MoeWeights, ModelWeights } from './weights.js';

/** What a pass yields at each MoE layer's rendezvous, and finally returns. */
export type Pass<R> = Generator<void, R, void>;

/** Runs a pass with nothing to meet at its rendezvous (one device, or ranks that share one step). */
export function runToEnd<R>(pass: Pass<R>): R {
  for (;;) {
    const r = pass.next();
    if (r.done) return r.value;
  }
}

/** The whole model: logits f32 [rows, vocab] (rows = batch.lastRow's, else every token's) and the
 *  post-norm hidden states of every token, [T, hidden] (what the MTP head reads). */
export function* forward(c: Step, w: ModelWeights): Pass<{ logits: Tensor; hidden: Tensor }> {
  const d = c.dims,
    s = c.main,
    b = c.batch,
    a = new Arena(c.device);
  const h = a.f32([b.T, d.hidden]);
  native.embedding(s, h, w.embed, b.ids);
  // LongCat-Flash-Lite: the mean of the token's embedding and its E projected N-gram rows.
  if (w.ngram) native.ngramEmbed(s, h, h, b.ngramRows!, w.ngram.proj);
  for (let l = 0; l < d.layers; l++) yield* decoderLayer(c, l, w.layers[l]!, h);
  const hidden = empty([b.T, d.hidden], { device: c.device });
  native.rmsnorm(s, hidden, h, w.norm, d.eps);
  let hl = hidden;
  if (b.lastRow) {
    hl = a.f32([b.lastRow.shape[0]!, d.hidden]);
    native.gatherRows(s, hl, hidden, b.lastRow);
  }
  const rows = hl.shape[0]!;
  const logits = empty([rows, d.vocab], { device: c.device });
  linear(s, a, logits, hl, w.lmHead);
  a.dispose();
  return { logits, hidden };
}

/**
 * The MTP head (SPEC 6.1) on the batch's pairs: row t holds the token after position
 * batch.positions[t] (batch.ids) and hPrev[t], the main model's post-norm hidden state at that
 * position; its attention runs at that position over the MTP latent cache (the last of c.caches).
 * Returns the draft logits f32 [rows, vocab] through the shared lm_head (rows = batch.lastRow's, else
 * every pair's).
 */
export function mtpForward(c: Step, w: ModelWeights, hPrev: Tensor): Tensor {
  const d = c.dims,
    s = c.main,
    m = w.mtp!,
    T = c.batch.T,
    H = d.hidden,
    a = new Arena(c.device);
  // eh_proj(concat(enorm(embedding), hnorm(hPrev))), as the sum of its two column halves.
  const e = a.f32([T, H]);
  native.embedding(s, e, m.embed, c.batch.ids);
  native.rmsnorm(s, e, e, m.enorm, d.eps);
  const hn = a.f32([T, H]);
  native.rmsnorm(s, hn, hPrev, m.hnorm, d.eps);
  const z = a.f32([T, H]),
    zh = a.f32([T, H]);
  linear(s, a, z, e, m.ehEmbed);
  linear(s, a, zh, hn, m.ehHidden);
  const n0 = a.f32([T, H]);
  native.rmsnorm(s, n0, z, m.inputNorm, d.eps, zh, z); // z += zh; n0 = norm(z)
  // Every row's latent goes to the MTP cache, but past the latents every op is row by row: only the
  // rows whose logits are wanted go on. A speculative step's draft: B rows, not 2 B -- in decode from
  // the attention's queries on (they read the cache, not each other), in prefill after the attention.
  const lastRow = c.batch.lastRow;
  const queries = lastRow && c.batch.mode === 'decode' ? queryRows(c, a, lastRow) : undefined;
  const attn = mla(c, a, m.attn, n0, c.caches[2 * d.layers]!, queries);
  let zl = z,
    al = attn;
  if (lastRow) {
    const n = lastRow.shape[0]!;
    zl = a.f32([n, H]);
    native.gatherRows(s, zl, z, lastRow);
    if (!queries) {
      al = a.f32([n, H]);
      native.gatherRows(s, al, attn, lastRow);
    }
  }
  const rows = zl.shape[0]!;
  const n1 = a.f32([rows, H]);
  native.rmsnorm(s, n1, zl, m.postAttnNorm, d.eps, al, zl); // zl += al; n1 = norm(zl)
  native.add(s, zl, zl, mlp(c, a, m.mlp, n1));
  const hf = a.f32([rows, H]);
  native.rmsnorm(s, hf, zl, m.norm, d.eps);
  const logits = empty([rows, d.vocab], { device: c.device });
  linear(s, a, logits, hf, w.lmHead);
  a.dispose();
  return logits;
}

/** SPEC 3.3, in place on the residual stream h [T, hidden]. */
export function* decoderLayer(c: Step, l: number, w: LayerWeights, h: Tensor): Pass<void> {
  const d = c.dims,
    s = c.main,
    a = new Arena(c.device),
    T = c.batch.T;
  const [uReady, moeReady] = c.moeEvents[l]!;
  // sub-block A: attention 0
  const n0 = a.f32([T, d.hidden]);
  native.rmsnorm(s, n0, h, w.inputNorm[0], d.eps);
  const attn0 = mla(c, a, w.attn[0], n0, c.caches[2 * l]!);
  // sub-block B: u = rmsnorm(h + attn0) feeds both dense MLP 0 and the shortcut MoE (on its own stream)
  const u = a.f32([T, d.hidden]);
  native.rmsnorm(s, u, h, w.postAttnNorm[0], d.eps, attn0, h);
  uReady.record(s);
  c.moeStream.waitEvent(uReady);
  const shortcut = yield* moe(c, a, w.moe, u);
  moeReady.record(c.moeStream);
  const mlp0 = mlp(c, a, w.mlp[0], u);
  // sub-block C: attention 1 on rmsnorm(h + mlp0)
  const n1 = a.f32([T, d.hidden]);
  native.rmsnorm(s, n1, h, w.inputNorm[1], d.eps, mlp0, h);
  const attn1 = mla(c, a, w.attn[1], n1, c.caches[2 * l + 1]!);
  // sub-block D: dense MLP 1, then the MoE joins: h = (h + mlp1) + moe
  const v = a.f32([T, d.hidden]);
  native.rmsnorm(s, v, h, w.postAttnNorm[1], d.eps, attn1, h);
  const mlp1 = mlp(c, a, w.mlp[1], v);
  native.add(s, h, h, mlp1);
  const marks = c.marks?.[l];
  marks?.dense.record(s);
  s.waitEvent(moeReady);
  native.add(s, h, h, shortcut);
  marks?.layer.record(s);
  a.dispose();
}

/** The decode rows whose attention outputs are wanted (the rest only write their latents): their
 *  indices into the batch, and the batch's positions, block tables and key counts at those rows. */
export interface QueryRows {
  idx: Tensor; // [n]
  positions: Tensor; // [n]
  blockTable: Tensor; // [n, maxBlocks]
  seqLens: Tensor; // [n]
}

/** The batch's decode metadata at rows `idx`, gathered on the main stream. */
function queryRows(c: Step, a: Arena, idx: Tensor): QueryRows {
  const b = c.batch,
    s = c.main,
    n = idx.shape[0]!;
  const q = {
    idx,
    positions: a.i32([n]),
    blockTable: a.i32([n, b.blockTable!.shape[1]!]),
    seqLens: a.i32([n]),
  };
  native.gatherRows(s, q.positions, b.positions, idx);
  native.gatherRows(s, q.blockTable, b.blockTable!, idx);
  native.gatherRows(s, q.seqLens, b.seqLens!, idx);
  return q;
}

/** Multi-head latent attention (SPEC 3.5; decode: the absorbed form, SPEC 5.2). Writes the batch's
 *  latents into `cache`; returns o_proj's output [T, hidden], or in decode with `rows` only those
 *  rows' outputs [n, hidden] (the queries, attention and o_proj run on them alone). */
export function mla(c: Step, a: Arena, w: MlaWeights, x: Tensor, cache: Tensor, rows?: QueryRows): Tensor {
  const d = c.dims,
    s = c.main,
    b = c.batch,
    T = b.T,
    nh = d.heads;
  let xq = x,
    Tq = T;
  if (rows) {
    Tq = rows.idx.shape[0]!;
    xq = a.f32([Tq, d.hidden]);
    native.gatherRows(s, xq, x, rows.idx);
  }
  const positions = rows?.positions ?? b.positions;
  // The three projections back to back: a CPU graph replay runs them as one parallel phase.
  const cq = a.f32([Tq, d.qLora]),
    ckv = a.f32([T, d.kvLora]),
    kpe = a.f32([T, 1, d.rope]);
  linear(s, a, cq, xq, w.qA);
  linear(s, a, ckv, x, w.kvLatent);
  linear(s, a, kpe.view([T, d.rope]), x, w.kvRope);
  native.rmsnorm(s, cq, cq, w.qNorm, d.latentEps);
  const q = a.f32([Tq, nh, d.nope + d.rope]);
  linear(s, a, q.view([Tq, nh * (d.nope + d.rope)]), cq, w.qB);
  native.rope(s, q, positions, d.nope, c.invFreq, d.ropeAttentionFactor);
  native.rmsnorm(s, ckv, ckv, w.kvNorm, d.latentEps);
  native.rope(s, kpe, b.positions, 0, c.invFreq, d.ropeAttentionFactor);
  native.mlaCacheWrite(s, cache, ckv, kpe.view([T, d.rope]), b.slots);

  const o = a.f32([Tq, nh, d.v]);
  // Absorbed where the runner gave each row its block table (decode, and prefill chunks behind a
  // cached prefix: SPEC 5.2 is exact algebra, and it attends the prefix without re-expanding it).
  if (b.blockTable) {
    const qLat = a.f32([Tq, nh, d.kvLora]);
    native.mlaAbsorbQ(s, qLat, q, w.kvB, d.nope);
    if (w.kvBScales) native.scaleGroups(s, qLat, qLat, w.kvBScales.uk, 128); // W_UK = codes x block scale
    const oLat = a.f32([Tq, nh, d.kvLora]);
    native.mlaDecodeAbsorbed(
      s,
      oLat,
      qLat,
      q,
      cache,
      rows?.blockTable ?? b.blockTable!,
      rows?.seqLens ?? b.seqLens!,
      d.softmaxScale,
    );
    if (w.kvBScales) native.scaleGroups(s, oLat, oLat, w.kvBScales.uv, 128); // W_UV's scales, folded into o_lat
    native.mlaOutput(s, o, oLat, w.kvB);
  } else {
    // Expanded form over every sequence's whole cached latent (prefix + the tokens just written).
    const S = b.kvTotal!;
    const ckvAll = a.f32([S, d.kvLora]),
      kpeAll = a.f32([S, d.rope]);
    for (const g of b.gathers!)
      native.mlaCacheGather(
        s,
        a.keep(ckvAll.narrow(g.start, g.length)),
        a.keep(kpeAll.narrow(g.start, g.length)),
        cache,
        g.table,
        0,
        g.length,
      );
    const kvb = a.f32([S, nh, d.nope + d.v]);
    linear(s, a, kvb.view([S, nh * (d.nope + d.v)]), ckvAll, w.kvBLinear);
    native.mlaPrefill(s, o, q, kvb, kpeAll, b.qStart!, b.kvStart!, d.softmaxScale);
  }
  const out = a.f32([Tq, d.hidden]);
  linear(s, a, out, o.view([Tq, nh * d.v]), w.o);
  return out;
}

/** Dense SwiGLU MLP (SPEC 3.4): down(silu(gate(x)) * up(x)). */
export function mlp(c: Step, a: Arena, w: MlpWeights, x: Tensor): Tensor {
  const d = c.dims,
    s = c.main,
    T = x.shape[0]!;
  const gate = a.f32([T, d.ffn]),
    up = a.f32([T, d.ffn]);
  linear(s, a, gate, x, w.gate);
  linear(s, a, up, x, w.up);
  native.siluMul(s, gate, gate, up);
  const out = a.f32([T, d.hidden]);
  linear(s, a, out, gate, w.down);
  return out;
}

/** Row l of an int32 [layers, T] tensor, as an int32 [T] view of its own. */
function stackRow(stack: Tensor, l: number, T: number): Tensor {
  if (l >= stack.shape[0]! || stack.shape[1] !== T) throw new Error(`routing stack [${stack.shape}]: no row ${l} of ${T} counts`);
  const row = stack.narrow(l, 1);
  try {
    return row.view([T]);
  } finally {
    row.dispose();
  }
}

/** The shortcut MoE (SPEC 4) on the MoE stream: router top-k over FFN and zero experts, then the
 *  experts -- and the rendezvous: the output is ready on the MoE stream once the pass resumes. */
export function* moe(c: Step, a: Arena, w: MoeWeights, u: Tensor): Pass<Tensor> {
  const d = c.dims,
    s = c.moeStream,
    T = u.shape[0]!,
    E = d.nRouted + d.nZero;
  const logits = a.f32([T, E]);
  native.linear(s, logits, u, w.classifier);
  const idx = a.i32([T, d.topk]),
    weights = a.f32([T, d.topk]);
  const nFfn =
    c.routing && c.routingStack
      ? stackRow(c.routingStack, c.routing.length, T)
      : empty([T], { dtype: 'int32', device: c.device });
  if (c.routing) c.routing.push(nFfn);
  else a.keep(nFfn);
  native.routerTopk(s, idx, weights, nFfn, logits, w.bias, d.nRouted, d.routedScale);
  const out = a.f32([T, d.hidden]);
  c.experts(s, out, u, idx, weights, w.experts, E);
  yield;
  return out;
}

/** y = x W^T; an act-order weight (w.perm) multiplies the activations gathered by its permutation. */
function linear(s: Stream, a: Arena, y: Tensor, x: Tensor, w: Linear) {
  if (w.perm) {
    const xp = a.f32(x.shape);
    native.gatherColumns(s, xp, x, w.perm);
    x = xp;
  }
  native.linear(s, y, x, w.weight, w.scale);
}
