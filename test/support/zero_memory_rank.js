// One rank of test/zero_memory.test.ts, started by `moma launch --no-moma node THIS DIST SHARDING`:
// trains a parameter-heavy model (vocabulary 8192 × d 64) with AdamW, sharded as asked over the
// ranks, and prints one JSON line: the allocator's bytes after the backward (parameters,
// optimizer state, full gradients), between steps (parameters and optimizer state), the step's
// peak, and memoryPerRank's estimate.
const [dist, sharding] = process.argv.slice(2);
const moma = require(dist);
const { ZeroOptimizer, memoryPerRank } = require(`${dist}/train/zero`);
const { allReduceGradients } = require(`${dist}/train/data_parallel`);

(async () => {
  const world = await moma.distributed.init({ device: 'cpu' });
  const model = new moma.Transformer({ vocabSize: 8192, dModel: 64, layers: 1, heads: 2, seed: 3, device: 'cpu', ffn: { kind: 'dense', dFF: 64 } });
  const opt = new moma.AdamW(model, { lr: 1e-3 });
  const zero = sharding === 'none' ? null : new ZeroOptimizer(opt, sharding, { rank: world.rank, ranks: world.worldSize });
  const seq = Array.from({ length: 16 }, (_, i) => (i === 0 ? 1 : 2 + ((i * 37 + world.rank * 11) % 8000)));
  const batch = moma.makeBatch([seq], { padId: 0, bosId: 1, modalityOf: () => 0, modalities: 2, device: 'cpu' });
  let afterBackward = 0;
  const step = async () => {
    moma.tidy(() => moma.backward(model.loss(batch, { training: true }).loss));
    await moma.synchronize('cpu');
    afterBackward = moma.memoryStats('cpu').allocated;
    if (zero) zero.update();
    else {
      allReduceGradients(model.parameters());
      opt.update();
    }
    opt.zeroGrad();
    await moma.synchronize('cpu');
  };
  await step();
  await step();
  const held = moma.memoryStats('cpu').allocated;
  moma.resetPeakMemory('cpu');
  await step();
  const peak = moma.memoryStats('cpu').peakAllocated;
  const estimate = memoryPerRank(model.config, { worldSize: world.worldSize, sharding, batchSize: 1, seqLen: 16 });
  console.log(JSON.stringify({ rank: world.rank, afterBackward, held, peak, estimate }));
  moma.distributed.destroy();
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
