// One rank of test/zero3.test.ts: `node THIS DIST OPTIONS_JSON`, alone (1 rank) or under
// `moma launch --no-moma` (RANK set: joins the process group). Trains a small Transformer with the
// Trainer (options: model 'dense' | 'mod' (tiny 4t4i, MoD every 2nd layer, Gumbel noise) | 'wide'
// (parameter-heavy blocks), sharding, steps, gradAccum, clipNorm, checkpointDir, checkpointEvery,
// resume)
// on a fixed synthetic token stream and prints one JSON line: the rank, each logged step's loss
// and gradient norm, and the allocator's bytes held after training (with what ZeRO-3 holds).
const [dist, optionsJson] = process.argv.slice(2);
const options = JSON.parse(optionsJson);
const moma = require(dist);

const MODELS = {
  dense: { vocabSize: 64, dModel: 32, layers: 2, heads: 2, ffn: { kind: 'dense', dFF: 48 } },
  mod: {
    vocabSize: 64, dModel: 32, layers: 3, heads: 2, mod: { interval: 2, capacity: 0.5 },
    ffn: { kind: 'moe', dFF: 24, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }], capacityFactor: 1, router: 'sigmoid', routing: 'expert-choice', gumbel: true },
  },
  wide: { vocabSize: 64, dModel: 64, layers: 4, heads: 2, ffn: { kind: 'dense', dFF: 512 } },
};

/** Sequences of 16 tokens, text ids [2, 34) and image ids [34, 64), from a counter (the data position). */
class Stream {
  constructor(batch) { this.batch = batch; this.position = 0; }
  next() {
    const out = [];
    for (let b = 0; b < this.batch; b++, this.position++) {
      const p = this.position;
      out.push([1, ...Array.from({ length: 15 }, (_, i) => ((i + p) % 3 === 0 ? 34 + ((i * 7 + p * 13) % 30) : 2 + ((i * 5 + p * 11) % 32)))]);
    }
    return out;
  }
  state() { return this.position; }
  restore(s) { this.position = s; }
}

(async () => {
  const world = process.env.RANK === undefined ? { rank: 0, worldSize: 1 } : await moma.distributed.init({ device: 'cpu' });
  const model = new moma.Transformer({ ...MODELS[options.model], seed: 5, device: 'cpu', initStd: 0.1 });
  const trainer = new moma.Trainer({
    model, data: new Stream(2), vocab: { padId: 0, bosId: 1, ranges: [{ modality: 0, from: 1, to: 34 }, { modality: 1, from: 34, to: 64 }] },
    steps: options.steps, schedule: { peak: 3e-3, warmup: 1 }, seed: 7, logEvery: 1, gradAccum: options.gradAccum ?? 1,
    optimizer: options.clipNorm === undefined ? undefined : { clipNorm: options.clipNorm },
    sharding: options.sharding, checkpointDir: options.checkpointDir, checkpointEvery: options.checkpointEvery,
  });
  if (options.resume) await trainer.resume(options.resume);
  const steps = [];
  trainer.on('step', (m) => steps.push({ step: m.step, loss: m.loss, gradNorm: m.gradNorm }));
  await trainer.run();
  await moma.synchronize('cpu');
  const held = moma.memoryStats('cpu').allocated;
  const fsdp = trainer.zero && trainer.zero.fsdp;
  const numel = model.numParameters();
  const shardBytes = fsdp ? 4 * (fsdp.root.layout.numel + fsdp.blockUnits().reduce((n, u) => n + u.layout.shardSize, 0)) : null;
  console.log(JSON.stringify({ rank: world.rank, steps, held, numel, shardBytes, rootNumel: fsdp ? fsdp.root.layout.numel : null }));
  trainer.dispose();
  if (world.worldSize > 1) moma.distributed.destroy();
})().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
