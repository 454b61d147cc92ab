// MTP speculative decoding (issue 16, PERF "MTP speculative decoding"): decode tokens/s with and
// without speculation at batch 1 and 8, through the engine API (LongcatModel.forward /
// speculativeStep), greedy, on init-random checkpoints whose MTP drafts are accepted at a known rate
// (draftAgreement 0.9, and 0: the worst case), written once under bench/out/ (small preset; tiny with
// --quick). Per checkpoint and batch:
//   1. tokens/s plain (one decode step per token per sequence) and speculative (verify + accept +
//      draft, one graph replay per step), over N tokens per sequence after a short prompt taken from
//      the checkpoint's greedy cycle, repeats interleaved (plain, speculative, plain, ...): mean +- sd,
//      the measured acceptance rate and mean accepted length (tokens per step), the speedup
//      (speculative / plain tokens/s, per repeat); whether the greedy tokens were identical.
//   2. bytes a step reads: a plain step = the non-expert weights + the distinct FFN experts its rows
//      chose (summed over layers); a speculative step = the non-expert weights + the distinct FFN
//      experts of BOTH verified rows of every sequence + the MTP layer + the lm_head again (draft
//      rows). The routed expert ids are read in an untimed pass on a second copy of the model whose
//      experts function is wrapped before its first forward (the captured graphs then hold the
//      wrapper's views of every layer's idx [T, k]); ids >= n_routed are zero experts (read nothing).
//   3. the ideal speedup (1 + acceptance) x plain bytes / speculative bytes, and measured / ideal
//      (PERF target >= 0.85); the host share of a speculative step (SpeculativeStep.hostMs: the JS
//      before the replay and after the read-back, over the step's wall time).
//   3b. a compute-aware ideal, measured in the same run: each step's time floor = max(bytes / the
//      read probe, compute), compute = the step's linears each timed alone with warm weights
//      (benchLinear, one copy: L1/L2/L3-resident, so the kernels' FLOP rate, not memory) at the rows
//      it runs in that step: a plain step's non-expert linears + lm_head at B rows; a speculative
//      step's at 2 B rows, the MTP layer's linears at 2 B, the MTP lm_head at B. The routed experts
//      run 1-3 rows each (one MoE op, byte-bound: their bytes are in the byte term), attention, norms
//      and the absorbed MLA's per-head products are left out (a floor). Ideal = (1 + acceptance) x
//      plain floor / speculative floor. The byte ideal of item 3 is
//      the target; this one says how much of it the machine's FLOP rate allows.
//      Per op too: each linear's floor max(its bytes / probe, its FLOPs / the GEMM rate (gemmRate:
//      64-256 rows, warm)), the step's other bytes (experts, norms) at the probe, summed: a 16-row verify's linears can be FLOP-bound while its
//      experts are byte-bound, which the whole-step max does not see (the per-op ideal; bench/RESULTS.md
//      wt15-spec8).
//   4. at 0% acceptance: the slowdown against plain decoding vs the cost of a step's parts timed
//      alone: a verify forward of 2 rows per sequence (mode 'decode') and the MTP head over those 2
//      rows (a captured graph on the CPU, eager elsewhere), vs a plain 1-row step; these and the
//      speculative step itself are timed interleaved step by step (the same load for all four).
//   5. the same ideal for LongCat-Flash-Chat's proportions (test/fixtures/longcat-flash-chat.config.json,
//      requiredTensors' shapes incl. the MTP layer of SPEC 2.2): FP8 linears (1 byte/param + f32
//      128x128 block scales), everything else BF16 as stored (the BF16 checkpoint too), ~8 FFN
//      experts per token of 512 per layer (SPEC 1.2 / 9.1), chosen independently by each token.
// Wall-clock on a shared machine: compare the ratios of one run, not absolute figures across runs.
//
//   node bench/speculative.mjs [--quick] [--device cuda:0] [--tokens N] [--repeats R] [--out f.json] [--ckpt-root DIR]
import { execSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../dist/index.js';
import { empty, tensor, toArray, toArrayAsync } from '../dist/tensor.js';
import { loadModel } from '../dist/generate.js';
import { draftAgreementPlan, initRandom } from '../dist/init-random.js';
import { activeParams, parseConfig, requiredTensors } from '../dist/config.js';
import { accounting, benchFlags, gemmRate, now, median, randomF32, readBandwidth } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const args = process.argv.slice(2);
const { quick, outPath } = benchFlags(args);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const device = arg('--device', 'cpu');
/** @type {import('../dist/init-random.js').Preset} */
const PRESET = quick ? 'tiny' : 'small';
const N = Number(arg('--tokens', quick ? 12 : 128));
const REPEATS = Number(arg('--repeats', quick ? 2 : 8));
const PROMPT = quick ? 6 : 16;
const COMPONENT_STEPS = quick ? 2 : 32;
const WARMUP = quick ? 1 : 4;
const BATCHES = [1, 8];
const AGREEMENTS = [0.9, 0];
const ckptRoot = arg('--ckpt-root', path.join(here, 'out'));
const SEED = 1;
// Room for the prompt, 2 tokens per step (the last step may overshoot N) and the component loop.
const MAX_CONTEXT = 64 * Math.ceil((PROMPT + 2 * Math.max(N, COMPONENT_STEPS) + 8) / 64);
const deviceIndex = device === 'cpu' ? 0 : Number(/^cuda:(\d+)$/.exec(device)?.[1] ?? Number.NaN);
if (!Number.isInteger(deviceIndex)) throw new Error(`bench/speculative: --device must be cpu or cuda:N, got ${device}`);
/** @type {import('../dist/model/load.js').LoadModelOptions} */
const loadOpts = {
  backend: device === 'cpu' ? 'cpu' : 'cuda',
  deviceIndex,
  maxContext: MAX_CONTEXT,
  cacheBlocks: 3 * Math.max(...BATCHES) * (MAX_CONTEXT / 64),
};
const GREEDY = { temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0 };

const mean = v => v.reduce((a, b) => a + b, 0) / v.length;
const sd = v => (v.length < 2 ? 0 : Math.sqrt(v.reduce((a, b) => a + (b - mean(v)) ** 2, 0) / (v.length - 1)));
const stat = v => ({ mean: mean(v), sd: sd(v) });

// ---- decoding loops --------------------------------------------------------------------------

/** Batch prompts from the checkpoint's greedy cycle (each sequence starts at its own place). */
function prompts(plan, B) {
  const c = plan.cycle;
  return Array.from({ length: B }, (_, b) => Array.from({ length: PROMPT }, (_, i) => c[(b * 97 + 13 + i) % c.length]));
}

/** Greedy ids of the rows of `logits` (device-side argmax, then one read-back). */
function argmax(ids, logits) {
  native.sample(null, ids, logits, 0, 0, 1, 0, 0, 0);
  return Array.from(toArray(ids));
}

/** The same with the read-back awaited, as generate's steps do (speculativeStep awaits its own):
 *  every timed step pays one awaited read-back, so plain and speculative steps compare fairly. */
async function argmaxAsync(ids, logits) {
  native.sample(null, ids, logits, 0, 0, 1, 0, 0, 0);
  return Array.from(await toArrayAsync(ids));
}

/** The prompts' prefill; returns the sequences, the first token of each, and the post-norm hidden when asked. */
function prefill(e, ps, hidden) {
  const seqs = ps.map(() => e.newSequence());
  const ids = empty([ps.length], { dtype: 'int32', device: e.device });
  const r = e.forward(seqs, ps, { hidden });
  const first = argmax(ids, r.logits);
  r.logits.dispose();
  return { seqs, ids, first, hidden: r.hidden };
}

/** n plain decode steps (one token per sequence each); returns the wall time, the tokens, each step's time. */
async function plainRun(e, ps, n) {
  const { seqs, ids, first } = prefill(e, ps, false);
  const out = first.map(t => [t]);
  let pending = first;
  const stepMs = [];
  const t0 = now();
  for (let i = 0; i < n; i++) {
    const ts = now();
    const { logits } = e.forward(
      seqs,
      pending.map(t => [t]),
    );
    pending = await argmaxAsync(ids, logits);
    logits.dispose();
    stepMs.push(now() - ts);
    for (const [b, t] of pending.entries()) out[b].push(t);
  }
  const ms = now() - t0;
  for (const s of seqs) s.release();
  ids.dispose();
  return { ms, tokens: n * ps.length, out, stepMs };
}

/** Speculative steps until every sequence has n more tokens; returns the wall time, tokens, acceptance.
 *  hooks.before / after run around each step (the routing pass; untimed runs only). */
async function specRun(e, ps, n, hooks = null) {
  const { seqs, ids, first, hidden } = prefill(e, ps, true);
  const dl = e.mtp(
    seqs,
    ps.map((p, b) => [...p.slice(1), first[b]]),
    ps.map(() => 0),
    hidden,
  );
  hidden.dispose();
  let drafts = argmax(ids, dl);
  dl.dispose();
  ids.dispose();
  const out = first.map(t => [t]);
  let pending = first;
  const stepMs = [],
    hostMs = [];
  let accepted = 0,
    steps = 0,
    tokens = 0;
  const t0 = now();
  while (out.some(o => o.length <= n)) {
    hooks?.before();
    const ts = now();
    const s = await e.speculativeStep(
      seqs,
      pending,
      drafts,
      ps.map(() => GREEDY),
    );
    stepMs.push(now() - ts);
    hostMs.push(s.hostMs);
    hooks?.after();
    for (const t of s.nFfn) t.dispose();
    for (const [b, list] of s.tokens.entries()) out[b].push(...list);
    steps++;
    accepted += s.accepted.reduce((a, k) => a + k, 0);
    tokens += s.accepted.reduce((a, k) => a + k + 1, 0);
    pending = s.tokens.map(list => list[list.length - 1]);
    drafts = s.drafts;
  }
  const ms = now() - t0;
  for (const s of seqs) s.release();
  return { ms, tokens, out, steps, drafted: steps * ps.length, accepted, stepMs, hostMs };
}

/**
 * A speculative step against its parts timed alone, `m` times each, interleaved step by step on the
 * same sequences (so all four see the same machine load): the speculative step itself (which
 * commits its tokens), a verify forward of 2 rows per sequence (mode 'decode', logits argmaxed and
 * read back), a plain 1-row step (the last two dropped again after timing), and the MTP head over 2
 * rows per sequence (decode form, each sequence listed twice; on a second set of sequences, so its
 * cache writes touch nothing the steps read) with its argmax read back. The MTP call is captured
 * once and replayed on the CPU (how the speculative step runs it); on other devices it runs eagerly.
 */
async function components(e, ps, m) {
  const B = ps.length;
  const ids2 = empty([2 * B], { dtype: 'int32', device: e.device });
  // The MTP head's inputs: 2 cached rows per sequence and their hidden (copied: the graph's output buffer is reused).
  const side = prefill(e, ps, false);
  const L = side.seqs.map(s => s.length);
  const v = e.forward(
    side.seqs,
    side.first.map(t => [t, t]),
    { mode: 'decode', hidden: true },
  );
  const next = argmax(ids2, v.logits).map(t => [t]);
  v.logits.dispose();
  const hidden = tensor(toArray(v.hidden), v.hidden.shape, { device: e.device });
  v.hidden.dispose();
  const dup = side.seqs.flatMap(s => [s, s]);
  const starts = L.flatMap(l => [l, l + 1]);
  let mtpCall = () => {
    const lg = e.mtp(dup, next, starts, hidden);
    native.sample(null, ids2, lg, 0, 0, 1, 0, 0, 0);
    lg.dispose();
  };
  let graph = null;
  if (e.device === 'cpu') {
    graph = native.captureGraph([native.defaultStream(e.device)], mtpCall);
    mtpCall = () => graph.replay();
  }

  const { seqs, ids, first, hidden: h } = prefill(e, ps, true);
  const dl = e.mtp(
    seqs,
    ps.map((p, b) => [...p.slice(1), first[b]]),
    ps.map(() => 0),
    h,
  );
  h.dispose();
  let drafts = argmax(ids, dl);
  dl.dispose();
  let pending = first;
  const t = { spec: [], plain1: [], verify2: [], mtp: [] };
  const time = async (k, fn) => {
    const t0 = now();
    const r = await fn();
    t[k].push(now() - t0);
    return r;
  };
  for (let i = 0; i < m + 1; i++) {
    const s = await time('spec', () =>
      e.speculativeStep(
        seqs,
        pending,
        drafts,
        ps.map(() => GREEDY),
      ),
    );
    for (const x of s.nFfn) x.dispose();
    pending = s.tokens.map(list => list[list.length - 1]);
    drafts = s.drafts;
    await time('verify2', async () => {
      const r = e.forward(
        seqs,
        pending.map(x => [x, x]),
        { mode: 'decode', hidden: true },
      );
      await argmaxAsync(ids2, r.logits);
      r.logits.dispose();
      r.hidden.dispose();
    });
    for (const q of seqs) q.truncate(q.length - 2);
    await time('plain1', async () => {
      const { logits } = e.forward(
        seqs,
        pending.map(x => [x]),
      );
      await argmaxAsync(ids, logits);
      logits.dispose();
    });
    for (const q of seqs) q.truncate(q.length - 1);
    await time('mtp', async () => {
      mtpCall();
      await toArrayAsync(ids2);
    });
  }
  graph?.dispose();
  for (const q of [...seqs, ...side.seqs]) q.release();
  for (const x of [ids, side.ids, ids2, hidden]) x.dispose();
  // medians without the first round (warm-up: the side sequences' MTP graph, the caches)
  const med = Object.fromEntries(Object.entries(t).map(([k, x]) => [k, median(x.slice(1))]));
  return {
    mtpDispatch: graph ? 'captured graph' : 'eager',
    medianMs: med,
    predictedStepOverPlain: (med.verify2 + med.mtp) / med.plain1,
    measuredStepOverPlain: med.spec / med.plain1,
  };
}

// ---- bytes a step reads: the routed experts of every row -------------------------------------

/** Distinct FFN experts (id < nRouted) of each layer's idx rows, summed over layers. */
function distinctExperts(views, nRouted) {
  let sum = 0;
  for (const v of views) {
    const idx = toArray(v);
    const seen = new Set();
    for (const id of idx) if (id < nRouted) seen.add(id);
    sum += seen.size;
  }
  return sum;
}

/**
 * Untimed pass on a fresh copy of the model: its experts function is wrapped before the first
 * forward, so the captured decode and speculative graphs hold views of every layer's routed ids.
 * Per batch: the mean distinct FFN experts (summed over layers) of a plain step and of a
 * speculative step's verify rows, and FFN experts per token.
 */
async function routing(dir, plan) {
  const model = await loadModel(dir, loadOpts);
  const e = model.engine,
    d = e.dims;
  let sink = null;
  // wrapped before the first forward (the graphs capture it)
  e.wrapExperts(inner => (stream, out, u, idx, weights, experts, nExperts) => {
    if (sink) sink.push(idx.view(idx.shape));
    inner(stream, out, u, idx, weights, experts, nExperts);
  });
  const res = {};
  try {
    for (const B of BATCHES) {
      const ps = prompts(plan, B);
      // plain: the first step captures the B-row decode graph
      const plainViews = [];
      const plain = [];
      let pairs = 0;
      {
        const { seqs, ids, first } = prefill(e, ps, false);
        let pending = first;
        for (let i = 0; i < N; i++) {
          sink = i === 0 ? plainViews : null;
          const { logits, nFfn } = e.forward(
            seqs,
            pending.map(t => [t]),
            { collectRouting: true },
          );
          sink = null;
          pending = argmax(ids, logits);
          logits.dispose();
          for (const t of nFfn) {
            for (const c of toArray(t)) pairs += c;
            t.dispose();
          }
          if (plainViews.length !== d.layers)
            throw new Error(`routing pass: ${plainViews.length} expert calls captured for ${d.layers} layers`);
          plain.push(distinctExperts(plainViews, d.nRouted));
        }
        for (const s of seqs) s.release();
        ids.dispose();
      }
      // speculative: the first step captures the verify + accept + draft graph
      const specViews = [];
      const spec = [];
      await specRun(e, ps, N, {
        before: () => {
          sink = spec.length === 0 ? specViews : null;
        },
        after: () => {
          sink = null;
          if (specViews.length !== d.layers)
            throw new Error(`routing pass: ${specViews.length} expert calls captured for ${d.layers} layers`);
          spec.push(distinctExperts(specViews, d.nRouted));
        },
      });
      for (const v of [...plainViews, ...specViews]) v.dispose();
      res[B] = {
        plainDistinct: mean(plain),
        specDistinct: mean(spec),
        ffnPerTokenPerLayer: pairs / (N * B * d.layers),
      };
    }
  } finally {
    model.dispose();
  }
  return res;
}

// ---- the compute-aware floor: each linear timed alone at the rows it runs in a step ----------

/** Median ms of `lin` over `t` rows with warm weights (one copy), y / x f32. */
function hotMs(lin, t) {
  const [n, k] = lin.weight.shape;
  const x = new native.Tensor('f32', [t, k], 'cpu', randomF32(t * k, 7 + t, 0.5)),
    y = new native.Tensor('f32', [t, n]);
  try {
    return native.benchLinear(y, x, [lin.weight], lin.scale ? [lin.scale] : null, 3, 15).medianMs;
  } finally {
    x.dispose();
    y.dispose();
  }
}

/** Time (ms) and FLOPs of a list of linears at t rows each; one timing per distinct weight shape/dtype;
 *  items: each linear's weight bytes and FLOPs (for the per-op floor). */
function timeLinears(list, t, cache) {
  let ms = 0,
    flops = 0;
  const items = [];
  for (const lin of list) {
    const [n, k] = lin.weight.shape;
    const key = `${lin.weight.dtype} ${n}x${k} t${t}`;
    if (!cache.has(key)) cache.set(key, hotMs(lin, t));
    ms += cache.get(key);
    flops += 2 * t * n * k;
    items.push({ bytes: lin.weight.nbytes + (lin.scale?.nbytes ?? 0), flops: 2 * t * n * k });
  }
  return { ms, flops, items };
}

/**
 * The compute part of a plain and a speculative step at batch B (CPU only): the non-expert linears
 * of each timed alone at their rows (see item 3b).
 */
function computeFloor(model, B) {
  const w = model.engine.w,
    cache = new Map();
  const lin = (weight, scale = null) => ({ weight, scale });
  const mla = a => [a.qA, a.qB, a.kvLatent, a.kvRope, a.o];
  const dense = w.layers.flatMap(L => [
    ...L.attn.flatMap(mla),
    ...L.mlp.flatMap(m => [m.gate, m.up, m.down]),
    lin(L.moe.classifier),
  ]);
  const m = w.mtp;
  const mtp = [m.ehEmbed, m.ehHidden, ...mla(m.attn), m.mlp.gate, m.mlp.up, m.mlp.down];
  const sum = parts => ({
    ms: parts.reduce((a, p) => a + p.ms, 0),
    flops: parts.reduce((a, p) => a + p.flops, 0),
    items: parts.flatMap(p => p.items),
  });
  const plain = sum([timeLinears(dense, B, cache), timeLinears([w.lmHead], B, cache)]);
  const spec = sum([
    timeLinears(dense, 2 * B, cache),
    timeLinears([w.lmHead], 2 * B, cache),
    timeLinears(mtp, 2 * B, cache),
    timeLinears([w.lmHead], B, cache),
  ]);
  return {
    plainMs: plain.ms,
    specMs: spec.ms,
    plainFlops: plain.flops,
    specFlops: spec.flops,
    /** GFLOP/s of those linears at B (plain) and 2 B (verify + MTP) rows */
    gflops: { plain: plain.flops / plain.ms / 1e6, spec: spec.flops / spec.ms / 1e6 },
    /** each linear's weight bytes and FLOPs (main() turns them into the per-op floors, then drops them) */
    linears: { plain: plain.items, spec: spec.items },
  };
}

/** A step's per-op floor (ms): each linear max(its bytes / bw, its FLOPs / the GEMM rate), the step's
 *  other bytes (experts, norms) at bw; bw in bytes per ms, rate in FLOPs per ms. */
function perOpFloorMs(items, stepBytes, bw, rate) {
  const linearBytes = items.reduce((a, x) => a + x.bytes, 0);
  return Math.max(0, stepBytes - linearBytes) / bw + items.reduce((a, x) => a + Math.max(x.bytes / bw, x.flops / rate), 0);
}

// ---- LongCat-Flash-Chat proportions ----------------------------------------------------------

/** Expected distinct experts among `rows` tokens each choosing f of n at random, independently. */
const expectedDistinct = (n, f, rows) => n * (1 - (1 - f / n) ** rows);

/** Bytes per step (FP8 and BF16 checkpoints) and the ideal speedups of Flash-Chat (item 5). */
function flashChat() {
  const file = path.join(root, 'test/fixtures/longcat-flash-chat.config.json');
  const c = parseConfig(JSON.parse(readFileSync(file, 'utf8')), file);
  const p = activeParams(c, { mtp: true });
  const FFN_PER_TOKEN = 8; // SPEC 1.2 / 9.1: ~27B active on average = ~7.9 FFN experts per token
  const out = { config: 'test/fixtures/longcat-flash-chat.config.json', ffnExpertsPerToken: FFN_PER_TOKEN, checkpoints: {} };
  for (const fp8 of [true, false]) {
    const req = requiredTensors(c, { fp8, mtp: true });
    const bytes = { dense: 0, head: 0, expert: 0, mtp: 0 },
      params = { dense: 0, head: 0, expert: 0, mtp: 0 };
    let lmHead = 0;
    for (const [name, s] of req) {
      if (name === 'model.embed_tokens.weight' || name === 'model.mtp.embed_tokens.weight') continue; // one row read
      const n = s.shape.reduce((a, b) => a * b, 1);
      const size = s.quantized ? 1 : s.role === 'scale' ? 4 : 2; // FP8 codes, f32 block scales, BF16
      const k = name.startsWith('model.mtp.')
        ? 'mtp'
        : name.includes('.mlp.experts.')
          ? 'expert'
          : name === 'lm_head.weight' || name === 'model.norm.weight'
            ? 'head'
            : 'dense';
      bytes[k] += n * size;
      if (name === 'lm_head.weight') lmHead = n * size;
      if (s.role !== 'scale') params[k] += n;
    }
    // Cross-check against the parameter counts of lib/config.ts (SPEC 1.2).
    const perExpert = params.expert / (c.num_layers * c.n_routed_experts);
    if (params.dense + params.head !== p.activeMin || perExpert !== p.perExpert || params.mtp !== p.mtp - p.embedding)
      throw new Error('flashChat: tensor sizes disagree with activeParams');
    const expertBytes = bytes.expert / (c.num_layers * c.n_routed_experts);
    const rows = {};
    for (const B of BATCHES) {
      const dPlain = expectedDistinct(c.n_routed_experts, FFN_PER_TOKEN, B),
        dSpec = expectedDistinct(c.n_routed_experts, FFN_PER_TOKEN, 2 * B);
      const plain = bytes.dense + bytes.head + c.num_layers * dPlain * expertBytes;
      const spec = bytes.dense + bytes.head + c.num_layers * dSpec * expertBytes + bytes.mtp + lmHead;
      rows[B] = {
        distinctPerLayer: { plain: dPlain, spec: dSpec },
        plainStepBytes: plain,
        specStepBytes: spec,
        bytesRatio: plain / spec,
        ideal: Object.fromEntries([0.9, 0.8].map(a => [a, (1 + a) * (plain / spec)])),
      };
    }
    out.checkpoints[fp8 ? 'fp8' : 'bf16'] = {
      nonExpertBytes: bytes.dense + bytes.head,
      lmHeadBytes: lmHead,
      expertBytes,
      mtpLayerBytes: bytes.mtp,
      batches: rows,
    };
  }
  return out;
}

// ---- the run ---------------------------------------------------------------------------------

async function checkpoint(agreement) {
  const dir = path.join(ckptRoot, `ckpt-${PRESET}-mtp-agree${Math.round(agreement * 100)}`);
  const opts = { preset: PRESET, seed: SEED, draftAgreement: agreement };
  if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ ...opts, mtp: true, out: dir });
  return { dir, plan: draftAgreementPlan(opts) };
}

async function benchCheckpoint(agreement) {
  const { dir, plan } = await checkpoint(agreement);
  // bytes per step from the routing of an untimed pass (a model copy of its own)
  const rt = await routing(dir, plan);
  const model = await loadModel(dir, loadOpts);
  const e = model.engine;
  const acc = accounting(model);
  const { hidden, layers, nRouted, nZero, topk, vocab } = e.dims;
  const dims = { hidden, layers, nRouted, nZero, topk, vocab };
  /** @type {any[]} */
  const batches = [];
  try {
    for (const B of BATCHES) {
      const ps = prompts(plan, B);
      await plainRun(e, ps, WARMUP); // warm-up: pages the weights in, captures the graphs
      await specRun(e, ps, WARMUP);
      const plain = [],
        spec = [];
      for (let r = 0; r < REPEATS; r++) {
        plain.push(await plainRun(e, ps, N));
        spec.push(await specRun(e, ps, N));
      }
      const identical = spec.every(s => s.out.every((o, b) => o.slice(0, N + 1).join() === plain[0].out[b].join()));
      const plainTps = plain.map(r => r.tokens / (r.ms / 1e3)),
        specTps = spec.map(r => r.tokens / (r.ms / 1e3));
      const drafted = spec.reduce((a, r) => a + r.drafted, 0),
        accepted = spec.reduce((a, r) => a + r.accepted, 0);
      const stepMs = spec.flatMap(r => r.stepMs),
        hostMs = spec.flatMap(r => r.hostMs),
        plainStepMs = plain.flatMap(r => r.stepMs);
      const speedups = specTps.map((s, i) => s / plainTps[i]);
      const perStep = 1 + accepted / drafted;
      batches.push({
        batch: B,
        plain: { tokensPerSecond: stat(plainTps), stepMs: { mean: mean(plainStepMs), median: median(plainStepMs) } },
        spec: {
          tokensPerSecond: stat(specTps),
          steps: mean(spec.map(r => r.steps)),
          acceptanceRate: accepted / drafted,
          meanAcceptedLength: perStep,
          stepMs: { mean: mean(stepMs), median: median(stepMs) },
          hostMs: mean(hostMs),
          hostFraction: mean(hostMs) / mean(stepMs),
        },
        speedup: { ...stat(speedups), median: median(speedups) },
        // The same from the median step times (robust to the load spikes of a shared machine).
        speedupMedianSteps: (perStep * median(plainStepMs)) / median(stepMs),
        identical,
        components: await components(e, ps, COMPONENT_STEPS),
        computeFloor: device === 'cpu' ? computeFloor(model, B) : null,
      });
    }
  } finally {
    model.dispose();
  }
  for (const b of batches) {
    const r = rt[b.batch];
    const plainBytes = acc.nonExpertBytes + r.plainDistinct * acc.expertBytes;
    const specBytes = acc.nonExpertBytes + r.specDistinct * acc.expertBytes + acc.mtpBytes + acc.lmHeadBytes;
    b.bytes = {
      plainStep: plainBytes,
      specStep: specBytes,
      plainOverSpec: plainBytes / specBytes,
      distinctExperts: { plain: r.plainDistinct, spec: r.specDistinct },
      ffnExpertsPerTokenPerLayer: r.ffnPerTokenPerLayer,
    };
    b.ideal = (1 + b.spec.acceptanceRate) * b.bytes.plainOverSpec;
    b.measuredOverIdeal = b.speedup.mean / b.ideal;
    b.medianStepsOverIdeal = b.speedupMedianSteps / b.ideal;
    b.measuredSlowdown = b.plain.tokensPerSecond.mean / b.spec.tokensPerSecond.mean;
  }
  return {
    name: `${PRESET}, draftAgreement ${agreement}`,
    draftAgreement: agreement,
    planAcceptance: plan.acceptance,
    dir: path.relative(root, dir),
    dims,
    weights: acc,
    batches,
  };
}

const f1 = x => x.toFixed(1),
  f2 = x => x.toFixed(2),
  pm = (s, f = f1) => `${f(s.mean)} ± ${f(s.sd)}`,
  mb = x => (x / 1e6).toFixed(2),
  gb = x => (x / 1e9).toFixed(2);

function commit() {
  try {
    const head = execSync('git rev-parse --short HEAD', {
      cwd: root,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    const dirty = execSync('git status --porcelain --untracked-files=no', { cwd: root, encoding: 'utf8' }).trim();
    return dirty ? `${head}+dirty` : head;
  } catch {
    return 'unknown';
  }
}

async function main() {
  const t00 = now();
  const loadStart = os.loadavg();
  const bwA = device === 'cpu' ? readBandwidth() : null;
  const checkpoints = [];
  for (const a of AGREEMENTS) checkpoints.push(await benchCheckpoint(a));
  const bwB = device === 'cpu' ? readBandwidth() : null;
  const gemmGflops = device === 'cpu' ? gemmRate(checkpoints[0].dims.hidden) : null;
  // the compute-aware ideal (item 3b): per step max(bytes / probe, compute), the probe's mean
  if (bwA !== null)
    for (const c of checkpoints)
      for (const b of c.batches) {
        const bw = ((bwA + bwB) / 2) * 1e6, // bytes per ms
          f = b.computeFloor;
        const plainFloor = Math.max(b.bytes.plainStep / bw, f.plainMs),
          specFloor = Math.max(b.bytes.specStep / bw, f.specMs);
        b.computeAware = {
          plainFloorMs: plainFloor,
          specFloorMs: specFloor,
          plainBound: f.plainMs > b.bytes.plainStep / bw ? 'compute' : 'bytes',
          specBound: f.specMs > b.bytes.specStep / bw ? 'compute' : 'bytes',
          ideal: ((1 + b.spec.acceptanceRate) * plainFloor) / specFloor,
        };
        b.computeAware.measuredOverIdeal = b.speedup.mean / b.computeAware.ideal;
        b.computeAware.medianStepsOverIdeal = b.speedupMedianSteps / b.computeAware.ideal;
        // per op: a step whose linears are FLOP-bound at its rows (a 16-row verify on a host of few
        // FLOPs per byte) and whose experts are byte-bound is slower than either whole-step term says
        const perOp = {
          plainFloorMs: perOpFloorMs(f.linears.plain, b.bytes.plainStep, bw, gemmGflops * 1e6),
          specFloorMs: perOpFloorMs(f.linears.spec, b.bytes.specStep, bw, gemmGflops * 1e6),
        };
        perOp.ideal = ((1 + b.spec.acceptanceRate) * perOp.plainFloorMs) / perOp.specFloorMs;
        perOp.measuredOverIdeal = b.speedup.mean / perOp.ideal;
        perOp.medianStepsOverIdeal = b.speedupMedianSteps / perOp.ideal;
        b.computeAware.perOp = perOp;
      }
  for (const c of checkpoints) for (const b of c.batches) if (b.computeFloor) delete b.computeFloor.linears;
  const real = flashChat();
  const res = {
    bench: 'speculative',
    date: new Date().toISOString(),
    commit: commit(),
    device,
    threads: native.threads(),
    isa: native.cpuFeatures().isa,
    cpus: os.cpus().length,
    loadavg: { start: loadStart, end: os.loadavg() },
    readGbps: bwA === null ? null : [bwA, bwB],
    gemmGflops,
    preset: PRESET,
    promptTokens: PROMPT,
    tokensPerSequence: N,
    repeats: REPEATS,
    checkpoints,
    flashChat: real,
    seconds: 0,
  };
  res.seconds = (now() - t00) / 1000;
  if (outPath) writeFileSync(outPath, `${JSON.stringify(res, null, 2)}\n`);

  const la = v => v.map(x => x.toFixed(2)).join(' ');
  console.log(
    `## speculative decoding (MTP, 1 draft, greedy): ${PRESET} preset, ${device}, ${res.threads} threads, isa ${res.isa}, ` +
      `commit ${res.commit}, load average ${la(loadStart)} at start, ${la(res.loadavg.end)} at end`,
  );
  console.log(
    `prompt ${PROMPT} tokens, ${N} tokens per sequence, ${REPEATS} repeats (plain and speculative interleaved)` +
      (bwA === null ? '' : `; read bandwidth ${f1(bwA)} / ${f1(bwB)} GB/s (before / after)`),
  );
  console.log('');
  console.log(
    '| checkpoint | batch | plain t/s | spec t/s | speedup (median) | acceptance | tokens/step | plain step MB | spec step MB | plain/spec bytes | ideal | measured/ideal | from median steps: speedup, /ideal | host share | greedy identical |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  for (const c of checkpoints)
    for (const b of c.batches)
      console.log(
        `| ${c.name} | ${b.batch} | ${pm(b.plain.tokensPerSecond)} | ${pm(b.spec.tokensPerSecond)} | ${pm(b.speedup, f2)}x (${f2(b.speedup.median)}x) | ` +
          `${(100 * b.spec.acceptanceRate).toFixed(1)}% | ${f2(b.spec.meanAcceptedLength)} | ${mb(b.bytes.plainStep)} | ${mb(b.bytes.specStep)} | ` +
          `${f2(b.bytes.plainOverSpec)} | ${f2(b.ideal)}x | ${f2(b.measuredOverIdeal)} | ${f2(b.speedupMedianSteps)}x, ${f2(b.medianStepsOverIdeal)} | ` +
          `${(100 * b.spec.hostFraction).toFixed(1)}% | ${b.identical ? 'yes' : 'NO'} |`,
      );
  if (bwA !== null) {
    console.log('');
    console.log(
      'Compute-aware ideal (per step max(bytes / probe, the linears timed alone with warm weights at their rows); ' +
        'ms of a step: bytes / probe vs compute; GFLOP/s of the non-expert linears at B / 2 B rows; per op: each linear ' +
        `max(bytes / probe, FLOPs / the GEMM rate ${gemmGflops.toFixed(0)} GFLOP/s), the other bytes at the probe):`,
    );
    console.log(
      '| checkpoint | batch | plain: bytes / compute ms | spec: bytes / compute ms | linears GFLOP/s at B / 2B | byte ideal | compute-aware ideal | measured / byte ideal | measured / compute-aware ideal (median steps) | per-op floors plain / spec ms | per-op ideal | measured / per-op ideal (median steps) |',
    );
    console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    const bw = ((bwA + bwB) / 2) * 1e6;
    for (const c of checkpoints)
      for (const b of c.batches) {
        const f = b.computeFloor,
          a = b.computeAware;
        console.log(
          `| ${c.name} | ${b.batch} | ${f2(b.bytes.plainStep / bw)} / ${f2(f.plainMs)} | ${f2(b.bytes.specStep / bw)} / ${f2(f.specMs)} | ` +
            `${f1(f.gflops.plain)} / ${f1(f.gflops.spec)} | ${f2(b.ideal)}x | ${f2(a.ideal)}x | ${f2(b.measuredOverIdeal)} | ` +
            `${f2(a.measuredOverIdeal)} (${f2(a.medianStepsOverIdeal)}) | ${f2(a.perOp.plainFloorMs)} / ${f2(a.perOp.specFloorMs)} | ` +
            `${f2(a.perOp.ideal)}x | ${f2(a.perOp.measuredOverIdeal)} (${f2(a.perOp.medianStepsOverIdeal)}) |`,
        );
      }
  }
  console.log('');
  console.log('Distinct FFN experts per step (summed over layers) and what independent choices would give:');
  console.log(
    '| checkpoint | batch | FFN experts/token/layer | plain: distinct | spec (2 rows/seq): distinct | independent-choice plain / spec |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
  for (const c of checkpoints)
    for (const b of c.batches) {
      const f = b.bytes.ffnExpertsPerTokenPerLayer,
        n = c.dims.nRouted,
        L = c.dims.layers;
      console.log(
        `| ${c.name} | ${b.batch} | ${f2(f)} | ${f1(b.bytes.distinctExperts.plain)} | ${f1(b.bytes.distinctExperts.spec)} | ` +
          `${f1(L * expectedDistinct(n, f, b.batch))} / ${f1(L * expectedDistinct(n, f, 2 * b.batch))} |`,
      );
    }
  console.log('');
  console.log('A speculative step and its parts alone, interleaved step by step (medians, ms; each with its argmax read back):');
  console.log(
    '| checkpoint | batch | plain 1-row step | verify 2 rows/seq | MTP head, 2 rows/seq | (verify + MTP) / plain | speculative step | spec / plain |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const c of checkpoints)
    for (const b of c.batches) {
      const m = b.components.medianMs;
      console.log(
        `| ${c.name} | ${b.batch} | ${f2(m.plain1)} | ${f2(m.verify2)} | ${f2(m.mtp)} (${b.components.mtpDispatch}) | ` +
          `${f2(b.components.predictedStepOverPlain)}x | ${f2(b.components.medianMs.spec)} | ${f2(b.components.measuredStepOverPlain)}x |`,
      );
    }
  console.log('');
  console.log(
    `LongCat-Flash-Chat proportions (ideal = (1 + acceptance) x plain/spec bytes; ${real.ffnExpertsPerToken} FFN experts per token of 512, ` +
      'chosen independently by each token; the embedding row not counted):',
  );
  console.log(
    '| weights | batch | distinct experts/layer plain / spec | plain step GB | spec step GB | plain/spec | ideal at 0.9 | ideal at 0.8 |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const [k, w] of Object.entries(real.checkpoints))
    for (const [B, r] of Object.entries(w.batches))
      console.log(
        `| ${k === 'fp8' ? 'FP8 linears + f32 scales, rest BF16' : 'BF16'} | ${B} | ${f1(r.distinctPerLayer.plain)} / ${f1(r.distinctPerLayer.spec)} | ` +
          `${gb(r.plainStepBytes)} | ${gb(r.specStepBytes)} | ${f2(r.bytesRatio)} | ${f2(r.ideal[0.9])}x | ${f2(r.ideal[0.8])}x |`,
      );
  console.log(
    `(MTP layer ${gb(real.checkpoints.fp8.mtpLayerBytes)} GB FP8 + lm_head ${gb(real.checkpoints.fp8.lmHeadBytes)} GB per draft; producers report ~1.8x at batch 1)`,
  );
  console.log(`${res.seconds.toFixed(0)} s`);
}

await main();
