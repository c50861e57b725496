// Whole-layer benchmark through the public API: MoMaFFN (moma 4t4i, moe 8x) forward + backward
// against the dense SwiGLU FFN of equal active FLOPs (expert choice with c = 1 gives each row one
// expert-FFN on average), at the paper's 435M FFN shape (d 1024, f 4096). Time is the median of
// repeats after a warm-up, ending with a device synchronisation; the ratio is moe / dense.
'use strict';

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function timeIt(moma, device, step, repeats) {
  const times = [];
  for (let i = 0; i < repeats + 1; i++) {
    const t0 = process.hrtime.bigint();
    step();
    await moma.synchronize(device);
    if (i >= 1) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return median(times);
}

function disposeAll(obj) {
  for (const v of Object.values(obj)) if (v && typeof v.dispose === 'function') v.dispose();
}

async function layerResults(moma, device, T, repeats) {
  const d = 1024;
  const f = 4096;
  const dtype = device.startsWith('cuda') ? 'bfloat16' : 'float32';
  const gen = new moma.Generator(11);
  const x = moma.randn([T, d], { device, dtype, generator: gen });
  const dy = moma.randn([T, d], { device, dtype, generator: gen, std: 1e-3 });
  const mod = new Int32Array(T);
  for (let t = 0; t < T; t++) mod[t] = (t * 2654435761) % 97 < 48 ? 0 : 1;
  const modality = moma.tensor(mod, { device });
  const dev = device.startsWith('cuda') ? 'cuda' : 'cpu';
  const results = [];
  const denseFlops = 3 * 6 * T * d * f;

  const dense = new moma.SwiGLUFFN({ dModel: d, dFF: f, device, dtype });
  const denseMs = await timeIt(moma, device, () => {
    const { y, ctx } = dense.forward(x);
    const { dx, grads } = dense.backward(ctx, dy);
    ctx.dispose();
    y.dispose();
    dx.dispose();
    disposeAll(grads);
  }, repeats);
  dense.dispose();
  results.push({ device: dev, op: 'layer.dense_swiglu.fwd_bwd', shape: `T${T} d${d} f${f}`, ms: denseMs, rate: denseFlops / denseMs / 1e9, unit: 'TFLOP/s' });

  const variants = [
    ['layer.moma_4t4i.fwd_bwd', [{ modality: 'text', experts: 4 }, { modality: 'image', experts: 4 }]],
    ['layer.moe_8x.fwd_bwd', [{ modality: ['text', 'image'], experts: 8 }]],
  ];
  for (const [op, groups] of variants) {
    const ffn = new moma.MoMaFFN({ dModel: d, dFF: f, groups, device, dtype });
    let rows = 0;
    const ms = await timeIt(moma, device, () => {
      const { y, ctx } = ffn.forward(x, modality, { training: true });
      const { dx, grads } = ffn.backward(ctx, dy);
      ctx.dispose();
      y.dispose();
      dx.dispose();
      disposeAll(grads);
    }, repeats);
    {
      const { y, ctx } = ffn.forward(x, modality);
      const offsets = await ctx.routing.expertOffsets.toArray();
      rows = offsets[offsets.length - 1];
      ctx.dispose();
      y.dispose();
    }
    ffn.dispose();
    const E = 8;
    const flops = 3 * (6 * rows * d * f + 2 * T * d * E);
    results.push({
      device: dev, op, shape: `T${T} d${d} f${f} c1`, ms, rate: flops / ms / 1e9, unit: 'TFLOP/s',
      ratio_vs_dense: ms / denseMs, note: `${rows} expert rows; time ratio vs dense ${(ms / denseMs).toFixed(3)}`,
    });
  }
  for (const t of [x, dy, modality]) t.dispose();
  return results;
}

module.exports = { layerResults };
