/**
 * ZeRO-1 / ZeRO-2 (lib/train/zero.ts) through the real stack: `moma launch` starts 2 CPU ranks of
 * `moma train --sharding …` over gloo. Checked against unsharded 2-rank training (every step's
 * loss and the final parameters within 1e-5 relative, the AdamW moments too), a sharded checkpoint
 * resumed on 1 rank and an unsharded one resumed sharded on 2 ranks ending where the unbroken run
 * does, `moma checkpoint export` giving one optimizer.safetensors that equals the unsharded run's
 * and that `moma eval` reads, and a missing shard failing with ERR_FILE naming it.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { decodeSafetensors } from '../lib/io/safetensors';
import { ensureDist, runCli } from './support/cli';
import { checkpointParams, COMMON, describeGloo, expectClose, expectSameParams, params, steps } from './support/dist_train';

/** The moments of a checkpoint's optimizer.safetensors by entry name. */
function moments(dir: string): Map<string, Float32Array> {
  const file = path.join(dir, 'optimizer.safetensors');
  const out = new Map<string, Float32Array>();
  for (const [name, t] of decodeSafetensors(fs.readFileSync(file), file).tensors) out.set(name, t.data as Float32Array);
  return out;
}

const checkpoint = (runDir: string, step: number): string => path.join(runDir, 'checkpoints', `step-${String(step).padStart(6, '0')}`);

describeGloo('ZeRO tests')('ZeRO-1 / ZeRO-2 sharded training (2 ranks, gloo, loopback)', () => {
  let dir: string;
  const launch = (args: string[]) => runCli(dir, ['launch', '--nproc-per-node', '2', '--master-port', '0', '--grace-seconds', '5', 'train', ...args]);
  const expectLikeUnsharded = async (runDir: string, from = 1): Promise<void> => {
    const a = steps(runDir);
    const b = steps(path.join(dir, 'none'));
    expect(a.map((r) => r.step)).toEqual([1, 2, 3, 4]);
    a.slice(from - 1).forEach((r) => {
      expectClose(r.loss, b[r.step - 1]!.loss, `${runDir} step ${r.step} loss`);
      expectClose(r.gradNorm, b[r.step - 1]!.gradNorm, `${runDir} step ${r.step} gradient norm`);
    });
    expectSameParams(await params(runDir, 4), await params(path.join(dir, 'none'), 4));
  };

  beforeAll(async () => {
    ensureDist();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-zero-'));
    const none = await launch([...COMMON, '--steps', '4', '--checkpoint-every', '2', '--out', 'none']);
    expect(none.code).toBe(0);
  }, 120_000);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('zero1 trains like unsharded data parallel and writes one optimizer shard per rank', async () => {
    const run = await launch([...COMMON, '--steps', '4', '--checkpoint-every', '0', '--sharding', 'zero1', '--out', 'zero1']);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('optimizer state sharded (zero1)');
    await expectLikeUnsharded(path.join(dir, 'zero1'));
    expect(fs.readdirSync(checkpoint(path.join(dir, 'zero1'), 4)).filter((f) => f.startsWith('optimizer')).sort())
      .toEqual(['optimizer.index.json', 'optimizer.rank-00000-of-00002.safetensors', 'optimizer.rank-00001-of-00002.safetensors']);
    const stored = JSON.parse(fs.readFileSync(path.join(dir, 'zero1', 'run.json'), 'utf8')) as { config: { sharding: string } };
    expect(stored.config.sharding).toBe('zero1');
  }, 60_000);

  const zero2 = async (): Promise<void> => {
    if (fs.existsSync(checkpoint(path.join(dir, 'zero2'), 4))) return;
    const run = await launch([...COMMON, '--steps', '4', '--checkpoint-every', '2', '--sharding', 'zero2', '--out', 'zero2']);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
  };

  test('zero2 trains like unsharded data parallel', async () => {
    await zero2();
    await expectLikeUnsharded(path.join(dir, 'zero2'));
  }, 60_000);

  test('a zero2 checkpoint exported: its moments equal the unsharded run\'s, moma eval reads it; a missing shard is ERR_FILE naming it', async () => {
    await zero2();

    const exported = await runCli(dir, ['checkpoint', 'export', checkpoint('zero2', 4), '--out', 'exported']);
    expect(exported.stderr).toBe('');
    expect(exported.code).toBe(0);
    expect(exported.stdout).toContain('optimizer state of 2 ranks consolidated');
    const out = path.join(dir, 'exported');
    expect(fs.readdirSync(out).sort()).toEqual(['checksums.json', 'config.json', 'image_tokenizer.safetensors', 'model.safetensors', 'optimizer.safetensors', 'trainer.json', 'vocab.json']);
    expectSameParams(moments(out), moments(checkpoint(path.join(dir, 'none'), 4)));
    expectSameParams(await checkpointParams(out), await params(path.join(dir, 'none'), 4));

    const tokens = path.join(dir, 'tokens.jsonl');
    fs.writeFileSync(tokens, [0, 1, 2].map((s) => JSON.stringify([1, ...Array.from({ length: 40 }, (_, i) => 5 + ((i * 7 + s * 13) % 256))])).join('\n') + '\n');
    const evalOf = async (what: string): Promise<number> => {
      const r = await runCli(dir, ['eval', '--checkpoint', what, '--data', tokens, '--json']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      return (JSON.parse(r.stdout) as { loss: number }).loss;
    };
    const loss = await evalOf('exported');
    expect(Number.isFinite(loss)).toBe(true);
    expect(loss).toBe(await evalOf(checkpoint('zero2', 4)));

    // a shard missing: ERR_FILE naming it
    const broken = path.join(dir, 'broken');
    fs.cpSync(checkpoint(path.join(dir, 'zero2'), 4), broken, { recursive: true });
    fs.rmSync(path.join(broken, 'optimizer.rank-00001-of-00002.safetensors'));
    const failed = await runCli(dir, ['checkpoint', 'export', 'broken', '--out', 'nowhere']);
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toMatch(/ERR_FILE.*optimizer\.rank-00001-of-00002\.safetensors/);
    expect(fs.existsSync(path.join(dir, 'nowhere'))).toBe(false);
  }, 60_000);

  test('a zero2 checkpoint of 2 ranks resumes on 1 rank and ends where the unbroken run does', async () => {
    await zero2();
    const split = path.join(dir, 'two-to-one');
    fs.cpSync(path.join(dir, 'zero2'), split, { recursive: true });
    fs.rmSync(checkpoint(split, 4), { recursive: true, force: true });
    const resumed = await runCli(dir, ['train', '--resume', 'two-to-one', '--steps', '4']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    const run = JSON.parse(fs.readFileSync(path.join(split, 'run.json'), 'utf8')) as { parallel: unknown; config: { sharding: string } };
    expect(run.parallel).toEqual({ worldSize: 1, gradAccum: 2, globalBatch: 4 });
    expect(run.config.sharding).toBe('zero2');
    // one rank has nothing to shard: the checkpoint it writes is unsharded
    expect(fs.existsSync(path.join(checkpoint(split, 4), 'optimizer.safetensors'))).toBe(true);
    await expectLikeUnsharded(split, 3);
  }, 60_000);

  test('an unsharded checkpoint of 1 rank resumes sharded (zero1) on 2 ranks and ends where the unbroken run does', async () => {
    const first = await runCli(dir, ['train', ...COMMON, '--steps', '2', '--checkpoint-every', '2', '--grad-accum', '2', '--sharding', 'zero1', '--out', 'one-to-two']);
    expect(first.code).toBe(0);
    expect(fs.existsSync(path.join(checkpoint(path.join(dir, 'one-to-two'), 2), 'optimizer.safetensors'))).toBe(true);
    const resumed = await launch(['--resume', 'one-to-two', '--steps', '4']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    const out = path.join(dir, 'one-to-two');
    expect(fs.existsSync(path.join(checkpoint(out, 4), 'optimizer.index.json'))).toBe(true);
    await expectLikeUnsharded(out, 3);
  }, 90_000);
});
