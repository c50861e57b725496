/**
 * Training FLOPs of a step (docs/EXPERIMENTS.md, "Training FLOPs"): forward FLOPs per row — attention projections 8d², scores
 * and weighted sum 4·d·L_t (L_t keys attended by row t), FFN 6·d·f per (row, expert) assignment
 * computed, routers 2·d·E_g per routed group and 2·d per MoD router, LM head 2·d·V — times 3 for
 * training. Each row's FLOPs count for its modality.
 *
 * Everything is computed on the host from the batch: rows per modality are known, and expert
 * choice takes exactly E_g·min(n_g, ceil(c·n_g/E_g)) assignments in group g. Where the split by
 * modality is data-dependent (a group mixing modalities; the rows a MoD layer selects), the
 * assignments are attributed in proportion to each modality's share of the rows the layer saw.
 */
import { expertChoiceCapacity, isModLayer, modRows, tokenChoiceCapacity } from '../formulas';
import { TransformerConfig, validateConfig } from '../model/transformer';
import { at } from '../checked';

export interface StepRows {
  /** Modality id of each row's input token (-1 padding). */
  modality: ArrayLike<number>;
  /** First row of each row's document (attention span L_t = t − segStart[t] + 1). */
  segStart: ArrayLike<number>;
}

export interface FlopsCount {
  total: number;
  perModality: number[];
}

function expertChoiceAssignments(n: number, experts: number, c: number): number {
  return experts * expertChoiceCapacity(n, experts, c);
}

/** Training FLOPs (3 × forward) of one step over `rows`. */
export function trainingFlops(config: TransformerConfig, rows: StepRows): FlopsCount {
  const M = (config.modalities ?? ['text', 'image']).length;
  const d = config.dModel;
  const V = config.vocabSize;
  const per = new Array<number>(M).fill(0);
  const T = rows.modality.length;
  const where = 'trainingFlops';
  const addAt = (array: number[], m: number, value: number): void => {
    array[m] = at(array, m, where) + value;
  };
  const count = new Array<number>(M).fill(0);
  const span = new Array<number>(M).fill(0);
  for (let t = 0; t < T; t++) {
    const m = at(rows.modality, t, where);
    if (m < 0) continue;
    addAt(count, m, 1);
    addAt(span, m, t - at(rows.segStart, t, where) + 1);
  }
  const rowsTotal = count.reduce((a, b) => a + b, 0);
  const share = count.map((n) => (rowsTotal > 0 ? n / rowsTotal : 0));
  const modalities = config.modalities ?? ['text', 'image'];
  const ffn = config.ffn;

  const ffnFlops = (rowsOf: number[]): number[] => {
    const out = new Array<number>(M).fill(0);
    if (ffn.kind === 'dense') {
      rowsOf.forEach((n, m) => addAt(out, m, 6 * d * ffn.dFF * n));
      return out;
    }
    const c = ffn.capacityFactor ?? 1;
    for (const group of ffn.groups ?? []) {
      const names = Array.isArray(group.modality) ? group.modality : [group.modality];
      const ms = names.map((name) => modalities.indexOf(name)).filter((m) => m >= 0);
      const n = ms.reduce((a, m) => a + at(rowsOf, m, where), 0);
      const assignments = ffn.routing === 'token-choice'
        ? Math.min(n * Math.min(ffn.topK ?? 2, group.experts), group.experts * tokenChoiceCapacity(n, group.experts, ffn.topK ?? 2, c))
        : expertChoiceAssignments(n, group.experts, c);
      for (const m of ms) {
        const rowsOfM = at(rowsOf, m, where);
        const part = n > 0 ? rowsOfM / n : 0;
        addAt(out, m, 6 * d * ffn.dFF * assignments * part);
        if (group.experts > 1) addAt(out, m, 2 * d * group.experts * rowsOfM);
      }
    }
    return out;
  };

  const mod = validateConfig(config).mod;
  const capacity = mod === null ? 1 : mod.capacity;
  for (let layer = 0; layer < config.layers; layer++) {
    const routed = mod !== null && isModLayer(layer, mod.interval);
    // rows the block processes per modality, and their attention spans (MoD: a fraction of both)
    let rowsOf = count.slice();
    let spanOf = span.slice();
    if (routed) {
      const k = modRows(rowsTotal, capacity);
      rowsOf = share.map((s) => s * k);
      // selected rows attend to about capacity × the keys (the selected rows of their document)
      spanOf = span.map((s) => s * (rowsTotal > 0 ? k / rowsTotal : 0) * capacity);
      count.forEach((n, m) => addAt(per, m, 2 * d * n)); // the MoD router runs on every row
    }
    const f = ffnFlops(rowsOf);
    for (let m = 0; m < M; m++) addAt(per, m, 8 * d * d * at(rowsOf, m, where) + 4 * d * at(spanOf, m, where) + at(f, m, where));
  }
  count.forEach((n, m) => addAt(per, m, 2 * d * V * n));
  const training = per.map((x) => 3 * x);
  return { total: training.reduce((a, b) => a + b, 0), perModality: training };
}
