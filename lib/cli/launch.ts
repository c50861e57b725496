/**
 * `moma launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P
 * --grace-seconds S] <moma subcommand and its flags>`: runs `moma <subcommand ...>` as N ranks on
 * this node, like torchrun (lib/distributed/launcher.ts). `--no-moma` runs the given command as it
 * is instead, like torchrun's --no-python. Everything from the subcommand on reaches the ranks
 * untouched.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { MomaError } from '../errors';
import { launch } from '../distributed/launcher';

interface LaunchFlags {
  nprocPerNode: string; nnodes: string; nodeRank: string; masterAddr: string; masterPort: string; graceSeconds: string; moma: boolean;
}

/** moma's own command line, next to this file once built (dist/cli/main.js). */
export const CLI_MAIN = path.join(__dirname, 'main.js');

function integerFlag(value: string, flag: string, min: number, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isInteger(n) || n < min || n > max) {
    throw new MomaError('ERR_ARG', `launch: ${flag} must be an integer in [${min}, ${max}], got '${value}'`);
  }
  return n;
}

/** What each rank runs: `node <moma cli> <args>` for a moma subcommand, else `args` as given (--no-moma). */
export function rankCommand(args: readonly string[], moma: boolean): string[] {
  return moma ? [process.execPath, CLI_MAIN, ...args] : [...args];
}

async function runLaunch(program: Command, args: string[], flags: LaunchFlags): Promise<void> {
  const grace = Number(flags.graceSeconds);
  if (flags.graceSeconds.trim() === '' || !Number.isFinite(grace) || grace < 0) {
    throw new MomaError('ERR_ARG', `launch: --grace-seconds must be a non-negative number, got '${flags.graceSeconds}'`);
  }
  if (flags.moma) {
    const sub = args[0]!;
    const known = program.commands.map((c) => c.name()).filter((name) => name !== 'launch');
    if (!known.includes(sub)) {
      throw new MomaError('ERR_ARG', `launch: '${sub}' is not a moma subcommand (${known.join(', ')}); to run another program in each rank, use --no-moma`);
    }
    if (!fs.existsSync(CLI_MAIN)) throw new MomaError('ERR_FILE', `launch: moma's command line ${CLI_MAIN} is missing (build it with npm run build:ts)`);
  }
  const result = await launch({
    command: rankCommand(args, flags.moma),
    nprocPerNode: integerFlag(flags.nprocPerNode, '--nproc-per-node', 1, 1024),
    nnodes: integerFlag(flags.nnodes, '--nnodes', 1, 65536),
    nodeRank: integerFlag(flags.nodeRank, '--node-rank', 0, 65535),
    masterAddr: flags.masterAddr,
    masterPort: integerFlag(flags.masterPort, '--master-port', 0, 65535),
    timeoutGraceMs: grace * 1000,
  });
  if (result.exitCode !== 0) console.error(`moma launch: ${result.message}`);
  process.exitCode = result.exitCode;
}

/** Registers `moma launch`; turns on positional options for the program, which passing the rank's flags through requires. */
export function registerLaunchCommand(program: Command): void {
  program.enablePositionalOptions();
  program
    .command('launch')
    .description('run a moma subcommand as several ranks on this node (like torchrun): RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set in each; see docs/DISTRIBUTED.md')
    .requiredOption('--nproc-per-node <n>', 'ranks on this node (one per GPU; on the CPU each takes its share of the threads)')
    .option('--nnodes <n>', 'nodes in the job', '1')
    .option('--node-rank <r>', "this node's index, 0 to nnodes - 1", '0')
    .option('--master-addr <host>', 'host of rank 0 (node 0), reachable from every node', '127.0.0.1')
    .option('--master-port <port>', "port of rank 0's rendezvous store, the same on every node; 0 picks a free one (one node only)", '29500')
    .option('--grace-seconds <s>', 'when a rank fails, how long the others have after SIGTERM before SIGKILL', '30')
    .option('--no-moma', 'run the command as given in each rank instead of a moma subcommand (like torchrun --no-python)')
    .argument('<command...>', 'moma subcommand and its flags (with --no-moma: program and arguments)')
    .passThroughOptions()
    .action((args: string[], flags: LaunchFlags) => runLaunch(program, args, flags));
}
