/**
 * `moma experiment flops-savings`: a thin layer over runFlopsSavings (lib/experiment/flops_savings.ts).
 * Prints one line per variant (train, resume or skip), progress lines every tenth of a variant's
 * steps, the η table at the end and where the files are. The first Ctrl-C stops the running
 * variant after its current step (it checkpoints) and prints the command that continues the
 * experiment; a second one exits at once.
 */
import * as path from 'path';
import { Command } from 'commander';
import { shownPath } from './paths';
import { formatEta } from '../experiment/eta';
import { FLOPS_SAVINGS_DEFAULTS, FLOPS_SAVINGS_TIERS, FlopsSavingsRun, runFlopsSavings } from '../experiment/flops_savings';
import { formatDuration, formatSI } from '../run/report';
import { RUN_DEFAULTS } from '../run/run_config';

interface ExperimentFlags {
  tier?: string;
  variants?: string;
  steps?: string;
  batchSize?: string;
  seqLen?: string;
  lr?: string;
  warmup?: string;
  seed?: string;
  device?: string;
  data?: string;
  evalEvery?: string;
  evalBatches?: string;
  checkpointEvery?: string;
  imageFraction?: string;
  out?: string;
}

/** An argument as a POSIX shell would need it. */
function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

function lossText(value: number | null | undefined): string {
  return value === null || value === undefined || !Number.isFinite(value) ? '-' : value.toFixed(3);
}

function printResults(run: FlopsSavingsRun): void {
  const { results, files } = run;
  if (results === null || files === null) return;
  const rows = results.variants.map((v) => [
    v.name, v.flopsVsDense.toFixed(3), lossText(v.finalLoss.overall), lossText(v.finalLoss.text), lossText(v.finalLoss.image),
    ...(['overall', 'text', 'image'] as const).map((k) => (v.eta === null ? 'baseline' : v.eta[k] === null ? '-' : formatEta(v.eta[k]!))),
    formatDuration(v.trainSeconds),
  ]);
  const header = ['variant', 'FLOPs/tok', 'loss', 'text', 'image', 'η overall', 'η text', 'η image', 'train time'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(line(header));
  for (const r of rows) console.log(line(r));
  for (const sentence of results.comparison) console.log(`- ${sentence}`);
  console.log(`results: ${shownPath(files.markdown)} (${path.basename(files.json)}, ${path.basename(files.png)}, ${path.basename(files.svg)}); runs in ${shownPath(path.join(run.dir, 'variants'))}/`);
}

async function runExperiment(flags: ExperimentFlags, commandLine: string): Promise<void> {
  const controller = new AbortController();
  let interrupts = 0;
  const onInterrupt = (): void => {
    interrupts++;
    if (interrupts > 1) process.exit(130);
    console.log('stopping after the current step (Ctrl-C again quits at once, without a checkpoint)…');
    controller.abort();
  };
  process.on('SIGINT', onInterrupt);
  process.on('SIGTERM', onInterrupt);
  let steps = 0;
  let every = 1;
  let began = 0;
  let run: FlopsSavingsRun;
  try {
    run = await runFlopsSavings({ flags: { ...flags }, commandLine }, {
      signal: controller.signal,
      onStart(info) {
        const s = info.settings;
        steps = s.steps;
        every = Math.max(1, Math.round(s.steps / 10));
        console.log(`moma experiment flops-savings: ${info.resumed ? 'continuing' : 'writing'} ${shownPath(s.out)} — ${s.variants.join(', ')}; `
          + `${s.steps} steps × ${s.batchSize} × ${s.seqLen} tokens each on ${s.device}, data ${info.dataset}, image fraction ${s.imageFraction ?? 'off'}`);
      },
      onVariantStart(info) {
        began = Date.now();
        const what = info.action === 'skip' ? `complete (step ${info.fromStep}), skipped` : info.action === 'resume' ? `resuming from step ${info.fromStep}` : 'training';
        console.log(`[${info.index + 1}/${info.count}] ${info.name} (${info.preset}): ${what}`);
      },
      onStep(_name, r) {
        if (r.step % every !== 0 && r.step !== steps) return;
        console.log(`  step ${r.step}/${steps}  loss ${lossText(r.loss)} (text ${lossText(r.lossPerModality.text)}, image ${lossText(r.lossPerModality.image)})  `
          + `${formatSI(r.tokensPerSecond)} tok/s  ${formatDuration((Date.now() - began) / 1000)}`);
      },
      onVariantEnd(info) {
        if (info.summary === null) return;
        console.log(`  ${info.summary.stopped ? 'stopped' : 'done'} at step ${info.summary.steps} in ${formatDuration(info.summary.wallSeconds)}`);
      },
    });
  } finally {
    process.off('SIGINT', onInterrupt);
    process.off('SIGTERM', onInterrupt);
  }
  if (run.stopped) {
    const again = flags.out === undefined ? `${commandLine} --out ${shellQuote(shownPath(run.dir))}` : commandLine;
    console.log(`stopped; continue with: ${again}`);
    process.exitCode = 130;
    return;
  }
  printResults(run);
}

export function registerExperimentCommands(program: Command): void {
  const experiment = program.command('experiment').description('experiments that train several models and compare them');
  const variants = Object.entries(FLOPS_SAVINGS_TIERS).map(([tier, names]) => `${tier}: ${names.join(',')}`).join('; ');
  experiment
    .command('flops-savings')
    .description('train dense and sparse variants at matched settings on the same data order and measure the FLOPs savings η (the training FLOPs the dense model needs to reach a variant\'s final loss, over the variant\'s own) overall, for text and for image; rerun with the same --out to continue')
    .option('--tier <name>', `variant tier (default ${FLOPS_SAVINGS_DEFAULTS.tier}; tiers: ${Object.keys(FLOPS_SAVINGS_TIERS).join(', ')})`)
    .option('--variants <list>', `comma-separated variants; dense is always trained (default ${variants})`)
    .option('--steps <n>', `training steps of every variant (default ${RUN_DEFAULTS.steps})`)
    .option('--batch-size <n>', `sequences per step (default ${RUN_DEFAULTS.batchSize})`)
    .option('--seq-len <n>', `tokens per sequence (default ${RUN_DEFAULTS.seqLen})`)
    .option('--lr <x>', `peak learning rate, cosine decay to 1% (default ${RUN_DEFAULTS.lr})`)
    .option('--warmup <n>', `warm-up steps (default ${RUN_DEFAULTS.warmup})`)
    .option('--seed <n>', `seed of the models, data order and routing noise (default ${RUN_DEFAULTS.seed})`)
    .option('--device <device>', 'cpu, cuda or cuda:N (default: the first GPU, else the CPU)')
    .option('--data <dir>', "shard set folder (default: 'builtin', the captioned shapes)")
    .option('--eval-every <n>', `held-out evaluation every n steps, 0: at the end only (default ${RUN_DEFAULTS.evalEvery})`)
    .option('--eval-batches <n>', `held-out batches per evaluation (default ${RUN_DEFAULTS.evalBatches})`)
    .option('--checkpoint-every <n>', `steps between checkpoints of each variant (default ${RUN_DEFAULTS.checkpointEvery})`)
    .option('--image-fraction <x>', `share of image tokens per batch for every variant, or 'off' (default ${FLOPS_SAVINGS_DEFAULTS.imageFraction})`)
    .option('--out <dir>', 'experiment folder (default runs/flops-savings-<yyyymmdd-hhmmss>); an existing one is continued')
    .action(async (flags: ExperimentFlags) => {
      const at = process.argv.indexOf('experiment');
      const args = at >= 0 ? process.argv.slice(at) : ['experiment', 'flops-savings'];
      await runExperiment(flags, ['moma', ...args].map(shellQuote).join(' '));
    });
}
