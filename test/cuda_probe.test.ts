/**
 * Whether moma can use the GPU, and what it says when it cannot (lib/cuda_probe.ts, lib/device.ts):
 * the decision over fabricated probes (an H100 on R580, a driver too old, an sm_75 GPU beside an
 * sm_90 one, only old GPUs, no driver, a container without libcuda, a CPU-only binary), the device
 * `moma train` picks, the native probe on this machine, and MOMA_DEVICE=cuda:0 in a child process.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { MomaError, zeros } from '../lib';
import { NativeDeviceInfo } from '../lib/binding';
import { architecturesRunOn, CudaProbe, cudaDeviceProblem, cudaVersionText, decideCuda, driverBranchFor, parseArchitectures, parseKernelDriverVersion } from '../lib/cuda_probe';
import { chooseTrainDevice, cudaProbe, cudaStatus, requireUsableDevice } from '../lib/device';
import { cudaReportLines, inspect } from '../lib/inspect';
import { ensureDist } from './support/cli';

const SUPPORTED = "moma's CUDA kernels need compute capability 8.0 or newer (sm_80+: Ampere, Ada Lovelace, Hopper and later)";

function gpu(index: number, name: string, computeCapability: string): NativeDeviceInfo {
  return { index, name, totalMemory: 80 * 2 ** 30, computeCapability, multiprocessors: 132 };
}

function probe(overrides: Partial<CudaProbe>): CudaProbe {
  return {
    compiled: true, runtimeVersion: 13000, driverVersion: 13000, deviceCountError: null, devices: [],
    kernelDriver: '580.65.06', cudaVisibleDevices: null, architectures: '', ...overrides,
  };
}

const insufficientDriver = { name: 'cudaErrorInsufficientDriver', message: 'CUDA driver version is insufficient for CUDA runtime version' };
const h100 = gpu(0, 'NVIDIA H100 80GB HBM3', '9.0');

/** chooseTrainDevice under `status` without MOMA_DEVICE: the device and what it warned. */
function trainDevice(requested: string | undefined, status: ReturnType<typeof decideCuda>): { device: string; warnings: string[] } {
  const saved = process.env.MOMA_DEVICE;
  delete process.env.MOMA_DEVICE;
  try {
    const warnings: string[] = [];
    const device = chooseTrainDevice(requested, (text) => warnings.push(text), status);
    return { device, warnings };
  } finally {
    if (saved !== undefined) process.env.MOMA_DEVICE = saved;
  }
}

function deviceError(fn: () => unknown): MomaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(MomaError);
    expect((err as MomaError).code).toBe('ERR_DEVICE');
    return err as MomaError;
  }
  throw new Error('expected ERR_DEVICE');
}

describe('versions and the kernel driver', () => {
  test('CUDA versions print as major.minor; each major has its oldest driver branch', () => {
    expect([cudaVersionText(13000), cudaVersionText(12040), cudaVersionText(12080), cudaVersionText(0)]).toEqual(['13.0', '12.4', '12.8', null]);
    expect([driverBranchFor(13), driverBranchFor(12), driverBranchFor(11)]).toEqual(['R580', 'R525', 'R450']);
  });

  test('the version from /proc/driver/nvidia/version (proprietary and open kernel modules)', () => {
    expect(parseKernelDriverVersion('NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:47 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n'))
      .toBe('580.65.06');
    expect(parseKernelDriverVersion('NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  550.54.14  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Feb 22 01:25:25 UTC 2024\n'))
      .toBe('550.54.14');
    expect(parseKernelDriverVersion('GCC version: gcc 12.2.0\n')).toBeNull();
  });
});

describe('decideCuda', () => {
  test('an H100 on an R580 driver is usable', () => {
    const status = decideCuda(probe({ devices: [h100] }));
    expect(status).toMatchObject({ usable: true, reason: null, gpuPresent: true, runtime: '13.0', driver: { kernel: '580.65.06', cuda: '13.0' }, needed: 'a driver for CUDA 13.0 or newer (R580+)' });
    expect(status.devices.map((d) => [d.index, d.usable, d.refusal])).toEqual([[0, true, null]]);
    expect(cudaDeviceProblem(status, 'cuda:0', 'full')).toBeNull();
    expect(cudaDeviceProblem(status, 'cuda:3', 'full')).toBe("full: device 'cuda:3' is not available (1 CUDA device visible)");
    expect(trainDevice(undefined, status)).toEqual({ device: 'cuda:0', warnings: [] });
    expect(trainDevice('cuda', status)).toEqual({ device: 'cuda:0', warnings: [] });
    expect(trainDevice('cpu', status)).toEqual({ device: 'cpu', warnings: [] });
  });

  test('a 12.4 driver with a GPU: not usable, naming the driver found and the one needed', () => {
    const status = decideCuda(probe({ driverVersion: 12040, kernelDriver: '550.54.14', deviceCountError: insufficientDriver }));
    const reason = "the NVIDIA driver 550.54.14 supports CUDA 12.4, but moma's CUDA 13.0 runtime needs a driver for CUDA 13.0 or newer (R580+): update the NVIDIA driver to 580 or newer";
    expect(status).toMatchObject({ usable: false, reason, gpuPresent: true, driver: { kernel: '550.54.14', cuda: '12.4' } });
    expect(cudaDeviceProblem(status, 'cuda:0', 'train: --device')).toBe(`train: --device: device 'cuda:0' is not available: ${reason}`);

    const chosen = trainDevice(undefined, status);
    expect(chosen.device).toBe('cpu');
    expect(chosen.warnings).toHaveLength(1);
    expect(chosen.warnings[0]).toMatch(/^moma: WARNING: this machine has an NVIDIA GPU or driver, but moma cannot use it: the NVIDIA driver 550\.54\.14 supports CUDA 12\.4/);
    expect(chosen.warnings[0]).toContain('Training falls back to the CPU');
    expect(chosen.warnings[0]).toContain('--device cpu');

    const warnings: string[] = [];
    const err = deviceError(() => chooseTrainDevice('cuda', (t) => warnings.push(t), status));
    expect(err.message).toBe(`train: --device: device 'cuda:0' is not available: ${reason}`);
    expect(warnings).toEqual([]);
    // without the kernel module's version (no /proc entry) the CUDA version alone names the driver
    expect(decideCuda(probe({ driverVersion: 12040, kernelDriver: null, deviceCountError: insufficientDriver })).reason)
      .toMatch(/^the NVIDIA driver supports CUDA 12\.4, but moma's CUDA 13\.0 runtime needs a driver for CUDA 13\.0 or newer \(R580\+\)/);
  });

  test('an sm_75 GPU beside an sm_90 one: refused, not counted, the sm_90 one is chosen', () => {
    const status = decideCuda(probe({ devices: [gpu(0, 'Tesla T4', '7.5'), gpu(1, 'NVIDIA H100 80GB HBM3', '9.0')] }));
    expect(status.usable).toBe(true);
    expect(status.reason).toBeNull();
    expect(status.devices.map((d) => d.usable)).toEqual([false, true]);
    expect(status.devices[0]!.refusal).toBe(`Tesla T4 has compute capability 7.5 (sm_75); ${SUPPORTED}`);
    expect(cudaDeviceProblem(status, 'cuda:0', 'full')).toBe(`full: device 'cuda:0' cannot be used: Tesla T4 has compute capability 7.5 (sm_75); ${SUPPORTED}; usable here: cuda:1`);
    expect(trainDevice(undefined, status)).toEqual({ device: 'cuda:1', warnings: [] });
    expect(deviceError(() => trainDevice('cuda:0', status)).message).toContain("device 'cuda:0' cannot be used: Tesla T4 has compute capability 7.5 (sm_75)");
    expect(deviceError(() => requireUsableDevice('cuda:0', 'setDefaultDevice', status)).message).toMatch(/^setDefaultDevice: device 'cuda:0' cannot be used: Tesla T4/);
    expect(requireUsableDevice('cuda:1', 'setDefaultDevice', status)).toBe('cuda:1');
  });

  test('only GPUs below sm_80: not usable, a loud fallback for train', () => {
    const status = decideCuda(probe({ devices: [gpu(0, 'Tesla V100-SXM2-16GB', '7.0'), gpu(1, 'Tesla T4', '7.5')] }));
    expect(status.usable).toBe(false);
    expect(status.reason).toBe(`no usable CUDA device: cuda:0 Tesla V100-SXM2-16GB is sm_70, cuda:1 Tesla T4 is sm_75; ${SUPPORTED}`);
    expect(cudaDeviceProblem(status, 'cuda:1', 'full')).toBe(`full: device 'cuda:1' cannot be used: Tesla T4 has compute capability 7.5 (sm_75); ${SUPPORTED}`);
    const chosen = trainDevice(undefined, status);
    expect(chosen.device).toBe('cpu');
    expect(chosen.warnings[0]).toContain(status.reason!);
  });

  test('no NVIDIA driver: not usable, and the CPU is chosen without a warning', () => {
    const status = decideCuda(probe({ driverVersion: 0, kernelDriver: null, deviceCountError: insufficientDriver }));
    expect(status).toMatchObject({ usable: false, gpuPresent: false, driver: { kernel: null, cuda: null }, reason: 'no NVIDIA driver (the CUDA driver library libcuda.so.1 could not be loaded)' });
    expect(trainDevice(undefined, status)).toEqual({ device: 'cpu', warnings: [] });
    expect(deviceError(() => trainDevice('cuda:0', status)).message)
      .toBe("train: --device: device 'cuda:0' is not available: no NVIDIA driver (the CUDA driver library libcuda.so.1 could not be loaded)");
  });

  test('a kernel module without libcuda (a container started without GPU access) is a GPU present but unusable', () => {
    const status = decideCuda(probe({ driverVersion: 0, kernelDriver: '580.65.06', deviceCountError: insufficientDriver }));
    expect(status.gpuPresent).toBe(true);
    expect(status.reason).toMatch(/^the NVIDIA kernel driver 580\.65\.06 is loaded, but this process could not load its CUDA library libcuda\.so\.1 .*docker run --gpus all/);
    expect(trainDevice(undefined, status).warnings).toHaveLength(1);
  });

  test('a CPU-only binary on a GPU machine says how to get the GPU', () => {
    const status = decideCuda(probe({ compiled: false, runtimeVersion: 0, driverVersion: 0, kernelDriver: '580.65.06' }));
    expect(status).toMatchObject({ usable: false, gpuPresent: true, runtime: null, needed: null });
    expect(status.reason).toMatch(/^moma was built without CUDA \(this binary has the CPU backend only\), though the NVIDIA driver 580\.65\.06 is loaded: build from source/);
    expect(decideCuda(probe({ compiled: false, runtimeVersion: 0, driverVersion: 0, kernelDriver: null })).gpuPresent).toBe(false);
  });

  test('a GPU the binary has no kernel image for is refused, naming the architectures built and how to rebuild', () => {
    const a100 = gpu(0, 'NVIDIA A100-SXM4-80GB', '8.0');
    const status = decideCuda(probe({ devices: [a100], architectures: '90' }));
    expect(status.usable).toBe(false);
    const refusal = 'NVIDIA A100-SXM4-80GB has compute capability 8.0 (sm_80), but this binary\'s CUDA kernels were built for 90 only: '
      + 'rebuild from source with MOMA_CUDA_ARCHS="80-real;90" (e.g. MOMA_CUDA_ARCHS="80-real;90" npm rebuild moma)';
    expect(status.devices[0]!.refusal).toBe(refusal);
    expect(status.reason).toBe(`no usable CUDA device: cuda:0 ${refusal}`);
    expect(decideCuda(probe({ devices: [a100], architectures: '80-real,86-real,89-real,90' })).usable).toBe(true);
    expect(decideCuda(probe({ devices: [a100], architectures: 'native' })).usable).toBe(true);  // unknown: not refused
  });

  test('which architectures load on which GPU: SASS within a major version, PTX upwards, "a" only on its own', () => {
    const runs = (archs: string, cc: string): boolean => {
      const [major, minor] = cc.split('.').map(Number) as [number, number];
      return architecturesRunOn(parseArchitectures(archs)!, major, minor);
    };
    expect(runs('80-real', '8.9')).toBe(true);
    expect(runs('89-real', '8.6')).toBe(false);
    expect(runs('80-real', '9.0')).toBe(false);
    expect(runs('80', '9.0')).toBe(true);
    expect(runs('80-real;86-real;89-real;90', '10.0')).toBe(true);
    expect(runs('90a-real', '10.0')).toBe(false);
    expect(runs('90a-real', '9.0')).toBe(true);
    expect(runs('90-virtual', '8.9')).toBe(false);
    expect(parseArchitectures('all-major')).toBeNull();
    expect(parseArchitectures('')).toBeNull();
  });

  test("cudaGetDeviceCount's own error is named, with CUDA_VISIBLE_DEVICES when it hides every GPU", () => {
    const noDevice = { name: 'cudaErrorNoDevice', message: 'no CUDA-capable device is detected' };
    expect(decideCuda(probe({ deviceCountError: noDevice, cudaVisibleDevices: '' })).reason)
      .toBe("cudaGetDeviceCount failed: cudaErrorNoDevice (no CUDA-capable device is detected) (CUDA_VISIBLE_DEVICES='')");
    const mismatch = { name: 'cudaErrorSystemDriverMismatch', message: 'system has unsupported display driver / cuda driver combination' };
    expect(decideCuda(probe({ deviceCountError: mismatch })).reason)
      .toBe('cudaGetDeviceCount failed: cudaErrorSystemDriverMismatch (system has unsupported display driver / cuda driver combination)');
  });
});

describe('this machine', () => {
  const real = cudaProbe();
  const status = cudaStatus();

  test('the native probe reports the runtime compiled in, the driver and the devices', () => {
    if (!real.compiled) {
      expect([real.runtimeVersion, real.deviceCountError, real.devices]).toEqual([0, null, []]);
    } else {
      expect(real.runtimeVersion).toBeGreaterThanOrEqual(12000);
      expect(real.runtimeVersion % 10).toBe(0);
    }
    if (real.compiled && real.driverVersion === 0) {
      // no driver: cudart reports an insufficient driver and lists nothing (the build machine)
      expect(real.deviceCountError).toEqual(insufficientDriver);
      expect(real.devices).toEqual([]);
      expect(status.usable).toBe(false);
      expect(status.reason).toMatch(/no NVIDIA driver|kernel driver .* is loaded, but/);
    }
    for (const d of real.devices) expect(d.computeCapability).toMatch(/^\d+\.\d$/);
    expect(status.devices.map((d) => d.index)).toEqual(real.devices.map((d) => d.index));
  });

  test('inspect reports the driver found, the driver needed and why no GPU is used', () => {
    const report = inspect();
    expect(report.cuda).toMatchObject({ usable: status.usable, reason: status.reason, kernelDriver: status.driver.kernel, driverNeeded: status.needed });
    const lines = cudaReportLines(report);
    if (report.cuda.compiled) {
      expect(lines[0]).toBe(`cuda:     compiled, runtime ${report.cuda.runtimeVersion} (needs ${status.needed})`);
      if (real.driverVersion === 0 && real.kernelDriver === null) expect(lines[1]).toBe('driver:   none found');
    }
    expect(lines[lines.length - 1]).toBe(status.usable ? `gpu:      usable: ${status.devices.filter((d) => d.usable).map((d) => `cuda:${d.index}`).join(', ')}` : `gpu:      not usable: ${status.reason}`);
  });

  test('the native side refuses a CUDA device with the same reason', () => {
    if (status.usable || !real.compiled) return;
    const err = deviceError(() => zeros([2], { device: 'cuda:0' }));
    if (real.driverVersion === 0) expect(err.message).toBe("full: device 'cuda:0' is not available: no NVIDIA driver (the CUDA driver library libcuda.so.1 could not be loaded)");
    else expect(err.message).toMatch(/^full: device 'cuda:0' (is not available|cannot be used)/);
  });
});

describe('MOMA_DEVICE in a child process (dist/)', () => {
  const root = path.join(__dirname, '..');
  const script = [
    "const moma = require('./dist');",
    "const report = (f) => { try { return { value: f() }; } catch (e) { return { code: e.code, message: e.message }; } };",
    'console.log(JSON.stringify({ imported: true, best: report(() => moma.bestDevice()), zeros: report(() => moma.zeros([2]).device), reason: require("./dist/device").cudaStatus().reason }));',
  ].join('\n');
  const runWith = (device: string): { imported: boolean; best: { value?: string; code?: string; message?: string }; zeros: { value?: string; code?: string; message?: string }; reason: string | null } => {
    const child = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', env: { ...process.env, MOMA_DEVICE: device } });
    expect(child.stderr).toBe('');
    return JSON.parse(child.stdout) as ReturnType<typeof runWith>;
  };

  beforeAll(() => ensureDist(), 300_000);

  test('MOMA_DEVICE=cuda:0 without a usable GPU: importing works, the first default-device read throws ERR_DEVICE naming why', () => {
    const out = runWith('cuda:0');
    expect(out.imported).toBe(true);
    if (cudaStatus().usable) {
      expect(out.best).toEqual({ value: 'cuda:0' });
      return;
    }
    const message = `MOMA_DEVICE=cuda:0: device 'cuda:0' is not available: ${out.reason} (unset MOMA_DEVICE, or set MOMA_DEVICE=cpu, to run on the CPU)`;
    expect(out.best).toEqual({ code: 'ERR_DEVICE', message });
    expect(out.zeros).toEqual({ code: 'ERR_DEVICE', message });
  });

  test('MOMA_DEVICE=cpu and a misspelt MOMA_DEVICE', () => {
    expect(runWith('cpu').best).toEqual({ value: 'cpu' });
    expect(runWith('gpu').best).toEqual({ code: 'ERR_DEVICE', message: "MOMA_DEVICE=gpu: unknown device 'gpu' (expected 'cpu', 'cuda' or 'cuda:N')" });
  });

  test('moma inspect --json still runs under MOMA_DEVICE=cuda:0 and says why no GPU is used', () => {
    const child = spawnSync(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'inspect', '--json'], { cwd: root, encoding: 'utf8', env: { ...process.env, MOMA_DEVICE: 'cuda:0' } });
    expect(child.status).toBe(0);
    const report = JSON.parse(child.stdout) as ReturnType<typeof inspect>;
    expect(report.forcedDevice).toBe('cuda:0');
    expect(report.cuda.usable).toBe(cudaStatus().usable);
    expect(report.cuda.reason).toBe(cudaStatus().reason);
    expect(report.cuda.driverNeeded).toBe(cudaStatus().needed);
  });
});
