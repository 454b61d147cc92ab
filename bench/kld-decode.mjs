// The error the int8 decode GEMV's int8 activations add, measured token by token (decode steps: the
// GEMV path, which `longcat eval --kld`'s prefill windows do not take): the base checkpoint and the
// same checkpoint quantized at load (--quantize F) decode one teacher-forced random token sequence
// (restarting every --len tokens) side by side; per step the KL divergence of each model's
// next-token distribution from the base's, and top-1 agreement. With --env A=x,A=y two quantized
// copies are compared, each step run under its environment setting (a build's switch), e.g. the
// int8 GEMV's activations f32 against int8.
//   node bench/kld-decode.mjs [--preset small] [--quantize int8] [--steps 512] [--len 128] [--threads 2] [--env A=x,A=y]
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distImporter } from './common.mjs';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const load = distImporter(args);
const { native } = await load('index.js');
const { loadModel } = await load('generate.js');
const { initRandom } = await load('init-random.js');
const { rng } = await load('check/rng.js');
const preset = arg('--preset', 'small'),
  quantize = arg('--quantize', 'int8'),
  N = Number(arg('--steps', 512)),
  len = Number(arg('--len', 128));
const envs = arg('--env', '').split(',').filter(Boolean);
native.setThreads(Number(arg('--threads', 2)));
const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'out', `ckpt-${preset}`);
if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ preset, out: dir, seed: 1 });
const base = await loadModel(dir, { backend: 'cpu', maxContext: len + 1 });
const quant = await loadModel(dir, { backend: 'cpu', maxContext: len + 1, quantize });
const V = base.engine.dims.vocab;
const variants = envs.length ? envs : ['-'];
const logp = bytes => {
  const v = new Float32Array(bytes.buffer, bytes.byteOffset, V);
  let m = -Infinity;
  for (const x of v) m = Math.max(m, x);
  let s = 0;
  for (const x of v) s += Math.exp(x - m);
  const l = Math.log(s) + m;
  return Float64Array.from(v, x => x - l);
};
const argmax = a => a.reduce((b, x, i) => (x > a[b] ? i : b), 0);
const stats = variants.map(() => ({ kld: [], top1: 0 }));
const pair = { kld: [], top1: 0 };
const r = rng(3);
let seqs = null;
for (let i = 0; i < N; i++) {
  if (i % len === 0) {
    if (seqs) for (const s of seqs) s.release();
    seqs = [base.engine.newSequence(), ...variants.map(() => quant.engine.newSequence())];
  }
  const tok = r.int(V);
  const lb = logp(base.engine.forward([seqs[0]], [[tok]]).logits.toBytes());
  const outs = variants.map((v, j) => {
    const [k, x] = v.includes('=') ? v.split('=') : [null, null];
    if (k) process.env[k] = x;
    const lq = logp(quant.engine.forward([seqs[j + 1]], [[tok]]).logits.toBytes());
    if (k) delete process.env[k];
    return lq;
  });
  const kl = (p, q) => {
    let s = 0;
    for (let c = 0; c < V; c++) s += Math.exp(p[c]) * (p[c] - q[c]);
    return s;
  };
  outs.forEach((lq, j) => {
    stats[j].kld.push(kl(lb, lq));
    if (argmax(lb) === argmax(lq)) stats[j].top1++;
  });
  if (outs.length === 2) {
    pair.kld.push(kl(outs[0], outs[1]));
    if (argmax(outs[0]) === argmax(outs[1])) pair.top1++;
  }
}
const summary = k => {
  const s = [...k].sort((a, b) => a - b);
  const mean = k.reduce((a, b) => a + b, 0) / k.length;
  const sd = Math.sqrt(k.reduce((a, b) => a + (b - mean) ** 2, 0) / (k.length - 1));
  return `mean ${mean.toExponential(3)} (se ${(sd / Math.sqrt(k.length)).toExponential(1)}), median ${s[Math.floor(s.length / 2)].toExponential(3)}, 99% ${s[Math.floor(s.length * 0.99)].toExponential(3)}, max ${s[s.length - 1].toExponential(3)}`;
};
console.log(
  `${preset}, ${quantize} at load, ${N} decode steps (teacher-forced random tokens, contexts 1..${len}), ${native.threads()} threads`,
);
variants.forEach((v, j) => {
  console.log(`base -> ${quantize} [${v}]: KLD ${summary(stats[j].kld)}; top-1 ${(stats[j].top1 / N).toFixed(3)}`);
});
if (variants.length === 2)
  console.log(`[${variants[0]}] -> [${variants[1]}]: KLD ${summary(pair.kld)}; top-1 ${(pair.top1 / N).toFixed(3)}`);
