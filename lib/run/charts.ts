/**
 * Line charts for run reports, as Vega (v5) specs rendered headless to SVG strings (no browser,
 * no canvas, no network). A chart has named series, each drawn as its raw values in a faint
 * line plus an exponentially smoothed line in full colour, and optional marker series (held-out
 * evaluations) drawn as dots in the series colours. `sideBySide` places finished SVGs in a row
 * (report.svg); sharp renders that to PNG.
 */
import * as vega from 'vega';
import { MomaError } from '../errors';

export interface ChartSeries {
  name: string;
  /** Points [x, y]; points whose y is not finite are skipped (a modality absent from a batch). */
  points: [number, number | null][];
}

export interface LineChartOptions {
  title: string;
  subtitle?: string;
  xTitle: string;
  yTitle: string;
  xScale?: 'linear' | 'log';
  /** 'log' suits losses that fall over orders of magnitude; points with y <= 0 are then skipped. */
  yScale?: 'linear' | 'log';
  width?: number;
  height?: number;
  /** Series drawn as raw (faint) and smoothed lines. */
  series: ChartSeries[];
  /** Series drawn as dots (matched to line colours by name). */
  markers?: ChartSeries[];
  /** Legend title (the legend shows when there are several series; default 'series'). */
  legendTitle?: string;
  /** Colours by series name (default: Vega's category palette, or `scheme`). */
  colors?: Record<string, string>;
  /** A Vega colour scheme sampled once per series in order (e.g. 'viridis' for layers 0…L−1), when `colors` is not given. */
  scheme?: string;
  /** Bounds the y axis always shows (the data may widen it), e.g. 0 and 1 for a share. */
  yMin?: number;
  yMax?: number;
  /** Draw the raw line only (no smoothing), e.g. a learning-rate schedule. */
  raw?: boolean;
  /** d3 number format of the y axis (default '~g'; '~s' for SI prefixes such as 12k). */
  yFormat?: string;
}

/** Points kept per line; longer series are thinned evenly (the smoothing still sees every point). */
const MAX_POINTS = 1500;

/**
 * Centred moving average: entry i averages the finite values in [i − h, i + h] with
 * h = min(halfWidth, i, n − 1 − i), so the window shrinks symmetrically at both ends and the
 * smoothed line never lags the raw one (an EMA's lag shows as a shift on a log-FLOPs axis).
 * Entries that are null or not finite stay null.
 */
export function centredMean(values: (number | null)[], halfWidth: number): (number | null)[] {
  if (!Number.isInteger(halfWidth) || halfWidth < 0) throw new MomaError('ERR_ARG', `charts.centredMean: halfWidth must be an integer >= 0, got ${String(halfWidth)}`);
  const n = values.length;
  const sums = new Float64Array(n + 1);
  const counts = new Int32Array(n + 1);
  values.forEach((v, i) => {
    const ok = v !== null && Number.isFinite(v);
    sums[i + 1] = sums[i]! + (ok ? (v as number) : 0);
    counts[i + 1] = counts[i]! + (ok ? 1 : 0);
  });
  return values.map((v, i) => {
    if (v === null || !Number.isFinite(v)) return null;
    const h = Math.min(halfWidth, i, n - 1 - i);
    return (sums[i + h + 1]! - sums[i - h]!) / (counts[i + h + 1]! - counts[i - h]!);
  });
}

/** Half-width of the smoothing window for a series of n points: about n/100, between 1 and 12. */
export function smoothingHalfWidth(n: number): number {
  return Math.min(12, Math.max(1, Math.round(n / 100)));
}

interface Row {
  x: number;
  y: number;
  series: string;
  layer: 'raw' | 'smooth';
}

function thin<T>(items: T[]): T[] {
  if (items.length <= MAX_POINTS) return items;
  const stride = items.length / MAX_POINTS;
  const out: T[] = [];
  for (let i = 0; i < MAX_POINTS; i++) out.push(items[Math.floor(i * stride)] as T);
  out.push(items[items.length - 1] as T);
  return out;
}

function rowsOf(series: ChartSeries, layer: Row['layer'], log: { x: boolean; y: boolean }): Row[] {
  return series.points
    .filter(([x, y]) => y !== null && Number.isFinite(y) && Number.isFinite(x) && (!log.x || x > 0) && (!log.y || y > 0))
    .map(([x, y]) => ({ x, y: y as number, series: series.name, layer }));
}

function checkSeries(series: ChartSeries[], what: string): void {
  if (!Array.isArray(series)) throw new MomaError('ERR_ARG', `charts.lineChartSpec: ${what} must be an array`);
  for (const s of series) {
    if (typeof s?.name !== 'string' || !Array.isArray(s.points) || s.points.some((p) => !Array.isArray(p) || p.length !== 2)) {
      throw new MomaError('ERR_ARG', `charts.lineChartSpec: ${what} entry ${JSON.stringify(s?.name)} needs a name and points [x, y]`);
    }
  }
}

/** A Vega spec for one line chart (see the module comment). */
export function lineChartSpec(options: LineChartOptions): vega.Spec {
  checkSeries(options.series, 'series');
  checkSeries(options.markers ?? [], 'markers');
  const log = { x: options.xScale === 'log', y: options.yScale === 'log' };
  const lines: Row[] = [];
  for (const s of options.series) {
    if (options.raw === true) {
      lines.push(...thin(rowsOf(s, 'smooth', log)));
      continue;
    }
    const smooth = centredMean(s.points.map(([, y]) => y), smoothingHalfWidth(s.points.length));
    lines.push(...thin(rowsOf(s, 'raw', log)));
    lines.push(...thin(rowsOf({ name: s.name, points: s.points.map(([x], i) => [x, smooth[i] ?? null]) }, 'smooth', log)));
  }
  const markers = (options.markers ?? []).flatMap((s) => rowsOf(s, 'smooth', log));
  const names = [...new Set([...options.series, ...(options.markers ?? [])].map((s) => s.name))];
  const colorRange = options.colors ? names.map((n) => options.colors![n] ?? '#555555') : options.scheme !== undefined ? { scheme: options.scheme, count: names.length } : { scheme: 'category10' };
  const fields = (field: string): vega.ScaleDataRef[] => [{ data: 'lines', field }, { data: 'markers', field }];
  const yBounds = [options.yMin, options.yMax].filter((y): y is number => typeof y === 'number' && Number.isFinite(y) && (!log.y || y > 0)).map((y) => ({ y }));
  return {
    $schema: 'https://vega.github.io/schema/vega/v5.json',
    width: options.width ?? 420,
    height: options.height ?? 260,
    padding: 8,
    background: 'white',
    title: { text: options.title, subtitle: options.subtitle, anchor: 'start', fontSize: 14, subtitleFontSize: 11 },
    data: [
      { name: 'lines', values: lines },
      { name: 'markers', values: markers },
      { name: 'yBounds', values: yBounds },
    ],
    scales: [
      { name: 'x', type: log.x ? 'log' : 'linear', domain: { fields: fields('x') }, range: 'width', nice: !log.x, zero: false },
      { name: 'y', type: log.y ? 'log' : 'linear', domain: { fields: [...fields('y'), { data: 'yBounds', field: 'y' }] }, range: 'height', nice: !log.y, zero: false },
      { name: 'color', type: 'ordinal', domain: names, range: colorRange as vega.RangeScheme },
    ],
    axes: [
      { orient: 'bottom', scale: 'x', title: options.xTitle, format: '~s', grid: true, gridOpacity: 0.4, tickCount: 6 },
      { orient: 'left', scale: 'y', title: options.yTitle, grid: true, gridOpacity: 0.4, format: options.yFormat ?? '~g' },
    ],
    legends: names.length > 1 ? [{ stroke: 'color', title: options.legendTitle ?? 'series', symbolType: 'stroke' }] : [],
    marks: [
      {
        type: 'group',
        from: { facet: { name: 'line', data: 'lines', groupby: ['series', 'layer'] } },
        marks: [{
          type: 'line',
          from: { data: 'line' },
          encode: {
            enter: {
              x: { scale: 'x', field: 'x' },
              y: { scale: 'y', field: 'y' },
              stroke: { scale: 'color', field: 'series' },
              strokeOpacity: { signal: "datum.layer === 'raw' ? 0.25 : 1" },
              strokeWidth: { signal: "datum.layer === 'raw' ? 1 : 2" },
            },
          },
        }],
      },
      {
        type: 'symbol',
        from: { data: 'markers' },
        encode: {
          enter: {
            x: { scale: 'x', field: 'x' },
            y: { scale: 'y', field: 'y' },
            fill: { scale: 'color', field: 'series' },
            stroke: { value: 'white' },
            strokeWidth: { value: 1 },
            size: { value: 50 },
          },
        },
      },
    ],
  };
}

/** Renders a Vega spec to an SVG document string. */
export async function renderSvg(spec: vega.Spec): Promise<string> {
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

function svgSize(svg: string): { width: number; height: number } {
  const open = /<svg\b[^>]*>/.exec(svg)?.[0] ?? '';
  const width = Number(/\bwidth="([\d.]+)"/.exec(open)?.[1]);
  const height = Number(/\bheight="([\d.]+)"/.exec(open)?.[1]);
  if (!(width > 0 && height > 0)) throw new MomaError('ERR_ARG', 'charts.sideBySide: an input is not an SVG with width and height');
  return { width, height };
}

/** One SVG holding the given SVGs in a row, on a white background. */
export function sideBySide(svgs: string[], gap = 16): string {
  if (!Array.isArray(svgs) || svgs.length === 0) throw new MomaError('ERR_ARG', 'charts.sideBySide: needs at least one SVG');
  let x = 0;
  let height = 0;
  const parts = svgs.map((svg) => {
    const size = svgSize(svg);
    const placed = svg.replace(/^\s*(<\?xml[^>]*>\s*)?<svg\b/, `<svg x="${x}" y="0"`);
    x += size.width + gap;
    height = Math.max(height, size.height);
    return placed;
  });
  const width = x - gap;
  return `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`
    + `<rect width="${width}" height="${height}" fill="white"/>${parts.join('')}</svg>`;
}
