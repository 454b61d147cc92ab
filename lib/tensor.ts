// Building tensors from JS data and reading them back as numbers.
import type { DType, DeviceId, Tensor as NativeTensor } from '../types/native.js';
import { native } from './native.js';
import { ArgumentError, DeviceError, ShapeError } from './errors.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, f32ToFp8e4m3, fp8e4m3ToF32 } from './numeric.js';

export type Tensor = NativeTensor;
export const Tensor = native.Tensor;
export type { DType, DeviceId };

declare module '../types/native.js' {
  interface Tensor {
    [Symbol.dispose](): void;
  }
  interface Stream {
    [Symbol.dispose](): void;
  }
}

for (const C of [native.Tensor, native.Stream]) {
  Object.defineProperty(C.prototype, Symbol.dispose, {
    value: function (this: { dispose(): void }) {
      this.dispose();
    },
    configurable: true,
  });
}

export interface TensorOptions {
  dtype?: DType;
  device?: DeviceId | string;
  /** empty() only: pinned host memory (native.pinnedTensor; device 'cpu'), which CUDA copies use asynchronously and graphs capture. */
  pinned?: boolean;
}

/** Elements of `shape`; ShapeError (E_SHAPE) unless it is an array of non-negative integers. */
export function numel(shape: readonly number[]): number {
  if (!Array.isArray(shape) || !shape.every(d => Number.isSafeInteger(d) && d >= 0))
    throw new ShapeError(
      'E_SHAPE',
      `shape must be an array of non-negative integers, got ${Array.isArray(shape) ? `[${shape.join(', ')}]` : String(shape)}`,
    );
  return shape.reduce((a, b) => a * b, 1);
}

/** Encodes numbers into the raw bytes of `dtype` (rounding to nearest even). */
export function encode(values: ArrayLike<number>, dtype: DType): ArrayBufferView {
  const n = values.length;
  switch (dtype) {
    case 'f32':
      return values instanceof Float32Array ? values : Float32Array.from(values);
    case 'bf16': {
      const r = new Uint16Array(n);
      for (let i = 0; i < n; i++) r[i] = f32ToBf16(values[i]!);
      return r;
    }
    case 'f16': {
      const r = new Uint16Array(n);
      for (let i = 0; i < n; i++) r[i] = f32ToF16(values[i]!);
      return r;
    }
    case 'fp8_e4m3': {
      const r = new Uint8Array(n);
      for (let i = 0; i < n; i++) r[i] = f32ToFp8e4m3(values[i]!);
      return r;
    }
    case 'int8':
      return Int8Array.from(values);
    case 'int32':
      return Int32Array.from(values);
    case 'int64':
      return BigInt64Array.from(Array.from(values, v => BigInt(Math.trunc(v))));
  }
}

/** Decodes raw bytes of `dtype` into numbers. */
export function decode(bytes: Uint8Array, dtype: DType): Float64Array | Float32Array | Int32Array {
  const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  switch (dtype) {
    case 'f32':
      return new Float32Array(buf);
    case 'bf16':
      return Float32Array.from(new Uint16Array(buf), bf16ToF32);
    case 'f16':
      return Float32Array.from(new Uint16Array(buf), f16ToF32);
    case 'fp8_e4m3':
      return Float32Array.from(new Uint8Array(buf), fp8e4m3ToF32);
    case 'int8':
      return Int32Array.from(new Int8Array(buf));
    case 'int32':
      return new Int32Array(buf);
    case 'int64':
      return Float64Array.from(new BigInt64Array(buf), v => Number(v));
  }
}

/** A tensor holding `values` (numbers, encoded to `dtype`, default f32). */
export function tensor(values: ArrayLike<number>, shape: readonly number[], opts: TensorOptions = {}): Tensor {
  const dtype = opts.dtype ?? 'f32';
  if (values.length !== numel(shape))
    throw new ShapeError(
      'E_SHAPE',
      `tensor: ${values.length} values do not fill shape [${shape.join(', ')}] (${numel(shape)} elements)`,
    );
  return new native.Tensor(dtype, shape, opts.device ?? 'cpu', encode(values, dtype));
}

/** An uninitialised tensor from the device pool (or the pinned pool: `pinned`). */
export function empty(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  if (!opts.pinned) return new native.Tensor(opts.dtype ?? 'f32', shape, opts.device ?? 'cpu');
  if ((opts.device ?? 'cpu') !== 'cpu')
    throw new DeviceError('E_DEVICE', `empty: pinned memory is host memory, not on ${opts.device}`);
  return native.pinnedTensor(opts.dtype ?? 'f32', shape);
}

/** A tensor filled with `value` (NaN by default: a poisoned output buffer for tests). */
export function full(shape: readonly number[], value: number, opts: TensorOptions = {}): Tensor {
  const n = numel(shape);
  // The values pass through a JS array: past its limit, a typed error rather than V8's RangeError.
  if (n > 2 ** 31)
    throw new ShapeError(
      'E_SHAPE',
      `full: shape [${shape.join(', ')}] has ${n} elements, more than full() builds (2^31); use empty()`,
    );
  const vals = new Float32Array(n).fill(value);
  return tensor(vals, shape, opts);
}

/** The tensor's values as numbers (waits for pending work on its device). */
export function toArray(t: Tensor): Float64Array | Float32Array | Int32Array {
  if (t.disposed) throw new ArgumentError('E_DISPOSED', 'toArray: tensor was disposed');
  return decode(t.toBytes(), t.dtype);
}

/** toArray() that awaits the device instead of blocking the event loop while its work runs. */
export async function toArrayAsync(t: Tensor): Promise<Float64Array | Float32Array | Int32Array> {
  if (t.disposed) throw new ArgumentError('E_DISPOSED', 'toArrayAsync: tensor was disposed');
  await native.synchronizeAsync(t.device);
  return toArray(t); // its wait finds the device idle (or only what was queued since)
}
