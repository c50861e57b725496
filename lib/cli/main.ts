#!/usr/bin/env node
/** The `moma` command line. */
import { Command } from 'commander';
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

function printReport(r: InspectReport): void {
  const lines = [
    `moma ${r.version} (node ${r.node}, ${r.platform})`,
    `binary:   ${r.binary.kind} — ${r.binary.path}`,
    `backends: ${r.backends.join(', ')}`,
    `cpu:      ${r.cpu.threads} threads, ${r.cpu.simd}, GEMM kernel ${r.cpu.gemmKernel}`,
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
  return program;
}

if (require.main === module) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((err: unknown) => {
      if (err instanceof MomaError) {
        console.error(`moma: ${err.code}: ${err.message}`);
      } else {
        console.error(err);
      }
      process.exitCode = 1;
    });
}
