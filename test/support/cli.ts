/**
 * Running the built CLI (dist/cli/main.js) as a user does: a child process on the CPU in a given
 * working folder. `ensureDist` rebuilds dist/ (npm run build:ts) when a lib/ source is newer than it.
 */
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.join(__dirname, '..', '..');
const cli = path.join(root, 'dist', 'cli', 'main.js');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function newestSource(folder: string): number {
  let newest = 0;
  for (const entry of fs.readdirSync(folder, { withFileTypes: true })) {
    const full = path.join(folder, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(full));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, fs.statSync(full).mtimeMs);
  }
  return newest;
}

/** Rebuilds dist/ (tsc, and the CLI's executable bit) when a lib/ source is newer than the built CLI. */
export function ensureDist(): void {
  const built = fs.existsSync(cli) ? fs.statSync(cli).mtimeMs : 0;
  if (built >= newestSource(path.join(root, 'lib'))) return;
  try {
    execFileSync('npm', ['run', 'build:ts'], { cwd: root, stdio: 'pipe' });
  } catch {
    // tsc emits even when someone else's file in progress has a type error; the check below decides
  }
  if (!fs.existsSync(cli)) throw new Error('building dist/ with tsc did not produce dist/cli/main.js');
}

/** Runs `moma args…` in `cwd` with MOMA_DEVICE=cpu; `onStdout` sees the output so far (and the child) after each chunk. */
export function runCli(cwd: string, args: string[], onStdout?: (text: string, child: ChildProcess) => void): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { cwd, env: { ...process.env, MOMA_DEVICE: 'cpu' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      onStdout?.(stdout, child);
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
