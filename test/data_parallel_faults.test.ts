/**
 * Faults of data parallel training on CPU ranks (gloo over loopback), through the real CLI:
 * - a rank of `moma launch … train` killed with SIGKILL after its first logged step ends the whole
 *   job: the launcher exits non-zero within a bounded time, names the rank, its pid and the signal,
 *   and leaves no process of any rank's process group behind;
 * - two `moma train` ranks started by hand that disagree on WORLD_SIZE (which the launcher cannot
 *   produce) both fail at the rendezvous with ERR_DIST naming the disagreement, within seconds.
 * The ranks are found through /proc (Linux): the launcher's children, told apart by RANK in their
 * environment. MOMA_DIST_TIMEOUT_S bounds every collective (10 s; 40 s for the rendezvous that must
 * fail well before it), so a regression fails, not hangs.
 * Each takes about 10 s on an idle 2-core machine; the limits leave room for a busy one.
 * Needs the gloo plugin (built when libgloo-dev is installed; .ci/run installs it).
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { freePort } from '../lib/distributed/launcher';
import { ensureDist } from './support/cli';
import { COMMON, describeGloo } from './support/dist_train';

const cli = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
const DIST_TIMEOUT_S = '10';
const GRACE_S = 5;
/** The rendezvous timeout of the world-size test: the failure must come well before it (process start-up included). */
const MISMATCH_TIMEOUT_S = 40;

interface Exit { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; at: number }

/** Starts `moma args…` in `cwd` (CPU, a 10 s collective timeout, `env` added); `exit` resolves when it has ended. */
function start(cwd: string, args: string[], env: Record<string, string> = {}): { child: ChildProcess; exit: Promise<Exit> } {
  const child = spawn(process.execPath, [cli, ...args], { cwd, env: { ...process.env, MOMA_DEVICE: 'cpu', MOMA_DIST_TIMEOUT_S: DIST_TIMEOUT_S, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exit = new Promise<Exit>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, at: Date.now() }));
  });
  return { child, exit };
}

/** ppid and process group of a live process from /proc/<pid>/stat, or null when it is gone (or a zombie). */
function procStat(pid: number): { ppid: number; pgid: number } | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses, so read after the last ')'
  const [state, ppid, pgid] = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return state === 'Z' ? null : { ppid: Number(ppid), pgid: Number(pgid) };
}

function pids(): number[] {
  return fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name)).map(Number);
}

/** A variable of a process's environment, or null when it cannot be read. */
function environ(pid: number, name: string): string | null {
  try {
    const entry = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').find((e) => e.startsWith(`${name}=`));
    return entry === undefined ? null : entry.slice(name.length + 1);
  } catch {
    return null;
  }
}

/** The launcher's rank processes by RANK (its children with RANK in their environment). */
function rankPids(launcherPid: number): Map<number, number> {
  const ranks = new Map<number, number>();
  for (const pid of pids()) {
    if (procStat(pid)?.ppid !== launcherPid) continue;
    const rank = environ(pid, 'RANK');
    if (rank !== null) ranks.set(Number(rank), pid);
  }
  return ranks;
}

/** Live processes of a process group (each rank leads its own). */
function groupMembers(pgid: number): number[] {
  return pids().filter((pid) => procStat(pid)?.pgid === pgid);
}

async function waitFor<T>(what: string, probe: () => T | null | undefined | false, timeoutMs: number, abort?: Promise<Exit>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let ended: Exit | null = null;
  void abort?.then((e) => (ended = e));
  for (;;) {
    const value = probe();
    if (value) return value;
    if (ended !== null) throw new Error(`${what}: the process ended first (code ${(ended as Exit).code}):\n${(ended as Exit).stdout}\n${(ended as Exit).stderr}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describeGloo('data parallel fault tests')('data parallel faults (2 CPU ranks, gloo, loopback)', () => {
  let dir: string;
  const started: ChildProcess[] = [];
  beforeAll(() => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-dp-faults-'));
  });
  afterAll(async () => {
    // after a failed test: SIGTERM first, which the launcher forwards to its ranks (a SIGKILL would orphan them)
    const running = started.filter((child) => child.exitCode === null && child.signalCode === null);
    for (const child of running) child.kill('SIGTERM');
    if (running.length > 0) await new Promise((r) => setTimeout(r, (GRACE_S + 1) * 1000));
    for (const child of running) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }, (GRACE_S + 5) * 1000);

  test('a rank killed with SIGKILL after its first logged step ends the job: non-zero exit, rank and signal named, no process left', async () => {
    const run = path.join(dir, 'killed');
    const { child, exit } = start(dir, [
      'launch', '--nproc-per-node', '2', '--master-port', '0', '--grace-seconds', String(GRACE_S),
      'train', ...COMMON, '--steps', '100000', '--checkpoint-every', '0', '--out', run,
    ]);
    started.push(child);
    const launcherPid = child.pid!;
    // rank 0 appends metrics.jsonl at each logged step (--log-every 1); a step needs both ranks' gradients, so rank 1 is past it too
    await waitFor('the first logged step', () => fs.existsSync(path.join(run, 'metrics.jsonl')) && fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8').includes('"step":1,'), 60_000, exit);
    const ranks = await waitFor('both rank processes', () => {
      const found = rankPids(launcherPid);
      return found.size === 2 ? found : null;
    }, 5_000, exit);
    const victim = ranks.get(1)!;
    const killedAt = Date.now();
    process.kill(victim, 'SIGKILL');
    const result = await exit;

    expect(result.code).not.toBe(0);
    expect(result.code).not.toBeNull();
    // bounded: the other rank gets SIGTERM at once and SIGKILL after the grace period; its collectives time out after 10 s
    expect(result.at - killedAt).toBeLessThan((GRACE_S + Number(DIST_TIMEOUT_S)) * 1000 + 5_000);
    expect(result.stdout + result.stderr).toMatch(new RegExp(`rank 1 \\(local rank 1, pid ${victim}\\) was killed by SIGKILL`));
    for (const [rank, pid] of ranks) {
      expect({ rank, alive: procStat(pid) !== null }).toEqual({ rank, alive: false });
      expect({ rank, group: groupMembers(pid) }).toEqual({ rank, group: [] });
    }
  }, 90_000);

  test('ranks started by hand that disagree on WORLD_SIZE both fail with ERR_DIST naming the disagreement', async () => {
    const port = String(await freePort('127.0.0.1'));
    const begun = Date.now();
    const rank = (r: number, worldSize: number) => {
      const size = String(worldSize);
      const { child, exit } = start(dir, ['train', ...COMMON, '--steps', '2', '--out', path.join(dir, `mismatch-${r}`)], {
        RANK: String(r), LOCAL_RANK: String(r), WORLD_SIZE: size, LOCAL_WORLD_SIZE: size, MASTER_ADDR: '127.0.0.1', MASTER_PORT: port,
        MOMA_DIST_TIMEOUT_S: String(MISMATCH_TIMEOUT_S),
      });
      started.push(child);
      return exit;
    };
    const [zero, one] = await Promise.all([rank(0, 2), rank(1, 3)]);
    for (const [r, result] of [[0, zero], [1, one]] as const) {
      expect({ rank: r, code: result.code }).toEqual({ rank: r, code: 1 });
      expect(result.stderr).toMatch(new RegExp(`ERR_DIST: .*rank ${r}: rendezvous at 127\\.0\\.0\\.1:${port} failed: world sizes differ: rank 1 was started with world size 3, rank 0 with 2`));
      // well before the rendezvous timeout: the mismatch is seen as soon as both ranks have arrived
      expect(result.at - begun).toBeLessThan((MISMATCH_TIMEOUT_S / 2) * 1000);
    }
  }, 60_000);
});
