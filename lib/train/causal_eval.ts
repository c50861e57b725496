/**
 * Causal-mode evaluation (docs/INFERENCE.md): the held-out loss with routing by the auxiliary routers next to
 * the loss with batch top-k routing (training mode), overall and per modality, and per auxiliary
 * router its binary cross-entropy, accuracy, precision and recall against the batch top-k
 * selections of a training-mode forward on the same rows.
 */
import { noGrad } from '../autograd/tape';
import { tidy } from '../autograd/scope';
import { AuxRouters } from '../model/aux_router';
import { disposeBatch, makeBatch, Transformer } from '../model/transformer';
import { evalArgs, evaluate, EvalResult } from './evaluate';
import { requireOptions } from '../options';
import { AuxRouterRef, auxLoss, auxRouterRefs, collectAuxExamples, Confusion, confusionOf, confusionRates } from './aux_targets';
import type { VocabInfo } from '../data/vocab';

export interface AuxRouterMetrics extends AuxRouterRef {
  /** The modalities the router's rows belong to ('text', 'image', 'text+image'; 'all' for MoD). */
  modality: string;
  /** Mean BCE over its (row, output) entries. */
  bce: number;
  accuracy: number;
  precision: number;
  recall: number;
  /** Share of entries the batch top-k selected, and the share the router predicts (a > 0.5). */
  selected: number;
  predicted: number;
  entries: number;
}

export interface CausalEvalResult {
  training: EvalResult;
  causal: EvalResult;
  routers: AuxRouterMetrics[];
}

export interface CausalEvalOptions {
  /** The auxiliary routers (lib/model/aux_router.ts). */
  aux: AuxRouters;
  /** Pad, BOS and the modality of each id. */
  vocab: VocabInfo;
  /** Sequences per forward pass (default 8). */
  batchSize?: number;
}

function modalityOfRef(model: Transformer, ref: AuxRouterRef): string {
  if (ref.kind === 'depth') return 'all';
  const layout = model.routingSites().experts.find((s) => s.site === ref.site)!.layout;
  return model.config.modalities.filter((_, m) => layout.groupOfModality[m] === ref.group).join('+');
}

/** The auxiliary routers' BCE, accuracy, precision and recall on `sequences` (training-mode targets). */
export async function evaluateAuxRouters(model: Transformer, sequences: number[][], options: CausalEvalOptions): Promise<AuxRouterMetrics[]> {
  const { aux } = requireOptions(options, 'evaluateAuxRouters', ['aux']);
  const { vocab, batchSize } = evalArgs(options, 'evaluateAuxRouters');
  const refs = auxRouterRefs(model);
  const sums = new Map(refs.map((r) => [r.key, { bce: 0, weight: 0, confusion: { tp: 0, fp: 0, fn: 0, tn: 0 } as Confusion }]));
  for (let i = 0; i < sequences.length; i += batchSize) {
    const batch = makeBatch(sequences.slice(i, i + batchSize), {
      padId: vocab.padId, bosId: vocab.bosId, modalityOf: (id) => vocab.modalityOf(id), modalities: model.config.modalities.length,
      device: model.config.device, vocabSize: model.config.vocabSize,
    });
    const all = await collectAuxExamples(model, aux, batch);
    try {
      const { logits, bce } = noGrad(() => tidy(() => {
        const out = auxLoss(all);
        return { logits: out.logits, bce: out.bce };
      }));
      for (const [k, e] of all.entries()) {
        const [z, l] = await Promise.all([logits[k]!.toArray(), bce[k]!.item()]);
        const s = sums.get(e.ref.key)!;
        const entries = e.hostTargets.length;
        s.bce += l * entries;
        s.weight += entries;
        confusionOf(z, e.hostTargets, s.confusion);
      }
      for (const t of [...logits, ...bce]) t.dispose();
    } finally {
      for (const e of all) e.dispose();
      disposeBatch(batch);
    }
  }
  return refs.map((ref) => {
    const s = sums.get(ref.key)!;
    const rates = confusionRates(s.confusion);
    return { ...ref, modality: modalityOfRef(model, ref), bce: s.weight > 0 ? s.bce / s.weight : NaN, ...rates };
  });
}

/** Loss in training mode and in causal mode on the same sequences, and the routers' metrics. */
export async function evaluateCausal(model: Transformer, sequences: number[][], options: CausalEvalOptions): Promise<CausalEvalResult> {
  const { aux } = requireOptions(options, 'evaluateCausal', ['aux']);
  const { vocab, batchSize } = evalArgs(options, 'evaluateCausal');
  const training = await evaluate(model, sequences, { vocab, batchSize });
  const causal = await evaluate(model, sequences, { vocab, batchSize, causal: aux });
  const routers = await evaluateAuxRouters(model, sequences, { aux, vocab, batchSize });
  return { training, causal, routers };
}
