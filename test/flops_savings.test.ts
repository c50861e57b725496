/**
 * `moma experiment flops-savings` end to end on very small models (d 32): all five tiny variants
 * for 10 steps each — the folder's contents, identical token counts per step across variants,
 * the tables' columns, η recomputed from the metrics, the generated comparison — then a rerun
 * that skips every complete variant, a stopped experiment that resumes its partial variant to the
 * same numbers as a straight run, a variant that died before its first checkpoint, and refusals.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { builtinDataset } from '../lib/data/builtin';
import type { MixedModalDataset } from '../lib/data/dataset';
import { computeEta, EtaResult } from '../lib/experiment/eta';
import { FlopsSavingsRun, runFlopsSavings, VariantStartInfo } from '../lib/experiment/flops_savings';
import { analyzeFlopsSavings, compareWithPaper, FlopsSavingsResults, VariantResult } from '../lib/experiment/flops_savings_results';
import { buildProgram } from '../lib/cli/main';
import { MomaError } from '../lib/errors';
import { countParameters } from '../lib/model/params';
import { preset } from '../lib/model/presets';
import type { MetricsRecord, StepRecord } from '../lib/run/records';

const MODEL = { dModel: 32, heads: 2, ffn: { dFF: 48 } };
const VALUES = { steps: 10, batchSize: 2, seqLen: 64, lr: 3e-3, warmup: 2, device: 'cpu', evalEvery: 5 };
const ALL = ['dense', '1t1i', 'moe8x', '4t4i', '4t4i-mod'];
const COMMAND = 'moma experiment flops-savings --steps 10 --batch-size 2';

let root: string;
let shapes: MixedModalDataset;

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-flops-'));
  shapes = await builtinDataset({ trainImages: 64 });
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function metricsOf(runDir: string): MetricsRecord[] {
  return fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as MetricsRecord);
}
const stepsOf = (runDir: string): StepRecord[] => metricsOf(runDir).filter((r): r is StepRecord => r.kind === 'step');

/** A record without its timings and the process's host-wait count (the only fields that differ between equal runs). */
function untimed(r: MetricsRecord): unknown {
  const { seconds: _s, tokensPerSecond: _t, mfu: _m, dataWaitMs: _d, hostSyncs: _h, time: _w, ...rest } = r as StepRecord;
  return rest;
}

async function experiment(out: string, extra: Record<string, unknown> = {}, signalAfter?: { variant: string; step: number }): Promise<{ run: FlopsSavingsRun; starts: VariantStartInfo[] }> {
  const starts: VariantStartInfo[] = [];
  const controller = new AbortController();
  const run = await runFlopsSavings({ values: { ...VALUES, out, ...extra }, model: MODEL, dataset: shapes, commandLine: COMMAND }, {
    signal: controller.signal,
    onVariantStart: (info) => starts.push(info),
    onStep: (name, r) => {
      if (signalAfter && name === signalAfter.variant && r.step === signalAfter.step) controller.abort();
    },
  });
  return { run, starts };
}

describe('five variants, 10 steps each', () => {
  let out: string;
  let first: { run: FlopsSavingsRun; starts: VariantStartInfo[] };
  let results: FlopsSavingsResults;

  beforeAll(async () => {
    out = path.join(root, 'all');
    first = await experiment(out);
    results = first.run.results!;
  });

  test('the folder holds experiment.json, the results, the figure and one complete run directory per variant', () => {
    expect(first.run.stopped).toBe(false);
    expect(first.starts.map((s) => [s.name, s.preset, s.action])).toEqual(ALL.map((n) => [n, `tiny-${n}`, 'train']));
    expect(fs.readdirSync(out).sort()).toEqual(['experiment.json', 'loss_vs_flops.png', 'loss_vs_flops.svg', 'results.json', 'results.md', 'variants']);
    expect(fs.readdirSync(path.join(out, 'variants')).sort()).toEqual([...ALL].sort());
    for (const name of ALL) {
      const runDir = path.join(out, 'variants', name);
      for (const file of ['run.json', 'metrics.jsonl', 'report.html', 'report.png', 'vocab.json', 'checkpoints/step-000010/model.safetensors']) {
        expect(fs.existsSync(path.join(runDir, file))).toBe(true);
      }
      const run = JSON.parse(fs.readFileSync(path.join(runDir, 'run.json'), 'utf8'));
      expect(run.config).toMatchObject({ preset: `tiny-${name}`, steps: 10, batchSize: 2, seqLen: 64, imageFraction: 0.5, seed: 0, model: MODEL });
    }
    const png = fs.readFileSync(path.join(out, 'loss_vs_flops.png'));
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    const svg = fs.readFileSync(path.join(out, 'loss_vs_flops.svg'), 'utf8');
    expect(svg.match(/<svg x="/g)).toHaveLength(3);
    for (const title of ['overall loss against training compute', 'text loss against training compute', 'image loss against training compute']) expect(svg).toContain(title);
    const experimentFile = JSON.parse(fs.readFileSync(path.join(out, 'experiment.json'), 'utf8'));
    expect(experimentFile).toMatchObject({ format: 'moma-experiment', kind: 'flops-savings', dataset: { name: 'builtin:shapes', vocabHash: shapes.layout.hash } });
    expect(experimentFile.settings).toMatchObject({ tier: 'tiny', steps: 10, imageFraction: 0.5, model: MODEL });
    expect(experimentFile.invocations).toHaveLength(1);
    expect(experimentFile.invocations[0]).toMatchObject({ command: COMMAND, variants: ALL, device: 'cpu' });
  });

  test('every variant saw the same tokens at every step: counts and image shares are identical', () => {
    const dense = stepsOf(path.join(out, 'variants', 'dense'));
    expect(dense).toHaveLength(10);
    expect(dense.map((r, i) => r.tokens - (dense[i - 1]?.tokens ?? 0))).toEqual(new Array(10).fill(2 * 64)); // packed: no padding
    for (const name of ALL.slice(1)) {
      const steps = stepsOf(path.join(out, 'variants', name));
      expect(steps.map((r) => [r.step, r.tokens, r.imageFraction])).toEqual(dense.map((r) => [r.step, r.tokens, r.imageFraction]));
    }
    // the shares vary from batch to batch (so equal sequences say something) around the target 0.5
    expect(new Set(dense.map((r) => r.imageFraction)).size).toBeGreaterThan(3);
    expect(Math.abs(dense.reduce((s, r) => s + r.imageFraction, 0) / 10 - 0.5)).toBeLessThan(0.1);
    expect(results.sameData).toEqual({ steps: 10, tokens: dense[9]!.tokens, variants: ALL });
  });

  test('results.json: parameters, FLOPs per token against dense, final losses and η recomputed from the metrics', () => {
    expect(results.variants.map((v) => v.name)).toEqual(ALL);
    const dense = results.variants[0]!;
    expect(dense.eta).toBeNull();
    expect(dense.flopsVsDense).toBe(1);
    for (const v of results.variants) {
      const steps = stepsOf(path.join(out, v.runDir));
      const counted = countParameters(preset(v.preset, { ...MODEL, vocabSize: shapes.layout.size }));
      expect(v.parameters).toEqual({ total: counted.total, active: counted.active });
      expect(v.trainingFlopsPerToken).toBeCloseTo(steps[9]!.flops.total / steps[9]!.tokens, 6);
      expect(v.flopsVsDense).toBeCloseTo(v.trainingFlopsPerToken / dense.trainingFlopsPerToken, 12);
      expect(v.finalLoss.overall).toBe(steps[9]!.loss); // 5% of 10 steps: a window of 1
      expect(v.trainSeconds).toBeCloseTo(steps.reduce((s, r) => s + r.seconds, 0), 9);
      if (v.eta === null) continue;
      const denseSteps = stepsOf(path.join(out, 'variants', 'dense'));
      const curve = (records: StepRecord[], pick: (r: StepRecord) => number | null): { flops: number[]; loss: number[] } => ({
        flops: records.map((r) => r.flops.total), loss: records.map((r) => pick(r) as number),
      });
      expect(v.eta.overall).toEqual(computeEta(curve(denseSteps, (r) => r.loss), curve(steps, (r) => r.loss)));
      expect(v.eta.image).toEqual(computeEta(curve(denseSteps, (r) => r.lossPerModality.image!), curve(steps, (r) => r.lossPerModality.image!)));
      expect(v.heldOutEta).not.toBeNull();
    }
    // tokens per expert: expert choice with c = 1 gives each group's experts its rows, so per layer the groups' experts together process every token once
    expect(dense.tokensPerExpert).toBeNull();
    const groupsOf = (name: string) => results.variants.find((v) => v.name === name)!.tokensPerExpert!;
    expect(groupsOf('moe8x').map((g) => [g.group, g.experts])).toEqual([['text+image', 8]]);
    expect(groupsOf('4t4i').map((g) => [g.group, g.experts])).toEqual([['text', 4], ['image', 4]]);
    expect(groupsOf('1t1i').map((g) => [g.group, g.experts])).toEqual([['text', 1], ['image', 1]]);
    for (const name of ['moe8x', '4t4i']) {
      const groups = groupsOf(name);
      const covered = groups.reduce((s, g) => s + g.mean * g.experts, 0) / dense.tokens;
      expect(covered).toBeGreaterThan(0.95);
      expect(covered).toBeLessThan(1.1);
      for (const g of groups) {
        expect(g.layers).toBe(preset(`tiny-${name}`).layers);
        expect(g.min).toBeLessThanOrEqual(g.mean);
        expect(g.max).toBeGreaterThanOrEqual(g.mean);
      }
    }
    // the FLOPs per token are close to dense (c = 1 expert choice), MoD below it (a quarter of the rows in 2 of 4 layers)
    for (const v of results.variants.slice(1, 4)) expect(Math.abs(v.flopsVsDense - 1)).toBeLessThan(0.03);
    expect(results.variants[4]!.flopsVsDense).toBeLessThan(0.95);
  });

  test('results.md records the command, the settings and a table with the promised columns', () => {
    const md = fs.readFileSync(path.join(out, 'results.md'), 'utf8');
    expect(md).toContain(`Command: \`${COMMAND}\``);
    expect(md).toContain('10 steps of 2 × 64 tokens');
    const table = md.split('\n').filter((l) => l.startsWith('| '));
    const header = table[0]!.split('|').slice(1, -1).map((c) => c.trim());
    expect(header).toEqual(['variant', 'preset', 'params total', 'params active', 'train FLOPs/token', 'vs dense', 'final loss', 'text', 'image', 'η overall', 'η text', 'η image', 'train time', 'tokens/s (vs dense)']);
    const rows = table.slice(2, 7).map((l) => l.split('|').slice(1, -1).map((c) => c.trim()));
    expect(rows.map((r) => r[0])).toEqual(ALL);
    expect(rows[0]!.slice(9, 12)).toEqual(['baseline', 'baseline', 'baseline']);
    const etaCell = /^(\d+\.\d\d( \(extrapolated\))?|> \d+\.\d\d \(no crossing\)|< \d+\.\d\d \(dense starts below\))$/;
    for (const row of rows.slice(1)) for (const cell of row.slice(9, 12)) expect(cell).toMatch(etaCell);
    expect(rows[4]![5]).toBe(results.variants[4]!.flopsVsDense.toFixed(3));
    expect(md).toContain('## Tokens per expert');
    expect(md).toMatch(/\| 4t4i \| tiny-4t4i \| text 4×: [\d.]+( k)? \([\d.]+( k)?–[\d.]+( k)?\); image 4×: /);
    expect(md).toContain('## Held-out η');
    expect(md).toContain('## Compared with the paper (1.4B tier, 1T tokens)');
    for (const sentence of results.comparison) expect(md).toContain(sentence);
  });

  test('a rerun skips every complete variant, keeps their metrics and rebuilds the results', async () => {
    const before = ALL.map((n) => fs.readFileSync(path.join(out, 'variants', n, 'metrics.jsonl'), 'utf8'));
    fs.rmSync(path.join(out, 'results.md'));
    fs.rmSync(path.join(out, 'variants', 'moe8x', 'report.html'));
    const again = await experiment(out);
    expect(again.starts.map((s) => [s.name, s.action, s.fromStep])).toEqual(ALL.map((n) => [n, 'skip', 10]));
    expect(ALL.map((n) => fs.readFileSync(path.join(out, 'variants', n, 'metrics.jsonl'), 'utf8'))).toEqual(before);
    expect(fs.existsSync(path.join(out, 'results.md'))).toBe(true);
    expect(fs.existsSync(path.join(out, 'variants', 'moe8x', 'report.html'))).toBe(true);
    expect(again.run.results!.variants.map((v) => v.eta)).toEqual(results.variants.map((v) => v.eta));
    expect(JSON.parse(fs.readFileSync(path.join(out, 'experiment.json'), 'utf8')).invocations).toHaveLength(2);
    expect(fs.readFileSync(path.join(out, 'results.md'), 'utf8')).toContain(`Continued by: \`${COMMAND}\``);
  });

  test('a rerun with other settings, or other data, is refused', async () => {
    await expect(experiment(out, { steps: 12 })).rejects.toThrow(/holds an experiment with steps 10; this run asks for 12/);
    await expect(experiment(out, { imageFraction: 0.3 })).rejects.toThrow(/--image-fraction 0.5; this run asks for 0.3/);
    const other = await builtinDataset({ trainImages: 32 });
    await expect(runFlopsSavings({ values: { ...VALUES, out }, model: MODEL, dataset: other })).rejects.toThrow(/vocabulary/);
  });

  test('the analysis refuses a variant that saw other data', async () => {
    const copy = path.join(root, 'tampered');
    fs.cpSync(out, copy, { recursive: true });
    const file = path.join(copy, 'variants', '4t4i', 'metrics.jsonl');
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    const third = JSON.parse(lines[2]!);
    third.tokens += 1;
    lines[2] = JSON.stringify(third);
    fs.writeFileSync(file, lines.join('\n'));
    await expect(analyzeFlopsSavings(copy)).rejects.toMatchObject({ code: 'ERR_FILE', message: expect.stringMatching(/variant '4t4i' saw other data than 'dense' at step 3/) });
  });
});

describe('stopping and continuing', () => {
  test('a stopped variant resumes to the same records as a straight run; one that died before its first checkpoint restarts', async () => {
    const straight = path.join(root, 'straight');
    const stopped = path.join(root, 'stopped');
    await experiment(straight, { variants: ['4t4i'] });
    const halted = await experiment(stopped, { variants: '4t4i' }, { variant: '4t4i', step: 4 });
    expect(halted.run.stopped).toBe(true);
    expect(halted.run.results).toBeNull();
    expect(fs.existsSync(path.join(stopped, 'results.json'))).toBe(false);
    expect(fs.readdirSync(path.join(stopped, 'variants', '4t4i', 'checkpoints'))).toEqual(['step-000004']);
    // dense died before its first checkpoint (only its run.json and files remain)
    fs.rmSync(path.join(stopped, 'variants', 'dense', 'checkpoints'), { recursive: true });

    const resumed = await experiment(stopped, { variants: '4t4i' });
    expect(resumed.starts.map((s) => [s.name, s.action, s.fromStep])).toEqual([['dense', 'train', 0], ['4t4i', 'resume', 4]]);
    for (const name of ['dense', '4t4i']) {
      expect(metricsOf(path.join(stopped, 'variants', name)).map(untimed)).toEqual(metricsOf(path.join(straight, 'variants', name)).map(untimed));
    }
    expect(resumed.run.results!.variants.map((v) => v.eta)).toEqual(JSON.parse(fs.readFileSync(path.join(straight, 'results.json'), 'utf8')).variants.map((v: VariantResult) => v.eta));
  });
});

describe('refusals', () => {
  const code = async (promise: Promise<unknown>): Promise<string> => promise.then(() => 'resolved', (err: unknown) => (err instanceof MomaError ? err.code : String(err)));

  test.each<[string, Record<string, unknown>, RegExp]>([
    ['an unknown option', { stepz: 3 }, /unknown option 'stepz'/],
    ['an unknown tier', { tier: 'huge' }, /option 'tier' must be one of tiny/],
    ['an unknown variant', { variants: 'dense,8x' }, /unknown tiny variant '8x'; known: dense, moe8x, 1t1i, 4t4i, dense-mod, moe8x-mod, 4t4i-mod/],
    ['an auto image fraction', { imageFraction: 'auto' }, /not 'auto'/],
    ['an image fraction above 1', { imageFraction: 1.5 }, /a number in \[0, 1\]/],
    ['a bad batch size', { batchSize: 0 }, /option 'batchSize' must be an integer in \[1, 4096\]/],
  ])('%s is an ERR_ARG naming it', async (_name, extra, message) => {
    const promise = runFlopsSavings({ values: { ...VALUES, out: path.join(root, 'never'), ...extra }, model: MODEL, dataset: shapes });
    await expect(promise).rejects.toThrow(message);
    expect(await code(runFlopsSavings({ values: { ...VALUES, out: path.join(root, 'never'), ...extra }, model: MODEL, dataset: shapes }))).toBe('ERR_ARG');
    expect(fs.existsSync(path.join(root, 'never'))).toBe(false);
  });

  test('a non-empty folder without experiment.json, and bad model overrides, are refused', async () => {
    const busy = path.join(root, 'busy');
    fs.mkdirSync(busy);
    fs.writeFileSync(path.join(busy, 'notes.txt'), 'mine');
    await expect(runFlopsSavings({ values: { ...VALUES, out: busy }, model: MODEL, dataset: shapes })).rejects.toThrow(/is not empty and holds no experiment.json/);
    expect(await code(runFlopsSavings({ values: { ...VALUES, out: path.join(root, 'never') }, model: { layers: 0 }, dataset: shapes }))).toBe('ERR_ARG');
    expect(await code(analyzeFlopsSavings(busy))).toBe('ERR_ARG');
  });

  test('the command line names the flag', async () => {
    const run = (args: string[]): Promise<unknown> => buildProgram().exitOverride().parseAsync(['node', 'moma', 'experiment', 'flops-savings', ...args, '--out', path.join(root, 'never')]);
    await expect(run(['--steps', 'many'])).rejects.toThrow(/--steps must be an integer/);
    await expect(run(['--image-fraction', 'auto'])).rejects.toThrow(/--image-fraction must be one value for every variant/);
    await expect(run(['--variants', 'dense,nope'])).rejects.toThrow(/--variants: unknown tiny variant 'nope'/);
    await expect(run(['--tier', 'big'])).rejects.toThrow(/--tier must be one of tiny/);
    await expect(run(['--eval-batches', '0'])).rejects.toThrow(/--eval-batches must be an integer in \[1, 10000\]/);
    await expect(run(['--checkpoint-every', '-1'])).rejects.toThrow(/--checkpoint-every must be an integer in \[0, 1e9\]/);
  });
});

describe("the comparison with the paper's 1.4B-tier results", () => {
  const eta = (value: number, kind: EtaResult['kind'] = 'crossing'): EtaResult => ({
    kind, eta: value, sparseFlops: 1, sparseLoss: 1, denseFlops: value, denseFinalLoss: 1, denseEndFlops: 1, fit: null, windows: { dense: 1, sparse: 1 },
  });
  const variant = (name: string, etas: [EtaResult, EtaResult, EtaResult] | null): VariantResult => ({
    name, preset: `tiny-${name}`, runDir: `variants/${name}`, device: 'cpu', parameters: { total: 1000, active: 1000 }, steps: 10, tokens: 2000,
    flops: { total: 1, perModality: {} }, trainingFlopsPerToken: 1, flopsVsDense: 1, nominalTrainingFlopsPerRow: 1, nominalVsDense: 1,
    finalLoss: { overall: 1, text: 1, image: 1 }, heldOutLoss: null, trainSeconds: 1, tokensPerSecond: 1, throughputVsDense: 1,
    eta: etas === null ? null : { overall: etas[0], text: etas[1], image: etas[2] }, heldOutEta: null, tokensPerExpert: null,
  });

  test('the paper\'s pattern is recognised sentence by sentence', () => {
    const lines = compareWithPaper([
      variant('dense', null),
      variant('moe8x', [eta(1.5), eta(1.6), eta(1.2)]),
      variant('4t4i', [eta(1.8), eta(1.4), eta(2.0)]),
      variant('4t4i-mod', [eta(2.1), eta(1.7), eta(2.2, 'extrapolated')]),
    ]);
    expect(lines).toEqual([
      'Highest η among the sparse variants: overall 4t4i-mod, 2.10; text 4t4i-mod, 1.70; image 4t4i-mod, 2.20 (extrapolated). In the paper 4t4i-mod has the highest η on all three (4.2 overall, 3.4 text, 5.3 image).',
      'Image: 4t4i η 2.00 is above moe8x η 1.20 (paper: 4t4i 5.2 above moe8x 2.8).',
      'Text: moe8x η 1.60 is above 4t4i η 1.40 (paper: moe8x 3.0 above 4t4i 2.6).',
      'MoD (4t4i-mod against 4t4i): overall 2.10 vs 1.80 (above), text 1.70 vs 1.40 (above), image 2.20 (extrapolated) vs 2.00 (above); η is higher with MoD on 3 of 3 (paper: 4.2 vs 3.7, 3.4 vs 2.6, 5.3 vs 5.2, higher on all three).',
      'Order by η overall, highest first: 4t4i-mod 2.10, 4t4i 1.80, moe8x 1.50; the paper\'s order is 4t4i-mod, 4t4i, moe8x; the same order.',
      'Scale: the paper\'s η are for 1.4B-parameter dense models after 1T tokens; the dense baseline here has 1.00 k parameters after 2.00 k tokens.',
    ]);
  });

  test('bounds leave an order undetermined and a different order is said so', () => {
    const lines = compareWithPaper([
      variant('dense', null),
      variant('moe8x', [eta(2.0, 'no-crossing'), eta(1.0), eta(1.0)]),
      variant('4t4i', [eta(2.5), eta(0.5, 'before-start'), eta(0.8)]),
    ]);
    expect(lines[0]).toBe('Highest η among the sparse variants: overall 4t4i, 2.50 (not ordered against moe8x); text moe8x, 1.00; image moe8x, 1.00. In the paper 4t4i-mod has the highest η on all three (4.2 overall, 3.4 text, 5.3 image).');
    expect(lines[1]).toBe('Image: 4t4i η 0.80 is below moe8x η 1.00 (paper: 4t4i 5.2 above moe8x 2.8).');
    expect(lines[2]).toBe('Text: moe8x η 1.00 is above 4t4i η < 0.50 (dense starts below) (paper: moe8x 3.0 above 4t4i 2.6).');
    expect(lines[3]).toMatch(/^Order by η overall, highest first: 4t4i 2\.50, moe8x > 2\.00 \(no crossing\); .*not fully determined/);
    expect(compareWithPaper([variant('dense', null)])).toEqual(['No sparse variant was trained, so there is no η to compare.']);
  });
});
