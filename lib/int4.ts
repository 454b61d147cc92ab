// Host-side helpers of the int4 weight format (described once, in native/cpu/linear.h): packing
// codes into its byte layout, and mapping GPTQ / AutoRound packed checkpoints (qweight / qzeros /
// scales / g_idx) onto it.
import { native } from './native.js';
import type { Tensor } from './tensor.js';
import { CheckpointError } from './errors.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './numeric.js';
import { type GptqQuantizationConfig, isGptqConfig } from './config.js';
import type { Checkpoint } from './checkpoint.js';
import type { TensorSource } from './model/weights.js';

/** The group size `longcat quantize --to int4` and loadModel's `quantize: 'int4'` use. */
export const INT4_GROUP = 128;

export const int4Groups = (k: number, g: number) => Math.ceil(k / g);

/** Whether `g` is a group size the kernels take: a multiple of 32 in 32..4096. */
export const isInt4Group = (g: number) => Number.isSafeInteger(g) && g >= 32 && g <= 4096 && g % 32 === 0;

/**
 * Packs codes (0..15) of a row-major [n, k] matrix into the int4 format's bytes, [n, G, g / 2]:
 * in each 32-column block, byte j holds column j (low nibble) and column 16 + j (high nibble);
 * padding columns get `pad`.
 */
export function packInt4(codes: ArrayLike<number>, n: number, k: number, g: number, pad = 8): Uint8Array {
  const rb = (int4Groups(k, g) * g) / 2;
  const out = new Uint8Array(n * rb).fill(pad | (pad << 4));
  for (let r = 0; r < n; r++)
    for (let c = 0; c < k; c++) {
      const q = codes[r * k + c]! & 15,
        at = r * rb + (c >> 5) * 16 + (c & 15);
      out[at] = (c & 31) < 16 ? (out[at]! & 0xf0) | q : (out[at]! & 0x0f) | (q << 4);
    }
  return out;
}

/** The codes [n, k] of packed int4 bytes (packInt4's inverse). */
export function unpackInt4(bytes: Uint8Array, n: number, k: number, g: number): Uint8Array {
  const rb = (int4Groups(k, g) * g) / 2;
  const out = new Uint8Array(n * k);
  for (let r = 0; r < n; r++)
    for (let c = 0; c < k; c++) {
      const b = bytes[r * rb + (c >> 5) * 16 + (c & 15)]!;
      out[r * k + c] = (c & 31) < 16 ? b & 15 : b >> 4;
    }
  return out;
}

/** An int4 weight as its two tensors (linear's `weight` and `scale`). */
export interface Int4Tensors {
  weight: Tensor; // int8 [n, G, g / 2]
  scale: Tensor; // f16 / bf16 [n, G] or [n, G, 2]
}

/** The int4 weight tensor (int8 [n, G, g / 2]) holding packed bytes. */
export function int4WeightTensor(bytes: Uint8Array, n: number, k: number, g: number, device = 'cpu'): Tensor {
  return new native.Tensor('int8', [n, int4Groups(k, g), g / 2], device, bytes);
}

// ---- GPTQ / AutoRound ---------------------------------------------------------------------------

/** A GPTQ-packed linear as stored: qweight I32 [K / 8, N], qzeros I32 [G, N / 8], scales F16 [G, N], g_idx I32 [K]. */
export interface GptqTensors {
  qweight: Int32Array;
  qzeros: Int32Array | null;
  scales: Uint16Array; // f16 bits (bf16 bits with scaleDtype 'bf16')
  gIdx: Int32Array | null;
  scaleDtype?: 'f16' | 'bf16';
}

/** How a GPTQ-style checkpoint stores its zero points (config.ts GptqQuantizationConfig). */
export interface GptqLayout {
  bits: 4;
  groupSize: number; // -1: one group per row
  sym: boolean;
  /** qzeros hold zero - 1 (GPTQ v1, AutoGPTQ's and AutoRound's auto_gptq export); false: the zero itself (gptq_v2). */
  zeroMinusOne: boolean;
}

/** GPTQ's qweight [k / 8, n] as the int4 format's packed codes [n, G, g / 2] (native: the hot loop at real sizes). */
function repackGptqCodes(qweight: Int32Array, n: number, k: number, g: number): Uint8Array {
  const qw = new native.Tensor('int32', [k / 8, n], 'cpu', qweight),
    q = new native.Tensor('int8', [n, int4Groups(k, g), g / 2], 'cpu');
  try {
    native.repackGptqInt4(null, q, qw);
    return q.toBytes(); // waits for the op (which also read qw)
  } finally {
    qw.dispose();
    q.dispose();
  }
}

/**
 * Maps one GPTQ-packed linear [N out, K in] onto the int4 format: codes repacked per output row,
 * scales f16 [N, G] when every zero point is 8 (symmetric), else [N, G, 2] with the zero points.
 * g_idx is accepted when it is the identity grouping (g_idx[k] = k / g); an act-order g_idx is
 * first made one by gptqActOrder (which also gives the permutation for the activations).
 */
export function gptqToInt4(
  name: string,
  t: GptqTensors,
  n: number,
  k: number,
  layout: GptqLayout,
): { bytes: Uint8Array; g: number; scale: Uint16Array; zeros: boolean } {
  const g = layout.groupSize === -1 ? Math.ceil(k / 32) * 32 : layout.groupSize;
  const G = int4Groups(k, g);
  const bad = (what: string) => {
    throw new CheckpointError('E_CHECKPOINT', `${name}: ${what}`);
  };
  if (!isInt4Group(g))
    bad(`GPTQ group_size ${layout.groupSize} is not supported (the int4 kernels take multiples of 32 up to 4096, or -1)`);
  if (k % 8 !== 0 || n % 8 !== 0) bad(`GPTQ packing needs in / out features that are multiples of 8, got [${n}, ${k}]`);
  if (t.qweight.length !== (k / 8) * n) bad(`qweight has ${t.qweight.length} elements, expected [${k / 8}, ${n}]`);
  if (t.scales.length !== G * n) bad(`scales has ${t.scales.length} elements, expected [${G}, ${n}]`);
  if (t.qzeros && t.qzeros.length !== G * (n / 8)) bad(`qzeros has ${t.qzeros.length} elements, expected [${G}, ${n / 8}]`);
  if (t.gIdx) {
    if (t.gIdx.length !== k) bad(`g_idx has ${t.gIdx.length} elements, expected ${k}`);
    for (let c = 0; c < k; c++)
      if (t.gIdx[c] !== Math.floor(c / g))
        bad(
          `g_idx reorders the input columns (desc_act / act-order, first at column ${c}: group ${t.gIdx[c]}, not ${Math.floor(c / g)}); ` +
            'sort them with gptqActOrder first',
        );
  }
  const zero = (gi: number, j: number) => {
    if (!t.qzeros) return 8;
    const z = (t.qzeros[gi * (n / 8) + (j >> 3)]! >>> (4 * (j & 7))) & 15;
    return layout.zeroMinusOne ? z + 1 : z;
  };
  let allEight = true;
  for (let gi = 0; gi < G && allEight; gi++) for (let j = 0; j < n && allEight; j++) allEight = zero(gi, j) === 8;
  const per = allEight ? 1 : 2;
  const scale = new Uint16Array(n * G * per);
  for (let j = 0; j < n; j++)
    for (let gi = 0; gi < G; gi++) {
      scale[(j * G + gi) * per] = t.scales[gi * n + j]!;
      if (per === 2) scale[(j * G + gi) * per + 1] = (t.scaleDtype === 'bf16' ? f32ToBf16 : f32ToF16)(zero(gi, j)); // exact: 0..16
    }
  return { bytes: repackGptqCodes(t.qweight, n, k, g), g, scale, zeros: per === 2 };
}

/**
 * Act-order (desc_act) GPTQ: g_idx[c] names the group of input column c, and the groups are not runs
 * of consecutive columns. Sorting the columns by group (perm = the stable argsort of g_idx) makes
 * them runs: qweight's rows are permuted so that column c of the result is column perm[c] of the
 * checkpoint, and g_idx becomes the plain grouping, which gptqToInt4 maps as usual. The linear is
 * then y = W[:, perm] x[perm], exactly W x: the activations are gathered by `perm` before it
 * (native gatherColumns; weights.ts's Linear.perm). Returns null when g_idx is already the plain
 * grouping (nothing to permute). Typed errors: a g_idx of the wrong length, a group index outside
 * [0, G), or groups whose sizes are not those of consecutive runs of group_size columns (G - 1 full
 * groups and the rest in the last), which the int4 format cannot hold.
 */
export function gptqActOrder(
  name: string,
  t: GptqTensors,
  n: number,
  k: number,
  layout: GptqLayout,
): { tensors: GptqTensors; perm: Int32Array } | null {
  const gIdx = t.gIdx;
  if (!gIdx) return null;
  const g = layout.groupSize === -1 ? Math.ceil(k / 32) * 32 : layout.groupSize;
  const G = int4Groups(k, g);
  const bad = (what: string) => {
    throw new CheckpointError('E_CHECKPOINT', `${name}: ${what}`);
  };
  if (gIdx.length !== k) bad(`g_idx has ${gIdx.length} elements, expected ${k}`);
  if (k % 8 !== 0 || n % 8 !== 0) bad(`GPTQ packing needs in / out features that are multiples of 8, got [${n}, ${k}]`);
  if (t.qweight.length !== (k / 8) * n) bad(`qweight has ${t.qweight.length} elements, expected [${k / 8}, ${n}]`);
  let plain = true;
  const count = new Int32Array(G);
  for (let c = 0; c < k; c++) {
    const gi = gIdx[c]!;
    if (!(gi >= 0 && gi < G)) bad(`g_idx[${c}] = ${gi} is not a group of ${G} (group_size ${layout.groupSize}, ${k} columns)`);
    count[gi] = count[gi]! + 1;
    plain &&= gi === Math.floor(c / g);
  }
  if (plain) return null;
  for (let gi = 0; gi < G; gi++)
    if (count[gi] !== Math.min(g, k - gi * g))
      bad(
        `act-order g_idx puts ${count[gi]} columns in group ${gi}, expected ${Math.min(g, k - gi * g)} ` +
          `(groups of group_size ${g} columns): the int4 format cannot hold uneven groups`,
      );
  // the stable argsort of g_idx: a counting sort
  const start = new Int32Array(G + 1);
  for (let gi = 0; gi < G; gi++) start[gi + 1] = start[gi]! + count[gi]!;
  const perm = new Int32Array(k);
  for (let c = 0; c < k; c++) {
    const gi = gIdx[c]!;
    perm[start[gi]!] = c;
    start[gi] = start[gi]! + 1;
  }
  // qweight [K / 8, N]: input row c's nibble sits in word (c >> 3, j) at bits 4 (c & 7)
  const qweight = new Int32Array(t.qweight.length);
  for (let c = 0; c < k; c++) {
    const from = perm[c]!,
      src = (from >> 3) * n,
      dst = (c >> 3) * n,
      sh = 4 * (from & 7),
      dh = 4 * (c & 7);
    for (let j = 0; j < n; j++) qweight[dst + j] = qweight[dst + j]! | (((t.qweight[src + j]! >>> sh) & 15) << dh);
  }
  const plainIdx = Int32Array.from({ length: k }, (_, c) => Math.floor(c / g));
  return { tensors: { ...t, qweight, gIdx: plainIdx }, perm };
}

/**
 * The GPTQ tensors (v1 layout: qzeros hold zero - 1, symmetric zero 8) of an int4-format weight
 * with f16 scales [n, G] (zero 8) and k, n multiples of 8: what `longcat quantize --to int4` writes.
 */
export function int4ToGptq(bytes: Uint8Array, scale: Uint16Array, n: number, k: number, g: number) {
  const G = int4Groups(k, g);
  const codes = unpackInt4(bytes, n, k, g);
  const qweight = new Int32Array((k / 8) * n);
  for (let i = 0; i < k / 8; i++)
    for (let j = 0; j < n; j++) {
      let w = 0;
      for (let b = 0; b < 8; b++) w |= codes[j * k + 8 * i + b]! << (4 * b);
      qweight[i * n + j] = w;
    }
  const qzeros = new Int32Array(G * (n / 8)).fill(0x77777777); // zero 8, stored as 7
  const scales = new Uint16Array(G * n);
  for (let j = 0; j < n; j++) for (let gi = 0; gi < G; gi++) scales[gi * n + j] = scale[j * G + gi]!;
  const gIdx = Int32Array.from({ length: k }, (_, c) => Math.floor(c / g));
  return { qweight, qzeros, scales, gIdx };
}

// ---- loading ------------------------------------------------------------------------------------

/** Modules kept as floats when they arrive packed: the model uses them apart (weights.ts). */
const DEQUANTIZED = /\.(kv_b_proj|eh_proj)$/;

/** A linear Int4Source made: the int4 weight and scales (or f32), and an act-order linear's column order. */
interface Made {
  weight: Tensor;
  scale: Tensor | null;
  /** `order` as a tensor (the model gathers the activations by it). */
  perm: Tensor | null;
  /** Act-order: column c of the weight is the checkpoint's column order[c] (gptqActOrder's perm). */
  order: Int32Array | null;
}

/**
 * A GPTQ / AutoRound checkpoint seen in the int4 format: `<module>.weight` of a packed linear is
 * its int4 codes (int8 [out, G, g / 2]) and `<module>.weight_scale` its group scales (f16 / bf16
 * [out, G] or [out, G, 2] with zero points), made on first use; an act-order linear also has
 * `<module>.weight_perm` (int32 [in]: its columns sorted by group, gptqActOrder; the model gathers
 * the activations by it). kv_b_proj and eh_proj come out dequantized to f32 in the checkpoint's
 * column order (the model multiplies them apart). Act-order routed experts (expertWeights): gate_proj
 * and up_proj must share one permutation, which the grouped expert kernels apply where they gather
 * the token rows (moeExperts' perm); down_proj's is absorbed at load: gate's and up's output rows are
 * permuted by it (h[perm] = silu(gate[perm] x) * up[perm] x), exactly. Every other tensor as the
 * checkpoint has it.
 */
export class Int4Source implements TensorSource {
  private made = new Map<string, Made>();
  private readonly layout: GptqLayout;

  constructor(private readonly ck: Checkpoint) {
    const q = ck.config.quantization_config;
    if (!isGptqConfig(q)) throw new CheckpointError('E_CHECKPOINT', `${ck.dir}: not a GPTQ / AutoRound checkpoint`);
    const g: GptqQuantizationConfig = q;
    this.layout = {
      bits: 4,
      groupSize: g.group_size,
      sym: g.sym,
      zeroMinusOne: !(g.checkpoint_format === 'gptq_v2' || /gptqmodel/.test(g.packing_format ?? '')),
    };
  }

  /** Every tensor this source made, to be freed with the model. */
  get created(): Tensor[] {
    return [...this.made.values()].flatMap(l => [l.weight, ...(l.scale ? [l.scale] : []), ...(l.perm ? [l.perm] : [])]);
  }

  /** The checkpoint tensors the made ones replace (the model never reads them). */
  readonly replaced = new Set<string>();

  private packed(module: string): boolean {
    return this.ck.has(`${module}.qweight`);
  }

  private module(name: string, suffix: string): string | null {
    return name.endsWith(suffix) ? name.slice(0, -suffix.length) : null;
  }

  /**
   * The packed linear `module` in the int4 format (or as f32 for DEQUANTIZED modules), cached.
   * `rows` (routed experts' gate / up under an act-order down_proj): output row r is the module's row
   * rows[r].
   */
  private linear(module: string, rows?: Int32Array): Made {
    const key = rows ? `${module}#rows` : module;
    let l = this.made.get(key);
    if (l) return l;
    const bytes = (n: string) => {
      const b = this.ck.get(n).toBytes();
      return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
    };
    for (const p of ['qweight', 'qzeros', 'scales', 'g_idx'])
      if (this.ck.has(`${module}.${p}`)) this.replaced.add(`${module}.${p}`);
    const qw = this.ck.get(`${module}.qweight`);
    const [k8, n] = qw.shape as [number, number];
    const k = 8 * k8;
    const scalesT = this.ck.get(`${module}.scales`);
    const scaleDtype = scalesT.dtype === 'bf16' ? 'bf16' : 'f16';
    const stored: GptqTensors = {
      qweight: new Int32Array(bytes(`${module}.qweight`)),
      qzeros: this.ck.has(`${module}.qzeros`) ? new Int32Array(bytes(`${module}.qzeros`)) : null,
      scales: new Uint16Array(bytes(`${module}.scales`)),
      gIdx: this.ck.has(`${module}.g_idx`) ? new Int32Array(bytes(`${module}.g_idx`)) : null,
      scaleDtype,
    };
    const act = gptqActOrder(module, stored, n, k, this.layout);
    const m = gptqToInt4(module, act ? act.tensors : stored, n, k, this.layout);
    const G = int4Groups(k, m.g);
    if (rows) {
      const rb = (G * m.g) / 2,
        rs = m.scale.length / n,
        bytes = new Uint8Array(m.bytes.length),
        scale = new Uint16Array(m.scale.length);
      for (let r = 0; r < n; r++) {
        const from = rows[r]!;
        bytes.set(m.bytes.subarray(from * rb, (from + 1) * rb), r * rb);
        scale.set(m.scale.subarray(from * rs, (from + 1) * rs), r * rs);
      }
      m.bytes = bytes;
      m.scale = scale;
    }
    if (DEQUANTIZED.test(module)) {
      const codes = unpackInt4(m.bytes, n, k, m.g),
        per = m.zeros ? 2 : 1,
        f = scaleDtype === 'bf16' ? bf16ToF32 : f16ToF32;
      const w = new Float32Array(n * k);
      for (let r = 0; r < n; r++)
        for (let c = 0; c < k; c++) {
          const at = (r * G + Math.floor(c / m.g)) * per;
          const s = f(m.scale[at]!),
            z = m.zeros ? f(m.scale[at + 1]!) : 8;
          w[r * k + (act ? act.perm[c]! : c)] = Math.fround(codes[r * k + c]! * s - z * s); // the checkpoint's column order
        }
      l = { weight: new native.Tensor('f32', [n, k], 'cpu', w), scale: null, perm: null, order: null };
    } else {
      l = {
        weight: int4WeightTensor(m.bytes, n, k, m.g),
        scale: new native.Tensor(scaleDtype, m.zeros ? [n, G, 2] : [n, G], 'cpu', m.scale),
        perm: act ? new native.Tensor('int32', [k], 'cpu', act.perm) : null,
        order: act ? act.perm : null,
      };
    }
    this.made.set(key, l);
    return l;
  }

  has(name: string): boolean {
    const w = this.module(name, '.weight'),
      s = this.module(name, '.weight_scale'),
      p = this.module(name, '.weight_perm');
    if (w !== null && this.packed(w)) return true;
    if (s !== null && this.packed(s)) return !DEQUANTIZED.test(s);
    if (p !== null && this.packed(p)) return !DEQUANTIZED.test(p) && this.linear(p).perm !== null;
    return this.ck.has(name);
  }

  get(name: string): Tensor {
    const w = this.module(name, '.weight'),
      s = this.module(name, '.weight_scale'),
      p = this.module(name, '.weight_perm');
    if (w !== null && this.packed(w)) return this.linear(w).weight;
    if (s !== null && this.packed(s) && !DEQUANTIZED.test(s)) return this.linear(s).scale!;
    if (p !== null && this.packed(p) && this.linear(p).perm) return this.linear(p).perm!;
    return this.ck.get(name);
  }

  expertWeights(layer: number, e: number) {
    const p = `model.layers.${layer}.mlp.experts.${e}`;
    if (!this.packed(`${p}.gate_proj`)) return this.ck.expertWeights(layer, e);
    const d = this.linear(`${p}.down_proj`);
    const g = this.linear(`${p}.gate_proj`, d.order ?? undefined),
      u = this.linear(`${p}.up_proj`, d.order ?? undefined);
    const gp = g.order,
      up = u.order;
    if ((gp === null) !== (up === null) || (gp && up && gp.some((v, i) => v !== up[i])))
      throw new CheckpointError(
        'E_CHECKPOINT',
        `${p}: gate_proj and up_proj have different act-order (desc_act) column orders (g_idx); the grouped expert ` +
          'kernels gather one order per expert for both (GPTQ gives them the same one: they share their input)',
      );
    return {
      gate: g.weight,
      up: u.weight,
      down: d.weight,
      gateScale: g.scale,
      upScale: u.scale,
      downScale: d.scale,
      perm: g.perm,
    };
  }
}
