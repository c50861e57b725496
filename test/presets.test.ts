// Model presets and parameter counting: counts from the config equal Transformer.numParameters()
// for tiny configs built on the CPU, the Table 1 tiers match SPEC §7 within 3% (counted from the
// config only: no tensors are allocated for them), every preset validates, and `moma model`.
import {
  countParameters, forwardFlopsPerRow, listPresets, MomaError, moeLayoutOf, preset, swigluHidden, Transformer, TransformerConfig, validateConfig,
} from '../lib';
import type { MoeGroupConfig } from '../lib';
import { buildProgram, reportError } from '../lib/cli/main';
import type { ModelInfo } from '../lib/cli/model';

async function run(args: string[]): Promise<{ out: string; err: string; exitCode: number | string | undefined }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = jest.spyOn(console, 'log').mockImplementation((...parts: unknown[]) => { out.push(parts.join(' ')); });
  const error = jest.spyOn(console, 'error').mockImplementation((...parts: unknown[]) => { err.push(parts.join(' ')); });
  const before = process.exitCode;
  let exitCode: number | string | undefined;
  try {
    await buildProgram().exitOverride().parseAsync(['node', 'moma', ...args]).catch(reportError);
  } finally {
    exitCode = process.exitCode ?? undefined;
    process.exitCode = before;
    log.mockRestore();
    error.mockRestore();
  }
  return { out: out.join('\n'), err: err.join('\n'), exitCode };
}

const TINY = listPresets().filter((n) => n.startsWith('tiny-'));

describe('presets', () => {
  test('the list has the tiny presets and every Table 1 variant of every tier', () => {
    const names = listPresets();
    expect(TINY).toEqual(expect.arrayContaining(['tiny-dense', 'tiny-moe8x', 'tiny-1t1i', 'tiny-4t4i', 'tiny-4t4i-mod']));
    for (const tier of ['90m', '435m', '1.4b']) {
      for (const v of ['dense', 'moe8x', '1t1i', '4t4i', 'dense-mod', 'moe8x-mod', '4t4i-mod']) expect(names).toContain(`${v}-${tier}`);
    }
    expect(new Set(names).size).toBe(names.length);
  });

  test.each(listPresets())('%s validates', (name) => {
    const config = preset(name);
    const c = validateConfig(config);
    if (c.ffn.kind === 'moe') moeLayoutOf({ groups: c.ffn.groups as MoeGroupConfig[], modalities: c.modalities });
    if (name.startsWith('tiny-')) {
      expect(config.vocabSize).toBe(512);
      expect(config.dModel).toBeGreaterThanOrEqual(64);
      expect(config.dModel).toBeLessThanOrEqual(128);
      expect(config.layers).toBeGreaterThanOrEqual(2);
      expect(config.layers).toBeLessThanOrEqual(5);
    } else {
      expect(config.vocabSize).toBe(65536);
      if (config.ffn.kind === 'moe') {
        expect(config.ffn.capacityFactor).toBe(1);
        expect(config.ffn.router).toBe('sigmoid');
      }
    }
    expect(config.mod === null).toBe(!name.includes('-mod'));
    if (config.mod) expect(config.mod).toEqual({ interval: 2, capacity: 0.25 });
  });

  test('Table 1 shapes: SwiGLU hidden 2/3·ffn rounded up to 8, heads and groups', () => {
    expect([2048, 4096, 8192, 9216].map(swigluHidden)).toEqual([1368, 2736, 5464, 6144]);
    const shape = (n: string): number[] => { const c = preset(n); return [c.layers, c.dModel, c.ffn.dFF, c.heads]; };
    expect(shape('dense-90m')).toEqual([8, 512, 1368, 8]);
    expect(shape('dense-mod-90m')).toEqual([14, 512, 1368, 8]);
    expect(shape('4t4i-435m')).toEqual([24, 1024, 2736, 16]);
    expect(shape('moe8x-mod-435m')).toEqual([40, 1024, 2736, 16]);
    expect(shape('1t1i-1.4b')).toEqual([24, 2048, 5464, 16]);
    expect(shape('4t4i-mod-1.4b')).toEqual([32, 2304, 6144, 18]);
    expect(preset('moe8x-90m').ffn.groups).toEqual([{ modality: ['text', 'image'], experts: 8 }]);
    expect(preset('4t4i-90m').ffn.groups).toEqual([{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }]);
    expect(preset('1t1i-90m').ffn.groups).toEqual([{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }]);
  });

  test('overrides merge, and the result is a fresh object', () => {
    const a = preset('tiny-4t4i', { device: 'cpu', seed: 7, ffn: { capacityFactor: 2 }, mod: { capacity: 0.5 } });
    expect(a.seed).toBe(7);
    expect(a.ffn.capacityFactor).toBe(2);
    expect(a.ffn.groups).toHaveLength(2);
    expect(a.mod).toEqual({ interval: 2, capacity: 0.5 });
    expect(preset('tiny-4t4i-mod', { mod: null }).mod).toBeNull();
    (a.ffn.groups![0] as MoeGroupConfig).experts = 99;
    expect(preset('tiny-4t4i').ffn.groups![0]!.experts).toBe(4);
    expect(preset('TINY-DENSE').dModel).toBe(preset('tiny-dense').dModel);
    expect(() => preset('tiny-dense', { heads: 3 })).toThrow(/heads \(3\) must divide/);
  });

  test('unknown presets throw ERR_ARG naming the preset and listing the known ones', () => {
    let err: unknown;
    try {
      preset('huge-moe');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MomaError);
    expect((err as MomaError).code).toBe('ERR_ARG');
    expect((err as Error).message).toContain("'huge-moe'");
    for (const name of listPresets()) expect((err as Error).message).toContain(name);
  });
});

describe('countParameters', () => {
  const built = (config: TransformerConfig): number => {
    const model = new Transformer({ ...config, device: 'cpu' });
    try {
      return model.numParameters();
    } finally {
      model.dispose();
    }
  };

  test.each(TINY)('%s: equals Transformer.numParameters()', (name) => {
    const config = preset(name);
    const count = countParameters(config);
    expect(count.total).toBe(built(config));
    expect(Object.values(count.components).reduce((a, b) => a + b, 0)).toBe(count.total);
  });

  const small = (ffn: TransformerConfig['ffn'], extra: Partial<TransformerConfig> = {}): TransformerConfig => ({
    vocabSize: 40, dModel: 16, layers: 3, heads: 2, ffn, ...extra,
  });
  test.each<[string, TransformerConfig]>([
    ['dense, pre norm', small({ kind: 'dense', dFF: 24 }, { norm: 'pre' })],
    ['1t1i (zero router columns)', small({ kind: 'moe', dFF: 24, groups: [{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }] })],
    ['7t1i, MoD interval 2', small({ kind: 'moe', dFF: 24, groups: [{ modality: 'text', experts: 7 }, { modality: 'image', experts: 1 }] }, { mod: { interval: 2 } })],
    ['3 modalities, token choice, MoD interval 3', small({ kind: 'moe', dFF: 8, routing: 'token-choice', topK: 2, groups: [{ modality: ['a', 'b'], experts: 3 }, { modality: 'c', experts: 2 }] },
      { modalities: ['a', 'b', 'c'], layers: 4, mod: { interval: 3, capacity: 0.5 } })],
  ])('%s: equals Transformer.numParameters()', (_, config) => {
    expect(countParameters(config).total).toBe(built(config));
  });

  test('components and active parameters follow the stated convention', () => {
    const p = countParameters(preset('4t4i-90m'));
    const d = 512, V = 65536, L = 8, f = 1368;
    expect(p.components).toEqual({
      embedding: V * d, lmHead: d * V, attention: L * (4 * d * d + 4 * d), norms: L * 2 * d + d,
      experts: L * 8 * 3 * d * f, routers: L * d * 8, unusedRouterColumns: 0,
    });
    expect(p.expertsPerLayer).toBe(8);
    expect(p.activeExpertsPerRow).toBe(1);
    expect(p.active).toBe(p.total - L * 7 * 3 * d * f);
    // compute-matched: the 8-expert model's active count is the dense count plus its routers
    const dense = countParameters(preset('dense-90m'));
    expect(dense.active).toBe(dense.total);
    expect(p.active).toBe(dense.total + L * d * 8);
    const oneEach = countParameters(preset('1t1i-90m'));
    expect(oneEach.components.routers).toBe(0);
    expect(oneEach.components.unusedRouterColumns).toBe(L * d * 2);
    expect(oneEach.active).toBe(oneEach.total - L * 3 * d * f);
    const mod = countParameters(preset('dense-mod-90m'));
    expect(mod.modLayers).toBe(7);
    expect(mod.components.routers).toBe(7 * d);
  });

  // SPEC §7 totals (millions); 1t1i has no column in Table 1
  const SPEC_M: Record<string, number> = {
    'dense-90m': 92.3, 'moe8x-90m': 210.0, '4t4i-90m': 210.0, 'dense-mod-90m': 111.2, 'moe8x-mod-90m': 317.1, '4t4i-mod-90m': 317.1,
    'dense-435m': 436.6, 'moe8x-435m': 1848.6, '4t4i-435m': 1848.6, 'dense-mod-435m': 638.2, 'moe8x-mod-435m': 2991.6, '4t4i-mod-435m': 2991.6,
    'dense-1.4b': 1476.8, 'moe8x-1.4b': 7116.7, '4t4i-1.4b': 7116.7, 'dense-mod-1.4b': 2340, 'moe8x-mod-1.4b': 11900, '4t4i-mod-1.4b': 11900,
  };
  test.each(Object.entries(SPEC_M))('%s: within 3%% of SPEC §7 (%sM)', (name, millions) => {
    const total = countParameters(preset(name)).total;
    expect(Math.abs(total / 1e6 - millions) / millions).toBeLessThan(0.03);
  });

  test('errors: an invalid config is rejected like the Transformer rejects it', () => {
    expect(() => countParameters({ ...preset('tiny-dense'), heads: 5 })).toThrow(MomaError);
    expect(() => countParameters({ ...preset('tiny-moe8x'), ffn: { kind: 'moe', dFF: 8, groups: [{ modality: 'audio', experts: 2 }] } })).toThrow(/unknown modality 'audio'/);
  });
});

describe('forwardFlopsPerRow', () => {
  test('SPEC §6 terms; 8-expert models at c = 1 match their dense tier up to the routers', () => {
    const d = 512, V = 65536, L = 8, f = 1368;
    const dense = forwardFlopsPerRow(preset('dense-90m'), { seqLen: 4096 });
    expect(dense.attendedKeys).toBe(2048);
    expect(dense.overall.attentionProjections).toBe(L * 8 * d * d);
    expect(dense.overall.attentionScores).toBe(L * 4 * d * 2048);
    expect(dense.overall.ffn).toBe(L * 6 * d * f);
    expect(dense.overall.routers).toBe(0);
    expect(dense.overall.lmHead).toBe(2 * d * V);
    expect(dense.overall.total).toBe(dense.overall.excludingScores + dense.overall.attentionScores);
    expect(dense.overall.training).toBe(3 * dense.overall.total);
    const moma = forwardFlopsPerRow(preset('4t4i-90m'));
    expect(moma.overall.total - dense.overall.total).toBe(L * 2 * d * 4);
    const moe = forwardFlopsPerRow(preset('moe8x-90m'));
    expect(moe.overall.total - dense.overall.total).toBe(L * 2 * d * 8);
    // MoD: half the layers run on c_d = 0.25 of the rows, attending to c_d of the keys; 2d per MoD router
    const mod = forwardFlopsPerRow(preset('dense-mod-90m'));
    expect(mod.overall.attentionProjections).toBe((7 + 7 * 0.25) * 8 * d * d);
    expect(mod.overall.attentionScores).toBe((7 + 7 * 0.25 * 0.25) * 4 * d * 2048);
    expect(mod.overall.routers).toBe(7 * 2 * d);
  });

  test('tiny MoD presets: 5 layers with 0, 2, 4 routed at 0.25 — 2.75 layer-equivalents against the plain 3', () => {
    for (const v of ['dense', 'moe8x', '4t4i']) {
      const plain = forwardFlopsPerRow(preset(`tiny-${v}`)).overall;
      const mod = forwardFlopsPerRow(preset(`tiny-${v}-mod`)).overall;
      const perLayer = (plain.excludingScores - plain.lmHead - plain.routers) / 3;
      expect(mod.attentionProjections + mod.ffn).toBeCloseTo(2.75 * perLayer, 6);
      const ratio = mod.excludingScores / plain.excludingScores;
      expect(ratio).toBeGreaterThan(0.9);
      expect(ratio).toBeLessThan(0.95);
    }
  });
});

describe('moma model', () => {
  test('info --json: config, parameters and FLOPs of a preset', async () => {
    const { out, exitCode } = await run(['model', 'info', 'tiny-4t4i', '--json']);
    expect(exitCode).toBeUndefined();
    const info = JSON.parse(out) as ModelInfo;
    expect(info.name).toBe('tiny-4t4i');
    expect(info.config).toEqual(preset('tiny-4t4i'));
    expect(info.parameters).toEqual(countParameters(preset('tiny-4t4i')));
    expect(info.flopsPerRow).toEqual(forwardFlopsPerRow(preset('tiny-4t4i'), { seqLen: 4096 }));
    const short = JSON.parse((await run(['model', 'info', 'tiny-4t4i', '--json', '--seq', '256'])).out) as ModelInfo;
    expect(short.flopsPerRow.seqLen).toBe(256);
    expect(short.flopsPerRow.overall.excludingScores).toBe(info.flopsPerRow.overall.excludingScores);
  });

  test('info prints the config, the parameter breakdown and the FLOPs per row', async () => {
    const { out, exitCode } = await run(['model', 'info', 'dense-90m']);
    expect(exitCode).toBeUndefined();
    expect(out).toMatch(/^dense-90m: Table 1/);
    expect(out).toMatch(/dModel +512/);
    expect(out).toMatch(/total +92,332,544 \(92\.33M\)/);
    expect(out).toMatch(/active per token/);
    expect(out).toMatch(/embedding +33,554,432/);
    expect(out).toMatch(/L_t = seq\/2 = 2048 at seq 4096/);
    expect(out).toMatch(/attention scores/);
  });

  test('list shows every preset', async () => {
    const { out } = await run(['model', 'list']);
    for (const name of listPresets()) expect(out).toMatch(new RegExp(`^${name.replace('.', '\\.')} `, 'm'));
    const rows = JSON.parse((await run(['model', 'list', '--json'])).out) as { name: string; total: number }[];
    expect(rows.map((r) => r.name)).toEqual(listPresets());
  });

  test('an unknown preset exits with code 1 and lists the presets', async () => {
    const { out, err, exitCode } = await run(['model', 'info', 'gpt-5']);
    expect(exitCode).toBe(1);
    expect(out).toBe('');
    expect(err).toMatch(/^moma: ERR_ARG: unknown preset 'gpt-5'; known presets: tiny-dense, /);
    expect(err).toContain('4t4i-mod-1.4b');
  });
});
