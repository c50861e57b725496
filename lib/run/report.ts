/**
 * The report of a training run, rebuilt from its run.json and metrics.jsonl at any time
 * (`moma report <run dir>`, and by `trainRun` at the end or on a stop):
 *   report.svg   loss per modality against tokens and against training FLOPs, side by side
 *   report.png   the same picture, rendered by sharp at twice the size
 *   report.html  one self-contained page (inline SVG, no scripts, no network): a summary table;
 *                charts of the loss, the held-out loss, learning rate, gradient norm, throughput
 *                and MFU over training; for MoE models routing load, coverage and mean gate per
 *                layer over training and the last routing statistics; and the run configuration.
 * `reportChartSpecs` gives the charts as Vega specs (their data is what the tests check).
 * `summarizeMetrics` gives the numbers the CLI prints at the end of a run.
 *
 * A step record holds the means over the steps since the previous record (`interval` of them,
 * `logEvery` unless an evaluation, checkpoint or stop came first); records written before
 * `interval` existed covered one step each. Step records carry `kind: 'step'` and an ISO `time`,
 * or (written before those existed) neither: both read alike.
 *
 * Any value may be missing or not a finite number (a diverged run's null losses, a hand-edited or
 * older file): tables show '-', charts leave a gap, sums and means skip it.
 */
import * as fs from 'fs';
import * as path from 'path';
import sharp from 'sharp';
import type * as vega from 'vega';
import { MomaError } from '../errors';
import { writeFileAtomic } from '../io/files';
import { countParameters } from '../model/params';
import type { ExpertStat } from '../train/trainer';
import { ChartSeries, lineChartSpec, renderSvg, sideBySide } from './charts';
import { EvalRecord, readMetrics, readRunFile, RunFile, StepRecord } from './records';

/** Loss overall ('overall') and per modality; null where a modality never appeared. */
export type LossRow = Record<string, number | null>;

export interface MetricsSummary {
  /** The last step recorded. */
  steps: number;
  tokens: number;
  flops: { total: number; perModality: Record<string, number> };
  /** Sum of the step times (training only, data waits excluded). */
  trainSeconds: number;
  /** Sum of the time steps waited for their batches. */
  dataWaitSeconds: number;
  tokensPerSecond: number;
  loss: {
    /** The first record's means, over its `firstWindow` steps. */
    first: LossRow;
    firstWindow: number;
    /** Mean over the last 5% of the records (at least 1), each weighted by its steps: `finalWindow` steps in all. */
    final: LossRow;
    finalWindow: number;
  };
  /** The last held-out evaluation. */
  heldOut: { step: number; loss: LossRow } | null;
  /** The last routing statistics the trainer emitted. */
  routing: { step: number; experts: ExpertStat[] } | null;
}

export interface ReportFiles {
  html: string;
  svg: string;
  png: string;
}

const COLORS: Record<string, string> = { overall: '#444444', text: '#1f77b4', image: '#ff7f0e' };

/** `value` when it is a finite number, else null (null, NaN written as null, a missing key, a string). */
function finiteOrNull(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

/** `value` when it is a finite number, else 0 (for sums). */
function finiteOrZero(value: unknown): number {
  return finiteOrNull(value) ?? 0;
}

function lossRow(record: { loss?: unknown; lossPerModality?: unknown }): LossRow {
  const row: LossRow = { overall: finiteOrNull(record.loss) };
  const perModality = record.lossPerModality;
  if (perModality !== null && typeof perModality === 'object') {
    for (const [name, value] of Object.entries(perModality as Record<string, unknown>)) row[name] = finiteOrNull(value);
  }
  return row;
}

/** The training step records of a run's metrics (`kind: 'step'`, or no kind in older files), without the other kinds readMetrics may pass on (a 'skip' record). */
export function trainingRecords(steps: StepRecord[]): StepRecord[] {
  return steps.filter((r) => {
    const kind = (r as { kind?: unknown }).kind;
    return kind === undefined || kind === 'step';
  });
}

/** A record's FLOPs (total and per modality), zeros where missing. */
function flopsOf(record: { flops?: unknown } | undefined): { total: number; perModality: Record<string, number> } {
  const flops = record?.flops as { total?: unknown; perModality?: unknown } | null | undefined;
  const perModality = flops?.perModality !== null && typeof flops?.perModality === 'object' ? flops.perModality as Record<string, unknown> : {};
  return { total: finiteOrZero(flops?.total), perModality: Object.fromEntries(Object.entries(perModality).map(([k, v]) => [k, finiteOrZero(v)])) };
}

/** The steps a record's means cover (1 for records written before `interval` existed). */
export function stepsOf(record: StepRecord): number {
  return typeof record.interval === 'number' && record.interval > 0 ? record.interval : 1;
}

/** Weighted means of loss rows, per key over the rows where it is finite. */
function meanRows(rows: LossRow[], weights: number[]): LossRow {
  const out: LossRow = {};
  for (const key of new Set(rows.flatMap((r) => Object.keys(r)))) {
    let sum = 0;
    let weight = 0;
    rows.forEach((r, i) => {
      const v = r[key];
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      sum += v * weights[i]!;
      weight += weights[i]!;
    });
    out[key] = weight > 0 ? sum / weight : null;
  }
  return out;
}

/** Totals and first / final / held-out losses of a run's records. */
export function summarizeMetrics(records: StepRecord[], evals: EvalRecord[]): MetricsSummary {
  const steps = trainingRecords(records);
  const last = steps[steps.length - 1];
  const trainSeconds = steps.reduce((s, r) => s + finiteOrZero(r.seconds), 0);
  const dataWaitSeconds = steps.reduce((s, r) => s + finiteOrZero(r.dataWaitMs) / 1000, 0);
  const window = steps.slice(-Math.max(1, Math.round(steps.length * 0.05)));
  const lastEval = evals[evals.length - 1];
  const routed = [...steps].reverse().find((r) => Array.isArray(r.routing) && r.routing.length > 0);
  return {
    steps: last?.step ?? 0,
    tokens: finiteOrZero(last?.tokens),
    flops: flopsOf(last),
    trainSeconds,
    dataWaitSeconds,
    tokensPerSecond: trainSeconds > 0 && last ? finiteOrZero(last.tokens) / trainSeconds : 0,
    loss: {
      first: steps[0] ? lossRow(steps[0]) : {},
      firstWindow: steps[0] ? stepsOf(steps[0]) : 0,
      final: meanRows(window.map(lossRow), window.map(stepsOf)),
      finalWindow: window.reduce((s, r) => s + stepsOf(r), 0),
    },
    heldOut: lastEval ? { step: lastEval.step, loss: lossRow(lastEval) } : null,
    routing: routed ? { step: routed.step, experts: routed.routing! } : null,
  };
}

/** What a loss chart reads from step and eval records alike. */
type LossRecord = Pick<StepRecord, 'tokens' | 'flops' | 'loss' | 'lossPerModality'>;

function lossSeries(records: LossRecord[], x: (r: LossRecord) => number | null, names: string[]): ChartSeries[] {
  return ['overall', ...names].map((name) => ({
    name,
    points: records.map((r) => [x(r) ?? NaN, lossRow(r)[name] ?? null] as [number, number | null]),
  }));
}

/** Whether any series has a point with a finite x and y (a chart without one has no axis range). */
function hasPoints(series: ChartSeries[]): boolean {
  return series.some((s) => s.points.some(([x, y]) => Number.isFinite(x) && y !== null && Number.isFinite(y)));
}

/** One layer's routing in one record (null where the record has nothing to measure it by). */
export interface LayerRouting {
  layer: number;
  /** The busiest expert's rows over the mean rows per expert of its group, for the layer's most unequal group (1: even). */
  load: number | null;
  /** Share of the experts of the layer's groups that had rows which selected at least one row. */
  coverage: number | null;
  /** Mean gate of the rows the layer's experts selected (each expert's mean weighted by its rows). */
  meanGate: number | null;
}

/** Load, coverage and mean gate per layer from one record's routing statistics (entries with non-finite values are skipped). */
export function layerRouting(experts: ExpertStat[]): LayerRouting[] {
  const valid = experts.filter((e) => Number.isInteger(e?.layer) && Number.isInteger(e.group) && Number.isFinite(e.rows) && e.rows >= 0);
  const layers = [...new Set(valid.map((e) => e.layer))].sort((a, b) => a - b);
  return layers.map((layer) => {
    const own = valid.filter((e) => e.layer === layer);
    let load: number | null = null;
    let used = 0;
    let counted = 0;
    for (const group of new Set(own.map((e) => e.group))) {
      const rows = own.filter((e) => e.group === group).map((e) => e.rows);
      const total = rows.reduce((a, b) => a + b, 0);
      if (total === 0) continue;  // the group's modality was absent from the micro-batch
      load = Math.max(load ?? 0, Math.max(...rows) / (total / rows.length));
      used += rows.filter((r) => r > 0).length;
      counted += rows.length;
    }
    const gated = own.filter((e) => e.rows > 0 && Number.isFinite(e.meanGate));
    const gatedRows = gated.reduce((a, e) => a + e.rows, 0);
    return {
      layer, load, coverage: counted > 0 ? used / counted : null,
      meanGate: gatedRows > 0 ? gated.reduce((a, e) => a + e.rows * e.meanGate, 0) / gatedRows : null,
    };
  });
}

/** One series per layer of a routing measure against the step, over the records that carry routing statistics. */
function routingSeries(steps: StepRecord[], measure: (l: LayerRouting) => number | null): ChartSeries[] {
  const byLayer = new Map<number, [number, number | null][]>();
  for (const r of steps) {
    const step = finiteOrNull(r.step);
    if (step === null || !Array.isArray(r.routing) || r.routing.length === 0) continue;
    for (const l of layerRouting(r.routing)) {
      if (!byLayer.has(l.layer)) byLayer.set(l.layer, []);
      byLayer.get(l.layer)!.push([step, measure(l)]);
    }
  }
  return [...byLayer.entries()].sort(([a], [b]) => a - b).map(([layer, points]) => ({ name: `layer ${layer}`, points }));
}

/** The Vega specs of a report's charts, by name; the routing charts only when some record carries routing statistics. */
export function reportChartSpecs(steps: StepRecord[], evals: EvalRecord[], modalities: string[]): Record<string, vega.Spec> {
  const subtitle = 'faint: each record (mean of its steps); bold: smoothed; dots: held-out evaluation';
  const perRecord = 'faint: each record (mean of its steps); bold: smoothed';
  const byTokens = (r: LossRecord): number | null => finiteOrNull(r.tokens);
  const byFlops = (r: LossRecord): number | null => finiteOrNull((r.flops as { total?: unknown } | undefined)?.total);
  const byStep = (r: StepRecord): number => finiteOrNull(r.step) ?? NaN;
  const held = lossSeries(evals, byTokens, modalities);
  const specs: Record<string, vega.Spec> = {
    lossTokens: lineChartSpec({
      title: 'Training loss by modality', subtitle, xTitle: 'tokens', yTitle: 'loss (nats per token)', yScale: 'log', legendTitle: 'modality', colors: COLORS,
      series: lossSeries(steps, byTokens, modalities), markers: held,
    }),
    lossFlops: lineChartSpec({
      title: 'Training loss against compute', subtitle, xTitle: 'training FLOPs', yTitle: 'loss (nats per token)', xScale: 'log', yScale: 'log', legendTitle: 'modality', colors: COLORS,
      series: lossSeries(steps, byFlops, modalities), markers: lossSeries(evals, byFlops, modalities),
    }),
    // a held-out chart only when an evaluation has a finite loss (an empty chart has no axis range)
    ...(hasPoints(held) ? {
      heldOut: lineChartSpec({
        title: 'Held-out loss by modality', subtitle: 'each evaluation on the held-out data', xTitle: 'tokens', yTitle: 'loss (nats per token)', yScale: 'log', legendTitle: 'modality', colors: COLORS,
        raw: true, series: held, markers: held,
      }),
    } : {}),
    lr: lineChartSpec({
      title: 'Learning rate', xTitle: 'step', yTitle: 'learning rate', raw: true, colors: { 'learning rate': COLORS.overall! },
      series: [{ name: 'learning rate', points: steps.map((r) => [byStep(r), finiteOrNull(r.lr)]) }],
    }),
    gradNorm: lineChartSpec({
      title: 'Gradient norm', subtitle: `${perRecord}; before clipping`, xTitle: 'step', yTitle: 'global gradient norm', yScale: 'log', colors: { 'grad norm': COLORS.overall! },
      series: [{ name: 'grad norm', points: steps.map((r) => [byStep(r), finiteOrNull(r.gradNorm)]) }],
    }),
    throughput: lineChartSpec({
      title: 'Throughput', subtitle: 'faint: each record (its steps); bold: smoothed', xTitle: 'step', yTitle: 'tokens per second', yFormat: '~s', colors: { 'tokens/s': COLORS.overall! },
      series: [{ name: 'tokens/s', points: steps.map((r) => [byStep(r), finiteOrNull(r.tokensPerSecond)]) }],
    }),
    mfu: lineChartSpec({
      title: 'Model FLOPs utilisation', subtitle: `${perRecord}; of the device's peak`, xTitle: 'step', yTitle: 'MFU', yFormat: '.2~%', yMin: 0, colors: { MFU: COLORS.overall! },
      series: [{ name: 'MFU', points: steps.map((r) => [byStep(r), finiteOrNull(r.mfu)]) }],
    }),
  };
  const load = routingSeries(steps, (l) => l.load);
  if (load.length > 0) {
    const routed = 'records with routing statistics';
    specs.routingLoad = lineChartSpec({
      title: 'Routing load per layer', subtitle: `${routed}; busiest expert over its group's mean, 1 = even`, xTitle: 'step', yTitle: 'max / mean rows per expert', yMin: 1, yMax: 2,
      legendTitle: 'MoE layer', scheme: 'viridis', raw: true, series: load,
    });
    specs.routingCoverage = lineChartSpec({
      title: 'Expert coverage per layer', subtitle: `${routed}; share of experts that selected rows`, xTitle: 'step', yTitle: 'experts in use', yFormat: '.0%', yMin: 0, yMax: 1,
      legendTitle: 'MoE layer', scheme: 'viridis', raw: true, series: routingSeries(steps, (l) => l.coverage),
    });
    specs.routingGate = lineChartSpec({
      title: 'Mean gate per layer', subtitle: `${routed}; router weight of the selected rows`, xTitle: 'step', yTitle: 'mean gate', yMin: 0, yMax: 1,
      legendTitle: 'MoE layer', scheme: 'viridis', raw: true, series: routingSeries(steps, (l) => l.meanGate),
    });
  }
  return specs;
}

/** The report's charts (reportChartSpecs) rendered to SVG strings, by the same names. */
async function renderCharts(specs: Record<string, vega.Spec>): Promise<Record<string, string>> {
  const names = Object.keys(specs);
  const svgs = await Promise.all(names.map((name) => renderSvg(specs[name]!)));
  return Object.fromEntries(names.map((name, i) => [name, svgs[i]!]));
}

function escapeHtml(text: string): string {
  return String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

/** 1234567 -> "1.23 M" (SI prefixes), for tokens and FLOPs. */
export function formatSI(value: number): string {
  if (!Number.isFinite(value)) return '-';
  const prefixes = ['', 'k', 'M', 'G', 'T', 'P', 'E'];
  let i = 0;
  let v = Math.abs(value);
  while (v >= 1000 && i < prefixes.length - 1) {
    v /= 1000;
    i++;
  }
  return `${value < 0 ? '-' : ''}${i === 0 ? String(Math.round(v * 100) / 100) : v.toPrecision(3)}${prefixes[i] ? ` ${prefixes[i]}` : ''}`;
}

/** 193.4 -> "3m 13s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '-';
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds - 60 * m);
  return m < 60 ? `${m}m ${s}s` : `${Math.floor(m / 60)}h ${m % 60}m`;
}

/** A finite number with `digits` decimals; '-' for anything else (null, NaN, a string from a hand-edited file). */
function fixed(value: unknown, digits: number): string {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '-';
}

function formatLoss(value: number | null | undefined): string {
  return fixed(value, 4);
}

/** An integer count for the HTML; '-' when it is not one. */
function count(value: unknown): string {
  return typeof value === 'number' && Number.isSafeInteger(value) ? String(value) : '-';
}

/** 'first step', or 'first N steps' when the first record covers several. */
export function firstLabel(summary: MetricsSummary): string {
  return summary.loss.firstWindow > 1 ? `first ${summary.loss.firstWindow} steps` : 'first step';
}

function lossTable(summary: MetricsSummary, modalities: string[]): string {
  const keys = ['overall', ...modalities];
  const rows: [string, LossRow][] = [
    [firstLabel(summary), summary.loss.first],
    [`final (mean of last ${summary.loss.finalWindow} steps)`, summary.loss.final],
  ];
  if (summary.heldOut) rows.push([`held-out (step ${summary.heldOut.step})`, summary.heldOut.loss]);
  const head = `<tr><th>loss</th>${keys.map((k) => `<th>${escapeHtml(k)}</th>`).join('')}</tr>`;
  const body = rows.map(([label, row]) => `<tr><td>${escapeHtml(label)}</td>${keys.map((k) => `<td class="num">${formatLoss(row[k])}</td>`).join('')}</tr>`).join('');
  return `<table>${head}${body}</table>`;
}

function routingTable(run: RunFile, routing: NonNullable<MetricsSummary['routing']>): string {
  const groups = run.model.ffn.groups ?? [];
  const groupName = (g: number): string => {
    const m = groups[g]?.modality;
    return Array.isArray(m) ? m.join('+') : m ?? `group ${g}`;
  };
  const columns = [...new Map(routing.experts.map((e) => [`${e.group}:${e.expert}`, e])).values()];
  const layers = [...new Set(routing.experts.map((e) => e.layer))].sort((a, b) => a - b);
  const head = `<tr><th>layer</th>${columns.map((c) => `<th>${escapeHtml(groupName(c.group))} ${count(c.expert)}</th>`).join('')}</tr>`;
  const body = layers.map((layer) => {
    const cells = columns.map((c) => {
      const e = routing.experts.find((x) => x.layer === layer && x.group === c.group && x.expert === c.expert);
      return e ? `<td class="num">${fixed(e.rows, 0)} <span class="gate">${fixed(e.meanGate, 2)}</span></td>` : '<td>-</td>';
    });
    return `<tr><td>${count(layer)}</td>${cells.join('')}</tr>`;
  }).join('');
  return `<h2>Routing (step ${count(routing.step)})</h2><p>Rows each expert selected in the step's micro-batch, per layer, and (grey) the mean gate of the selected rows.</p><table>${head}${body}</table>`;
}

function summaryTable(run: RunFile, summary: MetricsSummary): string {
  const params = countParameters(run.model);
  const resumes = Array.isArray(run.resumes) ? run.resumes : [];
  const flopsText = `${formatSI(summary.flops.total)} (${Object.entries(summary.flops.perModality).map(([k, v]) => `${escapeHtml(k)} ${formatSI(v)}`).join(', ')})`;
  const rows: [string, string][] = [
    ['preset', escapeHtml(run.config.preset)],
    ['parameters', `${formatSI(params.total)} total, ${formatSI(params.active)} active per token`],
    ['device', escapeHtml(run.config.device)],
    ['data', escapeHtml(run.dataset.name)],
    ['steps', `${count(summary.steps)} of ${count(run.config.steps)} (batch ${count(run.config.batchSize)} × ${count(run.config.seqLen)} tokens)`],
    ['tokens', formatSI(summary.tokens)],
    ['training FLOPs', flopsText],
    ['training time', `${formatDuration(summary.trainSeconds)} (waiting for data: ${formatDuration(summary.dataWaitSeconds)} more)`],
    ['throughput', `${formatSI(summary.tokensPerSecond)} tokens/s`],
    ['moma', `${escapeHtml(run.moma)}, started ${escapeHtml(run.startedAt)}${resumes.length > 0 ? `, resumed at step ${resumes.map((r) => count(r?.step)).join(', ')}` : ''}`],
  ];
  return `<table>${rows.map(([k, v]) => `<tr><th>${k}</th><td>${v}</td></tr>`).join('')}</table>`;
}

const STYLE = `body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.charts{display:flex;flex-wrap:wrap;gap:12px}
.gate{color:#888;font-size:85%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}`;

/** Writes report.svg, report.png and report.html into a run directory from its run.json and metrics.jsonl. */
export async function writeReport(runDir: string): Promise<ReportFiles> {
  if (typeof runDir !== 'string' || !fs.existsSync(runDir) || !fs.statSync(runDir).isDirectory()) {
    throw new MomaError('ERR_ARG', `report: ${String(runDir)} is not a run directory`);
  }
  const run = readRunFile(runDir, 'report');
  const read = readMetrics(runDir);
  const steps = trainingRecords(read.steps);
  const evals = read.evals;
  const modalities = run.model.modalities ?? ['text', 'image'];
  const summary = summarizeMetrics(steps, evals);
  const charts = await renderCharts(reportChartSpecs(steps, evals, modalities));
  const files: ReportFiles = { html: path.join(runDir, 'report.html'), svg: path.join(runDir, 'report.svg'), png: path.join(runDir, 'report.png') };

  const picture = sideBySide([charts.lossTokens!, charts.lossFlops!]);
  writeFileAtomic(files.svg, picture);
  writeFileAtomic(files.png, await sharp(Buffer.from(picture), { density: 144 }).png().toBuffer());

  const row = (...names: string[]): string => `<div class="charts">${names.map((n) => charts[n]).filter((svg) => svg !== undefined).join('')}</div>`;
  const routingOverTraining = charts.routingLoad === undefined ? '' : `<h2>Routing over training</h2>
<p>Per MoE layer, from each record that carries routing statistics: how unequal the experts' loads are, the share of experts in use, and the mean router weight of the rows they took. Expert choice gives every expert its capacity, so its load stays at 1.</p>
${row('routingLoad', 'routingCoverage', 'routingGate')}`;
  const title = `moma run ${path.basename(path.resolve(runDir))} — ${run.config.preset}`;
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title><style>${STYLE}</style></head>
<body>
<h1>${escapeHtml(title)}</h1>
${summaryTable(run, summary)}
<h2>Loss</h2>
${lossTable(summary, modalities)}
${row('lossTokens', 'lossFlops')}
${charts.heldOut !== undefined ? row('heldOut') : ''}
<h2>Optimisation</h2>
${row('lr', 'gradNorm')}
<h2>Throughput and utilisation</h2>
${row('throughput', 'mfu')}
${routingOverTraining}
${summary.routing ? routingTable(run, summary.routing) : ''}
<h2>Configuration (run.json)</h2>
<pre>${escapeHtml(JSON.stringify(run, null, 2))}</pre>
</body></html>
`;
  writeFileAtomic(files.html, html);
  return files;
}
