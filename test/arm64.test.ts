/**
 * linux-arm64: the cross-built CPU addon and native test (scripts/build-arm64.sh, which .ci/run runs
 * before npm test) under qemu-aarch64 with an arm64 Node, against this machine's x64 build:
 * - the binary is an AArch64 shared object that needs at most GLIBC_2.28 (objdump -T);
 * - it loads, picks the NEON GEMM (bf16 products widened to float32) and computes matmul of
 *   awkward sizes, softmax, rmsNorm, a sum and the vmath functions within float64-reference bounds
 *   (test/fixtures/arm64/ops.js); the vmath functions are one algorithm (vmath_simd.h) with fused
 *   multiply-adds on both ISAs, so their results must equal the x64 build's bit for bit;
 * - `moma train`: a 1-step x64 run resumed for 5 steps under qemu and on x64 gives finite,
 *   decreasing losses that agree (the built-in data trains its image codebook in JS, which takes
 *   minutes under qemu; a resumed run reads the codebook from the run directory instead);
 * - moma_native_test built for aarch64 passes every CPU check (GEMMs on the NEON kernel), when it was
 *   built (MOMA_ARM64_NATIVE_TEST=1 scripts/build-arm64.sh; CI leaves it out: 2 minutes under qemu).
 * Skipped, saying what is missing, where the cross build or qemu-aarch64 is absent.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ensureDist } from './support/cli';

const root = path.join(__dirname, '..');
const out = path.join(root, 'build-arm64');
const arm64Node = path.join(out, 'node', 'bin', 'node');
const stage = path.join(out, 'stage');
const addon = path.join(stage, 'prebuilds', 'linux-arm64', 'moma.napi.node');
const nativeTest = path.join(out, 'moma_native_test');
const sysroot = '/usr/aarch64-linux-gnu';
const dist = path.join(root, 'dist');
const cli = path.join(dist, 'cli', 'main.js');

const missing = [
  spawnSync('qemu-aarch64', ['--version']).status === 0 ? null : 'qemu-aarch64 (apt-get install qemu-user)',
  fs.existsSync(addon) && fs.existsSync(arm64Node) ? null : 'the cross build (scripts/build-arm64.sh)',
].filter((m): m is string => m !== null);
if (missing.length > 0) console.log(`arm64 tests skipped: missing ${missing.join(' and ')}`);
const testIf = missing.length === 0 ? test : test.skip;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion, collecting its output. */
function run(program: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { cwd: options.cwd ?? root, env: { ...process.env, MOMA_DEVICE: 'cpu', ...options.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The arm64 Node under qemu, loading the cross-built addon (MOMA_PREBUILD) and sharp's arm64 packages (NODE_PATH). */
const onArm64 = (args: string[], cwd?: string): Promise<Run> =>
  run('qemu-aarch64', ['-L', sysroot, arm64Node, ...args], { cwd, env: { MOMA_PREBUILD: stage, NODE_PATH: path.join(out, 'node_modules') } });
const onX64 = (args: string[], cwd?: string): Promise<Run> => run(process.execPath, args, { cwd });

function ok(r: Run, what: string): string {
  if (r.code !== 0) throw new Error(`${what} exited ${String(r.code)}:\n${r.stderr.slice(-4000)}`);
  return r.stdout;
}

beforeAll(() => {
  if (missing.length === 0) ensureDist();
}, 300_000);

testIf('the arm64 addon is an AArch64 shared object needing at most GLIBC_2.28', () => {
  const header = spawnSync('aarch64-linux-gnu-readelf', ['-h', addon], { encoding: 'utf8' });
  expect(header.stdout).toMatch(/Machine:\s+AArch64/);
  const symbols = spawnSync('aarch64-linux-gnu-objdump', ['-T', addon], { encoding: 'utf8' });
  expect(symbols.status).toBe(0);
  const versions = [...symbols.stdout.matchAll(/\bGLIBC_2\.(\d+)(?:\.\d+)?\b/g)].map((m) => Number(m[1]));
  expect(versions.length).toBeGreaterThan(0);
  expect(`GLIBC_2.${Math.max(...versions)}`).toMatch(/^GLIBC_2\.(1\d|2[0-8])$/);
});

interface OpsReport {
  platform: string;
  gemm: string;
  gemmBf16: string;
  ops: Record<string, { values: (number | null)[]; worst: number | null }>;
}

testIf('under qemu: NEON kernels, ops within float64 bounds, vmath bit-identical to x64', async () => {
  const fixture = path.join(root, 'test', 'fixtures', 'arm64', 'ops.js');
  const [arm, x64] = await Promise.all([onArm64([fixture, dist]), onX64([fixture, dist])]);
  const a = JSON.parse(ok(arm, 'ops.js under qemu')) as OpsReport;
  const x = JSON.parse(ok(x64, 'ops.js on x64')) as OpsReport;
  expect([a.platform, a.gemm, a.gemmBf16]).toEqual(['linux-arm64', 'neon', 'none']);
  expect(x.platform).toBe('linux-x64');
  expect(Object.keys(a.ops)).toEqual(Object.keys(x.ops));
  // JSON writes NaN and the infinities as null, hence the worst error Infinity as null too
  const overBound = (r: OpsReport): string[] => Object.entries(r.ops).filter(([, v]) => v.worst === null || v.worst > 1).map(([k, v]) => `${k}: ${String(v.worst)}`);
  expect(overBound(a)).toEqual([]);
  expect(overBound(x)).toEqual([]);
  for (const [name, op] of Object.entries(a.ops)) {
    expect(op.values.length).toBe(x.ops[name]!.values.length);
    if (/^(exp|log|tanh|sigmoid|silu) /.test(name)) expect({ name, values: op.values }).toEqual({ name, values: x.ops[name]!.values });
  }
}, 600_000);

/** The step records of a --json-log run: step number and loss. */
function stepLosses(stdout: string): { step: number; loss: number }[] {
  return stdout.split('\n').filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { kind?: string; step: number; loss: number })
    .filter((r) => r.kind === 'step').map(({ step, loss }) => ({ step, loss }));
}

testIf('under qemu: moma train resumed for 5 steps gives finite, decreasing losses that match x64', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-arm64-'));
  try {
    fs.writeFileSync(path.join(dir, 'small.json'), JSON.stringify({ model: { dModel: 32, heads: 2, ffn: { dFF: 48 } }, evalBatches: 1 }));
    ok(await onX64([cli, 'train', '--steps', '1', '--preset', 'tiny-4t4i', '--batch-size', '2', '--seq-len', '64', '--warmup', '2',
      '--log-every', '1', '--eval-every', '0', '--config', 'small.json', '--out', 'base', '--json-log'], dir), 'moma train on x64');
    for (const copy of ['arm64', 'x64']) fs.cpSync(path.join(dir, 'base'), path.join(dir, copy), { recursive: true });
    const resume = (runDir: string): string[] => [cli, 'train', '--resume', runDir, '--steps', '6', '--json-log'];
    const [arm, x64] = await Promise.all([onArm64(resume('arm64'), dir), onX64(resume('x64'), dir)]);
    const a = stepLosses(ok(arm, 'moma train --resume under qemu'));
    const x = stepLosses(ok(x64, 'moma train --resume on x64'));
    expect(a.map((r) => r.step)).toEqual([2, 3, 4, 5, 6]);
    expect(x.map((r) => r.step)).toEqual([2, 3, 4, 5, 6]);
    for (const losses of [a.map((r) => r.loss), x.map((r) => r.loss)]) {
      expect(losses.every(Number.isFinite)).toBe(true);
      expect(losses[4]!).toBeLessThan(losses[0]!);
    }
    a.forEach(({ loss }, i) => expect(Math.abs(loss - x[i]!.loss)).toBeLessThanOrEqual(1e-4 * Math.abs(x[i]!.loss)));
    expect(fs.existsSync(path.join(dir, 'arm64', 'checkpoints', 'step-000006'))).toBe(true);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 600_000);

const nativeTestIf = missing.length === 0 && fs.existsSync(nativeTest) ? test : test.skip;
if (missing.length === 0 && !fs.existsSync(nativeTest)) console.log('arm64 native test skipped: build it with MOMA_ARM64_NATIVE_TEST=1 scripts/build-arm64.sh');
nativeTestIf('under qemu: moma_native_test for aarch64 passes every CPU check on the NEON GEMM', async () => {
  const r = await run('qemu-aarch64', ['-L', sysroot, nativeTest]);
  const text = ok(r, 'moma_native_test under qemu');
  expect(text).toMatch(/cpu gemm isa=neon \(f32\), none \(bf16\)/);
  const summary = /^(\d+) passed, (\d+) failed/m.exec(text.split('\n').filter((l) => /^\d+ passed, \d+ failed/.test(l)).pop() ?? '');
  expect(summary).not.toBeNull();
  expect(Number(summary![2])).toBe(0);
  expect(Number(summary![1])).toBeGreaterThan(0);
}, 600_000);
