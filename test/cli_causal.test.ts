/**
 * `moma train-aux`, `moma eval --causal` and `moma generate` as a user runs them: the built CLI
 * (dist/, rebuilt with tsc when a source is newer) in child processes on the CPU, in a temp working
 * folder. One short tiny-4t4i-mod run is shared by all tests; they run in order: generate before
 * train-aux fails, train-aux (newest run, main model frozen), eval --causal, caption → PNG and
 * PNG → caption (determinism by seed), then bad input, which must fail with 'moma: ERR_…'.
 */
import type { ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { CliResult, ensureDist, runCli } from './support/cli';

let dir: string;
/** The shared run's only checkpoint, relative to `dir`. */
let checkpoint: string;
let codebookSize: number;

/** Runs the CLI in the temp working folder. */
const moma = (args: string[], onStdout?: (text: string, child: ChildProcess) => void): Promise<CliResult> => runCli(dir, args, onStdout);

/** A failed command: exit 1, one 'moma: CODE: …' message, no stack trace. */
function expectFailure(r: CliResult, code: string, ...mentions: string[]): void {
  expect(r.code).toBe(1);
  expect(r.stderr.startsWith(`moma: ${code}: `)).toBe(true);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  for (const m of mentions) expect(r.stderr).toContain(m);
}

/** A successful command: exit 0 and nothing on stderr. */
function expectSuccess(r: CliResult): void {
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
}

/** A router's held-out metrics; null when no held-out row reached it (entries 0). */
interface RouterMetrics { layer: number; kind: 'depth' | 'experts'; group: number; modality: string; entries: number; bce: number | null; accuracy: number | null }

/**
 * The routers that held-out rows reached. An expert router inside a MoD block sees only the rows
 * the block selected, and after 30 steps the block may select none of one modality in the one
 * held-out batch: such a router has no metrics (null), which is what the table's '-' shows.
 */
function measured(ms: RouterMetrics[]): RouterMetrics[] {
  for (const m of ms) {
    if (m.entries === 0) {
      expect(m.kind === 'experts' && m.layer % 2 === 0).toBe(true); // layers 0, 2, 4 are MoD blocks
      expect([m.bce, m.accuracy]).toEqual([null, null]);
    }
  }
  const out = ms.filter((m) => m.entries > 0);
  expect(out.length).toBeGreaterThanOrEqual(10);
  return out;
}
interface AuxSummary { checkpoint: string; steps: number; stopped: boolean; settings: { steps: number; lr: number }; before: RouterMetrics[]; after: RouterMetrics[] }
interface LossResult { loss: number; perModality: Record<string, number>; targets: number }
interface CausalJson { training: LossResult; causal: LossResult; routers: RouterMetrics[] }
interface ImageJson { codes: number[]; tokensPerSecond: number }
interface CaptionJson { caption: unknown; stop: string }

/** tiny-4t4i-mod: 5 layers, MoD on 0, 2, 4; a text group and an image group of 4 experts in every layer. */
const EXPECTED_ROUTERS = [
  [0, 'MoD'], [0, 'experts g0'], [0, 'experts g1'], [1, 'experts g0'], [1, 'experts g1'],
  [2, 'MoD'], [2, 'experts g0'], [2, 'experts g1'], [3, 'experts g0'], [3, 'experts g1'],
  [4, 'MoD'], [4, 'experts g0'], [4, 'experts g1'],
].map(([layer, router]) => `${layer} ${router}`);

/** The (layer, router) cells of the router table rows in `text`. */
function tableRouters(text: string): string[] {
  return [...text.matchAll(/^ +(\d+) +(MoD|experts g\d) +(all|text|image) /gm)].map((m) => `${m[1]} ${m[2]}`);
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

beforeAll(async () => {
  ensureDist();
  dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'moma-cli-causal-')));
  const r = await moma(['train', '--steps', '30', '--preset', 'tiny-4t4i-mod', '--batch-size', '4', '--seq-len', '128',
    '--eval-every', '0', '--checkpoint-every', '0', '--eval-batches', '1']);
  expectSuccess(r);
  const [run, ...others] = fs.readdirSync(path.join(dir, 'runs'));
  expect(others).toEqual([]);
  expect(run).toMatch(/^\d{8}-\d{6}-tiny-4t4i-mod$/);
  checkpoint = path.join('runs', run!, 'checkpoints', 'step-000030');
  const vocab = JSON.parse(fs.readFileSync(path.join(dir, checkpoint, 'vocab.json'), 'utf8')) as { image: { size: number } };
  codebookSize = vocab.image.size;
}, 180_000);
afterAll(() => {
  if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
});

test('generate before train-aux fails with ERR_FILE naming the missing routers and moma train-aux', async () => {
  const r = await moma(['generate', '--prompt', 'a red circle']);
  expectFailure(r, 'ERR_FILE', 'aux_routers.safetensors', 'moma train-aux');
  expect(fs.existsSync(path.join(dir, 'a-red-circle.png'))).toBe(false);
}, 120_000);

test('train-aux on the newest run: router table with 13 routers, files saved, held-out BCE falls, the main model untouched', async () => {
  const modelFile = path.join(dir, checkpoint, 'model.safetensors');
  const modelBefore = fs.readFileSync(modelFile);
  const r = await moma(['train-aux', '--steps', '20', '--lr', '1e-3']);
  expectSuccess(r);
  expect(r.stdout).toContain(`moma train-aux: 13 auxiliary routers`);
  expect(r.stdout).toContain(`of ${checkpoint}, 20 steps`);
  expect(r.stdout).toMatch(/^done: 20 steps in /m);
  expect(r.stdout).toMatch(/^ +layer +router +modality +BCE before +BCE +accuracy +precision +recall +selected +predicted$/m);
  expect(tableRouters(r.stdout)).toEqual(EXPECTED_ROUTERS);
  expect(r.stdout).toContain(`saved ${path.join(checkpoint, 'aux_routers.safetensors')}`);

  expect(fs.existsSync(path.join(dir, checkpoint, 'aux_routers.safetensors'))).toBe(true);
  const summary = JSON.parse(fs.readFileSync(path.join(dir, checkpoint, 'aux_routers.json'), 'utf8')) as AuxSummary;
  expect(summary.checkpoint).toBe(path.join(dir, checkpoint));
  expect(summary).toMatchObject({ steps: 20, stopped: false, settings: { steps: 20, lr: 1e-3 } });
  expect(summary.before).toHaveLength(13);
  expect(summary.after).toHaveLength(13);
  expect(summary.after.map((m) => `${m.layer} ${m.kind === 'depth' ? 'MoD' : `experts g${m.group}`}`)).toEqual(EXPECTED_ROUTERS);
  const before = measured(summary.before);
  const after = measured(summary.after);
  expect(after.map((m) => m.entries)).toEqual(before.map((m) => m.entries));
  for (const m of [...before, ...after]) expect(Number.isFinite(m.bce)).toBe(true);
  // untrained routers sit near ln 2 per entry; 20 steps at lr 1e-3 must bring the sum down
  expect(sum(before.map((m) => m.bce!))).toBeCloseTo(before.length * Math.LN2, 0);
  expect(sum(after.map((m) => m.bce!))).toBeLessThan(sum(before.map((m) => m.bce!)));

  expect(fs.readFileSync(modelFile).equals(modelBefore)).toBe(true);
}, 120_000);

test('eval --causal --json: both losses finite, per modality, 13 routers with accuracy in [0, 1]', async () => {
  const r = await moma(['eval', '--causal', '--json']);
  expectSuccess(r);
  const result = JSON.parse(r.stdout) as CausalJson;
  for (const mode of [result.training, result.causal]) {
    expect(Number.isFinite(mode.loss)).toBe(true);
    expect(mode.loss).toBeGreaterThan(0);
    expect(Object.keys(mode.perModality).sort()).toEqual(['image', 'text']);
    for (const v of Object.values(mode.perModality)) expect(Number.isFinite(v)).toBe(true);
  }
  expect(result.causal.targets).toBe(result.training.targets);
  expect(result.routers).toHaveLength(13);
  for (const m of measured(result.routers)) {
    expect(m.accuracy).toBeGreaterThanOrEqual(0);
    expect(m.accuracy).toBeLessThanOrEqual(1);
  }
  // the held-out rows are the ones train-aux measured "after" on
  const summary = JSON.parse(fs.readFileSync(path.join(dir, checkpoint, 'aux_routers.json'), 'utf8')) as AuxSummary;
  result.routers.forEach((m, i) => {
    expect(m.entries).toBe(summary.after[i]!.entries);
    if (m.entries > 0) expect(m.bce!).toBeCloseTo(summary.after[i]!.bce!, 4);
  });
}, 120_000);

test('eval --causal prints the training-mode and the causal-mode row and the router table', async () => {
  const r = await moma(['eval', '--causal']);
  expectSuccess(r);
  expect(r.stdout).toMatch(/^ +routing +loss +text +image$/m);
  expect(r.stdout).toMatch(/^ +training \(batch top-k\) +\d+\.\d{4} +\d+\.\d{4} +\d+\.\d{4}$/m);
  expect(r.stdout).toMatch(/^ +causal \(aux routers\) +\d+\.\d{4} +\d+\.\d{4} +\d+\.\d{4}$/m);
  expect(tableRouters(r.stdout)).toEqual(EXPECTED_ROUTERS);
}, 120_000);

test('generate --prompt writes a 256×256 PNG and prints tokens/s; the same seed gives the same bytes', async () => {
  const r = await moma(['generate', '--prompt', 'a red circle', '--out', 'red.png', '--seed', '3']);
  expectSuccess(r);
  expect(r.stdout).toContain('wrote red.png (256×256, 64 image tokens) for "a red circle"');
  expect(r.stdout).toMatch(/^65 tokens in \d+\.\d\d s: \d+\.\d tokens\/s \(prompt \d+ ms\) on cpu$/m);
  const meta = await sharp(path.join(dir, 'red.png')).metadata();
  expect(meta).toMatchObject({ format: 'png', width: 32 * 8, height: 32 * 8 });

  const again = await moma(['generate', '--prompt', 'a red circle', '--out', 'red-again.png', '--seed', '3']);
  expectSuccess(again);
  expect(fs.readFileSync(path.join(dir, 'red-again.png')).equals(fs.readFileSync(path.join(dir, 'red.png')))).toBe(true);

  const small = await moma(['generate', '--prompt', 'a red circle', '--seed', '3', '--scale', '1']);
  expectSuccess(small);
  expect(await sharp(path.join(dir, 'a-red-circle.png')).metadata()).toMatchObject({ width: 32, height: 32 });
}, 120_000);

test('generate --json: 64 codes in the codebook; seed 3 twice agrees, seed 4 differs', async () => {
  const codes = async (seed: string, out: string): Promise<number[]> => {
    const r = await moma(['generate', '--prompt', 'a red circle', '--out', out, '--seed', seed, '--json']);
    expectSuccess(r);
    const j = JSON.parse(r.stdout) as ImageJson;
    expect(j.tokensPerSecond).toBeGreaterThan(0);
    return j.codes;
  };
  const three = await codes('3', 'three.png');
  expect(three).toHaveLength(64);
  for (const c of three) {
    expect(Number.isInteger(c)).toBe(true);
    expect(c).toBeGreaterThanOrEqual(0);
    expect(c).toBeLessThan(codebookSize);
  }
  expect(await codes('3', 'three-again.png')).toEqual(three);
  expect(await codes('4', 'four.png')).not.toEqual(three);
  expect(fs.readFileSync(path.join(dir, 'three.png')).equals(fs.readFileSync(path.join(dir, 'red.png')))).toBe(true);
}, 120_000);

test('generate --image-in --temperature 0 gives a caption, the same one twice', async () => {
  const caption = async (): Promise<CaptionJson> => {
    const r = await moma(['generate', '--image-in', 'red.png', '--temperature', '0', '--json']);
    expectSuccess(r);
    return JSON.parse(r.stdout) as CaptionJson;
  };
  const first = await caption();
  expect(typeof first.caption).toBe('string');
  expect(['done', 'max-tokens']).toContain(first.stop);
  const second = await caption();
  expect({ caption: second.caption, stop: second.stop }).toEqual({ caption: first.caption, stop: first.stop });
  const text = await moma(['generate', '--image-in', 'red.png', '--temperature', '0', '--max-tokens', '5']);
  expectSuccess(text);
  const stats = /^(\d+) tokens in \d+\.\d\d s: \d+\.\d tokens\/s \(prompt \d+ ms\) on cpu(; stopped at --max-tokens)?$/m.exec(text.stdout);
  expect(stats).not.toBeNull();
  expect(Number(stats![1])).toBeLessThanOrEqual(5);
  if (stats![2] !== undefined) expect(stats![1]).toBe('5');
}, 120_000);

test('bad input fails with exit 1 and a MomaError, never a stack trace', async () => {
  expectFailure(await moma(['generate', '--prompt', 'a red circle', '--image-in', 'red.png']), 'ERR_ARG', 'exactly one of --prompt');
  expectFailure(await moma(['generate']), 'ERR_ARG', 'exactly one of --prompt');
  expectFailure(await moma(['generate', '--image-in', 'missing.png']), 'ERR_FILE', 'missing.png');
  fs.writeFileSync(path.join(dir, 'not-an-image.png'), 'hello');
  expectFailure(await moma(['generate', '--image-in', 'not-an-image.png']), 'ERR_FILE', 'not-an-image.png');
  expectFailure(await moma(['generate', '--prompt', 'a red circle', '--out', 'foo.jpg']), 'ERR_ARG', 'foo.jpg');
  expect(fs.existsSync(path.join(dir, 'foo.jpg'))).toBe(false);
  expectFailure(await moma(['generate', '--prompt', 'a red circle', '--temperature', '-1']), 'ERR_ARG', 'temperature');
  expectFailure(await moma(['generate', '--prompt', 'a red circle', '--temperature', 'hot']), 'ERR_ARG', '--temperature');
  expectFailure(await moma(['generate', '--prompt', 'a red circle', '--seed', '-1']), 'ERR_ARG', 'seed');
  expectFailure(await moma(['generate', '--prompt', '   ']), 'ERR_ARG', 'caption is empty');
  expectFailure(await moma(['train-aux', '--steps', '0']), 'ERR_ARG', 'steps');
  expectFailure(await moma(['train-aux', '--steps', '2.5']), 'ERR_ARG', '--steps');
  expectFailure(await moma(['train-aux', '--checkpoint', '/nonexistent']), 'ERR_ARG', '/nonexistent');
  expectFailure(await moma(['eval', '--causal', '--checkpoint', 'runs/nowhere']), 'ERR_ARG', 'runs/nowhere');
  expectFailure(await moma(['generate', '--prompt', 'a red circle', '--scale', '0']), 'ERR_ARG', '--scale');
  fs.mkdirSync(path.join(dir, 'folder.png'));
  expectFailure(await moma(['generate', '--prompt', 'a red circle', '--out', 'folder.png']), 'ERR_ARG', 'folder.png');
  expectFailure(await moma(['generate', '--prompt', 'a red circle', '--out', 'red.png/inside.png']), 'ERR_FILE', 'inside.png');
  expect(fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  // a dangling link among the runs does not hide the newest run
  fs.symlinkSync(path.join(dir, 'nowhere'), path.join(dir, 'runs', 'broken'));
  const r = await moma(['eval', '--causal', '--json']);
  fs.rmSync(path.join(dir, 'runs', 'broken'));
  expect(r.code).toBe(0);
}, 120_000);

test('eval --causal and generate on a run without auxiliary routers fail with ERR_FILE', async () => {
  // outside runs/, so that it does not become the newest run the other commands default to
  const r = await moma(['train', '--steps', '2', '--preset', 'tiny-4t4i-mod', '--batch-size', '2', '--seq-len', '64',
    '--eval-every', '0', '--checkpoint-every', '0', '--eval-batches', '1', '--warmup', '1', '--out', 'plain']);
  expectSuccess(r);
  expectFailure(await moma(['eval', '--causal', '--checkpoint', 'plain']), 'ERR_FILE', 'aux_routers.safetensors', 'moma train-aux');
  expectFailure(await moma(['generate', '--checkpoint', 'plain', '--prompt', 'a red circle']), 'ERR_FILE', 'moma train-aux');
  // plain eval (training mode) still works on it
  const plain = await moma(['eval', '--checkpoint', 'plain', '--json']);
  expectSuccess(plain);
  expect(Number.isFinite((JSON.parse(plain.stdout) as LossResult).loss)).toBe(true);
}, 120_000);
