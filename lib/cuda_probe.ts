/**
 * Whether moma can use this machine's GPU, and if not, why: a pure decision over a probe of the
 * CUDA stack, so that every outcome is testable with a fabricated probe.
 *
 * The probe (lib/device.ts gathers it) holds what the native addon reports (csrc/core/device.h:
 * the CUDA runtime compiled in, the CUDA version the driver supports, cudaGetDeviceCount's error,
 * every GPU the runtime lists) and what the machine says outside CUDA (the NVIDIA kernel module's
 * version from /proc/driver/nvidia/version, CUDA_VISIBLE_DEVICES). The rules:
 * - The CUDA runtime is linked statically, so the driver must support the runtime's major version
 *   (CUDA 13.x needs an R580+ driver, 12.x R525+); within a major version CUDA's minor-version
 *   compatibility applies. A driver too old makes cudaGetDeviceCount fail: the reason names the
 *   driver found and the one needed.
 * - GPUs below compute capability 8.0 (T4, V100, …) are refused: the kernels use bf16 tensor-core
 *   MMA, cp.async and ldmatrix. So is a GPU the binary has no kernel image for (a source build
 *   for sm_90 only on an A100), when the build recorded its architectures. A refused GPU is listed
 *   (with its refusal) but never usable.
 * - `gpuPresent` says whether an NVIDIA driver or GPU is there at all: falling back to the CPU is
 *   then worth a loud warning (`moma train`); on a machine without one it is the normal case.
 */
import * as fs from 'fs';
import type { NativeDeviceInfo } from './binding';

/** What the CUDA stack of this machine says (lib/device.ts cudaProbe()). */
export interface CudaProbe {
  /** Whether the loaded binary has the CUDA backend. */
  compiled: boolean;
  /** The CUDA runtime compiled in (cudaRuntimeGetVersion, e.g. 13000); 0 without CUDA. */
  runtimeVersion: number;
  /** The CUDA version the driver supports (cudaDriverGetVersion, e.g. 12040); 0: no driver library. */
  driverVersion: number;
  /** cudaGetDeviceCount's error when it failed (e.g. cudaErrorInsufficientDriver), else null. */
  deviceCountError: { name: string; message: string } | null;
  /** Every GPU the CUDA runtime lists, usable or not. */
  devices: NativeDeviceInfo[];
  /** The NVIDIA kernel module's version (e.g. '580.65.06'); null when no module is loaded. */
  kernelDriver: string | null;
  /** CUDA_VISIBLE_DEVICES when set (it can hide every GPU). */
  cudaVisibleDevices: string | null;
  /** The CUDA architectures the kernels were built for ('80-real,86-real,89-real,90'); '' when unknown. */
  architectures: string;
}

/** One listed GPU and whether moma can run on it. */
export interface CudaDeviceStatus extends NativeDeviceInfo {
  usable: boolean;
  /** Why the GPU is refused (its compute capability and what is supported); null when usable. */
  refusal: string | null;
}

/** What moma can do with the GPUs of this machine (lib/device.ts cudaStatus()). */
export interface CudaStatus {
  /** At least one GPU can run moma's kernels. */
  usable: boolean;
  /** Why no GPU can be used (null when usable): no driver, a driver too old, no device, only refused devices, … */
  reason: string | null;
  /** An NVIDIA driver or GPU is present: falling back to the CPU here deserves a warning. */
  gpuPresent: boolean;
  /** The CUDA runtime compiled in ('13.0'); null without CUDA. */
  runtime: string | null;
  /** The driver found: kernel module version ('580.65.06') and the CUDA version it supports ('13.0'). */
  driver: { kernel: string | null; cuda: string | null };
  /** The driver the runtime needs, e.g. 'a driver for CUDA 13.0 or newer (R580+)'; null without CUDA. */
  needed: string | null;
  devices: CudaDeviceStatus[];
}

/** The lowest compute capability moma's CUDA kernels run on (sm_80). */
export const MIN_COMPUTE_CAPABILITY = 8.0;
const SUPPORTED_GPUS = 'compute capability 8.0 or newer (sm_80+: Ampere, Ada Lovelace, Hopper and later)';
const PROC_DRIVER_VERSION = '/proc/driver/nvidia/version';

/** 13000 -> '13.0'; 0 (none) -> null. */
export function cudaVersionText(version: number): string | null {
  return version > 0 ? `${Math.floor(version / 1000)}.${Math.floor((version % 1000) / 10)}` : null;
}

/** The oldest NVIDIA driver branch that supports CUDA `major` (CUDA toolkit release notes). */
export function driverBranchFor(major: number): string {
  if (major >= 13) return 'R580';
  if (major === 12) return 'R525';
  if (major === 11) return 'R450';
  return 'R418';
}

/** The version in /proc/driver/nvidia/version's NVRM line ('580.65.06'), or null. */
export function parseKernelDriverVersion(text: string): string | null {
  const line = text.split('\n').find((l) => l.startsWith('NVRM version:'));
  const match = line?.match(/\s(\d{2,4}\.\d{1,3}(?:\.\d{1,3})?)\s/);
  return match?.[1] ?? null;
}

/** The loaded NVIDIA kernel module's version, or null when there is none (or `file` cannot be read). */
export function readKernelDriverVersion(file = PROC_DRIVER_VERSION): string | null {
  try {
    return parseKernelDriverVersion(fs.readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
}

function capabilityOf(device: NativeDeviceInfo): number {
  return Number(device.computeCapability);
}

function smName(device: NativeDeviceInfo): string {
  return `sm_${device.computeCapability.replace('.', '')}`;
}

interface ArchEntry {
  major: number;
  minor: number;
  /** Runs only on exactly this capability ('90a'). */
  specific: boolean;
  real: boolean;
  virtual: boolean;
}

/**
 * CMake CUDA_ARCHITECTURES entries ('80-real', '90' = SASS and PTX, '90-virtual', '90a-real'), or
 * null when the list is unknown or symbolic ('native', 'all', 'all-major').
 */
export function parseArchitectures(text: string): ArchEntry[] | null {
  const entries: ArchEntry[] = [];
  for (const item of text.split(/[,;]/).map((t) => t.trim()).filter((t) => t.length > 0)) {
    const m = /^(\d+)(\d)([af]?)(-real|-virtual)?$/.exec(item);
    if (!m) return null;
    entries.push({ major: Number(m[1]), minor: Number(m[2]), specific: m[3] === 'a', real: m[4] !== '-virtual', virtual: m[4] !== '-real' });
  }
  return entries.length > 0 ? entries : null;
}

/** Whether a kernel image built for `entries` loads on a GPU of capability major.minor (SASS within a major, PTX by JIT upwards). */
export function architecturesRunOn(entries: ArchEntry[], major: number, minor: number): boolean {
  return entries.some((e) => {
    if (e.specific) return e.major === major && e.minor === minor;
    return (e.real && e.major === major && e.minor <= minor) || (e.virtual && (major > e.major || (major === e.major && minor >= e.minor)));
  });
}

function deviceStatus(device: NativeDeviceInfo, architectures: string): CudaDeviceStatus {
  if (capabilityOf(device) < MIN_COMPUTE_CAPABILITY) {
    const refusal = `${device.name} has compute capability ${device.computeCapability} (${smName(device)}); moma's CUDA kernels need ${SUPPORTED_GPUS}`;
    return { ...device, usable: false, refusal };
  }
  const entries = parseArchitectures(architectures);
  const [major, minor] = device.computeCapability.split('.').map(Number) as [number, number];
  if (entries !== null && !architecturesRunOn(entries, major, minor)) {
    const refusal = `${device.name} has compute capability ${device.computeCapability} (${smName(device)}), but this binary's CUDA kernels were built for `
      + `${architectures} only: rebuild from source with MOMA_CUDA_ARCHS="${major}${minor}-real;90" (e.g. MOMA_CUDA_ARCHS="${major}${minor}-real;90" npm rebuild moma)`;
    return { ...device, usable: false, refusal };
  }
  return { ...device, usable: true, refusal: null };
}

function driverFound(probe: CudaProbe): string {
  return probe.kernelDriver === null ? 'the NVIDIA driver' : `the NVIDIA driver ${probe.kernelDriver}`;
}

/** Why no GPU is usable, or null when one is. */
function unusableReason(probe: CudaProbe, devices: CudaDeviceStatus[], needed: string | null): string | null {
  if (!probe.compiled) {
    return `moma was built without CUDA (this binary has the CPU backend only)${probe.kernelDriver === null ? ''
      : `, though the NVIDIA driver ${probe.kernelDriver} is loaded: build from source with the CUDA toolkit (npm rebuild moma with nvcc on PATH) to use the GPU`}`;
  }
  const runtimeMajor = Math.floor(probe.runtimeVersion / 1000);
  if (probe.driverVersion === 0) {
    return probe.kernelDriver === null
      ? 'no NVIDIA driver (the CUDA driver library libcuda.so.1 could not be loaded)'
      : `the NVIDIA kernel driver ${probe.kernelDriver} is loaded, but this process could not load its CUDA library libcuda.so.1 `
        + '(in a container, start it with the NVIDIA Container Toolkit, e.g. docker run --gpus all)';
  }
  if (Math.floor(probe.driverVersion / 1000) < runtimeMajor) {
    return `${driverFound(probe)} supports CUDA ${cudaVersionText(probe.driverVersion)}, but moma's CUDA ${cudaVersionText(probe.runtimeVersion)} runtime needs ${needed}: `
      + `update the NVIDIA driver to ${driverBranchFor(runtimeMajor).slice(1)} or newer`;
  }
  if (probe.deviceCountError !== null) {
    const hidden = probe.cudaVisibleDevices !== null && probe.deviceCountError.name === 'cudaErrorNoDevice'
      ? ` (CUDA_VISIBLE_DEVICES='${probe.cudaVisibleDevices}')` : '';
    return `cudaGetDeviceCount failed: ${probe.deviceCountError.name} (${probe.deviceCountError.message})${hidden}`;
  }
  if (devices.length === 0) return 'no CUDA device visible';
  if (devices.some((d) => d.usable)) return null;
  if (devices.every((d) => capabilityOf(d) < MIN_COMPUTE_CAPABILITY)) {
    const listed = devices.map((d) => `cuda:${d.index} ${d.name} is ${smName(d)}`).join(', ');
    return `no usable CUDA device: ${listed}; moma's CUDA kernels need ${SUPPORTED_GPUS}`;
  }
  return `no usable CUDA device: ${devices.map((d) => `cuda:${d.index} ${d.refusal}`).join('; ')}`;
}

/** Decides from `probe` whether (and which) GPUs moma can use, and why not. Pure. */
export function decideCuda(probe: CudaProbe): CudaStatus {
  const devices = probe.devices.map((d) => deviceStatus(d, probe.architectures));
  const runtimeMajor = Math.floor(probe.runtimeVersion / 1000);
  const needed = probe.compiled && runtimeMajor > 0 ? `a driver for CUDA ${runtimeMajor}.0 or newer (${driverBranchFor(runtimeMajor)}+)` : null;
  const reason = unusableReason(probe, devices, needed);
  return {
    usable: reason === null,
    reason,
    gpuPresent: probe.kernelDriver !== null || probe.driverVersion > 0 || devices.length > 0,
    runtime: probe.compiled ? cudaVersionText(probe.runtimeVersion) : null,
    driver: { kernel: probe.kernelDriver, cuda: cudaVersionText(probe.driverVersion) },
    needed,
    devices,
  };
}

/**
 * Why `device` ('cuda:N') cannot be used under `status`, as the ERR_DEVICE message of `op`, or null
 * when it can. The message says what is wrong (no driver, a driver too old, no such device, a GPU
 * below sm_80) and, for a refused GPU, which ones here are usable.
 */
export function cudaDeviceProblem(status: CudaStatus, device: `cuda:${number}`, op: string): string | null {
  const index = Number(device.slice('cuda:'.length));
  const listed = status.devices.find((d) => d.index === index);
  if (listed?.usable) return null;
  if (listed !== undefined) {
    const others = status.devices.filter((d) => d.usable).map((d) => `cuda:${d.index}`);
    return `${op}: device '${device}' cannot be used: ${listed.refusal}${others.length > 0 ? `; usable here: ${others.join(', ')}` : ''}`;
  }
  if (status.devices.length === 0) return `${op}: device '${device}' is not available: ${status.reason}`;
  const n = status.devices.length;
  return `${op}: device '${device}' is not available (${n} CUDA device${n === 1 ? '' : 's'} visible)`;
}
