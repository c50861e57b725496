/**
 * `moma train` and `moma report`: a thin layer over trainRun (lib/run/run.ts) and writeReport.
 *
 * train shows a progress bar on a terminal (step, loss text / image, tokens/s, ETA), one line
 * every few steps elsewhere (CI, pipes), or the metrics records as JSON lines with --json-log
 * (human messages then go to stderr, so stdout stays JSON). The first Ctrl-C stops after the
 * current step, checkpoints, writes the report, prints how to resume and exits with 130; a second
 * one exits at once.
 */
import * as path from 'path';
import { Command } from 'commander';
import { shownPath } from './paths';
import * as cliProgress from 'cli-progress';
import type { EvalRecord, StepRecord } from '../run/records';
import { firstLabel, formatDuration, formatSI, LossRow, writeReport } from '../run/report';
import { RunStartInfo, RunSummary, SkipRecord, trainRun } from '../run/run';
import { RUN_DEFAULTS } from '../run/run_config';
import { init, isInitialized, world } from '../distributed/process_group';
import { worldFromEnv } from '../distributed/env';

interface TrainFlags {
  preset?: string;
  config?: string;
  data?: string;
  device?: string;
  steps?: string;
  batchSize?: string;
  seqLen?: string;
  lr?: string;
  warmup?: string;
  seed?: string;
  imageFraction?: string;
  evalEvery?: string;
  evalBatches?: string;
  checkpointEvery?: string;
  logEvery?: string;
  gradAccum?: string;
  sharding?: string;
  expertParallel?: string;
  skipNonfinite?: string;
  dtype?: string;
  resume?: string;
  out?: string;
  jsonLog?: boolean;
}

function lossText(value: number | null | undefined): string {
  return value === null || value === undefined || !Number.isFinite(value) ? '  -   ' : value.toFixed(3);
}

/** How progress is shown: JSON lines, plain lines, or a bar. */
interface Progress {
  start(info: RunStartInfo): void;
  step(record: StepRecord): void;
  eval(record: EvalRecord): void;
  /** Steps with a non-finite loss or gradient norm were skipped. */
  skip(record: SkipRecord): void;
  stop(): void;
}

function skipText(r: SkipRecord): string {
  return `step ${r.step}: skipped ${r.skipped} step(s) with a non-finite loss or gradient norm (first at step ${r.firstStep}); ${r.total} of the allowed ${r.budget} skipped so far`;
}

function jsonProgress(): Progress {
  return {
    start: () => undefined,
    step: (r) => console.log(JSON.stringify(r)),
    eval: (r) => console.log(JSON.stringify(r)),
    skip: (r) => console.log(JSON.stringify(r)),
    stop: () => undefined,
  };
}

/** About 20 lines a run: the first record, then the first record past each 5% of the steps, and the last. */
function lineProgress(say: (line: string) => void): Progress {
  let total = 0;
  let every = 1;
  let began = 0;
  let firstStep = 0;
  let shown = -1;
  return {
    start(info) {
      total = info.settings.steps;
      every = Math.max(1, Math.round((total - info.startStep) / 20));
      began = Date.now();
      firstStep = info.startStep;
      shown = -1;
    },
    step(r) {
      if (shown >= 0 && Math.floor(r.step / every) === Math.floor(shown / every) && r.step !== total) return;
      shown = r.step;
      const elapsed = (Date.now() - began) / 1000;
      const eta = (elapsed / (r.step - firstStep)) * (total - r.step);
      say(`step ${r.step}/${total}  loss ${lossText(r.loss)} (text ${lossText(r.lossPerModality.text)}, image ${lossText(r.lossPerModality.image)})  ${Math.round(r.tokensPerSecond)} tok/s  elapsed ${formatDuration(elapsed)}  eta ${formatDuration(eta)}`);
    },
    eval(r) {
      say(`held-out at step ${r.step}: loss ${lossText(r.loss)} (text ${lossText(r.lossPerModality.text)}, image ${lossText(r.lossPerModality.image)})`);
    },
    skip: (r) => say(skipText(r)),
    stop: () => undefined,
  };
}

/** The bar fits 80 columns: step, bar, loss text / image, tokens/s, ETA (held-out losses come in the summary). */
function barProgress(): Progress {
  const bar = new cliProgress.SingleBar({
    format: 'step {value}/{total} {bar} text {text} image {image} | {tps} tok/s | ETA {eta_formatted}',
    barsize: 16, barCompleteChar: '█', barIncompleteChar: '░', hideCursor: true, etaBuffer: 50, stream: process.stderr,
  });
  let running = false;
  return {
    start(info) {
      bar.start(info.settings.steps, info.startStep, { text: '-', image: '-', tps: '-' });
      running = true;
    },
    step(r) {
      bar.update(r.step, { text: lossText(r.lossPerModality.text), image: lossText(r.lossPerModality.image), tps: Math.round(r.tokensPerSecond) });
    },
    eval: () => undefined,
    skip: (r) => void process.stderr.write(`\n${skipText(r)}\n`),
    stop() {
      if (running) bar.stop();
      running = false;
    },
  };
}

function lossTable(summary: RunSummary): string[] {
  const keys = Object.keys(summary.loss.first).length > 0 ? Object.keys(summary.loss.first) : ['overall'];
  const rows: [string, LossRow][] = [[firstLabel(summary), summary.loss.first], [`final (last ${summary.loss.finalWindow})`, summary.loss.final]];
  if (summary.heldOut) rows.push([`held-out (step ${summary.heldOut.step})`, summary.heldOut.loss]);
  const width = Math.max(...rows.map(([label]) => label.length), 4) + 2;
  return [
    `${'loss'.padEnd(width)}${keys.map((k) => k.padStart(9)).join('')}`,
    ...rows.map(([label, row]) => `${label.padEnd(width)}${keys.map((k) => lossText(row[k]).padStart(9)).join('')}`),
  ];
}

function printSummary(summary: RunSummary, say: (line: string) => void): void {
  const s = summary.session;
  say(`${summary.stopped ? 'stopped' : 'done'} at step ${summary.steps} in ${formatDuration(summary.wallSeconds)}: ${s.steps} steps, ${formatSI(s.tokens)} tokens this session `
    + `(${formatSI(s.tokensPerSecond)} tokens/s); run total ${formatSI(summary.tokens)} tokens, ${formatSI(summary.flops.total)} training FLOPs`);
  for (const line of lossTable(summary)) say(`  ${line}`);
  say(`results in ${shownPath(summary.runDir)}:`);
  if (summary.report !== null) say(`  report      ${shownPath(summary.report.html)} (picture: ${path.basename(summary.report.png)}, ${path.basename(summary.report.svg)})`);
  say(`  metrics     ${shownPath(path.join(summary.runDir, 'metrics.jsonl'))}`);
  say(`  checkpoint  ${shownPath(summary.checkpoint)}`);
}

/** Under `moma launch` (or torchrun, srun, mpirun) with more than one rank: joins the process group; true on ranks other than 0. */
async function joinRanks(device: string | undefined): Promise<boolean> {
  if (worldFromEnv().worldSize === 1) return false;
  if (!isInitialized()) await init(device === 'cpu' ? { device: 'cpu' } : {});
  return world().rank !== 0;
}

const quietProgress: Progress = { start: () => undefined, step: () => undefined, eval: () => undefined, skip: () => undefined, stop: () => undefined };

async function runTrain(flags: TrainFlags): Promise<void> {
  const { config, resume, jsonLog, ...settings } = flags;
  // data parallel: rank 0 reports; the other ranks train silently (their errors still reach stderr)
  const quiet = await joinRanks(settings.device);
  const say = quiet ? (): void => undefined : jsonLog ? (line: string): void => void process.stderr.write(line + '\n') : (line: string): void => console.log(line);
  const progress = quiet ? quietProgress : jsonLog ? jsonProgress() : process.stderr.isTTY ? barProgress() : lineProgress(say);
  const controller = new AbortController();
  let interrupts = 0;
  const onInterrupt = (): void => {
    interrupts++;
    if (interrupts > 1) process.exit(130);
    progress.stop();
    say(isInitialized() && world().worldSize > 1
      ? 'stopping at the next logged step, on every rank (Ctrl-C again quits at once, without a checkpoint)…'
      : 'stopping after the current step (Ctrl-C again quits at once, without a checkpoint)…');
    controller.abort();
  };
  process.on('SIGINT', onInterrupt);
  process.on('SIGTERM', onInterrupt);
  let summary: RunSummary;
  try {
    summary = await trainRun({ flags: settings, configFile: config, resume }, {
      signal: controller.signal,
      onStart(info) {
        const what = info.resumedFrom ? `resuming ${shownPath(info.runDir)} from step ${info.startStep}` : `training into ${shownPath(info.runDir)}`;
        const ranks = isInitialized() ? world().worldSize : 1;
        const accum = info.settings.gradAccum ?? 1;
        const experts = info.settings.expertParallel ?? 1;
        const batch = ranks * accum === 1 ? `${info.settings.batchSize}`
          : `(${ranks > 1 ? `${ranks} ranks × ` : ''}${accum > 1 ? `${accum} micro-batches × ` : ''}${info.settings.batchSize})`;
        say(`moma train: ${what} — ${info.settings.preset} (${formatSI(info.parameters.total)} parameters) on ${info.settings.device}, data ${info.dataset}, `
          + `${info.settings.steps} steps × ${batch} × ${info.settings.seqLen} tokens, lr ${info.settings.lr}`
          + `${info.model.computeDtype === 'bfloat16' ? ', bfloat16 compute (float32 parameters and optimizer)' : ''}`
          + `${ranks > 1 && (info.settings.sharding ?? 'none') !== 'none' ? `, optimizer state sharded (${info.settings.sharding})` : ''}`
          + `${experts > 1 ? `, experts spread over groups of ${experts} ranks (a group's ${experts} × ${info.settings.batchSize} sequences routed as one micro-batch)` : ''}`);
        progress.start(info);
      },
      onStep: (r) => progress.step(r),
      onEval: (r) => progress.eval(r),
      onSkip: (r) => progress.skip(r),
    });
  } finally {
    progress.stop();
    process.off('SIGINT', onInterrupt);
    process.off('SIGTERM', onInterrupt);
  }
  printSummary(summary, say);
  if (summary.stopped) {
    say(`resume with: moma train --resume ${shownPath(summary.runDir)}`);
    process.exitCode = 130;
  }
}

export function registerTrainCommands(program: Command): void {
  program
    .command('train')
    .description(`train a model (default: ${RUN_DEFAULTS.preset} on the built-in captioned shapes, a few minutes on a CPU) into a run directory with metrics, checkpoints and a report`)
    .option('--preset <name>', `model preset (default ${RUN_DEFAULTS.preset}; vocabulary size from the data)`)
    .option('--config <file>', 'JSON file of settings (keys: preset, model, data, device, steps, batchSize, seqLen, lr, warmup, seed, imageFraction, evalEvery, evalBatches, checkpointEvery, logEvery, gradAccum, sharding, expertParallel, skipNonfinite, dtype, out); flags override it')
    .option('--data <dir>', "shard set folder (default: 'builtin', the captioned shapes)")
    .option('--device <device>', 'cpu, cuda or cuda:N (default: the first GPU, else the CPU)')
    .option('--steps <n>', `training steps (default ${RUN_DEFAULTS.steps})`)
    .option('--batch-size <n>', `sequences per micro-batch on each rank (default ${RUN_DEFAULTS.batchSize})`)
    .option('--seq-len <n>', `tokens per sequence (default ${RUN_DEFAULTS.seqLen})`)
    .option('--lr <x>', `peak learning rate, cosine decay to 1% (default ${RUN_DEFAULTS.lr})`)
    .option('--warmup <n>', `warm-up steps (default ${RUN_DEFAULTS.warmup})`)
    .option('--seed <n>', `seed of the model, data order and routing noise (default ${RUN_DEFAULTS.seed})`)
    .option('--image-fraction <x>', "target share of image tokens per batch, 'off' or 'auto' (default auto: the image experts' share for MoMa presets, else off)")
    .option('--eval-every <n>', `held-out evaluation every n steps, 0: at the end only (default ${RUN_DEFAULTS.evalEvery})`)
    .option('--eval-batches <n>', `held-out batches per evaluation (default ${RUN_DEFAULTS.evalBatches})`)
    .option('--checkpoint-every <n>', `checkpoint every n steps, 0: at the end only (default ${RUN_DEFAULTS.checkpointEvery}); the newest 2 are kept`)
    .option('--grad-accum <n>', `micro-batches of --batch-size per optimizer step on each rank (default ${RUN_DEFAULTS.gradAccum}); a step trains ranks × n × batch-size sequences`)
    .option('--sharding <kind>', "data parallel: 'zero1' shards the AdamW moments over the ranks, 'zero2' the gradients too, 'zero3' the parameters too (FSDP: each block gathered for its forward and recomputed in the backward) (default none); kept on resume")
    .option('--expert-parallel <n>', 'spread the experts of every MoE layer over groups of n ranks (default 1): a group routes its n × batch-size sequences as one micro-batch, '
      + 'each rank training batch-size of them with its share of the experts; n must divide the ranks and every expert group (moma launch --nproc-per-node n … train --expert-parallel n); '
      + 'not with mixture-of-depths presets or --sharding; may be given again on resume')
    .option('--log-every <n>', `read the metrics back every n steps, one metrics.jsonl record with the means (default ${RUN_DEFAULTS.logEvery}); the steps between never wait for the device`)
    .option('--skip-nonfinite <n>', `skip up to n steps with a non-finite loss or gradient norm (no update applied, recorded in metrics.jsonl); one more stops the run, as does the first with 0 (default ${RUN_DEFAULTS.skipNonfinite}); may be given again on resume`)
    .option('--dtype <dtype>', `compute dtype: 'bfloat16' runs activations and matrix products in bf16 with float32 parameters, gradients and AdamW state (mixed precision), 'float32' all in float32 (default ${RUN_DEFAULTS.dtype}); kept on resume`)
    .option('--resume <run dir>', 'continue a run from its newest checkpoint (only --steps and --skip-nonfinite may change)')
    .option('--out <run dir>', 'run directory (default runs/<yyyymmdd-hhmmss>-<preset>)')
    .option('--json-log', 'print the metrics records as JSON lines instead of a progress bar')
    .action(runTrain);

  program
    .command('report')
    .description('regenerate report.html, report.svg and report.png of a run directory from its metrics.jsonl')
    .argument('<run dir>', 'a directory written by moma train')
    .action(async (runDir: string) => {
      const files = await writeReport(runDir);
      console.log(`report: ${shownPath(files.html)} (picture: ${shownPath(files.png)}, ${shownPath(files.svg)})`);
    });
}
