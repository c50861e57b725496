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
  cpu: { threads: number; simd: string; gemmKernel: string };
  forcedDevice: string | null;
}

function cudaVersion(v: number): string | null {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

export function inspect(): InspectReport {
  const { binding, loaded } = loadBinding();
  const info = binding.info();
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
    cpu: { threads: info.cpu.threads, simd: info.cpu.simd, gemmKernel: info.cpu.gemm },
    forcedDevice: process.env.MOMA_DEVICE || null,
  };
}
