/**
 * Which rows count in the loss and which rows a row attends to (docs/TRAINING.md, "The model"), decided once on the
 * host for every path that builds a batch (training, evaluate, `moma eval`, causal evaluation,
 * auxiliary-router targets: all through makeBatch in ./transformer.ts). Pure: no tensors.
 *
 * Documents: a document starts at each BOS, at the start of each sequence and at the first
 * non-padding row after padding (padding ends a document). Padding rows belong to no document:
 * each is its own one-row segment (segStart[t] = t), so no real row's window [segStart[t], t]
 * ever contains a padding row, wherever the padding stands (left, right, between documents).
 * The attention kernels need segStart[t] ∈ {t, segStart[t − 1]}, which this layout satisfies.
 *
 * Loss: row t counts when its own token and its target (the next token of the same sequence)
 * are both non-padding and the target is not BOS (a BOS target opens another document, which row
 * t cannot see). A counted target is thus always in row t's own document.
 */
import { MomaError } from '../errors';
import { at } from '../checked';

/** The token ids that shape documents: padding, and the optional BOS. */
export interface DocumentRule {
  padId: number;
  bosId?: number;
}

export interface BatchRowsOptions extends DocumentRule {
  /** A token's modality id in [0, modalities) (padding is never asked). */
  modalityOf: (id: number) => number;
  modalities: number;
  /** When given, ids must be < vocabSize. */
  vocabSize?: number;
}

/** Host arrays of T = B·S rows (sequence b, position s at row b·S + s). */
export interface BatchRows {
  tokens: Int32Array;
  /** The next token where row t counts in the loss, −1 elsewhere. */
  targets: Int32Array;
  /** Index inside the sequence (RoPE position). */
  positions: Int32Array;
  /** First row of row t's document; t for padding rows. */
  segStart: Int32Array;
  /** Modality of the row's own token, −1 for padding. */
  modality: Int32Array;
  /** Modality of the counted target, −1 where the row does not count. */
  targetModality: Int32Array;
  /** Non-padding rows; counted rows overall and per modality of the target. */
  counts: { rows: number; total: number; perModality: number[] };
}

/** The rows of a batch of B sequences of one length S ≥ 2 under the document and loss rules above. */
export function batchRows(sequences: ArrayLike<number>[], options: BatchRowsOptions): BatchRows {
  if (!Array.isArray(sequences) || sequences.length === 0) throw new MomaError('ERR_ARG', 'makeBatch: need at least one sequence');
  const S = sequences[0]!.length;
  if (S < 2 || sequences.some((s) => s.length !== S)) throw new MomaError('ERR_SHAPE', 'makeBatch: sequences must all have the same length >= 2');
  const { padId, bosId, modalities } = options;
  const T = sequences.length * S;
  const rows: BatchRows = {
    tokens: new Int32Array(T), targets: new Int32Array(T), positions: new Int32Array(T), segStart: new Int32Array(T),
    modality: new Int32Array(T), targetModality: new Int32Array(T), counts: { rows: 0, total: 0, perModality: new Array<number>(modalities).fill(0) },
  };
  const modalityOf = (id: number): number => {
    const m = options.modalityOf(id);
    if (!Number.isInteger(m) || m < 0 || m >= modalities) {
      throw new MomaError('ERR_RANGE', `makeBatch: token ${id} maps to modality ${String(m)}, outside [0, ${modalities})`);
    }
    return m;
  };
  sequences.forEach((seq, b) => {
    for (let s = 0; s < S; s++) {
      const id = seq[s];
      if (id === undefined || !Number.isInteger(id) || id < 0 || id > 0x7fffffff || (options.vocabSize !== undefined && id >= options.vocabSize)) {
        throw new MomaError('ERR_RANGE', `makeBatch: sequence ${b} position ${s} holds ${String(id)}, not a token id in [0, ${options.vocabSize ?? '2^31'})`);
      }
    }
  });
  sequences.forEach((seq, b) => {
    let start = b * S;
    for (let s = 0; s < S; s++) {
      const t = b * S + s;
      const id = at(seq, s, 'makeBatch');
      rows.tokens[t] = id;
      rows.positions[t] = s;
      rows.targets[t] = -1;
      rows.targetModality[t] = -1;
      if (id === padId) {
        rows.segStart[t] = t;
        rows.modality[t] = -1;
        continue;
      }
      if (s === 0 || id === bosId || seq[s - 1] === padId) start = t;
      rows.segStart[t] = start;
      rows.modality[t] = modalityOf(id);
      rows.counts.rows++;
      const next = s + 1 < S ? at(seq, s + 1, 'makeBatch') : padId;
      if (next === padId || next === bosId) continue;
      rows.targets[t] = next;
      rows.targetModality[t] = modalityOf(next);
      rows.counts.total++;
      rows.counts.perModality[rows.targetModality[t]!]!++;
    }
  });
  return rows;
}
