#!/usr/bin/env node
/** The `moma` command line. */
import { Command, CommanderError } from 'commander';
import { MomaError } from '../errors';
import { inspect, InspectReport } from '../inspect';
import { registerModelCommands } from './model';
import { registerEval } from './eval';
import { registerTrainCommands } from './train';
import { registerDataCommands } from './data';
import { registerTokenizerCommands } from './tokenizer';
import { registerExperimentCommands } from './experiment';
import { registerAuxCommands } from './aux';
import { registerGenerateCommand } from './generate';
import { registerLaunchCommand } from './launch';
import { registerCheckpointCommands } from './checkpoint';

function printReport(r: InspectReport): void {
  const lines = [
    `moma ${r.version} (node ${r.node}, ${r.platform})`,
    `binary:   ${r.binary.kind} — ${r.binary.path}`,
    `backends: ${r.backends.join(', ')}`,
    `cpu:      ${r.cpu.threads} threads, ${r.cpu.simd}, GEMM ${r.cpu.gemm}`,
    `cuda:     ${r.cuda.compiled ? `compiled (runtime ${r.cuda.runtimeVersion})` : 'not compiled'}, driver ${r.cuda.driverVersion ?? 'none'}`,
  ];
  if (r.cuda.devices.length === 0) lines.push('devices:  no CUDA device visible (everything runs on the CPU)');
  for (const d of r.cuda.devices) {
    lines.push(`  cuda:${d.index}  ${d.name}, ${d.memoryGiB} GiB, sm_${d.computeCapability.replace('.', '')}, ${d.multiprocessors} SMs`);
  }
  if (r.forcedDevice) lines.push(`MOMA_DEVICE=${r.forcedDevice}`);
  console.log(lines.join('\n'));
}

export function buildProgram(): Command {
  const program = new Command();
  program.name('moma').description('Mixed-modal early-fusion pre-training with modality-aware experts (MoMa)');
  // set before the subcommands exist, so that every one inherits it: a usage error (unknown
  // option, missing argument, …) throws a CommanderError that reportError prints as `moma: ERR_ARG: …`
  program.exitOverride().configureOutput({ outputError: () => {} });
  program
    .command('inspect')
    .description('show which binary loaded, the backends compiled in, and the devices visible')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }) => {
      const report = inspect();
      if (opts.json) console.log(JSON.stringify(report, null, 2));
      else printReport(report);
    });
  registerModelCommands(program);
  registerEval(program);
  registerTrainCommands(program);
  registerAuxCommands(program);
  registerGenerateCommand(program);
  registerDataCommands(program);
  registerTokenizerCommands(program);
  registerExperimentCommands(program);
  registerLaunchCommand(program);
  registerCheckpointCommands(program);
  return program;
}

/**
 * How the command line ends on an error: one line `moma: ERR_…: message` on stderr and exit code
 * 1, for a MomaError and for a usage error commander found alike; help and --version exit 0.
 * Anything else is a bug: its stack is printed, still with exit code 1.
 */
export function reportError(err: unknown): void {
  if (err instanceof CommanderError) {
    if (err.exitCode === 0) return;  // --help, --version
    const message = err.code === 'commander.help' ? 'no command given (see the help above)' : err.message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ');
    console.error(`moma: ERR_ARG: ${message}`);
  } else if (err instanceof MomaError) {
    console.error(`moma: ${err.code}: ${err.message}`);
  } else {
    console.error(err);
  }
  process.exitCode = 1;
}

if (require.main === module) {
  buildProgram().parseAsync(process.argv).catch(reportError);
}
