#!/usr/bin/env node
// Node smoke run on a GPU machine (scripts/gpu-check.sh), two parts:
//   1. (CUDA only) the same ops on cpu and cuda:0 through the public API, compared; a tiny
//      4t4i + MoD Trainer run on both; bf16 matmul throughput through the API.
//   2. trainRun: `--train-steps` (default 50) steps of tiny-4t4i on the built-in data on
//      `--device` (default cuda:0) into a temporary run directory (report PNG included, so sharp's
//      libvips is exercised); prints the losses per modality and tokens/s, and writes
//      train-run.json to $OUT when set. Passes when the loss falls.
//   3. causal inference: train-aux, eval --causal, KV-cache decoding against the full causal
//      forward, and a generated image (generated.png in $OUT).
//   node scripts/gpu-smoke.js [--device cpu|cuda:N] [--train-steps N]
// `--device cpu` runs part 2 alone (the dry run of the carried archive on a machine without a GPU).
// Prints one line per check and "N passed, N failed"; exits non-zero on a failure.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const moma = require('../dist');

function parseArgs(argv) {
  const args = { device: 'cuda:0', trainSteps: 50 };
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    if (argv[i] === '--device' && value) args.device = argv[++i];
    else if (argv[i] === '--train-steps' && /^\d+$/.test(value ?? '')) args.trainSteps = Number(argv[++i]);
    else throw new Error(`gpu-smoke: unknown or incomplete argument ${argv[i]}; usage: gpu-smoke.js [--device cpu|cuda:N] [--train-steps N]`);
  }
  return args;
}

async function crossDeviceChecks(record) {
  const check = async (name, make, tol) => {
    const a = await make('cpu').toArray();
    const b = await make('cuda:0').toArray();
    let num = 0;
    let den = 0;
    for (let i = 0; i < a.length; i++) {
      num += (a[i] - b[i]) ** 2;
      den += a[i] ** 2;
    }
    const rel = Math.sqrt(num / Math.max(den, 1e-30));
    record(a.length === b.length && rel <= tol, `${name}: rel err ${rel.toExponential(2)} (tol ${tol})`);
  };
  const g = (seed) => new moma.Generator(seed);
  await check('randn bits', (d) => moma.randn([4097], { generator: g(1), device: d }), 1e-7);
  await check('rand bits', (d) => moma.rand([4097], { generator: g(2), device: d }), 0);
  await check('matmul 513x257x129', (d) => moma.randn([513, 129], { generator: g(3), device: d })
    .matmul(moma.randn([129, 257], { generator: g(4), device: d })), 1e-2);
  await check('softmax', (d) => moma.randn([333, 1000], { generator: g(5), device: d }).softmax(-1), 1e-5);
  await check('silu+sum', (d) => moma.randn([1000, 77], { generator: g(6), device: d }).silu().sum(0), 1e-5);
  await check('permute', (d) => moma.randn([5, 6, 7], { generator: g(7), device: d }).permute(2, 0, 1), 0);
  await check('to cpu->cuda->cpu', (d) => moma.randn([1000], { generator: g(8) }).to(d).to('cpu'), 0);
  const mod = (d) => moma.tensor(Int32Array.from({ length: 1000 }, (_, t) => (t % 7 < 3 ? 0 : t % 13 === 0 ? -1 : 1)), { device: d });
  const ffnOut = (groups, read) => (d) => {
    const ffn = new moma.MoMaFFN({ dModel: 64, dFF: 96, groups, device: d, seed: 5 });
    const { y, ctx } = ffn.forward(moma.randn([1000, 64], { generator: g(9), device: d }), mod(d));
    return read(y, ctx);
  };
  await check('MoMaFFN 1t1i forward', ffnOut([{ modality: 'text', experts: 1 }, { modality: 'image', experts: 1 }], (y) => y), 1e-2);
  await check('MoMaFFN 4t4i expert offsets', ffnOut([{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }],
    (_, ctx) => ctx.routing.expertOffsets), 0);
  // a tiny 4t4i + MoD model: the first loss on cpu and cuda agree; 30 CUDA steps lower it
  const cfg = (device) => ({
    vocabSize: moma.SYNTHETIC_VOCAB_SIZE, dModel: 64, layers: 4, heads: 4, device, seed: 1,
    ffn: { kind: 'moe', dFF: 128, groups: [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }] },
    mod: { interval: 2, capacity: 0.5 },
  });
  const losses = async (device) => {
    const t = new moma.Trainer({ model: new moma.Transformer(cfg(device)), data: new moma.SyntheticSource({ batchSize: 8, seqLen: 64 }),
      vocab: moma.syntheticVocab, steps: 30, schedule: { peak: 3e-3, warmup: 5 } });
    const seen = [];
    t.on('step', (m) => seen.push(m.loss));
    const t1 = Date.now();
    await t.run();
    return { first: seen[0], last: seen[seen.length - 1], ms: Date.now() - t1 };
  };
  const lc = await losses('cpu');
  const lg = await losses('cuda:0');
  record(Math.abs(lc.first - lg.first) < 1e-2 * lc.first && lg.last < 0.8 * lg.first,
    `Trainer 4t4i+MoD: cpu loss ${lc.first.toFixed(4)} -> ${lc.last.toFixed(4)} (${lc.ms} ms), cuda ${lg.first.toFixed(4)} -> ${lg.last.toFixed(4)} (${lg.ms} ms)`);
  const t0 = Date.now();
  const x = moma.randn([4096, 4096], { device: 'cuda:0', dtype: 'bfloat16' });
  let y = x;
  for (let i = 0; i < 20; i++) y = y.matmul(x).scale(1 / 64);
  await moma.synchronize('cuda:0');
  const ms = Date.now() - t0;
  console.log(`20 bf16 4096^3 matmuls through the API: ${ms} ms (${((20 * 2 * 4096 ** 3) / ms / 1e9).toFixed(1)} TFLOP/s incl. launch)`);
  console.log(JSON.stringify(moma.memoryStats('cuda:0')));
}

/** trainRun on the built-in data: returns the summary printed and saved. */
async function trainingRun(device, steps, record) {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-smoke-run-'));
  const rates = [];
  const t0 = Date.now();
  try {
    const summary = await moma.trainRun(
      { values: { preset: 'tiny-4t4i', data: 'builtin', device, steps, evalEvery: 0, checkpointEvery: 0, out: path.join(out, 'run') } },
      { onStep: (r) => rates.push(r.tokensPerSecond) },
    );
    const steady = rates.slice(Math.min(5, rates.length - 1));
    const result = {
      device, preset: 'tiny-4t4i', steps: summary.steps, tokens: summary.tokens, wallSeconds: (Date.now() - t0) / 1000,
      trainSeconds: summary.session.trainSeconds, tokensPerSecond: summary.session.tokensPerSecond,
      tokensPerSecondAfter5: steady.reduce((a, b) => a + b, 0) / steady.length,
      loss: { first: summary.loss.first, final: summary.loss.final, heldOut: summary.heldOut?.loss ?? null },
      report: Object.fromEntries(Object.entries(summary.report).map(([k, f]) => [k, fs.statSync(f).size])),
    };
    const num = (v) => (typeof v === 'number' ? v.toFixed(3) : '-');
    const loss = (l) => `${num(l.overall)} (text ${num(l.text)}, image ${num(l.image)})`;
    record(summary.loss.final.overall < summary.loss.first.overall && summary.steps === steps,
      `trainRun tiny-4t4i builtin on ${device}: ${summary.steps} steps, loss ${loss(summary.loss.first)} -> ${loss(summary.loss.final)}` +
      `${summary.heldOut ? `, held out ${loss(summary.heldOut.loss)}` : ''}; ${Math.round(result.tokensPerSecond)} tokens/s ` +
      `(${Math.round(result.tokensPerSecondAfter5)} after step 5), ${result.wallSeconds.toFixed(1)} s wall; report png ${result.report.png} bytes`);
    console.log(JSON.stringify(result));
    if (process.env.OUT) fs.writeFileSync(path.join(process.env.OUT, 'train-run.json'), JSON.stringify(result, null, 2) + '\n');
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

/**
 * Causal inference on `device`: 30 steps of tiny-4t4i-mod, 30 aux-router steps, causal vs training
 * held-out loss, KV-cache decoding against the full causal forward, and a generated image (tokens/s).
 */
async function causalRun(device, record) {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'moma-smoke-causal-'));
  try {
    const runDir = path.join(out, 'run');
    await moma.trainRun({ values: { preset: 'tiny-4t4i-mod', device, steps: 30, batchSize: 4, seqLen: 128, evalEvery: 0, checkpointEvery: 0, evalBatches: 1, out: runDir } });
    const aux = await moma.trainAuxRouters({ checkpoint: runDir, steps: 30, lr: 1e-3, lrEnd: 1e-5, device });
    const bce = (ms) => ms.reduce((s, m) => s + m.bce, 0);
    record(bce(aux.after) < bce(aux.before), `train-aux on ${device}: ${aux.steps} steps in ${aux.seconds.toFixed(1)} s, held-out BCE (sum of 13) ${bce(aux.before).toFixed(3)} -> ${bce(aux.after).toFixed(3)}`);
    const source = moma.openCheckpoint(runDir, 'gpu-smoke');
    const model = moma.loadModel(source, device);
    const routers = moma.loadAuxRouters(source.dir, model, 'gpu-smoke');
    try {
      const heldOut = moma.stageHeldOut(await moma.openStageData(source, 'gpu-smoke'));
      const r = await moma.evaluateCausal(model, heldOut, { aux: routers, vocab: moma.vocabFromSpec(source.layout), batchSize: 4 });
      record(Number.isFinite(r.causal.loss) && Number.isFinite(r.training.loss), `eval --causal on ${device}: training ${r.training.loss.toFixed(4)}, causal ${r.causal.loss.toFixed(4)}`);
      const L = source.layout;
      const ids = heldOut[0].slice(0, 40);
      const modalityOf = (id) => moma.modalityOfId(L, id);
      const batch = moma.makeBatch([ids], { padId: L.padId, bosId: L.bosId, modalityOf, modalities: 2, device, vocabSize: model.config.vocabSize });
      const full = await (await model.causalLogits(batch, routers)).toArray();
      moma.disposeBatch(batch);
      const V = model.config.vocabSize;
      const cache = new moma.KVCache(model.config.layers);
      let worst = 0;
      for (let t = 0; t < ids.length; t++) {
        const row = await model.decode(cache, [ids[t]], { modalityOf, routing: routers });
        for (let v = 0; v < V; v++) worst = Math.max(worst, Math.abs(row[v] - full[t * V + v]));
      }
      cache.dispose();
      record(worst < 3e-2, `KV-cache decode vs full causal forward on ${device}: max |Δlogit| ${worst.toExponential(2)} over ${ids.length} tokens`);
      const image = moma.ImageTokenizer.load(path.join(source.dir, L.image.tokenizer.file));
      const g = await moma.captionToImage(model, 'a large red circle at the top.', { routing: routers, layout: L, text: new moma.ByteTokenizer(), image, seed: 1, scale: 8 });
      if (process.env.OUT) fs.writeFileSync(path.join(process.env.OUT, 'generated.png'), g.png);
      record(g.codes.length === image.tokensPerImage, `generate on ${device}: ${g.codes.length} image codes, ${g.tokensPerSecond.toFixed(1)} tokens/s, prompt ${(g.prefillSeconds * 1000).toFixed(0)} ms`);
    } finally {
      routers.dispose();
      model.dispose();
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const info = moma.inspect();
  console.log(`binary ${info.binary.path}; devices ${JSON.stringify(info.cuda.devices)}`);
  let passed = 0;
  let failed = 0;
  const record = (ok, line) => {
    ok ? passed++ : failed++;
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${line}`);
  };
  if (args.device.startsWith('cuda')) {
    if (!moma.cudaAvailable()) throw new Error('no CUDA device visible to Node');
    await crossDeviceChecks(record);
  }
  if (args.trainSteps > 0) await trainingRun(args.device, args.trainSteps, record);
  await causalRun(args.device, record);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
