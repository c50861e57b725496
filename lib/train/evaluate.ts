/**
 * Evaluation: next-token loss overall and per modality of the target token over token sequences,
 * in training mode routing (batch top-k) or causal mode (auxiliary routers), without gradients. Sums per-row losses on the device
 * and reads one small vector per batch.
 */
import * as fs from 'fs';
import { noGrad } from '../autograd/tape';
import { tidy } from '../autograd/scope';
import { MomaError } from '../errors';
import { disposeBatch, makeBatch, Transformer } from '../model/transformer';
import type { CausalRouting } from '../model/layers';
import type { VocabInfo } from './trainer';

export interface EvalResult {
  loss: number;
  perModality: Record<string, number>;
  /** Targets counted overall and per modality. */
  targets: number;
  targetsPerModality: Record<string, number>;
  sequences: number;
}

/**
 * Mean loss over `sequences` (all of one length), `batchSize` sequences per forward pass; with
 * `causal` (auxiliary routers, SPEC §4) in causal mode instead of training mode.
 */
export async function evaluate(model: Transformer, sequences: number[][], vocab: VocabInfo, batchSize = 8, causal?: CausalRouting): Promise<EvalResult> {
  const names = model.config.modalities;
  const sums = new Array<number>(names.length + 1).fill(0);
  const counts = new Array<number>(names.length + 1).fill(0);
  for (let i = 0; i < sequences.length; i += batchSize) {
    const chunk = sequences.slice(i, i + batchSize);
    const batch = makeBatch(chunk, { padId: vocab.padId, bosId: vocab.bosId, modalityOf: (id) => vocab.modalityOf(id), modalities: names.length, device: model.config.device, vocabSize: model.config.vocabSize });
    const out = causal === undefined ? tidy(() => noGrad(() => model.loss(batch))) : await model.causalLoss(batch, causal);
    out.nll.dispose();
    const losses = [out.loss, ...out.perModality];
    const values = await Promise.all(losses.map((t) => t.item()));
    losses.forEach((t) => t.dispose());
    // the batch losses are means: weight them back by their target counts
    const batchCounts = [batch.counts.total, ...batch.counts.perModality];
    values.forEach((v, k) => {
      if ((batchCounts[k] as number) > 0) {
        sums[k] += v * (batchCounts[k] as number);
        counts[k] += batchCounts[k] as number;
      }
    });
    disposeBatch(batch);
  }
  const mean = (k: number): number => (counts[k]! > 0 ? sums[k]! / counts[k]! : NaN);
  return {
    loss: mean(0),
    perModality: Object.fromEntries(names.map((n, m) => [n, mean(m + 1)])),
    targets: counts[0] as number,
    targetsPerModality: Object.fromEntries(names.map((n, m) => [n, counts[m + 1] as number])),
    sequences: sequences.length,
  };
}

/** A token file: JSON Lines, one sequence (an array of token ids) per line, all of one length. */
export function readTokenFile(file: string): number[][] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new MomaError('ERR_FILE', `token file ${file}: cannot be read (${(err as Error).message})`);
  }
  const sequences: number[][] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let seq: unknown;
    try {
      seq = JSON.parse(line);
    } catch {
      throw new MomaError('ERR_FILE', `token file ${file}: line ${i + 1} is not JSON`);
    }
    if (!Array.isArray(seq) || seq.some((x) => !Number.isInteger(x) || x < 0)) {
      throw new MomaError('ERR_FILE', `token file ${file}: line ${i + 1} is not an array of token ids`);
    }
    if (sequences.length > 0 && seq.length !== sequences[0]!.length) {
      throw new MomaError('ERR_FILE', `token file ${file}: line ${i + 1} has ${seq.length} tokens, the first line ${sequences[0]!.length}`);
    }
    sequences.push(seq as number[]);
  });
  if (sequences.length === 0) throw new MomaError('ERR_FILE', `token file ${file}: no sequences`);
  return sequences;
}

/** Vocabulary description stored as JSON: pad and BOS ids, and id ranges [from, to) per modality id (others: modality 0). */
export interface VocabSpec {
  padId: number;
  bosId?: number;
  ranges: { modality: number; from: number; to: number }[];
}

export function vocabFromSpec(spec: VocabSpec): VocabInfo {
  if (typeof spec !== 'object' || spec === null || !Number.isInteger(spec.padId) || !Array.isArray(spec.ranges)) {
    throw new MomaError('ERR_ARG', 'vocabulary: expected { padId, bosId?, ranges: [{ modality, from, to }] }');
  }
  const ranges = [...spec.ranges].sort((a, b) => a.from - b.from);
  ranges.forEach((r, i) => {
    if (!Number.isInteger(r.modality) || r.modality < 0 || !Number.isInteger(r.from) || !Number.isInteger(r.to) || r.from < 0 || r.to <= r.from) {
      throw new MomaError('ERR_ARG', `vocabulary: range ${JSON.stringify(r)} must have integer 0 <= from < to and a modality >= 0`);
    }
    const prev = ranges[i - 1];
    if (prev !== undefined && r.from < prev.to) {
      throw new MomaError('ERR_ARG', `vocabulary: ranges [${prev.from}, ${prev.to}) and [${r.from}, ${r.to}) overlap`);
    }
  });
  for (const [name, id] of [['padId', spec.padId], ['bosId', spec.bosId]] as const) {
    if (id !== undefined && ranges.some((r) => r.modality !== 0 && id >= r.from && id < r.to)) {
      throw new MomaError('ERR_ARG', `vocabulary: ${name} ${id} lies in a non-text range (the specials are text tokens)`);
    }
  }
  return {
    padId: spec.padId,
    bosId: spec.bosId,
    modalityOf: (id: number): number => spec.ranges.find((r) => id >= r.from && id < r.to)?.modality ?? 0,
  };
}
