/**
 * `moma launch` without the command line: starts the ranks of one node as torchrun does, watches
 * them, and ends the job as one.
 *
 * Each local rank is a child process in its own session and process group (so one signal reaches
 * everything a rank started, and Ctrl-C at the terminal reaches only the launcher, which forwards
 * it). Its environment: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,
 * MASTER_PORT, MOMA_NUM_THREADS (its share of the node's CPU threads, unless already set) and
 * MOMA_LAUNCHER_PID. Rank 0 writes straight to the launcher's terminal (a TTY stays a TTY, so the
 * progress bar works); where the launcher's output is not a terminal, rank 0's output is copied
 * through unchanged. Every other rank's lines are prefixed `[rank N] `. The last lines of each rank
 * are kept for the failure report.
 *
 * Ending: all ranks exit 0 → success. The first rank that exits non-zero or by a signal fails the
 * job: every other rank's group gets SIGTERM, and SIGKILL once the grace period has passed; the
 * result names that rank, its exit code or signal and its last lines. SIGINT / SIGTERM / SIGHUP to
 * the launcher are forwarded to every rank (SIGHUP as SIGTERM), which then stop as a single run
 * does (checkpoint and exit); a second one kills every rank at once. Whatever is left of a rank's
 * group when its main process has exited is killed, and so is every rank if the launcher itself
 * exits.
 */
import { ChildProcess, spawn } from 'child_process';
import { constants as osConstants, availableParallelism } from 'os';
import * as net from 'net';
import { Writable } from 'stream';
import { MomaError } from '../errors';
import { cpuThreadsForRank, LAUNCHER_PID_VARIABLE } from './env';

export interface LaunchOptions {
  /** The command of every rank: program and arguments. */
  command: readonly string[];
  /** Ranks on this node. */
  nprocPerNode: number;
  /** Nodes in the job (default 1). */
  nnodes?: number;
  /** This node's index in [0, nnodes) (default 0). */
  nodeRank?: number;
  /** Host of global rank 0 (default 127.0.0.1). */
  masterAddr?: string;
  /** Port of rank 0's rendezvous store (default 29500); 0 picks a free port, with one node only. */
  masterPort?: number;
  /** Variables added to every rank's environment (over the launcher's own). */
  env?: Readonly<Record<string, string>>;
  /** How long a rank has after SIGTERM before SIGKILL when the job fails (default 30 000 ms). */
  timeoutGraceMs?: number;
  /** Working folder of the ranks (default: the launcher's). */
  cwd?: string;
  /** Where rank output goes (default process.stdout / process.stderr; rank 0 inherits them when they are terminals). */
  stdout?: Writable;
  stderr?: Writable;
  /** Forward the launcher's SIGINT / SIGTERM / SIGHUP to the ranks (default true). */
  forwardSignals?: boolean;
}

/** How one rank ended. */
export interface RankExit {
  rank: number;
  localRank: number;
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Its last output lines (stdout and stderr, in arrival order, without the prefix); empty when its output went straight to the terminal. */
  lastLines: string[];
}

export interface LaunchResult {
  /** Every rank exited 0. */
  ok: boolean;
  /** What the launcher should exit with: 0, 1 when a rank failed, 128 + n after forwarding signal n. */
  exitCode: number;
  /** The first rank that failed (exited non-zero or by a signal before any stop request), else null. */
  failure: RankExit | null;
  /** The signal forwarded to the ranks, if the launcher received one. */
  stoppedBy: NodeJS.Signals | null;
  /** How each local rank ended, by local rank. */
  ranks: RankExit[];
  /** The rendezvous port the ranks were given (the picked one when masterPort was 0). */
  masterPort: number;
  /** One line, or several with the failing rank's last lines, for the user. */
  message: string;
}

export const LAST_LINES_KEPT = 20;
const DEFAULT_GRACE_MS = 30_000;

function checkInteger(value: number, name: string, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) throw new MomaError('ERR_ARG', `launch: ${name} must be an integer in [${min}, ${max}], got ${value}`);
}

/** A TCP port nothing listens on at `host` now (the OS picks it; another process could take it before rank 0 does). */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', (err) => reject(new MomaError('ERR_ARG', `launch: cannot pick a free port on ${host}: ${err.message}`)));
    server.listen({ host, port: 0, exclusive: true }, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Splits a stream into lines for `keep`, copying it on to `sink` unchanged (prefix null) or line by line with the prefix. */
class LineSplitter {
  private partial = '';

  constructor(private readonly sink: Writable, private readonly prefix: string | null, private readonly keep: (line: string) => void) {}

  write(text: string): void {
    if (this.prefix === null) this.sink.write(text);
    const parts = (this.partial + text).split('\n');
    this.partial = parts.pop()!;
    for (const line of parts) this.line(line);
  }

  end(): void {
    if (this.partial !== '') this.line(this.partial);
    this.partial = '';
  }

  private line(line: string): void {
    if (this.prefix !== null) this.sink.write(`${this.prefix}${line}\n`);
    // A progress line rewritten with \r: keep what the user saw last.
    const shown = line.replace(/\r+$/, '');
    this.keep(shown.slice(shown.lastIndexOf('\r') + 1));
  }
}

interface RankProcess {
  rank: number;
  localRank: number;
  child: ChildProcess;
  pid: number;
  exited: boolean;
  closed: boolean;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last lines of stdout and stderr together, in arrival order. */
  lines: string[];
}

/** Sends `signal` to a rank's whole process group; false when the group is gone. */
function signalGroup(pid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false;
  }
}

function describeEnd(r: RankExit): string {
  return r.signal !== null ? `was killed by ${r.signal}` : `exited with code ${r.code}`;
}

/**
 * Starts `nprocPerNode` ranks running `command` and resolves when every one has ended (see the
 * module comment); rejects only for bad options or a command that cannot start.
 */
export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const nnodes = options.nnodes ?? 1;
  const nodeRank = options.nodeRank ?? 0;
  const masterAddr = options.masterAddr ?? '127.0.0.1';
  const graceMs = options.timeoutGraceMs ?? DEFAULT_GRACE_MS;
  checkInteger(options.nprocPerNode, 'nprocPerNode', 1, 1024);
  checkInteger(nnodes, 'nnodes', 1, 65536);
  checkInteger(nodeRank, 'nodeRank', 0, nnodes - 1);
  checkInteger(options.masterPort ?? 29500, 'masterPort', 0, 65535);
  if (!Number.isFinite(graceMs) || graceMs < 0) throw new MomaError('ERR_ARG', `launch: timeoutGraceMs must be a non-negative number, got ${graceMs}`);
  if (options.command.length === 0 || options.command[0] === '') throw new MomaError('ERR_ARG', 'launch: no command to run in each rank');
  if (masterAddr === '' || /\s/.test(masterAddr)) throw new MomaError('ERR_ARG', `launch: masterAddr must be a host name or IP address, got '${masterAddr}'`);
  let masterPort = options.masterPort ?? 29500;
  if (masterPort === 0) {
    if (nnodes > 1) throw new MomaError('ERR_ARG', 'launch: masterPort 0 (pick a free port) works on one node only: with several nodes, give every node the same port');
    masterPort = await freePort(masterAddr);
  }

  const stdout = options.stdout ?? process.stdout;
  const stderr = options.stderr ?? process.stderr;
  const worldSize = nnodes * options.nprocPerNode;
  const cores = availableParallelism();
  const [program, ...args] = options.command as [string, ...string[]];
  const ranks: RankProcess[] = [];

  let failure: RankProcess | null = null;
  let stoppedBy: NodeJS.Signals | null = null;
  let killTimer: NodeJS.Timeout | null = null;
  let killedAll = false;

  const killAll = (): void => {
    killedAll = true;
    for (const r of ranks) if (!r.exited) signalGroup(r.pid, 'SIGKILL');
  };
  const terminateOthers = (): void => {
    for (const r of ranks) if (!r.exited) signalGroup(r.pid, 'SIGTERM');
    killTimer = setTimeout(killAll, graceMs);
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stoppedBy !== null || failure !== null) {
      killAll();
      return;
    }
    stoppedBy = signal === 'SIGHUP' ? 'SIGTERM' : signal;
    for (const r of ranks) if (!r.exited) signalGroup(r.pid, stoppedBy);
  };
  const forwarded: NodeJS.Signals[] = options.forwardSignals === false ? [] : ['SIGINT', 'SIGTERM', 'SIGHUP'];
  const onLauncherExit = (): void => {
    for (const r of ranks) if (!r.exited) signalGroup(r.pid, 'SIGKILL');
  };

  let settle!: () => void;
  const allClosed = new Promise<void>((resolve) => (settle = resolve));
  let spawning = true;
  const checkDone = (): void => {
    if (!spawning && ranks.every((r) => r.closed)) settle();
  };

  process.on('exit', onLauncherExit);
  for (const s of forwarded) process.on(s, onSignal);
  try {
    for (let localRank = 0; localRank < options.nprocPerNode; localRank++) {
      if (failure !== null || stoppedBy !== null) break;
      const rank = nodeRank * options.nprocPerNode + localRank;
      const world = { localRank, localWorldSize: options.nprocPerNode };
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        MOMA_NUM_THREADS: process.env.MOMA_NUM_THREADS ?? String(cpuThreadsForRank(world, cores)),
        ...options.env,
        RANK: String(rank),
        LOCAL_RANK: String(localRank),
        WORLD_SIZE: String(worldSize),
        LOCAL_WORLD_SIZE: String(options.nprocPerNode),
        GROUP_RANK: String(nodeRank),
        MASTER_ADDR: masterAddr,
        MASTER_PORT: String(masterPort),
        [LAUNCHER_PID_VARIABLE]: String(process.pid),
      };
      // Rank 0 writes to the launcher's terminal itself; output to a file or pipe is copied through instead, so its last lines are kept too.
      const direct = (s: Writable): boolean => rank === 0 && (s === process.stdout || s === process.stderr) && (s as NodeJS.WriteStream).isTTY === true;
      const outDirect = direct(stdout);
      const errDirect = direct(stderr);
      const child = spawn(program, args, {
        cwd: options.cwd,
        env,
        detached: true,
        stdio: ['ignore', outDirect ? 'inherit' : 'pipe', errDirect ? 'inherit' : 'pipe'],
      });
      const started = await new Promise<number>((resolve, reject) => {
        child.once('spawn', () => resolve(child.pid!));
        child.once('error', (err) => reject(new MomaError('ERR_ARG', `launch: cannot start rank ${rank} (${program}): ${err.message}`)));
      });
      const proc: RankProcess = { rank, localRank, child, pid: started, exited: false, closed: false, code: null, signal: null, lines: [] };
      ranks.push(proc);
      const prefix = rank === 0 ? null : `[rank ${rank}] `;
      const keep = (line: string): void => {
        proc.lines.push(line);
        if (proc.lines.length > LAST_LINES_KEPT) proc.lines.shift();
      };
      for (const [stream, sink] of [[child.stdout, stdout], [child.stderr, stderr]] as const) {
        if (stream === null) continue;
        const splitter = new LineSplitter(sink, prefix, keep);
        stream.setEncoding('utf8');
        stream.on('data', (text: string) => splitter.write(text));
        stream.on('end', () => splitter.end());
      }
      child.on('exit', (code, signal) => {
        proc.exited = true;
        proc.code = code;
        proc.signal = signal;
        // Anything the rank left behind in its group is an orphan now; the group is never signalled again.
        signalGroup(proc.pid, 'SIGKILL');
        if (failure === null && stoppedBy === null && !killedAll && (code !== 0 || signal !== null)) {
          failure = proc;
          terminateOthers();
        }
      });
      child.on('close', () => {
        proc.closed = true;
        checkDone();
      });
    }
  } catch (err) {
    killAll();
    spawning = false;
    checkDone();
    await allClosed;
    process.off('exit', onLauncherExit);
    for (const s of forwarded) process.off(s, onSignal);
    throw err;
  }
  spawning = false;
  checkDone();
  await allClosed;
  if (killTimer !== null) clearTimeout(killTimer);
  process.off('exit', onLauncherExit);
  for (const s of forwarded) process.off(s, onSignal);

  const exits: RankExit[] = ranks.map((r) => ({ rank: r.rank, localRank: r.localRank, pid: r.pid, code: r.code, signal: r.signal, lastLines: r.lines }));
  const failed = failure === null ? null : exits[(failure as RankProcess).localRank]!;
  const ok = exits.every((r) => r.code === 0 && r.signal === null);
  let exitCode = 0;
  let message: string;
  if (failed !== null) {
    exitCode = 1;
    const lines = failed.lastLines.length > 0
      ? [`last lines of rank ${failed.rank}:`, ...failed.lastLines.map((l) => `  ${l}`)]
      : [`(rank ${failed.rank} wrote ${failed.rank === 0 ? 'to the terminal directly: its output is above' : 'nothing'})`];
    const others = exits.length > 1 ? `; the other ranks were sent SIGTERM (SIGKILL after ${graceMs / 1000} s)` : '';
    message = [`rank ${failed.rank} (local rank ${failed.localRank}, pid ${failed.pid}) ${describeEnd(failed)}${others}`, ...lines].join('\n');
  } else if (stoppedBy !== null) {
    exitCode = 128 + osConstants.signals[stoppedBy as NodeJS.Signals];
    message = `stopped by ${stoppedBy}: ${exits.map((r) => `rank ${r.rank} ${describeEnd(r)}`).join(', ')}`;
  } else {
    message = `${exits.length} rank${exits.length === 1 ? '' : 's'} finished`;
  }
  return { ok, exitCode, failure: failed, stoppedBy, ranks: exits, masterPort, message };
}
