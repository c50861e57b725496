/**
 * Data parallel training on the CPU through the real stack: `moma launch` starts 2 ranks of
 * `moma train`, which join a gloo process group over loopback. Checked against one process with
 * gradient accumulation over the same micro-batches (lib/train/data_parallel.ts): the loss of
 * every step and the final parameters agree to 1e-5 (relative), a run stopped on 2 ranks resumes
 * on 1 rank with the same global batch, and a bad rendezvous fails with ERR_DIST, not a hang.
 * Needs the gloo plugin (built when libgloo-dev is installed; .ci/run installs it).
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ensureDist, runCli } from './support/cli';
import { COMMON, describeGloo, expectClose, expectSameParams, params, steps } from './support/dist_train';

const root = path.join(__dirname, '..');

describeGloo('data parallel tests')('data parallel training (2 ranks, gloo, loopback)', () => {
  let dir: string;
  beforeAll(() => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-dp-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const launch = (args: string[]) => runCli(dir, ['launch', '--nproc-per-node', '2', '--master-port', '0', '--grace-seconds', '5', 'train', ...args]);

  test('2 ranks equal 1 rank accumulating 2 micro-batches: every step\'s loss and the final parameters', async () => {
    const two = await launch([...COMMON, '--steps', '4', '--checkpoint-every', '0', '--out', 'two']);
    expect(two.stderr).toBe('');
    expect(two.code).toBe(0);
    expect(two.stdout).toContain('4 steps × (2 ranks × 2) × 64 tokens');
    const one = await runCli(dir, ['train', ...COMMON, '--steps', '4', '--checkpoint-every', '0', '--grad-accum', '2', '--out', 'one']);
    expect(one.code).toBe(0);
    const a = steps(path.join(dir, 'two'));
    const b = steps(path.join(dir, 'one'));
    expect(a.map((r) => r.step)).toEqual([1, 2, 3, 4]);
    expect(b.map((r) => r.step)).toEqual([1, 2, 3, 4]);
    a.forEach((r, i) => {
      expectClose(r.loss, b[i]!.loss, `step ${r.step} loss`);
      expectClose(r.gradNorm, b[i]!.gradNorm, `step ${r.step} gradient norm`);
      expect(r.tokens).toBe(b[i]!.tokens);
    });
    // the global batch: 2 micro-batches of 2 sequences of 64 tokens per step, all real tokens
    expect(a[0]!.tokens).toBe(256);
    expectSameParams(await params(path.join(dir, 'two'), 4), await params(path.join(dir, 'one'), 4));
    const run = JSON.parse(fs.readFileSync(path.join(dir, 'two', 'run.json'), 'utf8')) as { parallel: unknown };
    expect(run.parallel).toEqual({ worldSize: 2, gradAccum: 1, globalBatch: 4 });
    // rank 0 alone wrote the run directory: one record per step
    expect(fs.readdirSync(path.join(dir, 'two', 'checkpoints'))).toEqual(['step-000004']);
  }, 120_000);

  test('a run checkpointed on 2 ranks resumes on 1 rank with the same global batch and ends where an unbroken run does', async () => {
    const first = await launch([...COMMON, '--steps', '2', '--checkpoint-every', '2', '--out', 'split']);
    expect(first.code).toBe(0);
    const resumed = await runCli(dir, ['train', '--resume', 'split', '--steps', '4']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    const run = JSON.parse(fs.readFileSync(path.join(dir, 'split', 'run.json'), 'utf8')) as { parallel: unknown; config: { gradAccum: number } };
    expect(run.parallel).toEqual({ worldSize: 1, gradAccum: 2, globalBatch: 4 });
    const unbroken = path.join(dir, 'one');
    if (!fs.existsSync(path.join(unbroken, 'checkpoints', 'step-000004'))) {
      const one = await runCli(dir, ['train', ...COMMON, '--steps', '4', '--checkpoint-every', '0', '--grad-accum', '2', '--out', 'one']);
      expect(one.code).toBe(0);
    }
    const a = steps(path.join(dir, 'split'));
    const b = steps(unbroken);
    expect(a.map((r) => r.step)).toEqual([1, 2, 3, 4]);
    a.forEach((r, i) => expectClose(r.loss, b[i]!.loss, `step ${r.step} loss`));
    expectSameParams(await params(path.join(dir, 'split'), 4), await params(unbroken, 4));
  }, 120_000);

  test('a rendezvous nobody answers fails with ERR_DIST within its timeout', async () => {
    const script = `require(${JSON.stringify(path.join(root, 'dist'))}).distributed.init({ timeoutMs: 1500 })
      .then(() => { console.log('joined'); process.exit(0); }, (e) => { console.log(e.code + ' ' + e.message); process.exit(3); });`;
    const begun = Date.now();
    const result = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = spawn(process.execPath, ['-e', script], {
        env: { ...process.env, RANK: '1', LOCAL_RANK: '1', WORLD_SIZE: '2', LOCAL_WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: '1', MOMA_DEVICE: 'cpu' },
      });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.stderr.on('data', (c: Buffer) => (out += c.toString()));
      child.on('close', (code) => resolve({ code, out }));
    });
    expect(result.code).toBe(3);
    expect(result.out).toMatch(/^ERR_DIST .*127\.0\.0\.1:1/);
    expect(Date.now() - begun).toBeLessThan(30_000);
  }, 60_000);
});
