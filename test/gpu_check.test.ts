/**
 * scripts/gpu-check.sh: without a visible CUDA device, or with a driver older than nvcc's CUDA, it
 * fails within 60 s with one line saying so, before building anything. scripts/gpu_summary.py:
 * the ratios to PyTorch, the targets' PASS / MISS / n/a and the verdict, on the synthetic run in
 * test/fixtures/gpu-check/.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.join(__dirname, '..');
const script = path.join(root, 'scripts', 'gpu-check.sh');
const fixtures = path.join(__dirname, 'fixtures', 'gpu-check');
const python = '/usr/bin/python3';

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-gpu-check-'));
});
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A folder of executables put first on PATH; `cmake` and `nvcc --version` leave a mark when run for a build. */
function fakeBin(tools: Record<string, string>): string {
  const bin = path.join(tmp, 'bin');
  fs.mkdirSync(bin);
  const all = { cmake: `#!/bin/sh\ntouch '${path.join(tmp, 'built')}'\nexit 1\n`, ...tools };
  for (const [name, body] of Object.entries(all)) fs.writeFileSync(path.join(bin, name), body, { mode: 0o755 });
  return bin;
}

function runCheck(bin: string | null) {
  const out = path.join(tmp, 'out');
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: bin ? `${bin}:${process.env.PATH}` : process.env.PATH };
  delete env.OUT;
  const t0 = Date.now();
  const r = spawnSync('bash', [script, out], { env, encoding: 'utf8', timeout: 90_000 });
  const lines = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.trim() !== '');
  return { status: r.status, seconds: (Date.now() - t0) / 1000, lines, outFiles: fs.readdirSync(out), built: fs.existsSync(path.join(tmp, 'built')) };
}

function expectPreflightFailure(r: ReturnType<typeof runCheck>, message: RegExp) {
  expect(r.status).not.toBe(0);
  expect(r.seconds).toBeLessThan(60);
  expect(r.lines).toHaveLength(1);
  expect(r.lines[0]).toMatch(message);
  expect(r.outFiles).toEqual(['preflight.txt']);
  expect(r.built).toBe(false);
}

const gpuVisible = spawnSync('nvidia-smi', ['-L'], { timeout: 20_000 }).status === 0;
const nvccPresent = ['/usr/local/cuda/bin/nvcc', ...(process.env.PATH ?? '').split(':').map((d) => path.join(d, 'nvcc'))]
  .some((f) => fs.existsSync(f));

(gpuVisible ? test.skip : test)('gpu-check.sh on this machine (no GPU): fails within 60 s, one line, nothing built', () => {
  expectPreflightFailure(runCheck(fakeBin({})), /^gpu-check: FAIL: no CUDA device visible/);
});

test('gpu-check.sh when nvidia-smi cannot reach the driver: fails within 60 s with its message', () => {
  const smi = '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n';
  expectPreflightFailure(runCheck(fakeBin({ 'nvidia-smi': smi })),
    /^gpu-check: FAIL: no CUDA device visible: nvidia-smi exited 9: NVIDIA-SMI has failed because it couldn't communicate/);
});

(nvccPresent ? test : test.skip)('gpu-check.sh with a driver older than nvcc\'s CUDA: fails within 60 s naming both versions', () => {
  const smi = [
    '#!/bin/sh',
    'case "$*" in',
    '  *--query-gpu*) echo "NVIDIA H100 80GB HBM3, 520.61.05, 81559 MiB" ;;',
    '  *) echo "| NVIDIA-SMI 520.61.05    Driver Version: 520.61.05    CUDA Version: 11.8     |" ;;',
    'esac',
    '',
  ].join('\n');
  expectPreflightFailure(runCheck(fakeBin({ 'nvidia-smi': smi })),
    /^gpu-check: FAIL: the NVIDIA driver 520\.61\.05 supports CUDA up to 11\.8, older than CUDA \d+\.\d+ of .*nvcc/);
});

interface Target { name: string; value: number | null; status: string }
interface Row { op: string; shape: string; x_torch: number | null; torch: { op: string; shape: string } | null }
interface Summary { verdict: string; failed_stages: string[]; targets: Target[]; results: Row[]; native: { passed: number; failed: number; skipped: number; failures: string[] } }

function summarise(dir: string) {
  const written = path.join(tmp, 'summary');
  const r = spawnSync(python, [path.join(root, 'scripts', 'gpu_summary.py'), dir, '--write-to', written], { encoding: 'utf8', timeout: 60_000 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const files = fs.readdirSync(written).sort();
  const [json, markdown] = ['2026-12-06-h100-80gb-hbm3-gpu-check.json', '2026-12-06-h100-80gb-hbm3-gpu-check.md'];
  expect(files).toEqual([json, markdown]);
  const summary = JSON.parse(fs.readFileSync(path.join(written, json), 'utf8')) as Summary;
  return { summary, stdout: r.stdout, markdown: fs.readFileSync(path.join(written, markdown), 'utf8') };
}

test('gpu_summary.py: ratios to PyTorch, targets PASS / MISS / n/a, verdict PASS', () => {
  const { summary, stdout, markdown } = summarise(fixtures);
  const target = (prefix: string) => summary.targets.find((t) => t.name.startsWith(prefix)) as Target;
  // bf16 GEMM 4096^3: torch 0.21 ms / moma 0.25 ms
  expect(target('bf16 GEMM 4096^3').value).toBeCloseTo(0.84, 10);
  expect(target('bf16 GEMM 4096^3').status).toBe('PASS');
  // grouped GEMM 4t4i T8192: 400 TFLOP/s against torch's dense 8192x4096x1024 at 640
  expect(target('grouped expert GEMM').value).toBeCloseTo(0.625, 10);
  expect(target('grouped expert GEMM').status).toBe('MISS');
  // attention D64: torch fwd+bwd 2.1 ms / (moma fwd 1.0 + bwd 2.0); D128 has no moma backward row
  expect(target('attention fwd+bwd D64').value).toBeCloseTo(0.7, 10);
  expect(target('attention fwd+bwd D64').status).toBe('PASS');
  expect(target('attention fwd+bwd D128').value).toBeNull();
  expect(target('attention fwd+bwd D128').status).toBe('n/a');
  // the 4t4i layer on cuda (the cpu row of the Node report is ignored): torch 36 ms / moma 20 ms
  expect(target('MoMa 4t4i layer').value).toBeCloseTo(1.8, 10);
  expect(target('MoMa 4t4i layer').status).toBe('PASS');
  expect(target('dispatch').value).toBeCloseTo(0.85, 10);
  expect(target('dispatch').status).toBe('PASS');
  expect(target('combine').value).toBeCloseTo(0.7, 10);
  expect(target('combine').status).toBe('MISS');

  const row = (op: string, shape: string) => summary.results.find((r) => r.op === op && r.shape === shape) as Row;
  expect(row('softmax_rows_f32', '32768x1024').x_torch).toBeCloseTo(0.12 / 0.1, 10);
  expect(row('moe.gather_rows', '4t4i T8192 8190x1024 bf16').x_torch).toBeCloseTo(2550 / 2690, 10);
  expect(row('moe.gather_rows', '4t4i T8192 8190x1024 bf16').torch).toMatchObject({ op: 'index_select_rows_bf16', shape: '8192x1024' });
  expect(row('moe.grouped_gemm', '8x T8192 8192x1024x4096 bf16').torch).toMatchObject({ op: 'gemm_bf16', shape: '8192x4096x1024' });
  expect(row('moe.grouped_gemm_swiglu', '4t4i T8192 8190x1024x4096 x2 bf16').x_torch).toBeCloseTo(0.75, 10);
  expect(row('moe.grouped_gemm_scaled', '4t4i T8192 8190x4096x1024 bf16').torch).toMatchObject({ op: 'gemm_bf16', shape: '8192x1024x4096' });
  expect(row('gemm_f32_router', '8192x8x1024').x_torch).toBeCloseTo(0.025 / 0.02, 10);
  expect(row('attention_fwd_bf16_tc', 'N8192xH16xD64xseg4096').x_torch).toBeCloseTo(0.6, 10);
  expect(row('attention_fwd_bf16_tc', 'N8192xH16xD128xseg4096').x_torch).toBeNull();

  // the Node report's ceiling rows repeat the kernel bench's: only its layer rows are taken
  expect(summary.results.filter((r) => r.op === 'ceiling.copy_d2d')).toHaveLength(1);
  expect(summary.native).toMatchObject({ passed: 2104, failed: 0, skipped: 0 });
  expect(summary.verdict).toBe('PASS');
  expect(stdout).toMatch(/verdict: PASS \(every stage ran and passed\); targets 4 PASS, 2 MISS, 1 n\/a/);
  expect(stdout.split('\n').length).toBeLessThan(50);
  expect(markdown).toMatch(/\| combine \(moe\.combine\) >= 80% of the measured copy bandwidth \| 0\.70 \| 0\.8 \| MISS \|/);
});

test('gpu_summary.py: a failed stage or skipped CUDA cases make the verdict FAIL', () => {
  const dir = path.join(tmp, 'run');
  fs.cpSync(fixtures, dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'native-test.log'), [
    'moma_native_test: CUDA compiled=1 devices=0 runtime=13000 driver=0 cpu gemm isa=avx512',
    'moma_native_test: no CUDA device; 2038 CUDA cases skipped',
    'FAIL --require-cuda: 2038 CUDA cases skipped (no CUDA device visible)',
    '8 passed, 0 failed, 2038 skipped',
    '',
  ].join('\n'));
  fs.writeFileSync(path.join(dir, 'stages.jsonl'), [
    '{"stage":"build (sm_90)","status":"ok","rc":0,"seconds":140,"limit_s":300}',
    '{"stage":"native test","status":"failed","rc":1,"seconds":3,"limit_s":120}',
    '{"stage":"node runs","status":"skipped","rc":null,"seconds":0,"limit_s":0}',
    '',
  ].join('\n'));
  const { summary, stdout } = summarise(dir);
  expect(summary.verdict).toBe('FAIL');
  expect(summary.failed_stages).toEqual(['native test failed', 'node runs skipped']);
  expect(summary.native).toMatchObject({ passed: 8, failed: 0, skipped: 2038 });
  expect(summary.native.failures).toEqual(['FAIL --require-cuda: 2038 CUDA cases skipped (no CUDA device visible)']);
  expect(stdout).toMatch(/native test: 8 passed, 0 failed, 2038 skipped\n {2}FAIL --require-cuda/);
  expect(stdout).toMatch(/verdict: FAIL \(native test failed; node runs skipped\)/);
});
