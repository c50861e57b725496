// One process of test/zero_memory.test.ts: `node THIS DIST SHARDING CASE_JSON`, alone (one rank) or
// under `moma launch --no-moma` (WORLD_SIZE ranks). CASE_JSON is { config, batchSize, seqLen }.
// Trains the model with AdamW, sharded as asked, and prints one JSON line: the allocator's bytes
// after the backward (parameters, optimizer state, full gradients), between steps (parameters and
// optimizer state), the measured step's peak, and memoryPerRank's estimate (queued regime); under
// zero3 also the sizes of the FSDP units.
//
// The measured step runs behind a stall: a chain of matrix products queued first keeps the CPU
// worker busy while the host queues the whole forward and backward, so no tensor of the step is
// freed before the backward is queued: the queued regime of lib/train/memory_model.ts, measured
// deterministically. `stalled` says whether it held (no task of the step had run when the host
// finished queueing the backward); the stall doubles until it does.
const [dist, sharding, caseJson] = process.argv.slice(2);
const moma = require(dist);
const { ZeroOptimizer } = require(`${dist}/train/zero`);
const { memoryPerRank } = require(`${dist}/train/memory_model`);
const { allReduceGradients } = require(`${dist}/train/data_parallel`);

(async () => {
  const spec = JSON.parse(caseJson);
  const distributed = process.env.WORLD_SIZE !== undefined;
  const world = distributed ? await moma.distributed.init({ device: 'cpu' }) : { rank: 0, worldSize: 1 };
  const model = new moma.Transformer({ seed: 3, device: 'cpu', ...spec.config });
  const opt = new moma.AdamW(model, { lr: 1e-3 });
  const zero = sharding === 'none' ? null : new ZeroOptimizer(opt, sharding, { rank: world.rank, ranks: world.worldSize });
  const V = spec.config.vocabSize;
  const seqs = Array.from({ length: spec.batchSize }, (_, b) => Array.from({ length: spec.seqLen }, (_, i) => (i === 0 ? 1 : 2 + ((i * 37 + b * 11 + world.rank * 5) % (V - 2)))));
  const batch = moma.makeBatch(seqs, { padId: 0, bosId: 1, modalityOf: (id) => (id % 3 === 0 ? 1 : 0), modalities: 2, device: 'cpu' });
  const stats = () => moma.memoryStats('cpu');
  const queue = () => moma.runtimeStats('cpu');
  let afterBackward = 0;
  // runs fn behind a stall of `products` matrix products; whether no task of fn had run when fn returned
  const behindStall = (products, fn) => {
    const stall = [];
    if (products > 0) {
      const a = moma.randn([512, 512], { device: 'cpu', std: 1 / Math.sqrt(512) });
      stall.push(a);
      for (let i = 0; i < products; i++) stall.push(moma.matmul(stall[stall.length - 1], a));
    }
    const base = stats().allocated;
    const before = queue().tasksSubmitted;
    moma.resetPeakMemory('cpu');
    fn();
    const q = queue();
    return { base, stall, stalled: q.tasksSubmitted - q.pendingTasks <= before };
  };
  const step = async (products) => {
    const backward = behindStall(products, () => moma.tidy(() => moma.backward(model.loss(batch, { training: true }).loss)));
    await moma.synchronize('cpu');
    const backwardPeak = stats().peakAllocated - backward.base;
    for (const t of backward.stall) t.dispose();
    afterBackward = stats().allocated;
    const update = behindStall(products, () => {
      if (zero) zero.update();
      else {
        if (world.worldSize > 1) allReduceGradients(model.parameters());
        opt.update();
      }
      opt.zeroGrad();
    });
    await moma.synchronize('cpu');
    const updatePeak = stats().peakAllocated - update.base;
    for (const t of update.stall) t.dispose();
    return { backwardPeak, updatePeak, stalled: backward.stalled && update.stalled };
  };
  await step(0);
  await step(0);
  const held = stats().allocated;
  let measured = { backwardPeak: 0, updatePeak: 0, stalled: false };
  for (let products = 16; products <= 256 && !measured.stalled; products *= 2) measured = await step(products);
  const estimate = memoryPerRank(model.config, { worldSize: world.worldSize, sharding, batchSize: spec.batchSize, seqLen: spec.seqLen, regime: 'queued' });
  // zero3: the FSDP units' sizes (root first), to check the estimate's count of them
  const units = zero && zero.fsdp ? zero.fsdp.units.map((u) => u.layout.numel) : null;
  console.log(JSON.stringify({ rank: world.rank, afterBackward, held, backwardPeak: held + measured.backwardPeak, updatePeak: afterBackward + measured.updatePeak, stalled: measured.stalled, units, estimate }));
  if (distributed) moma.distributed.destroy();
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
