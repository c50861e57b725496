/**
 * `moma eval [--checkpoint DIR] [--data FILE] [--causal] [--json]`: loss overall and per modality
 * of a checkpoint, on a token file or (by default) on its run's held-out sequences. With
 * `--causal`, also in causal mode (each expert and MoD block takes a row iff its auxiliary router
 * says > 0.5) next to training mode, and per auxiliary router its BCE, accuracy, precision and
 * recall against the batch top-k selections.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { normalizeDevice } from '../device';
import { MomaError } from '../errors';
import { Transformer, TransformerConfig } from '../model/transformer';
import { readTokenFile } from '../data/token_file';
import { VocabInfo, VocabSpec, vocabFromSpec } from '../data/vocab';
import { readJson } from '../io/files';
import { checkpointDevice, loadAuxRouters, openCheckpoint, openStageData, resolveCheckpointDir, stageHeldOut } from '../run/checkpoint_source';
import { loadCheckpointInto, readCheckpoint } from '../train/checkpoint';
import { evaluateCausal } from '../train/causal_eval';
import { evaluate, EvalResult } from '../train/evaluate';
import { routerTable } from './aux';
import { shownPath } from './paths';

interface EvalFlags { checkpoint?: string; data?: string; vocab?: string; batchSize: string; device?: string; causal?: boolean; json?: boolean }

/** The sequences and vocabulary to evaluate on: the token file given, or the run's held-out data. */
async function evalData(dir: string, opts: EvalFlags): Promise<{ sequences: number[][]; vocab: VocabInfo; what: string }> {
  if (opts.data !== undefined) {
    const vocabFile = opts.vocab ?? path.join(dir, 'vocab.json');
    if (!fs.existsSync(vocabFile)) throw new MomaError('ERR_FILE', `eval: no vocabulary: ${vocabFile} does not exist (pass --vocab)`);
    const spec = readJson(vocabFile, 'eval') as VocabSpec;
    return { sequences: readTokenFile(opts.data), vocab: vocabFromSpec(spec), what: shownPath(opts.data) };
  }
  const source = openCheckpoint(dir, 'eval');
  const sequences = stageHeldOut(await openStageData(source, 'eval'));
  if (sequences === null) throw new MomaError('ERR_ARG', `eval: the data of ${dir} has no eval split; pass --data FILE`);
  return { sequences, vocab: vocabFromSpec(source.layout), what: `the run's ${sequences.length} held-out sequences` };
}

const lossText = (x: number): string => (Number.isNaN(x) ? '-' : x.toFixed(4));

function lossRows(results: [string, EvalResult][]): string[] {
  const names = Object.keys(results[0]![1].perModality);
  const head = ['routing', 'loss', ...names];
  const rows = results.map(([label, r]) => [label, lossText(r.loss), ...names.map((n) => lossText(r.perModality[n] ?? NaN))]);
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]): string => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  return [line(head), ...rows.map(line)];
}

async function runEval(opts: EvalFlags): Promise<void> {
  const batchSize = Number(opts.batchSize);
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new MomaError('ERR_ARG', `eval: --batch-size must be an integer >= 1, got ${opts.batchSize}`);
  const dir = resolveCheckpointDir(opts.checkpoint, 'eval');
  const { sequences, vocab, what } = await evalData(dir, opts);
  const { config } = readCheckpoint(dir);
  const device = checkpointDevice(config, opts.device === undefined ? undefined : normalizeDevice(opts.device, 'eval: --device'), dir, 'eval');
  const model = new Transformer({ ...(config as TransformerConfig), device });
  try {
    loadCheckpointInto(dir, model);
    if (!opts.causal) {
      const result = await evaluate(model, sequences, { vocab, batchSize });
      if (opts.json) {
        console.log(JSON.stringify(result, null, 2));
        return;
      }
      console.log(`loss ${result.loss.toFixed(4)} over ${result.targets} targets (${result.sequences} sequences)`);
      for (const [name, value] of Object.entries(result.perModality)) {
        console.log(`  ${name.padEnd(6)} ${lossText(value)} (${result.targetsPerModality[name]} targets)`);
      }
      return;
    }
    const aux = loadAuxRouters(dir, model, 'eval');
    try {
      const result = await evaluateCausal(model, sequences, { aux, vocab, batchSize });
      if (opts.json) {
        console.log(JSON.stringify(result, null, 2));
        return;
      }
      console.log(`${shownPath(dir)} on ${what} (${result.training.targets} targets):`);
      for (const line of lossRows([['training (batch top-k)', result.training], ['causal (aux routers)', result.causal]])) console.log(`  ${line}`);
      if (result.routers.length > 0) {
        console.log('auxiliary routers against the batch top-k selections:');
        for (const line of routerTable(result.routers)) console.log(`  ${line}`);
      }
    } finally {
      aux.dispose();
    }
  } finally {
    model.dispose();
  }
}

export function registerEval(program: Command): void {
  program
    .command('eval')
    .description('loss overall and per modality of a checkpoint; --causal: causal mode (auxiliary routers) next to training mode, and the routers\' accuracy')
    .option('--checkpoint <dir>', 'checkpoint or run folder (default: the newest run under ./runs)')
    .option('--data <file>', "token file: one JSON array of token ids per line (default: the run's held-out sequences)")
    .option('--vocab <file>', 'vocabulary JSON { padId, bosId, ranges: [{ modality, from, to }] } for --data (default: vocab.json in the checkpoint)')
    .option('--batch-size <n>', 'sequences per forward pass', '8')
    .option('--device <device>', 'cpu or cuda:N (default: the checkpoint config device)')
    .option('--causal', 'also evaluate in causal mode (needs moma train-aux)')
    .option('--json', 'print JSON')
    .action(runEval);
}
