// The batch-1 GEMV on short rows (the small preset's linears: K = 256-1024), per weight format:
// bf16 / fp8 / int8 at t = 1 (--t: x rows) on small's shapes, warm (one weight copy, cache-resident after the
// warm-up) and cold (copies rotated over 64 MiB, 2x the VM's LLC), each cold figure next to a read probe over
// the same copies (benchReadTensors: the bytes and pages the GEMV streams), measured right before
// it, so GEMV / probe is a ratio inside one measurement pair. Rounds alternate the formats.
// LONGCAT_ADDON=path picks the addon (an A/B of two builds: run it once per addon, alternated).
//   node bench/gemv-short.mjs [--threads 1,2] [--t 1] [--rounds 3] [--formats bf16,fp8,int8] [--shapes 256x512,...]
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const native = process.env.LONGCAT_ADDON ? require(path.resolve(process.env.LONGCAT_ADDON)) : require('node-gyp-build')(root);
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const threadList = arg('--threads', '1,2').split(',').map(Number);
const T = Number(arg('--t', 1));
const rounds = Number(arg('--rounds', 3));
const formats = arg('--formats', 'bf16,fp8,int8').split(',');
// small: gate / up of an expert (N 256, K 512), its down (512 x 256), the dense MLP's gate / up
// (1024 x 512) and down (512 x 1024), q_a (256 x 512)
const shapes = arg('--shapes', '256x512,512x256,1024x512,512x1024')
  .split(',')
  .map(s => s.split('x').map(Number));

let seed = 12345;
const u32 = () => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return seed >>> 0;
};
function bytes(n) {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = u32() & 0xff;
  return b;
}
function makeWeight(f, n, k) {
  if (f === 'bf16') {
    const u = new Uint16Array(bytes(n * k * 2).buffer);
    for (let i = 0; i < u.length; i++) u[i] = (u[i] & 0x807f) | 0x3c00;
    return { w: new native.Tensor('bf16', [n, k], 'cpu', u), scale: null };
  }
  if (f === 'int8')
    return {
      w: new native.Tensor('int8', [n, k], 'cpu', bytes(n * k)),
      scale: new native.Tensor('f32', [n], 'cpu', new Float32Array(n).fill(0.01)),
    };
  const b = bytes(n * k);
  for (let i = 0; i < b.length; i++) if ((b[i] & 0x7f) === 0x7f) b[i] ^= 1;
  const nb = Math.ceil(n / 128),
    kb = Math.ceil(k / 128);
  return {
    w: new native.Tensor('fp8_e4m3', [n, k], 'cpu', b),
    scale: new native.Tensor('f32', [nb, kb], 'cpu', new Float32Array(nb * kb).fill(1e-3)),
  };
}
const esize = { bf16: 2, int8: 1, fp8: 1 };
const coldBytes = 64 << 20;

// per (threads, shape, format): warm GB/s, cold GB/s, probe GB/s, cold / probe
const res = {};
const sets = {};
for (const [n, k] of shapes)
  for (const f of formats) {
    const copies = Math.max(2, Math.ceil(coldBytes / (n * k * esize[f])));
    sets[`${n}x${k} ${f}`] = Array.from({ length: copies }, () => makeWeight(f, n, k));
  }
for (let r = 0; r < rounds; r++)
  for (const th of threadList) {
    native.setThreads(th);
    for (const [n, k] of shapes) {
      const x = new native.Tensor(
        'f32',
        [T, k],
        'cpu',
        Float32Array.from({ length: T * k }, () => u32() / 2 ** 32 - 0.5),
      );
      const y = new native.Tensor('f32', [T, n]);
      for (const f of r % 2 ? [...formats].reverse() : formats) {
        const ws = sets[`${n}x${k} ${f}`];
        const wb = n * k * esize[f];
        const lin = list =>
          native.benchLinear(
            y,
            x,
            list.map(w => w.w),
            list[0].scale ? list.map(w => w.scale) : null,
            20,
            200,
          ).medianMs;
        const warm = wb / lin(ws.slice(0, 1)) / 1e6;
        const probe = native.benchReadTensors(
          ws.flatMap(w => (w.scale ? [w.w, w.scale] : [w.w])),
          3,
        ).gbps;
        const cold = wb / lin(ws) / 1e6;
        const key = `t${th} ${n}x${k} ${f}`;
        res[key] ??= [];
        res[key].push({ warm, cold, probe, ratio: cold / probe });
      }
      x.dispose();
      y.dispose();
    }
  }
const med = xs => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1];
const f1 = v => v.toFixed(1);
console.log(`| threads, shape (N x K), format | warm GB/s | cold GB/s | probe GB/s | cold / probe (median, min-max) |`);
console.log('|---|---:|---:|---:|---:|');
for (const [key, xs] of Object.entries(res)) {
  const rs = xs.map(x => x.ratio);
  console.log(
    `| ${key} | ${f1(med(xs.map(x => x.warm)))} | ${f1(med(xs.map(x => x.cold)))} | ${f1(med(xs.map(x => x.probe)))} | ${med(rs).toFixed(2)} (${Math.min(...rs).toFixed(2)}-${Math.max(...rs).toFixed(2)}) |`,
  );
}
fs.mkdirSync(path.join(root, 'bench', 'out'), { recursive: true });
fs.writeFileSync(path.join(root, 'bench', 'out', 'gemv-short.json'), JSON.stringify(res, null, 1));
