/**
 * Devices: 'cpu' and 'cuda:N'. Tensors are created on the default device ('cpu' unless changed
 * with setDefaultDevice or the MOMA_DEVICE environment variable). `bestDevice()` is what trainers
 * use: the first usable GPU when there is one, unless MOMA_DEVICE forces a device. `cudaStatus()`
 * says what moma can do with this machine's GPUs and why not (lib/cuda_probe.ts decides): a GPU
 * below sm_80 or behind a driver too old for the CUDA runtime is never counted or chosen.
 *
 * MOMA_DEVICE is read when the default device is first asked for (getDefaultDevice, bestDevice,
 * so at the first tensor created without a device), not when moma is imported (`moma inspect`
 * must still run to say what is wrong): a CUDA device there that cannot be used throws ERR_DEVICE
 * at once, naming why, instead of failing inside the first op.
 */
import { native } from './binding';
import { CudaProbe, CudaStatus, cudaDeviceProblem, decideCuda, readKernelDriverVersion } from './cuda_probe';
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

let probed: CudaStatus | undefined;

/** What the addon and the machine say about CUDA (the input of decideCuda); gathered anew on each call. */
export function cudaProbe(): CudaProbe {
  const cuda = native().info().cuda;
  return {
    compiled: cuda.compiled,
    runtimeVersion: cuda.runtimeVersion,
    driverVersion: cuda.driverVersion,
    deviceCountError: cuda.deviceCountError,
    devices: cuda.devices,
    kernelDriver: readKernelDriverVersion(),
    cudaVisibleDevices: process.env.CUDA_VISIBLE_DEVICES ?? null,
    architectures: cuda.architectures,
  };
}

/**
 * Whether moma can use a GPU here, and if not why (`reason`), with the driver found, the driver
 * needed and every listed GPU with its refusal, if any. Probed once per process. MOMA_DEVICE does
 * not change it (cudaDeviceCount and bestDevice honour MOMA_DEVICE=cpu).
 */
export function cudaStatus(): CudaStatus {
  probed ??= decideCuda(cudaProbe());
  return probed;
}

/** Number of CUDA devices this process can use: 0 without a usable GPU or with MOMA_DEVICE=cpu; refused GPUs (below sm_80, or without a kernel image in this binary) are not counted. */
export function cudaDeviceCount(): number {
  if (forcedDevice() === 'cpu') return 0;
  return cudaStatus().devices.filter((d) => d.usable).length;
}

export function cudaAvailable(): boolean {
  return cudaDeviceCount() > 0;
}

/**
 * Throws ERR_DEVICE naming why when `device` is a CUDA device that cannot be used under `status`
 * (no driver, a driver too old for the runtime, no such device, a GPU below sm_80); returns it.
 */
export function requireUsableDevice(device: DeviceName, op: string, status: CudaStatus = cudaStatus()): DeviceName {
  if (device === 'cpu') return device;
  const problem = cudaDeviceProblem(status, device, op);
  if (problem !== null) throw new MomaError('ERR_DEVICE', problem);
  return device;
}

/** The device MOMA_DEVICE forces, checked: ERR_DEVICE at once when it names a CUDA device that cannot be used. */
function forcedDeviceChecked(forced: string, status?: CudaStatus): DeviceName {
  const device = normalizeDevice(forced, `MOMA_DEVICE=${forced}`);
  if (device === 'cpu') return device;
  const problem = cudaDeviceProblem(status ?? cudaStatus(), device, `MOMA_DEVICE=${forced}`);
  if (problem !== null) throw new MomaError('ERR_DEVICE', `${problem} (unset MOMA_DEVICE, or set MOMA_DEVICE=cpu, to run on the CPU)`);
  return device;
}

/** The first usable GPU, else 'cpu' (cudaStatus().reason says why); MOMA_DEVICE, when set, decides instead. */
export function bestDevice(): DeviceName {
  const forced = forcedDevice();
  if (forced) return forcedDeviceChecked(forced);
  return firstUsable(cudaStatus()) ?? 'cpu';
}

function firstUsable(status: CudaStatus): DeviceName | null {
  const device = status.devices.find((d) => d.usable);
  return device === undefined ? null : `cuda:${device.index}`;
}

export function getDefaultDevice(): DeviceName {
  if (defaultDeviceName) return defaultDeviceName;
  const forced = forcedDevice();
  return forced ? forcedDeviceChecked(forced) : 'cpu';
}

/**
 * The device `moma train` runs on. `requested` (--device) is never second-guessed: a CUDA device
 * that cannot be used throws ERR_DEVICE with the reason (no fallback). Without it MOMA_DEVICE
 * decides (checked the same way); else the first usable GPU; else the CPU, and when an NVIDIA
 * driver or GPU is present but unusable, `warn` gets one paragraph saying why before the fallback.
 * `status` defaults to this machine's cudaStatus().
 */
export function chooseTrainDevice(requested: string | undefined, warn: (text: string) => void, status: CudaStatus = cudaStatus()): DeviceName {
  if (requested !== undefined) return requireUsableDevice(normalizeDevice(requested, 'train: --device'), 'train: --device', status);
  const forced = forcedDevice();
  if (forced) return forcedDeviceChecked(forced, status);
  const gpu = firstUsable(status);
  if (gpu !== null) return gpu;
  if (status.gpuPresent) {
    warn([
      `moma: WARNING: this machine has an NVIDIA GPU or driver, but moma cannot use it: ${status.reason}.`,
      'Training falls back to the CPU, which is much slower. Pass --device cpu to train on the CPU without this',
      'warning, or --device cuda to require the GPU (the run then fails instead of falling back). `moma inspect` shows the details.',
    ].join('\n'));
  }
  return 'cpu';
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
