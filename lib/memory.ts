/** Memory and queue statistics, and synchronisation, per device. */
import { native, NativeMemoryStats, NativeRuntimeStats } from './binding';
import { normalizeDevice } from './device';
import { tensorsCollectedWithoutDispose } from './tensor';

export interface MemoryStats extends NativeMemoryStats {
  /** Tensors freed by the garbage collector instead of dispose() since start. */
  collectedWithoutDispose: number;
}

/** allocated / reserved / peak bytes of a device (CPU: host bytes held by tensors). */
export function memoryStats(device = 'cpu'): MemoryStats {
  const stats = native().memoryStats(normalizeDevice(device, 'memoryStats'));
  return { ...stats, collectedWithoutDispose: tensorsCollectedWithoutDispose() };
}

export type RuntimeStats = NativeRuntimeStats;

/**
 * The device's queue: `hostSyncs` counts every time the host waited for it (each `toArray()`,
 * `item()`, `synchronize()`, drain and device-to-host copy), counted when the wait is requested,
 * so the count is exact as soon as the call returns. A training step that only queues work adds 0.
 */
export function runtimeStats(device = 'cpu'): RuntimeStats {
  return native().runtimeStats(normalizeDevice(device, 'runtimeStats'));
}

export function resetPeakMemory(device = 'cpu'): void {
  native().resetPeakMemory(normalizeDevice(device, 'resetPeakMemory'));
}

/** Returns cached, unused GPU blocks to the driver (no effect on the CPU). */
export function emptyCache(device = 'cpu'): void {
  native().emptyCache(normalizeDevice(device, 'emptyCache'));
}

/** Resolves when all work queued so far on `device` has finished; rejects with its error. */
export function synchronize(device = 'cpu'): Promise<void> {
  return native().synchronize(normalizeDevice(device, 'synchronize'));
}
