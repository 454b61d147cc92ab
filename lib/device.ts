// Devices, streams, events and the process-wide CPU settings.
import { native } from './native.js';
import type { BuildInfo, CpuFeatures, DeviceInfo, MemoryStats } from '../types/native.js';

export const Stream = native.Stream;
export type Stream = InstanceType<typeof native.Stream>;
export const Event = native.Event;
export type Event = InstanceType<typeof native.Event>;

export function devices(): DeviceInfo[] {
  return native.devices();
}
/** True when this build has the CUDA backend and a usable GPU. */
export function cudaAvailable(): boolean {
  return native.cudaStatus().available;
}
export function buildInfo(): BuildInfo {
  return native.buildInfo();
}
export function cpuFeatures(): CpuFeatures {
  return native.cpuFeatures();
}
/** Sets the CPU thread pool size (default: the cores this process may run on). */
export function setThreads(n: number): void {
  native.setThreads(n);
}
export function threads(): number {
  return native.threads();
}
export function memoryStats(device = 'cpu'): MemoryStats {
  return native.memoryStats(device);
}
/** Waits for all queued work on a device. */
export function synchronize(device = 'cpu'): void {
  native.synchronize(device);
}

/**
 * CPU matmul precision, process-wide: 'bf16' (default) lets bf16-weight GEMMs round activations
 * to bf16 (twice the FLOP rate where AVX512-BF16 exists); 'highest' keeps every product in fp32.
 * Returns the previous setting.
 */
export function setMatmulPrecision(p: 'bf16' | 'highest'): 'bf16' | 'highest' {
  return native.setMatmulPrecision(p);
}
