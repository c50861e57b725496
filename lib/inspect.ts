/** What loaded and what it sees: the data behind `moma inspect`. */
import * as fs from 'fs';
import * as path from 'path';
import { loadBinding, packageRoot } from './binding';
import { cudaVersionText } from './cuda_probe';
import { cudaStatus } from './device';

export interface InspectReport {
  version: string;
  node: string;
  platform: string;
  binary: { path: string; kind: 'prebuilt' | 'source' };
  backends: string[];
  cuda: {
    compiled: boolean;
    runtimeVersion: string | null;
    /** The CUDA version the driver supports ('13.0'); null: no driver library. */
    driverVersion: string | null;
    /** The NVIDIA kernel module's version ('580.65.06'); null: none loaded. */
    kernelDriver: string | null;
    /** The driver the CUDA runtime needs ('a driver for CUDA 13.0 or newer (R580+)'); null without CUDA. */
    driverNeeded: string | null;
    /** Whether a GPU can be used; `reason` says why not (lib/cuda_probe.ts). */
    usable: boolean;
    reason: string | null;
    /** Every GPU listed; `refusal` says why one is not used (e.g. below sm_80). */
    devices: { index: number; name: string; memoryGiB: number; computeCapability: string; multiprocessors: number; usable: boolean; refusal: string | null }[];
  };
  /**
   * gemmKernel: the float32 GEMM kernel (avx512, avx2, neon, generic); gemmBf16Kernel: the kernel of bf16 x bf16
   * GEMMs (amx, avx512bf16, or none: widened to the float32 kernel); gemm: both in one line, e.g.
   * "avx512bf16 (bf16), avx512 (f32)". MOMA_CPU_GEMM overrides the choice.
   */
  cpu: { threads: number; simd: string; gemmKernel: string; gemmBf16Kernel: string; gemm: string };
  forcedDevice: string | null;
}


/** "avx512bf16 (bf16), avx512 (f32)", or "avx512 (f32; bf16 widened)" without a bf16 kernel. */
function gemmSummary(f32: string, bf16: string): string {
  return bf16 === 'none' ? `${f32} (f32; bf16 widened)` : `${bf16} (bf16), ${f32} (f32)`;
}

export function inspect(): InspectReport {
  const { binding, loaded } = loadBinding();
  const info = binding.info();
  const status = cudaStatus();
  const bf16 = info.cpu.gemmBf16;
  const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string };
  return {
    version: pkg.version,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    binary: loaded,
    backends: info.cuda.compiled ? ['cpu', 'cuda'] : ['cpu'],
    cuda: {
      compiled: info.cuda.compiled,
      runtimeVersion: cudaVersionText(info.cuda.runtimeVersion),
      driverVersion: status.driver.cuda,
      kernelDriver: status.driver.kernel,
      driverNeeded: status.needed,
      usable: status.usable,
      reason: status.reason,
      devices: status.devices.map((d) => ({
        index: d.index,
        name: d.name,
        memoryGiB: Math.round((d.totalMemory / 2 ** 30) * 10) / 10,
        computeCapability: d.computeCapability,
        multiprocessors: d.multiprocessors,
        usable: d.usable,
        refusal: d.refusal,
      })),
    },
    cpu: { threads: info.cpu.threads, simd: info.cpu.simd, gemmKernel: info.cpu.gemm, gemmBf16Kernel: bf16, gemm: gemmSummary(info.cpu.gemm, bf16) },
    forcedDevice: process.env.MOMA_DEVICE || null,
  };
}

/**
 * The CUDA part of `moma inspect`'s summary: the runtime and the driver it needs, the driver found,
 * every GPU (a refused one says why) and, when no GPU can be used, the reason.
 */
export function cudaReportLines(r: InspectReport): string[] {
  const c = r.cuda;
  if (!c.compiled) {
    const lines = ['cuda:     not compiled (this binary has the CPU backend only)'];
    if (c.kernelDriver !== null) lines.push(`driver:   NVIDIA ${c.kernelDriver} loaded, unused: ${c.reason}`);
    return lines;
  }
  const driver = c.driverVersion === null
    ? (c.kernelDriver === null ? 'none found' : `kernel module ${c.kernelDriver}, but libcuda.so.1 not loadable`)
    : `${c.kernelDriver ?? 'version unknown'} (supports CUDA ${c.driverVersion})`;
  const lines = [`cuda:     compiled, runtime ${c.runtimeVersion} (needs ${c.driverNeeded})`, `driver:   ${driver}`];
  if (c.devices.length === 0) lines.push('devices:  no CUDA device visible (everything runs on the CPU)');
  for (const d of c.devices) {
    const refused = d.refusal === null ? '' : ` — refused: ${d.refusal}`;
    lines.push(`  cuda:${d.index}  ${d.name}, ${d.memoryGiB} GiB, sm_${d.computeCapability.replace('.', '')}, ${d.multiprocessors} SMs${refused}`);
  }
  lines.push(c.usable ? `gpu:      usable: ${c.devices.filter((d) => d.usable).map((d) => `cuda:${d.index}`).join(', ')}` : `gpu:      not usable: ${c.reason}`);
  return lines;
}
