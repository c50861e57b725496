#!/usr/bin/env node
// Node smoke run on a GPU machine (scripts/gpu-check.sh): the same ops on cpu and cuda:0 through
// the public API, compared; prints one line per check and "N passed, N failed".
'use strict';
const moma = require('../dist');

async function main() {
  const info = moma.inspect();
  console.log(`binary ${info.binary.path}; devices ${JSON.stringify(info.cuda.devices)}`);
  if (!moma.cudaAvailable()) throw new Error('no CUDA device visible to Node');
  let passed = 0;
  let failed = 0;
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
    const ok = a.length === b.length && rel <= tol;
    ok ? passed++ : failed++;
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}: rel err ${rel.toExponential(2)} (tol ${tol})`);
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
  const firstLoss = async (device) => {
    const t = new moma.Trainer({ model: new moma.Transformer(cfg(device)), data: new moma.SyntheticSource({ batchSize: 8, seqLen: 64 }),
      vocab: moma.syntheticVocab, steps: 30, schedule: { peak: 3e-3, warmup: 5 } });
    const losses = [];
    t.on('step', (m) => losses.push(m.loss));
    const t1 = Date.now();
    await t.run();
    return { first: losses[0], last: losses[losses.length - 1], ms: Date.now() - t1 };
  };
  const lc = await firstLoss('cpu');
  const lg = await firstLoss('cuda:0');
  const lossOk = Math.abs(lc.first - lg.first) < 1e-2 * lc.first && lg.last < 0.8 * lg.first;
  lossOk ? passed++ : failed++;
  console.log(`${lossOk ? 'ok  ' : 'FAIL'} Trainer 4t4i+MoD: cpu loss ${lc.first.toFixed(4)} -> ${lc.last.toFixed(4)} (${lc.ms} ms), cuda ${lg.first.toFixed(4)} -> ${lg.last.toFixed(4)} (${lg.ms} ms)`);
  const t0 = Date.now();
  const x = moma.randn([4096, 4096], { device: 'cuda:0', dtype: 'bfloat16' });
  let y = x;
  for (let i = 0; i < 20; i++) y = y.matmul(x).scale(1 / 64);
  await moma.synchronize('cuda:0');
  const ms = Date.now() - t0;
  console.log(`20 bf16 4096^3 matmuls through the API: ${ms} ms (${((20 * 2 * 4096 ** 3) / ms / 1e9).toFixed(1)} TFLOP/s incl. launch)`);
  console.log(JSON.stringify(moma.memoryStats('cuda:0')));
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}
main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
