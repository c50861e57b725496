/**
 * Data parallel training on the CPU through the real stack: `moma launch` starts 2 ranks of
 * `moma train`, which join a gloo process group over loopback. Checked against one process with
 * gradient accumulation over the same micro-batches (lib/train/data_parallel.ts): the loss of
 * every step and the final parameters agree to 1e-5 (relative), a run stopped on 2 ranks resumes
 * on 1 rank with the same global batch, and a bad rendezvous fails with ERR_DIST, not a hang.
 * The overlapped gradient all-reduce (GradientReducer: backward's onGradReady starts buckets during
 * the last micro-batch's backward) sums to the same bits as the all-reduce after the backward, on
 * 2 ranks for a small MoMa Transformer; and backward's onGradReady fires once per leaf, after its
 * gradient is final, leaving the gradients bit for bit as without it.
 * Needs the gloo plugin (built when libgloo-dev is installed; .ci/run installs it).
 */
import { spawn } from 'child_process';
import { PassThrough } from 'stream';
import { launch as launchRanks } from '../lib/distributed/launcher';
import { backward, makeBatch, modalityOfId, buildVocabLayout, Generator, tidy, Transformer, F, Tensor, zeroGrad } from '../lib';
import type { ImageTokenizerInfo } from '../lib';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ensureDist, runCli } from './support/cli';
import { COMMON, describeGloo, expectClose, expectSameParams, params, steps } from './support/dist_train';

const root = path.join(__dirname, '..');

describe('backward onGradReady', () => {
  test('fires once per leaf that gets a gradient, after it is final; gradients are bitwise those without the hook', async () => {
    const image: ImageTokenizerInfo = { kind: 'vq-patch', file: 'image_tokenizer.safetensors', sha256: 'ab'.repeat(32), imageSize: 8, patchSize: 4, codebookSize: 9, tokensPerImage: 4 };
    const layout = buildVocabLayout({ tokenizer: { kind: 'bytes' }, size: 11 }, image);
    const model = new Transformer({
      vocabSize: layout.size, dModel: 16, layers: 2, heads: 2, seed: 3, initStd: 0.3, device: 'cpu',
      ffn: { kind: 'moe', dFF: 12, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 3 }] },
    });
    const ids = [layout.bosId, layout.text.offset + 1, layout.text.offset + 4, layout.boiId, layout.image!.offset + 2, layout.image!.offset + 5,
      layout.image!.offset, layout.image!.offset + 8, layout.eoiId, layout.text.offset + 7, layout.eosId];
    const batch = makeBatch([ids, ids.slice().reverse()], { padId: layout.padId, bosId: layout.bosId, modalityOf: (id) => modalityOfId(layout, id), modalities: 2, device: 'cpu', vocabSize: layout.size });
    const params = model.parameters();
    const run = async (hook?: (leaf: Tensor) => void): Promise<Float32Array[]> => {
      for (let a = 0; a < 2; a++) {
        tidy(() => {
          const out = model.loss(batch, { training: true, generator: new Generator(9 + a) });
          backward(F.scale(out.loss, 0.5), undefined, a === 1 && hook !== undefined ? { onGradReady: hook } : {});
        });
      }
      const grads = await Promise.all(params.map(async (p) => Float32Array.from(await p.grad!.toArray())));
      return grads;
    };
    const plain = await run();
    zeroGrad(params);
    const seen = new Map<Tensor, Tensor>();
    const fired: Tensor[] = [];
    const hooked = await run((leaf) => {
      expect(seen.has(leaf)).toBe(false);
      seen.set(leaf, leaf.grad!);
      fired.push(leaf);
    });
    // every parameter with a gradient fired once, and its grad was final then (the same tensor at the end)
    expect(new Set(fired).size).toBe(fired.length);
    for (const p of params) if (p.grad !== null && seen.has(p)) expect(p.grad).toBe(seen.get(p));
    expect(fired.length).toBeGreaterThan(params.length / 2);
    hooked.forEach((g, i) => expect(Buffer.from(g.buffer).equals(Buffer.from(plain[i]!.buffer))).toBe(true));
    zeroGrad(params);
  }, 60_000);
});

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

  test('the overlapped gradient all-reduce equals the all-reduce after the backward, bit for bit, on 2 ranks', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (chunk: Buffer) => (text += chunk.toString()));
    const result = await launchRanks({
      command: [process.execPath, path.join(__dirname, 'fixtures', 'data_parallel', 'overlap_rank.js'), dir],
      nprocPerNode: 2, masterPort: 0, timeoutGraceMs: 5000, forwardSignals: false, stdout: out, stderr: out,
      env: { MOMA_DEVICE: 'cpu', MOMA_DIST_TIMEOUT_S: '60' },
    });
    if (!result.ok) throw new Error(`${result.message}\n${text}`);
    const bytes = (rank: number, name: string): Buffer => fs.readFileSync(path.join(dir, `rank${rank}-${name}.bin`));
    const overlap0 = bytes(0, 'overlap');
    expect(overlap0.length).toBeGreaterThan(4000);
    expect(overlap0.equals(bytes(0, 'plain'))).toBe(true);
    expect(bytes(1, 'overlap').equals(bytes(1, 'plain'))).toBe(true);
    expect(overlap0.equals(bytes(1, 'overlap'))).toBe(true); // every rank holds the same sums
    const values = new Float32Array(overlap0.buffer, overlap0.byteOffset, overlap0.length / 4);
    expect(values.some((v) => v !== 0)).toBe(true);
  }, 120_000);

  test('the Trainer with overlapGrads (its default) trains bit for bit as with overlapGrads false, on 2 ranks', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (chunk: Buffer) => (text += chunk.toString()));
    const result = await launchRanks({
      command: [process.execPath, path.join(__dirname, 'fixtures', 'data_parallel', 'trainer_overlap_rank.js'), dir],
      nprocPerNode: 2, masterPort: 0, timeoutGraceMs: 5000, forwardSignals: false, stdout: out, stderr: out,
      env: { MOMA_DEVICE: 'cpu', MOMA_DIST_TIMEOUT_S: '60' },
    });
    if (!result.ok) throw new Error(`${result.message}\n${text}`);
    const bytes = (rank: number, name: string): Buffer => fs.readFileSync(path.join(dir, `rank${rank}-trainer-${name}.bin`));
    const overlap0 = bytes(0, 'overlap');
    expect(overlap0.length).toBeGreaterThan(4000);
    expect(overlap0.equals(bytes(0, 'plain'))).toBe(true);
    expect(overlap0.equals(bytes(1, 'overlap'))).toBe(true); // the replicas stay identical
    expect(bytes(1, 'overlap').equals(bytes(1, 'plain'))).toBe(true);
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
