/**
 * `moma train-aux [--checkpoint DIR]`: the second training stage (auxiliary routers learn to predict the batch top-k choices from each row alone, for causal inference): trains the auxiliary
 * routers of a checkpoint against its batch top-k selections with the main model frozen, saves
 * them into the checkpoint and prints each router's held-out BCE, accuracy, precision and recall.
 */
import { Command } from 'commander';
import { normalizeDevice } from '../device';
import { MomaError } from '../errors';
import { AUX_DEFAULTS, AuxTrainSummary, trainAuxRouters } from '../run/aux_train';
import type { AuxRouterMetrics } from '../train/causal_eval';
import { shownPath } from './paths';

interface AuxFlags {
  checkpoint?: string; steps?: string; lr?: string; lrEnd?: string; warmup?: string; seed?: string; data?: string;
  device?: string; evalEvery?: string; json?: boolean;
}

function numberFlag(value: string | undefined, flag: string, integer: boolean): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new MomaError('ERR_ARG', `train-aux: ${flag} must be ${integer ? 'an integer' : 'a number'}, got '${value}'`);
  }
  return n;
}

const pct = (x: number): string => (Number.isNaN(x) ? '-' : `${(100 * x).toFixed(1)}%`);

/** Rows of a per-router table (shared with moma eval --causal). */
export function routerTable(metrics: AuxRouterMetrics[], before?: AuxRouterMetrics[]): string[] {
  const head = ['layer', 'router', 'modality', before ? 'BCE before' : '', 'BCE', 'accuracy', 'precision', 'recall', 'selected', 'predicted'].filter((h) => h !== '');
  const rows = metrics.map((m, i) => [
    String(m.layer), m.kind === 'depth' ? 'MoD' : `experts g${m.group}`, m.modality,
    ...(before ? [Number.isNaN(before[i]!.bce) ? '-' : before[i]!.bce.toFixed(3)] : []),
    Number.isNaN(m.bce) ? '-' : m.bce.toFixed(3), pct(m.accuracy), pct(m.precision), pct(m.recall), pct(m.selected), pct(m.predicted),
  ]);
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]): string => cells.map((cell, c) => (c < 3 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  return [line(head), ...rows.map(line)];
}

function printSummary(s: AuxTrainSummary): void {
  console.log(`${s.stopped ? 'stopped' : 'done'}: ${s.steps} steps in ${s.seconds.toFixed(1)} s; training BCE (sum over routers) ${s.trainLoss.first.toFixed(3)} → ${s.trainLoss.last.toFixed(3)}`);
  if (s.after.length > 0) {
    console.log('held-out, against the batch top-k selections:');
    for (const line of routerTable(s.after, s.before)) console.log(`  ${line}`);
  }
  console.log(`saved ${shownPath(s.file)}`);
}

export function registerAuxCommands(program: Command): void {
  program
    .command('train-aux')
    .description('train the auxiliary routers of a checkpoint (main model frozen) so that it can route causally: moma eval --causal, moma generate')
    .option('--checkpoint <dir>', 'checkpoint or run folder (default: the newest run under ./runs)')
    .option('--steps <n>', `training steps (default ${AUX_DEFAULTS.steps})`)
    .option('--lr <x>', `peak learning rate (default ${AUX_DEFAULTS.lr})`)
    .option('--lr-end <x>', `final learning rate, reached linearly (default ${AUX_DEFAULTS.lrEnd})`)
    .option('--warmup <n>', `linear warm-up steps (default min(${AUX_DEFAULTS.warmup}, steps / 10))`)
    .option('--seed <n>', "router init and data order (default: the run's seed + 1)")
    .option('--data <dir>', "'builtin' or a shard-set folder (default: the run's data)")
    .option('--device <device>', 'cpu or cuda:N (default: the device the checkpoint was trained on)')
    .option('--eval-every <n>', 'held-out metrics every n steps (default 0: before and after only)')
    .option('--json', 'print the summary as JSON')
    .action(async (flags: AuxFlags) => {
      const controller = new AbortController();
      const onInterrupt = (): void => controller.abort();
      process.on('SIGINT', onInterrupt);
      process.on('SIGTERM', onInterrupt);
      const say = flags.json ? (line: string): void => void process.stderr.write(line + '\n') : (line: string): void => console.log(line);
      try {
        const summary = await trainAuxRouters({
          checkpoint: flags.checkpoint, steps: numberFlag(flags.steps, '--steps', true), lr: numberFlag(flags.lr, '--lr', false),
          lrEnd: numberFlag(flags.lrEnd, '--lr-end', false), warmup: numberFlag(flags.warmup, '--warmup', true), seed: numberFlag(flags.seed, '--seed', true),
          data: flags.data, device: flags.device === undefined ? undefined : normalizeDevice(flags.device, 'train-aux: --device'), evalEvery: numberFlag(flags.evalEvery, '--eval-every', true),
        }, {
          signal: controller.signal,
          onStart: (info) => say(`moma train-aux: ${info.routers} auxiliary routers (${info.parameters} parameters) of ${shownPath(info.checkpoint)}, ${info.steps} steps`),
          onStep: (r) => {
            if (r.step === 1 || r.step % 100 === 0) say(`  step ${r.step}  lr ${r.lr.toExponential(2)}  BCE ${r.loss.toFixed(4)}  ${(r.seconds * 1000).toFixed(0)} ms`);
          },
        });
        if (flags.json) console.log(JSON.stringify(summary, null, 2));
        else printSummary(summary);
        if (summary.stopped) process.exitCode = 130;
      } finally {
        process.off('SIGINT', onInterrupt);
        process.off('SIGTERM', onInterrupt);
      }
    });
}
