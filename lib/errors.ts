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
  E_RANK_FAILED: RankFailedError,
};

/** Builds the LongcatError subclass that matches `code`. */
export function makeError(code: string, message: string): LongcatError {
  const C = classes[code as ErrorCode] ?? LongcatError;
  return new C((code in classes ? code : 'E_INTERNAL') as ErrorCode, message);
}
