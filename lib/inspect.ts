/** What loaded and what it sees: the data behind `moma inspect`. */
import * as fs from 'fs';
import * as path from 'path';
import { loadBinding, packageRoot } from './binding';

export interface InspectReport {
  version: string;
  node: string;
  platform: string;
  binary: { path: string; kind: 'prebuilt' | 'source' };
  backends: string[];
  cuda: {
    compiled: boolean;
    runtimeVersion: string | null;
    driverVersion: string | null;
    devices: { index: number; name: string; memoryGiB: number; computeCapability: string; multiprocessors: number }[];
  };
  /**
   * gemmKernel: the float32 GEMM kernel (avx512, avx2, generic); gemmBf16Kernel: the kernel of bf16 x bf16
   * GEMMs (amx, avx512bf16, or none: widened to the float32 kernel); gemm: both in one line, e.g.
   * "avx512bf16 (bf16), avx512 (f32)". MOMA_CPU_GEMM overrides the choice.
   */
  cpu: { threads: number; simd: string; gemmKernel: string; gemmBf16Kernel: string; gemm: string };
  forcedDevice: string | null;
}

function cudaVersion(v: number): string | null {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

/** "avx512bf16 (bf16), avx512 (f32)", or "avx512 (f32; bf16 widened)" without a bf16 kernel. */
function gemmSummary(f32: string, bf16: string): string {
  return bf16 === 'none' ? `${f32} (f32; bf16 widened)` : `${bf16} (bf16), ${f32} (f32)`;
}

export function inspect(): InspectReport {
  const { binding, loaded } = loadBinding();
  const info = binding.info();
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
      runtimeVersion: cudaVersion(info.cuda.runtimeVersion),
      driverVersion: cudaVersion(info.cuda.driverVersion),
      devices: info.cuda.devices.map((d) => ({
        index: d.index,
        name: d.name,
        memoryGiB: Math.round((d.totalMemory / 2 ** 30) * 10) / 10,
        computeCapability: d.computeCapability,
        multiprocessors: d.multiprocessors,
      })),
    },
    cpu: { threads: info.cpu.threads, simd: info.cpu.simd, gemmKernel: info.cpu.gemm, gemmBf16Kernel: bf16, gemm: gemmSummary(info.cpu.gemm, bf16) },
    forcedDevice: process.env.MOMA_DEVICE || null,
  };
}
