#!/usr/bin/env node
/** The `moma` command line. */
import * as fs from 'fs';
import * as path from 'path';
import { Command, CommanderError } from 'commander';
import { packageRoot } from '../binding';
import { MomaError } from '../errors';
import { cudaReportLines, inspect, InspectReport } from '../inspect';
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
    ...cudaReportLines(r),
  ];
  if (r.forcedDevice) lines.push(`MOMA_DEVICE=${r.forcedDevice}`);
  console.log(lines.join('\n'));
}

/** The version in moma's package.json. */
function packageVersion(): string {
  return (JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
}

export function buildProgram(): Command {
  const program = new Command();
  program.name('moma').description('Mixed-modal early-fusion pre-training with modality-aware experts (MoMa)');
  program.version(packageVersion(), '-V, --version', 'print the moma version');
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

/** An Error by its shape (an error from another realm, such as a vm context, fails `instanceof Error`). */
function isErrorLike(err: unknown): err is Error {
  return typeof err === 'object' && err !== null && typeof (err as Error).message === 'string';
}

/** A Node system error (ENOENT, EACCES, EISDIR, …) from a file or socket call. */
function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return isErrorLike(err) && typeof (err as NodeJS.ErrnoException).code === 'string' && typeof (err as NodeJS.ErrnoException).syscall === 'string';
}

/**
 * How the command line ends on an error: one line `moma: ERR_…: message` on stderr and exit code
 * 1 — a MomaError with its code, a usage error commander found (unknown command or option, missing
 * argument or option value) as ERR_ARG, a file or socket error Node raised as ERR_FILE. Help and
 * --version exit 0. Anything else is a bug: `moma: ERR_INTERNAL: …` and then its stack, still
 * with exit code 1.
 */
export function reportError(err: unknown): void {
  if (err instanceof CommanderError) {
    if (err.exitCode === 0) return;  // --help, --version
    const message = err.code === 'commander.help' ? 'no command given (see the help above)' : err.message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ');
    console.error(`moma: ERR_ARG: ${message}`);
  } else if (err instanceof MomaError) {
    console.error(`moma: ${err.code}: ${err.message}`);
  } else if (isSystemError(err)) {
    console.error(`moma: ERR_FILE: ${err.message}`);
  } else {
    const error = isErrorLike(err) ? err : new Error(String(err));
    console.error(`moma: ERR_INTERNAL: ${error.message.replace(/\s*\n\s*/g, ' ')} (a bug in moma: please report it with the lines below)\n${error.stack ?? ''}`);
  }
  process.exitCode = 1;
}

if (require.main === module) {
  // an error thrown outside the command's promise (an event handler, a timer) ends the same way
  const fatal = (err: unknown): void => {
    reportError(err);
    process.exit(1);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
  buildProgram().parseAsync(process.argv).catch(reportError);
}
