/** `moma eval --checkpoint DIR --data FILE [--json]`: loss overall and per modality of a checkpoint on a token file. */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { MomaError } from '../errors';
import { Transformer, TransformerConfig } from '../model/transformer';
import { loadCheckpointInto, readCheckpoint } from '../train/checkpoint';
import { evaluate, readTokenFile, VocabSpec, vocabFromSpec } from '../train/evaluate';

export function registerEval(program: Command): void {
  program
    .command('eval')
    .description('loss overall and per modality of a checkpoint on a token file (JSON Lines of token-id arrays)')
    .requiredOption('--checkpoint <dir>', 'checkpoint directory (config.json, model.safetensors)')
    .requiredOption('--data <file>', 'token file: one JSON array of token ids per line')
    .option('--vocab <file>', 'vocabulary JSON { padId, bosId, ranges: [{ modality, from, to }] } (default: vocab.json in the checkpoint)')
    .option('--batch-size <n>', 'sequences per forward pass', '8')
    .option('--device <device>', 'cpu or cuda:N (default: the checkpoint config device)')
    .option('--json', 'print JSON')
    .action(async (opts: { checkpoint: string; data: string; vocab?: string; batchSize: string; device?: string; json?: boolean }) => {
      const vocabFile = opts.vocab ?? path.join(opts.checkpoint, 'vocab.json');
      if (!fs.existsSync(vocabFile)) throw new MomaError('ERR_FILE', `eval: no vocabulary: ${vocabFile} does not exist (pass --vocab)`);
      const vocab = vocabFromSpec(JSON.parse(fs.readFileSync(vocabFile, 'utf8')) as VocabSpec);
      const batchSize = Number(opts.batchSize);
      if (!Number.isInteger(batchSize) || batchSize < 1) throw new MomaError('ERR_ARG', `eval: --batch-size must be an integer >= 1, got ${opts.batchSize}`);
      const { config } = readCheckpoint(opts.checkpoint);
      const model = new Transformer({ ...(config as TransformerConfig), device: opts.device ?? (config as TransformerConfig).device });
      try {
        loadCheckpointInto(opts.checkpoint, model);
        const result = await evaluate(model, readTokenFile(opts.data), vocab, batchSize);
        if (opts.json) {
          console.log(JSON.stringify(result, null, 2));
        } else {
          console.log(`loss ${result.loss.toFixed(4)} over ${result.targets} targets (${result.sequences} sequences)`);
          for (const [name, value] of Object.entries(result.perModality)) {
            console.log(`  ${name.padEnd(6)} ${Number.isNaN(value) ? '-' : value.toFixed(4)} (${result.targetsPerModality[name]} targets)`);
          }
        }
      } finally {
        model.dispose();
      }
    });
}
