// longcat-flash: the public API.
export { native } from './native.js';
export * from './errors.js';
export { Tensor, tensor, empty, full, toArray, encode, decode, numel } from './tensor.js';
export type { DType, DeviceId, TensorOptions } from './tensor.js';
export { bf16ToF32, f32ToBf16, f16ToF32, f32ToF16, fp8e4m3ToF32, f32ToFp8e4m3, roundBf16 } from './numeric.js';
export { Stream, Event, devices, cudaAvailable, buildInfo, cpuFeatures, setThreads, threads, memoryStats, synchronize, setMatmulPrecision } from './device.js';
export type { BuildInfo, CpuFeatures, DeviceInfo, MemoryStats, CudaStatus } from '../types/native.js';
