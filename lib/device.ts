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
/** Waits for all queued work on a device without blocking the event loop (the wait runs on a
 *  worker thread); rejects with the error of failed work, like synchronize() throws it. */
export function synchronizeAsync(device = 'cpu'): Promise<void> {
  return native.synchronizeAsync(device);
}

export type MatmulPrecision = 'bf16' | 'highest' | 'fp8';

/**
 * Matmul precision of GEMMs (more rows than a decode GEMV), process-wide, CPU and CUDA alike:
 * 'bf16' (default) lets them round activations to bf16 (AVX512-BF16, CUDA tensor cores: twice the
 * FLOP rate or more); 'highest' keeps every product in fp32; 'fp8' is 'bf16' plus e4m3 activations
 * (1x128 groups) for fp8 weights at 17 rows or more: the e4m3 tensor cores on sm_89+ (the CPU
 * emulates the quantization). On the CPU (AVX2, AVX512-VNNI) 'bf16' and 'fp8' also let the int8 and
 * int4 weights' decode GEMVs (up to 8 rows) round activations to int8 per 128 columns (native/cpu/linear.h).
 * Returns the previous setting.
 */
export function setMatmulPrecision(p: MatmulPrecision): MatmulPrecision {
  return native.setMatmulPrecision(p);
}
