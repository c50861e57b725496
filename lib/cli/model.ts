/**
 * `moma model list` and `moma model info PRESET`: presets, parameter counts, FLOPs per row and the
 * per-rank training memory for a world size, sharding and queue regime (lib/train/memory_model.ts
 * memoryPerRank); no tensors allocated.
 */
import { Command } from 'commander';
import { MomaError } from '../errors';
import { defaultRouter, moeLayoutOf, MoeGroupConfig } from '../moe/moma_ffn';
import { countParameters, FlopsReport, forwardFlopsPerRow, ParameterCount } from '../model/params';
import { describePreset, listPresets, preset } from '../model/presets';
import { TransformerConfig, validateConfig } from '../model/transformer';
import { MemoryEstimate, memoryPerRank, QueueRegime, unitParameters } from '../train/memory_model';
import { checkSharding, Sharding } from '../train/zero';

export interface ModelInfo {
  name: string;
  description: string;
  config: TransformerConfig;
  parameters: ParameterCount;
  flopsPerRow: FlopsReport;
  /** Training memory per rank, bytes (float32 parameters, gradients and AdamW state). */
  memory: MemoryEstimate & { batchSize: number; seqLen: number };
}

export interface ModelInfoOptions {
  /** Sequence length of the FLOPs (default 4096). */
  seqLen?: number;
  /** Sequence length of the activation estimate (default: seqLen). */
  activationSeqLen?: number;
  /** Sequences per micro-batch of the activation estimate (default 1). */
  batchSize?: number;
  /** Ranks of data-parallel training (default 1). */
  worldSize?: number;
  sharding?: Sharding;
  /** How the device queue frees memory (default 'launched': CUDA, where the presets train; 'queued': the CPU). */
  regime?: QueueRegime;
}

/** Everything `moma model info` prints, as an object. */
export function modelInfo(name: string, options: ModelInfoOptions = {}): ModelInfo {
  const config = preset(name);
  const seqLen = options.seqLen ?? 4096;
  const batch = { batchSize: options.batchSize ?? 1, seqLen: options.activationSeqLen ?? seqLen };
  const memory = memoryPerRank(config, { worldSize: options.worldSize ?? 1, sharding: checkSharding(options.sharding, 'model info: sharding'), regime: options.regime ?? 'launched', ...batch });
  return {
    name: name.trim().toLowerCase(), description: describePreset(name), config,
    parameters: countParameters(config), flopsPerRow: forwardFlopsPerRow(config, { seqLen }), memory: { ...memory, ...batch },
  };
}

/** 3.2e9 → "2.98 GiB". */
function bytesText(n: number): string {
  const units: [number, string][] = [[2 ** 40, 'TiB'], [2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB']];
  for (const [scale, unit] of units) if (n >= scale) return `${(n / scale).toFixed(2)} ${unit}`;
  return `${n} B`;
}

/** 92_307_456 → "92.3M", 1_476_800_000 → "1.48B". */
export function human(n: number): string {
  const units: [number, string][] = [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'K']];
  for (const [scale, unit] of units) {
    if (Math.abs(n) >= scale) {
      const v = n / scale;
      return `${v >= 100 ? v.toFixed(1) : v >= 10 ? v.toFixed(2) : v.toFixed(3)}${unit}`;
    }
  }
  return String(Math.round(n * 1000) / 1000);
}

const exact = (n: number): string => (Number.isInteger(n) ? n.toLocaleString('en-US') : n.toLocaleString('en-US', { maximumFractionDigits: 1 }));

function expertsText(config: TransformerConfig): string {
  if (config.ffn.kind === 'dense') return 'dense';
  const modalities = config.modalities ?? ['text', 'image'];
  const groups = config.ffn.groups as MoeGroupConfig[];
  moeLayoutOf({ groups, modalities });
  return groups.map((g) => `${g.experts}×${Array.isArray(g.modality) ? g.modality.join('+') : g.modality}`).join(', ');
}

function printInfo(info: ModelInfo): void {
  const c = info.config;
  const p = info.parameters;
  const fl = info.flopsPerRow;
  const ffn = c.ffn;
  const mod = validateConfig(c).mod;
  const pad = (s: string, n = 24): string => s.padEnd(n);
  const lines = [
    `${info.name}: ${info.description}`,
    '',
    'config',
    `  ${pad('vocabSize')}${c.vocabSize}`,
    `  ${pad('dModel')}${c.dModel}`,
    `  ${pad('layers')}${c.layers}`,
    `  ${pad('heads')}${c.heads} (head size ${c.dModel / c.heads})`,
    `  ${pad('ffn')}${ffn.kind}, SwiGLU hidden ${ffn.dFF}${ffn.kind === 'moe' ? `; experts ${expertsText(c)}; capacity factor ${ffn.capacityFactor ?? 1}; router ${ffn.router ?? defaultRouter(ffn.routing)}; ${ffn.routing ?? 'expert-choice'}` : ''}`,
    `  ${pad('mod')}${mod ? `interval ${mod.interval}, capacity ${mod.capacity} (${p.modLayers} MoD layers)` : 'none'}`,
    `  ${pad('modalities')}${(c.modalities ?? ['text', 'image']).join(', ')}`,
    `  ${pad('norm')}${c.norm ?? 'swin'}, zLoss ${c.zLoss ?? 0}, initStd ${c.initStd ?? 0.02}, seed ${c.seed ?? 0}`,
    '',
    'parameters',
    `  ${pad('total')}${exact(p.total)} (${human(p.total)})`,
    `  ${pad('active per token')}${exact(p.active)} (${human(p.active)}; ${p.activeExpertsPerRow} of ${p.expertsPerLayer} expert FFNs per layer)`,
    ...Object.entries(p.components).map(([k, v]) => `  ${pad(`  ${k}`)}${exact(v)} (${human(v)})`),
    '',
    `forward FLOPs per row (expected; attention span L_t = seq/2 = ${fl.attendedKeys} at seq ${fl.seqLen}; MoD layers scaled by c_d)`,
    `  ${pad('excluding scores')}${human(fl.overall.excludingScores)}`,
    `  ${pad('  attn projections')}${human(fl.overall.attentionProjections)}`,
    `  ${pad('  ffn')}${human(fl.overall.ffn)}`,
    `  ${pad('  routers')}${human(fl.overall.routers)}`,
    `  ${pad('  lm head')}${human(fl.overall.lmHead)}`,
    `  ${pad('attention scores')}${human(fl.overall.attentionScores)} (4·d·L_t)`,
    `  ${pad('total')}${human(fl.overall.total)} (training 3×: ${human(fl.overall.training)})`,
  ];
  const mods = Object.entries(fl.perModality);
  if (mods.some(([, b]) => b.total !== fl.overall.total)) {
    for (const [m, b] of mods) lines.push(`  ${pad(`  ${m}`)}${human(b.total)}`);
  }
  const m = info.memory;
  const R = m.worldSize;
  const sharded = m.sharding !== 'none' && R > 1;
  const units = unitParameters(c);
  const parametersText = sharded && m.sharding === 'zero3'
    ? `the root's ${human(units.root)} whole, 1/${R} of the blocks' ${human(p.total - units.root)}; each block gathered while it runs`
    : `4 B × ${human(p.total)}, full on every rank`;
  const gradientsText = !sharded || m.sharding === 'zero1'
    ? 'full, through the update'
    : m.sharding === 'zero2'
      ? `this rank's 1/${R} through the update; the full ${bytesText(m.backwardGradients)} at the end of the backward`
      : `this rank's 1/${R} through the update; the root's full gradients and the blocks' shards, ${bytesText(m.backwardGradients)}, at the end of the backward`;
  const regimeText = m.regime === 'launched' ? 'CUDA: the queue frees each tensor as the host drops it' : 'CPU: the whole forward and backward queued before the first tensor is freed';
  lines.push(
    '',
    `training memory per rank (${R} rank${R > 1 ? 's' : ''}, sharding ${m.sharding}${m.sharding !== 'none' && R === 1 ? ': nothing to shard on one rank' : ''}; float32, AdamW; ${m.regime} regime, ${regimeText})`,
    `  ${pad('parameters')}${bytesText(m.parameters)} (${parametersText})`,
    `  ${pad('gradients')}${bytesText(m.gradients)} (${gradientsText})`,
    `  ${pad('optimizer')}${bytesText(m.optimizer)} (AdamW moments, 8 B per parameter${sharded ? `, 1/${R} on each rank` : ''})`,
    `  ${pad('activations')}${bytesText(m.activations)} (what the forward of one micro-batch of ${m.batchSize} × ${m.seqLen} tokens ${m.regime === 'queued' ? 'allocates' : 'keeps'}${sharded && m.sharding === 'zero3' ? (m.regime === 'queued' ? ', with every block\'s gathered parameters' : ', the blocks\' outputs only: each block is recomputed in its backward') : ''})`,
    `  ${pad('backward')}${bytesText(m.backward)} (${m.regime === 'queued' ? 'everything the backward allocates besides the gradients' : 'what the backward holds besides the gradients at its largest moment'})`,
    `  ${pad('peak')}${bytesText(m.total)} (the larger of the end of the backward ${bytesText(m.backwardMoment)} and the update ${bytesText(m.updateMoment)})`,
  );
  console.log(lines.join('\n'));
}

/** The --regime value, checked. */
function queueRegime(text: string): QueueRegime {
  if (text !== 'launched' && text !== 'queued') throw new MomaError('ERR_ARG', `--regime must be 'launched' or 'queued', got '${text}'`);
  return text;
}

/** Adds the `model` command group (list, info) to the program. */
export function registerModelCommands(program: Command): void {
  const model = program.command('model').description('model presets: configs, parameter counts and FLOPs per row');
  model
    .command('list')
    .description('list the presets with their shape and parameter counts')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }) => {
      const rows = listPresets().map((name) => {
        const config = preset(name);
        const params = countParameters(config);
        return { name, description: describePreset(name), layers: config.layers, dModel: config.dModel, dFF: config.ffn.dFF, heads: config.heads, experts: expertsText(config), mod: config.mod !== null && config.mod !== undefined, total: params.total, active: params.active };
      });
      if (opts.json) {
        console.log(JSON.stringify(rows, null, 2));
        return;
      }
      const header = ['preset', 'layers', 'd', 'f', 'heads', 'experts', 'MoD', 'total', 'active'];
      const table = rows.map((r) => [r.name, String(r.layers), String(r.dModel), String(r.dFF), String(r.heads), r.experts, r.mod ? 'yes' : '', human(r.total), human(r.active)]);
      const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i]!.length)));
      const fmt = (row: string[]): string => row.map((cell, i) => (i === 0 || i === 5 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ').trimEnd();
      console.log([fmt(header), ...table.map(fmt)].join('\n'));
    });
  model
    .command('info')
    .description('show a preset: config, parameter breakdown (total, per component, active per token) and forward FLOPs per row')
    .argument('<preset>', `preset name (see moma model list)`)
    .option('--json', 'print JSON')
    .option('--seq <n>', 'sequence length for the attention-score FLOPs (L_t = seq/2)', '4096')
    .option('--seq-len <n>', 'sequence length of the activation estimate (default: --seq)')
    .option('--batch-size <n>', 'sequences per micro-batch of the activation estimate', '1')
    .option('--world-size <n>', 'data-parallel ranks of the per-rank memory', '1')
    .option('--sharding <kind>', 'none, zero1 (AdamW moments sharded), zero2 (gradients too) or zero3 (the blocks\' parameters too)', 'none')
    .option('--regime <kind>', 'how the device queue frees memory: launched (CUDA) or queued (the CPU: the worker runs behind the host)', 'launched')
    .action((name: string, opts: { json?: boolean; seq: string; seqLen?: string; batchSize: string; worldSize: string; sharding: string; regime: string }) => {
      const integer = (text: string, flag: string): number => {
        const n = Number(text);
        if (!Number.isInteger(n) || n < 1) throw new MomaError('ERR_ARG', `${flag} must be an integer >= 1, got '${text}'`);
        return n;
      };
      const seqLen = integer(opts.seq, '--seq');
      const info: ModelInfo = modelInfo(name, {
        seqLen, activationSeqLen: opts.seqLen === undefined ? seqLen : integer(opts.seqLen, '--seq-len'), batchSize: integer(opts.batchSize, '--batch-size'),
        worldSize: integer(opts.worldSize, '--world-size'), sharding: checkSharding(opts.sharding, '--sharding'), regime: queueRegime(opts.regime),
      });
      if (opts.json) console.log(JSON.stringify(info, null, 2));
      else printInfo(info);
    });
}
