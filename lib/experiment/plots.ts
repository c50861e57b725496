/**
 * The loss-against-compute figure of an experiment: one panel per loss (overall, text, image),
 * one line per variant, x the total cumulative training FLOPs (all modalities) on a log scale,
 * y the loss on a log scale. Each line is drawn as lib/run/charts.ts draws it (faint per-step
 * values, a bold smoothed line) with the held-out evaluations as dots. The panels are placed
 * side by side in one SVG; `svgToPng` renders it with sharp.
 */
import sharp from 'sharp';
import { MomaError } from '../errors';
import { ChartSeries, lineChartSpec, renderSvg, sideBySide } from '../run/charts';

/** A variant's points: total cumulative training FLOPs and the loss of each key (null where absent). */
export interface VariantLossPoints {
  name: string;
  steps: { flops: number; loss: Record<string, number | null> }[];
  heldOut: { flops: number; loss: Record<string, number | null> }[];
}

/** Line colours by variant position: the baseline (first) dark grey, then Vega's category10. */
const PALETTE = ['#444444', '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#bcbd22', '#17becf'];

function seriesOf(variants: VariantLossPoints[], key: string, pick: (v: VariantLossPoints) => VariantLossPoints['steps']): ChartSeries[] {
  return variants.map((v) => ({ name: v.name, points: pick(v).map((p) => [p.flops, p.loss[key] ?? null] as [number, number | null]) }));
}

/** The figure as one SVG: a panel per key (default overall, text, image), the first variant in grey. */
export async function lossVsFlopsSvg(variants: VariantLossPoints[], keys: string[] = ['overall', 'text', 'image']): Promise<string> {
  if (!Array.isArray(variants) || variants.length === 0) throw new MomaError('ERR_ARG', 'plots.lossVsFlopsSvg: needs at least one variant');
  if (!Array.isArray(keys) || keys.length === 0 || keys.some((k) => typeof k !== 'string')) throw new MomaError('ERR_ARG', 'plots.lossVsFlopsSvg: keys must be a non-empty array of strings');
  variants.forEach((v, i) => {
    if (typeof v?.name !== 'string' || !Array.isArray(v.steps) || !Array.isArray(v.heldOut)) {
      throw new MomaError('ERR_ARG', `plots.lossVsFlopsSvg: variant ${i} needs a name, steps and heldOut`);
    }
  });
  const colors = Object.fromEntries(variants.map((v, i) => [v.name, PALETTE[i % PALETTE.length] as string]));
  const panels = await Promise.all(keys.map((key) => renderSvg(lineChartSpec({
    title: `${key} loss against training compute`,
    subtitle: 'faint: each step; bold: smoothed; dots: held-out',
    xTitle: 'cumulative training FLOPs (all modalities)', yTitle: 'loss (nats per token)', xScale: 'log', yScale: 'log',
    legendTitle: 'variant', colors, width: 380, height: 260,
    series: seriesOf(variants, key, (v) => v.steps),
    markers: seriesOf(variants, key, (v) => v.heldOut),
  }))));
  return sideBySide(panels);
}

/** An SVG rendered to PNG at twice its size. */
export async function svgToPng(svg: string): Promise<Buffer> {
  if (typeof svg !== 'string' || !svg.includes('<svg')) throw new MomaError('ERR_ARG', 'plots.svgToPng: needs an SVG document string');
  return sharp(Buffer.from(svg), { density: 144 }).png().toBuffer();
}
