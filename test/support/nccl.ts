/**
 * Gates and runners of the NCCL copies of the distributed suites (test/dist_nccl.test.ts): how many
 * GPUs this process sees and why none, whether a one-rank NCCL world can be made here (probed in a
 * child process, test/fixtures/dist_nccl/probe.js, so a missing libnccl.so.2 or a crash in the
 * driver never takes jest down), per-case gates by GPU count, and the moma CLI run with the GPUs
 * visible (support/cli.ts's runCli forces MOMA_DEVICE=cpu).
 */
import { spawn, spawnSync } from 'child_process';
import * as path from 'path';
import { cudaDeviceCount } from '../../lib';
import { native } from '../../lib/binding';
import type { CliResult } from './cli';

const root = path.join(__dirname, '..', '..');
const cli = path.join(root, 'dist', 'cli', 'main.js');

/** The CUDA devices this process can use, and when there are none, why (for the skip notice). */
export function visibleGpus(): { count: number; none: string } {
  if (process.env.MOMA_DEVICE === 'cpu') return { count: 0, none: 'no CUDA device (MOMA_DEVICE=cpu hides them)' };
  const cuda = native().info().cuda;
  if (!cuda.compiled) return { count: 0, none: 'no CUDA device (this moma addon was built without CUDA)' };
  if (cuda.driverVersion === 0) return { count: 0, none: 'no CUDA device (no NVIDIA driver)' };
  const count = cudaDeviceCount();
  return { count, none: count === 0 ? 'no CUDA device (the driver sees none; check CUDA_VISIBLE_DEVICES)' : '' };
}

export type NcclProbe = { loaded: true } | { loaded: false; why: string };

/** Makes (and leaves) a one-rank NCCL world on cuda:0 in a child process: loaded, or why not (ERR_LOAD: what to install). */
export function probeNccl(): NcclProbe {
  const probe = spawnSync(process.execPath, [path.join(__dirname, '..', 'fixtures', 'dist_nccl', 'probe.js')], { encoding: 'utf8', timeout: 120_000 });
  const line = (probe.stdout ?? '').split('\n').find((l) => l.startsWith('{'));
  if (line === undefined) {
    const end = probe.error !== undefined ? probe.error.message : probe.signal !== null ? `killed by ${probe.signal}` : `exit code ${String(probe.status)}`;
    return { loaded: false, why: `the NCCL probe (test/fixtures/dist_nccl/probe.js) printed no result (${end}): ${(probe.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}` };
  }
  const result = JSON.parse(line) as { loaded: boolean; code?: string; message?: string };
  return result.loaded ? { loaded: true } : { loaded: false, why: `${result.code ?? 'error'}: ${result.message ?? ''}` };
}

/**
 * describe when at least one GPU is visible and a one-rank NCCL world can be made, else
 * describe.skip with one notice saying which of the two is missing.
 */
export function describeNccl(gpus: { count: number; none: string }): jest.Describe {
  if (gpus.count === 0) {
    console.log(`moma tests: ${gpus.none}: the NCCL copies of the distributed suites are skipped`);
    return describe.skip;
  }
  const nccl = probeNccl();
  if (!nccl.loaded) {
    console.log(`moma tests: ${gpus.count} GPU(s) but NCCL cannot be used: ${nccl.why}; the NCCL copies of the distributed suites are skipped`);
    return describe.skip;
  }
  return describe;
}

/**
 * A test that needs `needed` GPUs: test when that many are visible, else test.skip with the name
 * saying how many it needs (and, where some GPUs are visible, a notice; without any, describeNccl's
 * one notice covers every case).
 */
export function testOnGpus(needed: number, visible: number, name: string, fn: jest.ProvidesCallback, timeout?: number): void {
  if (visible >= needed) {
    test(name, fn, timeout);
    return;
  }
  if (visible > 0) console.log(`moma tests: '${name}' needs ${needed} GPUs, ${visible} visible: skipped`);
  test.skip(`${name} [needs ${needed} GPUs, ${visible} visible]`, fn, timeout);
}

/** `args` with the value after every `flag` replaced by `value` (`--device`, `--preset`, …). */
export function withFlag(args: readonly string[], flag: string, value: string): string[] {
  return args.map((a, i) => (args[i - 1] === flag ? value : a));
}

/** Runs `moma args…` in `cwd` with the GPUs visible (the environment as it is, less MOMA_DEVICE). */
export function runMoma(cwd: string, args: string[]): Promise<CliResult> {
  const env = { ...process.env };
  delete env.MOMA_DEVICE;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { cwd, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
