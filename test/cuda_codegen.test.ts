// What the CUDA compiler makes of the hot kernels, checked without a GPU: the tensor-core attention
// must issue bf16 mma.sync fed by ldmatrix, the GEMMs must stage their tiles with cp.async, and none
// of them may keep an array in local memory (a run-time-indexed register array lands there and is
// far slower). Compiles the three files to PTX for sm_90 with the flags of the build; skips, saying
// so, when nvcc is absent.
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { promisify } from 'util';

const run = promisify(execFile);
const root = path.join(__dirname, '..');

function findNvcc(): string | null {
  const candidates = [process.env.CUDACXX, '/usr/local/cuda/bin/nvcc', ...(process.env.PATH ?? '').split(':').map((d) => path.join(d, 'nvcc'))];
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  return null;
}

const nvcc = findNvcc();
if (!nvcc) console.log('moma tests: nvcc not found; the CUDA code-generation checks are skipped');
const describeNvcc = nvcc ? describe : describe.skip;

describeNvcc('CUDA code generation (PTX for sm_90)', () => {
  const ptx = new Map<string, string>();
  let dir = '';

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-ptx-'));
    await Promise.all(['flash_attention', 'gemm', 'grouped_gemm'].map(async (name) => {
      const out = path.join(dir, `${name}.ptx`);
      await run(nvcc!, ['-std=c++17', '-O3', '--expt-relaxed-constexpr', '-I', path.join(root, 'csrc'), '-I', root,
        '-arch=sm_90', '-ptx', path.join(root, 'cuda', `${name}.cu`), '-o', out], { maxBuffer: 1 << 24 });
      ptx.set(name, fs.readFileSync(out, 'utf8'));
    }));
  }, 600000);

  afterAll(() => { if (dir) fs.rmSync(dir, { recursive: true, force: true }); });

  const count = (text: string, pattern: RegExp): number => (text.match(new RegExp(pattern.source, 'g')) ?? []).length;

  test('attention: bf16 mma.sync m16n8k16 with f32 accumulators, ldmatrix (plain and .trans), cp.async tiles', () => {
    const text = ptx.get('flash_attention')!;
    expect(count(text, /mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32/)).toBeGreaterThan(0);
    expect(count(text, /ldmatrix\.sync\.aligned\.m8n8\.x4\.shared\.b16/)).toBeGreaterThan(0);
    expect(count(text, /ldmatrix\.sync\.aligned\.m8n8\.x4\.trans\.shared\.b16/)).toBeGreaterThan(0);
    expect(count(text, /cp\.async\.cg\.shared\.global/)).toBeGreaterThan(0);
  });

  test.each(['gemm', 'grouped_gemm'])('%s: cp.async pipeline (commit / wait_group), ldmatrix, bf16 mma.sync', (name) => {
    const text = ptx.get(name)!;
    expect(count(text, /cp\.async\.cg\.shared\.global/)).toBeGreaterThan(0);
    expect(count(text, /cp\.async\.commit_group/)).toBeGreaterThan(0);
    expect(count(text, /cp\.async\.wait_group/)).toBeGreaterThan(0);
    expect(count(text, /ldmatrix\.sync\.aligned\.m8n8\.x4/)).toBeGreaterThan(0);
    expect(count(text, /mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32/)).toBeGreaterThan(0);
  });

  test.each(['flash_attention', 'gemm', 'grouped_gemm'])('%s: no local-memory arrays', (name) => {
    const text = ptx.get(name)!;
    expect(count(text, /\.local\s/)).toBe(0);
    expect(count(text, /\b(ld|st)\.local\b/)).toBe(0);
  });
});
