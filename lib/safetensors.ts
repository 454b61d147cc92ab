// safetensors: header parsing with full validation, and a streaming writer.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: { string: string } },
// then the data section; offsets are relative to the data section (byte 8 + N). Tensors must be
// packed back to back (no holes, no overlaps) and cover the data section exactly.
import { open, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { CheckpointError, showValue } from './errors.js';
import { openRegularFile } from './files.js';
import type { DType } from '../types/native.js';

/** Every dtype the safetensors format defines. */
export type SafetensorsDType =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL';

/** Element sizes in bytes. */
export const SAFETENSORS_DTYPE_SIZE: Readonly<Record<SafetensorsDType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** The safetensors dtypes this engine can load, and the tensor dtype each becomes. */
export const SAFETENSORS_TO_DTYPE: Readonly<Partial<Record<SafetensorsDType, DType>>> = {
  F32: 'f32',
  BF16: 'bf16',
  F16: 'f16',
  F8_E4M3: 'fp8_e4m3',
  I8: 'int8',
  I32: 'int32',
  I64: 'int64',
};

export const DTYPE_TO_SAFETENSORS: Readonly<Record<DType, SafetensorsDType>> = {
  f32: 'F32',
  bf16: 'BF16',
  f16: 'F16',
  fp8_e4m3: 'F8_E4M3',
  int8: 'I8',
  int32: 'I32',
  int64: 'I64',
};

/** The format's own limit on the header (safetensors MAX_HEADER_SIZE). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDType;
  /** The engine dtype, or null when the dtype is valid safetensors but unsupported here (U8, BOOL, F64...). */
  nativeDtype: DType | null;
  shape: number[];
  /** Absolute byte offset of the tensor in the file. */
  offset: number;
  nbytes: number;
}

export interface SafetensorsHeader {
  file: string;
  fileSize: number;
  /** N, the JSON header length. */
  headerLength: number;
  /** 8 + N: where the data section starts. */
  dataOffset: number;
  metadata: Record<string, string> | null;
  /** In file order (ascending offset). */
  tensors: Map<string, SafetensorsEntry>;
}

function fail(file: string, msg: string): never {
  throw new CheckpointError('E_CHECKPOINT', `${file}: ${msg}`);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Reads the 8-byte header length. `prefix` must hold at least 8 bytes. */
export function headerLengthOf(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix.length < 8)
    fail(file, `file is ${fileSize} bytes, too short to be safetensors (needs an 8-byte header length)`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(fileSize - 8)) fail(file, `header length ${n} runs past the end of the file (${fileSize} bytes)`);
  if (n > BigInt(MAX_HEADER_BYTES)) fail(file, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (n < 2n) fail(file, `header length ${n} is too small for a JSON object`);
  return Number(n);
}

/**
 * Parses and validates a header. `headerBytes` are the N JSON bytes (after the 8-byte length).
 * Throws CheckpointError (E_CHECKPOINT) naming the file and, where there is one, the tensor.
 */
export function parseSafetensorsHeader(headerBytes: Uint8Array, fileSize: number, file: string): SafetensorsHeader {
  const headerLength = headerBytes.length;
  const dataOffset = 8 + headerLength;
  const dataSize = fileSize - dataOffset;
  if (dataSize < 0) fail(file, `header length ${headerLength} runs past the end of the file (${fileSize} bytes)`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    fail(file, 'header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail(file, 'header is not a JSON object');

  let metadata: Record<string, string> | null = null;
  const entries: SafetensorsEntry[] = [];
  const ranges: { name: string; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(file, '__metadata__ must be an object of strings');
      for (const [k, v] of Object.entries(raw))
        if (typeof v !== 'string') fail(file, `__metadata__.${k} must be a string, got ${showValue(v)}`);
      metadata = raw as Record<string, string>;
      continue;
    }
    const where = `tensor '${name}'`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(file, `${where}: entry is not an object`);
    const { dtype, shape, data_offsets: offs } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof dtype !== 'string' || !(dtype in SAFETENSORS_DTYPE_SIZE))
      fail(file, `${where}: unknown dtype ${showValue(dtype)}`);
    const dt = dtype as SafetensorsDType;
    if (!Array.isArray(shape) || !shape.every(isNonNegInt))
      fail(file, `${where}: shape ${showValue(shape)} is not an array of non-negative integers`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isNonNegInt))
      fail(file, `${where}: data_offsets ${showValue(offs)} is not [begin, end]`);
    const [begin, end] = offs as [number, number];
    if (end < begin) fail(file, `${where}: data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataSize)
      fail(file, `${where}: data_offsets [${begin}, ${end}] run past the data section (${dataSize} bytes; file truncated?)`);
    let numel = 1;
    for (const d of shape as number[]) {
      numel *= d;
      if (!Number.isSafeInteger(numel)) fail(file, `${where}: shape [${shape.join(', ')}] is too large`);
    }
    const want = numel * SAFETENSORS_DTYPE_SIZE[dt];
    if (end - begin !== want)
      fail(
        file,
        `${where}: ${dt} [${shape.join(', ')}] needs ${want} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
      );
    entries.push({
      name,
      dtype: dt,
      nativeDtype: SAFETENSORS_TO_DTYPE[dt] ?? null,
      shape: shape as number[],
      offset: dataOffset + begin,
      nbytes: want,
    });
    ranges.push({ name, begin, end });
  }
  // Back to back, no overlap, no hole, covering the data section.
  const order = ranges.map((_r, i) => i).sort((a, b) => ranges[a]!.begin - ranges[b]!.begin || ranges[a]!.end - ranges[b]!.end);
  let pos = 0;
  let prev = '';
  for (const i of order) {
    const r = ranges[i]!;
    if (r.begin < pos) fail(file, `tensor '${r.name}' (bytes ${r.begin}..${r.end}) overlaps tensor '${prev}' (ends at ${pos})`);
    if (r.begin > pos) fail(file, `hole in the data section: bytes ${pos}..${r.begin} belong to no tensor (before '${r.name}')`);
    pos = r.end;
    prev = r.name;
  }
  if (pos !== dataSize)
    fail(
      file,
      `data section is ${dataSize} bytes but the tensors cover ${pos} (${pos < dataSize ? 'trailing bytes' : 'truncated'})`,
    );
  const tensors = new Map<string, SafetensorsEntry>();
  for (const i of order) tensors.set(entries[i]!.name, entries[i]!);
  return { file, fileSize, headerLength, dataOffset, metadata, tensors };
}

async function readExactly(fh: FileHandle, buf: Uint8Array, position: number, file: string): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) fail(file, `unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
}

function ioError(file: string, e: unknown): never {
  if (e instanceof CheckpointError) throw e;
  const err = e as NodeJS.ErrnoException;
  throw new CheckpointError('E_CHECKPOINT', `${file}: cannot read${err.code ? ` (${err.code})` : ''}: ${err.message}`, {
    cause: e,
  });
}

/** Reads and validates the header of a safetensors file (only the header is read). */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  let fh: FileHandle | undefined;
  try {
    fh = await openRegularFile(file);
    const { size } = await fh.stat();
    const prefix = new Uint8Array(8);
    if (size >= 8) await readExactly(fh, prefix, 0, file);
    const n = headerLengthOf(prefix, size, file);
    const hdr = new Uint8Array(n);
    await readExactly(fh, hdr, 8, file);
    return parseSafetensorsHeader(hdr, size, file);
  } catch (e) {
    return ioError(file, e);
  } finally {
    await fh?.close();
  }
}

/** Parses a whole safetensors file held in memory (tests, small files). */
export function parseSafetensors(bytes: Uint8Array, file = '<memory>'): SafetensorsHeader {
  const n = headerLengthOf(bytes, bytes.length, file);
  return parseSafetensorsHeader(bytes.subarray(8, 8 + n), bytes.length, file);
}

// ---- writer ---------------------------------------------------------------------------------

/** Tensor data: the bytes, or a function yielding them in chunks (large tensors, generated lazily). */
export type TensorData = Uint8Array | (() => Iterable<Uint8Array>);

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDType | DType;
  shape: readonly number[];
  data: TensorData;
}

function toSafetensorsDType(d: SafetensorsDType | DType): SafetensorsDType {
  if (d in SAFETENSORS_DTYPE_SIZE) return d as SafetensorsDType;
  const s = DTYPE_TO_SAFETENSORS[d as DType];
  if (!s) throw new CheckpointError('E_CHECKPOINT', `writeSafetensors: unknown dtype '${d}'`);
  return s;
}

/**
 * Builds the header bytes (length prefix included) for `tensors` in the given order. The JSON is
 * padded with spaces so the data section starts 8-byte aligned.
 */
export function buildSafetensorsHeader(
  tensors: readonly { name: string; dtype: SafetensorsDType; shape: readonly number[]; nbytes: number }[],
  metadata?: Record<string, string>,
): Uint8Array {
  const obj: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) obj.__metadata__ = metadata;
  let pos = 0;
  for (const t of tensors) {
    obj[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [pos, pos + t.nbytes] };
    pos += t.nbytes;
  }
  let json = new TextEncoder().encode(JSON.stringify(obj));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  json = out;
  return json;
}

/**
 * Writes a safetensors file, streaming tensor data in order (a chunked writer, so tensors given
 * as chunk generators are never held whole). Tensors are laid out by decreasing element size
 * (stable otherwise) so each one is aligned to its element size in the file, which lets the
 * loader map every tensor in place.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<void> {
  const seen = new Set<string>();
  const items = tensors.map((t, i) => {
    if (seen.has(t.name)) throw new CheckpointError('E_CHECKPOINT', `writeSafetensors(${path}): duplicate tensor '${t.name}'`);
    if (t.name === '__metadata__')
      throw new CheckpointError('E_CHECKPOINT', `writeSafetensors(${path}): '__metadata__' is not a tensor name`);
    seen.add(t.name);
    const dtype = toSafetensorsDType(t.dtype);
    const nbytes = t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_SIZE[dtype];
    if (t.data instanceof Uint8Array && t.data.length !== nbytes)
      throw new CheckpointError(
        'E_CHECKPOINT',
        `writeSafetensors(${path}): tensor '${t.name}' ${dtype} [${t.shape.join(', ')}] needs ${nbytes} bytes, got ${t.data.length}`,
      );
    return { ...t, dtype, nbytes, i };
  });
  items.sort((a, b) => SAFETENSORS_DTYPE_SIZE[b.dtype] - SAFETENSORS_DTYPE_SIZE[a.dtype] || a.i - b.i);
  const header = buildSafetensorsHeader(items, metadata);

  const fh = await open(path, 'w');
  try {
    const CHUNK = 8 << 20;
    let buf = new Uint8Array(CHUNK);
    let fill = 0;
    let pos = 0;
    const flush = async () => {
      if (fill === 0) return;
      let off = 0;
      while (off < fill) {
        const { bytesWritten } = await fh.write(buf, off, fill - off, pos);
        off += bytesWritten;
        pos += bytesWritten;
      }
      fill = 0;
    };
    const put = async (bytes: Uint8Array) => {
      if (bytes.length >= CHUNK) {
        await flush();
        let off = 0;
        while (off < bytes.length) {
          const { bytesWritten } = await fh.write(bytes, off, bytes.length - off, pos);
          off += bytesWritten;
          pos += bytesWritten;
        }
        return;
      }
      if (fill + bytes.length > CHUNK) await flush();
      buf.set(bytes, fill);
      fill += bytes.length;
    };
    await put(header);
    for (const t of items) {
      if (t.data instanceof Uint8Array) {
        await put(t.data);
        continue;
      }
      let got = 0;
      for (const chunk of t.data()) {
        got += chunk.length;
        if (got > t.nbytes) break;
        await put(chunk);
      }
      if (got !== t.nbytes)
        throw new CheckpointError(
          'E_CHECKPOINT',
          `writeSafetensors(${path}): tensor '${t.name}' ${t.dtype} [${t.shape.join(', ')}] needs ${t.nbytes} bytes, its generator produced ${got > t.nbytes ? 'more' : got}`,
        );
    }
    await flush();
    buf = new Uint8Array(0);
  } finally {
    await fh.close();
  }
}

/** The size of a file, or null when it does not exist. */
export async function fileSize(path: string): Promise<number | null> {
  try {
    return (await stat(path)).size;
  } catch {
    return null;
  }
}
