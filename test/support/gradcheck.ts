/**
 * Whole-model gradient checks: the gradient (already in each parameter's .grad) against central
 * finite differences of the loss along one random ±1 direction over every parameter.
 */
import { Module, noGrad, Tensor, tensor, tidy } from '../../lib';
import { mulberry32 } from './reference';

export interface DirectionalCheck {
  /** Per parameter (namedParameters order), the ±1 direction. */
  dirs: Float32Array[];
  /** <gradient, direction> from the parameters' .grad. */
  analytic: number;
  /** (loss(θ + h·eps·d) − loss(θ − h·eps·d)) / (2·h·eps). */
  central(h: number): Promise<number>;
  dispose(): void;
}

export async function directionalCheck(model: Module, loss: () => Tensor, options: { seed?: number; eps: number; device?: string }): Promise<DirectionalCheck> {
  const params = [...model.namedParameters()];
  const rng = mulberry32(options.seed ?? 9);
  const dirs = params.map(([, p]) => Float32Array.from({ length: p.numel }, () => (rng() < 0.5 ? -1 : 1)));
  let analytic = 0;
  for (const [i, [, p]] of params.entries()) {
    const g = await (p.grad as Tensor).toArray();
    for (let j = 0; j < g.length; j++) analytic += (g[j] as number) * (dirs[i]![j] as number);
  }
  const saved = params.map(([, p]) => p.clone());
  const directions = params.map(([, p], i) => tensor(dirs[i]!, { shape: p.shape as number[], device: options.device ?? p.device }));
  const lossAt = async (scale: number): Promise<number> => {
    noGrad(() => params.forEach(([name], i) => model.setParameter(name, saved[i]!.add(directions[i]!.scale(scale)))));
    const t = tidy(() => noGrad(loss));
    const value = await t.item();
    t.dispose();
    noGrad(() => params.forEach(([name], i) => model.setParameter(name, saved[i]!.clone())));
    return value;
  };
  return {
    dirs,
    analytic,
    central: async (h: number): Promise<number> => ((await lossAt(h * options.eps)) - (await lossAt(-h * options.eps))) / (2 * options.eps * h),
    dispose: () => {
      for (const t of [...saved, ...directions]) t.dispose();
    },
  };
}
