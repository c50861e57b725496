/**
 * Upcycling (docs/TRAINING.md): from a checkpoint whose MoE layers have one expert per modality group
 * ("1t1i"), build a model with E_g experts per group, each a copy of the group's FFN; every other
 * parameter is copied; routers are new, drawn from N(0, routerStd²) (default 0.02), and Gumbel-
 * sigmoid routing is switched on. The caller restarts the learning-rate schedule and continues
 * the data from `dataPosition`.
 */
import * as path from 'path';
import { noGrad } from '../autograd/tape';
import { randn, tensor } from '../creation';
import type { DeviceInput } from '../device';
import { MomaError } from '../errors';
import { concat } from '../ops';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { hostToTensor } from '../io/safetensors';
import { Transformer, TransformerConfig } from '../model/transformer';
import { CheckpointFiles, readCheckpoint } from './checkpoint';
import { at } from '../checked';

export interface UpcycleOptions {
  /** Experts per group of the new model (same group order as the checkpoint). */
  experts: number[];
  routerStd?: number;
  seed?: number;
  /** Device of the new model (default: the checkpoint's). */
  device?: DeviceInput;
}

export function upcycleCheckpoint(dir: string, options: UpcycleOptions): { model: Transformer; config: TransformerConfig; dataPosition: unknown } {
  const { config: raw, state } = readCheckpoint(dir);
  const config = raw as TransformerConfig;
  const groups = config.ffn?.kind === 'moe' ? config.ffn.groups ?? [] : [];
  if (groups.length === 0 || groups.some((g) => g.experts !== 1)) {
    throw new MomaError('ERR_ARG', `upcycle: ${dir} is not a one-expert-per-group (1t1i) MoE checkpoint`);
  }
  if (!Array.isArray(options.experts) || options.experts.length !== groups.length || options.experts.some((e) => !Number.isInteger(e) || e < 1)) {
    throw new MomaError('ERR_ARG', `upcycle: experts must list ${groups.length} integers >= 1 (one per group)`);
  }
  const device = options.device ?? config.device ?? 'cpu';
  const newConfig: TransformerConfig = {
    ...config, device, seed: options.seed ?? config.seed,
    ffn: { ...config.ffn, groups: groups.map((g, i) => ({ ...g, experts: at(options.experts, i, 'upcycle: experts') })), gumbel: true },
  };
  const model = new Transformer(newConfig);
  const file = path.join(dir, 'model.safetensors');
  // read through the checkpoint's checksums (verified when it has them)
  const host = new CheckpointFiles(dir, 'upcycle').safetensors('model.safetensors');
  const tensors = new Map<string, Tensor>([...host.tensors].map(([name, t]) => [name, hostToTensor(t, device)]));
  const gen = new Generator(options.seed ?? 0);
  const E = options.experts.reduce((a, b) => a + b, 0);
  try {
    noGrad(() => {
      for (const [name, p] of model.namedParameters()) {
        const base = name.split('.').pop() as string;
        const isExpert = /\.ffn\.(w1|w2|w3|router)$/.test(name);
        if (!isExpert) {
          const src = tensors.get(name);
          if (src === undefined) throw new MomaError('ERR_FILE', `upcycle: ${file} lacks parameter '${name}'`);
          model.setParameter(name, src);
          tensors.delete(name);
          continue;
        }
        if (base === 'router') {
          // new routers for the routed groups; single-expert groups keep no router (zero columns)
          const d = p.size(0);
          const routed = new Float32Array(E);
          let begin = 0;
          for (const count of options.experts) {
            if (count > 1) routed.fill(1, begin, begin + count);
            begin += count;
          }
          const mask = tensor(routed, { shape: [1, E], device });
          const draw = randn([d, E], { device, std: options.routerStd ?? 0.02, generator: gen });
          model.setParameter(name, draw.mul(mask));
          draw.dispose();
          mask.dispose();
          continue;
        }
        const src = tensors.get(name);
        if (src === undefined) throw new MomaError('ERR_FILE', `upcycle: ${file} lacks parameter '${name}'`);
        const pieces: Tensor[] = [];
        options.experts.forEach((count, g) => {
          const one = src.slice(0, g, g + 1);
          for (let i = 0; i < count; i++) pieces.push(one);
        });
        model.setParameter(name, concat(pieces, 0));
        for (const t of new Set(pieces)) t.dispose();
      }
    });
  } catch (err) {
    model.dispose();
    throw err;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  return { model, config: newConfig, dataPosition: state.dataPosition };
}
