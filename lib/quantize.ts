// Weight quantization of a BF16 / F16 / F32 checkpoint: `quantizeCheckpoint` writes a quantized
// copy shard by shard (block FP8 in the official layout of SPEC 7.1, this engine's int8 rows
// format, config.ts Int8RowsQuantizationConfig, or int4 in the GPTQ packing), and `QuantizingSource` quantizes the same linears
// while a model loads (loadModel's `quantize`). Which linears are quantized comes from one place:
// quantizedSpecs of the output config.
import { closeSync, openSync, readSync } from 'node:fs';
import { copyFile, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { native } from './native.js';
import { type Tensor, empty } from './tensor.js';
import { ArgumentError, CheckpointError } from './errors.js';
import { synchronize } from './device.js';
import {
  INT8_ROWS_METHOD,
  type LongcatConfig,
  type QuantizationConfig,
  type TensorSpec,
  isQuantizedModule,
  parseConfig,
  requiredTensors,
} from './config.js';
import { INT4_GROUP, int4Groups, int4ToGptq } from './int4.js';
import { type Checkpoint, type CheckpointTensor, openCheckpoint } from './checkpoint.js';
import { type TensorToWrite, writeSafetensors } from './safetensors.js';
import type { TensorSource } from './model/weights.js';

/** The weight formats `quantize` writes and loadModel's `quantize` makes. */
export type QuantizeFormat = 'fp8' | 'int8' | 'int4';

/**
 * Checks a requested format: 'fp8' (e4m3 codes, one f32 scale per 128x128 block), 'int8'
 * (symmetric per-row) or 'int4' (symmetric, groups of 128 columns with f16 scales; written in the
 * GPTQ packing, config.ts GptqQuantizationConfig).
 */
export function checkQuantizeFormat(to: unknown, where: string): QuantizeFormat {
  if (to === 'fp8' || to === 'int8' || to === 'int4') return to;
  throw new ArgumentError(
    'E_ARGUMENT',
    `${where}: unknown weight format ${JSON.stringify(to)} (expected 'fp8', 'int8' or 'int4')`,
  );
}

/**
 * The quantization_config a BF16 checkpoint gets for `format`. ignored_layers lists every module
 * kept in its original dtype (as the official FP8 releases do): embeddings, lm_head, norms, the
 * router, its bias, the N-gram tables and projections, (int8, int4) kv_b_proj and (int4) eh_proj.
 */
export function quantizationConfigFor(config: LongcatConfig, format: QuantizeFormat, mtp: boolean): QuantizationConfig {
  const q: QuantizationConfig =
    format === 'fp8'
      ? {
          quant_method: 'fp8',
          fmt: 'e4m3',
          activation_scheme: 'dynamic',
          weight_block_size: [128, 128],
          ignored_layers: [],
          disable_quant_module: [],
        }
      : format === 'int4'
        ? {
            quant_method: 'gptq',
            bits: 4,
            group_size: INT4_GROUP,
            sym: true,
            desc_act: false,
            checkpoint_format: 'gptq',
            ignored_layers: [],
            disable_quant_module: [],
          }
        : { quant_method: INT8_ROWS_METHOD, bits: 8, ignored_layers: [], disable_quant_module: [] };
  for (const [name, spec] of quantizedSpecs(config, q, mtp))
    if (!spec.quantized && spec.role !== 'scale') q.ignored_layers.push(name.replace(/\.weight$/, ''));
  return q;
}

/**
 * Every tensor of `config`'s checkpoint with `quantized` set on the linears `q` quantizes. For int4
 * (GPTQ) those are the linears isQuantizedModule takes whose [out, in] are whole 8-code words.
 */
function quantizedSpecs(config: LongcatConfig, q: QuantizationConfig, mtp: boolean): Map<string, TensorSpec> {
  const specs = requiredTensors({ ...config, quantization_config: q }, { mtp });
  if (q.quant_method !== 'gptq') return specs;
  // GPTQ specs are the float ones (the packed names replace `.weight`); the linears the int8 rows
  // format quantizes are the candidates.
  const { ignored_layers, disable_quant_module } = q;
  const rows = requiredTensors(
    { ...config, quantization_config: { quant_method: INT8_ROWS_METHOD, bits: 8, ignored_layers, disable_quant_module } },
    { mtp },
  );
  for (const [name, spec] of specs)
    if (rows.get(name)?.quantized) {
      const [n, k] = spec.shape as [number, number];
      spec.quantized = isQuantizedModule(name.slice(0, -'.weight'.length), q) && n % 8 === 0 && k % 8 === 0;
    }
  return specs;
}

/** A quantized linear: its codes and scale, as tensors on the CPU. */
interface QuantizedLinear {
  weight: Tensor;
  scale: Tensor;
}

/** Quantizes one float weight [n, k] on its device with the native ops (queued on the default stream). */
function quantizeWeight(w: Tensor, format: QuantizeFormat): QuantizedLinear {
  const [n, k] = w.shape as [number, number];
  let src = w;
  if (w.dtype !== 'f32' && w.dtype !== 'bf16') {
    // F16 (the ops take f32 / bf16): widened exactly first.
    src = empty(w.shape, { dtype: 'f32', device: w.device });
    native.convert(null, src, w);
  }
  try {
    if (format === 'fp8') {
      const weight = empty([n, k], { dtype: 'fp8_e4m3', device: w.device });
      const scale = empty([Math.ceil(n / 128), Math.ceil(k / 128)], { dtype: 'f32', device: w.device });
      native.quantizeFp8Blocks(null, weight, scale, src);
      return { weight, scale };
    }
    if (format === 'int4') {
      const G = int4Groups(k, INT4_GROUP);
      const weight = empty([n, G, INT4_GROUP / 2], { dtype: 'int8', device: w.device });
      const scale = empty([n, G], { dtype: 'f16', device: w.device });
      native.quantizeInt4(null, weight, scale, src);
      return { weight, scale };
    }
    const weight = empty([n, k], { dtype: 'int8', device: w.device });
    const scale = empty([n], { dtype: 'f32', device: w.device });
    native.quantizeInt8Rows(null, weight, scale, src);
    return { weight, scale };
  } finally {
    if (src !== w) {
      src.toBytes(); // waits for the op that reads it before it is freed
      src.dispose();
    }
  }
}

const scaleSuffix = (format: QuantizeFormat) => (format === 'fp8' ? '.weight_scale_inv' : '.weight_scale');

/**
 * A checkpoint seen through a quantizer (loadModel's `quantize`): the linears the format quantizes
 * come out as codes + scale (made on first use, cached), every other tensor as the checkpoint has it.
 */
export class QuantizingSource implements TensorSource {
  private made = new Map<string, QuantizedLinear>();
  private readonly specs: Map<string, TensorSpec>;

  constructor(
    private readonly ck: Checkpoint,
    private readonly format: QuantizeFormat,
  ) {
    if (ck.config.quantization_config)
      throw new ArgumentError(
        'E_ARGUMENT',
        `loadModel: quantize: ${ck.dir} is already quantized (quant_method '${ck.config.quantization_config.quant_method}'); quantize needs a BF16 / F16 / F32 checkpoint`,
      );
    this.specs = quantizedSpecs(ck.config, quantizationConfigFor(ck.config, format, ck.hasMtp), ck.hasMtp);
  }

  /** Every tensor this source made (codes and scales), to be freed with the model. */
  get created(): Tensor[] {
    return [...this.made.values()].flatMap(l => [l.weight, l.scale]);
  }

  /** The checkpoint tensors the made ones replace (the model never reads them; packed experts'
   *  stacked tensors are views and stay counted as mapped). */
  readonly replaced = new Set<string>();

  /** The quantized `weightName` (the tensor `weight()` gives, quantized on first use). */
  private quantized(weightName: string, weight?: () => Tensor): QuantizedLinear {
    let l = this.made.get(weightName);
    if (!l) {
      if (!weight) this.replaced.add(weightName);
      l = quantizeWeight(weight ? weight() : this.ck.get(weightName), this.format);
      synchronize('cpu'); // the model's streams (or a copy to a GPU) read it next
      this.made.set(weightName, l);
    }
    return l;
  }

  private weightOfScale(name: string): string | null {
    const suffix = scaleSuffix(this.format);
    if (!name.endsWith(suffix)) return null;
    const weight = `${name.slice(0, -suffix.length)}.weight`;
    return this.specs.get(weight)?.quantized ? weight : null;
  }

  has(name: string): boolean {
    return this.weightOfScale(name) !== null || this.ck.has(name);
  }

  get(name: string): Tensor {
    const of = this.weightOfScale(name);
    if (of) return this.quantized(of).scale;
    if (this.specs.get(name)?.quantized) return this.quantized(name).weight;
    return this.ck.get(name);
  }

  expertWeights(layer: number, e: number) {
    const p = `model.layers.${layer}.mlp.experts.${e}`;
    // Packed (transformers v5) experts come as views of the stacked tensors, quantized under their original names.
    const packed = this.ck.expertLayouts[layer] === 'packed' ? this.ck.expertWeights(layer, e) : null;
    const l = (m: 'gate' | 'up' | 'down') => this.quantized(`${p}.${m}_proj.weight`, packed ? () => packed[m] : undefined);
    const g = l('gate'),
      u = l('up'),
      d = l('down');
    return { gate: g.weight, up: u.weight, down: d.weight, gateScale: g.scale, upScale: u.scale, downScale: d.scale };
  }
}

// ---- quantizeCheckpoint ---------------------------------------------------------------------

export interface QuantizeProgress {
  /** The tensor just handled (for a quantized linear: its weight). */
  tensor: string;
  /** 'quantized' (codes + scale written) or 'copied' (kept in its dtype). */
  action: 'quantized' | 'copied';
  /** The output shard it goes to. */
  file: string;
  /** Input tensors handled so far / in all. */
  done: number;
  total: number;
  /** Input bytes handled so far / in all. */
  bytes: number;
  totalBytes: number;
}

export interface QuantizeOptions {
  to: QuantizeFormat;
  onProgress?: (p: QuantizeProgress) => void;
}

export interface QuantizeResult {
  dir: string;
  format: QuantizeFormat;
  /** Linears quantized, tensors copied unchanged. */
  quantized: number;
  copied: number;
  /** The shards written (absolute paths). */
  files: string[];
  inputBytes: number;
  outputBytes: number;
}

/** Files of a checkpoint directory that are weights in some format: never copied. */
const WEIGHT_FILE = /\.(safetensors|bin|pt|pth|gguf|h5|msgpack|ckpt|onnx)$/i;
const INDEX_FILE = 'model.safetensors.index.json';

/** Reads `bytes` bytes of `file` from `offset` in chunks, for a tensor copied as it is. */
function* fileChunks(file: string, offset: number, bytes: number): Iterable<Uint8Array> {
  const fd = openSync(file, 'r');
  try {
    const CHUNK = 8 << 20;
    for (let at = 0; at < bytes; ) {
      const buf = new Uint8Array(Math.min(CHUNK, bytes - at));
      let got = 0;
      while (got < buf.length) {
        const n = readSync(fd, buf, got, buf.length - got, offset + at + got);
        if (n === 0) throw new CheckpointError('E_CHECKPOINT', `${file}: ended while reading a tensor (truncated?)`);
        got += n;
      }
      at += buf.length;
      yield buf;
    }
  } finally {
    closeSync(fd);
  }
}

async function checkOutputDir(out: string): Promise<void> {
  let entries: string[];
  try {
    const s = await stat(out);
    if (!s.isDirectory()) throw new ArgumentError('E_ARGUMENT', `quantize: output ${out} exists and is not a directory`);
    entries = await readdir(out);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (entries.length)
    throw new ArgumentError(
      'E_ARGUMENT',
      `quantize: output directory ${out} is not empty (${entries.length} entries, e.g. '${entries[0]}'); give a new or empty directory`,
    );
}

/**
 * Writes `inDir`'s checkpoint with its eligible linears quantized to `outDir` (which must not exist
 * or be empty): one output shard per input shard, same file names, tensors in their original names
 * (FP8: `.weight` F8_E4M3 + `.weight_scale_inv` F32 [ceil(out/128), ceil(in/128)], SPEC 7.1; int8:
 * `.weight` I8 + `.weight_scale` F32 [out]; int4: GPTQ's `.qweight` / `.qzeros` / `.scales` / `.g_idx`
 * in place of `.weight`, config.ts GptqQuantizationConfig), every other tensor copied byte for byte; the index's
 * weight_map extended with the scales; config.json with the quantization_config (written last, so
 * an interrupted run never leaves a directory that opens as a checkpoint); tokenizer, generation
 * config, chat template and other non-weight files copied. Streams shard by shard: each weight is
 * read from the mapped input and quantized on the CPU; a shard's quantized bytes are held until it
 * is written (about one output shard of memory), copied tensors are streamed.
 * @throws ArgumentError (E_ARGUMENT: format, an already-quantized input, a non-empty output),
 *   CheckpointError / ConfigError (the input).
 */
export async function quantizeCheckpoint(inDir: string, outDir: string, opts: QuantizeOptions): Promise<QuantizeResult> {
  if (typeof opts !== 'object' || opts === null) throw new ArgumentError('E_ARGUMENT', 'quantize: options must be an object');
  const format = checkQuantizeFormat(opts.to, 'quantize: to');
  const src = path.resolve(inDir),
    out = path.resolve(outDir);
  await checkOutputDir(out);
  using ck = await openCheckpoint(src);
  const c = ck.config;
  if (c.quantization_config)
    throw new ArgumentError(
      'E_ARGUMENT',
      `quantize: ${src} is already quantized (quant_method '${c.quantization_config.quant_method}'); quantize reads a BF16 / F16 / F32 checkpoint`,
    );
  if (ck.expertLayouts.includes('packed'))
    throw new ArgumentError(
      'E_ARGUMENT',
      `quantize: ${src} stores its experts in the packed transformers v5 layout; quantize writes the original per-expert names and reads only that layout`,
    );
  const q = quantizationConfigFor(c, format, ck.hasMtp);
  const rawConfig = JSON.parse(await readFile(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  const outConfigJson = { ...rawConfig, quantization_config: q };
  const outConfig = parseConfig(outConfigJson, path.join(out, 'config.json'));
  const specs = quantizedSpecs(outConfig, outConfig.quantization_config!, ck.hasMtp);

  await mkdir(out, { recursive: true });
  const all = [...ck.tensors.values()];
  const totalBytes = all.reduce((a, t) => a + t.nbytes, 0);
  const suffix = scaleSuffix(format);
  const fileOf = new Map<string, string>(); // output tensor -> shard basename
  const sizeOf = new Map<string, number>(); // output tensor -> bytes
  const packedNames = new Map<string, string[]>(); // int4: input weight -> its GPTQ tensors
  let done = 0,
    bytes = 0,
    quantized = 0,
    copied = 0,
    outputBytes = 0;
  const files: string[] = [];
  for (const file of ck.files) {
    const base = path.basename(file);
    const target = path.join(out, base);
    const inShard: CheckpointTensor[] = all.filter(t => t.file === file).sort((a, b) => a.offset - b.offset);
    const items: TensorToWrite[] = [];
    for (const t of inShard) {
      if (specs.get(t.name)?.quantized && format === 'int4') {
        // GPTQ v1 packing under the module's name: qweight, qzeros, scales, g_idx (config.ts GptqQuantizationConfig).
        const l = quantizeWeight(ck.get(t.name), format);
        try {
          const [n, k] = t.shape as [number, number];
          const sb = l.scale.toBytes();
          const g = int4ToGptq(l.weight.toBytes(), new Uint16Array(sb.buffer, sb.byteOffset, sb.length / 2), n, k, INT4_GROUP);
          const G = int4Groups(k, INT4_GROUP);
          const module = t.name.replace(/\.weight$/, '');
          const parts: TensorToWrite[] = [
            { name: `${module}.qweight`, dtype: 'I32', shape: [k / 8, n], data: new Uint8Array(g.qweight.buffer) },
            { name: `${module}.qzeros`, dtype: 'I32', shape: [G, n / 8], data: new Uint8Array(g.qzeros.buffer) },
            { name: `${module}.scales`, dtype: 'F16', shape: [G, n], data: new Uint8Array(g.scales.buffer) },
            { name: `${module}.g_idx`, dtype: 'I32', shape: [k], data: new Uint8Array(g.gIdx.buffer) },
          ];
          items.push(...parts);
          for (const part of parts) {
            const nb = (part.data as Uint8Array).length;
            fileOf.set(part.name, base);
            sizeOf.set(part.name, nb);
            outputBytes += nb;
          }
          packedNames.set(
            t.name,
            parts.map(part => part.name),
          );
        } finally {
          l.weight.dispose();
          l.scale.dispose();
        }
        quantized++;
      } else if (specs.get(t.name)?.quantized) {
        const l = quantizeWeight(ck.get(t.name), format);
        try {
          const codes = l.weight.toBytes(),
            scale = l.scale.toBytes();
          items.push({ name: t.name, dtype: l.weight.dtype, shape: t.shape, data: codes });
          const scaleName = `${t.name.replace(/\.weight$/, '')}${suffix}`;
          items.push({ name: scaleName, dtype: 'F32', shape: l.scale.shape, data: scale });
          fileOf.set(scaleName, base);
          sizeOf.set(t.name, codes.length).set(scaleName, scale.length);
          outputBytes += codes.length + scale.length;
        } finally {
          l.weight.dispose();
          l.scale.dispose();
        }
        quantized++;
      } else {
        items.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: () => fileChunks(file, t.offset, t.nbytes) });
        sizeOf.set(t.name, t.nbytes);
        outputBytes += t.nbytes;
        copied++;
      }
      fileOf.set(t.name, base);
      bytes += t.nbytes;
      opts.onProgress?.({
        tensor: t.name,
        action: specs.get(t.name)?.quantized ? 'quantized' : 'copied',
        file: target,
        done: ++done,
        total: all.length,
        bytes,
        totalBytes,
      });
    }
    await writeSafetensors(target, items, { format: 'pt' });
    files.push(target);
  }

  // The index: the input's weight_map (the auxiliary MTP file of Lite stays outside it), plus the scales.
  const indexIn = path.join(src, INDEX_FILE);
  const hadIndex = await stat(indexIn).then(
    s => s.isFile(),
    () => false,
  );
  if (hadIndex) {
    const index = JSON.parse(await readFile(indexIn, 'utf8')) as { weight_map: Record<string, string> } & Record<string, unknown>;
    const weightMap: Record<string, string> = {};
    for (const name of Object.keys(index.weight_map)) {
      const packed = packedNames.get(name);
      if (packed) {
        for (const part of packed) weightMap[part] = fileOf.get(part)!;
        continue;
      }
      weightMap[name] = fileOf.get(name)!;
      const scale = `${name.replace(/\.weight$/, '')}${suffix}`;
      if (specs.get(name)?.quantized) weightMap[scale] = fileOf.get(scale)!;
    }
    const meta = typeof index.metadata === 'object' && index.metadata !== null ? index.metadata : {};
    const total_size = Object.keys(weightMap).reduce((a, n) => a + sizeOf.get(n)!, 0);
    await writeFile(
      path.join(out, INDEX_FILE),
      `${JSON.stringify({ ...index, metadata: { ...meta, total_size }, weight_map: weightMap }, null, 2)}\n`,
    );
  }
  for (const f of await readdir(src, { withFileTypes: true }))
    if (f.isFile() && !WEIGHT_FILE.test(f.name) && f.name !== INDEX_FILE && f.name !== 'config.json')
      await copyFile(path.join(src, f.name), path.join(out, f.name));
  await writeFile(path.join(out, 'config.json'), `${JSON.stringify(outConfigJson, null, 2)}\n`);
  return { dir: out, format, quantized, copied, files, inputBytes: totalBytes, outputBytes };
}
