// longcat-flash: the public API.
export { native } from './native.js';
export * from './errors.js';
export { Tensor, tensor, empty, full, toArray, toArrayAsync, encode, decode, numel } from './tensor.js';
export type { DType, DeviceId, TensorOptions } from './tensor.js';
export { bf16ToF32, f32ToBf16, f16ToF32, f32ToF16, fp8e4m3ToF32, f32ToFp8e4m3, roundBf16 } from './numeric.js';
export {
  Stream,
  Event,
  devices,
  cudaAvailable,
  buildInfo,
  cpuFeatures,
  setThreads,
  threads,
  memoryStats,
  synchronize,
  synchronizeAsync,
  setMatmulPrecision,
  type MatmulPrecision,
} from './device.js';
export type { BuildInfo, CpuFeatures, DeviceInfo, MemoryStats, CudaStatus } from '../types/native.js';

// The model SDK.
export { loadModel, Model, Session, Generation } from './generate.js';
export type { GenerateOptions, GenerateResult, Prompt, StopReason } from './generate.js';
export type { TokenLogprob } from './sampling.js';
export type { LoadModelOptions, Backend, HostProgress, ModelMemory } from './model/load.js';
export { LongcatModel } from './model/model.js';
export type { ForwardResult, ModelOptions } from './model/model.js';
export { BlockAllocator, SequenceCache } from './kv-cache.js';
export { parseConfig, deriveConstants, requiredTensors, activeParams } from './config.js';
export type {
  LongcatConfig,
  RopeScaling,
  QuantizationConfig,
  Fp8QuantizationConfig,
  Int8RowsQuantizationConfig,
} from './config.js';
export { quantizeCheckpoint, checkQuantizeFormat } from './quantize.js';
export type { QuantizeFormat, QuantizeOptions, QuantizeProgress, QuantizeResult } from './quantize.js';
export { evalKld } from './eval.js';
export type { KldOptions, KldResult } from './eval.js';
export { openCheckpoint } from './checkpoint.js';
export type { Checkpoint, LoadProgress } from './checkpoint.js';
export { readSafetensorsHeader, writeSafetensors } from './safetensors.js';
export { loadTokenizer } from './tokenizer.js';
export type { Tokenizer, StreamDecoder } from './tokenizer.js';
export { applyChatTemplate, formatLongcatChat, longcatToolDescription, parseToolCalls, renderChatPrompt } from './chat.js';
export type { ChatMessage, ToolCall, ToolDefinition } from './chat.js';
export { createServer, ApiError } from './server.js';
export type { ServerOptions, LongcatServer } from './server.js';
export { initRandom, PRESETS } from './init-random.js';
export type { Preset, InitRandomOptions } from './init-random.js';
export { ropeTables } from './rope.js';
export { NcclComm, ncclUniqueId, ncclVersion } from './parallel/nccl.js';
export type { NcclInitOptions } from './parallel/nccl.js';
