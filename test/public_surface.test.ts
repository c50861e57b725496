/**
 * The public surface: the raw kernels live in `moma/kernels` (and the root's `kernels` namespace),
 * not in the root's flat namespace beside `F`; package.json's exports and typesVersions name files
 * that tsc emits; public functions take their trailing arguments as options objects (ERR_ARG names
 * a missing option); Trainer events are typed; device strings in configs are checked (ERR_DEVICE).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as moma from '../lib';
import { F, kernels, MomaError, SYNTHETIC_VOCAB_SIZE, SyntheticSource, syntheticVocab, Tensor, tensor, Trainer, Transformer } from '../lib';
import type { MomaErrorCode, StepMetrics, TrainerEvents } from '../lib';
import * as kernelModule from '../lib/kernels';

const root = path.join(__dirname, '..');

/** fn throws a MomaError with `code` whose message matches `message` (nothing is allocated before the checks throw). */
function throwsCode(fn: () => unknown, code: MomaErrorCode, message: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(MomaError);
  expect((err as MomaError).code).toBe(code);
  expect((err as MomaError).message).toMatch(message);
}

const KERNELS = [
  'rmsNorm', 'rmsNormBackward', 'layerNorm', 'layerNormBackward', 'rope', 'attention', 'attentionBackward', 'crossEntropy',
  'crossEntropyBackward', 'adamwStep', 'moePartition', 'routerScores', 'routerScoresBackward', 'route', 'moeSlotBound', 'gatherRows',
  'combineRows', 'gateGrad', 'groupedMatmul', 'groupedMatmulSwiglu', 'groupedMatmulWgrad', 'swiglu', 'swigluBackward', 'routingStats',
  'modSelect', 'segmentStarts',
];

interface PackageJson {
  main: string;
  types: string;
  exports: Record<string, string | { types: string; default: string }>;
  typesVersions: Record<string, Record<string, string[]>>;
}

const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as PackageJson;

/** The lib/ source that tsc (rootDir lib, outDir dist) compiles to `file` (dist/x.js or dist/x.d.ts), or null. */
function sourceOf(file: string): string | null {
  const m = /^(?:\.\/)?dist\/(.+?)(?:\.d\.ts|\.js)$/.exec(file);
  return m === null ? null : `lib/${m[1]}.ts`;
}

describe('the raw kernels behind moma/kernels', () => {
  test('the root has no flat kernel names; kernels.* and the subpath module hold them', () => {
    const rootNames = new Set(Object.keys(moma));
    expect(KERNELS.filter((name) => rootNames.has(name))).toEqual([]);
    for (const name of KERNELS) {
      expect(typeof (kernels as Record<string, unknown>)[name]).toBe('function');
      expect((kernels as Record<string, unknown>)[name]).toBe((kernelModule as Record<string, unknown>)[name]);
    }
    expect(Object.keys(kernelModule).sort()).toEqual([...KERNELS].sort());
    // the general tensor ops stay at the root
    for (const name of ['matmul', 'where', 'concat', 'softmax', 'indexSelect']) expect(typeof (moma as Record<string, unknown>)[name]).toBe('function');
  });

  test('kernels.rmsNorm returns { y, rstd }; F.rmsNorm returns a Tensor', async () => {
    const x = tensor([1, 2, 3, 4, 5, 6], { shape: [2, 3] });
    const w = tensor([1, 1, 1]);
    const raw = kernels.rmsNorm(x, w);
    expect(raw.y).toBeInstanceOf(Tensor);
    expect(raw.rstd).toBeInstanceOf(Tensor);
    expect(raw.rstd.shape).toEqual([2]);
    const y = F.rmsNorm(x, w);
    expect(y).toBeInstanceOf(Tensor);
    expect(Array.from(await y.toArray())).toEqual(Array.from(await raw.y.toArray()));
    for (const t of [x, w, raw.y, raw.rstd, y]) t.dispose();
  });

  test("package.json's exports and typesVersions name files that tsc emits from lib/", () => {
    expect(Object.keys(pkg.exports).sort()).toEqual(['.', './kernels', './package.json']);
    expect(pkg.exports['./package.json']).toBe('./package.json');
    const emitted: string[] = [pkg.main, pkg.types];
    for (const [key, target] of Object.entries(pkg.exports)) {
      if (key === './package.json') continue;
      expect(typeof target).toBe('object');
      const { types, default: main } = target as { types: string; default: string };
      expect(Object.keys(target)[0]).toBe('types'); // "types" must come first to be used
      expect(sourceOf(types)).toBe(sourceOf(main));
      emitted.push(types, main);
    }
    for (const targets of Object.values(pkg.typesVersions['*'] ?? {})) emitted.push(...targets);
    expect(pkg.typesVersions['*']).toEqual({ kernels: ['dist/kernels.d.ts'] });
    for (const file of emitted) {
      const source = sourceOf(file);
      expect(source).not.toBeNull();
      expect(fs.existsSync(path.join(root, source!))).toBe(true);
    }
    expect(sourceOf((pkg.exports['./kernels'] as { default: string }).default)).toBe('lib/kernels.ts');
    expect(sourceOf((pkg.exports['.'] as { default: string }).default)).toBe('lib/index.ts');
  });

  // dist/ is there after `npm run build:ts` (npm install runs it through `prepare`)
  const built = fs.existsSync(path.join(root, 'dist', 'kernels.js')) && fs.existsSync(path.join(root, 'dist', 'kernels.d.ts'));
  (built ? test : test.skip)("require('moma/kernels') resolves by the package's self-reference, and tsc finds its types", () => {
    const probe = "const k = require('moma/kernels'); const m = require('moma'); console.log(JSON.stringify({ "
      + "kernel: typeof k.rmsNorm, same: k.rmsNorm === m.kernels.rmsNorm, flat: 'rmsNorm' in m, "
      + "file: require.resolve('moma/kernels'), pkg: require('moma/package.json').name }));";
    const run = spawnSync(process.execPath, ['-e', probe], { cwd: root, encoding: 'utf8' });
    expect(run.stderr).toBe('');
    expect(JSON.parse(run.stdout.trim())).toEqual({
      kernel: 'function', same: true, flat: false, file: path.join(root, 'dist', 'kernels.js'), pkg: 'moma',
    });

    // a TypeScript consumer with the old (node10) and the new (node16) module resolution
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-subpath-'));
    try {
      fs.mkdirSync(path.join(dir, 'node_modules'));
      fs.symlinkSync(root, path.join(dir, 'node_modules', 'moma'), 'dir');
      fs.writeFileSync(path.join(dir, 'use.ts'), [
        "import { rmsNorm } from 'moma/kernels';",
        "import { F, kernels, Tensor } from 'moma';",
        'export function both(x: Tensor, w: Tensor): [Tensor, Tensor] {',
        '  const { y, rstd } = rmsNorm(x, w, { eps: 1e-6 });',
        '  rstd.dispose();',
        '  return [y, F.rmsNorm(x, w)];',
        '}',
        'export const same: boolean = kernels.rmsNorm === rmsNorm;',
        '',
      ].join('\n'));
      const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
      for (const [module, resolution] of [['commonjs', 'node10'], ['node16', 'node16']] as const) {
        const check = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--skipLibCheck', '--types', 'node', '--typeRoots', path.join(root, 'node_modules', '@types'),
          '--module', module, '--moduleResolution', resolution, '--target', 'ES2022', '--lib', 'ES2022,ESNext.Disposable', 'use.ts'], { cwd: dir, encoding: 'utf8' });
        expect(`${resolution}: ${check.stdout}${check.stderr}`).toBe(`${resolution}: `);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('options objects', () => {
  test('the kernels name the missing option or saved tensor (ERR_ARG)', () => {
    const q = tensor(new Array(8).fill(1), { shape: [2, 1, 4] });
    const seg = tensor([0, 0], { dtype: 'int32' });
    const { o, lse } = kernels.attention(q, q, q, { segStart: seg });
    throwsCode(() => kernels.attention(q, q, q, {} as never), 'ERR_ARG', /attention: options\.segStart is required/);
    throwsCode(() => kernels.attentionBackward(q, { q, k: q, v: q, o, segStart: seg } as never), 'ERR_ARG', /attentionBackward: saved\.lse is required/);
    throwsCode(() => kernels.rmsNormBackward(q, null as never), 'ERR_ARG', /rmsNormBackward: expected an object for saved/);
    throwsCode(() => kernels.layerNorm(q, { weight: q } as never), 'ERR_ARG', /layerNorm: affine\.bias is required/);
    throwsCode(() => kernels.groupedMatmul(q, q, {} as never), 'ERR_ARG', /groupedMatmul: options\.offsets is required/);
    throwsCode(() => kernels.route(q, {} as never, {} as never), 'ERR_ARG', /route: options\.layout is required/);
    throwsCode(() => kernels.adamwStep({ param: q, grad: q, expAvg: q } as never, { lr: 1, beta1: 0.9, beta2: 0.9, eps: 1, weightDecay: 0, step: 1 }),
      'ERR_ARG', /adamwStep: tensors\.expAvgSq is required/);
    throwsCode(() => F.crossEntropyLoss(q, seg, {} as never), 'ERR_ARG', /F\.crossEntropyLoss: options\.weights is required/);
    for (const t of [q, seg, o, lse]) t.dispose();
  });
});

describe('typed Trainer events', () => {
  test('listeners and emit take the payload of their event; a wrong payload type does not compile', () => {
    using model = new Transformer({ vocabSize: SYNTHETIC_VOCAB_SIZE, dModel: 16, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 24 } });
    using trainer = new Trainer({ model, data: new SyntheticSource({ batchSize: 2, seqLen: 16 }), vocab: syntheticVocab, steps: 1, schedule: { peak: 1e-3, warmup: 1 } });
    const seen: string[] = [];
    const onEnd = (e: TrainerEvents['end']): void => void seen.push(`on ${e.step}`);
    trainer.on('end', onEnd);
    trainer.addListener('checkpoint', (c) => void seen.push(`checkpoint ${c.dir} ${c.step}`));
    trainer.prependListener('end', (e) => void seen.push(`first ${e.step}`));
    trainer.once('end', (e) => void seen.push(`once ${e.step}`));
    trainer.prependOnceListener('end', (e) => void seen.push(`first once ${e.step}`));
    trainer.on('step', (m: StepMetrics) => void seen.push(`step ${m.step}`));
    expect(trainer.emit('end', { step: 7 })).toBe(true);
    expect(trainer.emit('checkpoint', { step: 7, dir: 'c' })).toBe(true);
    trainer.removeListener('end', onEnd);
    trainer.emit('end', { step: 8 });
    expect(seen).toEqual(['first once 7', 'first 7', 'on 7', 'once 7', 'checkpoint c 7', 'first 8']);
    trainer.off('end', onEnd);

    const typeChecks = (): void => {
      // @ts-expect-error the 'end' payload is { step: number }, not a string
      trainer.on('end', (e: string) => e);
      // @ts-expect-error the 'step' payload is StepMetrics
      trainer.once('step', (m: { dir: string }) => m);
      // @ts-expect-error no such event
      trainer.addListener('stop', () => undefined);
      // @ts-expect-error 'checkpoint' needs the dir
      trainer.emit('checkpoint', { step: 1 });
      // @ts-expect-error the payload of 'end' is an object
      trainer.emit('end', 3);
      // @ts-expect-error the listener of 'checkpoint' reads { step, dir }
      trainer.prependListener('checkpoint', (c: { step: string }) => c);
      // @ts-expect-error the listener of 'end' reads { step: number }
      trainer.prependOnceListener('end', (e: number) => e);
      // @ts-expect-error removeListener takes a listener of that event
      trainer.removeListener('end', (m: StepMetrics) => m);
    };
    expect(typeof typeChecks).toBe('function');
  });
});

describe('typed device strings in configs', () => {
  test("'cuda' resolves to 'cuda:0'; a misspelt device fails with ERR_DEVICE naming the config", () => {
    throwsCode(() => new Transformer({ vocabSize: 16, dModel: 8, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 8 }, device: 'gpu' as never }),
      'ERR_DEVICE', /Transformer config: unknown device 'gpu'/);
    throwsCode(() => moma.validateConfig({ vocabSize: 16, dModel: 8, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 8 }, device: 'cuda0' as never }),
      'ERR_DEVICE', /unknown device 'cuda0'/);
    throwsCode(() => new moma.MoMaFFN({ dModel: 8, dFF: 8, groups: [{ modality: 'text', experts: 2 }], device: 'CPU' as never }), 'ERR_DEVICE', /MoMaFFN: unknown device 'CPU'/);
    throwsCode(() => moma.makeBatch([[1, 2]], { padId: 0, bosId: 1, modalityOf: () => 0, modalities: 1, vocabSize: 4, device: 'tpu' as never }),
      'ERR_DEVICE', /makeBatch: unknown device 'tpu'/);
    if (process.env.MOMA_DEVICE !== 'cpu') {
      expect(moma.validateConfig({ vocabSize: 16, dModel: 8, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 8 }, device: 'cuda' }).device).toBe('cuda:0');
    }
    expect(moma.validateConfig({ vocabSize: 16, dModel: 8, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 8 } }).device).toBe('cpu');
  });
});
