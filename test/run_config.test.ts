/** `moma train` settings: defaults, config file < options < flags, resume rules, and every bad value named. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MomaError } from '../lib';
import { bestDevice } from '../lib/device';
import { autoImageFraction, defaultRunDir, resolveRunConfig, RUN_DEFAULTS, RunConfigSources, RunSettings } from '../lib/run/run_config';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-runcfg-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function writeConfig(name: string, content: unknown): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

/** The MomaError resolveRunConfig throws for `sources`. */
function failure(sources: RunConfigSources): MomaError {
  try {
    resolveRunConfig(sources);
  } catch (err) {
    expect(err).toBeInstanceOf(MomaError);
    return err as MomaError;
  }
  throw new Error(`resolveRunConfig(${JSON.stringify(sources)}) did not throw`);
}

const NOW = new Date(2025, 0, 2, 3, 4, 5);

test('no arguments: the measured defaults, the best device, MoMa 4t4i with image fraction 0.5, a dated run folder', () => {
  const { settings, resume } = resolveRunConfig({ now: NOW });
  expect(resume).toBeNull();
  const expected: RunSettings = {
    preset: 'tiny-4t4i', model: {}, data: 'builtin', device: bestDevice(), steps: RUN_DEFAULTS.steps, batchSize: 8, seqLen: 256,
    lr: 3e-3, warmup: 50, seed: 0, imageFraction: 0.5, evalEvery: RUN_DEFAULTS.evalEvery, evalBatches: RUN_DEFAULTS.evalBatches,
    checkpointEvery: RUN_DEFAULTS.checkpointEvery, checkpointMinutes: 0, tensorboard: false, logEvery: RUN_DEFAULTS.logEvery, gradAccum: RUN_DEFAULTS.gradAccum, sharding: 'none', expertParallel: 1, skipNonfinite: 0, dtype: 'float32', out: 'runs/20250102-030405-tiny-4t4i',
  };
  expect(settings).toEqual(expected);
  expect(Object.keys(settings)).toEqual(Object.keys(expected));
});

test('the default image fraction is the image experts\' share for per-modality expert groups, off otherwise', () => {
  expect(autoImageFraction('tiny-4t4i')).toBe(0.5);
  expect(autoImageFraction('tiny-1t1i')).toBe(0.5);
  expect(autoImageFraction('tiny-4t4i-mod')).toBe(0.5);
  expect(autoImageFraction('tiny-moe8x')).toBeNull();
  expect(autoImageFraction('tiny-dense')).toBeNull();
  expect(autoImageFraction('tiny-4t4i', { ffn: { groups: [{ modality: 'text', experts: 6 }, { modality: 'image', experts: 2 }] } })).toBe(0.25);
  expect(resolveRunConfig({ flags: { preset: 'TINY-DENSE' }, now: NOW }).settings).toMatchObject({ preset: 'tiny-dense', imageFraction: null, out: 'runs/20250102-030405-tiny-dense' });
  expect(resolveRunConfig({ flags: { imageFraction: 'off' } }).settings.imageFraction).toBeNull();
  expect(resolveRunConfig({ flags: { imageFraction: '0.3' } }).settings.imageFraction).toBe(0.3);
  expect(resolveRunConfig({ flags: { preset: 'tiny-dense', imageFraction: '0' } }).settings.imageFraction).toBe(0);
  expect(resolveRunConfig({ values: { imageFraction: null } }).settings.imageFraction).toBeNull();
  expect(defaultRunDir('Dense-1.4B', new Date(2030, 11, 31, 23, 59, 58))).toBe('runs/20301231-235958-dense-1.4b');
});

test('flags override the config file and options; options override the file; the file overrides defaults', () => {
  const file = writeConfig('precedence.json', { steps: 50, lr: 0.001, batchSize: 4, seqLen: 128, model: { dModel: 64 }, evalEvery: 0 });
  const fromFile = resolveRunConfig({ configFile: file }).settings;
  expect(fromFile).toMatchObject({ steps: 50, lr: 0.001, batchSize: 4, seqLen: 128, model: { dModel: 64 }, evalEvery: 0, warmup: 50 });
  const withValues = resolveRunConfig({ configFile: file, values: { lr: 0.002, steps: 60 } }).settings;
  expect(withValues).toMatchObject({ steps: 60, lr: 0.002, batchSize: 4 });
  const withFlags = resolveRunConfig({ configFile: file, values: { lr: 0.002, steps: 60 }, flags: { steps: '70', seqLen: '96', out: 'x/y', device: 'cpu', seed: '12' } }).settings;
  expect(withFlags).toMatchObject({ steps: 70, lr: 0.002, batchSize: 4, seqLen: 96, out: 'x/y', device: 'cpu', seed: 12 });
  expect(resolveRunConfig({ flags: { lr: '3e-4', warmup: '0', checkpointEvery: '0', evalBatches: '1' } }).settings).toMatchObject({ lr: 3e-4, warmup: 0, checkpointEvery: 0, evalBatches: 1 });
});

test('--dtype sets the compute dtype; model.computeDtype of a config file is the same setting and may not contradict it', () => {
  expect(resolveRunConfig({ flags: { dtype: 'bfloat16' } }).settings).toMatchObject({ dtype: 'bfloat16', model: {} });
  expect(resolveRunConfig({ values: { dtype: 'float32' } }).settings.dtype).toBe('float32');
  const file = writeConfig('bf16.json', { model: { dModel: 64, computeDtype: 'bfloat16' } });
  expect(resolveRunConfig({ configFile: file }).settings).toMatchObject({ dtype: 'bfloat16', model: { dModel: 64, computeDtype: 'bfloat16' } });
  expect(resolveRunConfig({ configFile: file, flags: { dtype: 'bfloat16' } }).settings.dtype).toBe('bfloat16');
  const err = failure({ configFile: file, flags: { dtype: 'float32' } });
  expect(err.code).toBe('ERR_ARG');
  expect(err.message).toContain("--dtype 'float32' contradicts 'model''s computeDtype 'bfloat16'");
  expect(resolveRunConfig({ configFile: writeConfig('dtype-key.json', { dtype: 'bfloat16' }) }).settings.dtype).toBe('bfloat16');
});

test('unknown keys in a config file or in options are refused by name', () => {
  const file = writeConfig('unknown.json', { steps: 5, bogusKey: 1 });
  const err = failure({ configFile: file });
  expect(err.code).toBe('ERR_ARG');
  expect(err.message).toContain("unknown key 'bogusKey'");
  expect(err.message).toContain(file);
  expect(failure({ values: { batch_size: 4 } }).message).toContain("unknown option 'batch_size'");
  expect(failure({ configFile: writeConfig('unknown-model.json', { model: { dmodel: 64 } }) }).message).toMatch(/key 'model'.*dmodel/);
  expect(failure({ flags: { model: '{}' } }).message).toContain("'model' can only be set in a config file");
});

test.each([
  ['steps', '0', '--steps'], ['steps', '1.5', '--steps'], ['steps', '', '--steps'], ['batchSize', 'eight', '--batch-size'],
  ['batchSize', '0', '--batch-size'], ['seqLen', '4', '--seq-len'], ['seqLen', '1e9', '--seq-len'], ['lr', '0', '--lr'], ['lr', '-1e-3', '--lr'],
  ['lr', 'fast', '--lr'], ['lr', '2', '--lr'], ['warmup', '-1', '--warmup'], ['seed', '-3', '--seed'], ['seed', '0x10', '--seed'],
  ['imageFraction', '1.5', '--image-fraction'], ['imageFraction', 'half', '--image-fraction'], ['evalEvery', '-1', '--eval-every'],
  ['evalBatches', '0', '--eval-batches'], ['checkpointEvery', '2.5', '--checkpoint-every'], ['device', 'gpu', '--device'],
  ['device', 'cuda:7', '--device'], ['preset', 'nope', '--preset'], ['preset', ' ', '--preset'], ['out', '', '--out'],
  ['dtype', 'bf16', '--dtype'], ['dtype', 'float16', '--dtype'], ['dtype', '', '--dtype'],
  ['checkpointMinutes', '-1', '--checkpoint-minutes'], ['checkpointMinutes', 'hourly', '--checkpoint-minutes'], ['checkpointMinutes', '2e6', '--checkpoint-minutes'],
  ['tensorboard', 'yes', '--tensorboard'],
])('bad flag %s=%j is refused naming %s', (key, value, flag) => {
  const err = failure({ flags: { [key]: value } });
  // a well-spelled CUDA device this machine cannot use is a device error, naming why
  expect(err.code).toBe(value === 'cuda:7' ? 'ERR_DEVICE' : 'ERR_ARG');
  expect(err.message).toContain(flag);
});

test('--checkpoint-minutes takes fractional minutes (0: off); --tensorboard is a switch; both come from a config file too', () => {
  expect(resolveRunConfig({ flags: { checkpointMinutes: '0.25', tensorboard: true } }).settings).toMatchObject({ checkpointMinutes: 0.25, tensorboard: true });
  expect(resolveRunConfig({ flags: { checkpointMinutes: '1e-3', tensorboard: 'false' } }).settings).toMatchObject({ checkpointMinutes: 0.001, tensorboard: false });
  const file = writeConfig('cluster.json', { checkpointMinutes: 30, tensorboard: true });
  expect(resolveRunConfig({ configFile: file }).settings).toMatchObject({ checkpointMinutes: 30, tensorboard: true });
  expect(resolveRunConfig({ configFile: file, flags: { checkpointMinutes: '0' } }).settings.checkpointMinutes).toBe(0);
  expect(failure({ configFile: writeConfig('tb.json', { tensorboard: 'yes' }) }).message).toContain("key 'tensorboard'");
});

test('bad config file values name the key and the file; unreadable files are refused', () => {
  const cases: [unknown, string][] = [
    [{ batchSize: '8' }, "key 'batchSize'"], [{ lr: null }, "key 'lr'"], [{ imageFraction: 2 }, "key 'imageFraction'"],
    [{ model: { dModel: 0 } }, "key 'model'"], [{ model: { mod: { capacity: 2 } } }, "key 'model'"], [{ preset: 7 }, "key 'preset'"],
  ];
  cases.forEach(([content, key], i) => {
    const file = writeConfig(`bad-${i}.json`, content);
    const err = failure({ configFile: file });
    expect(err.code).toBe('ERR_ARG');
    expect(err.message).toContain(key);
    expect(err.message).toContain(file);
  });
  expect(failure({ configFile: writeConfig('array.json', [1, 2]) }).message).toContain('must be a JSON object');
  expect(failure({ configFile: writeConfig('broken.json', '{"steps": ') }).message).toContain('not valid JSON');
  expect(failure({ configFile: path.join(dir, 'missing.json') }).message).toContain('cannot read');
  // a preset override the model rejects (heads must divide dModel) names the preset and the model key
  const err = failure({ configFile: writeConfig('heads.json', { model: { dModel: 100, heads: 3 } }) });
  expect(err.message).toMatch(/'tiny-4t4i' with 'model'/);
});

describe('resume', () => {
  let runDir: string;
  let stored: RunSettings;
  beforeAll(() => {
    runDir = path.join(dir, 'run');
    fs.mkdirSync(runDir);
    stored = { ...resolveRunConfig({ values: { steps: 40, lr: 0.01, model: { dModel: 32, heads: 2 } }, now: NOW }).settings, device: 'cpu' };
    fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify({ format: 'moma-run', version: 1, config: stored }));
  });

  test('takes every setting from run.json; only --steps, --skip-nonfinite and --expert-parallel may change', () => {
    expect(resolveRunConfig({ resume: runDir })).toEqual({ settings: { ...stored, out: runDir }, resume: runDir });
    expect(resolveRunConfig({ resume: runDir, flags: { steps: '80' } }).settings).toEqual({ ...stored, steps: 80, out: runDir });
    const err = failure({ resume: runDir, flags: { lr: '0.1', steps: '80', batchSize: '2' } });
    expect(err.message).toContain('only --steps, --skip-nonfinite and --expert-parallel may be given, not --batch-size, --lr');
    expect(resolveRunConfig({ resume: runDir, flags: { expertParallel: '2' } }).settings).toEqual({ ...stored, expertParallel: 2, out: runDir });
    expect(failure({ resume: runDir, flags: { expertParallel: '0' } }).message).toContain('--expert-parallel must be an integer in [1, 4096]');
    expect(resolveRunConfig({ resume: runDir, flags: { skipNonfinite: '3' } }).settings).toEqual({ ...stored, skipNonfinite: 3, out: runDir });
    expect(failure({ resume: runDir, flags: { skipNonfinite: '-1' } }).message).toContain('--skip-nonfinite must be an integer in [0, 1e9]');
    expect(failure({ resume: runDir, values: { seed: 3 } }).message).toContain("option 'seed'");
    expect(failure({ resume: runDir, configFile: writeConfig('c.json', {}) }).message).toContain('--config cannot be combined with --resume');
    expect(failure({ resume: runDir, flags: { steps: 'many' } }).message).toContain('--steps');
    expect(failure({ resume: runDir, flags: { dtype: 'bfloat16' } }).message).toContain('may be given, not --dtype');
    expect(failure({ resume: runDir, flags: { checkpointMinutes: '5', tensorboard: true } }).message).toContain('may be given, not --checkpoint-minutes, --tensorboard');
  });

  test('keeps checkpointMinutes and tensorboard; a run.json from before them gets 0 and false', () => {
    const dirOf = (name: string, config: Record<string, unknown>): string => {
      const d = path.join(dir, name);
      fs.mkdirSync(d);
      fs.writeFileSync(path.join(d, 'run.json'), JSON.stringify({ format: 'moma-run', version: 1, config }));
      return d;
    };
    const cluster = dirOf('run-cluster', { ...stored, checkpointMinutes: 0.5, tensorboard: true });
    expect(resolveRunConfig({ resume: cluster, flags: { steps: '80' } }).settings).toEqual({ ...stored, checkpointMinutes: 0.5, tensorboard: true, steps: 80, out: cluster });
    const { checkpointMinutes: _m, tensorboard: _t, ...before } = stored;
    expect(resolveRunConfig({ resume: dirOf('run-before-tb', before) }).settings).toMatchObject({ checkpointMinutes: 0, tensorboard: false });
  });

  test('keeps the dtype of the run; a run.json from before the setting takes its model.computeDtype, else float32', () => {
    const dirOf = (name: string, config: Record<string, unknown>): string => {
      const d = path.join(dir, name);
      fs.mkdirSync(d);
      fs.writeFileSync(path.join(d, 'run.json'), JSON.stringify({ format: 'moma-run', version: 1, config }));
      return d;
    };
    const bf16 = dirOf('run-bf16', { ...stored, dtype: 'bfloat16' });
    expect(resolveRunConfig({ resume: bf16, flags: { steps: '80' } }).settings).toEqual({ ...stored, dtype: 'bfloat16', steps: 80, out: bf16 });
    const { dtype: _dropped, ...before } = stored;
    expect(resolveRunConfig({ resume: dirOf('run-old', before) }).settings.dtype).toBe('float32');
    expect(resolveRunConfig({ resume: dirOf('run-old-bf16', { ...before, model: { computeDtype: 'bfloat16' } }) }).settings.dtype).toBe('bfloat16');
  });

  test('refuses folders that are not runs and run files that are broken', () => {
    expect(failure({ resume: dir }).message).toContain('no run.json');
    expect(failure({ resume: '' }).message).toContain('--resume needs a run directory');
    const broken = path.join(dir, 'broken-run');
    fs.mkdirSync(broken);
    fs.writeFileSync(path.join(broken, 'run.json'), JSON.stringify({ format: 'moma-run', config: { steps: 3 } }));
    expect(failure({ resume: broken }).code).toBe('ERR_FILE');
    fs.writeFileSync(path.join(broken, 'run.json'), JSON.stringify({ format: 'other' }));
    expect(failure({ resume: broken }).code).toBe('ERR_FILE');
  });
});
