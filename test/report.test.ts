/**
 * Report charts and pages from hand-made metrics: the smoothing, chart specs (thinning, log axes,
 * skipped values, y bounds, colour schemes), SVG rendering and composition, the summary numbers,
 * the routing measures per layer, the data of every report chart read back from a run folder
 * (records with and without kind and time), the HTML page (escaped, self-contained, routing
 * table) and the refusals.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { MomaError } from '../lib';
import { preset } from '../lib/model/presets';
import { centredMean, lineChartSpec, renderSvg, sideBySide, smoothingHalfWidth } from '../lib/run/charts';
import { EvalRecord, readMetrics, RunFile, StepRecord } from '../lib/run/records';
import { formatDuration, formatSI, layerRouting, reportChartSpecs, summarizeMetrics, trainingRecords, writeReport } from '../lib/run/report';
import { resolveRunConfig } from '../lib/run/run_config';
import type { ExpertStat } from '../lib/train/trainer';
import { throwsCode } from './support/errors';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-report-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test('centredMean averages a symmetric window that shrinks at the ends, skips missing values, checks its width', () => {
  expect(centredMean([2, 2, 2], 5)).toEqual([2, 2, 2]);
  // h = min(1, i, n-1-i): ends unsmoothed, the middle averages three
  expect(centredMean([0, 3, 6, 30], 1)).toEqual([0, 3, 13, 30]);
  expect(centredMean([1, 2, 3, 4, 5, 6, 7], 2)).toEqual([1, 2, 3, 4, 5, 6, 7]);
  // a null inside a window is skipped, and stays null itself
  const out = centredMean([1, null, 3, NaN, 5], 1);
  expect(out).toEqual([1, null, 3, null, 5]);
  expect(centredMean([4, 0, 8], 1)).toEqual([4, 4, 8]);
  expect(centredMean([], 3)).toEqual([]);
  for (const h of [-1, 1.5, NaN]) throwsCode(() => centredMean([1], h), 'ERR_ARG');
  expect([10, 600, 1000, 100000].map(smoothingHalfWidth)).toEqual([1, 6, 10, 12]);
});

function rowsOf(spec: ReturnType<typeof lineChartSpec>, name: 'lines' | 'markers' | 'yBounds'): { x: number; y: number; series: string; layer: string }[] {
  return (spec.data!.find((d) => d.name === name) as { values: { x: number; y: number; series: string; layer: string }[] }).values;
}

test('lineChartSpec: raw and smoothed lines per series, long series thinned, log axes drop x <= 0, missing y skipped', () => {
  const long = Array.from({ length: 5000 }, (_, i): [number, number | null] => [i, i % 7 === 0 ? null : Math.sin(i)]);
  const spec = lineChartSpec({
    title: 't', xTitle: 'tokens', yTitle: 'loss', xScale: 'log',
    series: [{ name: 'text', points: long }, { name: 'image', points: [[0, 1], [1, 2], [2, Infinity]] }],
    markers: [{ name: 'text', points: [[10, 0.5], [-1, 0.4]] }],
  });
  const lines = rowsOf(spec, 'lines');
  const text = lines.filter((r) => r.series === 'text');
  expect(text.filter((r) => r.layer === 'raw').length).toBe(1501);
  expect(text.filter((r) => r.layer === 'smooth').length).toBe(1501);
  expect(text.every((r) => r.x > 0 && Number.isFinite(r.y))).toBe(true);
  expect(lines.filter((r) => r.series === 'image').map((r) => [r.x, r.y, r.layer])).toEqual([[1, 2, 'raw'], [1, expect.any(Number), 'smooth']]);
  expect(rowsOf(spec, 'markers')).toEqual([{ x: 10, y: 0.5, series: 'text', layer: 'smooth' }]);
  expect((spec.scales as { name: string; type: string }[]).find((s) => s.name === 'x')!.type).toBe('log');
  const raw = lineChartSpec({ title: 'lr', xTitle: 'step', yTitle: 'lr', raw: true, series: [{ name: 'lr', points: [[1, 0.1], [2, 0.2]] }] });
  expect(rowsOf(raw, 'lines').map((r) => r.layer)).toEqual(['smooth', 'smooth']);
  expect(raw.legends).toEqual([]);
  const logY = lineChartSpec({ title: 'l', xTitle: 'x', yTitle: 'y', yScale: 'log', raw: true, series: [{ name: 'a', points: [[1, 0], [2, -1], [3, 0.5]] }] });
  expect(rowsOf(logY, 'lines').map((r) => r.y)).toEqual([0.5]);
  expect((logY.scales as { name: string; type: string }[]).find((s) => s.name === 'y')!.type).toBe('log');
  // yMin / yMax join the y domain (the data may widen it); a scheme is sampled once per series
  const bounded = lineChartSpec({ title: 'b', xTitle: 'x', yTitle: 'y', raw: true, yMin: 0, yMax: 1, scheme: 'viridis', series: [{ name: 'a', points: [[1, 1.5]] }, { name: 'b', points: [[1, 0.5]] }] });
  expect(rowsOf(bounded, 'yBounds')).toEqual([{ y: 0 }, { y: 1 }]);
  const scales = bounded.scales as { name: string; domain: { fields: { data: string }[] }; range: unknown }[];
  expect(scales.find((sc) => sc.name === 'y')!.domain.fields.map((f) => f.data)).toEqual(['lines', 'markers', 'yBounds']);
  expect(scales.find((sc) => sc.name === 'color')!.range).toEqual({ scheme: 'viridis', count: 2 });
  expect(rowsOf(lineChartSpec({ title: 'l', xTitle: 'x', yTitle: 'y', yScale: 'log', yMin: 0, yMax: 2, series: [] }), 'yBounds')).toEqual([{ y: 2 }]);
  throwsCode(() => lineChartSpec({ title: 't', xTitle: 'x', yTitle: 'y', series: [{ name: 'a', points: [[1, 2, 3] as unknown as [number, number]] }] }), 'ERR_ARG');
  throwsCode(() => lineChartSpec({ title: 't', xTitle: 'x', yTitle: 'y', series: 'a' as unknown as [] }), 'ERR_ARG');
});

test('renderSvg draws the titles; sideBySide places SVGs in a row', async () => {
  const spec = lineChartSpec({ title: 'Loss chart', xTitle: 'tokens seen', yTitle: 'nats', width: 200, height: 100, series: [{ name: 'a', points: [[1, 3], [2, 2], [3, 1]] }] });
  const svg = await renderSvg(spec);
  expect(svg.startsWith('<svg')).toBe(true);
  for (const text of ['>Loss chart<', '>tokens seen<', '>nats<']) expect(svg).toContain(text);
  const width = Number(/width="(\d+)"/.exec(svg)![1]);
  const height = Number(/height="(\d+)"/.exec(svg)![1]);
  const both = sideBySide([svg, svg], 10);
  expect(both).toMatch(new RegExp(`^<svg [^>]*width="${2 * width + 10}" height="${height}"`));
  expect(both).toContain(`<svg x="${width + 10}" y="0"`);
  const png = await sharp(Buffer.from(both)).png().toBuffer();
  expect((await sharp(png).metadata()).width).toBe(2 * width + 10);
  throwsCode(() => sideBySide([]), 'ERR_ARG');
  throwsCode(() => sideBySide(['<div>no</div>']), 'ERR_ARG');
});

test('formatSI and formatDuration', () => {
  expect(formatSI(0)).toBe('0');
  expect(formatSI(999)).toBe('999');
  expect(formatSI(12.345)).toBe('12.35');
  expect(formatSI(1234)).toBe('1.23 k');
  expect(formatSI(2.5e12)).toBe('2.50 T');
  expect(formatSI(-3e6)).toBe('-3.00 M');
  expect(formatSI(NaN)).toBe('-');
  expect(formatDuration(5.25)).toBe('5.3s');
  expect(formatDuration(193.4)).toBe('3m 13s');
  expect(formatDuration(7260)).toBe('2h 1m');
  expect(formatDuration(-1)).toBe('-');
});

/** Step records with losses falling as 1/step; routing at steps 20 and 40. */
function fakeSteps(n: number): StepRecord[] {
  return Array.from({ length: n }, (_, i) => {
    const step = i + 1;
    const record: StepRecord = {
      step, tokens: step * 100, flops: { total: step * 1e9, perModality: { text: step * 4e8, image: step * 6e8 } },
      loss: 5 / step, lossPerModality: { text: 6 / step, image: step === 3 ? NaN : 4 / step }, lr: 1e-3, gradNorm: 1, tokensPerSecond: 1000,
      mfu: 0.1, seconds: 0.1, imageFraction: 0.5, interval: 1, dataWaitMs: 2, hostSyncs: step,
    };
    if (step % 20 === 0) record.routing = [0, 1].flatMap((layer) => [0, 1].map((expert) => ({ layer, group: expert, expert: 0, rows: 10 * step + layer + expert, meanGate: 0.5 })));
    return record;
  });
}

function fakeEval(step: number, loss: number): EvalRecord {
  return {
    kind: 'eval', step, tokens: step * 100, flops: { total: step * 1e9, perModality: { text: 0, image: 0 } }, loss,
    lossPerModality: { text: loss + 1, image: loss - 1 }, targets: 100, targetsPerModality: { text: 50, image: 50 }, seconds: 0.5,
  };
}

test('summarizeMetrics: first step, mean of the last 5% of steps, last held-out and routing', () => {
  const steps = fakeSteps(40);
  const summary = summarizeMetrics(steps, [fakeEval(20, 2), fakeEval(40, 1.5)]);
  expect(summary.steps).toBe(40);
  expect(summary.tokens).toBe(4000);
  expect(summary.trainSeconds).toBeCloseTo(4, 10);
  expect(summary.dataWaitSeconds).toBeCloseTo(40 * 0.002, 10);
  expect(summary.tokensPerSecond).toBeCloseTo(1000, 8);
  expect(summary.loss.first).toEqual({ overall: 5, text: 6, image: 4 });
  expect(summary.loss.finalWindow).toBe(2);
  expect(summary.loss.final.overall).toBeCloseTo((5 / 39 + 5 / 40) / 2, 12);
  expect(summary.loss.final.image).toBeCloseTo((4 / 39 + 4 / 40) / 2, 12);
  expect(summary.heldOut).toEqual({ step: 40, loss: { overall: 1.5, text: 2.5, image: 0.5 } });
  expect(summary.routing!.step).toBe(40);
  expect(summary.routing!.experts.map((e) => e.rows)).toEqual([400, 401, 401, 402]);
  const empty = summarizeMetrics([], []);
  expect(empty).toMatchObject({ steps: 0, tokens: 0, tokensPerSecond: 0, heldOut: null, routing: null, loss: { first: {}, final: {} } });
});

test('summarizeMetrics weights records by the steps they cover (logEvery > 1), and reads records without interval as one step', () => {
  // 40 records of 10 steps each: the final window is the last 2 records, 20 steps
  const logged = fakeSteps(40).map((r, i) => ({ ...r, interval: i === 39 ? 30 : 10 }));
  const summary = summarizeMetrics(logged, []);
  expect(summary.loss.firstWindow).toBe(10);
  expect(summary.loss.finalWindow).toBe(40);
  expect(summary.loss.final.overall).toBeCloseTo((10 * 5 / 39 + 30 * 5 / 40) / 40, 12);
  const old = fakeSteps(40).map(({ interval: _i, ...r }) => r as StepRecord);
  expect(summarizeMetrics(old, []).loss).toMatchObject({ firstWindow: 1, finalWindow: 2 });
});

function writeRun(runDir: string, lines: string[], name = 'builtin:shapes'): void {
  fs.mkdirSync(runDir, { recursive: true });
  const settings = { ...resolveRunConfig({ values: { steps: 40, device: 'cpu', out: runDir } }).settings };
  const model = preset('tiny-4t4i', { vocabSize: 517, device: 'cpu' });
  const run: RunFile = {
    format: 'moma-run', version: 1, moma: '0.0.0-test', startedAt: '2025-01-02T03:04:05.000Z', config: settings, model, parameters: { total: 1, active: 1 },
    dataset: { name, vocabHash: 'abc', vocabSize: 517, files: [] },
    optimizer: { kind: 'adamw', betas: [0.9, 0.95], eps: 1e-5, weightDecay: 0.1, clipNorm: 1, schedule: { shape: 'cosine', peak: 3e-3, warmup: 50, total: 40, floor: 0.01 } },
    resumes: [{ step: 20, at: '2025-01-02T04:00:00.000Z', steps: 40 }],
  };
  fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify(run));
  fs.writeFileSync(path.join(runDir, 'metrics.jsonl'), lines.join('\n'));
}

test('writeReport: the summary table, loss table, routing table and config on one page; the PNG at twice the SVG size', async () => {
  const runDir = path.join(dir, 'fake');
  const steps = fakeSteps(40);
  const lines = [...steps.slice(0, 20), fakeEval(20, 2), ...steps.slice(20), fakeEval(40, 1.5)].map((r) => JSON.stringify(r));
  writeRun(runDir, [...lines, '{"step": 41, "tok'], '<b>odd & "name"</b>');
  const files = await writeReport(runDir);
  expect(files).toEqual({ html: path.join(runDir, 'report.html'), svg: path.join(runDir, 'report.svg'), png: path.join(runDir, 'report.png') });
  const html = fs.readFileSync(files.html, 'utf8');
  expect(html).toContain('&lt;b&gt;odd &amp; &quot;name&quot;&lt;/b&gt;');
  expect(html).not.toContain('<b>odd');
  expect(html).not.toMatch(/<script|<link|<img|src=|https?:\/\/(?!www\.w3\.org)/);
  expect(html).toContain('<tr><th>tokens</th><td>4.00 k</td></tr>');
  expect(html).toContain('<tr><th>training FLOPs</th><td>40.0 G (text 16.0 G, image 24.0 G)</td></tr>');
  expect(html).toContain('resumed at step 20');
  expect(html).toContain('<td>first step</td><td class="num">5.0000</td><td class="num">6.0000</td><td class="num">4.0000</td>');
  expect(html).toContain('<td>held-out (step 40)</td><td class="num">1.5000</td><td class="num">2.5000</td><td class="num">0.5000</td>');
  expect(html).toContain('<h2>Routing (step 40)</h2>');
  expect(html).toContain('<th>layer</th><th>text 0</th><th>image 0</th>');
  expect(html).toContain('<tr><td>1</td><td class="num">401 <span class="gate">0.50</span></td><td class="num">402 <span class="gate">0.50</span></td></tr>');
  expect(html).toContain('&quot;format&quot;: &quot;moma-run&quot;');
  expect(html.match(/<h2>[^<]*/g)).toEqual(['<h2>Loss', '<h2>Optimisation', '<h2>Throughput and utilisation', '<h2>Routing over training', '<h2>Routing (step 40)', '<h2>Configuration (run.json)']);
  const titles = ['Training loss by modality', 'Training loss against compute', 'Held-out loss by modality', 'Learning rate', 'Gradient norm', 'Throughput',
    'Model FLOPs utilisation', 'Routing load per layer', 'Expert coverage per layer', 'Mean gate per layer'];
  for (const title of titles) expect(html).toContain(`>${title}<`);
  expect((html.match(/<svg /g) ?? []).length).toBe(titles.length);
  const svg = fs.readFileSync(files.svg, 'utf8');
  const meta = await sharp(fs.readFileSync(files.png)).metadata();
  expect(meta.width).toBe(2 * Number(/width="(\d+)"/.exec(svg)![1]));
  expect(meta.height).toBe(2 * Number(/height="(\d+)"/.exec(svg)![1]));
  expect(readMetrics(runDir).steps).toHaveLength(40);
});

test('a run with no steps yet still gets a report; broken inputs are refused with ERR_FILE / ERR_ARG', async () => {
  const empty = path.join(dir, 'empty');
  writeRun(empty, []);
  const files = await writeReport(empty);
  expect(fs.readFileSync(files.svg, 'utf8')).toContain('>training FLOPs<');

  const torn = path.join(dir, 'torn');
  writeRun(torn, ['{"step": 1, "tokens": 1', JSON.stringify(fakeSteps(1)[0])]);
  throwsCode(() => readMetrics(torn), 'ERR_FILE');
  const noStep = path.join(dir, 'no-step');
  writeRun(noStep, ['{"tokens": 5}']);
  throwsCode(() => readMetrics(noStep), 'ERR_FILE');
  throwsCode(() => readMetrics(path.join(dir, 'missing')), 'ERR_FILE');

  await expect(writeReport(path.join(dir, 'missing'))).rejects.toMatchObject({ code: 'ERR_ARG' });
  const notRun = path.join(dir, 'not-a-run');
  fs.mkdirSync(notRun);
  fs.writeFileSync(path.join(notRun, 'run.json'), '{"format": "other"}');
  await expect(writeReport(notRun)).rejects.toBeInstanceOf(MomaError);
  await expect(writeReport(notRun)).rejects.toMatchObject({ code: 'ERR_FILE' });
});

test('layerRouting: per layer the most unequal group\'s busiest expert over its mean, the share of experts in use, the row-weighted mean gate', () => {
  const stat = (layer: number, group: number, expert: number, rows: number, meanGate: number): ExpertStat => ({ layer, group, expert, rows, meanGate });
  expect(layerRouting([
    // layer 1: group 0 rows 30, 10 (load 1.5), group 1 rows 5, 5, 0, 0 (load 5 / 2.5 = 2; experts in use 2 of 4)
    stat(1, 0, 0, 30, 0.8), stat(1, 0, 1, 10, 0.4), stat(1, 1, 0, 5, 0.5), stat(1, 1, 1, 5, 0.5), stat(1, 1, 2, 0, NaN), stat(1, 1, 3, 0, NaN),
    // layer 0: group 1 absent from the micro-batch (no rows at all): left out of load and coverage
    stat(0, 0, 0, 8, 0.25), stat(0, 0, 1, 8, 0.75), stat(0, 1, 0, 0, NaN), stat(0, 1, 1, 0, NaN),
    // layer 2: a non-finite entry is skipped, no rows anywhere: nothing to measure
    stat(2, 0, 0, NaN, 0.5), stat(2, 0, 1, 0, NaN),
  ])).toEqual([
    { layer: 0, load: 1, coverage: 1, meanGate: 0.5 },
    { layer: 1, load: 2, coverage: 4 / 6, meanGate: (30 * 0.8 + 10 * 0.4 + 5 * 0.5 + 5 * 0.5) / 50 },
    { layer: 2, load: null, coverage: null, meanGate: null },
  ]);
  expect(layerRouting([])).toEqual([]);
});

test('reportChartSpecs: the data of every chart, from a run folder whose records have kind and time or not', () => {
  const runDir = path.join(dir, 'charts');
  const steps = fakeSteps(40).map((r, i) => {
    const record = { ...r, gradNorm: 10 / r.step, mfu: r.step / 1000 } as StepRecord & { kind?: 'step'; time?: string };
    if (r.routing) record.routing = [[6, 2], [4, 4]].flatMap((rows, layer) => rows.map((n, expert) => ({ layer, group: 0, expert, rows: n * r.step, meanGate: 0.25 * (expert + 1) })));
    // the first half as written before records had a kind and a time, the second half with them
    if (i >= 20) Object.assign(record, { kind: 'step', time: new Date(Date.UTC(2025, 0, 2, 3, 4, i)).toISOString() });
    return record;
  });
  const skip = { kind: 'skip', step: 30, tokens: 3000, skipped: 1, lossSteps: 1, gradNormSteps: 0, firstStep: 30, total: 1, budget: 2, time: '2025-01-02T03:04:30.000Z' };
  const records = [...steps.slice(0, 20), fakeEval(20, 2), ...steps.slice(20, 30), skip, ...steps.slice(30), fakeEval(40, 1.5)];
  writeRun(runDir, records.map((r) => JSON.stringify(r)));
  const read = readMetrics(runDir);
  const training = trainingRecords(read.steps);
  expect(training.map((r) => r.step)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
  const specs = reportChartSpecs(training, read.evals, ['text', 'image']);
  expect(Object.keys(specs)).toEqual(['lossTokens', 'lossFlops', 'heldOut', 'lr', 'gradNorm', 'throughput', 'mfu', 'routingLoad', 'routingCoverage', 'routingGate']);
  const points = (name: string, series: string, layer = 'smooth', data: 'lines' | 'markers' = 'lines'): [number, number][] =>
    rowsOf(specs[name]!, data).filter((r) => r.series === series && r.layer === layer).map((r) => [r.x, r.y]);

  expect(points('gradNorm', 'grad norm', 'raw')).toEqual(training.map((r) => [r.step, 10 / r.step]));
  expect(points('gradNorm', 'grad norm')).toHaveLength(40);
  expect(points('mfu', 'MFU', 'raw')).toEqual(training.map((r) => [r.step, r.step / 1000]));
  expect(rowsOf(specs.mfu!, 'yBounds')).toEqual([{ y: 0 }]);
  expect(points('lr', 'learning rate')).toEqual(training.map((r) => [r.step, 1e-3]));

  // held-out: a line through the evaluations of each modality, and a dot at each
  expect(points('heldOut', 'overall')).toEqual([[2000, 2], [4000, 1.5]]);
  expect(points('heldOut', 'text')).toEqual([[2000, 3], [4000, 2.5]]);
  expect(points('heldOut', 'image', 'smooth', 'markers')).toEqual([[2000, 1], [4000, 0.5]]);
  expect(points('lossTokens', 'text', 'smooth', 'markers')).toEqual([[2000, 3], [4000, 2.5]]);
  expect(points('lossTokens', 'image', 'raw').map(([x]) => x)).not.toContain(300);  // step 3's image loss is NaN

  // routing at steps 20 and 40: layer 0 rows 6s and 2s (load 1.5), layer 1 4s and 4s (load 1)
  expect(points('routingLoad', 'layer 0')).toEqual([[20, 1.5], [40, 1.5]]);
  expect(points('routingLoad', 'layer 1')).toEqual([[20, 1], [40, 1]]);
  expect(rowsOf(specs.routingLoad!, 'yBounds')).toEqual([{ y: 1 }, { y: 2 }]);
  expect(points('routingCoverage', 'layer 0')).toEqual([[20, 1], [40, 1]]);
  expect(points('routingGate', 'layer 0')).toEqual([[20, (6 * 0.25 + 2 * 0.5) / 8], [40, (6 * 0.25 + 2 * 0.5) / 8]]);
  expect(points('routingGate', 'layer 1')).toEqual([[20, 0.375], [40, 0.375]]);
  expect((specs.routingLoad!.legends as { title: string }[])[0]!.title).toBe('MoE layer');

  const dense = reportChartSpecs(training.map(({ routing: _r, ...r }) => r as StepRecord), [], ['text', 'image']);
  // no evaluation with a finite loss: no held-out chart (an empty one would have no axis range)
  expect(Object.keys(dense)).toEqual(['lossTokens', 'lossFlops', 'lr', 'gradNorm', 'throughput', 'mfu']);
});
