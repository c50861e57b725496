/**
 * Auxiliary routers (docs/INFERENCE.md): small per-site MLPs a = sigmoid(SiLU(v·A1)·A2) that predict,
 * from a row alone, what the batch-level top-k of the main model would decide — one per routed
 * expert group of every MoE layer (E_g outputs) and one per MoD layer (1 output). They are trained
 * after the main model (lib/run/aux_train.ts) and let a causal model route at inference: an
 * expert takes row t iff a_{t,e} > 0.5, a MoD block runs on t iff â_t > 0.5.
 *
 * Parameter names follow the site they serve: `layers.1.ffn.aux_router.0.a1.weight` (group 0 of
 * the MoE FFN of layer 1), `layers.0.mod_aux_router.a2.weight` (MoD layer 0). A1 is stored as a
 * Linear [d/2, d], A2 as [E_g, d/2] (PyTorch layout). The routers are a Module of their own, kept
 * apart from the model's parameters, so the main model's optimizer never sees them.
 */
import * as F from '../autograd/functions';
import { full } from '../creation';
import type { DeviceInput } from '../device';
import { concat } from '../ops';
import { MomaError } from '../errors';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { Module } from '../nn/module';
import { CausalRouting, InitOptions, Linear } from './layers';
import type { MoeLayout } from '../moe/ops';
import { at } from '../checked';

/** The routed sites of a model: its MoE FFNs (with their layouts) and its MoD layers. */
export interface RoutingSites {
  experts: { site: string; layout: MoeLayout }[];
  depth: { site: string }[];
}

export const AUX_ROUTERS_FILE = 'aux_routers.safetensors';

/** a = sigmoid(SiLU(v·A1)·A2) as logits (forward returns SiLU(v·A1)·A2; callers apply sigmoid). */
export class AuxRouter extends Module {
  private readonly a1: Linear;
  private readonly a2: Linear;

  constructor(readonly dModel: number, readonly outputs: number, init: InitOptions) {
    super();
    const hidden = Math.max(1, Math.floor(dModel / 2));
    this.a1 = this.addModule('a1', new Linear(dModel, hidden, init));
    this.a2 = this.addModule('a2', new Linear(hidden, outputs, init));
  }

  /** Logits [N, outputs] for rows v [N, d] (computed in float32). */
  logits(v: Tensor): Tensor {
    return this.a2.forward(F.silu(this.a1.forward(F.cast(v, 'float32'))));
  }
}

/** The auxiliary routers of one model, by site. */
export class AuxRouters extends Module implements CausalRouting {
  private readonly expertRouters = new Map<string, { layout: MoeLayout; groups: (AuxRouter | null)[] }>();
  private readonly depthRouters = new Map<string, AuxRouter>();

  constructor(readonly dModel: number, readonly sites: RoutingSites, options: { seed?: number; initStd?: number; device?: DeviceInput } = {}) {
    super();
    const init: InitOptions = { device: options.device ?? 'cpu', generator: new Generator(options.seed ?? 0), std: options.initStd ?? 0.02 };
    for (const { site, layout } of sites.experts) {
      const groups = layout.experts.map((experts, g) => (experts > 1 ? this.addModule(`${site}.aux_router.${g}`, new AuxRouter(dModel, experts, init)) : null));
      this.expertRouters.set(site, { layout, groups });
    }
    for (const { site } of sites.depth) this.depthRouters.set(site, this.addModule(`${site}.mod_aux_router`, new AuxRouter(dModel, 1, init)));
  }

  /** True when the model has nothing to route (dense, no MoD): causal mode equals training mode. */
  get empty(): boolean {
    return this.depthRouters.size === 0 && [...this.expertRouters.values()].every((r) => r.groups.every((g) => g === null));
  }

  /** The aux router of group `group` at an MoE site (null for single-expert groups). */
  expertRouter(site: string, group: number): AuxRouter | null {
    const entry = this.expertRouters.get(site);
    if (entry === undefined) throw new MomaError('ERR_ARG', `AuxRouters: no MoE site '${site}'`);
    const router = entry.groups[group];
    if (router === undefined) throw new MomaError('ERR_ARG', `AuxRouters: site '${site}' has no group ${group}`);
    return router;
  }

  depthRouter(site: string): AuxRouter {
    const router = this.depthRouters.get(site);
    if (router === undefined) throw new MomaError('ERR_ARG', `AuxRouters: no MoD site '${site}'`);
    return router;
  }

  /** a [T, E] (float32 probabilities, one column per global expert; single-expert groups' columns 0). */
  expertSelect(site: string, v: Tensor): Tensor {
    const entry = this.expertRouters.get(site);
    if (entry === undefined) throw new MomaError('ERR_ARG', `AuxRouters: no MoE site '${site}'`);
    const T = v.size(0);
    const parts = entry.groups.map((router, g) =>
      router === null ? full([T, at(entry.layout.experts, g, 'AuxRouters.expertSelect')], 0, { device: v.device }) : router.logits(v).sigmoid());
    if (parts.length === 1) return parts[0]!;
    const out = concat(parts, 1);
    for (const p of parts) p.dispose();
    return out;
  }

  /** â [T] (float32 probabilities) at a MoD site. */
  depthSelect(site: string, x: Tensor): Tensor {
    const z = this.depthRouter(site).logits(x);
    const a = z.sigmoid();
    z.dispose();
    const out = a.reshape([x.size(0)]);
    a.dispose();
    return out;
  }
}
