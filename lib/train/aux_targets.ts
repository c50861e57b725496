/**
 * What the auxiliary routers learn from (docs/INFERENCE.md): a training-mode forward of the frozen main model
 * is observed at every routed site; each observation becomes, per auxiliary router, its input rows
 * (the FFN input of the group's rows, or the MoD block input of the non-padding rows) and 0/1
 * targets (1 where the batch top-k selected the row for that expert / for the block). The loss of
 * a router is the mean binary cross-entropy over its (row, output) entries; routers are summed.
 * Targets are built on the host from the routing's rowSlots (a few KiB per site and step).
 */
import * as F from '../autograd/functions';
import { noGrad } from '../autograd/tape';
import { tidy } from '../autograd/scope';
import { tensor } from '../creation';
import { AuxRouter, AuxRouters } from '../model/aux_router';
import type { RoutingObserver } from '../model/layers';
import { Batch, Transformer } from '../model/transformer';
import { Tensor } from '../tensor';
import { at } from '../checked';

/** One auxiliary router's view of a site: group g of an MoE FFN, or a MoD layer. */
export interface AuxRouterRef {
  /** Stable key: 'layers.1.ffn/0' or 'layers.0/mod'. */
  key: string;
  kind: 'experts' | 'depth';
  site: string;
  layer: number;
  /** Group index (experts) or -1 (depth). */
  group: number;
  /** Outputs of the router: E_g, or 1. */
  outputs: number;
}

/** A router's training examples of one batch (device tensors; dispose() frees them). */
export interface AuxExamples {
  ref: AuxRouterRef;
  router: AuxRouter;
  inputs: Tensor;   // [n, d]
  targets: Tensor;  // float32 [n, outputs], 0/1
  weights: Tensor;  // float32 [n, outputs], 1 / (n · outputs)
  /** Host copy of the targets. */
  hostTargets: Float32Array;
  dispose(): void;
  [Symbol.dispose](): void;
}

type Observation =
  | { kind: 'experts'; site: string; v: Tensor; rowGroup: Tensor; rowSlots: Tensor }
  | { kind: 'depth'; site: string; x: Tensor; rows: Tensor };

class SelectionCapture implements RoutingObserver {
  readonly observations: Observation[] = [];

  experts(site: string, v: Tensor, rowGroup: Tensor, rowSlots: Tensor): void {
    this.observations.push({ kind: 'experts', site, v: v.clone(), rowGroup: rowGroup.clone(), rowSlots: rowSlots.clone() });
  }

  depth(site: string, x: Tensor, rows: Tensor): void {
    this.observations.push({ kind: 'depth', site, x: x.clone(), rows: rows.clone() });
  }
}

function layerOf(site: string): number {
  const m = /^layers\.(\d+)/.exec(site);
  return m === null ? -1 : Number(m[1]);
}

/** Every auxiliary router of a model, in layer order (MoD router before the FFN's groups). */
export function auxRouterRefs(model: Transformer): AuxRouterRef[] {
  const sites = model.routingSites();
  const refs: AuxRouterRef[] = [];
  for (const { site } of sites.depth) refs.push({ key: `${site}/mod`, kind: 'depth', site, layer: layerOf(site), group: -1, outputs: 1 });
  for (const { site, layout } of sites.experts) {
    layout.experts.forEach((experts, g) => {
      if (experts > 1) refs.push({ key: `${site}/${g}`, kind: 'experts', site, layer: layerOf(site), group: g, outputs: experts });
    });
  }
  return refs.sort((a, b) => a.layer - b.layer || (a.kind === b.kind ? a.group - b.group : a.kind === 'depth' ? -1 : 1));
}

function examples(ref: AuxRouterRef, router: AuxRouter, source: Tensor, rows: number[], targets: Float32Array): AuxExamples {
  const n = rows.length;
  const index = tensor(Int32Array.from(rows), { device: source.device });
  const inputs = source.indexSelect(0, index);
  index.dispose();
  const t = tensor(targets, { shape: [n, ref.outputs], device: source.device });
  const w = tensor(new Float32Array(n * ref.outputs).fill(1 / (n * ref.outputs)), { shape: [n, ref.outputs], device: source.device });
  return {
    ref, router, inputs, targets: t, weights: w, hostTargets: targets,
    dispose(): void {
      inputs.dispose();
      t.dispose();
      w.dispose();
    },
    [Symbol.dispose](): void {
      this.dispose();
    },
  };
}

/**
 * Runs the frozen model in training mode on a batch and returns each auxiliary router's examples
 * (routers with no rows in this batch are left out).
 */
export async function collectAuxExamples(model: Transformer, aux: AuxRouters, batch: Batch): Promise<AuxExamples[]> {
  const capture = new SelectionCapture();
  const observations = noGrad(() => tidy(() => {
    model.logits(batch, { observer: capture }).dispose();
    return capture.observations;
  }));
  const refs = new Map(auxRouterRefs(model).map((r) => [r.key, r]));
  const layouts = new Map(model.routingSites().experts.map((s) => [s.site, s.layout]));
  const out: AuxExamples[] = [];
  try {
    for (const o of observations) {
      if (o.kind === 'depth') {
        const selected = new Set(await o.rows.toArray());
        const rows: number[] = [];
        for (const [t, m] of batch.host.modality.entries()) if (m >= 0) rows.push(t);
        if (rows.length === 0) continue;
        const ref = refs.get(`${o.site}/mod`)!;
        out.push(examples(ref, aux.depthRouter(o.site), o.x, rows, Float32Array.from(rows, (t) => (selected.has(t) ? 1 : 0))));
        continue;
      }
      const layout = layouts.get(o.site)!;
      const W = Math.max(...layout.experts);
      const [rowGroup, rowSlots] = await Promise.all([o.rowGroup.toArray(), o.rowSlots.toArray()]);
      layout.experts.forEach((experts, g) => {
        if (experts <= 1) return;
        const rows: number[] = [];
        for (let t = 0; t < rowGroup.length; t++) if (rowGroup[t] === g) rows.push(t);
        if (rows.length === 0) return;
        const targets = new Float32Array(rows.length * experts);
        rows.forEach((t, i) => {
          for (let j = 0; j < experts; j++) targets[i * experts + j] = at(rowSlots, t * W + j, 'collectAuxExamples') >= 0 ? 1 : 0;
        });
        const router = aux.expertRouter(o.site, g)!;
        out.push(examples(refs.get(`${o.site}/${g}`)!, router, o.v, rows, targets));
      });
    }
  } catch (err) {
    for (const e of out) e.dispose();
    throw err;
  } finally {
    for (const o of observations) for (const t of Object.values(o)) if (t instanceof Tensor) t.dispose();
  }
  return out;
}

/** Σ over routers of the mean BCE (a scalar with a gradient to the routers), and each router's logits and BCE term. */
export function auxLoss(all: AuxExamples[]): { loss: Tensor | null; logits: Tensor[]; bce: Tensor[] } {
  const logits: Tensor[] = [];
  const bce: Tensor[] = [];
  let loss: Tensor | null = null;
  for (const e of all) {
    const z = e.router.logits(e.inputs);
    const { loss: l } = F.binaryCrossEntropyWithLogits(z, e.targets, e.weights);
    logits.push(z);
    bce.push(l);
    loss = loss === null ? l : F.add(loss, l);
  }
  return { loss, logits, bce };
}

/** Confusion counts of predictions a > 0.5 (logit > 0 after float32 sigmoid) against the targets. */
export interface Confusion {
  tp: number;
  fp: number;
  fn: number;
  tn: number;
}

export function confusionOf(logits: ArrayLike<number>, targets: ArrayLike<number>, into: Confusion = { tp: 0, fp: 0, fn: 0, tn: 0 }): Confusion {
  for (let i = 0; i < targets.length; i++) {
    const predicted = Math.fround(1 / (1 + Math.exp(-at(logits, i, 'confusionOf')))) > 0.5;
    const actual = at(targets, i, 'confusionOf') > 0.5;
    if (predicted && actual) into.tp++;
    else if (predicted) into.fp++;
    else if (actual) into.fn++;
    else into.tn++;
  }
  return into;
}

/** Accuracy, precision, recall (NaN where undefined) and the shares selected / predicted. */
export function confusionRates(c: Confusion): { accuracy: number; precision: number; recall: number; selected: number; predicted: number; entries: number } {
  const n = c.tp + c.fp + c.fn + c.tn;
  return {
    accuracy: n > 0 ? (c.tp + c.tn) / n : NaN,
    precision: c.tp + c.fp > 0 ? c.tp / (c.tp + c.fp) : NaN,
    recall: c.tp + c.fn > 0 ? c.tp / (c.tp + c.fn) : NaN,
    selected: n > 0 ? (c.tp + c.fn) / n : NaN,
    predicted: n > 0 ? (c.tp + c.fp) / n : NaN,
    entries: n,
  };
}
