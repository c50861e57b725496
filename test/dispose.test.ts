// `using` frees every disposable moma hands out (Symbol.dispose): modules, the optimizer, the
// Trainer, KV caches, MoMaFFN forward contexts and the MoE op bundles (partition, routing,
// routing statistics). Each block must leave memoryStats exactly where it found it.
import {
  AdamW, backward, Generator, KVCache, Linear, memoryStats, MemoryStats, MoMaFFN, rand, SYNTHETIC_VOCAB_SIZE, SyntheticSource,
  syntheticVocab, synchronize, tensor, Trainer, Transformer,
} from '../lib';
import { moePartition, route, routerScores, routingStats } from '../lib/kernels';
import { collectGarbage } from './support/gc';

const device = 'cpu';

async function settled(): Promise<MemoryStats> {
  await synchronize(device);
  return memoryStats(device);
}

async function expectBaseline(base: MemoryStats): Promise<void> {
  const now = await settled();
  expect(now.liveStorages).toBe(base.liveStorages);
  expect(now.allocated).toBe(base.allocated);
}

beforeAll(async () => {
  await collectGarbage(device);
});

describe('Symbol.dispose and `using`', () => {
  test('Module (Linear, Transformer)', async () => {
    const base = await settled();
    {
      using layer = new Linear(8, 4, { device, generator: new Generator(1), std: 0.02 });
      using model = new Transformer({ vocabSize: SYNTHETIC_VOCAB_SIZE, dModel: 16, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 24 } });
      await layer.parameters()[0]!.toArray();
      expect((await settled()).liveStorages).toBeGreaterThan(base.liveStorages + model.parameters().length);
    }
    await expectBaseline(base);
  });

  test('AdamW with its moment state', async () => {
    const base = await settled();
    {
      using layer = new Linear(8, 4, { device, generator: new Generator(2), std: 0.02 });
      using optimizer = new AdamW(layer, { lr: 1e-2 });
      {
        using x = rand([3, 8], { device });
        using y = layer.forward(x);
        using dy = rand([3, 4], { device });
        backward(y, dy);
      }
      optimizer.update();
      expect(optimizer.stateDict().size).toBe(1);
    }
    await expectBaseline(base);
  });

  test('Trainer (and the model it trains)', async () => {
    const base = await settled();
    {
      using model = new Transformer({ vocabSize: SYNTHETIC_VOCAB_SIZE, dModel: 16, layers: 1, heads: 2, ffn: { kind: 'dense', dFF: 24 } });
      using trainer = new Trainer({
        model, data: new SyntheticSource({ batchSize: 2, seqLen: 16 }), vocab: syntheticVocab, steps: 2, schedule: { peak: 1e-3, warmup: 1 }, logEvery: 1,
      });
      expect((await trainer.run()).steps).toBe(2);
    }
    await expectBaseline(base);
  });

  test('KVCache', async () => {
    const base = await settled();
    {
      using cache = new KVCache(2);
      using k = rand([3, 2, 4], { device });
      using v = rand([3, 2, 4], { device });
      for (const layer of cache.layers) layer.append(k, v);
      expect(cache.layers[1]!.length).toBe(3);
    }
    await expectBaseline(base);
  });

  test('MoMaFFN, its forward context and the routing bundles', async () => {
    const base = await settled();
    {
      using ffn = new MoMaFFN({ dModel: 8, dFF: 12, groups: [{ modality: 'text', experts: 2 }, { modality: 'image', experts: 3 }], device, seed: 4 });
      using x = rand([6, 8], { device });
      using modality = tensor(Int32Array.from([0, 1, 1, 0, -1, 1]), { device });
      const out = ffn.forward(x, modality);
      using ctx = out.ctx;
      using y = out.y;
      expect(y.shape).toEqual([6, 8]);
      expect(ctx.routing.slotRow.disposed).toBe(false);

      using partition = moePartition(modality, ffn.layout);
      using logits = rand([6, 5], { device });
      using scores = routerScores(logits, { rowGroup: partition.rowGroup, layout: ffn.layout });
      using routing = route(scores, partition, { layout: ffn.layout });
      using stats = routingStats(partition, routing, ffn.layout);
      expect(stats.expertStats.shape).toEqual([5, 2]);
    }
    await expectBaseline(base);
  });
});
