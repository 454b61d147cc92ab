// A checkpoint directory: config, shard headers (validated), every required tensor checked, and
// tensors served as memory-mapped native Tensors (never copied through the JS heap).
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { native } from './native.js';
import { AbortError, ArgumentError, CheckpointError, ConfigError, DisposedError, showValue } from './errors.js';
import {
  type DerivedConstants,
  type LongcatConfig,
  type TensorSpec,
  FLOAT_DTYPES,
  deriveConstants,
  expertPrefix,
  isGptqConfig,
  parseConfig,
  requiredTensors,
} from './config.js';
import { type SafetensorsDType, type SafetensorsHeader, readSafetensorsHeader } from './safetensors.js';
import { checkContained, readRegularText } from './files.js';
import type { DType, Tensor } from '../types/native.js';
import type { MappedFile, MappingSet, MmapAdvice } from '../types/ops-mmap.js';
import { AUXILIARY_FILE } from './config-ngram.js';

export interface GenerationConfig {
  bos_token_id?: number;
  eos_token_id?: number | number[];
  pad_token_id?: number;
  [key: string]: unknown;
}

export interface CheckpointTensor {
  name: string;
  /** Absolute path of the shard. */
  file: string;
  dtype: SafetensorsDType;
  /** The engine dtype, null when unsupported (U8, BOOL, F64, ...). */
  nativeDtype: DType | null;
  shape: number[];
  /** Absolute byte offset in the file. */
  offset: number;
  nbytes: number;
}

/** One routed expert's weights, as views sharing the mapped storage. */
export interface ExpertWeights {
  gate: Tensor;
  up: Tensor;
  down: Tensor;
  gateScale?: Tensor;
  upScale?: Tensor;
  downScale?: Tensor;
}

/** A linear layer's weight and, for FP8 / int8, its scale (block scales / row scales). */
export interface LinearWeights {
  weight: Tensor;
  scale?: Tensor;
}

export interface LoadProgress {
  phase: 'map';
  /** The shard just mapped. */
  file: string;
  filesDone: number;
  files: number;
  /** Bytes of the shards mapped so far / in all. */
  bytes: number;
  totalBytes: number;
}

export interface OpenCheckpointOptions {
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
  /** madvise for every shard (default 'normal'; 'willneed' starts reading ahead). */
  advice?: MmapAdvice;
}

export type ExpertLayout = 'original' | 'packed';

export interface Checkpoint {
  readonly dir: string;
  readonly config: LongcatConfig;
  readonly derived: DerivedConstants;
  readonly generationConfig: GenerationConfig | null;
  readonly tensors: ReadonlyMap<string, CheckpointTensor>;
  /** Tensors present but not part of the model (reported, not an error). */
  readonly unexpected: readonly string[];
  /** FP8 linears (config has an FP8 quantization_config). */
  readonly fp8: boolean;
  /** The quantized linears' format: 'fp8' (block FP8), 'int8' (int8 rows), 'int4' (GPTQ / AutoRound
   *  packing, read through lib/int4.ts's Int4Source), or null (none). */
  readonly quantization: 'fp8' | 'int8' | 'int4' | null;
  /** The MTP module's tensors are present (and were validated). */
  readonly hasMtp: boolean;
  /** Per logical layer: per-expert tensors (original) or HF packed gate_up_proj / down_proj. */
  readonly expertLayouts: readonly ExpertLayout[];
  /** Bytes of all shards. */
  readonly totalBytes: number;
  /** The shards, absolute paths. */
  readonly files: readonly string[];
  has(name: string): boolean;
  /** The tensor, memory-mapped and cached (the same object on each call until close()). */
  get(name: string): Tensor;
  /** `${module}.weight` and, when present, `${module}.weight_scale_inv` (FP8) or `.weight_scale` (int8). */
  linear(module: string): LinearWeights;
  /** Expert `e` of logical layer `layer` in either layout; views are cached. */
  expertWeights(layer: number, e: number): ExpertWeights;
  /**
   * Throws CheckpointError (E_CHECKPOINT) naming the shard when one changed on disk since it was
   * mapped (replaced, truncated, written in place, deleted): tensors over it would fault or read
   * the new bytes. One stat() and one fstat() per shard. E_DISPOSED after close().
   */
  verify(): void;
  /**
   * The check before each CPU forward pass: verify() without the path lookups, in one native call
   * (native MappingSet: on a local filesystem one read() of inotify events for all shards, else
   * one fstat() per shard). Sees a shard truncated, extended, written in place, deleted or renamed
   * over; misses a shard replaced while the mapped file keeps another name (a hard link: the
   * mapping is unharmed) and, on a local filesystem, a write through another process's shared
   * mapping of the file.
   */
  verifyMappings(): void;
  /** Disposes every tensor handed out and drops the mappings. Idempotent. */
  close(): void;
  [Symbol.dispose](): void;
}

/** The scale tensor of a quantized linear `module`: `.weight_scale_inv` (FP8) or `.weight_scale` (int8 rows), if `has` it. */
export function scaleNameOf(module: string, has: (name: string) => boolean): string | null {
  for (const s of [`${module}.weight_scale_inv`, `${module}.weight_scale`]) if (has(s)) return s;
  return null;
}

function ckptError(msg: string, cause?: unknown): CheckpointError {
  return new CheckpointError('E_CHECKPOINT', msg, cause === undefined ? undefined : { cause });
}

async function readJson(file: string, optional: boolean): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await readRegularText(file);
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (optional && code === 'ENOENT') return undefined;
    throw ckptError(`${file}: cannot read (${code ?? 'error'}): ${(e as Error).message}`, e);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw ckptError(`${file}: not valid JSON (${(e as Error).message})`, e);
  }
}

/**
 * generation_config.json's token ids (eos_token_id: an id or a non-empty list; bos_token_id,
 * pad_token_id: an id; null or absent allowed) must be token ids of the model's vocabulary.
 */
function checkGenerationConfig(gen: GenerationConfig, file: string, vocab: number): void {
  const isId = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v < vocab;
  for (const field of ['eos_token_id', 'bos_token_id', 'pad_token_id'] as const) {
    const v = gen[field];
    if (v === undefined || v === null) continue;
    const ok = field === 'eos_token_id' && Array.isArray(v) ? v.length > 0 && v.every(isId) : isId(v);
    if (!ok)
      throw Object.assign(
        new ConfigError(
          'E_CONFIG',
          `${file}: field '${field}' must be a token id in [0, ${vocab})${field === 'eos_token_id' ? ' or a non-empty list of them' : ''}, got ${showValue(v)}`,
        ),
        { file, field },
      );
  }
}

const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

/**
 * Opens a checkpoint directory: config.json (+ generation_config.json), then
 * model.safetensors.index.json (weight_map) or a single model.safetensors (or, lacking both,
 * every *.safetensors). Validates every shard header and every required tensor (name, shape,
 * dtype class). Accepts the original Meituan expert layout and the HF packed one
 * (`mlp.experts.gate_up_proj` [E, 2I, H] + `mlp.experts.down_proj` [E, H, I]).
 * @throws ConfigError (E_CONFIG), CheckpointError (E_CHECKPOINT), AbortError (E_ABORTED)
 */
export async function openCheckpoint(dir: string, opts: OpenCheckpointOptions = {}): Promise<Checkpoint> {
  const root = path.resolve(dir);
  const checkAbort = () => {
    if (opts.signal?.aborted)
      throw new AbortError('E_ABORTED', `openCheckpoint(${root}): aborted`, { cause: opts.signal.reason });
  };
  checkAbort();
  try {
    if (!(await stat(root)).isDirectory()) throw ckptError(`${root}: not a directory`);
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    throw ckptError(`${root}: cannot open checkpoint directory (${(e as NodeJS.ErrnoException).code ?? 'error'})`, e);
  }
  const configFile = path.join(root, 'config.json');
  const configJson = await readJson(configFile, true);
  if (configJson === undefined) throw ckptError(`${root}: no config.json (not a checkpoint directory?)`);
  const config = parseConfig(configJson, configFile);
  const genFile = path.join(root, 'generation_config.json');
  const gen = await readJson(genFile, true);
  if (gen !== undefined && (typeof gen !== 'object' || gen === null || Array.isArray(gen)))
    throw new ConfigError('E_CONFIG', `${genFile}: expected a JSON object`);
  const generationConfig = (gen as GenerationConfig | undefined) ?? null;
  if (generationConfig) checkGenerationConfig(generationConfig, genFile, config.vocab_size);
  const realRoot = await realpath(root);

  // Which files hold which tensors.
  const indexFile = path.join(root, 'model.safetensors.index.json');
  const index = await readJson(indexFile, true);
  let weightMap: Map<string, string> | null = null;
  let files: string[];
  const inside = (f: string, where: string) => {
    const abs = path.resolve(root, f);
    if (!abs.startsWith(root + path.sep)) throw ckptError(`${where}: shard '${f}' is outside the checkpoint directory`);
    return abs;
  };
  if (index !== undefined) {
    const wm = (index as { weight_map?: unknown } | null)?.weight_map;
    if (typeof wm !== 'object' || wm === null || Array.isArray(wm))
      throw ckptError(`${indexFile}: 'weight_map' must be an object of tensor name -> file`);
    weightMap = new Map();
    for (const [name, f] of Object.entries(wm)) {
      if (typeof f !== 'string' || !f)
        throw ckptError(`${indexFile}: weight_map['${name}'] must be a file name, got ${showValue(f)}`);
      weightMap.set(name, inside(f, indexFile));
    }
    files = [...new Set(weightMap.values())].sort();
    // LongCat-Flash-Lite ships its MTP tensors in model-auxiliary.safetensors, outside the index (SPEC-LITE 2.2).
    const aux = path.join(root, AUXILIARY_FILE);
    if (!files.includes(aux) && (await stat(aux).catch(() => null))?.isFile()) files.push(aux);
    for (const f of files) await checkContained(root, realRoot, f, indexFile);
  } else {
    const single = path.join(root, 'model.safetensors');
    try {
      await stat(single);
      files = [single];
      await checkContained(root, realRoot, single, root);
    } catch (e) {
      if (e instanceof CheckpointError) throw e;
      const { readdir } = await import('node:fs/promises');
      files = (await readdir(root))
        .filter(f => f.endsWith('.safetensors'))
        .sort()
        .map(f => path.join(root, f));
      if (!files.length) throw ckptError(`${root}: no model.safetensors.index.json, model.safetensors or *.safetensors file`);
      for (const f of files) await checkContained(root, realRoot, f, root);
    }
  }

  // Headers first (validated), then mappings.
  const headers: SafetensorsHeader[] = [];
  for (const f of files) {
    checkAbort();
    headers.push(await readSafetensorsHeader(f));
  }
  const tensors = new Map<string, CheckpointTensor>();
  for (const h of headers)
    for (const t of h.tensors.values()) {
      const prev = tensors.get(t.name);
      if (prev)
        throw ckptError(`${root}: tensor '${t.name}' is in both ${path.basename(prev.file)} and ${path.basename(h.file)}`);
      tensors.set(t.name, {
        name: t.name,
        file: h.file,
        dtype: t.dtype,
        nativeDtype: t.nativeDtype,
        shape: t.shape,
        offset: t.offset,
        nbytes: t.nbytes,
      });
    }
  if (weightMap)
    for (const [name, f] of weightMap) {
      const t = tensors.get(name);
      if (!t) throw ckptError(`${indexFile}: tensor '${name}' is mapped to ${path.basename(f)} but that file does not hold it`);
      if (t.file !== f)
        throw ckptError(
          `${indexFile}: tensor '${name}' is mapped to ${path.basename(f)} but is stored in ${path.basename(t.file)}`,
        );
    }

  // What must be there.
  const qc = config.quantization_config;
  const quantization = !qc ? null : qc.quant_method === 'fp8' ? 'fp8' : isGptqConfig(qc) ? 'int4' : 'int8';
  const hasMtp = [...tensors.keys()].some(n => n.startsWith('model.mtp.'));
  const required = requiredTensors(config, { mtp: hasMtp });
  const derived = deriveConstants(config);
  const expertLayouts: ExpertLayout[] = [];
  const packedSpecs = new Map<string, TensorSpec>();
  const I = config.expert_ffn_hidden_size,
    H = config.hidden_size,
    E = config.n_routed_experts;
  for (let L = 0; L < config.num_layers; L++) {
    const gu = `model.layers.${L}.mlp.experts.gate_up_proj`;
    const dn = `model.layers.${L}.mlp.experts.down_proj`;
    if (tensors.has(gu) || tensors.has(dn)) {
      if (quantization && [gu, dn].some(n => ['F8_E4M3', 'I8'].includes(tensors.get(n)?.dtype ?? '')))
        throw ckptError(
          `${root}: layer ${L} has ${quantization === 'fp8' ? 'FP8' : 'int8'} experts in the packed (transformers v5) layout, which is not supported; use the original per-expert layout`,
        );
      expertLayouts.push('packed');
      for (let e = 0; e < E; e++)
        for (const w of ['gate_proj', 'up_proj', 'down_proj']) {
          required.delete(`${expertPrefix(L, e)}.${w}.weight`);
          required.delete(`${expertPrefix(L, e)}.${w}.weight_scale_inv`);
          required.delete(`${expertPrefix(L, e)}.${w}.weight_scale`);
        }
      packedSpecs.set(gu, { shape: [E, 2 * I, H], dtypes: FLOAT_DTYPES, role: 'linear', quantized: false });
      packedSpecs.set(dn, { shape: [E, H, I], dtypes: FLOAT_DTYPES, role: 'linear', quantized: false });
    } else {
      expertLayouts.push('original');
    }
  }

  // GPTQ / AutoRound: a linear whose files hold `.qweight` is stored packed (config.ts GptqQuantizationConfig).
  if (isGptqConfig(qc))
    for (const [name, spec] of [...required]) {
      if (spec.role !== 'linear' || !name.endsWith('.weight')) continue;
      const module = name.slice(0, -'.weight'.length);
      if (!tensors.has(`${module}.qweight`)) continue;
      const [N, K] = spec.shape as [number, number];
      if (K % 8 !== 0 || N % 8 !== 0)
        throw ckptError(`${root}: '${module}' is GPTQ-packed but [${N}, ${K}] is not a whole number of 8-code words`);
      const G = qc.group_size === -1 ? 1 : Math.ceil(K / qc.group_size);
      const part = (shape: number[], dtypes: SafetensorsDType[]): TensorSpec => ({
        shape,
        dtypes,
        role: 'scale',
        quantized: false,
        scaleOf: `${module}.qweight`,
      });
      required.delete(name);
      required.set(`${module}.qweight`, { shape: [K / 8, N], dtypes: ['I32'], role: 'linear', quantized: true });
      required.set(`${module}.qzeros`, part([G, N / 8], ['I32']));
      required.set(`${module}.scales`, part([G, N], ['F16', 'BF16']));
      if (tensors.has(`${module}.g_idx`)) required.set(`${module}.g_idx`, part([K], ['I32']));
    }

  const missing: string[] = [];
  const check = (name: string, spec: TensorSpec) => {
    const t = tensors.get(name);
    if (!t) {
      missing.push(name);
      return;
    }
    let okShape = sameShape(t.shape, spec.shape);
    // transformers v5 declares gate_up_proj over all n_routed + zero experts.
    if (!okShape && name.endsWith('.experts.gate_up_proj')) okShape = sameShape(t.shape, [derived.routerWidth, 2 * I, H]);
    if (!okShape)
      throw ckptError(
        `${path.basename(t.file)}: tensor '${name}' has shape ${shapeStr(t.shape)}, expected ${shapeStr(spec.shape)}`,
      );
    if (!spec.dtypes.includes(t.dtype))
      throw ckptError(`${path.basename(t.file)}: tensor '${name}' has dtype ${t.dtype}, expected ${spec.dtypes.join(' or ')}`);
  };
  for (const [name, spec] of required) check(name, spec);
  for (const [name, spec] of packedSpecs) check(name, spec);
  if (missing.length)
    throw ckptError(
      `${root}: missing tensor '${missing[0]}'${
        missing.length > 1
          ? ` (and ${missing.length - 1} more: ${missing
              .slice(1, 6)
              .map(m => `'${m}'`)
              .join(', ')}${missing.length > 6 ? ', ...' : ''})`
          : ''
      }`,
    );
  const unexpected = [...tensors.keys()].filter(n => !required.has(n) && !packedSpecs.has(n)).sort();

  // Map every shard.
  const mappings = new Map<string, MappedFile>();
  const totalBytes = headers.reduce((a, h) => a + h.fileSize, 0);
  let bytes = 0;
  try {
    for (const [i, h] of headers.entries()) {
      checkAbort();
      mappings.set(h.file, native.mapFile(h.file, opts.advice ? { advice: opts.advice } : undefined));
      bytes += h.fileSize;
      opts.onProgress?.({ phase: 'map', file: h.file, filesDone: i + 1, files: headers.length, bytes, totalBytes });
      // Let an abort signalled from a progress callback or a timer be seen between files.
      if (opts.signal) await new Promise<void>(r => setImmediate(r));
    }
    checkAbort();
  } catch (e) {
    for (const m of mappings.values()) m.close();
    throw e;
  }

  return new CheckpointImpl(
    root,
    config,
    derived,
    generationConfig,
    tensors,
    unexpected,
    quantization,
    hasMtp,
    expertLayouts,
    totalBytes,
    files,
    mappings,
  );
}

class CheckpointImpl implements Checkpoint {
  private cache = new Map<string, Tensor>();
  private experts = new Map<string, ExpertWeights>();
  /** Views made for packed experts (owned here, unlike cached tensors they are not in `cache`). */
  private views: Tensor[] = [];
  private closed = false;
  /** The mappings as verifyMappings() checks them. */
  private readonly mappingSet: MappingSet;

  constructor(
    readonly dir: string,
    readonly config: LongcatConfig,
    readonly derived: DerivedConstants,
    readonly generationConfig: GenerationConfig | null,
    readonly tensors: ReadonlyMap<string, CheckpointTensor>,
    readonly unexpected: readonly string[],
    readonly quantization: 'fp8' | 'int8' | 'int4' | null,
    readonly hasMtp: boolean,
    readonly expertLayouts: readonly ExpertLayout[],
    readonly totalBytes: number,
    readonly files: readonly string[],
    private mappings: Map<string, MappedFile>,
  ) {
    this.mappingSet = native.mappingSet([...mappings.values()]);
  }

  get fp8(): boolean {
    return this.quantization === 'fp8';
  }

  private alive(what: string) {
    if (this.closed) throw new DisposedError('E_DISPOSED', `checkpoint ${this.dir}: ${what} after close()`);
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  get(name: string): Tensor {
    this.alive(`get('${name}')`);
    const hit = this.cache.get(name);
    if (hit) return hit;
    const t = this.tensors.get(name);
    if (!t) throw ckptError(`checkpoint ${this.dir}: no tensor '${name}'`);
    if (!t.nativeDtype)
      throw ckptError(`${path.basename(t.file)}: tensor '${name}' has dtype ${t.dtype}, which this engine does not support`);
    const m = this.mappings.get(t.file)!;
    const tensor = native.tensorFromMapping(m, t.offset, t.nativeDtype, t.shape);
    this.cache.set(name, tensor);
    return tensor;
  }

  linear(module: string): LinearWeights {
    const weight = this.get(`${module}.weight`);
    const s = scaleNameOf(module, (n: string) => this.tensors.has(n));
    return s ? { weight, scale: this.get(s) } : { weight };
  }

  expertWeights(layer: number, e: number): ExpertWeights {
    this.alive('expertWeights()');
    const c = this.config;
    if (!Number.isInteger(layer) || layer < 0 || layer >= c.num_layers)
      throw new ArgumentError('E_ARGUMENT', `expertWeights: layer ${layer} out of range [0, ${c.num_layers})`);
    if (!Number.isInteger(e) || e < 0 || e >= c.n_routed_experts)
      throw new ArgumentError(
        'E_ARGUMENT',
        `expertWeights: expert ${e} out of range [0, ${c.n_routed_experts}) (zero experts have no weights)`,
      );
    const key = `${layer}.${e}`;
    const hit = this.experts.get(key);
    if (hit) return hit;
    let r: ExpertWeights;
    if (this.expertLayouts[layer] === 'packed') {
      const I = c.expert_ffn_hidden_size,
        H = c.hidden_size;
      const gu = this.get(`model.layers.${layer}.mlp.experts.gate_up_proj`);
      const dn = this.get(`model.layers.${layer}.mlp.experts.down_proj`);
      const row = gu.narrow(e, 1);
      const both = row.view([2 * I, H]);
      row.dispose();
      const drow = dn.narrow(e, 1);
      r = { gate: both.narrow(0, I), up: both.narrow(I, I), down: drow.view([H, I]) };
      both.dispose();
      drow.dispose();
      this.views.push(r.gate, r.up, r.down);
    } else {
      const p = expertPrefix(layer, e);
      const g = this.linear(`${p}.gate_proj`),
        u = this.linear(`${p}.up_proj`),
        d = this.linear(`${p}.down_proj`);
      r = { gate: g.weight, up: u.weight, down: d.weight };
      if (g.scale) r.gateScale = g.scale;
      if (u.scale) r.upScale = u.scale;
      if (d.scale) r.downScale = d.scale;
    }
    this.experts.set(key, r);
    return r;
  }

  verify(): void {
    this.alive('verify()');
    for (const m of this.mappings.values()) m.verify();
  }

  verifyMappings(): void {
    this.alive('verifyMappings()');
    this.mappingSet.verify();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.views) t.dispose();
    this.views = [];
    for (const t of this.cache.values()) t.dispose();
    for (const m of this.mappings.values()) m.close();
    this.mappingSet.close();
    this.cache.clear();
    this.experts.clear();
    this.mappings.clear();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
