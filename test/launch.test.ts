/**
 * `moma launch` (lib/distributed/launcher.ts, lib/cli/launch.ts) with `node -e` rank scripts: the
 * variables each rank sees, output prefixes, success, failure (a rank's exit code or signal ends the
 * job within the grace time, naming the rank and its last lines), killing a hanging rank's whole
 * process group, forwarding SIGTERM / SIGINT, free port selection, and the CLI as its own process
 * (lib/ transpiled to a temporary folder). No native addon needed.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PassThrough } from 'stream';
import * as ts from 'typescript';
import { Command, CommanderError } from 'commander';
import { MomaError } from '../lib/errors';
import { cpuThreadsForRank, worldFromEnv } from '../lib/distributed/env';
import { launch, LaunchOptions, LaunchResult } from '../lib/distributed/launcher';
import { CLI_MAIN, rankCommand, registerLaunchCommand } from '../lib/cli/launch';

const root = path.join(__dirname, '..');
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-launch-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A rank program: `node -e <preamble + body> [args]`; the body has fs, path, `dir` (the test's folder), `rank`, `put(name, text)`, `waitFile(name)`. */
function rankScript(body: string, args: string[] = []): string[] {
  const preamble = `const fs = require('fs'), path = require('path'); const dir = process.env.TEST_DIR, rank = process.env.RANK;
const put = (name, text = '') => fs.writeFileSync(path.join(dir, name), text);
const waitFile = (name) => new Promise((resolve) => { const t = setInterval(() => { if (fs.existsSync(path.join(dir, name))) { clearInterval(t); resolve(); } }, 10); });
`;
  return [process.execPath, '-e', preamble + body, ...(args.length > 0 ? ['--', ...args] : [])];
}

interface Captured { result: LaunchResult; stdout: string; stderr: string; ms: number }

async function run(options: Omit<LaunchOptions, 'stdout' | 'stderr'>): Promise<Captured> {
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = '';
  let stderr = '';
  out.on('data', (c: Buffer) => (stdout += c.toString()));
  err.on('data', (c: Buffer) => (stderr += c.toString()));
  const t0 = Date.now();
  const result = await launch({ masterPort: 0, ...options, env: { TEST_DIR: dir, ...options.env }, stdout: out, stderr: err });
  return { result, stdout, stderr, ms: Date.now() - t0 };
}

async function waitFor(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The process exists and is not a zombie waiting to be reaped. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const file = (name: string): string => path.join(dir, name);
const readJson = <T>(name: string): T => JSON.parse(fs.readFileSync(file(name), 'utf8')) as T;

const WRITE_ENV = `const keys = ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'MOMA_NUM_THREADS', 'MOMA_LAUNCHER_PID', 'EXTRA'];
put('env' + rank + '.json', JSON.stringify({ ...Object.fromEntries(keys.map((k) => [k, process.env[k]])), argv: process.argv.slice(1) }));
`;

describe('launch', () => {
  const savedThreads = process.env.MOMA_NUM_THREADS;
  beforeAll(() => delete process.env.MOMA_NUM_THREADS);
  afterAll(() => {
    if (savedThreads !== undefined) process.env.MOMA_NUM_THREADS = savedThreads;
  });

  test('each rank sees its variables; rank 0 passes through, the others are prefixed; all exit 0', async () => {
    const body = `${WRITE_ENV}
console.log('hello from ' + rank); console.error('warning from ' + rank); if (rank !== '0') process.stdout.write('unterminated ' + rank);`;
    const { result, stdout, stderr } = await run({ command: rankScript(body, ['--steps', '3']), nprocPerNode: 3, env: { EXTRA: 'x' } });
    expect(result).toMatchObject({ ok: true, exitCode: 0, failure: null, stoppedBy: null });
    expect(result.ranks.map((r) => [r.rank, r.code, r.signal])).toEqual([[0, 0, null], [1, 0, null], [2, 0, null]]);
    expect(result.masterPort).toBeGreaterThan(0);
    for (let r = 0; r < 3; r++) {
      const env = readJson<Record<string, unknown>>(`env${r}.json`);
      expect(env).toEqual({
        RANK: String(r), LOCAL_RANK: String(r), WORLD_SIZE: '3', LOCAL_WORLD_SIZE: '3', GROUP_RANK: '0', MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: String(result.masterPort), MOMA_NUM_THREADS: String(cpuThreadsForRank({ localRank: r, localWorldSize: 3 }, os.availableParallelism())),
        MOMA_LAUNCHER_PID: String(process.pid), EXTRA: 'x', argv: ['--steps', '3'],
      });
      expect(worldFromEnv(env as Record<string, string>)).toMatchObject({ rank: r, localRank: r, worldSize: 3, nodeRank: 0, launcher: 'moma' });
    }
    const outLines = stdout.split('\n');
    expect(outLines).toContain('hello from 0');
    expect(outLines).toEqual(expect.arrayContaining(['[rank 1] hello from 1', '[rank 2] hello from 2', '[rank 1] unterminated 1', '[rank 2] unterminated 2']));
    expect(stdout).not.toContain('[rank 0]');
    expect(stderr.split('\n')).toEqual(expect.arrayContaining(['warning from 0', '[rank 1] warning from 1', '[rank 2] warning from 2']));
    expect(result.ranks[1]!.lastLines).toEqual(expect.arrayContaining(['hello from 1', 'warning from 1', 'unterminated 1']));
  });

  test('node 1 of 2: global ranks, GROUP_RANK and WORLD_SIZE; every rank prefixed', async () => {
    const body = `${WRITE_ENV} console.log('hello from ' + rank);`;
    const { result, stdout } = await run({ command: rankScript(body), nprocPerNode: 2, nnodes: 2, nodeRank: 1, masterAddr: 'node0.example', masterPort: 29555 });
    expect(result.ok).toBe(true);
    expect(result.ranks.map((r) => r.rank)).toEqual([2, 3]);
    for (const r of [2, 3]) {
      expect(readJson(`env${r}.json`)).toMatchObject({ RANK: String(r), LOCAL_RANK: String(r - 2), WORLD_SIZE: '4', LOCAL_WORLD_SIZE: '2', GROUP_RANK: '1', MASTER_ADDR: 'node0.example', MASTER_PORT: '29555' });
    }
    expect(stdout.split('\n')).toEqual(expect.arrayContaining(['[rank 2] hello from 2', '[rank 3] hello from 3']));
  });

  test('a rank exiting 3 ends the job: the others get SIGTERM, the result names the rank, code and last 20 lines', async () => {
    const body = `if (rank === '0') {
  process.on('SIGTERM', () => { put('term0'); process.exit(0); });
  setInterval(() => {}, 1000); put('ready0');
} else {
  waitFile('ready0').then(() => { for (let i = 1; i <= 25; i++) console.log('line ' + i); process.exit(3); });
}`;
    const { result, ms } = await run({ command: rankScript(body), nprocPerNode: 2, timeoutGraceMs: 20_000 });
    expect(result.ok).toBe(false);
    expect(result.exitCode).toBe(1);
    expect(result.failure).toMatchObject({ rank: 1, localRank: 1, code: 3, signal: null });
    expect(result.failure!.lastLines).toEqual(Array.from({ length: 20 }, (_, i) => `line ${i + 6}`));
    expect(result.message).toMatch(/^rank 1 \(local rank 1, pid \d+\) exited with code 3; the other ranks were sent SIGTERM \(SIGKILL after 20 s\)\nlast lines of rank 1:\n {2}line 6\n/);
    expect(result.message).toContain('  line 25');
    expect(result.ranks[0]).toMatchObject({ code: 0, signal: null });
    expect(fs.existsSync(file('term0'))).toBe(true);
    expect(ms).toBeLessThan(10_000); // well within the grace time: rank 0 stops at SIGTERM
  });

  test('a rank killed by a signal fails the job, naming the signal', async () => {
    const body = `if (rank === '1') { console.error('about to crash'); process.kill(process.pid, 'SIGKILL'); } else { process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1000); }`;
    const { result } = await run({ command: rankScript(body), nprocPerNode: 2, timeoutGraceMs: 5000 });
    expect(result.exitCode).toBe(1);
    expect(result.failure).toMatchObject({ rank: 1, code: null, signal: 'SIGKILL', lastLines: ['about to crash'] });
    expect(result.message).toMatch(/^rank 1 .* was killed by SIGKILL/);
  });

  test('a hanging rank (ignoring SIGTERM) and its child are killed after the grace period once another fails', async () => {
    const body = `if (rank === '0') {
  process.on('SIGTERM', () => put('ignored-term'));
  const child = require('child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'inherit' });
  child.on('spawn', () => put('pids.json', JSON.stringify([process.pid, child.pid])));
  setInterval(() => {}, 1000);
} else {
  waitFile('pids.json').then(() => { console.log('giving up'); process.exit(1); });
}`;
    const grace = 700;
    const { result, ms } = await run({ command: rankScript(body), nprocPerNode: 2, timeoutGraceMs: grace });
    expect(result.failure).toMatchObject({ rank: 1, code: 1, lastLines: ['giving up'] });
    expect(result.ranks[0]).toMatchObject({ code: null, signal: 'SIGKILL' });
    expect(fs.existsSync(file('ignored-term'))).toBe(true);
    expect(ms).toBeGreaterThanOrEqual(grace);
    expect(ms).toBeLessThan(grace + 10_000);
    const [rankPid, childPid] = readJson<number[]>('pids.json');
    expect(rankPid).toBe(result.ranks[0]!.pid);
    await waitFor('the killed processes to be reaped', () => !alive(rankPid!) && !alive(childPid!), 3000);
  });

  test('a rank that exits 0 leaves nothing behind in its process group', async () => {
    const body = `const child = require('child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
child.on('spawn', () => { put('child' + rank, String(child.pid)); process.exit(0); });`;
    const { result } = await run({ command: rankScript(body), nprocPerNode: 1 });
    expect(result.ok).toBe(true);
    const childPid = Number(fs.readFileSync(file('child0'), 'utf8'));
    await waitFor('the leftover child to be killed', () => !alive(childPid), 3000);
  });

  test('SIGTERM to the launcher is forwarded; ranks that stop cleanly end the job with 128 + 15', async () => {
    const body = `process.on('SIGTERM', () => { put('stopped' + rank); process.exit(0); }); setInterval(() => {}, 1000); put('ready' + rank);`;
    const job = run({ command: rankScript(body), nprocPerNode: 2 });
    await waitFor('both ranks', () => fs.existsSync(file('ready0')) && fs.existsSync(file('ready1')));
    process.emit('SIGTERM', 'SIGTERM');
    const { result } = await job;
    expect(result).toMatchObject({ ok: true, exitCode: 143, stoppedBy: 'SIGTERM', failure: null });
    expect(result.message).toBe('stopped by SIGTERM: rank 0 exited with code 0, rank 1 exited with code 0');
    expect(fs.existsSync(file('stopped0')) && fs.existsSync(file('stopped1'))).toBe(true);
    expect(process.listenerCount('SIGTERM') + process.listenerCount('SIGINT')).toBe(0);
  });

  test('a second SIGINT kills every rank at once', async () => {
    const body = `process.on('SIGINT', () => put('interrupted' + rank)); setInterval(() => {}, 1000); put('ready' + rank);`;
    const job = run({ command: rankScript(body), nprocPerNode: 2, timeoutGraceMs: 60_000 });
    await waitFor('both ranks', () => fs.existsSync(file('ready0')) && fs.existsSync(file('ready1')));
    process.emit('SIGINT', 'SIGINT');
    await waitFor('both ranks to see SIGINT', () => fs.existsSync(file('interrupted0')) && fs.existsSync(file('interrupted1')));
    process.emit('SIGINT', 'SIGINT');
    const { result, ms } = await job;
    expect(result).toMatchObject({ ok: false, exitCode: 130, stoppedBy: 'SIGINT', failure: null });
    expect(result.ranks.map((r) => r.signal)).toEqual(['SIGKILL', 'SIGKILL']);
    expect(ms).toBeLessThan(15_000);
  });

  test('master port 0 picks a port that rank 0 can listen on', async () => {
    const body = `if (rank === '0') {
  const server = require('net').createServer();
  server.listen(Number(process.env.MASTER_PORT), process.env.MASTER_ADDR, () => { put('listened', process.env.MASTER_PORT); server.close(); });
} else put('port1', process.env.MASTER_PORT);`;
    const { result } = await run({ command: rankScript(body), nprocPerNode: 2, masterPort: 0 });
    expect(result.ok).toBe(true);
    expect(result.masterPort).toBeGreaterThan(0);
    expect(fs.readFileSync(file('listened'), 'utf8')).toBe(String(result.masterPort));
    expect(fs.readFileSync(file('port1'), 'utf8')).toBe(String(result.masterPort));
  });

  test('bad options and a command that cannot start are ERR_ARG', async () => {
    const ok = rankScript('');
    const bad: Array<[Partial<LaunchOptions>, RegExp]> = [
      [{ nprocPerNode: 0 }, /nprocPerNode/], [{ nprocPerNode: 1.5 }, /nprocPerNode/], [{ nnodes: 0 }, /nnodes/],
      [{ nnodes: 2, nodeRank: 2 }, /nodeRank/], [{ masterPort: 70000 }, /masterPort/], [{ nnodes: 2, masterPort: 0 }, /one node only/],
      [{ timeoutGraceMs: -1 }, /timeoutGraceMs/], [{ command: [] }, /no command/], [{ masterAddr: 'a b' }, /masterAddr/],
      [{ command: [path.join(dir, 'no-such-program')] }, /cannot start rank 0 .*no-such-program/],
    ];
    for (const [options, message] of bad) {
      await expect(launch({ command: ok, nprocPerNode: 1, masterPort: 29500, stdout: new PassThrough(), stderr: new PassThrough(), ...options }))
        .rejects.toMatchObject({ name: 'MomaError', code: 'ERR_ARG', message: expect.stringMatching(message) });
    }
    expect(process.listenerCount('exit')).toBeLessThan(20);
  });
});

describe('moma launch command line', () => {
  afterEach(() => {
    process.exitCode = undefined;
  });

  function program(): Command {
    const p = new Command().name('moma').exitOverride();
    p.command('train').action(() => undefined);
    registerLaunchCommand(p);
    p.commands.forEach((c) => c.exitOverride());
    return p;
  }

  test('everything after the command passes through untouched, launch flags included', async () => {
    const [node, , code] = rankScript(`put('argv' + rank + '.json', JSON.stringify(process.argv.slice(1)));`);
    await program().parseAsync(['node', 'moma', 'launch', '--nproc-per-node', '2', '--master-port', '0', '--grace-seconds', '5', '--no-moma',
      node!, '-e', `process.env.TEST_DIR = ${JSON.stringify(dir)}; ${code!}`, 'train', '--steps', '3', '--nproc-per-node', '9', '--', '-x']);
    expect(process.exitCode).toBe(0);
    for (const r of [0, 1]) expect(readJson(`argv${r}.json`)).toEqual(['train', '--steps', '3', '--nproc-per-node', '9', '--', '-x']);
  });

  test('a moma subcommand runs as `node <moma cli> <subcommand ...>`; unknown ones are refused', async () => {
    expect(rankCommand(['train', '--steps', '2'], true)).toEqual([process.execPath, CLI_MAIN, 'train', '--steps', '2']);
    expect(CLI_MAIN.endsWith(path.join('cli', 'main.js'))).toBe(true);
    expect(rankCommand(['python', 'train.py'], false)).toEqual(['python', 'train.py']);
    await expect(program().parseAsync(['node', 'moma', 'launch', '--nproc-per-node', '2', 'nosuch', '--x']))
      .rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/'nosuch' is not a moma subcommand \(train\); .*--no-moma/) });
    await expect(program().parseAsync(['node', 'moma', 'launch', '--nproc-per-node', 'two', '--no-moma', 'true']))
      .rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/--nproc-per-node must be an integer/) });
    await expect(program().parseAsync(['node', 'moma', 'launch', '--nproc-per-node', '1', '--grace-seconds', '-1', '--no-moma', 'true']))
      .rejects.toBeInstanceOf(MomaError);
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await expect(program().parseAsync(['node', 'moma', 'launch', 'train'])).rejects.toBeInstanceOf(CommanderError);
    } finally {
      stderr.mockRestore();
    }
  });
});

describe('moma launch as its own process', () => {
  let built: string;
  beforeAll(() => {
    built = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-launch-lib-'));
    for (const rel of ['errors.ts', 'distributed/env.ts', 'distributed/launcher.ts', 'cli/launch.ts']) {
      const source = fs.readFileSync(path.join(root, 'lib', rel), 'utf8');
      const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText;
      const out = path.join(built, 'lib', rel.replace(/\.ts$/, '.js'));
      fs.mkdirSync(path.dirname(out), { recursive: true });
      fs.writeFileSync(out, js);
    }
  });
  afterAll(() => fs.rmSync(built, { recursive: true, force: true }));

  interface Ended { code: number | null; stderr: string }
  function cli(args: string[], env: Record<string, string> = {}): { child: ChildProcess; ended: Promise<Ended> } {
    const driver = path.join(root, 'test', 'fixtures', 'launch', 'cli_driver.js');
    const child = spawn(process.execPath, [driver, built, 'launch', ...args], {
      env: { ...process.env, TEST_DIR: dir, NODE_PATH: path.join(root, 'node_modules'), ...env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.stdout!.resume();
    return { child, ended: new Promise((resolve) => child.on('close', (code) => resolve({ code, stderr }))) };
  }

  test('SIGTERM to the launcher process reaches the ranks, which stop; the launcher exits 143', async () => {
    const body = `process.on('SIGTERM', () => { put('stopped' + rank); process.exit(0); }); setInterval(() => {}, 1000); put('ready' + rank);`;
    const { child, ended } = cli(['--nproc-per-node', '2', '--master-port', '0', '--no-moma', ...rankScript(body)]);
    await waitFor('both ranks', () => fs.existsSync(file('ready0')) && fs.existsSync(file('ready1')));
    child.kill('SIGTERM');
    const { code, stderr } = await ended;
    expect(code).toBe(143);
    expect(stderr).toContain('moma launch: stopped by SIGTERM');
    expect(fs.existsSync(file('stopped0')) && fs.existsSync(file('stopped1'))).toBe(true);
  });

  test('a failing rank makes the launcher exit 1 with the rank, its code and its last lines', async () => {
    const body = `if (rank === '1') { console.error('loss is NaN at step 7'); process.exit(3); } else { process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1000); }`;
    const { ended } = cli(['--nproc-per-node', '2', '--master-port', '0', '--grace-seconds', '5', '--no-moma', ...rankScript(body)]);
    const { code, stderr } = await ended;
    expect(code).toBe(1);
    expect(stderr).toMatch(/moma launch: rank 1 \(local rank 1, pid \d+\) exited with code 3; the other ranks were sent SIGTERM \(SIGKILL after 5 s\)\nlast lines of rank 1:\n {2}loss is NaN at step 7/);
  });

  test('ranks do not outlive a launcher that exits abruptly', async () => {
    const body = `process.on('SIGTERM', () => {}); setInterval(() => {}, 1000); put('pid' + rank, String(process.pid));`;
    const { ended } = cli(['--nproc-per-node', '2', '--master-port', '0', '--no-moma', ...rankScript(body)], { DRIVER_EXIT_AFTER_MS: '1500' });
    const { code } = await ended;
    expect(code).toBe(7);
    const pids = [0, 1].map((r) => Number(fs.readFileSync(file(`pid${r}`), 'utf8')));
    await waitFor('the ranks to be killed', () => pids.every((pid) => !alive(pid)), 3000);
  });

  test('bad flags are reported like every moma error', async () => {
    const { code, stderr } = await cli(['--nproc-per-node', '0', '--no-moma', 'true']).ended;
    expect(code).toBe(1);
    expect(stderr).toMatch(/^moma: ERR_ARG: launch: --nproc-per-node must be an integer in \[1, 1024\], got '0'/);
  });
});
