// Every error the SDK throws is a LongcatError with a stable `code`. Native code throws these
// too: lib/native.ts hands makeError to the addon at load time.

export type ErrorCode =
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_DEVICE'
  | 'E_OOM'
  | 'E_CUDA'
  | 'E_DISPOSED'
  | 'E_ARGUMENT'
  | 'E_INTERNAL'
  | 'E_CHECKPOINT'
  | 'E_CONFIG'
  | 'E_ABORTED'
  | 'E_CONTEXT'
  | 'E_LOAD'
  | 'E_NUMERIC'
  | 'E_RANK_FAILED';

export class LongcatError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

export class ShapeError extends LongcatError {}
export class DTypeError extends LongcatError {}
export class DeviceError extends LongcatError {}
export class OutOfMemoryError extends LongcatError {}
export class CudaError extends LongcatError {}
export class DisposedError extends LongcatError {}
export class ArgumentError extends LongcatError {}
export class CheckpointError extends LongcatError {}
export class ConfigError extends LongcatError {}
export class AbortError extends LongcatError {}
export class ContextLengthError extends LongcatError {}
export class LoadError extends LongcatError {}
/** Non-finite values where the model must produce finite ones (NaN / infinite logits). */
export class NumericError extends LongcatError {}
/** A rank of an expert-parallel group failed during a step (the step's results are void; the ranks stay usable). */
export class RankFailedError extends LongcatError {}

const classes: Record<ErrorCode, new (code: ErrorCode, message: string) => LongcatError> = {
  E_SHAPE: ShapeError,
  E_DTYPE: DTypeError,
  E_DEVICE: DeviceError,
  E_OOM: OutOfMemoryError,
  E_CUDA: CudaError,
  E_DISPOSED: DisposedError,
  E_ARGUMENT: ArgumentError,
  E_INTERNAL: LongcatError,
  E_CHECKPOINT: CheckpointError,
  E_CONFIG: ConfigError,
  E_ABORTED: AbortError,
  E_CONTEXT: ContextLengthError,
  E_LOAD: LoadError,
  E_NUMERIC: NumericError,
  E_RANK_FAILED: RankFailedError,
};

/** Builds the LongcatError subclass that matches `code`. */
export function makeError(code: string, message: string): LongcatError {
  const C = classes[code as ErrorCode] ?? LongcatError;
  return new C((code in classes ? code : 'E_INTERNAL') as ErrorCode, message);
}

/**
 * A value from a file or a caller as an error message shows it: JSON, cut to `max` characters,
 * and never a failure itself (a value nested too deeply for JSON.stringify's recursion, or one it
 * cannot encode, is described instead).
 */
export function showValue(v: unknown, max = 200): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(v);
  } catch {
    text = undefined;
  }
  if (text === undefined)
    text = Array.isArray(v)
      ? 'an array (too deeply nested to print)'
      : typeof v === 'object'
        ? 'an object (too deeply nested to print)'
        : String(v);
  return text.length > max ? `${text.slice(0, max)}... (${text.length} characters)` : text;
}
