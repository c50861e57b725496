/** The V8 garbage collector in tests, and a helper that collects until the allocator is stable. */
import * as v8 from 'v8';
import * as vm from 'vm';
import { memoryStats, synchronize } from '../../lib';

/** global.gc when exposed (node --expose-gc); otherwise try to expose it at run time. */
function findGc(): (() => void) | undefined {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === 'function') return g;
  try {
    v8.setFlagsFromString('--expose-gc');
    const fn = vm.runInNewContext('gc') as unknown;
    return typeof fn === 'function' ? (fn as () => void) : undefined;
  } catch {
    return undefined;
  }
}

export const gc = findGc();

/**
 * Collects garbage (and lets the finalizers free what it held) until the device's allocated bytes
 * stop changing, so that a baseline does not include tensors earlier code dropped without dispose.
 */
export async function collectGarbage(device: string): Promise<void> {
  let last = -1;
  for (let k = 0; k < 20; k++) {
    gc?.();
    await new Promise((r) => setTimeout(r, 10));
    await synchronize(device);
    const now = memoryStats(device).allocated;
    if (now === last) return;
    last = now;
  }
}
