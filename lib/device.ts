/**
 * Devices: 'cpu' and 'cuda:N'. Tensors are created on the default device ('cpu' unless changed
 * with setDefaultDevice or the MOMA_DEVICE environment variable). `bestDevice()` is what trainers
 * use: the first GPU when one is present, unless MOMA_DEVICE=cpu forces the CPU.
 */
import { native } from './binding';
import { MomaError } from './errors';

/** A device as moma names it (Tensor.device, getDefaultDevice(), bestDevice()). */
export type DeviceName = 'cpu' | `cuda:${number}`;
/** What a device argument accepts: a DeviceName, or 'cuda' for 'cuda:0'. */
export type DeviceInput = DeviceName | 'cuda';

let defaultDeviceName: DeviceName | undefined;

/** Whether `device` is spelled as a DeviceName ('cpu' or 'cuda:N' with at most three digits). */
export function isDeviceName(device: string): device is DeviceName {
  return device === 'cpu' || /^cuda:\d{1,3}$/.test(device);
}

function forcedDevice(): string | undefined {
  const env = process.env.MOMA_DEVICE;
  return env && env.length > 0 ? env : undefined;
}

/** Number of CUDA devices this process can use (0 without a GPU, a driver, or CUDA support). */
export function cudaDeviceCount(): number {
  if (forcedDevice() === 'cpu') return 0;
  return native().info().cuda.devices.length;
}

export function cudaAvailable(): boolean {
  return cudaDeviceCount() > 0;
}

export function bestDevice(): DeviceName {
  const forced = forcedDevice();
  if (forced) return normalizeDevice(forced, 'bestDevice');
  return cudaAvailable() ? 'cuda:0' : 'cpu';
}

export function getDefaultDevice(): DeviceName {
  if (defaultDeviceName) return defaultDeviceName;
  const forced = forcedDevice();
  return forced ? normalizeDevice(forced, 'getDefaultDevice') : 'cpu';
}

export function setDefaultDevice(device: DeviceInput): void {
  defaultDeviceName = normalizeDevice(device, 'setDefaultDevice');
}

/** 'cuda' -> 'cuda:0'; validates the spelling of any string (the native side checks availability). */
export function normalizeDevice(device: string, op: string): DeviceName {
  if (typeof device !== 'string') throw new MomaError('ERR_DEVICE', `${op}: device must be a string like 'cpu' or 'cuda:0'`);
  if (device === 'cuda') return 'cuda:0';
  if (isDeviceName(device)) {
    if (device !== 'cpu' && forcedDevice() === 'cpu') {
      throw new MomaError('ERR_DEVICE', `${op}: device '${device}' requested but MOMA_DEVICE=cpu forces the CPU`);
    }
    return device;
  }
  throw new MomaError('ERR_DEVICE', `${op}: unknown device '${device}' (expected 'cpu', 'cuda' or 'cuda:N')`);
}
