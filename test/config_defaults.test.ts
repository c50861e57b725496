// The mixture-of-depths defaults are resolved once, by validateConfig: the resolved config carries
// them, and everything that reads a config (the model, parameter and FLOPs counts, presets) sees
// the same interval and capacity whether they were given or left out.
import { forwardFlopsPerRow, countParameters } from '../lib/model/params';
import { preset } from '../lib/model/presets';
import { MOD_DEFAULTS, Transformer, TransformerConfig, validateConfig } from '../lib/model/transformer';
import { trainingFlops } from '../lib/train/flops';

const BASE: TransformerConfig = {
  vocabSize: 64, dModel: 16, layers: 5, heads: 2, ffn: { kind: 'dense', dFF: 32 }, seed: 3,
};

describe('mixture-of-depths defaults', () => {
  test('validateConfig fills in what is left out and keeps what is given', () => {
    expect(MOD_DEFAULTS).toEqual({ interval: 2, capacity: 0.25 });
    expect(validateConfig({ ...BASE, mod: {} }).mod).toEqual(MOD_DEFAULTS);
    expect(validateConfig({ ...BASE, mod: { interval: 3 } }).mod).toEqual({ interval: 3, capacity: MOD_DEFAULTS.capacity });
    expect(validateConfig({ ...BASE, mod: { capacity: 0.5 } }).mod).toEqual({ interval: MOD_DEFAULTS.interval, capacity: 0.5 });
    expect(validateConfig({ ...BASE, mod: null }).mod).toBeNull();
    expect(validateConfig(BASE).mod).toBeNull();
  });

  test('a model, its counts and its FLOPs are the same with the defaults left out or written', () => {
    const implicit: TransformerConfig = { ...BASE, mod: {} };
    const explicit: TransformerConfig = { ...BASE, mod: { ...MOD_DEFAULTS } };
    const a = new Transformer(implicit);
    const b = new Transformer(explicit);
    try {
      expect(a.config.mod).toEqual(b.config.mod);
      expect(a.routingSites().depth.map((d) => d.site)).toEqual(['layers.0', 'layers.2', 'layers.4']);
      expect(b.routingSites().depth).toEqual(a.routingSites().depth);
      expect(a.numParameters()).toBe(b.numParameters());
    } finally {
      a.dispose();
      b.dispose();
    }
    expect(countParameters(implicit)).toEqual(countParameters(explicit));
    expect(countParameters(implicit).modLayers).toBe(3);
    expect(forwardFlopsPerRow(implicit)).toEqual(forwardFlopsPerRow(explicit));
    const rows = { modality: [0, 0, 1, 1, 1, -1, 0, 1], segStart: [0, 0, 0, 0, 0, 5, 6, 6] };
    expect(trainingFlops(implicit, rows)).toEqual(trainingFlops(explicit, rows));
  });

  test('presets with MoD use the defaults; a partial override keeps the rest', () => {
    const config = preset('tiny-4t4i-mod');
    expect(config.mod).toEqual(MOD_DEFAULTS);
    expect(validateConfig(preset('tiny-4t4i', { mod: { interval: 3 } })).mod).toEqual({ interval: 3, capacity: MOD_DEFAULTS.capacity });
  });
});
