/**
 * Evaluation: next-token loss overall and per modality of the target token over token sequences,
 * in training mode routing (batch top-k) or causal mode (auxiliary routers), without gradients. Sums per-row losses on the device
 * and reads one small vector per batch.
 */
import { noGrad } from '../autograd/tape';
import { tidy } from '../autograd/scope';
import { disposeBatch, makeBatch, Transformer } from '../model/transformer';
import type { CausalRouting } from '../model/layers';
import type { VocabInfo } from '../data/vocab';
import { at } from '../checked';
import { MomaError } from '../errors';
import { requireOptions } from '../options';

export interface EvalResult {
  loss: number;
  perModality: Record<string, number>;
  /** Targets counted overall and per modality. */
  targets: number;
  targetsPerModality: Record<string, number>;
  sequences: number;
}

export interface EvalOptions {
  /** Pad, BOS and the modality of each id. */
  vocab: VocabInfo;
  /** Sequences per forward pass (default 8). */
  batchSize?: number;
  /** Auxiliary routers (docs/INFERENCE.md): evaluate in causal mode instead of training mode. */
  causal?: CausalRouting;
}

/** Checks `options` for `fn`; returns the vocabulary and the batch size. */
export function evalArgs(options: { vocab: VocabInfo; batchSize?: number }, fn: string): { vocab: VocabInfo; batchSize: number } {
  const { vocab, batchSize = 8 } = requireOptions(options, fn, ['vocab']);
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new MomaError('ERR_ARG', `${fn}: options.batchSize must be an integer >= 1, got ${String(batchSize)}`);
  return { vocab, batchSize };
}

/**
 * Mean loss over `sequences` (all of one length), `options.batchSize` sequences per forward pass;
 * with `options.causal` in causal mode instead of training mode.
 */
export async function evaluate(model: Transformer, sequences: number[][], options: EvalOptions): Promise<EvalResult> {
  const { vocab, batchSize } = evalArgs(options, 'evaluate');
  const causal = options.causal;
  const names = model.config.modalities;
  // [all modalities, then one per modality]: loss sums weighted by target counts
  const totals = Array.from({ length: names.length + 1 }, () => ({ sum: 0, count: 0 }));
  for (let i = 0; i < sequences.length; i += batchSize) {
    const chunk = sequences.slice(i, i + batchSize);
    const batch = makeBatch(chunk, { padId: vocab.padId, bosId: vocab.bosId, modalityOf: (id) => vocab.modalityOf(id), modalities: names.length, device: model.config.device, vocabSize: model.config.vocabSize });
    const out = causal === undefined ? tidy(() => noGrad(() => model.loss(batch))) : await model.causalLoss(batch, causal);
    // the held-out loss is the cross-entropy alone: the z-loss is part of the training loss only
    const nllSum = noGrad(() => out.nll.sum());
    out.nll.dispose();
    out.loss.dispose();
    const losses = [nllSum, ...out.perModality];
    const values = await Promise.all(losses.map((t) => t.item()));
    losses.forEach((t) => t.dispose());
    if (batch.counts.total > 0) values[0] = at(values, 0, 'evaluate') / batch.counts.total;
    // the batch losses are means: weight them back by their target counts
    const batchCounts = [batch.counts.total, ...batch.counts.perModality];
    totals.forEach((total, k) => {
      const count = at(batchCounts, k, 'evaluate');
      if (count > 0) {
        total.sum += at(values, k, 'evaluate') * count;
        total.count += count;
      }
    });
    disposeBatch(batch);
  }
  const mean = ({ sum, count }: { sum: number; count: number }): number => (count > 0 ? sum / count : NaN);
  const all = at(totals, 0, 'evaluate');
  const perModality = totals.slice(1);
  return {
    loss: mean(all),
    perModality: Object.fromEntries(perModality.map((total, m) => [names[m], mean(total)])),
    targets: all.count,
    targetsPerModality: Object.fromEntries(perModality.map((total, m) => [names[m], total.count])),
    sequences: sequences.length,
  };
}
