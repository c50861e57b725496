/**
 * The results of a flops-savings experiment, computed from its folder alone (experiment.json and
 * each variant's run.json and metrics.jsonl), so a rerun of the experiment rebuilds them:
 *   results.json        per variant: parameters, FLOPs per token and against dense, final and
 *                       held-out losses, η overall / text / image (training and held-out curves,
 *                       with F_s, L_s, F_d, the fit), tokens per expert, train time and
 *                       throughput; the comparison
 *   results.md          the command lines, the settings, the table, the held-out table and a
 *                       comparison with the paper's 1.4B-tier results generated from the numbers
 *   loss_vs_flops.svg/.png   three panels (overall, text, image), one line per variant, log FLOPs
 *
 * Before computing anything it checks that every variant's run.json holds the experiment's shared
 * settings and all its steps, and that every variant saw the baseline's tokens: the same
 * cumulative token count and image share at every step.
 *
 * Curves: x is the total cumulative training FLOPs (all modalities) for the overall, text and
 * image losses alike; a step whose batch lacks a modality has no point on that modality's curve.
 */
import * as fs from 'fs';
import * as path from 'path';
import { MomaError } from '../errors';
import { writeFileAtomic, writeJsonAtomic } from '../io/files';
import { forwardFlopsPerRow } from '../model/params';
import { EvalRecord, readMetrics, readRunFile, RunFile, StepRecord } from '../run/records';
import { formatDuration, formatSI } from '../run/report';
import { computeEta, EtaResult, etaInterval, formatEta, LossCurve, smoothingWindow, trailingMean } from './eta';
import { canonical, ExperimentFile, readExperimentFile, SHARED_KEYS, SharedSettings } from './experiment_file';
import { lossVsFlopsSvg, svgToPng, VariantLossPoints } from './plots';
import { last } from '../checked';

export const LOSS_KEYS = ['overall', 'text', 'image'] as const;
export type LossKey = (typeof LOSS_KEYS)[number];
export type LossByKey = Record<LossKey, number | null>;
export type EtaByKey = Record<LossKey, EtaResult | null>;

export interface VariantResult {
  name: string;
  preset: string;
  /** The run directory, relative to the experiment folder. */
  runDir: string;
  device: string;
  parameters: { total: number; active: number };
  steps: number;
  tokens: number;
  flops: { total: number; perModality: Record<string, number> };
  /** Measured: cumulative training FLOPs / tokens (document-masked attention, actual routing). */
  trainingFlopsPerToken: number;
  flopsVsDense: number;
  /** Nominal: 3 × forwardFlopsPerRow at the run's sequence length (keys = seqLen / 2). */
  nominalTrainingFlopsPerRow: number;
  nominalVsDense: number;
  /** Trailing mean of the last 5% of steps (the L_s of η). */
  finalLoss: LossByKey;
  /** The last held-out evaluation. */
  heldOutLoss: LossByKey | null;
  /** Tokens each expert of a routed group processed over the run (null for a model without experts). */
  tokensPerExpert: ExpertTokens[] | null;
  /** Sum of the step times, and tokens / that. */
  trainSeconds: number;
  tokensPerSecond: number;
  throughputVsDense: number;
  /** η against the baseline (null for the baseline itself). */
  eta: EtaByKey | null;
  /** η on the held-out evaluation curves (null for the baseline, or without evaluations). */
  heldOutEta: EtaByKey | null;
}

/**
 * One routed group's share of the training tokens: the rows its experts processed, summed over the
 * run and estimated from the step records that carry routing statistics (every `statsEvery` steps)
 * scaled by steps / such records; mean, smallest and largest over (layer, expert).
 */
export interface ExpertTokens {
  /** The group's modalities, joined with '+'. */
  group: string;
  experts: number;
  layers: number;
  mean: number;
  min: number;
  max: number;
  /** The step records the estimate comes from. */
  records: number;
}

export interface FlopsSavingsResults {
  format: 'moma-flops-savings';
  version: 1;
  generatedAt: string;
  experiment: { dir: string; settings: SharedSettings; dataset: { name: string; vocabHash: string }; commands: { at: string; command: string | null }[] };
  baseline: string;
  /** What the same-data check compared: steps and tokens per variant. */
  sameData: { steps: number; tokens: number; variants: string[] };
  variants: VariantResult[];
  /** Sentences comparing the η values with the paper's 1.4B-tier results after 1T tokens. */
  comparison: string[];
}

export interface ResultFiles {
  json: string;
  markdown: string;
  svg: string;
  png: string;
}

/** The paper's η at the 1.4B tier after 1T tokens. */
export const PAPER_ETA: Readonly<Record<string, Record<LossKey, number>>> = {
  moe8x: { overall: 3.0, text: 3.0, image: 2.8 },
  '4t4i': { overall: 3.7, text: 2.6, image: 5.2 },
  '4t4i-mod': { overall: 4.2, text: 3.4, image: 5.3 },
};

const STEP_KEYS_CHECKED = SHARED_KEYS.filter((k) => k !== 'tier');

function fileError(message: string): never {
  throw new MomaError('ERR_FILE', `flops-savings results: ${message}`);
}

interface VariantRun {
  name: string;
  runDir: string;
  run: RunFile;
  steps: StepRecord[];
  evals: EvalRecord[];
}

function readVariant(dir: string, name: string, experiment: ExperimentFile): VariantRun {
  const runDir = path.join(dir, 'variants', name);
  const file = path.join(runDir, 'run.json');
  if (!fs.existsSync(file)) fileError(`variant '${name}' has no run (${file} is missing); run the experiment to train it`);
  const run = readRunFile(runDir, 'flops-savings results');
  const expectedPreset = `${experiment.settings.tier}-${name}`;
  if (run.config.preset !== expectedPreset) fileError(`${file} trained preset '${run.config.preset}', the experiment's variant '${name}' is '${expectedPreset}'`);
  const settings = experiment.settings as unknown as Record<string, unknown>;
  const config = run.config as unknown as Record<string, unknown>;
  for (const key of STEP_KEYS_CHECKED) {
    if (canonical(config[key]) !== canonical(settings[key])) fileError(`${file} has ${key} ${canonical(config[key])}, the experiment ${canonical(settings[key])}`);
  }
  if (run.dataset?.vocabHash !== experiment.dataset.vocabHash) fileError(`${file} trained on vocabulary ${String(run.dataset?.vocabHash).slice(0, 12)}…, the experiment's is ${experiment.dataset.vocabHash.slice(0, 12)}…`);
  const { steps, evals } = readMetrics(runDir);
  const total = experiment.settings.steps;
  if (steps.length !== total || steps.some((r, i) => r.step !== i + 1)) {
    fileError(`variant '${name}' has ${steps.length} of ${total} steps in ${path.join(runDir, 'metrics.jsonl')}; run the experiment again to finish it`);
  }
  const byStep = new Map<number, EvalRecord>();
  for (const e of evals) byStep.set(e.step, e);
  return { name, runDir, run, steps, evals: [...byStep.values()].sort((a, b) => a.step - b.step) };
}

/** Every variant must have seen the baseline's batches: equal cumulative tokens and image share at each step. */
function checkSameData(baseline: VariantRun, other: VariantRun): void {
  baseline.steps.forEach((b, i) => {
    const o = other.steps[i] as StepRecord;
    if (o.tokens !== b.tokens || o.imageFraction !== b.imageFraction) {
      throw new MomaError('ERR_FILE', `flops-savings results: variant '${other.name}' saw other data than '${baseline.name}' at step ${b.step}: `
        + `${o.tokens} tokens so far (image share ${o.imageFraction}) against ${b.tokens} (${b.imageFraction})`);
    }
  });
}

type LossRecord = Pick<StepRecord, 'flops' | 'loss' | 'lossPerModality'>;

function lossOf(record: LossRecord, key: LossKey): number | null {
  const value = key === 'overall' ? record.loss : record.lossPerModality?.[key];
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function curveOf(records: LossRecord[], key: LossKey): LossCurve {
  const flops: number[] = [];
  const loss: number[] = [];
  for (const r of records) {
    const value = lossOf(r, key);
    if (value === null) continue;
    flops.push(r.flops.total);
    loss.push(value);
  }
  return { flops, loss };
}

function finalLossOf(records: LossRecord[]): LossByKey {
  const out = {} as LossByKey;
  for (const key of LOSS_KEYS) {
    const { loss } = curveOf(records, key);
    out[key] = loss.length === 0 ? null : last(trailingMean(loss, smoothingWindow(loss.length)), 'finalLossOf');
  }
  return out;
}

function etaOf(dense: LossRecord[], sparse: LossRecord[]): EtaByKey {
  const out = {} as EtaByKey;
  for (const key of LOSS_KEYS) {
    const d = curveOf(dense, key);
    const s = curveOf(sparse, key);
    out[key] = d.flops.length === 0 || s.flops.length === 0 ? null : computeEta(d, s);
  }
  return out;
}

function lastEvalLoss(evals: EvalRecord[]): LossByKey | null {
  const last = evals[evals.length - 1];
  if (last === undefined) return null;
  return Object.fromEntries(LOSS_KEYS.map((k) => [k, lossOf(last, k)])) as LossByKey;
}

function groupName(model: RunFile['model'], group: number): string {
  const groups = model.ffn.kind === 'moe' ? (model.ffn.groups as { modality: string | string[] }[]) : [];
  const modality = groups[group]?.modality;
  return modality === undefined ? `group ${group}` : Array.isArray(modality) ? modality.join('+') : modality;
}

/** Tokens per expert of each routed group (ExpertTokens), or null when no record carries routing statistics. */
export function tokensPerExpertOf(model: RunFile['model'], steps: StepRecord[]): ExpertTokens[] | null {
  const routed = steps.filter((r) => Array.isArray(r.routing) && r.routing.length > 0);
  if (routed.length === 0) return null;
  const scale = steps.length / routed.length;
  const byGroup = new Map<number, Map<string, number>>();
  for (const r of routed) {
    for (const e of r.routing!) {
      if (!Number.isFinite(e.rows)) continue;
      const sums = byGroup.get(e.group) ?? new Map<string, number>();
      byGroup.set(e.group, sums);
      const key = `${e.layer}/${e.expert}`;
      sums.set(key, (sums.get(key) ?? 0) + e.rows);
    }
  }
  return [...byGroup.entries()].sort(([a], [b]) => a - b).map(([group, sums]) => {
    const tokens = [...sums.values()].map((rows) => rows * scale);
    const keys = [...sums.keys()];
    return {
      group: groupName(model, group),
      experts: new Set(keys.map((k) => k.split('/')[1])).size,
      layers: new Set(keys.map((k) => k.split('/')[0])).size,
      mean: tokens.reduce((a, b) => a + b, 0) / tokens.length,
      min: Math.min(...tokens),
      max: Math.max(...tokens),
      records: routed.length,
    };
  });
}

function expertTokensText(groups: ExpertTokens[] | null): string {
  if (groups === null) return '-';
  return groups.map((g) => `${g.group} ${g.experts}×: ${formatSI(g.mean)} (${formatSI(g.min)}–${formatSI(g.max)})`).join('; ');
}

function variantResult(v: VariantRun, dense: VariantRun, denseResult: VariantResult | null): VariantResult {
  const last = v.steps[v.steps.length - 1] as StepRecord;
  const trainSeconds = v.steps.reduce((s, r) => s + r.seconds, 0);
  const tokensPerSecond = trainSeconds > 0 ? last.tokens / trainSeconds : 0;
  const perToken = last.flops.total / last.tokens;
  const nominal = 3 * forwardFlopsPerRow(v.run.model, { seqLen: v.run.config.seqLen }).overall.total;
  const isBaseline = v === dense;
  return {
    name: v.name, preset: v.run.config.preset, runDir: path.join('variants', v.name), device: v.run.config.device,
    parameters: { total: v.run.parameters.total, active: v.run.parameters.active },
    steps: last.step, tokens: last.tokens, flops: last.flops,
    trainingFlopsPerToken: perToken, flopsVsDense: denseResult === null ? 1 : perToken / denseResult.trainingFlopsPerToken,
    nominalTrainingFlopsPerRow: nominal, nominalVsDense: denseResult === null ? 1 : nominal / denseResult.nominalTrainingFlopsPerRow,
    finalLoss: finalLossOf(v.steps), heldOutLoss: lastEvalLoss(v.evals),
    tokensPerExpert: tokensPerExpertOf(v.run.model, v.steps),
    trainSeconds, tokensPerSecond, throughputVsDense: denseResult === null || denseResult.tokensPerSecond === 0 ? 1 : tokensPerSecond / denseResult.tokensPerSecond,
    eta: isBaseline ? null : etaOf(dense.steps, v.steps),
    heldOutEta: isBaseline || v.evals.length === 0 || dense.evals.length === 0 ? null : etaOf(dense.evals, v.evals),
  };
}

type Relation = 'above' | 'below' | 'equal' | 'undetermined';

/** How η a stands to η b, from their intervals (bounds can leave it undetermined). */
function relation(a: EtaResult, b: EtaResult): Relation {
  const x = etaInterval(a);
  const y = etaInterval(b);
  if (x.low > y.high) return 'above';
  if (x.high < y.low) return 'below';
  if (x.low === x.high && y.low === y.high && x.low === y.low) return 'equal';
  return 'undetermined';
}

const RELATION_TEXT: Record<Relation, string> = { above: 'above', below: 'below', equal: 'equal to', undetermined: 'not ordered against (a bound overlaps)' };

function etaText(r: EtaResult | null): string {
  return r === null ? '-' : formatEta(r);
}

/** The comparison with the paper's 1.4B-tier results, one sentence per point, from the numbers only. */
export function compareWithPaper(variants: VariantResult[]): string[] {
  if (!Array.isArray(variants)) throw new MomaError('ERR_ARG', 'flops-savings results: compareWithPaper needs the variant results');
  const sparse = variants.filter((v) => v.eta !== null);
  const byName = new Map(sparse.map((v) => [v.name, v]));
  const eta = (name: string, key: LossKey): EtaResult | null => byName.get(name)?.eta?.[key] ?? null;
  const out: string[] = [];
  if (sparse.length === 0) return ['No sparse variant was trained, so there is no η to compare.'];

  const highest = LOSS_KEYS.map((key) => {
    const ranked = sparse.filter((v) => v.eta![key] !== null).sort((a, b) => etaInterval(b.eta![key]!).low - etaInterval(a.eta![key]!).low);
    const top = ranked[0];
    if (top === undefined) return `${key}: none`;
    const unsure = ranked.slice(1).filter((v) => relation(top.eta![key]!, v.eta![key]!) !== 'above').map((v) => v.name);
    return `${key} ${top.name}, ${formatEta(top.eta![key]!)}${unsure.length > 0 ? ` (not ordered against ${unsure.join(', ')})` : ''}`;
  });
  out.push(`Highest η among the sparse variants: ${highest.join('; ')}. In the paper 4t4i-mod has the highest η on all three (4.2 overall, 3.4 text, 5.3 image).`);

  const pair = (a: string, b: string, key: LossKey, paper: string): void => {
    const x = eta(a, key);
    const y = eta(b, key);
    if (x === null || y === null) return;
    out.push(`${key[0]!.toUpperCase()}${key.slice(1)}: ${a} η ${formatEta(x)} is ${RELATION_TEXT[relation(x, y)]} ${b} η ${formatEta(y)} (paper: ${paper}).`);
  };
  pair('4t4i', 'moe8x', 'image', '4t4i 5.2 above moe8x 2.8');
  pair('moe8x', '4t4i', 'text', 'moe8x 3.0 above 4t4i 2.6');

  if (byName.has('4t4i-mod') && byName.has('4t4i')) {
    const parts = LOSS_KEYS.map((key) => {
      const x = eta('4t4i-mod', key);
      const y = eta('4t4i', key);
      return x === null || y === null ? null : { key, relation: relation(x, y), text: `${key} ${formatEta(x)} vs ${formatEta(y)}` };
    }).filter((p): p is NonNullable<typeof p> => p !== null);
    const adds = parts.filter((p) => p.relation === 'above').length;
    out.push(`MoD (4t4i-mod against 4t4i): ${parts.map((p) => `${p.text} (${p.relation})`).join(', ')}; η is higher with MoD on ${adds} of ${parts.length} (paper: 4.2 vs 3.7, 3.4 vs 2.6, 5.3 vs 5.2, higher on all three).`);
  }

  const ordered = ['4t4i-mod', '4t4i', 'moe8x'].filter((n) => eta(n, 'overall') !== null);
  if (ordered.length >= 2) {
    const measured = [...ordered].sort((a, b) => etaInterval(eta(b, 'overall')!).low - etaInterval(eta(a, 'overall')!).low);
    const determined = measured.every((n, i) => i === 0 || relation(eta(measured[i - 1]!, 'overall')!, eta(n, 'overall')!) === 'above');
    const same = measured.join() === ordered.join();
    out.push(`Order by η overall, highest first: ${measured.map((n) => `${n} ${formatEta(eta(n, 'overall')!)}`).join(', ')}; the paper's order is ${ordered.join(', ')}`
      + `; ${!determined ? 'the measured order is not fully determined (bounds or ties)' : same ? 'the same order' : 'a different order'}.`);
  }
  const dense = variants.find((v) => v.eta === null);
  if (dense !== undefined) {
    out.push(`Scale: the paper's η are for 1.4B-parameter dense models after 1T tokens; the dense baseline here has ${formatSI(dense.parameters.total)} parameters after ${formatSI(dense.tokens)} tokens.`);
  }
  return out;
}

function lossCell(value: number | null): string {
  return value === null ? '-' : value.toFixed(4);
}

function percent(ratio: number): string {
  const p = Math.round((ratio - 1) * 1000) / 10;
  return `${p > 0 ? '+' : p < 0 ? '−' : '±'}${Math.abs(p).toFixed(1)}%`;
}

function markdownTable(header: string[], rows: string[][]): string[] {
  return [`| ${header.join(' | ')} |`, `| ${header.map((_, i) => (i < 2 ? '---' : '---:')).join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

/** The results.md text. */
export function resultsMarkdown(results: FlopsSavingsResults): string {
  const s = results.experiment.settings;
  const dense = results.variants.find((v) => v.name === results.baseline);
  const lines: string[] = [`# FLOPs savings (η): ${results.variants.map((v) => v.name).join(', ')} — ${s.tier} tier`, ''];
  const [first, ...later] = results.experiment.commands;
  lines.push(`Command: \`${first?.command ?? '(run from code)'}\` (${first?.at ?? '-'})`);
  for (const c of later) lines.push(`Continued by: \`${c.command ?? '(run from code)'}\` (${c.at})`);
  lines.push('');
  const fraction = s.imageFraction === null ? 'off (documents in drawn order)' : String(s.imageFraction);
  lines.push(`Every variant: ${s.steps} steps of ${s.batchSize} × ${s.seqLen} tokens (${formatSI(dense?.tokens ?? 0)} tokens), AdamW lr ${s.lr} cosine to 1% after ${s.warmup} warm-up steps, `
    + `seed ${s.seed}, image fraction ${fraction}, data ${results.experiment.dataset.name} (vocabulary ${results.experiment.dataset.vocabHash.slice(0, 12)}…)`
    + `${Object.keys(s.model).length > 0 ? `, model overrides ${JSON.stringify(s.model)}` : ''}, held-out evaluation ${s.evalEvery > 0 ? `every ${s.evalEvery} steps` : 'at the end'}. `
    + `Same data: every variant's cumulative token count and image share are equal to ${results.baseline}'s at each of the ${results.sameData.steps} steps (checked).`);
  lines.push('');
  const window = smoothingWindow(s.steps);
  lines.push(...markdownTable(
    ['variant', 'preset', 'params total', 'params active', 'train FLOPs/token', 'vs dense', 'final loss', 'text', 'image', 'η overall', 'η text', 'η image', 'train time', 'tokens/s (vs dense)'],
    results.variants.map((v) => [
      v.name, v.preset, formatSI(v.parameters.total), formatSI(v.parameters.active), formatSI(v.trainingFlopsPerToken), v.flopsVsDense.toFixed(3),
      lossCell(v.finalLoss.overall), lossCell(v.finalLoss.text), lossCell(v.finalLoss.image),
      v.eta === null ? 'baseline' : etaText(v.eta.overall), v.eta === null ? 'baseline' : etaText(v.eta.text), v.eta === null ? 'baseline' : etaText(v.eta.image),
      formatDuration(v.trainSeconds), `${formatSI(v.tokensPerSecond)} (${v.eta === null ? 'baseline' : percent(v.throughputVsDense)})`,
    ]),
  ));
  lines.push('');
  lines.push(`Final loss: the trailing mean of the last ${window === 1 ? 'step' : `${window} steps`} (5%, at least 1). η = F_d / F_s (docs/EXPERIMENTS.md): F_s the variant's training FLOPs at its last step, `
    + `F_d where ${results.baseline}'s loss curve, smoothed by the same trailing mean, first reaches the variant's final loss (interpolated in log FLOPs). `
    + `"(extrapolated)": ${results.baseline} never reached it, F_d solves L = a·F^(−b) + c fitted to the second half of its smoothed curve; "> x (no crossing)": the fit never reaches it, x = F_end / F_s; `
    + `"< x (dense starts below)": ${results.baseline}'s first smoothed point is already below it. The x axis of the text and image curves is the total training FLOPs too.`);
  lines.push('');
  const ratios = results.variants.filter((v) => v.eta !== null);
  if (ratios.length > 0) {
    const widest = ratios.reduce((m, v) => (Math.abs(v.flopsVsDense - 1) > Math.abs(m.flopsVsDense - 1) ? v : m));
    lines.push(`Training FLOPs per token against ${results.baseline} (measured): ${ratios.map((v) => `${v.name} ${v.flopsVsDense.toFixed(3)}`).join(', ')}; `
      + `the largest difference is ${widest.name}, ${percent(widest.flopsVsDense)}. Nominal (forward FLOPs per row at sequence ${s.seqLen}, ×3): `
      + `${ratios.map((v) => `${v.name} ${v.nominalVsDense.toFixed(3)}`).join(', ')}.`);
    lines.push('');
  }
  const routed = results.variants.filter((v) => v.tokensPerExpert !== null);
  if (routed.length > 0) {
    lines.push('## Tokens per expert', '');
    lines.push('Rows each expert processed over the run, mean over layers and experts (smallest–largest), per routed group; '
      + 'estimated from the step records that carry routing statistics, scaled to all steps.', '');
    lines.push(...markdownTable(['variant', 'preset', 'tokens per expert'], routed.map((v) => [v.name, v.preset, expertTokensText(v.tokensPerExpert)])));
    lines.push('');
  }
  const heldOut = results.variants.filter((v) => v.heldOutLoss !== null);
  if (heldOut.length > 0) {
    lines.push('## Held-out η', '');
    lines.push(`The same computation on the held-out evaluation records (${s.evalBatches} batches ${s.evalEvery > 0 ? `every ${s.evalEvery} steps` : 'at the end'}), each curve smoothed over 5% of its points (at least 1).`, '');
    lines.push(...markdownTable(
      ['variant', 'preset', 'held-out loss', 'text', 'image', 'η overall', 'η text', 'η image'],
      heldOut.map((v) => [
        v.name, v.preset, lossCell(v.heldOutLoss!.overall), lossCell(v.heldOutLoss!.text), lossCell(v.heldOutLoss!.image),
        ...LOSS_KEYS.map((k) => (v.eta === null ? 'baseline' : etaText(v.heldOutEta?.[k] ?? null))),
      ]),
    ));
    lines.push('');
  }
  lines.push('## Compared with the paper (1.4B tier, 1T tokens)', '', ...results.comparison.map((c) => `- ${c}`), '');
  lines.push('## Files', '');
  lines.push('- `variants/<name>/`: each variant\'s run directory (run.json, metrics.jsonl, checkpoints, report.html)');
  lines.push('- `results.json`: these numbers and, per η, F_s, L_s, F_d and the power-law fit');
  lines.push('- `loss_vs_flops.svg`, `loss_vs_flops.png`: loss against cumulative training FLOPs, one panel per loss', '');
  lines.push('![loss against training FLOPs](loss_vs_flops.png)', '');
  return lines.join('\n');
}

function pointsOf(v: VariantRun): VariantLossPoints {
  const toPoint = (r: LossRecord): VariantLossPoints['steps'][number] => ({ flops: r.flops.total, loss: Object.fromEntries(LOSS_KEYS.map((k) => [k, lossOf(r, k)])) });
  return { name: v.name, steps: v.steps.map(toPoint), heldOut: v.evals.map(toPoint) };
}

/**
 * Computes the results of an experiment folder and writes results.json, results.md and the
 * figure. `variants` defaults to those of the folder's last invocation; the baseline comes first.
 */
export async function analyzeFlopsSavings(dir: string, variants?: string[]): Promise<{ results: FlopsSavingsResults; files: ResultFiles }> {
  if (typeof dir !== 'string' || dir.trim() === '') throw new MomaError('ERR_ARG', 'flops-savings results: dir must be an experiment folder');
  const experiment = readExperimentFile(dir);
  if (experiment === null) throw new MomaError('ERR_ARG', `flops-savings results: ${dir} holds no experiment.json (not a flops-savings experiment folder)`);
  const names = variants ?? experiment.invocations[experiment.invocations.length - 1]?.variants;
  if (!Array.isArray(names) || names.length === 0 || names.some((n) => typeof n !== 'string')) {
    throw new MomaError('ERR_ARG', 'flops-savings results: variants must be a non-empty array of variant names');
  }
  const baseline = names[0] as string;
  const runs = names.map((n) => readVariant(dir, n, experiment));
  const dense = runs[0] as VariantRun;
  for (const r of runs.slice(1)) checkSameData(dense, r);
  const denseResult = variantResult(dense, dense, null);
  const list = [denseResult, ...runs.slice(1).map((r) => variantResult(r, dense, denseResult))];
  const results: FlopsSavingsResults = {
    format: 'moma-flops-savings', version: 1, generatedAt: new Date().toISOString(),
    experiment: {
      dir: path.resolve(dir), settings: experiment.settings, dataset: experiment.dataset,
      commands: experiment.invocations.map((i) => ({ at: i.at, command: i.command })),
    },
    baseline,
    sameData: { steps: dense.steps.length, tokens: denseResult.tokens, variants: names },
    variants: list,
    comparison: compareWithPaper(list),
  };
  const files: ResultFiles = {
    json: path.join(dir, 'results.json'), markdown: path.join(dir, 'results.md'),
    svg: path.join(dir, 'loss_vs_flops.svg'), png: path.join(dir, 'loss_vs_flops.png'),
  };
  const svg = await lossVsFlopsSvg(runs.map(pointsOf), [...LOSS_KEYS]);
  const png = await svgToPng(svg);
  try {
    writeFileAtomic(files.svg, svg);
    writeFileAtomic(files.png, png);
    writeJsonAtomic(files.json, results);
    writeFileAtomic(files.markdown, resultsMarkdown(results));
  } catch (err) {
    throw new MomaError('ERR_FILE', `flops-savings results: cannot write the results into ${dir} (${(err as Error).message})`);
  }
  return { results, files };
}
