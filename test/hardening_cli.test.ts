/**
 * Issue 16 from the command line (the built CLI in a child process, MOMA_DEVICE=cpu): every error
 * ends as one line `moma: ERR_…: message` on stderr with exit code 1 — MomaErrors, usage errors
 * commander finds, a checkpoint trained on cuda:0 opened without a GPU (and loaded on the CPU with
 * --device cpu), an image codebook larger than its training patches.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Transformer, TransformerConfig } from '../lib';
import { saveCheckpoint } from '../lib/train/checkpoint';
import { CliResult, ensureDist, runCli } from './support/cli';

let dir: string;
const moma = (args: string[]): Promise<CliResult> => runCli(dir, args);

beforeAll(() => {
  ensureDist();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-hardening-cli-'));
}, 120_000);
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The one stderr line of a failed command, checked for exit code 1 and the `moma: CODE: ` form. */
function failure(r: CliResult, code: string): string {
  expect(r.code).toBe(1);
  expect(r.stdout).toBe('');
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]!.startsWith(`moma: ${code}: `)).toBe(true);
  return lines[0]!.slice(`moma: ${code}: `.length);
}

test('usage errors commander finds exit 1 as moma: ERR_ARG', async () => {
  expect(failure(await moma(['nope']), 'ERR_ARG')).toBe("unknown command 'nope'");
  expect(failure(await moma(['model', 'info']), 'ERR_ARG')).toBe("missing required argument 'preset'");
  expect(failure(await moma(['inspect', '--jsn']), 'ERR_ARG')).toBe("unknown option '--jsn' (Did you mean --json?)");
  const group = await moma(['model']);  // a command group alone: its help on stderr, then the error
  expect(group.code).toBe(1);
  expect(group.stderr).toMatch(/^Usage: moma model /);
  expect(group.stderr.trimEnd().split('\n').pop()).toBe('moma: ERR_ARG: no command given (see the help above)');
  expect(failure(await moma(['train', '--steps']), 'ERR_ARG')).toBe("option '--steps <n>' argument missing");
  expect(failure(await moma(['model', 'list', 'extra']), 'ERR_ARG')).toBe("too many arguments for 'list'. Expected 0 arguments but got 1.");
  const help = await moma(['--help']);
  expect(help.code).toBe(0);
  expect(help.stdout).toContain('Usage: moma');
  expect(help.stdout).toContain('-V, --version');
  expect(help.stderr).toBe('');
  const subHelp = await moma(['model', 'info', '--help']);
  expect(subHelp.code).toBe(0);
  expect(subHelp.stdout).toMatch(/^Usage: moma model info \[options\] <preset>/);
}, 60_000);

test('moma --version and -V print the package version and exit 0', async () => {
  const version = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }).version;
  for (const flag of ['--version', '-V']) {
    const r = await moma([flag]);
    expect(r).toEqual({ code: 0, signal: null, stdout: `${version}\n`, stderr: '' });
  }
}, 30_000);

test('moma model info of an unknown preset exits 1', async () => {
  expect(failure(await moma(['model', 'info', 'nope']), 'ERR_ARG')).toMatch(/nope/);
}, 30_000);

test('a checkpoint trained on cuda:0: ERR_DEVICE suggesting --device cpu, which loads it on the CPU', async () => {
  const config: TransformerConfig = { vocabSize: 16, dModel: 8, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 8 }, device: 'cpu' };
  const model = new Transformer(config);
  await saveCheckpoint(path.join(dir, 'gpu-ckpt'), { config: { ...model.config, device: 'cuda:0' }, model, state: { step: 1, optimizerStep: 1 } });
  model.dispose();
  fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify({ padId: 0, bosId: 1, ranges: [{ modality: 0, from: 0, to: 10 }, { modality: 1, from: 10, to: 16 }] }));
  fs.writeFileSync(path.join(dir, 'tokens.jsonl'), '[1, 2, 3, 4, 11, 12]\n[1, 5, 6, 7, 13, 14]\n');
  const args = ['eval', '--checkpoint', 'gpu-ckpt', '--data', 'tokens.jsonl', '--vocab', 'vocab.json'];
  const message = failure(await moma(args), 'ERR_DEVICE');
  expect(message).toBe(`eval: the checkpoint ${fs.realpathSync(path.join(dir, 'gpu-ckpt'))} was trained on cuda:0, but no CUDA device is visible here (MOMA_DEVICE=cpu); pass --device cpu (in TypeScript: device: 'cpu') to load it on the CPU`);
  const cpu = await moma([...args, '--device', 'cpu']);
  expect(cpu.stderr).toBe('');
  expect(cpu.code).toBe(0);
  expect(cpu.stdout).toMatch(/^loss \d+\.\d{4} over \d+ targets \(2 sequences\)/);
}, 60_000);

test('tokenizer train-image: more codes than patches exits 1 before reading an image', async () => {
  const images = path.join(dir, 'images');
  fs.mkdirSync(images);
  for (const name of ['a.png', 'b.png']) fs.writeFileSync(path.join(images, name), 'not decoded');
  const r = await moma(['tokenizer', 'train-image', 'images', '--out', 'tok.safetensors', '--codebook-size', '1048576']);
  expect(failure(r, 'ERR_ARG')).toBe(
    'ImageTokenizer.trainFromFolder: codebookSize 1048576 is more than the 128 training patches there are (2 images × 64 patches of 4×4); every code needs a patch: use a codebook size of at most 128, or train on more images',
  );
  expect(fs.existsSync(path.join(dir, 'tok.safetensors'))).toBe(false);
}, 30_000);
