/**
 * `moma checkpoint export CHECKPOINT --out DIR`: one consolidated checkpoint folder from a
 * checkpoint (or a run folder's newest), sharded or not: model.safetensors, config.json,
 * vocab.json, trainer.json and the tokenizer files as they are, and the AdamW moments of a sharded
 * checkpoint (one optimizer.rank-*-of-*.safetensors per rank) as one unsharded
 * optimizer.safetensors. `moma eval`, `moma generate`, Trainer.resume and Python's safetensors
 * read the result.
 */
import * as fs from 'fs';
import { Command } from 'commander';
import { MomaError } from '../errors';
import { resolveCheckpointDir } from '../run/checkpoint_source';
import { exportCheckpoint } from '../train/checkpoint';
import { shownPath } from './paths';

function runExport(checkpoint: string, opts: { out: string }): void {
  const dir = resolveCheckpointDir(checkpoint, 'checkpoint export');
  if (fs.existsSync(opts.out) && (!fs.statSync(opts.out).isDirectory() || fs.readdirSync(opts.out).length > 0)) {
    throw new MomaError('ERR_ARG', `checkpoint export: --out ${opts.out} exists and is not an empty folder`);
  }
  const { sharded } = exportCheckpoint(dir, opts.out);
  const what = sharded === null ? 'optimizer state unsharded already' : `optimizer state of ${sharded} ranks consolidated into optimizer.safetensors`;
  console.log(`exported ${shownPath(dir)} to ${shownPath(opts.out)} (${what})`);
}

/** Adds the `checkpoint` command group (export) to the program. */
export function registerCheckpointCommands(program: Command): void {
  const group = program.command('checkpoint').description('checkpoints: consolidate a sharded one');
  group
    .command('export')
    .description('write a checkpoint (sharded or not; a run folder: its newest) as one consolidated folder that eval, generate and resume read')
    .argument('<checkpoint>', 'a checkpoint folder or a run folder')
    .requiredOption('--out <dir>', 'the folder to write (must not exist, or be empty)')
    .action(runExport);
}
