/**
 * Where a run ran, recorded in run.json (`environment`, and in each resume): the host, the CPU,
 * the GPUs with their driver and CUDA runtime (from the addon's device info, lib/inspect.ts),
 * Node, the moma binary (prebuilt or built from source; CPU-only or CPU + CUDA), the git checkout
 * when the working folder or the moma package is one, and the command line. Nothing here fails a
 * run: a value that cannot be found is null.
 */
import { execFileSync } from 'child_process';
import * as os from 'os';
import { packageRoot } from '../binding';
import { inspect } from '../inspect';

export interface RunEnvironment {
  host: string;
  /** Operating system and architecture, e.g. "Linux 6.1.0-18-amd64 x64". */
  os: string;
  /** CPU model, logical cores, and the threads of moma's CPU pool. */
  cpu: { model: string; cores: number; threads: number };
  /** The CUDA devices moma sees (none: an empty list). */
  gpus: { index: number; name: string; memoryGiB: number; computeCapability: string }[];
  /** CUDA driver and the runtime the binary was built with (null without CUDA). */
  cuda: { driver: string | null; runtime: string | null };
  node: string;
  moma: string;
  /** The addon: 'prebuilt' or 'source' build, its backends (['cpu'] or ['cpu', 'cuda']), its path. */
  binary: { kind: string; backends: string[]; path: string };
  /** The git checkout of the working folder, else of the moma package; null when neither is one (or git is missing). */
  git: { sha: string; dirty: boolean; root: string } | null;
  /** The process's command line (the node executable left out). */
  command: string[];
}

const GIT_TIMEOUT_MS = 5000;

function git(dir: string, args: string[]): string | null {
  try {
    return execFileSync('git', ['-C', dir, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: GIT_TIMEOUT_MS }).trim();
  } catch {
    return null;
  }
}

/** The commit, dirtiness (tracked files only) and top folder of the git checkout holding `dir`, or null. */
export function gitCheckout(dir: string): RunEnvironment['git'] {
  const sha = git(dir, ['rev-parse', 'HEAD']);
  if (sha === null || !/^[0-9a-f]{40,64}$/.test(sha)) return null;
  const status = git(dir, ['status', '--porcelain', '--untracked-files=no']);
  return { sha, dirty: status !== null && status !== '', root: git(dir, ['rev-parse', '--show-toplevel']) ?? dir };
}

/** The environment of this process (`command` defaults to process.argv less the node executable). */
export function runEnvironment(command: string[] = process.argv.slice(1)): RunEnvironment {
  const report = inspect();
  const cpus = os.cpus();
  return {
    host: os.hostname(),
    os: `${os.type()} ${os.release()} ${process.arch}`,
    cpu: { model: cpus[0]?.model.trim() ?? 'unknown', cores: cpus.length, threads: report.cpu.threads },
    gpus: report.cuda.devices.map((d) => ({ index: d.index, name: d.name, memoryGiB: d.memoryGiB, computeCapability: d.computeCapability })),
    cuda: { driver: report.cuda.driverVersion, runtime: report.cuda.runtimeVersion },
    node: process.version,
    moma: report.version,
    binary: { kind: report.binary.kind, backends: report.backends, path: report.binary.path },
    git: gitCheckout(process.cwd()) ?? gitCheckout(packageRoot),
    command: [...command],
  };
}
