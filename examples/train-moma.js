// A 4t4i MoMa model with mixture-of-depths, trained on the built-in synthetic mixed-modal source:
// train, checkpoint, resume, evaluate. Run from a clone after `npm install`:
//   node examples/train-moma.js [device]        (device: cpu, or cuda:0 on a GPU machine)
const moma = require('..');

async function main(device = 'cpu') {
  const config = {
    vocabSize: moma.SYNTHETIC_VOCAB_SIZE, dModel: 64, layers: 4, heads: 4, device,
    ffn: { kind: 'moe', dFF: 128, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }] },
    mod: { interval: 2, capacity: 0.5 },
  };
  const run = (model, steps) => new moma.Trainer({
    model, steps, data: new moma.SyntheticSource({ batchSize: 8, seqLen: 64 }), vocab: moma.syntheticVocab,
    schedule: { peak: 3e-3, warmup: 10, total: 200 }, checkpointDir: 'runs/example/checkpoint', checkpointEvery: 50,
  });
  const first = run(new moma.Transformer(config), 100);
  first.on('step', (m) => m.step % 20 === 0 && console.log(`step ${m.step}  loss ${m.loss.toFixed(3)}  text ${m.lossPerModality.text.toFixed(3)}  image ${m.lossPerModality.image.toFixed(3)}  ${Math.round(m.tokensPerSecond)} tok/s`));
  await first.run();                                      // checkpoints at step 50 and 100
  const resumed = run(new moma.Transformer(config), 200);
  resumed.on('step', (m) => m.step % 50 === 0 && console.log(`resumed: step ${m.step}  loss ${m.loss.toFixed(3)}`));
  resumed.resume('runs/example/checkpoint');              // parameters, AdamW state, step, data position
  await resumed.run();
  const heldOut = new moma.SyntheticSource({ batchSize: 16, seqLen: 64, seed: 1 }).next();
  console.log(await moma.evaluate(resumed.model, heldOut, { vocab: moma.vocabFromSpec(moma.syntheticVocab) }));
}

main(process.argv[2]).catch((e) => { console.error(e); process.exitCode = 1; });
