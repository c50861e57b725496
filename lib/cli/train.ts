/**
 * `moma train` and `moma report`: a thin layer over trainRun (lib/run/run.ts) and writeReport.
 *
 * train shows a progress bar on a terminal (step, loss text / image, the latest held-out loss,
 * tokens/s, ETA), one line every few steps elsewhere (CI, pipes), or the metrics records as JSON
 * lines with --json-log (human messages then go to stderr, so stdout stays JSON). The first Ctrl-C
 * or SIGTERM (what Slurm, Kubernetes and spot preemption send) stops after the current step,
 * checkpoints, writes the report, prints how to resume and exits with 128 + the signal's number
 * (130 for SIGINT, 143 for SIGTERM); a second signal exits at once.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { shownPath } from './paths';
import { printable } from './terminal';
import * as cliProgress from 'cli-progress';
import type { EvalRecord, SampleRecord, StepRecord } from '../run/records';
import { firstLabel, formatDuration, formatSI, LossRow, writeReport } from '../run/report';
import { RunStartInfo, RunSummary, SkipRecord, trainRun } from '../run/run';
import { RUN_DEFAULTS } from '../run/run_config';
import { SAMPLES_DIR } from '../run/samples';
import { init, isInitialized, world } from '../distributed/process_group';
import { worldFromEnv } from '../distributed/env';
import { chooseTrainDevice } from '../device';

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
  checkpointMinutes?: string;
  tensorboard?: boolean;
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
export interface Progress {
  start(info: RunStartInfo): void;
  step(record: StepRecord): void;
  eval(record: EvalRecord): void;
  sample(record: SampleRecord): void;
  /** Steps with a non-finite loss or gradient norm were skipped. */
  skip(record: SkipRecord): void;
  stop(): void;
}

function skipText(r: SkipRecord): string {
  return `step ${r.step}: skipped ${r.skipped} step(s) with a non-finite loss or gradient norm (first at step ${r.firstStep}); ${r.total} of the allowed ${r.budget} skipped so far`;
}

function sampleText(r: SampleRecord): string {
  return `sample at step ${r.step}: "${printable(r.prompt)}" → ${r.image}; held-out image → "${printable(r.caption)}"`;
}

function heldOutText(r: EvalRecord): string {
  return `${lossText(r.loss)} (text ${lossText(r.lossPerModality.text)}, image ${lossText(r.lossPerModality.image)})`;
}

function jsonProgress(): Progress {
  return {
    start: () => undefined,
    step: (r) => console.log(JSON.stringify(r)),
    eval: (r) => console.log(JSON.stringify(r)),
    sample: (r) => console.log(JSON.stringify(r)),
    skip: (r) => console.log(JSON.stringify(r)),
    stop: () => undefined,
  };
}

/**
 * About 20 lines a run: the first record, then the first record past each 5% of the steps, and the
 * last, each with the latest held-out loss once there is one; a line per evaluation and sample.
 */
export function lineProgress(say: (line: string) => void): Progress {
  let total = 0;
  let every = 1;
  let began = 0;
  let firstStep = 0;
  let shown = -1;
  let heldOut = '';
  return {
    start(info) {
      total = info.settings.steps;
      every = Math.max(1, Math.round((total - info.startStep) / 20));
      began = Date.now();
      firstStep = info.startStep;
      shown = -1;
      heldOut = '';
    },
    step(r) {
      if (shown >= 0 && Math.floor(r.step / every) === Math.floor(shown / every) && r.step !== total) return;
      shown = r.step;
      const elapsed = (Date.now() - began) / 1000;
      const eta = (elapsed / (r.step - firstStep)) * (total - r.step);
      say(`step ${r.step}/${total}  loss ${lossText(r.loss)} (text ${lossText(r.lossPerModality.text)}, image ${lossText(r.lossPerModality.image)})  ${Math.round(r.tokensPerSecond)} tok/s  elapsed ${formatDuration(elapsed)}  eta ${formatDuration(eta)}${heldOut}`);
    },
    eval(r) {
      heldOut = `  held-out ${lossText(r.loss)} (step ${r.step})`;
      say(`held-out at step ${r.step}: loss ${heldOutText(r)}`);
    },
    sample: (r) => say(sampleText(r)),
    skip: (r) => say(skipText(r)),
    stop: () => undefined,
  };
}

/**
 * The bar fits 80 columns up to 9999 steps: step, bar, training loss text / image, the latest
 * held-out loss (overall; '-' before the first evaluation), tokens/s, ETA. `stream` and
 * `forceOutput` (render on a stream that is not a terminal) are for tests.
 */
export function barProgress(options: { stream?: NodeJS.WritableStream; forceOutput?: boolean } = {}): Progress {
  const bar = new cliProgress.SingleBar({
    format: 'step {value}/{total} {bar} text {text} image {image} held-out {heldOut} | {tps} tok/s | ETA {eta_formatted}',
    barsize: 8, barCompleteChar: '█', barIncompleteChar: '░', hideCursor: true, etaBuffer: 50, stream: options.stream ?? process.stderr,
    noTTYOutput: options.forceOutput === true, notTTYSchedule: 0,
  });
  let running = false;
  return {
    start(info) {
      bar.start(info.settings.steps, info.startStep, { text: '-', image: '-', heldOut: '-', tps: '-' });
      running = true;
    },
    step(r) {
      bar.update(r.step, { text: lossText(r.lossPerModality.text), image: lossText(r.lossPerModality.image), tps: Math.round(r.tokensPerSecond) });
    },
    eval(r) {
      bar.update({ heldOut: lossText(r.loss) });
    },
    sample: () => undefined,
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
  if (fs.existsSync(path.join(summary.runDir, SAMPLES_DIR))) say(`  samples     ${shownPath(path.join(summary.runDir, SAMPLES_DIR))}`);
  if (summary.tensorboard !== null) say(`  tensorboard ${shownPath(summary.tensorboard)} (tensorboard --logdir ${shownPath(path.dirname(summary.runDir))})`);
}

/** Under `moma launch` (or torchrun, srun, mpirun) with more than one rank: joins the process group; true on ranks other than 0. */
async function joinRanks(device: string | undefined): Promise<boolean> {
  if (worldFromEnv().worldSize === 1) return false;
  if (!isInitialized()) await init(device === 'cpu' ? { device: 'cpu' } : {});
  return world().rank !== 0;
}

const quietProgress: Progress = { start: () => undefined, step: () => undefined, eval: () => undefined, sample: () => undefined, skip: () => undefined, stop: () => undefined };

const SIGNAL_NUMBERS = { SIGINT: 2, SIGTERM: 15 } as const;

async function runTrain(flags: TrainFlags): Promise<void> {
  const { config, resume, jsonLog, ...settings } = flags;
  // --device cuda[:N] never falls back (ERR_DEVICE naming why); with no device given anywhere, the
  // first usable GPU, else the CPU after a stderr warning when an NVIDIA GPU/driver is present but unusable
  if (settings.device !== undefined || (resume === undefined && config === undefined)) {
    settings.device = chooseTrainDevice(settings.device, (text) => process.stderr.write(`${text}\n`));
  }
  // data parallel: rank 0 reports; the other ranks train silently (their errors still reach stderr)
  const quiet = await joinRanks(settings.device);
  const say = quiet ? (): void => undefined : jsonLog ? (line: string): void => void process.stderr.write(line + '\n') : (line: string): void => console.log(line);
  const progress = quiet ? quietProgress : jsonLog ? jsonProgress() : process.stderr.isTTY ? barProgress() : lineProgress(say);
  const controller = new AbortController();
  let stoppedBy: keyof typeof SIGNAL_NUMBERS | null = null;
  const onSignal = (signal: keyof typeof SIGNAL_NUMBERS): void => {
    if (stoppedBy !== null) process.exit(128 + SIGNAL_NUMBERS[signal]);
    stoppedBy = signal;
    progress.stop();
    const again = signal === 'SIGINT' ? 'Ctrl-C' : signal;
    say(isInitialized() && world().worldSize > 1
      ? `${signal}: stopping at the next logged step, on every rank (${again} again quits at once, without a checkpoint)…`
      : `${signal}: stopping after the current step (${again} again quits at once, without a checkpoint)…`);
    controller.abort();
  };
  const onInterrupt = (): void => onSignal('SIGINT');
  const onTerminate = (): void => onSignal('SIGTERM');
  process.on('SIGINT', onInterrupt);
  process.on('SIGTERM', onTerminate);
  let summary: RunSummary;
  try {
    summary = await trainRun({ flags: settings, configFile: config, resume, commandLine: ['moma', ...process.argv.slice(2)] }, {
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
      onSample: (r) => progress.sample(r),
      onSkip: (r) => progress.skip(r),
    });
  } finally {
    progress.stop();
    process.off('SIGINT', onInterrupt);
    process.off('SIGTERM', onTerminate);
  }
  printSummary(summary, say);
  if (summary.stopped) {
    say(`resume with: moma train --resume ${shownPath(summary.runDir)}`);
    process.exitCode = 128 + SIGNAL_NUMBERS[stoppedBy ?? 'SIGINT'];
  }
}

export function registerTrainCommands(program: Command): void {
  program
    .command('train')
    .description(`train a model (default: ${RUN_DEFAULTS.preset} on the built-in captioned shapes, a few minutes on a CPU) into a run directory with metrics, checkpoints and a report`)
    .option('--preset <name>', `model preset (default ${RUN_DEFAULTS.preset}; vocabulary size from the data)`)
    .option('--config <file>', 'JSON file of settings (keys: preset, model, data, device, steps, batchSize, seqLen, lr, warmup, seed, imageFraction, evalEvery, evalBatches, checkpointEvery, checkpointMinutes, tensorboard, logEvery, gradAccum, sharding, expertParallel, skipNonfinite, dtype, out); flags override it')
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
    .option('--checkpoint-minutes <m>', 'also checkpoint at the first logged step m minutes (fractions allowed) after the previous checkpoint, 0: off (default 0); kept on resume')
    .option('--tensorboard', 'write TensorBoard event files into <run dir>/tensorboard (scalars, and the samples at each evaluation); kept on resume')
    .option('--grad-accum <n>', `micro-batches of --batch-size per optimizer step on each rank (default ${RUN_DEFAULTS.gradAccum}); a step trains ranks × n × batch-size sequences`)
    .option('--sharding <kind>', "data parallel: 'zero1' shards the AdamW moments over the ranks, 'zero2' the gradients too, 'zero3' the parameters too (FSDP: each block gathered for its forward and recomputed in the backward) (default none); kept on resume")
    .option('--expert-parallel <n>', 'spread the experts of every MoE layer over groups of n ranks (default 1): a group routes its n × batch-size sequences as one micro-batch, '
      + 'each rank training batch-size of them with its share of the experts; n must divide the ranks and every expert group (moma launch --nproc-per-node n … train --expert-parallel n); '
      + 'not with mixture-of-depths presets or --sharding; may be given again on resume')
    .option('--log-every <n>', `read the metrics back every n steps, one metrics.jsonl record with the means (default ${RUN_DEFAULTS.logEvery}); the steps between never wait for the device`)
    .option('--skip-nonfinite <n>', `skip up to n steps with a non-finite loss or gradient norm (no update applied, recorded in metrics.jsonl); one more stops the run, as does the first with 0 (default ${RUN_DEFAULTS.skipNonfinite}); may be given again on resume`)
    .option('--dtype <dtype>', `compute dtype: 'bfloat16' runs activations and matrix products in bf16 with float32 parameters, gradients and AdamW state (mixed precision), 'float32' all in float32 (default ${RUN_DEFAULTS.dtype}); kept on resume`)
    .option('--resume <run dir>', 'continue a run from its newest checkpoint (only --steps, --skip-nonfinite and --expert-parallel may change)')
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
